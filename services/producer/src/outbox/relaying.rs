//! The relay: one producer instance at a time, elected through a
//! PostgreSQL advisory lock, hands pending rows to the Kafka producer in
//! `id` order and marks each published as its delivery report arrives (see
//! the [module docs](super)).

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use kafka_service::{Delivery, Envelope, EventProducer, KafkaSettings, ProduceError, Topic};
use service_common::retry::{backoff, sleep_or_cancel};
use service_common::telemetry::{self, messaging};
use sqlx::postgres::{PgListener, PgNotification};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{failing, CHANNEL};
use crate::configuration::Settings;

/// Advisory lock key that elects the one relay publishing at a time
/// (`pg_try_advisory_lock`). Any constant unique within the database.
pub const RELAY_LOCK_KEY: i64 = 0x6f75_7462_6f78; // "outbox"

/// The leadership connection's `application_name`, which finds it in
/// `pg_stat_activity`.
pub const RELAY_APPLICATION_NAME: &str = "producer outbox relay";

/// How long a relay told to stop waits for the batches in flight before it
/// abandons them (their rows stay pending and are published again later).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How many request timeouts (`kafka.request_timeout_ms`) a relay waits for
/// the reports of the rows in flight on a producer client replaced after a
/// fatal error: one for a request already sent to be answered or time out,
/// one more for the report's way back.
const REPLACED_CLIENT_GRACE: u32 = 2;

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
    /// Publishes the rows.
    producer: EventProducer,
    /// The topic registry (where each event type goes) and what topic
    /// provisioning needs.
    kafka: KafkaSettings,
    /// Rows per read and per batch handed to the producer
    /// (`outbox.batch_size`, at least 1).
    batch_size: u32,
    /// Rows whose delivery reports may be awaited at once, stalled rows
    /// aside (`outbox.batches_in_flight` × `outbox.batch_size`).
    window: usize,
    /// How long a row waits for its delivery report before it stops
    /// counting against the window (`kafka.request_timeout_ms`: the broker
    /// did not acknowledge it within a request's timeout).
    stalled_after: Duration,
    /// How often a standby tries the lock, and a caught-up leader reads
    /// without a NOTIFY (`outbox.poll_interval_ms`).
    poll_interval: Duration,
    /// How long one query on the leadership connection may take before the
    /// connection is taken for dead and leadership given up
    /// ([`DatabaseSettings::statement_deadline`]); `None`: unbounded.
    ///
    /// [`DatabaseSettings::statement_deadline`]: service_common::configuration::DatabaseSettings::statement_deadline
    statement_deadline: Option<Duration>,
}

/// What became of an outbox row in a batch the relay sent.
struct DeliveryResult {
    id: i64,
    sent: Sent,
}

enum Sent {
    /// The broker stored the record.
    Delivered,
    /// Not published: the producer refused it or its delivery report
    /// failed.
    Failed(anyhow::Error),
    /// Not handed to the producer: an earlier row of its key in the same
    /// read was refused. Once that row's failure is recorded, its
    /// `next_attempt_at` keeps them out of reads.
    HeldBack,
}

/// Outbox rows handed to the producer whose delivery reports are awaited.
#[derive(Default)]
struct InFlight<'a> {
    /// Each row's delivery report, in the order they arrive.
    deliveries: FuturesUnordered<BoxFuture<'a, DeliveryResult>>,
    rows: Window,
}

/// Which rows are in flight, and which of them count against the window.
#[derive(Default)]
struct Window {
    /// Every row in flight, which the next read skips.
    ids: HashSet<i64>,
    /// The rows in flight that count against the window: those whose
    /// report has been awaited for less than `stalled_after`.
    counted: HashSet<i64>,
    /// When each row was handed to the producer, oldest first (rows settled
    /// meanwhile are dropped as they reach the front).
    sent: VecDeque<(i64, Instant)>,
}

impl Window {
    fn sent(&mut self, id: i64) {
        self.ids.insert(id);
        self.counted.insert(id);
        self.sent.push_back((id, Instant::now()));
    }

    fn settled(&mut self, id: i64) {
        self.ids.remove(&id);
        self.counted.remove(&id);
    }

    /// Rows in flight that no longer count against the window.
    fn stalled(&self) -> usize {
        self.ids.len() - self.counted.len()
    }

