//! Retention of published rows (`outbox.retention`).

use service_common::metrics::Registry;
use service_common::retention::{Pruner, RetentionSettings, Table};
use sqlx::PgPool;

/// The advisory lock of the instance that prunes the outbox; distinct from
/// the relay's.
const PRUNE_LOCK_KEY: i64 = 0x6f75_7470_7275; // "outpru"

/// The outbox's pruner: deletes rows published more than
/// `settings.hours` ago, oldest first (the `outbox_published` index), and
/// never a row that is not published: pending, failing and set-aside rows
/// have no `published_at`. Metrics `outbox_pruned_rows_total` and
/// `outbox_oldest_age_seconds` (by publishing time).
pub fn pruner(pool: PgPool, settings: RetentionSettings, registry: &mut Registry) -> Pruner {
    let table = Table {
        name: "outbox",
        delete_batch: "WITH deleted AS ( \
                           DELETE FROM outbox WHERE id IN ( \
                               SELECT id FROM outbox \
                               WHERE published_at < now() - make_interval(secs => $1) \
                               ORDER BY published_at LIMIT $2) \
                           RETURNING 1) \
                       SELECT count(*) FROM deleted",
        oldest: "SELECT min(published_at) FROM outbox WHERE published_at IS NOT NULL",
        lock_key: PRUNE_LOCK_KEY,
        age_help: "Time since the oldest published outbox row still kept was published",
    };
    Pruner::new(pool, table, settings, registry)
}
