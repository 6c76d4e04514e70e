//! Replaying an event topic from a time into this read model, through the
//! inbox (`POST /consumption/replays`).
//!
//! What it is for: a read model restored from a backup, or rows an
//! operator repaired by hand, lack the events applied after some time.
//! A replay reads the topic from that time (`ListOffsets` by time) to where
//! it ended when the replay started (the high watermarks then), outside
//! any consumer group, and hands each record to the same [`Handler`] the
//! group uses. The inbox (`processed_events`, restored along with the read
//! model) makes it exactly-once in effect: an event applied before is a
//! duplicate and changes nothing, and one that is missing is applied. The
//! steady group's committed offsets are never touched, and it keeps
//! consuming meanwhile; both go through the inbox, each partition in
//! offset order, so a user's events are applied in order whichever
//! applies them.
//!
//! Why not a separate group and read model: that needs a second database
//! and a second service to query, and is a deployment of its own (a
//! consumer with another `kafka.group_id` and database, which the
//! configuration already allows), not an operator action.
//!
//! A replay may start no earlier than the deduplication window
//! (`inbox.retention.hours`) allows, less an hour for clocks: the ids of
//! events applied before it may be pruned, and those events would be
//! applied twice.
//!
//! Replays are kept in `consumption_replays`, with each partition's next
//! offset in `consumption_replay_partitions`. Every member looks for one
//! to run every [`CLAIM_INTERVAL`]; one member at a time runs it, under a
//! lease of [`LEASE`] renewed at each chunk of records, and one whose
//! member stops (or stops renewing) is taken over from where its last
//! chunk ended. Taken over while its member is still busy with a chunk
//! (waiting for a dependency longer than the lease), a chunk may run on
//! two members at once: the inbox keeps its effect once, and the first
//! member stops at its next renewal.
//!
//! A record that can never be applied (a hostile or undecodable record,
//! which the group dead-lettered) is counted as `rejected` and passed
//! over; a transient failure is retried, with backoff up to 30 s, until
//! it succeeds or the service stops.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kafka_service::failure::Origin;
use kafka_service::reader::PartitionReader;
use kafka_service::Record;
use serde::Serialize;
use service_common::database::bounded;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use utoipa::ToSchema;

use crate::processing::{Handler, Outcome, ProcessError};

/// How often each member looks for a replay to run.
pub const CLAIM_INTERVAL: Duration = Duration::from_secs(1);

/// How long a member holds a replay without renewing its claim.
pub const LEASE: Duration = Duration::from_secs(30);

/// Most records read and applied between two progress writes.
const CHUNK: usize = 500;

/// How much later than the deduplication window's start a replay must
/// begin: record timestamps come from the producer's clock, and
/// retention's from the database's.
const CLOCK_MARGIN: Duration = Duration::from_secs(3600);

/// A replay, as kept.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Replay {
    /// Its id.
    pub id: i64,
    /// The event topic replayed.
    pub topic: String,
    /// Records from this time on (their Kafka timestamps) are replayed.
    #[serde(rename = "from")]
    pub from_time: DateTime<Utc>,
    /// Why, as the operator gave it.
    pub reason: String,
    /// When it was asked for.
    pub requested_at: DateTime<Utc>,
    /// `pending` (no member has taken it yet), `running` or `done`.
    pub state: String,
    /// When a member first took it.
    pub started_at: Option<DateTime<Utc>>,
    /// When its last record was handled.
    pub finished_at: Option<DateTime<Utc>>,
    /// Records whose events were missing from the read model, and are
    /// applied now.
    pub applied: i64,
    /// Records whose events the read model had (its inbox said so).
    pub duplicates: i64,
    /// Records that can never be applied (the group dead-lettered them),
    /// passed over.
    pub rejected: i64,
    /// Records left to handle, over every partition; absent before it
    /// started.
    pub remaining: Option<i64>,
}

/// The columns of [`Replay`].
const COLUMNS: &str = "id, topic, from_time, reason, requested_at, \
     CASE WHEN finished_at IS NOT NULL THEN 'done' WHEN started_at IS NOT NULL THEN 'running' ELSE 'pending' END AS state, \
     started_at, finished_at, applied, duplicates, rejected, \
     (SELECT sum(end_offset - next_offset)::bigint FROM consumption_replay_partitions p WHERE p.replay_id = consumption_replays.id) AS remaining";

/// One partition's place in a replay.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
struct Position {
    partition: i32,
    next_offset: i64,
    end_offset: i64,
}

/// What became of a chunk's records.
#[derive(Debug, Default)]
struct Counts {
    applied: i64,
    duplicates: i64,
    rejected: i64,
}

/// The replays in the database, and what runs them. Cheap to clone.
#[derive(Clone)]
pub struct Replays {
    pool: PgPool,
    /// How long one database call may take; `None`: unbounded.
    deadline: Option<Duration>,
    /// Applies each record, through the inbox.
    handler: Handler,
    /// Reads the topic, outside any group.
    reader: Arc<PartitionReader>,
    /// `inbox.retention.hours`.
    window: Duration,
    /// This member's name on the replays it claims.
    member: String,
}

