//! The transactional outbox and its relay.
//!
//! [`append`] inserts an event in the caller's transaction and notifies the
//! `outbox` channel, which PostgreSQL delivers on commit. The [`Relay`]
//! publishes pending rows in `id` order and marks them published after their
//! delivery reports.
//!
//! Per-key order: rows are published in `id` order by one relay at a time
//! (a PostgreSQL advisory lock elects it among all producer instances), the
//! idempotent producer keeps a partition's records in send order, and it
//! retries a record until delivered (`message_timeout_ms = 0`), so a record
//! never overtakes an earlier one of the same key.
//!
//! At-least-once: a crash after delivery but before the row is marked
//! republishes the row with the same `ce_id`; consumers deduplicate on it.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use events::UserEvent;
use futures::future::join_all;
use kafka_service::{Envelope, EventProducer, KafkaSettings, Topic};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use service_common::metrics::{seconds_histogram, Registry, TopicLabels};
use service_common::retry::{backoff, sleep_or_cancel};
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
use std::sync::atomic::AtomicU64;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The PostgreSQL notification channel [`append`] notifies.
pub const CHANNEL: &str = "outbox";

/// Advisory lock key that elects the one relay publishing at a time
/// (`pg_try_advisory_lock`). Any constant unique within the database.
const RELAY_LOCK_KEY: i64 = 0x6f75_7462_6f78; // "outbox"

/// How long a relay told to stop waits for the batch in flight before it
/// abandons it (its rows stay pending and are published again later).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Appends `event` to the outbox inside the caller's transaction and
/// returns its event id (`ce_id`).
///
/// # Errors
///
/// The database error, which should abort the transaction.
pub async fn append(tx: &mut PgConnection, event: &UserEvent) -> Result<Uuid, sqlx::Error> {
    let event_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, subject, occurred_at, data, traceparent) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(event_id)
    .bind(event.event_type())
    .bind(event.user_id().to_string())
    .bind(event.time())
    .bind(event.data())
    .bind(service_common::telemetry::current_traceparent())
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut *tx)
        .await?;
    Ok(event_id)
}

#[derive(sqlx::FromRow)]
struct PendingRow {
    id: i64,
    event_id: Uuid,
    event_type: String,
    subject: String,
    occurred_at: DateTime<Utc>,
    data: serde_json::Value,
    traceparent: Option<String>,
}

/// Publishes outbox rows to Kafka. See the [module docs](self).
pub struct Relay {
    /// For the `LISTEN` connection, and the options of the leadership
    /// connection (which holds the advisory lock and runs every relay query,
    /// so losing it loses the lock and stops publishing at once).
    pool: PgPool,
    producer: EventProducer,
    kafka: KafkaSettings,
    batch_size: u32,
    poll_interval: Duration,
    metrics: RelayMetrics,
}

/// The relay's metrics:
///
/// - `outbox_pending_rows`: rows not yet published, as of the last batch;
/// - `outbox_oldest_pending_age_seconds`: age of the oldest of them (0 when
///   none), as of the last batch;
/// - `kafka_records_published_total{topic,result}`: `delivered` or `failed`;
/// - `kafka_delivery_duration_seconds{topic}`: from handing a record to the
///   client to its delivery report.
///
/// While no instance is elected (or the database is down) they stand still.
#[derive(Clone)]
pub struct RelayMetrics {
    pending: Gauge,
    oldest_age: Gauge<f64, AtomicU64>,
    published: Family<PublishLabels, Counter>,
    delivery: Family<TopicLabels, Histogram, fn() -> Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublishLabels {
    topic: String,
    result: &'static str,
}

impl RelayMetrics {
    /// The metrics, registered in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            pending: Gauge::default(),
            oldest_age: Gauge::default(),
            published: Family::default(),
            delivery: Family::new_with_constructor(seconds_histogram),
        };
        registry.register(
            "outbox_pending_rows",
            "Outbox rows not yet published",
            metrics.pending.clone(),
        );
        registry.register(
            "outbox_oldest_pending_age_seconds",
            "Age of the oldest outbox row not yet published",
            metrics.oldest_age.clone(),
        );
        registry.register(
            "kafka_records_published",
            "Records handed to Kafka, by topic and delivery result",
            metrics.published.clone(),
        );
        registry.register(
            "kafka_delivery_duration_seconds",
            "Time from producing a record to its delivery report",
            metrics.delivery.clone(),
        );
        metrics
    }
}

