//! A consumer-group member with manual offset commits (at-least-once) and
//! cooperative-sticky rebalancing.
//!
//! The contract, in order: [`EventConsumer::recv`] a record, apply its
//! effect and make that durable, then [`PartitionLease::store`] its offset.
//! Only stored offsets are ever committed (`enable.auto.commit=false`,
//! `enable.auto.offset.store=false`), so a crash redelivers what was not
//! stored and never skips what was not applied. Stored offsets are committed
//! in batches (every `commit_batch_size` records or `commit_interval_ms`,
//! whichever comes first), synchronously before partitions are revoked, and
//! synchronously in [`EventConsumer::shutdown`].
//!
//! Records must be processed in order within a partition: committing offset
//! `n` says that every record before `n` is done.
//!
//! # Leases
//!
//! Each assigned partition is held under a lease with a generation number.
//! When the partition is revoked (or the consumer shuts down) the lease's
//! token is cancelled, so work on it can stop; a revoked lease can no longer
//! store offsets, so work that finishes after the revoke commits nothing, and
//! the partition's next owner redelivers the record. If the partition comes
//! back to this member it gets a new lease.
//!
//! With `partition.assignment.strategy=cooperative-sticky` (KIP-429) a
//! rebalance revokes only the partitions that move; the others keep flowing.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::client::OAuthToken;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, Statistics, TopicPartitionList};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::context::KafkaContext;
use crate::error::ConsumeError;
use crate::monitor::{GroupMonitor, STATISTICS_INTERVAL_MS};
use crate::settings::{ConsumerSettings, KafkaSettings};

/// How long asking for a paused partition's high watermark may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);

/// A consumed record, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The topic it was read from.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// The record key, if any.
    pub key: Option<Vec<u8>>,
    /// Headers in record order; a header may repeat or have no value.
    /// Headers whose names are not UTF-8 are not here: see
    /// [`unreadable_header_names`](Self::unreadable_header_names).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// How many headers were left out of [`headers`](Self::headers)
    /// because their names are not UTF-8. Kafka allows any bytes there
    /// (KIP-82), but rust-rdkafka cannot read such a name (it panics), so
    /// it is lost; a record with one is not one this project wrote.
    pub unreadable_header_names: usize,
    /// The record value, if any.
    pub value: Option<Vec<u8>>,
    /// The record timestamp, in milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// Its bytes: key, value, and header names and values. What the
    /// broker sent for it, about; not the memory this struct takes around
    /// them (a few hundred bytes more, with its allocations).
    pub fn size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.as_ref().map_or(0, Vec::len))
            .sum();
        self.key.as_ref().map_or(0, Vec::len) + self.value.as_ref().map_or(0, Vec::len) + headers
    }

    /// The value of the last header named `name` (the Kafka convention when
    /// a header repeats), if it has one.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
    }

    /// The key as text, lossily, for logs.
    pub fn key_lossy(&self) -> String {
        self.key
            .as_deref()
            .map(|key| String::from_utf8_lossy(key).into_owned())
            .unwrap_or_default()
    }
}

impl From<&BorrowedMessage<'_>> for Record {
    fn from(message: &BorrowedMessage<'_>) -> Self {
        let mut headers = Vec::new();
        let mut unreadable_header_names = 0;
        if let Some(borrowed) = message.headers() {
            for index in 0..borrowed.count() {
                // rust-rdkafka 0.39's `BorrowedHeaders::try_get` unwraps the
                // name's `CStr::to_str`: a name that is not UTF-8, which any
                // peer may write, panics there. The panic happens in Rust,
                // after librdkafka has returned, so it unwinds safely; the
                // header is counted and left out, and the record goes on to
                // be rejected as undecodable instead of crashing the member.
                match std::panic::catch_unwind(AssertUnwindSafe(|| borrowed.try_get(index))) {
                    Ok(Some(header)) => headers.push((header.key.to_owned(), header.value.map(<[u8]>::to_vec))),
                    Ok(None) => {}
                    Err(_) => unreadable_header_names += 1,
                }
            }
        }
        if unreadable_header_names > 0 {
            tracing::warn!(
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                unreadable_header_names,
                "record has header names that are not UTF-8 (the panic above is rust-rdkafka reading one); they are left out"
            );
        }
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            headers,
            unreadable_header_names,
            value: message.payload().map(<[u8]>::to_vec),
            timestamp_ms: message.timestamp().to_millis(),
        }
    }
}

