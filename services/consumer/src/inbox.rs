//! Retention of the deduplication window (`inbox.retention`): the ids of
//! applied events in `processed_events`.

use service_common::metrics::Registry;
use service_common::retention::{Pruner, RetentionSettings, Table};
use sqlx::PgPool;

/// The advisory lock of the member that prunes the inbox.
const PRUNE_LOCK_KEY: i64 = 0x696e_6270_7275; // "inbpru"

/// The inbox's pruner: deletes applied events' ids older than
/// `settings.hours` (by `processed_at`), oldest sequence first, and records
/// the highest sequence it deleted in `inbox_pruned` ([`pruned_through`]).
///
/// Each batch reads only the `batch_size` lowest sequences (the
/// `processed_events_by_sequence` index) and deletes those old enough:
/// sequence order is application order, so the oldest rows are there, and
/// no batch reads the rest of the table. Metrics
/// `processed_events_pruned_rows_total` and
/// `processed_events_oldest_age_seconds`.
pub fn pruner(pool: PgPool, settings: RetentionSettings, registry: &mut Registry) -> Pruner {
    let table = Table {
        name: "processed_events",
        delete_batch: "WITH head AS ( \
                           SELECT sequence, processed_at FROM processed_events ORDER BY sequence LIMIT $2), \
                       deleted AS ( \
                           DELETE FROM processed_events p USING head \
                           WHERE p.sequence = head.sequence \
                             AND head.processed_at < now() - make_interval(secs => $1) \
                           RETURNING p.sequence), \
                       marked AS ( \
                           INSERT INTO inbox_pruned (through) \
                           SELECT max(sequence) FROM deleted HAVING count(*) > 0 \
                           ON CONFLICT (id) DO UPDATE \
                           SET through = greatest(inbox_pruned.through, excluded.through)) \
                       SELECT count(*) FROM deleted",
        oldest: "SELECT processed_at FROM processed_events ORDER BY sequence LIMIT 1",
        lock_key: PRUNE_LOCK_KEY,
        age_help: "Time since the oldest applied event id still kept was applied",
    };
    Pruner::new(pool, table, settings, registry)
}

/// The highest sequence retention has deleted (`None` while it has deleted
/// nothing): the live feed cannot replay events at or below it.
///
/// # Errors
///
/// A database error.
pub async fn pruned_through(pool: &PgPool) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT through FROM inbox_pruned")
        .fetch_optional(pool)
        .await
}
