//! Retention: deleting a table's rows once they are older than a retention
//! period, in bounded batches, by one instance at a time.
//!
//! The producer prunes published outbox rows, the consumer its
//! deduplication window (`processed_events`). Each batch is one short
//! transaction that deletes at most `batch_size` rows, so the statements
//! that write the table never wait long behind a delete. The batch takes a
//! transaction-scoped advisory lock first (`pg_try_advisory_xact_lock`):
//! while one instance prunes, the others skip their round rather than
//! delete the same rows (each batch would wait for the other's row locks).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::metrics::Registry;

/// `<table>.retention.*`: how long rows are kept and how they are pruned.
#[derive(Debug, Clone, Deserialize)]
pub struct RetentionSettings {
    /// Rows older than this are deleted, in hours.
    pub hours: u64,
    /// Most rows one delete statement (one transaction) takes.
    pub batch_size: u32,
    /// How often each instance prunes, in milliseconds; the first round
    /// runs at start-up. A round deletes batches until one comes back short.
    pub interval_ms: u64,
}

impl RetentionSettings {
    /// [`hours`](Self::hours) as a duration.
    pub fn period(&self) -> Duration {
        Duration::from_secs(self.hours.saturating_mul(3600))
    }
}

/// What one table's pruning runs.
pub struct Table {
    /// The table's name, in logs and metric names (`<name>_pruned_rows`).
    pub name: &'static str,
    /// Deletes one batch and returns the number of rows deleted (one
    /// `int8`): `$1` is the retention period in seconds (`float8`), `$2`
    /// the batch size (`int8`). It must delete only rows older than `$1`
    /// and at most `$2` of them.
    pub delete_batch: &'static str,
    /// The time of the oldest row that retention will delete once it is
    /// old enough (`NULL` when there is none): what the age gauge shows.
    pub oldest: &'static str,
    /// The advisory lock that lets one instance prune at a time: any
    /// constant unique within the database.
    pub lock_key: i64,
    /// What the age gauge measures, for its help text.
    pub age_help: &'static str,
}

/// Prunes one [`Table`] every [`RetentionSettings::interval_ms`] until
/// shutdown. Metrics: `<name>_pruned_rows_total` (rows this instance
/// deleted) and `<name>_oldest_age_seconds` (age of the oldest row that
/// retention covers: it stays below the retention period plus one interval
/// while pruning keeps up).
pub struct Pruner {
    pool: PgPool,
    table: Table,
    settings: RetentionSettings,
    pruned: Counter,
    oldest_age: Gauge<f64, AtomicU64>,
}

impl Pruner {
    /// The pruner of `table` in `pool`, its metrics registered in
    /// `registry`.
    pub fn new(pool: PgPool, table: Table, settings: RetentionSettings, registry: &mut Registry) -> Self {
        let pruner = Self {
            pool,
            table,
            settings,
            pruned: Counter::default(),
            oldest_age: Gauge::default(),
        };
        let name = pruner.table.name;
        registry.register(
            format!("{name}_pruned_rows"),
            format!("Rows of {name} deleted by retention"),
            pruner.pruned.clone(),
        );
        registry.register(
            format!("{name}_oldest_age_seconds"),
            pruner.table.age_help,
            pruner.oldest_age.clone(),
        );
        pruner
    }

    /// Prunes at start-up and every interval until `shutdown`. A round that
    /// fails is logged at `warn` and tried again at the next interval.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(Duration::from_millis(self.settings.interval_ms));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
            match self.round(&shutdown).await {
                Ok(0) => {}
                Ok(rows) => tracing::info!(table = self.table.name, rows, "retention deleted old rows"),
                Err(error) => tracing::warn!(
                    table = self.table.name,
                    error = format!("{error:#}"),
                    "retention could not delete old rows; trying again at the next interval"
                ),
            }
            if let Err(error) = self.measure().await {
                tracing::debug!(table = self.table.name, %error, "could not measure the oldest row");
            }
        }
    }

    /// Deletes batches until one is short, another instance holds the
    /// lock, or `shutdown`; returns the rows deleted.
    ///
    /// # Errors
    ///
    /// A database error; the batches before it stay deleted.
    pub async fn round(&self, shutdown: &CancellationToken) -> Result<u64, sqlx::Error> {
        let period = self.settings.period().as_secs_f64();
        let batch_size = i64::from(self.settings.batch_size);
        let mut deleted = 0;
        while !shutdown.is_cancelled() {
            let mut transaction = self.pool.begin().await?;
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(self.table.lock_key)
                .fetch_one(&mut *transaction)
                .await?;
            if !locked {
                tracing::debug!(table = self.table.name, "another instance is pruning");
                break;
            }
            let rows: i64 = sqlx::query_scalar(self.table.delete_batch)
                .bind(period)
                .bind(batch_size)
                .fetch_one(&mut *transaction)
                .await?;
            transaction.commit().await?;
            let rows = rows.max(0) as u64;
            self.pruned.inc_by(rows);
            deleted += rows;
            if rows < u64::from(self.settings.batch_size) {
                break;
            }
        }
        Ok(deleted)
    }

    /// Sets the age gauge from the oldest row that retention covers.
    async fn measure(&self) -> Result<(), sqlx::Error> {
        let oldest: Option<DateTime<Utc>> = sqlx::query_scalar(self.table.oldest).fetch_one(&self.pool).await?;
        let age = oldest.map_or(0.0, |at| (Utc::now() - at).as_seconds_f64().max(0.0));
        self.oldest_age.set(age);
        Ok(())
    }
}