/// `(topic, partition)`.
type PartitionKey = (String, i32);

/// The partitions this member holds, shared between the rebalance callbacks
/// (which run inside [`EventConsumer::recv`]) and the partitions' workers.
#[derive(Default)]
struct Assignment {
    /// Each held partition's current claim.
    leases: HashMap<PartitionKey, Claim>,
    /// The generation the next claim gets: a partition lost and assigned
    /// again gets a new one, so a lease of the old claim is told apart.
    next_generation: u64,
}

/// One holding of one partition.
struct Claim {
    /// Which holding this is (see [`Assignment::next_generation`]).
    generation: u64,
    /// Cancelled when the partition is revoked or at shutdown.
    revoked: CancellationToken,
}

/// What the rebalance callbacks and partition leases share.
struct Shared {
    /// The partitions held now, with their leases: what a rebalance
    /// revokes.
    assignment: Mutex<Assignment>,
    /// Parent of every lease's token: cancelled at shutdown.
    shutdown: CancellationToken,
    /// Offsets stored since the last successful commit (or since the one in
    /// flight): what makes a commit due.
    stored: AtomicUsize,
    /// Receives assignments, progress and errors, for readiness and metrics.
    monitor: GroupMonitor,
    /// The partitions paused now, why, and each one's high watermark as
    /// last asked of the broker while paused (see [`EventConsumer::pause`]).
    paused: Mutex<HashMap<(String, i32), Paused>>,
    /// What an operator holds (see [`HoldHandle`]): a topic (`None`: every
    /// partition) or one partition of it.
    holds: Mutex<Vec<Hold>>,
    /// Whether a watermark request for the paused partitions is under way.
    asking_watermarks: AtomicBool,
}

/// Why a partition is paused at the broker: it stays paused while either
/// holds.
#[derive(Debug, Clone, Copy, Default)]
struct Paused {
    /// Its worker is behind ([`EventConsumer::pause`]).
    back_pressure: bool,
    /// An operator holds it ([`HoldHandle::set`]).
    held: bool,
    /// Its low and high watermarks as last asked of the broker.
    watermarks: Option<(i64, i64)>,
}

/// A topic an operator holds, or one partition of it (`partition: None`
/// holds them all).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hold {
    /// The topic.
    pub topic: String,
    /// The partition, or `None` for every partition of the topic.
    pub partition: Option<i32>,
}

impl Hold {
    fn covers(&self, topic: &str, partition: i32) -> bool {
        self.topic == topic && self.partition.is_none_or(|held| held == partition)
    }
}

