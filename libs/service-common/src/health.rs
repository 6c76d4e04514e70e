//! `GET /health/live`, the producer's `GET /health/ready` and the checks
//! the consumer's builds on, and the container health check.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use kafka_service::EventProducer;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::metrics::Registry;

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

/// Whether a broker answers, checked every [`BROKER_CHECK_INTERVAL`] in
/// the background by [`BrokerProbe::run`]: what the producer's readiness
/// reports, and the gauge `kafka_broker_reachable` (1 when the last check
/// found one, 0 when it did not, or before the first). Readiness reads the
/// last check rather than asking the broker itself: a check waits up to
/// `kafka.request_timeout_ms` (5 s) for an absent broker, as long as the
/// load balancer waits for an answer, which would then count a broker
/// outage against the task after all.
#[derive(Clone)]
pub struct BrokerProbe {
    producer: EventProducer,
    reachable: Gauge,
    /// What the last check found: [`UNKNOWN`], [`REACHABLE`] or
    /// [`UNREACHABLE`]; a change is logged.
    last: Arc<AtomicU8>,
}

const UNKNOWN: u8 = 0;
const REACHABLE: u8 = 1;
const UNREACHABLE: u8 = 2;

/// How often [`BrokerProbe::run`] checks the broker.
pub const BROKER_CHECK_INTERVAL: Duration = Duration::from_secs(10);

impl BrokerProbe {
    /// A probe through `producer`'s client, its gauge registered in
    /// `registry`.
    pub fn new(producer: EventProducer, registry: &mut Registry) -> Self {
        let probe = Self {
            producer,
            reachable: Gauge::default(),
            last: Arc::new(AtomicU8::new(UNKNOWN)),
        };
        registry.register(
            "kafka_broker_reachable",
            "1 when a broker answered the last metadata request (within kafka.request_timeout_ms), else 0",
            probe.reachable.clone(),
        );
        probe
    }

    /// Asks for metadata (within `kafka.request_timeout_ms`); unreachable
    /// too while the producer recovers from a fatal error. Sets the gauge
    /// and logs a change: at `warn` when lost, at `info` when back.
    async fn check(&self) -> bool {
        let answered = match self.producer.fatal_error() {
            Some(fatal) => Err(format!("the producer is recovering from a fatal error: {fatal}")),
            None => self.producer.ping().await.map_err(|error| format!("{error:#}")),
        };
        let reachable = answered.is_ok();
        self.reachable.set(i64::from(reachable));
        let before = self
            .last
            .swap(if reachable { REACHABLE } else { UNREACHABLE }, Ordering::Relaxed);
        match answered {
            Err(error) if before != UNREACHABLE => {
                tracing::warn!(
                    error,
                    "no broker answers; the outbox keeps what is written until one does"
                )
            }
            Ok(()) if before == UNREACHABLE => tracing::info!("a broker answers again"),
            _ => {}
        }
        reachable
    }

    /// What the last check found: `reachable`, `unreachable`, or `unknown`
    /// before the first check has answered.
    pub fn state(&self) -> &'static str {
        match self.last.load(Ordering::Relaxed) {
            REACHABLE => "reachable",
            UNREACHABLE => "unreachable",
            _ => "unknown",
        }
    }

    /// Checks every [`BROKER_CHECK_INTERVAL`] until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        while shutdown
            .run_until_cancelled(async {
                self.check().await;
                tokio::time::sleep(BROKER_CHECK_INTERVAL).await;
            })
            .await
            .is_some()
        {}
    }
}

/// The producer's readiness, what its load balancer checks: `200` when its
/// database answers within 2 s (all it needs to take requests: the outbox
/// keeps events while no broker answers), with the broker's state as of
/// the last background check in the body,
/// `{"status":"ready","broker":"reachable"}`, `"unreachable"` or
/// `"unknown"` (before the first check); `503 not_ready` naming `database`
/// otherwise. Needs `web::Data<PgPool>` and `web::Data<BrokerProbe>` in
/// the app data.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "health",
    responses(
        (status = 200, description = "The database answers; `broker` says whether a broker did at the last check", body = crate::openapi::Readiness),
        (status = 503, description = "`not_ready`: the database does not answer", body = crate::http::ErrorBody),
    )
)]
pub async fn ready(pool: web::Data<PgPool>, broker: web::Data<BrokerProbe>) -> HttpResponse {
    if !database_answers(&pool).await {
        return readiness(vec!["database".to_owned()]);
    }
    HttpResponse::Ok().json(json!({ "status": "ready", "broker": broker.state() }))
}

/// Whether `SELECT 1` answers within [`DATABASE_TIMEOUT`].
async fn database_answers(pool: &PgPool) -> bool {
    matches!(
        tokio::time::timeout(DATABASE_TIMEOUT, sqlx::query("SELECT 1").execute(pool)).await,
        Ok(Ok(_))
    )
}

/// What of the database and the broker does not answer: `database`,
/// `broker`, both or neither.
pub async fn unavailable(pool: &PgPool, producer: &EventProducer) -> Vec<String> {
    let (database, broker) = tokio::join!(database_answers(pool), producer.ping());
    let mut down = Vec::new();
    if !database {
        down.push("database".to_owned());
    }
    if let Err(error) = broker {
        tracing::warn!(%error, "readiness: broker unreachable");
        down.push("broker".to_owned());
    }
    if let Some(fatal) = producer.fatal_error() {
        tracing::warn!(fatal, "readiness: the producer is recovering from a fatal error");
        down.push("producer (recovering from a fatal error)".to_owned());
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

/// What the container health check asks: liveness, never readiness. ECS
/// replaces a task whose essential container is unhealthy, which fixes a
/// fault inside the process but not a database or broker outage, and
/// replacing every task during one would stop the producer from taking the
/// writes its outbox exists to keep (docs/operations.md, "Health").
pub const CONTAINER_CHECK_PATH: &str = "/health/live";

/// The container health check, run as `<service> healthcheck` inside the
/// container (the runtime image has no shell or curl): asks the service's
/// own `GET http://127.0.0.1:{port}/health/live` ([`CONTAINER_CHECK_PATH`]),
/// waiting at most 3 s.
///
/// Exit status 0 when it answers `200`, or `503` with code
/// [`STARTING`](crate::server::STARTING) (it is running its migrations:
/// alive, and not to be replaced for taking long); 1 otherwise (Docker's and
/// ECS's convention for unhealthy), with one line on stderr saying why.
pub fn check(service: &str, port: u16) -> std::process::ExitCode {
    let url = format!("http://127.0.0.1:{port}{CONTAINER_CHECK_PATH}");
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
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                let starting = || {
                    serde_json::from_str::<serde_json::Value>(&body)
                        .is_ok_and(|body| body["error"]["code"] == crate::server::STARTING)
                };
                match status {
                    reqwest::StatusCode::OK => Ok(()),
                    reqwest::StatusCode::SERVICE_UNAVAILABLE if starting() => Ok(()),
                    status => Err(format!("{status}: {body}")),
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
