//! The transactional outbox and its relay.
//!
//! [`append`] inserts an event in the caller's transaction; after the commit
//! the caller calls [`notify`], which wakes the relay through the `outbox`
//! channel (`NOTIFY`). The notification goes out after the commit, not
//! inside the transaction, because PostgreSQL serializes the commits of
//! transactions that notify (it holds a database-wide lock from before the
//! commit until after its WAL flush, `PreCommit_Notify` in
//! `src/backend/commands/async.c`), which undoes group commit: 8 clients
//! appending one row per transaction reached 2700 to 2900 commits/s with
//! the `NOTIFY` inside and 4400 to 4600 with it after (pgbench, 2 cores,
//! `fsync` on; docs/benchmarks.md). A notification lost to a crash between
//! the two costs only latency: the relay also reads every
//! `outbox.poll_interval_ms`. The [`Relay`]
//! hands pending rows to the producer in `id` order, a batch at a time, and
//! marks them published after their delivery reports. It does not wait for
//! one batch's reports before it sends the next: up to
//! `outbox.batches_in_flight` batches are in flight at once, so the broker's
//! acknowledgement time is paid once per window, not once per batch.
//!
//! Per-key order: rows are handed to the producer in `id` order by one relay
//! at a time (a PostgreSQL advisory lock elects it among all producer
//! instances), the idempotent producer keeps a partition's records in the
//! order they were enqueued, and it retries a record until delivered
//! (`message_timeout_ms = 0`), so a record never overtakes an earlier one of
//! the same key.
//!
//! At-least-once: a crash after delivery but before the row is marked
//! republishes the row with the same `ce_id`; consumers deduplicate on it.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use events::UserEvent;
use futures::future::{join_all, BoxFuture};
use futures::stream::{FuturesOrdered, StreamExt};
use kafka_service::{Envelope, EventProducer, KafkaSettings, Topic};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use service_common::metrics::{seconds_histogram, Registry, TopicLabels};
use service_common::retry::{backoff, sleep_or_cancel};
use sqlx::postgres::{PgListener, PgNotification};
use sqlx::{Connection, PgConnection, PgPool};
use std::sync::atomic::AtomicU64;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::configuration::OutboxSettings;

/// The PostgreSQL notification channel [`append`] notifies.
pub const CHANNEL: &str = "outbox";

/// Advisory lock key that elects the one relay publishing at a time
/// (`pg_try_advisory_lock`). Any constant unique within the database.
const RELAY_LOCK_KEY: i64 = 0x6f75_7462_6f78; // "outbox"

/// How long a relay told to stop waits for the batches in flight before it
/// abandons them (their rows stay pending and are published again later).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Locks the row of user `user_id` until the caller's transaction ends, so
/// that one user's appends run one after another: call it before taking the
/// event's time. The relay publishes in outbox id order, and ids are taken
/// at insert; with the lock, a user's later insert comes after the earlier
/// transaction committed, so the user's records reach their partition in
/// commit order, with event times (`ce_time`) that never go backwards.
///
/// # Errors
///
/// The database error, which should abort the transaction.
pub async fn lock_subject(tx: &mut PgConnection, user_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map(drop)
}

/// Appends `event` to the outbox inside the caller's transaction and
/// returns its event id (`ce_id`). Call [`notify`] once the transaction has
/// committed. An event of an existing user must be preceded by
/// [`lock_subject`], with the event's time taken after it.
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
    Ok(event_id)
}

/// Wakes the relay for rows committed by [`append`]: `NOTIFY outbox`, in a
/// statement of its own. Not an error to the caller when it fails (the
/// events are committed, and the relay finds them within
/// `outbox.poll_interval_ms`); it is logged at `warn`.
pub async fn notify(pool: &PgPool) {
    let notified = sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(pool)
        .await;
    if let Err(error) = notified {
        tracing::warn!(%error, "could not notify the outbox relay; it reads on its next poll");
    }
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
    batches_in_flight: usize,
    poll_interval: Duration,
    metrics: RelayMetrics,
    /// When the pending-rows metrics were last measured: during a catch-up
    /// they are measured at most every [`PENDING_METRICS_INTERVAL`], since
    /// counting a large backlog costs more than reading a batch of it.
    measured_at: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How often the pending-rows metrics are measured while the relay reads
/// full batches (catching up); a read that finds less than a batch always
/// measures them (the backlog is small then).
const PENDING_METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// An outbox row's id and what its delivery report said.
type DeliveryResult = (i64, anyhow::Result<()>);

/// Outbox rows handed to the producer whose delivery reports are awaited,
/// as batches that complete in the order they were sent.
struct InFlight<'a> {
    batches: FuturesOrdered<BoxFuture<'a, Vec<DeliveryResult>>>,
    /// The ids of every row in `batches`, which the next read skips.
    ids: HashSet<i64>,
}

