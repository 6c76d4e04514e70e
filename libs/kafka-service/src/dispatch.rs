//! Runs an [`EventConsumer`] with one worker task per assigned partition.
//!
//! A partition's records are handled in offset order by its worker;
//! partitions do not wait for each other. A worker hands the records queued
//! for it (up to `max_batch_records`) to [`RecordHandler::handle_batch`], which
//! may apply a leading run of them at once (one database transaction, say);
//! the first record it leaves goes through [`RecordHandler::handle`] alone,
//! and the rest are offered as the next batch. When a worker falls behind
//! (it is retrying a record, or waiting for a retry's due time), its queue
//! fills up to `queue_capacity` records or `queue_bytes` bytes, whichever
//! comes first, and the partition is paused at the broker until the worker
//! has taken half of them, so one slow partition costs memory for about
//! that much (plus what the broker had already sent when the pause took
//! effect, and the batch in hand, at most `max_batch_records`) and holds up
//! no other partition.
//!
//! Pausing is not free: librdkafka drops what it fetched ahead for the
//! partition, and a resumed partition is fetched again only with the next
//! fetch request, which waits for the one in flight (up to
//! `fetch.wait.max.ms` when the other partitions have nothing new). So the
//! bounds are set to hold at least one fetch response per partition
//! (librdkafka's `max.partition.fetch.bytes`, 1 MiB), and the partition is
//! resumed while half of them are still queued, for the worker to work on
//! during the next fetch.
//!
//! A worker stores a record's offset once its handler returns
//! [`Disposition::Done`]; the consumer commits stored offsets in batches.
//! When the partition is revoked, the worker's lease token is cancelled: the
//! handler should finish or abandon the record in hand, the worker stops,
//! and anything it finishes afterwards is not committed (its next owner
//! redelivers it). A partition assigned again gets a fresh worker.
//!
//! A handler that panics stops its partition: the worker ends without
//! storing the record in hand or anything after it, the partition is
//! paused, and the member reports itself stalled
//! ([`GroupMonitor::stalled`](crate::GroupMonitor::stalled), which
//! readiness asks) with the record's coordinates, so the task is replaced
//! and the partition's next owner starts again from the last commit. A
//! panic is a bug; handling the record again in the same process would
//! most likely panic again.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::consumer::{EventConsumer, PartitionLease, Record};
use crate::error::ConsumeError;
use crate::settings::ConsumerSettings;

/// What became of a record, as far as its offset is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The record is dealt with (applied, skipped as a duplicate, moved to
    /// the retry or dead-letter topic): store its offset.
    Done,
    /// The work was abandoned because the lease was revoked: store nothing;
    /// the record will be redelivered.
    Abandoned,
}

/// Handles the records of one partition, in offset order.
pub trait RecordHandler: Clone + Send + Sync + 'static {
    /// Handles `record`. Must return [`Disposition::Done`] only once the
    /// record's effect is durable, and should return
    /// [`Disposition::Abandoned`] promptly after `lease.revoked()` is
    /// cancelled if it is still waiting (retrying, sleeping).
    fn handle(&self, record: &Record, lease: &PartitionLease) -> impl Future<Output = Disposition> + Send;

    /// Deals with as many of `records` as it can at once, from the first, in
    /// offset order, and returns how many: those are done (their effects
    /// durable), and the worker hands the next one to [`handle`](Self::handle).
    /// Returning 0 (the default) handles every record alone.
    fn handle_batch(&self, records: &[Record], lease: &PartitionLease) -> impl Future<Output = usize> + Send {
        let _ = (records, lease);
        std::future::ready(0)
    }
}

/// Dispatching settings.
#[derive(Debug, Clone, Copy)]
pub struct DispatchSettings {
    /// Records queued per partition before the partition is paused.
    pub queue_capacity: usize,
    /// Bytes queued per partition before the partition is paused
    /// ([`Record::size`]).
    pub queue_bytes: usize,
    /// The most records a worker offers [`RecordHandler::handle_batch`] at
    /// once (at least 1).
    pub max_batch_records: usize,
    /// At shutdown, how long workers may take to finish the record in hand
    /// before they are aborted (their records are then redelivered).
    pub drain_timeout: Duration,
}

impl DispatchSettings {
    /// The settings `consumer` gives (`partition_queue_capacity`,
    /// `partition_queue_bytes`, `max_batch_records`), workers getting
    /// `drain_timeout` at shutdown to finish the record in hand.
    pub fn new(consumer: &ConsumerSettings, drain_timeout: Duration) -> Self {
        Self {
            queue_capacity: consumer.partition_queue_capacity,
            queue_bytes: consumer.partition_queue_bytes,
            max_batch_records: consumer.max_batch_records,
            drain_timeout,
        }
    }
}

