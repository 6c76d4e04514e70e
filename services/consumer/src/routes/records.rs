//! Operator endpoint for a consumed record by where it is: dead-letter one
//! that no handling gets past (see [`crate::dead_letter_requests`]). Needs a
//! service credential (`consumer service-token` prints one); user tokens
//! get `403`.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use kafka_service::failure::Origin;
use kafka_service::{KafkaSettings, Topic};
use serde::{Deserialize, Serialize};
use service_common::auth::Authenticated;
use service_common::http::ErrorBody;
use utoipa::ToSchema;

use crate::dead_letter_requests::DeadLetterRequests;
use crate::error::ApiError;
use crate::routes::dead_letters::OriginView;
use crate::routes::require_operator;

/// What a user token is told (`403`).
const NEEDS_SERVICE: &str = "dead-lettering a record needs a service credential";

/// `POST /records/dead-letter` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterRequest {
    /// The record: an event topic's name, its partition and offset there.
    pub record: OriginView,
    /// Why, kept in the dead letter's `error-message`: 1 to 1000
    /// characters.
    #[schema(min_length = 1, max_length = 1000)]
    pub reason: String,
}

/// `POST /records/dead-letter` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterRequested {
    /// The record.
    pub record: OriginView,
    /// The reason kept (the first one, when asked again).
    pub reason: String,
    /// When it was first asked for.
    pub requested_at: DateTime<Utc>,
}

/// Asks for the record at `record` (an event topic, partition and offset)
/// to be dead-lettered instead of handled: for a record no handling gets
/// past, such as one whose handler panics, which stops its partition on
/// every member in turn. The member that reaches it next (the one that
/// replaces a member stopped by it, say) dead-letters it, `permanent`, with
/// `dead-lettered by an operator: <reason>` as its `error-message`, and the
/// partition moves on. A record consumed already is not consumed again, so
/// asking for one changes nothing. Asking twice keeps the first request.
///
/// `202` with the request; `422` for a topic that is not an event topic (a
/// retry copy is dead-lettered through `POST /parked/dead-letter`), a
/// negative partition or offset, or an empty or overlong reason.
#[utoipa::path(
    post,
    path = "/records/dead-letter",
    tag = "records",
    request_body = DeadLetterRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Requested: the record is dead-lettered when a member reaches it", body = DeadLetterRequested),
        (status = 400, description = "`invalid_json`: a malformed body, a missing or unknown field", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a user token; this needs a service credential", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over 16 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: not an event topic, a negative partition or offset, or an empty or overlong reason", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "dead-letter record by offset", skip_all)]
pub async fn dead_letter(
    caller: Authenticated,
    requests: web::Data<DeadLetterRequests>,
    kafka: web::Data<KafkaSettings>,
    request: web::Json<DeadLetterRequest>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&caller, NEEDS_SERVICE)?;
    let reason = super::operator_reason(&request.reason)?;
    let record = Origin::from(&request.record);
    if !Topic::EVENTS
        .iter()
        .any(|&topic| kafka.topics.name(topic) == record.topic)
    {
        return Err(ApiError::Validation(format!(
            "`{}` is not an event topic; a retry copy is dead-lettered through POST /parked/dead-letter",
            record.topic
        )));
    }
    if record.partition < 0 || record.offset < 0 {
        return Err(ApiError::Validation(
            "partition and offset must not be negative".to_owned(),
        ));
    }
    let requested = requests
        .request(&record, reason)
        .await
        .map_err(|error| ApiError::Unexpected(anyhow::Error::new(error).context("dead-letter requests (database)")))?;
    Ok(HttpResponse::Accepted().json(DeadLetterRequested {
        record: requested.record.into(),
        reason: requested.reason,
        requested_at: requested.requested_at,
    }))
}
