//! Builds the application and runs it until shutdown.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::web;
use anyhow::Context;
use kafka_service::dispatch;
use kafka_service::reader::PartitionReader;
use kafka_service::{EventConsumer, EventProducer, GroupMonitor, KafkaSettings, Topic};
use service_common::auth::TokenKeys;
use service_common::metrics::{Metrics, Registry};
use service_common::retention::Pruner;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::circuit::Breakers;
use crate::configuration::Settings;
use crate::dead_letter_requests::DeadLetterRequests;
use crate::delivery::{Copies, Delivery, DeliveryMetrics};
use crate::feed::Feed;
use crate::inbox;
use crate::openapi;
use crate::parking::Parking;
use crate::pauses::Pauses;
use crate::processing::Handler;
use crate::producer_client::ProducerClient;
use crate::recovery::Recovery;
use crate::replays::Replays;
use crate::routes::events::{self, StreamsClosed};
use crate::routes::health::{self, StallCheck};
use crate::routes::{consumption, dead_letters, parked, records, users};

/// The consumer: HTTP server and processing loop, ready to run.
pub struct Application {
    port: u16,
    server: Server,
    /// Ends the live feed's streams when shutdown begins.
    streams_closed: CancellationToken,
    settings: Settings,
    delivery: Delivery,
    /// Copies again parked records whose copy was lost; measures parking.
    recovery: Recovery,
    /// Records an operator asked to dead-letter, read again in the
    /// background.
    requests: DeadLetterRequests,
    /// Deletes applied events' ids past the deduplication window in the
    /// background.
    pruner: Pruner,
    /// What an operator paused, handed to the consumer.
    pauses: Pauses,
    /// Runs the replays an operator asked for, in the background.
    replays: Replays,
    producer: EventProducer,
    monitor: GroupMonitor,
}