impl Shared {
    fn paused(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i32), Paused>> {
        self.paused.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn holds(&self) -> std::sync::MutexGuard<'_, Vec<Hold>> {
        self.holds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether an operator holds `partition` of `topic`.
    fn is_held(&self, topic: &str, partition: i32) -> bool {
        self.holds().iter().any(|hold| hold.covers(topic, partition))
    }

    fn assignment(&self) -> std::sync::MutexGuard<'_, Assignment> {
        // A panic while holding the lock leaves the map consistent: every
        // operation on it is a single insert or remove.
        self.assignment.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Commits every stored offset synchronously (blocking) and counts the
    /// result. When the commit fails, the offsets it took count as stored
    /// again, so the next due commit includes them even if no record comes.
    fn commit<C: Consumer<X>, X: ConsumerContext>(&self, consumer: &C) -> KafkaResult<()> {
        let taken = self.stored.swap(0, Ordering::Relaxed);
        let result = commit_stored(consumer, CommitMode::Sync);
        self.monitor.committed(result.is_ok());
        if result.is_err() {
            self.stored.fetch_add(taken, Ordering::Relaxed);
        }
        result
    }
}

/// A member of a consumer group with manual, batched offset commits.
/// See the [module docs](self) for the contract.
pub struct EventConsumer {
    /// The group member; shared with the leases, which pause and resume
    /// their partitions and store their offsets on it.
    consumer: Arc<StreamConsumer<GroupContext>>,
    /// What the rebalance callbacks and the leases share with it.
    shared: Arc<Shared>,
    /// A commit is due after this many stored offsets
    /// (`commit_batch_size`)...
    commit_batch_size: usize,
    /// ...or this long after the last one, whichever comes first
    /// (`commit_interval_ms`).
    commit_interval: Duration,
    /// When the last commit was started.
    last_commit: Instant,
    /// When the paused partitions' high watermarks were last asked for.
    last_watermarks: Instant,
}

impl EventConsumer {
    /// Creates the consumer and subscribes it to `topics`. It connects and
    /// joins the group lazily, on the first [`recv`](Self::recv). Cancelling
    /// `shutdown` cancels every lease. `monitor` receives its metrics and
    /// progress.
    ///
    /// # Errors
    ///
    /// [`ConsumeError::Config`] when librdkafka rejects the settings or the
    /// subscription.
    pub fn new(
        settings: &KafkaSettings,
        consumer: &ConsumerSettings,
        client_id: &str,
        topics: &[&str],
        shutdown: CancellationToken,
        monitor: GroupMonitor,
    ) -> Result<Self, ConsumeError> {
        let shared = Arc::new(Shared {
            assignment: Mutex::default(),
            shutdown,
            stored: AtomicUsize::new(0),
            monitor,
            paused: Mutex::default(),
            holds: Mutex::default(),
            asking_watermarks: AtomicBool::new(false),
        });
        let mut properties = vec![
            ("group.id", consumer.group_id.clone()),
            ("enable.auto.commit", "false".to_owned()),
            ("enable.auto.offset.store", "false".to_owned()),
            ("auto.offset.reset", consumer.auto_offset_reset.as_str().to_owned()),
            ("fetch.wait.max.ms", consumer.fetch_wait_max_ms.to_string()),
            ("queued.max.messages.kbytes", consumer.prefetch_queue_kbytes.to_string()),
            ("statistics.interval.ms", STATISTICS_INTERVAL_MS.to_string()),
        ];
        properties.extend(consumer.group_protocol.properties(consumer));
        let client: StreamConsumer<GroupContext> = settings
            .client_config(client_id, &properties)
            .create_with_context(GroupContext {
                shared: Arc::clone(&shared),
                client: KafkaContext::new(settings),
            })
            .map_err(ConsumeError::Config)?;
        client.subscribe(topics).map_err(ConsumeError::Config)?;
        Ok(Self {
            consumer: Arc::new(client),
            shared,
            commit_batch_size: consumer.commit_batch_size.max(1),
            commit_interval: Duration::from_millis(consumer.commit_interval_ms),
            last_commit: Instant::now(),
            last_watermarks: Instant::now(),
        })
    }

    /// Waits for the next record. While it waits, stored offsets are
    /// committed every `commit_interval_ms`, or as soon as
    /// `commit_batch_size` of them are stored. Rebalances happen inside this
    /// call.
    ///
    /// Cancel-safe: dropping the future loses no record.
    ///
    /// # Errors
    ///
    /// [`ConsumeError::Receive`] for errors the client reports instead of a
    /// record (a broker that went away, for example); they are usually
    /// transient, and the next call carries on.
    pub async fn recv(&mut self) -> Result<Record, ConsumeError> {
        let consumer = Arc::clone(&self.consumer);
        loop {
            self.commit_if_due();
            self.ask_watermarks_if_due();
            tokio::select! {
                message = consumer.recv() => {
                    return message.map(|message| Record::from(&message)).map_err(ConsumeError::Receive);
                }
                () = tokio::time::sleep_until(self.last_commit + self.commit_interval) => {}
            }
        }
    }

    /// What this member reports about itself.
    pub(crate) fn monitor(&self) -> &GroupMonitor {
        &self.shared.monitor
    }