    /// Stops counting the rows whose report has been awaited for
    /// `stalled_after` or longer. Returns how many it released.
    fn release_stalled(&mut self, stalled_after: Duration) -> usize {
        let mut released = 0;
        while let Some(&(id, sent_at)) = self.sent.front() {
            if self.counted.contains(&id) {
                if sent_at.elapsed() < stalled_after {
                    break;
                }
                self.counted.remove(&id);
                released += 1;
            }
            self.sent.pop_front();
        }
        released
    }

    /// When the oldest counted row stops counting, if any does.
    fn next_release(&mut self, stalled_after: Duration) -> Option<Instant> {
        while let Some(&(id, sent_at)) = self.sent.front() {
            if self.counted.contains(&id) {
                return Some(sent_at + stalled_after);
            }
            self.sent.pop_front();
        }
        None
    }
}

impl Relay {
    /// A relay over the outbox of `pool`'s database, configured by
    /// `settings.outbox`, `settings.kafka` and `settings.database`'s
    /// statement timeout.
    pub fn new(pool: PgPool, producer: EventProducer, settings: &Settings) -> Self {
        let outbox = &settings.outbox;
        Self {
            pool,
            producer,
            kafka: settings.kafka.clone(),
            batch_size: outbox.batch_size.max(1),
            window: outbox.batches_in_flight.max(1) * outbox.batch_size.max(1) as usize,
            stalled_after: Duration::from_millis(settings.kafka.request_timeout_ms),
            poll_interval: Duration::from_millis(outbox.poll_interval_ms),
            statement_deadline: settings.database.statement_deadline(),
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
        if !kafka_service::provision_topics(&self.kafka, &specs, backoff(), &shutdown)
            .await
            .context("topic provisioning failed")?
        {
            return Ok(());
        }
        let mut backoff = backoff();
        while !shutdown.is_cancelled() {
            let started = std::time::Instant::now();
            match self.lead(&shutdown).await {
                Ok(()) => return Ok(()),
                Err(error) => {
                    // An interruption after a long run starts the backoff
                    // over rather than where the last one left it.
                    if started.elapsed() > Duration::from_secs(60) {
                        backoff = service_common::retry::backoff();
                    }
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
    /// shutdown, `Err` when the leadership connection fails or hangs (a
    /// query outlasts the statement deadline) or the producer's client was
    /// replaced after a fatal error.
    async fn lead(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        // The relay's writes (rows marked published, failures counted) do
        // not wait for their WAL to reach the disk: one that a database
        // crash loses only publishes its rows again, which the consumers'
        // inbox skips, and each mark saves an `fsync` that the appends and
        // the consumers' commits wait behind (docs/delivery.md, "The producer's relay").
        let options = (*self.pool.connect_options())
            .clone()
            .application_name(RELAY_APPLICATION_NAME)
            .options([("synchronous_commit", "off")]);
        let mut connection = PgConnection::connect_with(&options)
            .await
            .context("could not open the relay's database connection")?;
        if !self.elect(&mut connection, shutdown).await? {
            return Ok(());
        }
        tracing::info!("outbox relay elected; publishing");
        self.publish(&mut connection, shutdown).await
    }

    /// Tries the relay lock on `connection` every poll interval until this
    /// instance holds it (`true`) or shutdown comes first (`false`). The
    /// lock is the session's: it is held until `connection` closes.
    async fn elect(&self, connection: &mut PgConnection, shutdown: &CancellationToken) -> anyhow::Result<bool> {
        let mut waiting_logged = false;
        loop {
            let elected: bool = self
                .bounded(async {
                    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                        .bind(RELAY_LOCK_KEY)
                        .fetch_one(&mut *connection)
                        .await
                        .map_err(RelayError::Database)
                })
                .await
                .context("could not try the relay lock")?;
            if elected {
                return Ok(true);
            }
            if !waiting_logged {
                tracing::info!("another producer instance is relaying the outbox; standing by");
                waiting_logged = true;
            }
            if shutdown
                .run_until_cancelled(tokio::time::sleep(self.poll_interval))
                .await
                .is_none()
            {
                return Ok(false);
            }
        }
    }

    /// The leader's loop: keeps up to a window of rows in flight, settles
    /// them as their delivery reports arrive, and once caught up waits for a
    /// commit's NOTIFY or the poll interval. At shutdown it drains what is
    /// in flight ([`drain`](Self::drain)).
    async fn publish(&self, connection: &mut PgConnection, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut listener = PgListener::connect_with(&self.pool).await.context("could not LISTEN")?;
        listener.listen(CHANNEL).await.context("could not LISTEN")?;
        // Every row of this leadership goes out on this client: once it is
        // replaced, the relay starts over (see `start_over`).
        let generation = self.producer.generation();
        let mut in_flight = InFlight::default();
        // Whether the last read found fewer rows than a batch: then nothing
        // is read again until a NOTIFY, the poll interval or a failed row.
        let mut caught_up = false;
        loop {
            if !caught_up {
                caught_up = self.fill(connection, &mut in_flight, shutdown, generation).await?;
            }
            if self.producer.generation() != generation {
                return self.start_over(connection, in_flight, generation).await;
            }
            if in_flight.deliveries.is_empty() {
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
            // Not caught up: the window is full. It makes room as reports
            // arrive, or as its oldest row stalls.
            let release = in_flight.rows.next_release(self.stalled_after);
            tokio::select! {
                Some(result) = in_flight.deliveries.next() => {
                    let results = ready_too(&mut in_flight.deliveries, result);
                    let settled = self.settle(connection, &mut in_flight.rows, results, generation);
                    if !self.bounded(settled).await? {
                        // Read again: the rows left behind are skipped
                        // until due, and other keys' rows may be waiting.
                        caught_up = false;
                    }
                    if self.producer.generation() != generation {
                        return self.start_over(connection, in_flight, generation).await;
                    }
                }
                notification = listener.recv(), if caught_up => {
                    self.notified(&mut listener, notification);
                    caught_up = false;
                }
                () = sleep_until(release), if !caught_up && release.is_some() => {}
                () = shutdown.cancelled() => return self.drain(connection, in_flight, generation).await,
            }
        }
    }

    /// After a fatal error replaced the producer's client `generation`: no
    /// row goes out on the new client while an earlier row of its key may
    /// still be delivered by the old one (it would be overtaken, then sent
    /// again behind it). So this settles every row in flight on the old
    /// client as its report arrives (the records it had not sent fail at
    /// once; a request already sent is answered or times out within a
    /// request timeout: [`REPLACED_CLIENT_GRACE`] request timeouts at
    /// most), then gives up the leadership, and the relay starts over from
    /// the first unconfirmed row on the new client.
    async fn start_over(
        &self,
        connection: &mut PgConnection,
        in_flight: InFlight<'_>,
        generation: u64,
    ) -> anyhow::Result<()> {
        let grace = self.stalled_after * REPLACED_CLIENT_GRACE;
        if !self.settle_all(connection, in_flight, grace, generation).await? {
            tracing::warn!(
                waited_secs = grace.as_secs_f64(),
                "the replaced producer client did not report on every outbox row in time; starting over anyway"
            );
        }
        let error = self
            .producer
            .fatal_error()
            .unwrap_or_else(|| format!("client {generation} replaced"));
        Err(RelayError::ProducerFatal(error).into())
    }

    /// Reads pending rows and hands them to the producer, up to a batch per
    /// read, until the window is full, a read finds fewer rows than it asked
    /// for (returns `true`: caught up), shutdown begins, or the producer's
    /// client `generation` was replaced (no error: the caller starts over).
    /// Rows the producer refuses are settled at once.
    async fn fill<'a>(
        &'a self,
        connection: &mut PgConnection,
        in_flight: &mut InFlight<'a>,
        shutdown: &CancellationToken,
        generation: u64,
    ) -> Result<bool, RelayError> {
        let stalled_before = in_flight.rows.stalled();
        let released = in_flight.rows.release_stalled(self.stalled_after);
        if released > 0 && stalled_before == 0 {
            tracing::warn!(
                rows = released,
                waited_secs = self.stalled_after.as_secs_f64(),
                "outbox rows are waiting for their delivery reports (a partition that cannot be written?); \
                 publishing goes on, and the producer retries them until the broker takes them"
            );
        }
        while in_flight.rows.counted.len() < self.window
            && !shutdown.is_cancelled()
            && self.producer.generation() == generation
        {
            let limit = (self.window - in_flight.rows.counted.len()).min(self.batch_size as usize);
            let rows = self
                .bounded(self.pending_rows(connection, &in_flight.rows.ids, limit))
                .await?;
            let caught_up = rows.len() < limit;
            if !rows.is_empty() {
                let refused = self.send_batch(rows, in_flight, generation);
                if !refused.is_empty() {
                    self.bounded(self.settle(connection, &mut in_flight.rows, refused, generation))
                        .await?;
                }
            }
            if caught_up {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// At shutdown: settles the rows in flight as their reports arrive,
    /// for at most [`SHUTDOWN_GRACE`]; rows still unconfirmed then stay
    /// pending and go out again after the restart.
    async fn drain(
        &self,
        connection: &mut PgConnection,
        in_flight: InFlight<'_>,
        generation: u64,
    ) -> anyhow::Result<()> {
        let rows = in_flight.rows.ids.len();
        if !self
            .settle_all(connection, in_flight, SHUTDOWN_GRACE, generation)
            .await?
        {
            tracing::warn!(rows, "shutdown: abandoning undelivered outbox rows; they stay pending");
        }
        Ok(())
    }

    /// Settles every row in flight as its report arrives, for at most
    /// `grace`. Returns whether all were settled; those that were not stay
    /// pending.
    async fn settle_all(
        &self,
        connection: &mut PgConnection,
        mut in_flight: InFlight<'_>,
        grace: Duration,
        generation: u64,
    ) -> Result<bool, RelayError> {
        let settled = tokio::time::timeout(grace, async {
            while let Some(result) = in_flight.deliveries.next().await {
                let results = ready_too(&mut in_flight.deliveries, result);
                self.bounded(self.settle(connection, &mut in_flight.rows, results, generation))
                    .await?;
            }
            Ok::<(), RelayError>(())
        })
        .await;
        match settled {
            Ok(settled) => settled.map(|()| true),
            Err(_) => Ok(false),
        }
    }

    /// Runs `query` on the leadership connection within the statement
    /// deadline. Past it, the connection is taken for dead (a half-open TCP
    /// connection would otherwise hang until the kernel gives up, about 15
    /// minutes), and the caller drops it, which gives up the leadership.
    async fn bounded<T>(
        &self,
        query: impl std::future::Future<Output = Result<T, RelayError>>,
    ) -> Result<T, RelayError> {
        match self.statement_deadline {
            None => query.await,
            Some(deadline) => tokio::time::timeout(deadline, query)
                .await
                .map_err(|_| RelayError::Hung(deadline))?,
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

    /// Up to `limit` pending rows in `id` order, leaving out those in
    /// flight and those of a key whose earliest failing row is not due yet
    /// (that row included).
    async fn pending_rows(
        &self,
        connection: &mut PgConnection,
        in_flight: &HashSet<i64>,
        limit: usize,
    ) -> Result<Vec<PendingRow>, RelayError> {
        let in_flight: Vec<i64> = in_flight.iter().copied().collect();
        sqlx::query_as(
            "SELECT id, event_id, event_type, subject, occurred_at, data, traceparent FROM outbox pending \
             WHERE published_at IS NULL AND set_aside_at IS NULL AND id <> ALL($2) \
               AND NOT EXISTS (SELECT 1 FROM outbox failing \
                 WHERE failing.published_at IS NULL AND failing.set_aside_at IS NULL \
                   AND failing.attempts > 0 AND failing.subject = pending.subject \
                   AND failing.id <= pending.id AND failing.next_attempt_at > now()) \
             ORDER BY id LIMIT $1",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(&in_flight)
        .fetch_all(&mut *connection)
        .await
        .map_err(RelayError::Database)
    }

    /// Hands `rows` to client `generation` in `id` order before it returns,
    /// and puts their delivery reports in flight. A row the producer refuses
    /// holds back its key's later rows in `rows`, and once the client was
    /// replaced every row is held back; the refused and held-back rows are
    /// returned, to be settled before the next read.
    fn send_batch<'a>(
        &'a self,
        rows: Vec<PendingRow>,
        in_flight: &mut InFlight<'a>,
        generation: u64,
    ) -> Vec<DeliveryResult> {
        let mut blocked = HashSet::new();
        let mut refused = Vec::new();
        for row in rows {
            let sent = if blocked.contains(&row.subject) {
                Sent::HeldBack
            } else {
                match self.enqueue(&row, generation) {
                    Ok((topic, delivery, span)) => {
                        in_flight.rows.sent(row.id);
                        in_flight
                            .deliveries
                            .push(self.delivered(row, topic, delivery, span).boxed());
                        continue;
                    }
                    Err(error)
                        if matches!(
                            error.downcast_ref::<ProduceError>(),
                            Some(ProduceError::Replaced { .. })
                        ) =>
                    {
                        Sent::HeldBack
                    }
                    Err(error) => {
                        blocked.insert(row.subject.clone());
                        Sent::Failed(error)
                    }
                }
            };
            refused.push(DeliveryResult { id: row.id, sent });
        }
        refused
    }

    /// Hands `row` to client `generation`: its topic, the future of its
    /// delivery report, and its `publish` span, which the record's
    /// `traceparent` names (a child of the request that wrote the row).
    fn enqueue(
        &self,
        row: &PendingRow,
        generation: u64,
    ) -> anyhow::Result<(
        String,
        impl std::future::Future<Output = Result<Delivery, ProduceError>>,
        tracing::Span,
    )> {
        let topic = events::topic_of(&row.event_type)
            .map(|topic| self.kafka.topics.name(topic).to_owned())
            .ok_or_else(|| anyhow::anyhow!("unknown event type `{}`", row.event_type))?;
        let envelope = Envelope {
            id: row.event_id,
            event_type: row.event_type.clone(),
            source: events::PRODUCER_SOURCE.to_owned(),
            time: row.occurred_at,
            subject: row.subject.clone(),
            data: serde_json::to_vec(&row.data).expect("JSON value serializes"),
        };
        let span = messaging::publish_span(&topic, &row.subject, row.traceparent.as_deref());
        let trace: Vec<(&str, String)> = span
            .in_scope(telemetry::current_traceparent)
            .or_else(|| row.traceparent.clone())
            .map(|value| (telemetry::TRACEPARENT, value))
            .into_iter()
            .collect();
        let delivery = self.producer.enqueue_on(generation, &topic, &envelope, &trace)?;
        Ok((topic, delivery, span))
    }

    /// Awaits `row`'s delivery report, logs it and ends its `publish` span.
    async fn delivered(
        &self,
        row: PendingRow,
        topic: String,
        delivery: impl std::future::Future<Output = Result<Delivery, ProduceError>>,
        span: tracing::Span,
    ) -> DeliveryResult {
        let sent = match delivery.await {
            Ok(delivery) => {
                messaging::delivered(&span, delivery.partition, delivery.offset);
                tracing::debug!(topic, partition = delivery.partition, offset = delivery.offset, key = row.subject, event_id = %row.event_id, "event published");
                Sent::Delivered
            }
            Err(error) => Sent::Failed(error.into()),
        };
        DeliveryResult { id: row.id, sent }
    }

    /// Settles rows: marks the delivered ones published, records each failed
    /// row's attempt with its backoff and logs it, and forgets them as in
    /// flight (held-back rows are read again once their key's failing row
    /// is published). Rows that failed once client `generation` was
    /// replaced are not to blame: they are held back, and sent again on the
    /// new client without backoff. Returns whether every row was delivered.
    async fn settle(
        &self,
        connection: &mut PgConnection,
        in_flight: &mut Window,
        results: Vec<DeliveryResult>,
        generation: u64,
    ) -> Result<bool, RelayError> {
        let stalled_before = in_flight.stalled();
        let mut delivered = Vec::new();
        let mut failed = Vec::new();
        let mut held_back = 0;
        let replaced = self.producer.generation() != generation;
        for result in results {
            in_flight.settled(result.id);
            match result.sent {
                Sent::Delivered => delivered.push(result.id),
                Sent::Failed(_) if replaced => held_back += 1,
                Sent::Failed(error) => failed.push((result.id, format!("{error:#}"))),
                Sent::HeldBack => held_back += 1,
            }
        }
        if !delivered.is_empty() {
            sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
                .bind(&delivered)
                .execute(&mut *connection)
                .await
                .map_err(RelayError::Database)?;
        }
        if !failed.is_empty() {
            failing::record_failures(connection, &failed)
                .await
                .map_err(RelayError::Database)?;
        }
        if stalled_before > 0 && in_flight.stalled() == 0 {
            tracing::info!("the outbox rows that waited for their delivery reports are settled");
        }
        if held_back > 0 {
            tracing::debug!(
                rows = held_back,
                "outbox rows held back behind a failed row of their key"
            );
        }
        Ok(failed.is_empty() && held_back == 0)
    }
}

/// `first` and every other delivery report that has already arrived, to
/// settle together.
fn ready_too(
    deliveries: &mut FuturesUnordered<BoxFuture<'_, DeliveryResult>>,
    first: DeliveryResult,
) -> Vec<DeliveryResult> {
    let mut results = vec![first];
    while let Some(Some(result)) = deliveries.next().now_or_never() {
        results.push(result);
    }
    results
}

/// Sleeps until `at`; forever when `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("outbox database query failed")]
    Database(#[source] sqlx::Error),
    #[error("outbox database query got no answer within {0:?}; taking the connection for dead")]
    Hung(Duration),
    #[error(
        "the Kafka producer hit a fatal error and was replaced ({0}); relaying again from the first unconfirmed row"
    )]
    ProducerFatal(String),
}
