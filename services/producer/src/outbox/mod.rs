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
//! marks each published as its delivery report arrives. It does not wait
//! for one batch's reports before it sends the next: up to
//! `outbox.batches_in_flight` × `outbox.batch_size` rows are in flight at
//! once, so the broker's acknowledgement time is paid once per window, not
//! once per batch.
//!
//! A partition that cannot be written (its leader is gone, or it is under
//! `min.insync.replicas`) does not stop the others: reports arrive row by
//! row, so every other partition's rows are settled and make room, and a
//! row whose report has not come within `kafka.request_timeout_ms` stops
//! counting against the window. The stuck partition's records wait in the
//! producer's queue, which librdkafka retries until the partition takes
//! them (`message_timeout_ms = 0`) and which bounds them
//! (`queue.buffering.max.messages`; a row refused for a full queue is
//! retried with backoff, below).
//!
//! Per-key order: rows are handed to the producer in `id` order by one relay
//! at a time (a PostgreSQL advisory lock elects it among all producer
//! instances), the idempotent producer keeps a partition's records in the
//! order they were enqueued, and it retries a record until delivered
//! (`message_timeout_ms = 0`), so a record never overtakes an earlier one of
//! the same key. That holds on one producer client; when a fatal error
//! replaces it, the relay sends nothing on the new client until every row
//! in flight on the old one has its report, then starts over from the first
//! unconfirmed row ([`EventProducer::enqueue_on`](kafka_service::EventProducer::enqueue_on)).
//!
//! A row that cannot be published (an event type this instance does not
//! know, a full client queue, a record over `message.max.bytes`, a broker
//! that rejects it) holds back its key: the key's later rows are not handed
//! to the producer until it is published or an operator sets it aside, while
//! other keys keep flowing. It is retried with backoff (1 s after the first
//! failure, doubling up to 60 s), logged at `warn` with the reason at each
//! failure, and counted in `outbox_failing_rows`. Operators list such rows
//! and retry or set one aside over `/outbox/failing` ([`failing_rows`],
//! [`retry_now`], [`set_aside`]). One gap remains: a row the broker rejects
//! in its delivery report (authorization, a broker-side size limit) may be
//! overtaken by later rows of its key that were already handed to the
//! producer while its report was pending; a refusal at enqueue (the cases
//! above but the last) holds them back before they are sent.
//!
//! At-least-once: a crash after delivery but before the row is marked
//! republishes the row with the same `ce_id`; consumers deduplicate on it.
//!
//! # Layout
//!
//! - [`appending`]: [`append`] and [`notify`], in the request handlers'
//!   transactions;
//! - [`relaying`]: the [`Relay`], which publishes pending rows;
//! - [`failing`]: rows whose publishing failed, as the relay records them
//!   and as operators list, retry and set them aside;
//! - [`gauges`]: the outbox's gauges, measured by every instance;
//! - [`pruning`]: deleting published rows past `outbox.retention`.

pub mod appending;
pub mod failing;
pub mod gauges;
pub mod pruning;
pub mod relaying;

pub use appending::{append, lock_subject, notify, CHANNEL};
pub use failing::{failing_rows, retry_now, set_aside, FailingRow, SetAside};
pub use gauges::OutboxGauges;
pub use relaying::{Relay, RELAY_APPLICATION_NAME, RELAY_LOCK_KEY};
