//! A consumer-group member with manual offset commits (at-least-once).
//!
//! The contract, in order: [`EventConsumer::recv`] a record, apply its
//! effect and commit that to the database, then
//! [`EventConsumer::mark_processed`]. Only marked offsets are ever committed
//! (`enable.auto.commit=false`, `enable.auto.offset.store=false`), so a
//! crash redelivers what was not marked and never skips what was not
//! applied. Marked offsets are committed in batches (every
//! `commit_batch_size` records or `commit_interval_ms`, whichever comes
//! first), synchronously before partitions are revoked in a rebalance, and
//! synchronously in [`EventConsumer::shutdown`].
//!
//! Records must be processed in order within a partition: committing offset
//! `n` says that every record before `n` is done.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::time::Instant;

use crate::error::ConsumeError;
use crate::settings::{ConsumerSettings, KafkaSettings};

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
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The record value, if any.
    pub value: Option<Vec<u8>>,
    /// The record timestamp, in milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
}

impl Record {
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
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| (header.key.to_owned(), header.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            headers,
            value: message.payload().map(<[u8]>::to_vec),
            timestamp_ms: message.timestamp().to_millis(),
        }
    }
}

/// A member of a consumer group with manual, batched offset commits.
/// See the [module docs](self) for the contract.
pub struct EventConsumer {
    consumer: Arc<StreamConsumer<CommitOnRevoke>>,
    commit_batch_size: usize,
    commit_interval: Duration,
    /// Records marked processed since the last commit.
    uncommitted: usize,
    /// When the marked offsets are due for commit by time; `None` while
    /// nothing is marked.
    commit_deadline: Option<Instant>,
}

impl EventConsumer {
    /// Creates the consumer and subscribes it to `topics`. It connects and
    /// joins the group lazily, on the first [`recv`](Self::recv).
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
    ) -> Result<Self, ConsumeError> {
        let client: StreamConsumer<CommitOnRevoke> = settings
            .client_config(
                client_id,
                &[
                    ("group.id", consumer.group_id.clone()),
                    ("enable.auto.commit", "false".to_owned()),
                    ("enable.auto.offset.store", "false".to_owned()),
                    ("auto.offset.reset", consumer.auto_offset_reset.clone()),
                    ("session.timeout.ms", consumer.session_timeout_ms.to_string()),
                ],
            )
            .create_with_context(CommitOnRevoke)
            .map_err(ConsumeError::Config)?;
        client.subscribe(topics).map_err(ConsumeError::Config)?;
        Ok(Self {
            consumer: Arc::new(client),
            commit_batch_size: consumer.commit_batch_size.max(1),
            commit_interval: Duration::from_millis(consumer.commit_interval_ms),
            uncommitted: 0,
            commit_deadline: None,
        })
    }

    /// Waits for the next record. While it waits, offsets marked processed
    /// are committed when their commit interval runs out. Rebalances happen
    /// inside this call, never while a record is being processed.
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
            let deadline = self.commit_deadline;
            tokio::select! {
                message = consumer.recv() => {
                    return message.map(|message| Record::from(&message)).map_err(ConsumeError::Receive);
                }
                () = sleep_until(deadline), if deadline.is_some() => self.commit_async(),
            }
        }
    }

    /// Marks `record` processed: its offset will be committed with the next
    /// batch. Call it only after the record's effect is durable.
    ///
    /// # Errors
    ///
    /// [`ConsumeError::Commit`] when the offset cannot be stored, typically
    /// because the partition was revoked meanwhile; the record will then be
    /// redelivered to the partition's new owner (at-least-once).
    pub fn mark_processed(&mut self, record: &Record) -> Result<(), ConsumeError> {
        // librdkafka stores `offset + 1`, the next record to read.
        self.consumer
            .store_offset(&record.topic, record.partition, record.offset)
            .map_err(ConsumeError::Commit)?;
        self.uncommitted += 1;
        if self.uncommitted >= self.commit_batch_size {
            self.commit_async();
        } else if self.commit_deadline.is_none() {
            self.commit_deadline = Some(Instant::now() + self.commit_interval);
        }
        Ok(())
    }

    /// Commits every marked offset and waits for the broker's answer.
    ///
    /// # Errors
    ///
    /// [`ConsumeError::Commit`] when the broker does not accept the commit.
    pub async fn commit(&mut self) -> Result<(), ConsumeError> {
        self.uncommitted = 0;
        self.commit_deadline = None;
        let consumer = Arc::clone(&self.consumer);
        tokio::task::spawn_blocking(move || commit_stored(&*consumer, CommitMode::Sync))
            .await
            .expect("offset commit panicked")
            .map_err(ConsumeError::Commit)
    }

    /// The partitions currently assigned to this member, as
    /// `(topic, partition)` pairs.
    pub fn assignment(&self) -> Vec<(String, i32)> {
        self.consumer
            .assignment()
            .map(|tpl| {
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Commits every marked offset synchronously, then leaves the group
    /// (which hands this member's partitions to the others at once, instead
    /// of after `session_timeout_ms`).
    ///
    /// # Errors
    ///
    /// [`ConsumeError::Commit`] when the final commit fails; the group is
    /// left all the same, and the uncommitted records will be redelivered.
    pub async fn shutdown(mut self) -> Result<(), ConsumeError> {
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

    fn commit_async(&mut self) {
        self.uncommitted = 0;
        self.commit_deadline = None;
        // The result arrives in `CommitOnRevoke::commit_callback`.
        if let Err(error) = commit_stored(&*self.consumer, CommitMode::Async) {
            tracing::warn!(%error, "could not start offset commit");
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Commits the offsets stored for the current assignment. Having nothing
/// to commit is success.
fn commit_stored<C: Consumer<X>, X: ConsumerContext>(consumer: &C, mode: CommitMode) -> KafkaResult<()> {
    match consumer.commit_consumer_state(mode) {
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
        result => result,
    }
}

/// Logs rebalances and commit results, and commits processed offsets
/// before partitions are revoked.
struct CommitOnRevoke;

impl ClientContext for CommitOnRevoke {}

impl ConsumerContext for CommitOnRevoke {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                // Records are processed between polls, so nothing is in
                // flight here: every stored offset belongs to a finished record.
                match commit_stored(consumer, CommitMode::Sync) {
                    Ok(()) => {
                        tracing::info!(partitions = %describe(partitions), "rebalance: committed processed offsets, revoking partitions")
                    }
                    Err(error) => {
                        tracing::warn!(partitions = %describe(partitions), %error, "rebalance: commit before revoke failed; uncommitted records will be redelivered")
                    }
                }
            }
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = %describe(partitions), "rebalance: partitions assigned");
            }
            Rebalance::Error(error) => tracing::error!(%error, "rebalance error"),
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
