//! Records an operator asked to dead-letter by topic, partition and offset
//! (`POST /records/dead-letter`), for a record no handling gets past: a
//! handler that panics stops its partition, and each member that takes the
//! partition next stops on the same record.
//!
//! A request is kept in `dead_letter_requests`. Every member loads the
//! requests when it starts and again every [`REFRESH_INTERVAL`], and a
//! worker that reaches a requested record dead-letters it (`permanent`,
//! the operator's reason in its `error-message`) instead of handling it. A
//! member replaced after a panic loads them before it consumes, so the
//! record is dead-lettered where the partition stopped.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use kafka_service::failure::Origin;
use kafka_service::Record;
use service_common::database::bounded;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How often a member reads the requests again.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// A consumed record's topic, partition and offset.
type Coordinates = (String, i32, i64);

/// A request, as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Where the record was consumed.
    pub record: Origin,
    /// Why, as the operator gave it.
    pub reason: String,
    /// When it was first asked for.
    pub requested_at: DateTime<Utc>,
}

/// The requests, shared by the partition workers and the HTTP handlers.
/// Cheap to clone.
#[derive(Clone)]
pub struct DeadLetterRequests {
    pool: PgPool,
    /// How long one database call may take; `None`: unbounded.
    deadline: Option<Duration>,
    /// Each requested record's reason, by topic, partition and offset.
    requested: Arc<RwLock<HashMap<Coordinates, String>>>,
}

impl DeadLetterRequests {
    /// The requests kept in `pool`'s database.
    ///
    /// # Errors
    ///
    /// When the database fails or does not answer within `deadline`.
    pub async fn load(pool: PgPool, deadline: Option<Duration>) -> sqlx::Result<Self> {
        let requests = Self {
            pool,
            deadline,
            requested: Arc::default(),
        };
        requests.refresh().await?;
        Ok(requests)
    }

    /// The operator's reason when `record` is to be dead-lettered.
    pub fn reason_for(&self, record: &Record) -> Option<String> {
        let requested = self.requested.read().unwrap_or_else(PoisonError::into_inner);
        // Asked of every record; almost always there is no request, and
        // then no key is built.
        if requested.is_empty() {
            return None;
        }
        requested
            .get(&(record.topic.clone(), record.partition, record.offset))
            .cloned()
    }

    /// Asks for the record consumed at `record` to be dead-lettered with
    /// `reason`. Returns the request as kept: a second request for the same
    /// record changes nothing and returns the first.
    ///
    /// # Errors
    ///
    /// When the database fails or does not answer within the deadline.
    pub async fn request(&self, record: &Origin, reason: &str) -> sqlx::Result<Request> {
        let (reason, requested_at): (String, DateTime<Utc>) = bounded(self.deadline, async {
            sqlx::query_as(
                "INSERT INTO dead_letter_requests (topic, partition, \"offset\", reason) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (topic, partition, \"offset\") DO UPDATE SET topic = EXCLUDED.topic \
                 RETURNING reason, requested_at",
            )
            .bind(&record.topic)
            .bind(record.partition)
            .bind(record.offset)
            .bind(reason)
            .fetch_one(&self.pool)
            .await
        })
        .await?;
        tracing::warn!(%record, reason, "an operator asked for a record to be dead-lettered");
        self.requested
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((record.topic.clone(), record.partition, record.offset), reason.clone());
        Ok(Request {
            record: record.clone(),
            reason,
            requested_at,
        })
    }

    /// Reads the requests again every [`REFRESH_INTERVAL`] until
    /// `shutdown`; a failure is logged at `warn`, and the requests known
    /// stay.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(REFRESH_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
            match self.refresh().await {
                Ok(()) if std::mem::take(&mut failing) => tracing::info!("dead-letter requests read again"),
                Ok(()) => {}
                Err(error) if !std::mem::replace(&mut failing, true) => {
                    tracing::warn!(%error, "could not read the dead-letter requests; keeping those known");
                }
                Err(_) => {}
            }
        }
    }

    async fn refresh(&self) -> sqlx::Result<()> {
        let rows: Vec<(String, i32, i64, String)> = bounded(self.deadline, async {
            sqlx::query_as("SELECT topic, partition, \"offset\", reason FROM dead_letter_requests")
                .fetch_all(&self.pool)
                .await
        })
        .await?;
        let requested = rows
            .into_iter()
            .map(|(topic, partition, offset, reason)| ((topic, partition, offset), reason))
            .collect();
        *self.requested.write().unwrap_or_else(PoisonError::into_inner) = requested;
        Ok(())
    }
}