impl Application {
    /// Binds the HTTP listener, answering `503 starting` on it while it
    /// connects to the database (creating it if configured to) and runs the
    /// migrations; then builds the service, which serves on that listener.
    /// The broker may be down: the processing loop waits for it.
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
        let producer_client = ProducerClient::new(
            &settings.producer.base_url,
            Duration::from_millis(settings.producer.timeout_ms),
            keys.clone(),
        )
        .context("could not build the HTTP client")?;
        // Parks records on the retry topic, dead-letters and redrives them,
        // and tells readiness whether the broker answers.
        let producer = EventProducer::new(&settings.kafka, "consumer").context("invalid configuration: kafka")?;
        let mut registry = Registry::default();
        let monitor = GroupMonitor::new(&mut registry);
        producer.register_metrics(&mut registry);
        let delivery_metrics = DeliveryMetrics::new(&mut registry);
        let breakers = Breakers::new(&settings.circuit_breaker, &mut registry);
        // A database that stops answering fails a call after this, rather
        // than hanging a partition for good; a handling may also call the
        // producer once.
        let database_deadline = settings.database.statement_deadline();
        let handling_deadline =
            database_deadline.map(|deadline| deadline + Duration::from_millis(settings.producer.timeout_ms));
        let recovery = Recovery::new(
            Parking::new(pool.clone(), database_deadline),
            producer.clone(),
            &settings.kafka.topics,
            &settings.retry,
            &mut registry,
        );
        let pauses = Pauses::new(pool.clone(), database_deadline);
        let pruner = inbox::pruner(pool.clone(), settings.inbox.retention.clone(), &mut registry);
        let metrics = Metrics::new(registry);
        let requests = DeadLetterRequests::load(pool.clone(), database_deadline)
            .await
            .context("could not read the dead-letter requests")?;
        let topics = &settings.kafka.topics;
        let stall = StallCheck {
            monitor: monitor.clone(),
            event_topics: Topic::EVENTS.iter().map(|&t| topics.name(t).to_owned()).collect(),
            stall_after: Duration::from_millis(settings.readiness.stall_after_ms),
            breakers: breakers.clone(),
        };
        let feed = Feed::default();
        let handler = Handler::new(
            pool.clone(),
            producer_client.clone(),
            feed.clone(),
            handling_deadline,
            breakers,
        );
        let reader = Arc::new(PartitionReader::new(&settings.kafka).context("invalid configuration: kafka")?);
        let replays = Replays::new(
            pool.clone(),
            database_deadline,
            handler.clone(),
            Arc::clone(&reader),
            settings.inbox.retention.period(),
        );
        let streams_closed = CancellationToken::new();
        let server = run_server(
            listener,
            metrics,
            settings.shutdown.http_drain(),
            AppData {
                pool: pool.clone(),
                keys,
                producer_client: producer_client.clone(),
                producer: producer.clone(),
                kafka: settings.kafka.clone(),
                stall,
                recovery: recovery.clone(),
                requests: requests.clone(),
                pauses: pauses.clone(),
                replays: replays.clone(),
                feed: feed.clone(),
                streams_closed: StreamsClosed(streams_closed.clone()),
            },
        )?;
        tracing::info!(%address, port, producer = settings.producer.base_url, "consumer listening");
        let delivery = Delivery::new(
            handler,
            Parking::new(pool, database_deadline),
            Copies {
                producer: producer.clone(),
                reader,
                topics: topics.clone(),
            },
            settings.retry.clone(),
            delivery_metrics,
            requests.clone(),
            &settings.consumer.group_id,
        );
        Ok(Self {
            port,
            server,
            streams_closed,
            settings,
            delivery,
            recovery,
            requests,
            pruner,
            pauses,
            replays,
            producer,
            monitor,
        })
    }

    /// The bound HTTP port (useful when configured as `0`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves HTTP and consumes records until `shutdown` is cancelled, then
    /// stops taking requests, stops fetching, finishes or abandons the
    /// records in flight, commits processed offsets, leaves the group and
    /// flushes the producer, all within `shutdown.timeout_ms` (past it the
    /// process exits with status 1).
    ///
    /// # Errors
    ///
    /// When the server fails, a topic has another partition count than
    /// configured, or the final
    /// commit fails.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let deadline = self.settings.shutdown.timeout();
        let _watchdog = service_common::shutdown::exit_after_deadline(shutdown.clone(), deadline);
        let server_handle = self.server.handle();
        let mut server = tokio::spawn(self.server);
        let mut consumer = tokio::spawn(consume(
            self.settings,
            self.delivery,
            self.monitor,
            self.pauses,
            shutdown.clone(),
        ));
        tokio::spawn(self.recovery.run(shutdown.clone()));
        tokio::spawn(self.requests.run(shutdown.clone()));
        tokio::spawn(self.pruner.run(shutdown.clone()));
        tokio::spawn(self.replays.run(shutdown.clone()));
        let outcome = tokio::select! {
            () = shutdown.cancelled() => Ok(()),
            result = &mut server => result.context("http server panicked")?.context("http server failed"),
            result = &mut consumer => {
                // The loop only returns early on a fatal error.
                shutdown.cancel();
                self.streams_closed.cancel();
                server_handle.stop(true).await;
                return result.context("consumer loop panicked")?;
            }
        };
        shutdown.cancel();
        // Live feed streams never end by themselves: end them so the
        // server can drain.
        self.streams_closed.cancel();
        // The HTTP server drains while the partition workers finish.
        let (_, consumed) = tokio::join!(server_handle.stop(true), consumer);
        consumed.context("consumer loop panicked")??;
        self.producer.flush(FLUSH_TIMEOUT).await;
        tracing::info!("consumer stopped");
        outcome
    }
}

/// How long shutdown waits for queued records' delivery reports. Every
/// record is awaited by the worker that produced it, so this is a backstop.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// What shutdown reserves for the final commit and leaving the group, out
/// of `shutdown.timeout_ms`; partition workers get the rest to finish.
const COMMIT_RESERVE: Duration = Duration::from_secs(5);