enum Progress {
    /// The worker of that generation took a record of that many bytes
    /// ([`Record::size`], as counted when it was queued) off its queue.
    Took(PartitionKey, u64, usize),
    /// The worker stopped.
    Stopped(PartitionKey, u64),
    /// The handler panicked on the record at `offset`; the worker ended.
    Panicked {
        key: PartitionKey,
        offset: i64,
        message: String,
    },
}

type PartitionKey = (String, i32);

struct Worker {
    generation: u64,
    /// Each record with its [`Record::size`], which the worker reports back
    /// when it takes the record.
    queue: mpsc::UnboundedSender<(Record, usize)>,
    /// Records sent to the worker and not yet taken, and their bytes:
    /// what pausing bounds.
    queued: usize,
    queued_bytes: usize,
    paused: bool,
}

/// Receives records and hands each to its partition's worker until
/// `shutdown` is cancelled; then lets the workers finish the record in hand
/// (up to `drain_timeout`), commits stored offsets and leaves the group.
///
/// # Errors
///
/// [`ConsumeError::Commit`] when the final commit fails (the uncommitted
/// records will be redelivered to the group).
pub async fn run<H: RecordHandler>(
    mut consumer: EventConsumer,
    handler: H,
    settings: DispatchSettings,
    shutdown: CancellationToken,
) -> Result<(), ConsumeError> {
    let (progress_sender, mut progress) = mpsc::unbounded_channel();
    let mut workers: HashMap<PartitionKey, Worker> = HashMap::new();
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(event) = progress.recv() => match event {
                Progress::Took(key, generation, bytes) => took(&consumer, &mut workers, &settings, &key, generation, bytes),
                Progress::Stopped(key, generation) => {
                    if workers.get(&key).is_some_and(|worker| worker.generation == generation) {
                        workers.remove(&key);
                    }
                }
                // The worker's entry stays, with its queue closed: the
                // partition's later records are dropped, never handed to a
                // new worker that would commit past the one that panicked.
                Progress::Panicked { key: (topic, partition), offset, message } => {
                    tracing::error!(topic, partition, offset, panic = message, "partition worker panicked; the partition is stopped until the task is replaced");
                    consumer.pause(&topic, partition);
                    consumer.monitor().failed(format!("a partition worker panicked on the record at {topic}[{partition}]@{offset}: {message}"));
                }
            },
            received = consumer.recv() => match received {
                Ok(record) => {
                    let key = (record.topic.clone(), record.partition);
                    let Some(lease) = consumer.lease(&record.topic, record.partition) else {
                        // Fetched before a revoke; its next owner reads it again.
                        continue;
                    };
                    let worker = match workers.get_mut(&key) {
                        Some(worker) if worker.generation == lease.generation() => worker,
                        _ => {
                            let (queue, receiver) = mpsc::unbounded_channel();
                            let worker = Worker { generation: lease.generation(), queue, queued: 0, queued_bytes: 0, paused: false };
                            tasks.spawn(work(lease, receiver, handler.clone(), settings.max_batch_records.max(1), progress_sender.clone()));
                            workers.insert(key.clone(), worker);
                            workers.get_mut(&key).expect("just inserted")
                        }
                    };
                    enqueue(&consumer, worker, &settings, &key, record);
                }
                Err(error) => {
                    // As `&dyn Error`, the log line carries the cause chain.
                    tracing::warn!(error = &error as &(dyn std::error::Error + 'static), "consumer error; carrying on");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
        // Reap workers that have finished, so the set does not grow.
        while tasks.try_join_next().is_some() {}
    }

    // Every lease's token is a child of the consumer's shutdown token.
    tracing::info!(
        workers = tasks.len(),
        "stopping: waiting for partition workers to finish the record in hand"
    );
    let drained = tokio::time::timeout(settings.drain_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            workers = tasks.len(),
            timeout_ms = settings.drain_timeout.as_millis(),
            "partition workers did not finish in time; abandoning their records (they will be redelivered)"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    consumer.shutdown().await
}

/// Queues `record` for `worker`, pausing the partition when its queue
/// reaches either bound.
fn enqueue(
    consumer: &EventConsumer,
    worker: &mut Worker,
    settings: &DispatchSettings,
    key: &PartitionKey,
    record: Record,
) {
    let bytes = record.size();
    // An error means the worker stopped (its lease was revoked): the
    // record is dropped, and its next owner reads it again.
    if worker.queue.send((record, bytes)).is_err() {
        return;
    }
    worker.queued += 1;
    worker.queued_bytes += bytes;
    if !worker.paused
        && (worker.queued >= settings.queue_capacity.max(1) || worker.queued_bytes >= settings.queue_bytes)
    {
        tracing::debug!(
            topic = key.0,
            partition = key.1,
            records = worker.queued,
            bytes = worker.queued_bytes,
            "partition paused: its worker is behind"
        );
        consumer.pause(&key.0, key.1);
        worker.paused = true;
    }
}

/// Counts a record the worker took, and resumes its partition once at most
/// half of either bound is queued. (Each resume costs a fetch round trip
/// before records flow again, so resuming at the first free slot would
/// pause and resume once per record, and leave the worker idle meanwhile.)
fn took(
    consumer: &EventConsumer,
    workers: &mut HashMap<PartitionKey, Worker>,
    settings: &DispatchSettings,
    key: &PartitionKey,
    generation: u64,
    bytes: usize,
) {
    let Some(worker) = workers.get_mut(key) else { return };
    if worker.generation != generation {
        return;
    }
    worker.queued = worker.queued.saturating_sub(1);
    worker.queued_bytes = worker.queued_bytes.saturating_sub(bytes);
    if worker.paused && worker.queued * 2 <= settings.queue_capacity && worker.queued_bytes * 2 <= settings.queue_bytes
    {
        tracing::debug!(topic = key.0, partition = key.1, "partition resumed");
        consumer.resume(&key.0, key.1);
        worker.paused = false;
    }
}

/// One partition's worker: handles its records in order until the lease is
/// revoked.
async fn work<H: RecordHandler>(
    lease: PartitionLease,
    mut queue: mpsc::UnboundedReceiver<(Record, usize)>,
    handler: H,
    max_batch_records: usize,
    progress: mpsc::UnboundedSender<Progress>,
) {
    let key = (lease.topic().to_owned(), lease.partition());
    // Taken off the queue, not yet done, in offset order.
    let mut taken: VecDeque<Record> = VecDeque::new();
    loop {
        if taken.is_empty() {
            let (record, bytes) = tokio::select! {
                biased;
                () = lease.revoked().cancelled() => break,
                queued = queue.recv() => match queued {
                    Some(queued) => queued,
                    None => break,
                },
            };
            // Ignoring send errors: the dispatcher only stops listening
            // when it is shutting down.
            let _ = progress.send(Progress::Took(key.clone(), lease.generation(), bytes));
            taken.push_back(record);
        }
        while taken.len() < max_batch_records {
            let Ok((record, bytes)) = queue.try_recv() else { break };
            let _ = progress.send(Progress::Took(key.clone(), lease.generation(), bytes));
            taken.push_back(record);
        }

        let batch = taken.make_contiguous();
        let first = batch[0].offset;
        let Ok(done) = caught(handler.handle_batch(batch, &lease), &key, first, &progress).await else {
            return;
        };
        let done = done.min(batch.len());
        if done > 0 {
            if !store(&lease, &batch[..done]) {
                break;
            }
            taken.drain(..done);
            continue;
        }
        let record = taken.pop_front().expect("a record was taken");
        let Ok(disposition) = caught(handler.handle(&record, &lease), &key, record.offset, &progress).await else {
            return;
        };
        match disposition {
            Disposition::Done => {
                if !store(&lease, std::slice::from_ref(&record)) {
                    break;
                }
            }
            Disposition::Abandoned => break,
        }
    }
    let _ = progress.send(Progress::Stopped(key, lease.generation()));
}

/// Runs `work` on the records of `key` from `offset`; a panic in it is
/// reported to the dispatcher ([`Progress::Panicked`]) and comes back as
/// `Err`.
async fn caught<T>(
    work: impl Future<Output = T>,
    key: &PartitionKey,
    offset: i64,
    progress: &mpsc::UnboundedSender<Progress>,
) -> Result<T, ()> {
    AssertUnwindSafe(work).catch_unwind().await.map_err(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_owned());
        let _ = progress.send(Progress::Panicked {
            key: key.clone(),
            offset,
            message,
        });
    })
}

/// Stores the offsets of `records`, which are done. `false` when the lease
/// no longer allows it (the records will be redelivered to the partition's
/// next owner).
fn store(lease: &PartitionLease, records: &[Record]) -> bool {
    for record in records {
        if let Err(error) = lease.store(record) {
            tracing::info!(topic = record.topic, partition = record.partition, offset = record.offset, %error, "offset not stored; the record will be redelivered");
            return false;
        }
    }
    true
}
