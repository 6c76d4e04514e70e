//! Operator endpoints for parked records: list the parked keys, release one
//! (copy it to the retry topic again, due now) or dead-letter it. All need
//! a service credential (`consumer service-token` prints one); user tokens
//! get `403`. The work is [`crate::recovery`]'s.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use kafka_service::failure::Origin;
use serde::{Deserialize, Serialize};
use service_common::auth::Authenticated;
use service_common::http::ErrorBody;
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::parking::Parked;
use crate::recovery::{Recovery, RecoveryError};
use crate::routes::dead_letters::OriginView;
use crate::routes::require_operator;

/// What a user token is told (`403`).
const NEEDS_SERVICE: &str = "parked records need a service credential";

/// Most keys one request lists.
pub const MAX_KEYS: i64 = 500;

/// `GET /parked` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Most keys to return (default and maximum 500).
    #[param(minimum = 0, maximum = 500)]
    pub limit: Option<i64>,
}

/// `GET /parked` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ParkedKeys {
    /// One entry per topic and key with parked records, by its oldest
    /// record, oldest first.
    pub keys: Vec<ParkedKey>,
}

/// A topic's key with parked records, and the oldest of them (the one the
/// others wait for).
#[derive(Debug, Serialize, ToSchema)]
pub struct ParkedKey {
    /// The record key (the user id), lossily as text.
    pub key: Option<String>,
    /// Parked records of this topic and key.
    pub records: i64,
    /// Where the oldest was first consumed (what release and dead-letter
    /// take).
    pub origin: OriginView,
    /// The retry round of its latest copy (0: parked behind another).
    pub round: u32,
    /// Processing attempts so far.
    pub attempts: u32,
    /// The last error.
    pub reason: String,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
    /// When its latest copy on the retry topic is due.
    pub due_at: DateTime<Utc>,
    /// Whether the record is kept, so that it can be released (rows parked
    /// before records were kept can only be dead-lettered).
    pub record_kept: bool,
}

/// `POST /parked/release` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// The parked record, by its origin.
    pub origin: OriginView,
}

/// `POST /parked/dead-letter` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterRequest {
    /// The parked record, by its origin.
    pub origin: OriginView,
    /// Why, kept in the dead letter's `error-message`: 1 to 1000
    /// characters.
    #[schema(min_length = 1, max_length = 1000)]
    pub reason: String,
}

/// Where an action put the record's copy.
#[derive(Debug, Serialize, ToSchema)]
pub struct Copied {
    /// The parked record.
    pub origin: OriginView,
    /// The topic of the copy: the retry topic for a release, the
    /// dead-letter topic otherwise.
    pub topic: String,
    /// The copy's partition there.
    pub partition: i32,
    /// The copy's offset there.
    pub offset: i64,
}

/// Lists the parked keys, each with its oldest record, oldest first.
///
/// `200 {"keys": [...]}`; `401`; `403` with a user token.
#[utoipa::path(
    get,
    path = "/parked",
    tag = "parked",
    params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Parked keys, oldest first", body = ParkedKeys),
        (status = 400, description = "`invalid_query`: a malformed or unknown parameter", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a user token; this needs a service credential", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "list parked keys", skip_all)]
pub async fn list(
    caller: Authenticated,
    recovery: web::Data<Recovery>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&caller, NEEDS_SERVICE)?;
    let limit = query.limit.unwrap_or(MAX_KEYS).clamp(0, MAX_KEYS);
    let heads = recovery.heads(limit).await.map_err(failed)?;
    let keys = heads.into_iter().map(view).collect();
    Ok(HttpResponse::Ok().json(ParkedKeys { keys }))
}

/// Copies a parked record to the retry topic again, due now, with its round
/// and attempts: after fixing what it failed on, or when its copy was lost.
/// The consumer also does this by itself for a copy lost for longer than
/// `retry.orphan_after_ms`.
///
/// `200` with the copy's place; `404` when the record is not parked; `422`
/// when the record was not kept; `503` when the broker did not take it.
#[utoipa::path(
    post,
    path = "/parked/release",
    tag = "parked",
    request_body = ReleaseRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Copied to the retry topic, due now", body = Copied),
        (status = 400, description = "`invalid_json`: a malformed body, a missing or unknown field", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a user token; this needs a service credential", body = ErrorBody),
        (status = 404, description = "`not_found`: no parked record with this origin", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over 16 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: the record was not kept; dead-letter it instead", body = ErrorBody),
        (status = 503, description = "`broker_unavailable`: the broker did not take the copy", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "release parked record", skip_all)]
pub async fn release(
    caller: Authenticated,
    recovery: web::Data<Recovery>,
    request: web::Json<ReleaseRequest>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&caller, NEEDS_SERVICE)?;
    let origin = Origin::from(&request.origin);
    let (_, delivered) = recovery
        .release(&origin)
        .await
        .map_err(failed)?
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(copied(origin, recovery.retry_topic(), delivered)))
}

/// Dead-letters a parked record and unparks it, so its key's next record
/// goes: for a record that will never succeed. Listed and redriven like
/// any dead letter.
///
/// `200` with the dead letter's place; `404`; `422` for an empty or
/// overlong reason; `503` when the broker did not take it (nothing
/// changed).
#[utoipa::path(
    post,
    path = "/parked/dead-letter",
    tag = "parked",
    request_body = DeadLetterRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Dead-lettered and unparked", body = Copied),
        (status = 400, description = "`invalid_json`: a malformed body, a missing or unknown field", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a user token; this needs a service credential", body = ErrorBody),
        (status = 404, description = "`not_found`: no parked record with this origin", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over 16 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: the reason is empty or too long", body = ErrorBody),
        (status = 503, description = "`broker_unavailable`: the broker did not take the dead letter", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "dead-letter parked record", skip_all)]
pub async fn dead_letter(
    caller: Authenticated,
    recovery: web::Data<Recovery>,
    request: web::Json<DeadLetterRequest>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&caller, NEEDS_SERVICE)?;
    let reason = super::operator_reason(&request.reason)?;
    let origin = Origin::from(&request.origin);
    let (_, delivered) = recovery
        .dead_letter(&origin, reason)
        .await
        .map_err(failed)?
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(copied(origin, recovery.dead_letter_topic(), delivered)))
}

fn view(parked: Parked) -> ParkedKey {
    ParkedKey {
        key: parked
            .key
            .as_deref()
            .map(|key| String::from_utf8_lossy(key).into_owned()),
        records: parked.records_of_key,
        origin: parked.origin.into(),
        round: parked.round,
        attempts: parked.attempts,
        reason: parked.reason,
        parked_at: parked.parked_at,
        due_at: parked.due_at,
        record_kept: parked.record.is_some(),
    }
}

fn copied(origin: Origin, topic: &str, delivered: kafka_service::Delivery) -> Copied {
    Copied {
        origin: origin.into(),
        topic: topic.to_owned(),
        partition: delivered.partition,
        offset: delivered.offset,
    }
}

fn failed(error: RecoveryError) -> ApiError {
    match error {
        RecoveryError::NotKept => ApiError::Validation(error.to_string()),
        RecoveryError::Broker(error) => ApiError::BrokerUnavailable(error.into()),
        RecoveryError::Database(error) => ApiError::Unexpected(anyhow::Error::new(error).context("parking (database)")),
    }
}
