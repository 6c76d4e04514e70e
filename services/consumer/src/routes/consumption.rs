//! Operator control over consumption: pause a topic, or one partition of
//! it, with a reason, and resume it (see [`crate::pauses`]); replay an
//! event topic from a time into the read model, through the inbox (see
//! [`crate::replays`]). Needs a service credential (`consumer
//! service-token` prints one); user tokens get `403`.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use kafka_service::{KafkaSettings, Topic};
use serde::{Deserialize, Serialize};
use service_common::auth::Authenticated;
use service_common::http::ErrorBody;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::pauses::{Pause, Pauses};
use crate::replays::{Replay, Replays};
use crate::routes::require_operator;

/// What a user token is told (`403`).
const NEEDS_SERVICE: &str = "controlling consumption needs a service credential";

/// `POST /consumption/pause` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {
    /// A consumed topic: an event topic or the retry topic.
    pub topic: String,
    /// One partition of it; absent: every partition.
    #[schema(minimum = 0)]
    pub partition: Option<i32>,
    /// Why: 1 to 1000 characters, logged by every member.
    #[schema(min_length = 1, max_length = 1000)]
    pub reason: String,
}

/// `POST /consumption/resume` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResumeRequest {
    /// The topic paused.
    pub topic: String,
    /// The partition paused; absent: the topic's own pause (a partition's
    /// pause is resumed by naming the partition).
    #[schema(minimum = 0)]
    pub partition: Option<i32>,
}

/// A pause, as kept.
#[derive(Debug, Serialize, ToSchema)]
pub struct PauseView {
    /// The topic.
    pub topic: String,
    /// The partition; absent: every partition of the topic.
    pub partition: Option<i32>,
    /// Why.
    pub reason: String,
    /// When it was paused.
    pub paused_at: DateTime<Utc>,
}

impl From<Pause> for PauseView {
    fn from(pause: Pause) -> Self {
        Self {
            topic: pause.topic,
            partition: (pause.partition >= 0).then_some(pause.partition),
            reason: pause.reason,
            paused_at: pause.paused_at,
        }
    }
}

/// `GET /consumption/pauses` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct PauseList {
    /// Every pause, by topic and partition.
    pub pauses: Vec<PauseView>,
}

/// Pauses consumption of `topic` (or of one `partition` of it) on every
/// member of the group, within a second, until resumed, across restarts
/// and rebalances. Records fetched already are still applied; nothing more
/// is fetched, the group's committed offsets stay where they are, lag keeps
/// counting, and readiness does not take the pause for a stall. Pausing
/// what is paused keeps the first reason.
///
/// `200` with the pause; `422` for a topic the group does not consume, a
/// negative partition, or an empty or overlong reason.
#[utoipa::path(
    post,
    path = "/consumption/pause",
    tag = "consumption",
    request_body = PauseRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Paused: every member stops fetching it within a second", body = PauseView),
        (status = 400, description = "`invalid_json`: a malformed body, a missing or unknown field", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a user token; this needs a service credential", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over 16 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: not a consumed topic, a negative partition, or an empty or overlong reason", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "pause consumption", skip_all)]
pub async fn pause(
    caller: Authenticated,
    pauses: web::Data<Pauses>,
    kafka: web::Data<KafkaSettings>,
    request: web::Json<PauseRequest>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&caller, NEEDS_SERVICE)?;
    let reason = super::operator_reason(&request.reason)?;
    check(&kafka, &request.topic, request.partition)?;
    let pause = pauses
        .pause(&request.topic, request.partition, reason)
        .await
        .map_err(database_error)?;
    tracing::info!(
        topic = pause.topic,
        partition = pause.partition,
        reason = pause.reason,
        "operator paused consumption"
    );
    Ok(HttpResponse::Ok().json(PauseView::from(pause)))
}

/// Ends a pause: every member fetches the topic (or partition) again
/// within a second, from where it stopped.
///
/// `204`; `404` when it was not paused; `422` for a topic the group does
/// not consume or a negative partition.
#[utoipa::path(
    post,
    path = "/consumption/resume",
    tag = "consumption",
    request_body = ResumeRequest,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Resumed"),
        (status = 400, description = "`invalid_json`: a malformed body, a missing or unknown field", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a user token; this needs a service credential", body = ErrorBody),
        (status = 404, description = "`not_found`: no such pause", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over 16 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: not a consumed topic, or a negative partition", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "resume consumption", skip_all)]
pub async fn resume(
    caller: Authenticated,
    pauses: web::Data<Pauses>,
    kafka: web::Data<KafkaSettings>,
    request: web::Json<ResumeRequest>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&caller, NEEDS_SERVICE)?;
    check(&kafka, &request.topic, request.partition)?;
    if !pauses
        .resume(&request.topic, request.partition)
        .await
        .map_err(database_error)?
    {
        return Err(ApiError::NotFound);
    }
    tracing::info!(
        topic = request.topic,
        partition = request.partition,
        "operator resumed consumption"
    );
    Ok(HttpResponse::NoContent().finish())
}

/// Every pause.
#[utoipa::path(
    get,
    path = "/consumption/pauses",
    tag = "consumption",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every pause", body = PauseList),
        (status = 401, description = "`unauthorized`: no valid token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a user token; this needs a service credential", body = ErrorBody),
    )
)]
pub async fn list(caller: Authenticated, pauses: web::Data<Pauses>) -> Result<HttpResponse, ApiError> {
    require_operator(&caller, NEEDS_SERVICE)?;
    let pauses = pauses.list().await.map_err(database_error)?;
    Ok(HttpResponse::Ok().json(PauseList {
        pauses: pauses.into_iter().map(PauseView::from).collect(),
    }))
}

