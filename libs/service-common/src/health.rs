//! `GET /health/live` and `GET /health/ready`, the same in both services,
//! and the container health check that asks them.

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
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "health",
    responses((status = 200, description = "The process serves HTTP", body = crate::openapi::Status))
)]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// `200` when the database and a broker answer (a broker within
/// `kafka.request_timeout_ms`); `503 not_ready` naming the ones that do not.
/// Needs `web::Data<PgPool>` and `web::Data<EventProducer>` in the app data.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "health",
    responses(
        (status = 200, description = "The database and a broker answer", body = crate::openapi::Status),
        (status = 503, description = "`not_ready`: the message names what does not answer", body = crate::http::ErrorBody),
    )
)]
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

/// The container health check, run as `<service> healthcheck` inside the
/// container (the runtime image has no shell or curl): asks the service's
/// own `GET http://127.0.0.1:{port}/health/ready`, waiting at most 3 s.
///
/// Exit status 0 when it answers `200`, 1 otherwise (Docker's and ECS's
/// convention for unhealthy), with one line on stderr saying why.
pub fn check(service: &str, port: u16) -> std::process::ExitCode {
    let url = format!("http://127.0.0.1:{port}/health/ready");
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| error.to_string())
        .and_then(|runtime| {
            runtime.block_on(async {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(3))
                    .build()
                    .map_err(|error| error.to_string())?;
                let response = client.get(&url).send().await.map_err(|error| error.to_string())?;
                match response.status() {
                    reqwest::StatusCode::OK => Ok(()),
                    status => Err(format!("{status}: {}", response.text().await.unwrap_or_default())),
                }
            })
        });
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("{service}: unhealthy: {url}: {reason}");
            std::process::ExitCode::FAILURE
        }
    }
}
