//! `GET /health/live` and `GET /health/ready`, the same in both services.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use kafka_service::EventProducer;
use serde_json::json;
use sqlx::PgPool;

use crate::http::error_response;

/// Longest a readiness check waits for the database, per request.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(2);

/// `200` while the process serves HTTP.
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// `200` when the database and a broker answer (a broker within
/// `kafka.request_timeout_ms`); `503 not_ready` naming the ones that do not.
/// Needs `web::Data<PgPool>` and `web::Data<EventProducer>` in the app data.
pub async fn ready(pool: web::Data<PgPool>, producer: web::Data<EventProducer>) -> HttpResponse {
    readiness(unavailable(&pool, &producer).await)
}

/// What of the database and the broker does not answer: `database`,
/// `broker`, both or neither.
pub async fn unavailable(pool: &PgPool, producer: &EventProducer) -> Vec<String> {
    let database = async {
        matches!(
            tokio::time::timeout(DATABASE_TIMEOUT, sqlx::query("SELECT 1").execute(pool)).await,
            Ok(Ok(_))
        )
    };
    let (database, broker) = tokio::join!(database, producer.ping());
    let mut down = Vec::new();
    if !database {
        down.push("database".to_owned());
    }
    if let Err(error) = broker {
        tracing::warn!(%error, "readiness: broker unreachable");
        down.push("broker".to_owned());
    }
    down
}

/// `200 {"status":"ready"}` when nothing is `down`, else `503 not_ready`
/// naming what is.
pub fn readiness(down: Vec<String>) -> HttpResponse {
    if down.is_empty() {
        HttpResponse::Ok().json(json!({ "status": "ready" }))
    } else {
        error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            &format!("unavailable: {}", down.join(", ")),
        )
    }
}
