//! `GET /health/ready`: the common checks (database, broker) plus whether
//! this group member is stuck, so ECS replaces a stuck task instead of
//! reporting it healthy.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use kafka_service::{EventProducer, GroupMonitor};
use service_common::health;
use sqlx::PgPool;

/// What readiness asks of the group member.
pub struct StallCheck {
    /// The member's progress and lag.
    pub monitor: GroupMonitor,
    /// Topics whose lag counts (the event topics: records waiting on the
    /// retry topic for their due time are not a stall).
    pub event_topics: Vec<String>,
    /// `readiness.stall_after_ms`.
    pub stall_after: Duration,
}

/// `200` when the database and a broker answer and the member is not stuck
/// (see [`GroupMonitor::stalled`]); `503 not_ready` naming what is wrong.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "health",
    responses(
        (status = 200, description = "The database and a broker answer, and this member is not stuck", body = service_common::openapi::Status),
        (status = 503, description = "`not_ready`: the message names what is wrong (`database`, `broker`, or how the member is stuck)", body = service_common::http::ErrorBody),
    )
)]
pub async fn ready(
    pool: web::Data<PgPool>,
    producer: web::Data<EventProducer>,
    stall: web::Data<StallCheck>,
) -> HttpResponse {
    let mut down = health::unavailable(&pool, &producer).await;
    let topics: Vec<&str> = stall.event_topics.iter().map(String::as_str).collect();
    if let Some(reason) = stall.monitor.stalled(&topics, stall.stall_after) {
        tracing::warn!(reason, "readiness: consumer stuck");
        down.push(reason);
    }
    health::readiness(down)
}
