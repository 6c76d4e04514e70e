//! `GET /health/live`: the process serves HTTP and no partition worker has
//! failed (what the container health check asks: a restart fixes that);
//! `GET /health/ready`: the common checks (database, broker) plus whether
//! this group member is stuck, for operators and alarms.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use kafka_service::{EventProducer, GroupMonitor};
use serde::Serialize;
use service_common::health;
use sqlx::PgPool;
use utoipa::ToSchema;

use crate::circuit::Breakers;

/// What readiness asks of the group member.
pub struct StallCheck {
    /// The member's progress and lag.
    pub monitor: GroupMonitor,
    /// Topics whose lag counts (the event topics: records waiting on the
    /// retry topic for their due time are not a stall).
    pub event_topics: Vec<String>,
    /// `readiness.stall_after_ms`.
    pub stall_after: Duration,
    /// The dependencies' circuits, reported in the body.
    pub breakers: Breakers,
}

/// The consumer's readiness: `{"status": "ready", "circuits": {"database":
/// "closed", "producer": "open"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`.
    pub status: &'static str,
    /// Each dependency's circuit breaker (`database`, `producer`):
    /// `closed`, `half_open` (calls go through to see whether it is back)
    /// or `open` (records that need it wait, and their retries are not
    /// counted; it turns half-open at the next call after its open time).
    /// An open `producer` circuit does not make the consumer unready: only
    /// tokens of users it has not seen need the producer.
    pub circuits: BTreeMap<&'static str, &'static str>,
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
/// (see [`GroupMonitor::stalled`]), with each dependency's circuit in the
/// body ([`Readiness`]); `503 not_ready` naming what is wrong, and any
/// circuit that is not closed.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "health",
    responses(
        (status = 200, description = "The database and a broker answer, and this member is not stuck; `circuits` gives each dependency's circuit breaker", body = Readiness),
        (status = 503, description = "`not_ready`: the message names what is wrong (`database`, `broker`, or how the member is stuck), and the circuits that are not closed", body = service_common::http::ErrorBody),
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
    let circuits: BTreeMap<_, _> = stall.breakers.states().into_iter().collect();
    if down.is_empty() {
        return HttpResponse::Ok().json(Readiness {
            status: "ready",
            circuits,
        });
    }
    for (dependency, state) in circuits {
        if state != "closed" {
            down.push(format!("{dependency} circuit {state}"));
        }
    }
    health::readiness(down)
}
