//! The HTTP server both services run: what every service answers the same
//! way, around the service's own routes.

use std::future::Future;
use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::PgPool;
use tracing_actix_web::TracingLogger;

use crate::configuration::{DatabaseSettings, HttpSettings};
use crate::health;
use crate::http::{json_config, not_found, path_config, query_config};
use crate::metrics::{self, Metrics};

/// How long the server keeps an idle connection open: 75 s, longer than
/// the Application Load Balancer's idle timeout (60 s by default). AWS
/// recommends this ("Edit attributes for your Application Load Balancer",
/// "Connection idle timeout"): a target that closes an idle connection
/// first races the balancer's next request on it, which the client then
/// gets as a 502. actix-web's default is 5 s. Idle connections do not hold
/// up a graceful shutdown (the server stops at once with one open).
pub const KEEP_ALIVE: Duration = Duration::from_secs(75);

/// An HTTP server on `listener` with what every service has: a tracing span
/// per request, request metrics and `GET /metrics` (from `metrics`), the
/// JSON extractor settings, `/health/live`, JSON `404`s and a
/// [`KEEP_ALIVE`] for idle connections; plus the
/// service's own routes (including `/health/ready`) and app data from
/// `configure`. Signals are left to the caller, which stops the server
/// through its handle; requests in flight then get `drain` to finish
/// (whole seconds, at least one; [`ShutdownSettings::http_drain`]).
///
/// [`ShutdownSettings::http_drain`]: crate::configuration::ShutdownSettings::http_drain
///
/// # Errors
///
/// When the listener cannot be used.
pub fn serve<F>(listener: TcpListener, metrics: Metrics, drain: Duration, configure: F) -> std::io::Result<Server>
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let metrics = web::Data::new(metrics);
    let server = HttpServer::new(move || {
        App::new()
            .wrap(from_fn(metrics::record_request))
            .wrap(TracingLogger::default())
            .app_data(metrics.clone())
            .app_data(json_config())
            .app_data(path_config())
            .app_data(query_config())
            .configure(configure.clone())
            .route("/health/live", web::get().to(health::live))
            .route("/metrics", web::get().to(metrics::endpoint))
            .default_service(web::to(not_found))
    })
    .keep_alive(KEEP_ALIVE)
    .listen(listener)?
    .disable_signals()
    .shutdown_timeout(drain.as_secs().max(1))
    .run();
    Ok(server)
}

/// The `code` of the `503` every request gets while the service starts
/// ([`while_starting`]); [`health::check`] counts it as alive.
pub const STARTING: &str = "starting";

/// Answers on `listener` while `starting` runs (the database's migrations,
/// which may take minutes), then stops and returns what `starting`
/// returned; the caller serves its application on the same listener
/// afterwards, so connections made meanwhile wait in its backlog rather
/// than being refused.
///
/// Every request, `/health/live` included, gets `503` with code
/// [`STARTING`] and `Retry-After: 5`. A load balancer's target check, which
/// asks liveness, therefore sends no traffic yet, while the container check
/// ([`health::check`]) counts `starting` as alive: a long migration does not
/// get the task replaced by its own container check (docs/operations.md,
/// "Migrations and rollbacks").
///
/// # Errors
///
/// When the listener cannot be used.
pub async fn while_starting<T>(listener: &TcpListener, starting: impl Future<Output = T>) -> std::io::Result<T> {
    let server = HttpServer::new(|| {
        App::new().default_service(web::to(|| async {
            let mut response = crate::http::error_response(
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                STARTING,
                "the service is starting (running the database migrations); retry shortly",
            );
            response.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from_static("5"),
            );
            response
        }))
    })
    .workers(1)
    .listen(listener.try_clone()?)?
    .disable_signals()
    .shutdown_timeout(1)
    .run();
    let handle = server.handle();
    let serving = tokio::spawn(server);
    let output = starting.await;
    handle.stop(true).await;
    // The server's own error, if any, no longer matters: it is stopped.
    let _ = serving.await;
    Ok(output)
}

/// A service's listener and database, in the order that lets a long
/// migration run: binds `http`'s address, then connects to `database` and
/// runs `migrations` ([`crate::database::connect`]) while answering `503
/// starting` on the listener ([`while_starting`]). The service then serves
/// on the listener.
///
/// # Errors
///
/// When the address cannot be bound, or the database cannot be reached or
/// migrated.
pub async fn listen_then_migrate(
    http: &HttpSettings,
    database: &DatabaseSettings,
    migrations: Migrator,
) -> anyhow::Result<(TcpListener, PgPool)> {
    let address = format!("{}:{}", http.host, http.port);
    let listener = TcpListener::bind(&address).with_context(|| format!("could not bind {address}"))?;
    let port = listener.local_addr()?.port();
    tracing::info!(%address, port, "running the database migrations before serving");
    let pool = while_starting(&listener, crate::database::connect(database, migrations)).await??;
    Ok((listener, pool))
}
