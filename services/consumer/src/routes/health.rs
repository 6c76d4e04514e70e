//! `GET /health/live`: the process serves HTTP and no partition worker has
//! failed (what the container health check asks: a restart fixes that);
//! `GET /health/ready`: the common checks (database, broker) plus whether
//! this group member is stuck, for operators and alarms.

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

/// `200 {"status":"ok"}` while the process serves HTTP and every partition
/// worker runs; `503 not_live` once one panicked (its partition is paused
/// for good, and the next owner after a restart starts from the last
/// commit). Not a stall or a dependency outage: a restart fixes neither,
/// and the container health check that asks this must not replace every
/// task for them.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "health",
    responses(
        (status = 200, description = "The process serves HTTP and every partition worker runs", body = service_common::openapi::Status),
        (status = 503, description = "`not_live`: a partition worker panicked; the message says where", body = service_common::http::ErrorBody),
    )
)]
pub async fn live(stall: web::Data<StallCheck>) -> HttpResponse {
    match stall.monitor.failure() {
        None => service_common::health::live().await,
        Some(reason) => {
            service_common::http::error_response(actix_web::http::StatusCode::SERVICE_UNAVAILABLE, "not_live", &reason)
        }
    }
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