    /// The lease on `partition` of `topic`, if this member holds it.
    pub fn lease(&self, topic: &str, partition: i32) -> Option<PartitionLease> {
        let assignment = self.shared.assignment();
        let claim = assignment.leases.get(&(topic.to_owned(), partition))?;
        Some(PartitionLease {
            consumer: Arc::clone(&self.consumer),
            shared: Arc::clone(&self.shared),
            topic: topic.to_owned(),
            partition,
            generation: claim.generation,
            revoked: claim.revoked.clone(),
        })
    }

    /// Stops fetching `partition` of `topic` until [`resume`](Self::resume);
    /// records already returned are unaffected. Used for back-pressure when
    /// the partition's worker falls behind.
    ///
    /// librdkafka learns a partition's high watermark from fetch responses
    /// only, so a paused partition's lag in its statistics stays as it was
    /// when paused. While it is paused, [`recv`](Self::recv) asks the
    /// broker for its high watermark every statistics interval
    /// (`ListOffsets`), and the lag metric counts from that.
    pub fn pause(&self, topic: &str, partition: i32) {
        let mut paused = self.shared.paused();
        let state = paused.entry((topic.to_owned(), partition)).or_default();
        if !state.held && !state.back_pressure {
            if let Err(error) = self.consumer.pause(&partition_list(topic, partition)) {
                tracing::debug!(topic, partition, %error, "could not pause partition");
            }
        }
        state.back_pressure = true;
    }

    /// Resumes fetching `partition` of `topic` where it stopped, unless an
    /// operator holds it ([`HoldHandle`]).
    pub fn resume(&self, topic: &str, partition: i32) {
        let key = (topic.to_owned(), partition);
        let mut paused = self.shared.paused();
        if let Some(state) = paused.get_mut(&key) {
            state.back_pressure = false;
            if state.held {
                return;
            }
        }
        paused.remove(&key);
        if let Err(error) = self.consumer.resume(&partition_list(topic, partition)) {
            tracing::debug!(topic, partition, %error, "could not resume partition");
        }
    }

    /// What sets the operator's holds on this member's partitions, from
    /// another task while [`dispatch::run`](crate::dispatch::run) owns the
    /// consumer.
    pub fn hold_handle(&self) -> HoldHandle {
        HoldHandle {
            consumer: Arc::clone(&self.consumer),
            shared: Arc::clone(&self.shared),
        }
    }

    /// Every [`STATISTICS_INTERVAL_MS`], while partitions are paused, asks
    /// the broker for their high watermarks on a blocking thread, one
    /// request under way at a time; the next statistics report uses them.
    fn ask_watermarks_if_due(&mut self) {
        if self.last_watermarks.elapsed() < Duration::from_millis(STATISTICS_INTERVAL_MS) {
            return;
        }
        self.last_watermarks = Instant::now();
        let paused: Vec<(String, i32)> = self.shared.paused().keys().cloned().collect();
        if paused.is_empty() || self.shared.asking_watermarks.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let consumer = Arc::clone(&self.consumer);
        tokio::task::spawn_blocking(move || {
            for (topic, partition) in paused {
                match consumer.fetch_watermarks(&topic, partition, WATERMARK_TIMEOUT) {
                    Ok(watermarks) => {
                        if let Some(state) = shared.paused().get_mut(&(topic, partition)) {
                            state.watermarks = Some(watermarks);
                        }
                    }
                    Err(error) => {
                        tracing::debug!(topic, partition, %error, "could not ask a paused partition's high watermark")
                    }
                }
            }
            shared.asking_watermarks.store(false, Ordering::Release);
        });
    }

    /// Commits every stored offset and waits for the broker's answer.
    ///
    /// # Errors
    ///
    /// [`ConsumeError::Commit`] when the broker does not accept the commit.
    pub async fn commit(&mut self) -> Result<(), ConsumeError> {
        self.last_commit = Instant::now();
        let shared = Arc::clone(&self.shared);
        let consumer = Arc::clone(&self.consumer);
        tokio::task::spawn_blocking(move || shared.commit(&*consumer))
            .await
            .expect("offset commit panicked")
            .map_err(ConsumeError::Commit)
    }

    /// The partitions currently assigned to this member, as
    /// `(topic, partition)` pairs.
    pub fn assignment(&self) -> Vec<(String, i32)> {
        let mut partitions: Vec<_> = self.shared.assignment().leases.keys().cloned().collect();
        partitions.sort();
        partitions
    }

