//! Operator endpoints for the dead-letter topic: list dead letters, and
//! redrive chosen ones to their origin topic. Both need a service
//! credential (`consumer service-token` prints one); user tokens get `403`.
//!
//! Redriving is safe: effects are idempotent (each event id is applied at
//! most once), so a record redriven twice, or one that had in fact been
//! applied, changes nothing the second time.

use actix_web::{web, HttpResponse};
use kafka_service::failure::{self, header, Origin};
use kafka_service::{EventProducer, KafkaSettings, Record, Topic};
use serde::{Deserialize, Serialize};
use service_common::auth::Authenticated;
use service_common::http::ErrorBody;
use utoipa::{IntoParams, ToSchema};

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
    /// Where the record was first consumed from, if its headers say.
    pub origin: Option<OriginView>,
    /// `permanent` or `exhausted`.
    pub error_class: Option<String>,
    /// The last error.
    pub error_message: Option<String>,
    /// Processing attempts, in-place retries included.
    pub attempts: Option<String>,
    /// When it was dead-lettered (RFC 3339).
    pub failed_at: Option<String>,
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
    let topic = kafka.topics.name(Topic::DeadLetter);
    let count = kafka_service::partition_count(&kafka, topic).await.map_err(broker)?;
    let partitions = match query.partition {
        Some(partition) => vec![existing_partition(partition, count)?],
        None => (0..count).collect(),
    };
    let mut records = Vec::new();
    for partition in partitions {
        let left = limit - records.len();
        if left == 0 {
            break;
        }
        let read = kafka_service::reader::read_partition(&kafka, topic, partition, query.from_offset, left)
            .await
            .map_err(broker)?;
        records.extend(read.iter().map(view));
    }
    Ok(HttpResponse::Ok().json(DeadLetterList { records }))
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
/// `200 {"redriven": [...]}`; `422` when a record does not exist or its
/// origin is not an event topic; `401`/`403` as for listing; `503` when the
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
        (status = 422, description = "`validation_failed`: none or too many chosen, or one that is not a dead letter of an event topic; nothing was redriven", body = ErrorBody),
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
    let chosen = &request.records;
    if chosen.is_empty() || chosen.len() > MAX_RECORDS {
        return Err(ApiError::Validation(format!(
            "records must list between 1 and {MAX_RECORDS} dead letters"
        )));
    }
    let dead_letter_topic = kafka.topics.name(Topic::DeadLetter);
    let event_topics: Vec<&str> = Topic::EVENTS.iter().map(|&topic| kafka.topics.name(topic)).collect();
    let count = kafka_service::partition_count(&kafka, dead_letter_topic)
        .await
        .map_err(broker)?;
    let mut found = Vec::with_capacity(chosen.len());
    for &wanted in chosen {
        existing_partition(wanted.partition, count)?;
        if wanted.offset < 0 {
            return Err(ApiError::Validation(format!("offset {} is negative", wanted.offset)));
        }
        let read = kafka_service::reader::read_partition(&kafka, dead_letter_topic, wanted.partition, wanted.offset, 1)
            .await
            .map_err(broker)?;
        let record = read
            .into_iter()
            .find(|record| record.offset == wanted.offset)
            .ok_or_else(|| {
                ApiError::Validation(format!(
                    "no dead letter at partition {} offset {}",
                    wanted.partition, wanted.offset
                ))
            })?;
        let origin = Origin::of(&record)
            .ok()
            .filter(|origin| event_topics.contains(&origin.topic.as_str()))
            .ok_or_else(|| {
                ApiError::Validation(format!(
                    "the dead letter at partition {} offset {} has no event topic as its origin",
                    wanted.partition, wanted.offset
                ))
            })?;
        found.push((wanted, origin, record));
    }
    let mut redriven = Vec::with_capacity(found.len());
    let wait = std::time::Duration::from_millis(kafka.request_timeout_ms);
    for (index, (wanted, origin, record)) in found.into_iter().enumerate() {
        let sent = tokio::time::timeout(wait, producer.send_record(&origin.topic, &failure::original(&record))).await;
        let delivery = match sent {
            Ok(Ok(delivery)) => delivery,
            failed => {
                let why = match failed {
                    Ok(Err(error)) => format!("{:#}", anyhow::Error::from(error)),
                    _ => format!("not confirmed within {} ms", wait.as_millis()),
                };
                tracing::warn!(
                    dead_letter_partition = wanted.partition,
                    dead_letter_offset = wanted.offset,
                    error = why,
                    redriven = redriven.len(),
                    "redrive stopped: the broker did not confirm a record"
                );
                return Ok(HttpResponse::ServiceUnavailable().json(RedriveIncomplete {
                    error: service_common::http::ErrorDetail {
                        code: "broker_unavailable".to_owned(),
                        message: format!(
                            "the broker did not confirm the dead letter at partition {} offset {} ({why}); \
                             {} of {} redriven",
                            wanted.partition,
                            wanted.offset,
                            redriven.len(),
                            chosen.len()
                        ),
                    },
                    redriven,
                    not_confirmed: chosen[index..].to_vec(),
                }));
            }
        };
        tracing::info!(
            dead_letter_partition = wanted.partition,
            dead_letter_offset = wanted.offset,
            %origin,
            partition = delivery.partition,
            offset = delivery.offset,
            "dead letter redriven"
        );
        redriven.push(Redriven {
            dead_letter: wanted,
            topic: origin.topic,
            partition: delivery.partition,
            offset: delivery.offset,
        });
    }
    Ok(HttpResponse::Ok().json(RedriveResponse { redriven }))
}

/// `partition` when the dead-letter topic, of `count` partitions, has it.
fn existing_partition(partition: i32, count: i32) -> Result<i32, ApiError> {
    if (0..count).contains(&partition) {
        Ok(partition)
    } else {
        Err(ApiError::Validation(format!(
            "the dead-letter topic has partitions 0 to {}; there is no partition {partition}",
            count - 1
        )))
    }
}

fn broker(error: kafka_service::AdminError) -> ApiError {
    ApiError::BrokerUnavailable(error.into())
}

fn view(record: &Record) -> DeadLetter {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let header_text = |name| record.header(name).map(text);
    DeadLetter {
        partition: record.partition,
        offset: record.offset,
        key: record.key.as_deref().map(text),
        origin: Origin::of(record)
            .ok()
            .filter(|_| record.header(header::ORIGIN_TOPIC).is_some())
            .map(OriginView::from),
        error_class: header_text(header::ERROR_CLASS),
        error_message: header_text(header::ERROR_MESSAGE),
        attempts: header_text(header::ATTEMPTS),
        failed_at: header_text(header::FAILED_AT),
        headers: record
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), value.as_deref().map(text)))
            .collect(),
        value: record.value.as_deref().map(text),
    }
}