/// Provisions the topics, joins the group and processes records until
/// shutdown.
async fn consume(
    settings: Settings,
    delivery: Delivery,
    monitor: GroupMonitor,
    pauses: Pauses,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topics = &settings.kafka.topics;
    let specs = topics.specs(&Topic::ALL);
    if !kafka_service::provision_topics(&settings.kafka, &specs, service_common::retry::backoff(), &shutdown)
        .await
        .context("topic provisioning failed")?
    {
        return Ok(());
    }
    // The dead-letter topic is not consumed: operators read it.
    let names: Vec<&str> = [Topic::NewUserCreated, Topic::IssuedToken, Topic::Retry]
        .iter()
        .map(|&topic| topics.name(topic))
        .collect();
    let consumer = EventConsumer::new(
        &settings.kafka,
        &settings.consumer,
        "consumer",
        &names,
        shutdown.child_token(),
        monitor,
    )
    .context("invalid configuration: kafka")?;
    tracing::info!(group_id = settings.consumer.group_id, topics = ?names, "subscribed");
    let holds = consumer.hold_handle();
    if let Err(error) = pauses.apply_once(&holds).await {
        tracing::warn!(%error, "could not read the consumption pauses before consuming; reading them again in a second");
    }
    tokio::spawn(pauses.apply(holds, shutdown.clone()));
    let drain_timeout = settings
        .shutdown
        .timeout()
        .saturating_sub(COMMIT_RESERVE)
        .max(Duration::from_secs(1));
    let dispatch_settings = dispatch::DispatchSettings::new(&settings.consumer, drain_timeout);
    dispatch::run(consumer, delivery, dispatch_settings, shutdown)
        .await
        .context("final offset commit failed")
}

/// What the HTTP handlers need.
struct AppData {
    feed: Feed,
    streams_closed: StreamsClosed,
    pool: PgPool,
    keys: TokenKeys,
    producer_client: ProducerClient,
    producer: EventProducer,
    kafka: KafkaSettings,
    stall: StallCheck,
    recovery: Recovery,
    requests: DeadLetterRequests,
    pauses: Pauses,
    replays: Replays,
}

fn run_server(listener: TcpListener, metrics: Metrics, drain: Duration, data: AppData) -> std::io::Result<Server> {
    let pool = web::Data::new(data.pool);
    let keys = web::Data::new(data.keys);
    let producer_client = web::Data::new(data.producer_client);
    let producer = web::Data::new(data.producer);
    let kafka = web::Data::new(data.kafka);
    let stall = web::Data::new(data.stall);
    let recovery = web::Data::new(data.recovery);
    let requests = web::Data::new(data.requests);
    let pauses = web::Data::new(data.pauses);
    let replays = web::Data::new(data.replays);
    let feed = web::Data::new(data.feed);
    let streams_closed = web::Data::new(data.streams_closed);
    service_common::server::serve(listener, metrics, drain, move |config| {
        config
            .app_data(pool.clone())
            .app_data(keys.clone())
            .app_data(producer_client.clone())
            .app_data(producer.clone())
            .app_data(kafka.clone())
            .app_data(recovery.clone())
            .app_data(requests.clone())
            .app_data(pauses.clone())
            .app_data(replays.clone())
            .app_data(stall.clone())
            .app_data(feed.clone())
            .app_data(streams_closed.clone())
            .route("/health/live", web::get().to(health::live))
            .route("/health/ready", web::get().to(health::ready))
            .route("/users/{id}", web::get().to(users::get_user))
            .route("/dead-letters", web::get().to(dead_letters::list))
            .route("/dead-letters/redrive", web::post().to(dead_letters::redrive))
            .route("/parked", web::get().to(parked::list))
            .route("/parked/release", web::post().to(parked::release))
            .route("/parked/dead-letter", web::post().to(parked::dead_letter))
            .route("/records/dead-letter", web::post().to(records::dead_letter))
            .route("/consumption/pause", web::post().to(consumption::pause))
            .route("/consumption/resume", web::post().to(consumption::resume))
            .route("/consumption/pauses", web::get().to(consumption::list))
            .route("/consumption/replays", web::post().to(consumption::replay))
            .route("/consumption/replays", web::get().to(consumption::replays))
            .route("/events/stream", web::get().to(events::stream))
            .route("/feed", web::get().to(events::page))
            .route("/feed.js", web::get().to(events::script))
            .route("/feed.css", web::get().to(events::stylesheet))
            .route(
                "/openapi.json",
                web::get().to(service_common::openapi::document::<openapi::ApiDoc>),
            );
    })
}