    /// Cancels every lease, commits every stored offset synchronously, then
    /// leaves the group (which hands this member's partitions to the others
    /// at once, instead of after `session_timeout_ms`).
    ///
    /// # Errors
    ///
    /// [`ConsumeError::Commit`] when the final commit fails; the group is
    /// left all the same, and the uncommitted records will be redelivered.
    pub async fn shutdown(mut self) -> Result<(), ConsumeError> {
        self.shared.shutdown.cancel();
        let committed = self.commit().await;
        let consumer = self.consumer;
        // Dropping the last handle closes the consumer: it leaves the group
        // and waits for librdkafka to finish, which blocks.
        tokio::task::spawn_blocking(move || {
            consumer.unsubscribe();
            drop(consumer);
        })
        .await
        .expect("consumer close panicked");
        tracing::info!("consumer left the group");
        committed
    }

    /// Starts a commit when `commit_batch_size` offsets are stored, or when
    /// any are and `commit_interval_ms` has passed since the last commit.
    fn commit_if_due(&mut self) {
        let stored = self.shared.stored.load(Ordering::Relaxed);
        let interval_passed = Instant::now() >= self.last_commit + self.commit_interval;
        if stored >= self.commit_batch_size || (stored > 0 && interval_passed) {
            self.commit_in_background();
        } else if interval_passed {
            self.last_commit = Instant::now();
        }
    }

    /// Commits the stored offsets in the background: a synchronous commit
    /// on a blocking thread, so its result is known (and counted) without
    /// holding up [`recv`](Self::recv). A failed commit is retried at the
    /// next interval, records or not.
    fn commit_in_background(&mut self) {
        self.last_commit = Instant::now();
        let consumer = Arc::clone(&self.consumer);
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            if let Err(error) = shared.commit(&*consumer) {
                tracing::warn!(%error, "offset commit failed; retrying at the next commit interval");
            }
        });
    }
}

/// Sets which of this member's partitions an operator holds: a held
/// partition is paused at the broker (nothing more is fetched; records
/// fetched already are still handled), stays paused through back-pressure's
/// resumes and through rebalances (a held partition assigned to this
/// member is paused before anything is fetched), and is not reported
/// stalled. Cheap to clone.
#[derive(Clone)]
pub struct HoldHandle {
    consumer: Arc<StreamConsumer<GroupContext>>,
    shared: Arc<Shared>,
}

impl HoldHandle {
    /// Replaces the holds with `holds`: pauses the assigned partitions they
    /// cover that were not held, and resumes those no longer held (unless
    /// their worker is behind).
    pub fn set(&self, holds: Vec<Hold>) {
        *self.shared.holds() = holds;
        let assigned: Vec<(String, i32)> = self.shared.assignment().leases.keys().cloned().collect();
        let mut paused = self.shared.paused();
        for (topic, partition) in assigned {
            let held = self.shared.is_held(&topic, partition);
            let key = (topic, partition);
            let state = paused.get(&key).copied().unwrap_or_default();
            if held && !state.held {
                if !state.back_pressure {
                    if let Err(error) = self.consumer.pause(&partition_list(&key.0, key.1)) {
                        tracing::warn!(topic = key.0, partition = key.1, %error, "could not pause a held partition");
                        continue;
                    }
                }
                tracing::info!(
                    topic = key.0,
                    partition = key.1,
                    "partition held by an operator: paused"
                );
                paused.insert(key, Paused { held: true, ..state });
            } else if !held && state.held {
                if state.back_pressure {
                    paused.insert(key, Paused { held: false, ..state });
                } else {
                    if let Err(error) = self.consumer.resume(&partition_list(&key.0, key.1)) {
                        tracing::warn!(topic = key.0, partition = key.1, %error, "could not resume a released partition");
                        continue;
                    }
                    tracing::info!(
                        topic = key.0,
                        partition = key.1,
                        "partition released by an operator: resumed"
                    );
                    paused.remove(&key);
                }
            }
        }
        let held: Vec<(String, i32)> = paused
            .iter()
            .filter(|(_, state)| state.held)
            .map(|(key, _)| key.clone())
            .collect();
        drop(paused);
        self.shared.monitor.set_held(held);
    }
}