impl Relay {
    /// A relay over the outbox of `pool`'s database.
    pub fn new(
        pool: PgPool,
        producer: EventProducer,
        kafka: KafkaSettings,
        batch_size: u32,
        poll_interval: Duration,
        metrics: RelayMetrics,
    ) -> Self {
        Self {
            pool,
            producer,
            kafka,
            batch_size: batch_size.max(1),
            poll_interval,
            metrics,
        }
    }

    /// Runs until `shutdown` is cancelled: provisions the topics, waits to be
    /// elected, then publishes pending rows whenever notified (or every poll
    /// interval). Database and broker outages are logged and retried with
    /// backoff.
    ///
    /// # Errors
    ///
    /// Only for errors retrying cannot fix: a topic with fewer partitions
    /// than configured, or a topic the broker refuses to create.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let specs = self.kafka.topics.specs(&Topic::EVENTS);
        if !service_common::retry::provision_topics(&self.kafka, &specs, &shutdown)
            .await
            .context("topic provisioning failed")?
        {
            return Ok(());
        }
        let mut backoff = backoff();
        while !shutdown.is_cancelled() {
            match self.lead(&shutdown).await {
                Ok(()) => return Ok(()),
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), "outbox relay interrupted; retrying");
                    if !sleep_or_cancel(&mut backoff, &shutdown).await {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Becomes the leader, then publishes until shutdown. Returns `Ok` on
    /// shutdown, `Err` when the leadership connection or the broker fails.
    async fn lead(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut connection = PgConnection::connect_with(&self.pool.connect_options())
            .await
            .context("could not open the relay's database connection")?;
        let mut waiting_logged = false;
        loop {
            let elected: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(RELAY_LOCK_KEY)
                .fetch_one(&mut connection)
                .await
                .context("could not try the relay lock")?;
            if elected {
                break;
            }
            if !waiting_logged {
                tracing::info!("another producer instance is relaying the outbox; standing by");
                waiting_logged = true;
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.poll_interval) => {}
            }
        }
        tracing::info!("outbox relay elected; publishing");

        let mut listener = PgListener::connect_with(&self.pool).await.context("could not LISTEN")?;
        listener.listen(CHANNEL).await.context("could not LISTEN")?;
        let mut delays = backoff();
        while !shutdown.is_cancelled() {
            let published = match self.publish_batch(&mut connection, shutdown).await {
                Ok(published) => {
                    delays = backoff();
                    published
                }
                Err(error @ RelayError::Database(_)) => return Err(error.into()),
                Err(error @ RelayError::Delivery(_)) => {
                    tracing::warn!(
                        error = format!("{:#}", anyhow::Error::from(error)),
                        "outbox batch not fully delivered; retrying"
                    );
                    sleep_or_cancel(&mut delays, shutdown).await;
                    continue;
                }
            };
            if published < self.batch_size as usize {
                // Caught up: wait for a commit's NOTIFY or the poll interval.
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    notification = listener.recv() => {
                        if let Err(error) = notification {
                            tracing::warn!(%error, "outbox LISTEN connection lost; reconnecting");
                        }
                    }
                    () = tokio::time::sleep(self.poll_interval) => {}
                }
            }
        }
        Ok(())
    }

    /// Publishes up to `batch_size` pending rows, in `id` order, and marks
    /// the delivered ones. Returns how many rows it published.
    async fn publish_batch(
        &self,
        connection: &mut PgConnection,
        shutdown: &CancellationToken,
    ) -> Result<usize, RelayError> {
        let rows: Vec<PendingRow> = sqlx::query_as(
            "SELECT id, event_id, event_type, subject, occurred_at, data, traceparent \
             FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(i64::from(self.batch_size))
        .fetch_all(&mut *connection)
        .await
        .map_err(RelayError::Database)?;
        self.measure_pending(connection).await?;
        if rows.is_empty() {
            return Ok(0);
        }

        let topics = &self.kafka.topics;
        // Sends are queued in row order when `join_all` first polls them.
        let sends = join_all(rows.iter().map(|row| async move {
            let topic = events::topic_of(&row.event_type)
                .map(|topic| topics.name(topic))
                .ok_or_else(|| anyhow::anyhow!("outbox row {} has unknown event type `{}`", row.id, row.event_type))?;
            let envelope = Envelope {
                id: row.event_id,
                event_type: row.event_type.clone(),
                source: events::PRODUCER_SOURCE.to_owned(),
                time: row.occurred_at,
                subject: row.subject.clone(),
                data: serde_json::to_vec(&row.data).expect("JSON value serializes"),
            };
            let started = std::time::Instant::now();
            let trace: Vec<(&str, String)> = row
                .traceparent
                .iter()
                .map(|value| (service_common::telemetry::TRACEPARENT, value.clone()))
                .collect();
            let sent = self.producer.send_with_headers(topic, &envelope, &trace).await;
            let result = if sent.is_ok() { "delivered" } else { "failed" };
            let metrics = &self.metrics;
            metrics
                .published
                .get_or_create(&PublishLabels { topic: topic.to_owned(), result })
                .inc();
            metrics
                .delivery
                .get_or_create(&TopicLabels { topic: topic.to_owned() })
                .observe(started.elapsed().as_secs_f64());
            let delivery = sent?;
            tracing::debug!(topic, partition = delivery.partition, offset = delivery.offset, key = row.subject, event_id = %row.event_id, "event published");
            anyhow::Ok(())
        }));
        tokio::pin!(sends);
        let results = tokio::select! {
            results = &mut sends => results,
            () = shutdown.cancelled() => match tokio::time::timeout(SHUTDOWN_GRACE, &mut sends).await {
                Ok(results) => results,
                Err(_) => {
                    tracing::warn!(rows = rows.len(), "shutdown: abandoning an undelivered outbox batch; it stays pending");
                    return Ok(0);
                }
            },
        };

        let delivered: Vec<i64> = rows
            .iter()
            .zip(&results)
            .filter(|(_, result)| result.is_ok())
            .map(|(row, _)| row.id)
            .collect();
        if !delivered.is_empty() {
            sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
                .bind(&delivered)
                .execute(&mut *connection)
                .await
                .map_err(RelayError::Database)?;
        }
        match results.into_iter().find_map(Result::err) {
            Some(error) => Err(RelayError::Delivery(error)),
            None => Ok(delivered.len()),
        }
    }
}

impl Relay {
    /// Updates `outbox_pending_rows` and `outbox_oldest_pending_age_seconds`
    /// (the partial index on unpublished rows keeps this cheap).
    async fn measure_pending(&self, connection: &mut PgConnection) -> Result<(), RelayError> {
        let (pending, oldest_age): (i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*), EXTRACT(EPOCH FROM now() - min(occurred_at))::float8 \
             FROM outbox WHERE published_at IS NULL",
        )
        .fetch_one(&mut *connection)
        .await
        .map_err(RelayError::Database)?;
        self.metrics.pending.set(pending);
        self.metrics.oldest_age.set(oldest_age.unwrap_or(0.0).max(0.0));
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("outbox database query failed")]
    Database(#[source] sqlx::Error),
    #[error("outbox record not delivered")]
    Delivery(#[source] anyhow::Error),
}
