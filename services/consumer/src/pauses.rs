//! Consumption an operator paused: a topic, or one partition of it, with a
//! reason (`POST /consumption/pause`), until resumed
//! (`POST /consumption/resume`).
//!
//! Pauses are kept in `consumption_pauses`, so that every member of the
//! group obeys them and they survive restarts. Each member reads them
//! before it consumes and again every [`REFRESH_INTERVAL`], and hands them
//! to its consumer ([`HoldHandle`]): a paused partition fetches nothing
//! more (records fetched already are still handled), stays paused when a
//! rebalance moves it to another member, and is not reported stalled; its
//! lag keeps counting. The group's committed offsets are not touched:
//! resuming carries on where the partition stopped.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kafka_service::{Hold, HoldHandle};
use service_common::database::bounded;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How often a member reads the pauses again: the longest a pause or a
/// resume takes to reach every member.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// A pause, as kept.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Pause {
    /// The topic.
    pub topic: String,
    /// The partition; `-1` for every partition of the topic.
    pub partition: i32,
    /// Why, as the operator gave it.
    pub reason: String,
    /// When it was paused.
    pub paused_at: DateTime<Utc>,
}

impl Pause {
    fn hold(&self) -> Hold {
        Hold {
            topic: self.topic.clone(),
            partition: (self.partition >= 0).then_some(self.partition),
        }
    }
}

/// The pauses in the database. Cheap to clone.
#[derive(Clone)]
pub struct Pauses {
    pool: PgPool,
    /// How long one database call may take; `None`: unbounded.
    deadline: Option<Duration>,
}

impl Pauses {
    /// The pauses kept in `pool`'s database.
    pub fn new(pool: PgPool, deadline: Option<Duration>) -> Self {
        Self { pool, deadline }
    }

    /// Every pause, by topic and partition.
    ///
    /// # Errors
    ///
    /// When the database fails or does not answer within the deadline.
    pub async fn list(&self) -> sqlx::Result<Vec<Pause>> {
        bounded(
            self.deadline,
            sqlx::query_as::<_, Pause>(
                "SELECT topic, partition, reason, paused_at FROM consumption_pauses ORDER BY topic, partition",
            )
            .fetch_all(&self.pool),
        )
        .await
    }

    /// Pauses `partition` of `topic` (`None`: every partition) with
    /// `reason`. Returns the pause as kept: pausing again keeps the first
    /// reason and time.
    ///
    /// # Errors
    ///
    /// When the database fails or does not answer within the deadline.
    pub async fn pause(&self, topic: &str, partition: Option<i32>, reason: &str) -> sqlx::Result<Pause> {
        bounded(
            self.deadline,
            sqlx::query_as::<_, Pause>(
                "INSERT INTO consumption_pauses (topic, partition, reason) VALUES ($1, $2, $3) \
                 ON CONFLICT (topic, partition) DO UPDATE SET topic = EXCLUDED.topic \
                 RETURNING topic, partition, reason, paused_at",
            )
            .bind(topic)
            .bind(partition.unwrap_or(-1))
            .bind(reason)
            .fetch_one(&self.pool),
        )
        .await
    }

    /// Ends the pause of `partition` of `topic` (`None`: the topic's
    /// pause); whether there was one.
    ///
    /// # Errors
    ///
    /// When the database fails or does not answer within the deadline.
    pub async fn resume(&self, topic: &str, partition: Option<i32>) -> sqlx::Result<bool> {
        let deleted = bounded(
            self.deadline,
            sqlx::query("DELETE FROM consumption_pauses WHERE topic = $1 AND partition = $2")
                .bind(topic)
                .bind(partition.unwrap_or(-1))
                .execute(&self.pool),
        )
        .await?;
        Ok(deleted.rows_affected() > 0)
    }

    /// Hands the pauses to `handle` once, before the member consumes, so
    /// that a partition paused is paused from its first assignment.
    ///
    /// # Errors
    ///
    /// When the database fails or does not answer within the deadline.
    pub async fn apply_once(&self, handle: &HoldHandle) -> sqlx::Result<()> {
        let pauses = self.list().await?;
        handle.set(pauses.iter().map(Pause::hold).collect());
        Ok(())
    }

    /// Hands the pauses to `handle` now and every [`REFRESH_INTERVAL`]
    /// until `shutdown`. When they cannot be read, the last ones stay (a
    /// database outage pauses or resumes nothing); the first failure is
    /// logged at `warn`.
    pub async fn apply(self, handle: HoldHandle, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(REFRESH_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<Vec<Hold>> = None;
        let mut failing = false;
        while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
            match self.list().await {
                Ok(pauses) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!("consumption pauses read again");
                    }
                    let holds: Vec<Hold> = pauses.iter().map(Pause::hold).collect();
                    if last.as_ref() != Some(&holds) {
                        for pause in &pauses {
                            tracing::info!(
                                topic = pause.topic,
                                partition = pause.partition,
                                reason = pause.reason,
                                "consumption paused by an operator"
                            );
                        }
                        handle.set(holds.clone());
                        last = Some(holds);
                    }
                }
                Err(error) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(%error, "could not read the consumption pauses; keeping the last ones");
                    }
                }
            }
        }
    }
}
