//! Operator endpoints for the dead-letter topic: list dead letters, and
//! redrive chosen ones to their origin topic. Both need a service
//! credential (`consumer service-token` prints one); user tokens get `403`.
//! The work is [`crate::dead_letters`]'s.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use kafka_service::failure::{DeadLetterHeaders, Origin};
use kafka_service::{EventProducer, KafkaSettings, Record};
use serde::{Deserialize, Serialize};
use service_common::auth::Authenticated;
use service_common::http::ErrorBody;
use utoipa::{IntoParams, ToSchema};

use crate::dead_letters::{self, DeadLetterError, Position};
use crate::error::ApiError;
use crate::routes::require_operator;

/// What a user token is told (`403`).
const NEEDS_SERVICE: &str = "dead letters need a service credential";

/// Most records one request lists or redrives.
pub const MAX_RECORDS: usize = 500;

/// `GET /dead-letters` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this partition of the dead-letter topic; all when absent.
    #[param(minimum = 0)]
    pub partition: Option<i32>,
    /// First offset to list in each partition (default 0).
    #[serde(default)]
    #[param(minimum = 0)]
    pub from_offset: i64,
    /// Most records to return in all (default and maximum 500).
    #[param(minimum = 0, maximum = 500)]
    pub limit: Option<usize>,
}

/// `GET /dead-letters` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterList {
    /// In offset order, partition by partition.
    pub records: Vec<DeadLetter>,
}

/// One dead letter, as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetter {
    /// Partition of the dead-letter topic.
    pub partition: i32,
    /// Offset in that partition (with `partition`, what redrive takes).
    pub offset: i64,
    /// The record key (the user id), lossily as text.
    pub key: Option<String>,
    /// Where the record was first consumed from. This and the four fields
    /// below come from its dead-letter headers, and are all absent when
    /// one of those is missing or malformed (a record this service did not
    /// write).
    pub origin: Option<OriginView>,
    /// `permanent` or `exhausted`.
    pub error_class: Option<String>,
    /// The last error.
    pub error_message: Option<String>,
    /// Processing attempts, in-place retries included.
    pub attempts: Option<u32>,
    /// When it was dead-lettered.
    pub failed_at: Option<DateTime<Utc>>,
    /// Every header as `[name, value]`, values lossily as text.
    #[schema(value_type = Vec<Vec<Option<String>>>)]
    pub headers: Vec<(String, Option<String>)>,
    /// The value, lossily as text.
    pub value: Option<String>,
}

/// Where a record came from.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OriginView {
    /// The origin topic.
    pub topic: String,
    /// Its partition there.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
}

impl From<Origin> for OriginView {
    fn from(origin: Origin) -> Self {
        Self {
            topic: origin.topic,
            partition: origin.partition,
            offset: origin.offset,
        }
    }
}

impl From<&OriginView> for Origin {
    fn from(view: &OriginView) -> Self {
        Self {
            topic: view.topic.clone(),
            partition: view.partition,
            offset: view.offset,
        }
    }
}

/// Lists dead letters in offset order, partition by partition.
///
/// `200 {"records": [...]}`; `401` without a valid token; `403` with a user
/// token; `503` when the broker does not answer.
#[utoipa::path(
    get,
    path = "/dead-letters",
    tag = "dead letters",
    params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Dead letters in offset order", body = DeadLetterList),
        (status = 400, description = "`invalid_query`: a malformed or unknown parameter", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a user token; this needs a service credential", body = ErrorBody),
        (status = 422, description = "`validation_failed`: no such partition, or a negative offset", body = ErrorBody),
        (status = 503, description = "`broker_unavailable`: the broker did not answer", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "list dead letters", skip_all)]
pub async fn list(
    caller: Authenticated,
    kafka: web::Data<KafkaSettings>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&caller, NEEDS_SERVICE)?;
    if query.from_offset < 0 {
        return Err(ApiError::Validation("from_offset must not be negative".to_owned()));
    }
    let limit = query.limit.unwrap_or(MAX_RECORDS).min(MAX_RECORDS);
    let records = dead_letters::list(&kafka, query.partition, query.from_offset, limit)
        .await
        .map_err(failed)?;
    Ok(HttpResponse::Ok().json(DeadLetterList {
        records: records.iter().map(view).collect(),
    }))
}

/// `POST /dead-letters/redrive` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    /// The dead letters to redrive, by partition and offset: 1 to 500.
    #[schema(min_items = 1, max_items = 500)]
    pub records: Vec<RecordRef>,
}

/// A record of the dead-letter topic.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordRef {
    /// Partition of the dead-letter topic.
    #[schema(minimum = 0)]
    pub partition: i32,
    /// Offset in that partition.
    #[schema(minimum = 0)]
    pub offset: i64,
}

impl From<RecordRef> for Position {
    fn from(record: RecordRef) -> Self {
        Self {
            partition: record.partition,
            offset: record.offset,
        }
    }
}

impl From<Position> for RecordRef {
    fn from(position: Position) -> Self {
        Self {
            partition: position.partition,
            offset: position.offset,
        }
    }
}