/// The right to process one assigned partition and store its offsets, until
/// the partition is revoked. Cheap to clone.
#[derive(Clone)]
pub struct PartitionLease {
    consumer: Arc<StreamConsumer<GroupContext>>,
    shared: Arc<Shared>,
    topic: String,
    partition: i32,
    generation: u64,
    revoked: CancellationToken,
}

impl PartitionLease {
    /// The leased topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The leased partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Tells leases on the same partition apart: a partition revoked and
    /// assigned again gets a higher generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Cancelled when the partition is revoked or the consumer shuts down:
    /// stop working on the partition (finish or abandon the record in hand).
    pub fn revoked(&self) -> &CancellationToken {
        &self.revoked
    }

    /// Stores `record`'s offset for the next commit. Call it only after the
    /// record's effect is durable, and in partition order.
    ///
    /// # Errors
    ///
    /// [`ConsumeError::Revoked`] when the partition was revoked since this
    /// lease was taken (the record will be redelivered to its next owner);
    /// [`ConsumeError::Commit`] when librdkafka refuses the offset.
    pub fn store(&self, record: &Record) -> Result<(), ConsumeError> {
        debug_assert_eq!(
            (record.topic.as_str(), record.partition),
            (self.topic.as_str(), self.partition)
        );
        // Holding the lock keeps a revoke (which takes it first) from
        // committing between the check and the store.
        let assignment = self.shared.assignment();
        match assignment.leases.get(&(self.topic.clone(), self.partition)) {
            Some(claim) if claim.generation == self.generation => {}
            _ => return Err(ConsumeError::Revoked),
        }
        // librdkafka stores `offset + 1`, the next record to read.
        self.consumer
            .store_offset(&record.topic, record.partition, record.offset)
            .map_err(ConsumeError::Commit)?;
        self.shared.stored.fetch_add(1, Ordering::Relaxed);
        self.shared.monitor.progressed(&self.topic, self.partition);
        Ok(())
    }
}

fn partition_list(topic: &str, partition: i32) -> TopicPartitionList {
    let mut list = TopicPartitionList::with_capacity(1);
    list.add_partition(topic, partition);
    list
}

/// Commits the offsets stored for the current assignment. Having nothing
/// to commit is success.
fn commit_stored<C: Consumer<X>, X: ConsumerContext>(consumer: &C, mode: CommitMode) -> KafkaResult<()> {
    match consumer.commit_consumer_state(mode) {
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
        result => result,
    }
}

/// Keeps the leases in step with the assignment, commits stored offsets
/// before partitions are revoked, and logs rebalances and commit results.
struct GroupContext {
    shared: Arc<Shared>,
    /// Logging and authentication, as every client of the crate does them.
    client: KafkaContext,
}