/// The relay's metrics:
///
/// - `outbox_pending_rows`: rows not yet published, as of the last read
///   that found less than a batch, or at most a second old while the relay
///   catches up;
/// - `outbox_oldest_pending_age_seconds`: age of the oldest of them (0 when
///   none), measured with it;
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
        settings: &OutboxSettings,
        metrics: RelayMetrics,
    ) -> Self {
        Self {
            pool,
            producer,
            kafka,
            batch_size: settings.batch_size.max(1),
            batches_in_flight: settings.batches_in_flight.max(1),
            poll_interval: Duration::from_millis(settings.poll_interval_ms),
            metrics,
            measured_at: std::sync::Mutex::new(None),
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
        let mut in_flight = InFlight {
            batches: FuturesOrdered::new(),
            ids: HashSet::new(),
        };
        let mut delays = backoff();
        // Whether the last read found fewer rows than a batch: then nothing
        // is read again until a NOTIFY, the poll interval or a failed row.
        let mut caught_up = false;
        loop {
            while !caught_up && in_flight.batches.len() < self.batches_in_flight && !shutdown.is_cancelled() {
                let rows = self.pending_rows(&mut connection, &in_flight.ids).await?;
                caught_up = rows.len() < self.batch_size as usize;
                if rows.is_empty() {
                    break;
                }
                in_flight.ids.extend(rows.iter().map(|row| row.id));
                in_flight.batches.push_back(Box::pin(self.send_batch(rows)));
            }
            if in_flight.batches.is_empty() {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                // Caught up: wait for a commit's NOTIFY or the poll interval.
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    notification = listener.recv() => self.notified(&mut listener, notification),
                    () = tokio::time::sleep(self.poll_interval) => {}
                }
                caught_up = false;
                continue;
            }
            tokio::select! {
                Some(results) = in_flight.batches.next() => {
                    match self.settle(&mut connection, &mut in_flight.ids, results).await? {
                        None => delays = backoff(),
                        Some(error) => {
                            tracing::warn!(
                                error = format!("{:#}", anyhow::Error::from(error)),
                                "outbox batch not fully delivered; retrying"
                            );
                            sleep_or_cancel(&mut delays, shutdown).await;
                            caught_up = false;
                        }
                    }
                }
                notification = listener.recv(), if caught_up => {
                    self.notified(&mut listener, notification);
                    caught_up = false;
                }
                () = shutdown.cancelled() => {
                    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
                        while let Some(results) = in_flight.batches.next().await {
                            self.settle(&mut connection, &mut in_flight.ids, results).await?;
                        }
                        Ok::<(), RelayError>(())
                    })
                    .await;
                    match drained {
                        Ok(settled) => settled?,
                        Err(_) => tracing::warn!(
                            rows = in_flight.ids.len(),
                            "shutdown: abandoning undelivered outbox rows; they stay pending"
                        ),
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Logs a lost LISTEN connection (`PgListener` reconnects on the next
    /// `recv`), and drops the notifications already buffered: one read
    /// answers them all.
    fn notified(&self, listener: &mut PgListener, notification: Result<PgNotification, sqlx::Error>) {
        if let Err(error) = notification {
            tracing::warn!(%error, "outbox LISTEN connection lost; reconnecting");
        }
        while listener.next_buffered().is_some() {}
    }

    /// Up to `batch_size` pending rows in `id` order, leaving out those in
    /// flight; updates the pending-rows metrics when the read found less
    /// than a batch, or [`PENDING_METRICS_INTERVAL`] after the last time.
    async fn pending_rows(
        &self,
        connection: &mut PgConnection,
        in_flight: &HashSet<i64>,
    ) -> Result<Vec<PendingRow>, RelayError> {
        let in_flight: Vec<i64> = in_flight.iter().copied().collect();
        let rows = sqlx::query_as(
            "SELECT id, event_id, event_type, subject, occurred_at, data, traceparent \
             FROM outbox WHERE published_at IS NULL AND id <> ALL($2) ORDER BY id LIMIT $1",
        )
        .bind(i64::from(self.batch_size))
        .bind(&in_flight)
        .fetch_all(&mut *connection)
        .await
        .map_err(RelayError::Database)?;
        if rows.len() < self.batch_size as usize || self.measure_due() {
            self.measure_pending(connection).await?;
        }
        Ok(rows)
    }

    /// Hands `rows` to the producer in `id` order before it returns, and
    /// returns a future of each row's delivery result, in the same order.
    fn send_batch(&self, rows: Vec<PendingRow>) -> impl Future<Output = Vec<DeliveryResult>> + Send + '_ {
        let topics = &self.kafka.topics;
        let deliveries: Vec<_> = rows
            .into_iter()
            .map(|row| {
                let topic = events::topic_of(&row.event_type).map(|topic| topics.name(topic).to_owned());
                let enqueued = topic.map(|topic| {
                    let envelope = Envelope {
                        id: row.event_id,
                        event_type: row.event_type.clone(),
                        source: events::PRODUCER_SOURCE.to_owned(),
                        time: row.occurred_at,
                        subject: row.subject.clone(),
                        data: serde_json::to_vec(&row.data).expect("JSON value serializes"),
                    };
                    let trace: Vec<(&str, String)> = row
                        .traceparent
                        .iter()
                        .map(|value| (service_common::telemetry::TRACEPARENT, value.clone()))
                        .collect();
                    (self.producer.enqueue_with_headers(&topic, &envelope, &trace), topic)
                });
                let started = std::time::Instant::now();
                async move {
                    let Some((delivery, topic)) = enqueued else {
                        let error = anyhow::anyhow!("outbox row {} has unknown event type `{}`", row.id, row.event_type);
                        return (row.id, Err(error));
                    };
                    let sent = delivery.await;
                    let result = if sent.is_ok() { "delivered" } else { "failed" };
                    let metrics = &self.metrics;
                    metrics
                        .published
                        .get_or_create(&PublishLabels { topic: topic.clone(), result })
                        .inc();
                    metrics
                        .delivery
                        .get_or_create(&TopicLabels { topic: topic.clone() })
                        .observe(started.elapsed().as_secs_f64());
                    match sent {
                        Ok(delivery) => {
                            tracing::debug!(topic, partition = delivery.partition, offset = delivery.offset, key = row.subject, event_id = %row.event_id, "event published");
                            (row.id, Ok(()))
                        }
                        Err(error) => (row.id, Err(error.into())),
                    }
                }
            })
            .collect();
        join_all(deliveries)
    }

    /// Marks a completed batch's delivered rows published and forgets the
    /// whole batch as in flight (its failed rows are read again). Returns
    /// the first delivery error, if any.
    async fn settle(
        &self,
        connection: &mut PgConnection,
        in_flight: &mut HashSet<i64>,
        results: Vec<DeliveryResult>,
    ) -> Result<Option<RelayError>, RelayError> {
        for (id, _) in &results {
            in_flight.remove(id);
        }
        let delivered: Vec<i64> = results
            .iter()
            .filter(|(_, result)| result.is_ok())
            .map(|(id, _)| *id)
            .collect();
        if !delivered.is_empty() {
            sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
                .bind(&delivered)
                .execute(&mut *connection)
                .await
                .map_err(RelayError::Database)?;
        }
        Ok(results
            .into_iter()
            .find_map(|(_, result)| result.err())
            .map(RelayError::Delivery))
    }
}

impl Relay {
    /// Updates `outbox_pending_rows` and `outbox_oldest_pending_age_seconds`
    /// (the partial index on unpublished rows keeps this cheap).
    /// Whether [`PENDING_METRICS_INTERVAL`] has passed since the last
    /// measurement.
    fn measure_due(&self) -> bool {
        self.measured_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_none_or(|at| at.elapsed() >= PENDING_METRICS_INTERVAL)
    }

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
        *self
            .measured_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(std::time::Instant::now());
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