/// `POST /consumption/replays` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// An event topic.
    pub topic: String,
    /// Replay its records from this time on (their Kafka timestamps), RFC
    /// 3339; not in the future, and not before the deduplication window
    /// (`inbox.retention.hours`, less an hour).
    pub from: DateTime<Utc>,
    /// Why: 1 to 1000 characters, logged.
    #[schema(min_length = 1, max_length = 1000)]
    pub reason: String,
}

/// `GET /consumption/replays` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayList {
    /// Every replay, newest first.
    pub replays: Vec<Replay>,
}

/// Replays an event topic from a time into this read model, through the
/// inbox: each record from `from` to where the topic ended when the replay
/// started is applied unless its event was applied before (see
/// [`crate::replays`]), by one member of the group at a time, which resumes
/// after a restart. The group's committed offsets are not touched, and it
/// keeps consuming meanwhile. For a read model restored from a backup (the
/// inbox with it), or rows repaired by hand.
///
/// `202` with the replay; follow it at `GET /consumption/replays`. `422`
/// for a topic that is not an event topic, a time in the future or before
/// the deduplication window, or an empty or overlong reason.
#[utoipa::path(
    post,
    path = "/consumption/replays",
    tag = "consumption",
    request_body = ReplayRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Recorded: a member starts it within a second", body = Replay),
        (status = 400, description = "`invalid_json`: a malformed body, a missing or unknown field, a time that is not RFC 3339", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a user token; this needs a service credential", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over 16 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: not an event topic, a time in the future or before the deduplication window, or an empty or overlong reason", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "replay", skip_all)]
pub async fn replay(
    caller: Authenticated,
    replays: web::Data<Replays>,
    kafka: web::Data<KafkaSettings>,
    request: web::Json<ReplayRequest>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&caller, NEEDS_SERVICE)?;
    let reason = super::operator_reason(&request.reason)?;
    if !Topic::EVENTS
        .iter()
        .any(|&event| kafka.topics.name(event) == request.topic)
    {
        return Err(ApiError::Validation(format!(
            "`{}` is not an event topic",
            request.topic
        )));
    }
    if request.from > Utc::now() {
        return Err(ApiError::Validation("`from` is in the future".to_owned()));
    }
    let earliest = replays.earliest();
    if request.from < earliest {
        return Err(ApiError::Validation(format!(
            "`from` is before {earliest}: the ids of events applied before the deduplication window \
             (inbox.retention.hours, less an hour for clocks) may be pruned, and those events would be applied twice"
        )));
    }
    let replay = replays
        .request(&request.topic, request.from, reason)
        .await
        .map_err(database_error)?;
    tracing::info!(
        replay_id = replay.id,
        topic = replay.topic,
        from = %replay.from_time,
        reason = replay.reason,
        "operator asked for a replay"
    );
    Ok(HttpResponse::Accepted().json(replay))
}

/// Every replay, newest first, with its progress.
#[utoipa::path(
    get,
    path = "/consumption/replays",
    tag = "consumption",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every replay, newest first", body = ReplayList),
        (status = 401, description = "`unauthorized`: no valid token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a user token; this needs a service credential", body = ErrorBody),
    )
)]
pub async fn replays(caller: Authenticated, replays: web::Data<Replays>) -> Result<HttpResponse, ApiError> {
    require_operator(&caller, NEEDS_SERVICE)?;
    let replays = replays.list().await.map_err(database_error)?;
    Ok(HttpResponse::Ok().json(ReplayList { replays }))
}

/// A topic the group consumes (the event topics and the retry topic) and
/// a partition that is not negative.
fn check(kafka: &KafkaSettings, topic: &str, partition: Option<i32>) -> Result<(), ApiError> {
    let consumed = [Topic::NewUserCreated, Topic::IssuedToken, Topic::Retry]
        .iter()
        .any(|&consumed| kafka.topics.name(consumed) == topic);
    if !consumed {
        return Err(ApiError::Validation(format!(
            "`{topic}` is not a topic the group consumes"
        )));
    }
    if partition.is_some_and(|partition| partition < 0) {
        return Err(ApiError::Validation("partition must not be negative".to_owned()));
    }
    Ok(())
}

fn database_error(error: sqlx::Error) -> ApiError {
    ApiError::Unexpected(anyhow::Error::new(error).context("consumption control (database)"))
}