/// `POST /dead-letters/redrive` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct RedriveResponse {
    /// Each redriven record, in request order.
    pub redriven: Vec<Redriven>,
}

/// One redriven record.
#[derive(Debug, Serialize, ToSchema)]
pub struct Redriven {
    /// The dead letter that was redriven.
    pub dead_letter: RecordRef,
    /// The origin topic it was produced to.
    pub topic: String,
    /// Its new partition there.
    pub partition: i32,
    /// Its new offset there.
    pub offset: i64,
}

/// `POST /dead-letters/redrive` answer when the broker did not answer: the
/// JSON error body, and once records were being produced, which of them the
/// broker confirmed and which not (both lists absent before that).
#[derive(Debug, Serialize, ToSchema)]
pub struct RedriveIncomplete {
    /// `broker_unavailable`, and which record it stopped at.
    pub error: service_common::http::ErrorDetail,
    /// The records the broker confirmed, in request order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redriven: Vec<Redriven>,
    /// The rest, in request order: the first may still be delivered (it was
    /// sent, but not confirmed in time), the others were not sent. Sending
    /// them again is safe: a record that arrives twice is applied once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_confirmed: Vec<RecordRef>,
}

/// Produces each chosen dead letter to its origin topic again, with its
/// original key, value and headers (failure headers removed). All records
/// are checked before any is produced, then produced one at a time, each
/// waited for at most `kafka.request_timeout_ms`.
///
/// `200 {"redriven": [...]}`; `422` when a record does not exist, its
/// origin is not an event topic, or it does not hold its record
/// (`dropped-content`); `401`/`403` as for listing; `503` when the
/// broker does not answer, listing what it confirmed and what it did not
/// ([`RedriveIncomplete`] once records were being produced).
#[utoipa::path(
    post,
    path = "/dead-letters/redrive",
    tag = "dead letters",
    request_body = RedriveRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every chosen record was produced to its origin topic", body = RedriveResponse),
        (status = 400, description = "`invalid_json`: malformed body, a missing or unknown field", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a user token; this needs a service credential", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over 16 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: none or too many chosen, or one that is not a dead letter of an event topic or does not hold its record (`dropped-content`); nothing was redriven", body = ErrorBody),
        (status = 503, description = "`broker_unavailable`: the broker did not answer; once records were being produced, the body lists which were confirmed and which not", body = RedriveIncomplete),
    )
)]
#[tracing::instrument(name = "redrive dead letters", skip_all)]
pub async fn redrive(
    caller: Authenticated,
    kafka: web::Data<KafkaSettings>,
    producer: web::Data<EventProducer>,
    request: web::Json<RedriveRequest>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&caller, NEEDS_SERVICE)?;
    let wanted = &request.records;
    if wanted.is_empty() || wanted.len() > MAX_RECORDS {
        return Err(ApiError::Validation(format!(
            "records must list between 1 and {MAX_RECORDS} dead letters"
        )));
    }
    let positions: Vec<Position> = wanted.iter().copied().map(Position::from).collect();
    let chosen = dead_letters::choose(&kafka, &positions).await.map_err(failed)?;
    let outcome = dead_letters::redrive(&kafka, &producer, chosen).await;
    let redriven: Vec<Redriven> = outcome
        .redriven
        .into_iter()
        .map(|redriven| Redriven {
            dead_letter: redriven.position.into(),
            topic: redriven.topic,
            partition: redriven.delivery.partition,
            offset: redriven.delivery.offset,
        })
        .collect();
    let Some((index, why)) = outcome.stopped else {
        return Ok(HttpResponse::Ok().json(RedriveResponse { redriven }));
    };
    let at = wanted[index];
    Ok(HttpResponse::ServiceUnavailable().json(RedriveIncomplete {
        error: service_common::http::ErrorDetail {
            code: "broker_unavailable".to_owned(),
            message: format!(
                "the broker did not confirm the dead letter at partition {} offset {} ({why}); {} of {} redriven",
                at.partition,
                at.offset,
                redriven.len(),
                wanted.len()
            ),
        },
        redriven,
        not_confirmed: wanted[index..].to_vec(),
    }))
}

fn failed(error: DeadLetterError) -> ApiError {
    match error {
        DeadLetterError::Broker(error) => ApiError::BrokerUnavailable(error.into()),
        invalid => ApiError::Validation(invalid.to_string()),
    }
}

fn view(record: &Record) -> DeadLetter {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let failure = DeadLetterHeaders::of(record).ok();
    DeadLetter {
        partition: record.partition,
        offset: record.offset,
        key: record.key.as_deref().map(text),
        error_class: failure.as_ref().map(|failure| failure.class.as_str().to_owned()),
        error_message: failure.as_ref().map(|failure| failure.error.clone()),
        attempts: failure.as_ref().map(|failure| failure.attempts),
        failed_at: failure.as_ref().map(|failure| failure.failed_at),
        origin: failure.map(|failure| OriginView::from(failure.origin)),
        headers: record
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), value.as_deref().map(text)))
            .collect(),
        value: record.value.as_deref().map(text),
    }
}
