//! Builds the application and runs it until shutdown.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::web;
use anyhow::Context;
use kafka_service::{EventConsumer, EventProducer, Topic};
use secrecy::ExposeSecret;
use service_common::auth::TokenKeys;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::configuration::Settings;
use crate::processing::{self, Handler};
use crate::producer_client::ProducerClient;
use crate::routes::users;

/// The consumer: HTTP server and processing loop, ready to run.
pub struct Application {
    port: u16,
    server: Server,
    settings: Settings,
    handler: Handler,
}

impl Application {
    /// Connects to the database (creating it if configured to), runs the
    /// migrations and binds the HTTP listener. The broker may be down: the
    /// processing loop waits for it.
    ///
    /// # Errors
    ///
    /// When the database is unreachable, a migration fails, the signing key
    /// is too short, the Kafka settings are invalid, or the port cannot be
    /// bound.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let database = &settings.database;
        let pool = service_common::database::connect(
            database.url.expose_secret(),
            database.max_connections,
            database.create_if_missing,
            &sqlx::migrate!("./migrations"),
        )
        .await?;
        let keys = TokenKeys::new(&settings.auth.jwt_secret).context("invalid configuration: auth.jwt_secret")?;
        let producer_client = ProducerClient::new(
            &settings.producer.base_url,
            Duration::from_millis(settings.producer.timeout_ms),
            keys.clone(),
        )
        .context("could not build the HTTP client")?;
        // Only for readiness (broker reachable) for now.
        let broker = EventProducer::new(&settings.kafka, "consumer").context("invalid configuration: kafka")?;
        let address = format!("{}:{}", settings.http.host, settings.http.port);
        let listener = TcpListener::bind(&address).with_context(|| format!("could not bind {address}"))?;
        let port = listener.local_addr()?.port();
        let server = run_server(listener, pool.clone(), keys, producer_client.clone(), broker)?;
        tracing::info!(%address, port, producer = settings.producer.base_url, "consumer listening");
        Ok(Self {
            port,
            server,
            settings,
            handler: Handler::new(pool, producer_client),
        })
    }

    /// The bound HTTP port (useful when configured as `0`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves HTTP and consumes records until `shutdown` is cancelled, then
    /// stops taking requests, finishes or abandons the record in flight,
    /// commits processed offsets and leaves the group.
    ///
    /// # Errors
    ///
    /// When the server fails, a topic has too few partitions, or the final
    /// commit fails.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let server_handle = self.server.handle();
        let mut server = tokio::spawn(self.server);
        let mut consumer = tokio::spawn(consume(self.settings, self.handler, shutdown.clone()));
        let outcome = tokio::select! {
            () = shutdown.cancelled() => Ok(()),
            result = &mut server => result.context("http server panicked")?.context("http server failed"),
            result = &mut consumer => {
                // The loop only returns early on a fatal error.
                shutdown.cancel();
                server_handle.stop(true).await;
                return result.context("consumer loop panicked")?;
            }
        };
        shutdown.cancel();
        server_handle.stop(true).await;
        consumer.await.context("consumer loop panicked")??;
        tracing::info!("consumer stopped");
        outcome
    }
}

/// Provisions the topics, joins the group and processes records until
/// shutdown.
async fn consume(settings: Settings, handler: Handler, shutdown: CancellationToken) -> anyhow::Result<()> {
    let topics = &settings.kafka.topics;
    if !service_common::retry::provision_topics(&settings.kafka, &topics.specs(), &shutdown)
        .await
        .context("topic provisioning failed")?
    {
        return Ok(());
    }
    let names: Vec<&str> = Topic::ALL.iter().map(|&topic| topics.name(topic)).collect();
    let consumer = EventConsumer::new(&settings.kafka, &settings.consumer, "consumer", &names)
        .context("invalid configuration: kafka")?;
    tracing::info!(group_id = settings.consumer.group_id, topics = ?names, "subscribed");
    processing::run(consumer, handler, shutdown).await
}

fn run_server(
    listener: TcpListener,
    pool: PgPool,
    keys: TokenKeys,
    producer: ProducerClient,
    broker: EventProducer,
) -> std::io::Result<Server> {
    let pool = web::Data::new(pool);
    let keys = web::Data::new(keys);
    let producer = web::Data::new(producer);
    let broker = web::Data::new(broker);
    service_common::http::serve(listener, move |config| {
        config
            .app_data(pool.clone())
            .app_data(keys.clone())
            .app_data(producer.clone())
            .app_data(broker.clone())
            .route("/users/{id}", web::get().to(users::get_user));
    })
}