impl Replays {
    /// Replays kept in `pool`'s database, read through `reader` and
    /// applied with `handler`, no earlier than `window` (the deduplication
    /// window) allows.
    pub fn new(
        pool: PgPool,
        deadline: Option<Duration>,
        handler: Handler,
        reader: Arc<PartitionReader>,
        window: Duration,
    ) -> Self {
        Self {
            pool,
            deadline,
            handler,
            reader,
            window,
            member: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// The earliest time a replay may start from now: the deduplication
    /// window's start plus an hour for clocks.
    pub fn earliest(&self) -> DateTime<Utc> {
        Utc::now() - self.window + CLOCK_MARGIN
    }

    /// Records a replay of `topic` from `from`, for `reason`; a member
    /// takes it within [`CLAIM_INTERVAL`].
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn request(&self, topic: &str, from: DateTime<Utc>, reason: &str) -> Result<Replay, sqlx::Error> {
        let query = format!(
            "INSERT INTO consumption_replays (topic, from_time, reason) VALUES ($1, $2, $3) RETURNING {COLUMNS}"
        );
        bounded(
            self.deadline,
            sqlx::query_as(&query)
                .bind(topic)
                .bind(from)
                .bind(reason)
                .fetch_one(&self.pool),
        )
        .await
    }

    /// Every replay, newest first.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn list(&self) -> Result<Vec<Replay>, sqlx::Error> {
        let query = format!("SELECT {COLUMNS} FROM consumption_replays ORDER BY id DESC");
        bounded(self.deadline, sqlx::query_as(&query).fetch_all(&self.pool)).await
    }

    /// Looks for a replay to run every [`CLAIM_INTERVAL`], and runs the
    /// ones it claims, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            match self.claim().await {
                Ok(Some(replay)) => {
                    let span = tracing::info_span!("replay", replay_id = replay.id, topic = replay.topic);
                    match self.replay(&replay, &shutdown).instrument(span.clone()).await {
                        Ok(()) => {}
                        Err(error) => span.in_scope(|| {
                            tracing::warn!(
                                error = format!("{error:#}"),
                                "replay interrupted; it is taken up again from its last chunk"
                            )
                        }),
                    }
                    self.release(replay.id).await;
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "could not look for a replay to run"),
            }
            shutdown.run_until_cancelled(tokio::time::sleep(CLAIM_INTERVAL)).await;
        }
    }

    /// Takes the oldest replay not finished whose lease has lapsed (or that
    /// no member has taken).
    async fn claim(&self) -> Result<Option<Replay>, sqlx::Error> {
        let query = format!(
            "UPDATE consumption_replays SET owner = $1, lease_until = now() + make_interval(secs => $2), \
                 started_at = coalesce(started_at, now()) \
             WHERE id = (SELECT id FROM consumption_replays \
                         WHERE finished_at IS NULL AND (lease_until IS NULL OR lease_until < now()) \
                         ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING {COLUMNS}"
        );
        bounded(
            self.deadline,
            sqlx::query_as(&query)
                .bind(&self.member)
                .bind(LEASE.as_secs_f64())
                .fetch_optional(&self.pool),
        )
        .await
    }

    /// Lets another member take the replay at once, if this one holds it
    /// (stopping, or interrupted); a failure leaves it to the lease.
    async fn release(&self, id: i64) {
        let released = bounded(
            self.deadline,
            sqlx::query(
                "UPDATE consumption_replays SET lease_until = NULL \
                 WHERE id = $1 AND owner = $2 AND finished_at IS NULL",
            )
            .bind(id)
            .bind(&self.member)
            .execute(&self.pool),
        )
        .await;
        if let Err(error) = released {
            tracing::warn!(%error, replay_id = id, "could not release the replay; another member takes it when its lease lapses");
        }
    }

    /// Runs `replay` partition by partition from where it stands, until
    /// done, `shutdown`, or its lease is lost.
    async fn replay(&self, replay: &Replay, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let positions = self.positions(replay).await?;
        tracing::info!(
            from = %replay.from_time,
            reason = replay.reason,
            records = positions.iter().map(|p| p.end_offset - p.next_offset).sum::<i64>(),
            "replaying"
        );
        for position in positions {
            let mut next = position.next_offset;
            while next < position.end_offset {
                let want = usize::try_from(position.end_offset - next).map_or(CHUNK, |left| left.min(CHUNK));
                let records = self.reader.read(&replay.topic, position.partition, next, want).await?;
                let Some(last) = records.last() else {
                    // Retention deleted the rest of the range.
                    break;
                };
                let mut counts = Counts::default();
                for record in records.iter().filter(|record| record.offset < position.end_offset) {
                    let Some(outcome) = self.apply(record, shutdown).await else {
                        return Ok(());
                    };
                    match outcome {
                        Ok(Outcome::Applied) => counts.applied += 1,
                        Ok(Outcome::Duplicate) => counts.duplicates += 1,
                        Err(()) => counts.rejected += 1,
                    }
                }
                next = (last.offset + 1).min(position.end_offset);
                if !self.advance(replay.id, position.partition, next, &counts).await? {
                    tracing::warn!("another member took the replay over (this one held it past its lease); stopping");
                    return Ok(());
                }
            }
        }
        let finished: Replay = bounded(
            self.deadline,
            sqlx::query_as(&format!(
                "UPDATE consumption_replays SET finished_at = now() WHERE id = $1 RETURNING {COLUMNS}"
            ))
            .bind(replay.id)
            .fetch_one(&self.pool),
        )
        .await?;
        tracing::info!(
            applied = finished.applied,
            duplicates = finished.duplicates,
            rejected = finished.rejected,
            "replay done"
        );
        Ok(())
    }

    /// Each partition's place in `replay`: as kept, or, the first time,
    /// from the first record at or after its time to the high watermark
    /// now.
    async fn positions(&self, replay: &Replay) -> anyhow::Result<Vec<Position>> {
        let kept = self.kept_positions(replay.id).await?;
        if !kept.is_empty() {
            return Ok(kept);
        }
        let partitions = self.reader.partition_count(&replay.topic).await?;
        let from_ms = replay.from_time.timestamp_millis();
        let (mut ids, mut starts, mut ends) = (Vec::new(), Vec::new(), Vec::new());
        for partition in 0..partitions {
            ids.push(partition);
            starts.push(self.reader.offset_at(&replay.topic, partition, from_ms).await?);
            ends.push(self.reader.high_watermark(&replay.topic, partition).await?);
        }
        bounded(
            self.deadline,
            sqlx::query(
                "INSERT INTO consumption_replay_partitions (replay_id, \"partition\", next_offset, end_offset) \
                 SELECT $1, * FROM UNNEST($2::integer[], $3::bigint[], $4::bigint[]) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(replay.id)
            .bind(&ids)
            .bind(&starts)
            .bind(&ends)
            .execute(&self.pool),
        )
        .await?;
        Ok(self.kept_positions(replay.id).await?)
    }

    async fn kept_positions(&self, id: i64) -> Result<Vec<Position>, sqlx::Error> {
        bounded(
            self.deadline,
            sqlx::query_as(
                "SELECT \"partition\", next_offset, end_offset FROM consumption_replay_partitions \
                 WHERE replay_id = $1 ORDER BY \"partition\"",
            )
            .bind(id)
            .fetch_all(&self.pool),
        )
        .await
    }

    /// Applies one record through the inbox, retrying transient failures
    /// until it succeeds: its outcome, or `Err(())` when it can never be
    /// applied; `None` when `shutdown` came first.
    async fn apply(&self, record: &Record, shutdown: &CancellationToken) -> Option<Result<Outcome, ()>> {
        let origin = Origin::consumed_at(record);
        let span = tracing::info_span!(
            "replayed record",
            partition = record.partition,
            offset = record.offset,
            key = record.key_lossy(),
            event_id = tracing::field::Empty,
        );
        let mut delays = service_common::retry::backoff();
        async {
            loop {
                match self.handler.handle(record, &origin).await {
                    Ok(outcome) => return Some(Ok(outcome)),
                    Err(ProcessError::Permanent(error)) => {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "replayed record can never be applied; passed over (the group dead-lettered it)"
                        );
                        return Some(Err(()));
                    }
                    Err(error @ (ProcessError::Unavailable { .. } | ProcessError::Transient(_))) => {
                        tracing::info!(
                            error = format!("{:#}", anyhow::Error::new(error)),
                            "replayed record not applied; retrying"
                        );
                        if !service_common::retry::sleep_or_cancel(&mut delays, shutdown).await {
                            return None;
                        }
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Records a chunk: the partition's next offset and the counts, and
    /// renews the lease; `false` when this member no longer holds it.
    async fn advance(&self, id: i64, partition: i32, next: i64, counts: &Counts) -> Result<bool, sqlx::Error> {
        bounded(self.deadline, async {
            let mut tx = self.pool.begin().await?;
            let held = sqlx::query(
                "UPDATE consumption_replays SET applied = applied + $3, duplicates = duplicates + $4, \
                     rejected = rejected + $5, lease_until = now() + make_interval(secs => $6) \
                 WHERE id = $1 AND owner = $2",
            )
            .bind(id)
            .bind(&self.member)
            .bind(counts.applied)
            .bind(counts.duplicates)
            .bind(counts.rejected)
            .bind(LEASE.as_secs_f64())
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !held {
                return Ok(false);
            }
            sqlx::query(
                "UPDATE consumption_replay_partitions SET next_offset = $3 \
                 WHERE replay_id = $1 AND \"partition\" = $2",
            )
            .bind(id)
            .bind(partition)
            .bind(next)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }
}