impl ClientContext for GroupContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.client.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.client.error(error, reason);
    }

    fn generate_oauth_token(&self, config: Option<&str>) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        self.client.generate_oauth_token(config)
    }

    fn stats(&self, statistics: Statistics) {
        let held: Vec<(String, i32)> = self.shared.assignment().leases.keys().cloned().collect();
        let paused = self.shared.paused().clone();
        let reported = statistics.topics.into_iter().flat_map(|(topic, details)| {
            let paused = &paused;
            details.partitions.into_iter().map(move |(partition, p)| {
                let asked = paused
                    .get(&(topic.clone(), partition))
                    .and_then(|state| state.watermarks);
                (topic.clone(), partition, unprocessed(&p, asked))
            })
        });
        self.shared.monitor.report_lag(reported.collect::<Vec<_>>(), &held);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                // End the leases first, so no offset is stored after the
                // commit below; work still running on these partitions is
                // abandoned and will be redelivered to their next owner.
                {
                    let mut assignment = self.shared.assignment();
                    let mut revoked = Vec::new();
                    for element in partitions.elements() {
                        let key = (element.topic().to_owned(), element.partition());
                        if let Some(claim) = assignment.leases.remove(&key) {
                            claim.revoked.cancel();
                        }
                        revoked.push(key);
                    }
                    self.shared.monitor.revoked(&revoked, assignment.leases.keys());
                    let mut paused = self.shared.paused();
                    for key in &revoked {
                        paused.remove(key);
                    }
                }
                let committed = commit_stored(consumer, CommitMode::Sync);
                self.shared.monitor.committed(committed.is_ok());
                match committed {
                    Ok(()) => {
                        tracing::info!(partitions = %describe(partitions), "rebalance: committed processed offsets, revoking partitions")
                    }
                    Err(error) => {
                        tracing::warn!(partitions = %describe(partitions), %error, "rebalance: commit before revoke failed; uncommitted records will be redelivered")
                    }
                }
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(error) => tracing::error!(%error, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            {
                let mut assignment = self.shared.assignment();
                for element in partitions.elements() {
                    assignment.next_generation += 1;
                    let claim = Claim {
                        generation: assignment.next_generation,
                        revoked: self.shared.shutdown.child_token(),
                    };
                    assignment
                        .leases
                        .insert((element.topic().to_owned(), element.partition()), claim);
                }
                self.shared
                    .monitor
                    .assigned(partitions.count(), assignment.leases.keys());
            }
            // A partition paused for back-pressure before it was revoked
            // must not come back paused: nothing would ever resume it. One
            // an operator holds is paused before anything is fetched.
            if let Err(error) = consumer.resume(partitions) {
                tracing::debug!(%error, "could not resume newly assigned partitions");
            }
            let mut paused = self.shared.paused();
            let mut held = TopicPartitionList::new();
            for element in partitions.elements() {
                let key = (element.topic().to_owned(), element.partition());
                paused.remove(&key);
                if self.shared.is_held(&key.0, key.1) {
                    held.add_partition(&key.0, key.1);
                    paused.insert(
                        key,
                        Paused {
                            held: true,
                            ..Paused::default()
                        },
                    );
                }
            }
            drop(paused);
            if held.count() > 0 {
                if let Err(error) = consumer.pause(&held) {
                    tracing::warn!(partitions = %describe(&held), %error, "could not pause held partitions");
                }
                tracing::info!(partitions = %describe(&held), "assigned partitions held by an operator: paused");
            }
            self.shared.monitor.set_held(
                self.shared
                    .paused()
                    .iter()
                    .filter(|(_, state)| state.held)
                    .map(|(key, _)| key.clone()),
            );
            tracing::info!(partitions = %describe(partitions), "rebalance: partitions assigned");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::debug!(offsets = %describe(offsets), "offsets committed"),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(offsets = %describe(offsets), %error, "offset commit failed"),
        }
    }
}

/// Records of a partition not yet processed, from librdkafka's statistics:
/// behind the stored offset (the last record processed here), else behind
/// the committed offset, else (a partition this group never committed,
/// read from the start) the whole log; `-1` when unknown. `asked` are the
/// low and high watermarks the broker gave for a paused partition, whose
/// statistics keep the high watermark of its last fetch (or none, when it
/// was paused before its first); the later high watermark counts.
fn unprocessed(partition: &rdkafka::statistics::Partition, asked: Option<(i64, i64)>) -> i64 {
    if let Some((low, high)) = asked.filter(|&(_, high)| high > partition.hi_offset) {
        let position = [partition.stored_offset, partition.committed_offset, low]
            .into_iter()
            .find(|&offset| offset >= 0)
            .unwrap_or(low);
        return (high - position).max(0);
    }
    if partition.consumer_lag_stored >= 0 {
        partition.consumer_lag_stored
    } else if partition.consumer_lag >= 0 {
        partition.consumer_lag
    } else if partition.hi_offset >= 0 && partition.lo_offset >= 0 {
        partition.hi_offset - partition.lo_offset
    } else {
        -1
    }
}

/// `topic[partition]@offset, ...` for logs.
fn describe(partitions: &TopicPartitionList) -> String {
    partitions
        .elements()
        .iter()
        .map(|e| match e.offset().to_raw() {
            Some(offset) if offset >= 0 => format!("{}[{}]@{}", e.topic(), e.partition(), offset),
            _ => format!("{}[{}]", e.topic(), e.partition()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
