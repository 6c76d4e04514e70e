//! Builds the application and runs it until shutdown.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::web;
use anyhow::Context;
use kafka_service::EventProducer;
use service_common::auth::TokenKeys;
use service_common::health::{self, BrokerProbe};
use service_common::metrics::{Metrics, Registry};
use service_common::retention::Pruner;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::configuration::Settings;
use crate::login_limit::LoginLimiter;
use crate::openapi;
use crate::outbox::{pruning, OutboxGauges, Relay};
use crate::routes::auth::TokenTtl;
use crate::routes::{auth, outbox, users};

/// How long shutdown waits for queued records' delivery reports.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The producer: HTTP server and outbox relay, ready to run.
pub struct Application {
    port: u16,
    server: Server,
    relay: Relay,
    /// Measures the outbox's gauges in the background.
    gauges: OutboxGauges,
    /// Deletes published rows past their retention in the background.
    pruner: Pruner,
    /// Checks the broker in the background, for readiness and its metric.
    broker: BrokerProbe,
    producer: EventProducer,
    shutdown_timeout: Duration,
}

impl Application {
    /// Binds the HTTP listener, answering `503 starting` on it while it
    /// connects to the database (creating it if configured to) and runs the
    /// migrations; then creates the Kafka producer and serves on that
    /// listener. The broker may be down: the relay waits for it.
    ///
    /// # Errors
    ///
    /// When the database is unreachable, a migration fails, the signing key
    /// is too short, the Kafka settings are invalid, or the port cannot be
    /// bound.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        // Bound first, answering `503 starting` while the migrations run,
        // so that a long one is not taken for a dead process.
        let (listener, pool) = service_common::server::listen_then_migrate(
            &settings.http,
            &settings.database,
            sqlx::migrate!("./migrations"),
        )
        .await?;
        let address = format!("{}:{}", settings.http.host, settings.http.port);
        let port = listener.local_addr()?.port();
        let keys = TokenKeys::new(&settings.auth.jwt_secret).context("invalid configuration: auth.jwt_secret")?;
        let producer = EventProducer::new(&settings.kafka, "producer").context("invalid configuration: kafka")?;
        let ttl = TokenTtl(chrono::Duration::seconds(settings.auth.token_ttl_secs as i64));
        let mut registry = Registry::default();
        producer.register_metrics(&mut registry);
        let gauges = OutboxGauges::new(pool.clone(), settings.database.statement_deadline(), &mut registry);
        let pruner = pruning::pruner(pool.clone(), settings.outbox.retention.clone(), &mut registry);
        let broker = BrokerProbe::new(producer.clone(), &mut registry);
        let metrics = Metrics::new(registry);
        let limiter = LoginLimiter::new(&settings.login_limit);
        let drain = settings.shutdown.http_drain();
        let data = AppData {
            pool: pool.clone(),
            keys,
            ttl,
            limiter,
            broker: broker.clone(),
        };
        let server = run_server(listener, metrics, drain, data)?;
        let relay = Relay::new(pool.clone(), producer.clone(), &settings);
        tracing::info!(%address, port, "producer listening");
        Ok(Self {
            port,
            server,
            relay,
            gauges,
            pruner,
            broker,
            producer,
            shutdown_timeout: settings.shutdown.timeout(),
        })
    }

    /// The bound HTTP port (useful when configured as `0`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves HTTP and relays the outbox until `shutdown` is cancelled, then
    /// stops taking requests, lets in-flight ones finish, stops the relay
    /// after its current batch and flushes the producer.
    ///
    /// # Errors
    ///
    /// When the server fails, or the relay stops on an error retrying
    /// cannot fix (see [`Relay::run`]).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let _watchdog = service_common::shutdown::exit_after_deadline(shutdown.clone(), self.shutdown_timeout);
        let server_handle = self.server.handle();
        let mut server = tokio::spawn(self.server);
        let mut relay = tokio::spawn(self.relay.run(shutdown.clone()));
        tokio::spawn(self.broker.run(shutdown.clone()));
        tokio::spawn(self.gauges.run(shutdown.clone()));
        tokio::spawn(self.pruner.run(shutdown.clone()));
        let outcome = tokio::select! {
            () = shutdown.cancelled() => Ok(()),
            result = &mut server => result.context("http server panicked")?.context("http server failed"),
            result = &mut relay => {
                // The relay only returns early on a fatal error.
                shutdown.cancel();
                return result.context("outbox relay panicked")?;
            }
        };
        shutdown.cancel();
        server_handle.stop(true).await;
        relay.await.context("outbox relay panicked")??;
        self.producer.flush(FLUSH_TIMEOUT).await;
        tracing::info!("producer stopped");
        outcome
    }
}

/// What the HTTP handlers need.
struct AppData {
    pool: PgPool,
    keys: TokenKeys,
    ttl: TokenTtl,
    limiter: LoginLimiter,
    broker: BrokerProbe,
}

fn run_server(listener: TcpListener, metrics: Metrics, drain: Duration, data: AppData) -> std::io::Result<Server> {
    let limiter = web::Data::new(data.limiter);
    let pool = web::Data::new(data.pool);
    let keys = web::Data::new(data.keys);
    let ttl = web::Data::new(data.ttl);
    let broker = web::Data::new(data.broker);
    service_common::server::serve(listener, metrics, drain, move |config| {
        config
            .app_data(pool.clone())
            .app_data(keys.clone())
            .app_data(ttl.clone())
            .app_data(limiter.clone())
            .app_data(broker.clone())
            .route("/health/ready", web::get().to(health::ready))
            .route("/users", web::post().to(users::create_user))
            .route("/users/{id}", web::get().to(users::get_user))
            .route("/auth/token", web::post().to(auth::issue_token))
            .route("/outbox/failing", web::get().to(outbox::list_failing))
            .route("/outbox/{id}/retry", web::post().to(outbox::retry))
            .route("/outbox/{id}/set-aside", web::post().to(outbox::set_aside))
            .route(
                "/openapi.json",
                web::get().to(service_common::openapi::document::<openapi::ApiDoc>),
            );
    })
}
