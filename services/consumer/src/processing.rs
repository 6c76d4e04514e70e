//! The consumer loop and the event handlers.
//!
//! For each record, in partition order: decode the envelope, apply the
//! event and record its id in one database transaction, then mark the
//! offset processed (committed later in a batch; see
//! [`kafka_service::consumer`]).
//!
//! - Transient failures (database or producer unavailable) are retried in
//!   place with exponential backoff: the partition makes no progress and no
//!   offset past the record is committed until it succeeds.
//! - A record that can never succeed (not a valid envelope, unknown event
//!   type, invalid data, a user the producer does not know) is logged with
//!   its reason and skipped. (Issue 3 routes these to the dead-letter topic.)

use std::time::Duration;

use anyhow::Context;
use events::{TokenIssued, UserCreated, UserEvent};
use kafka_service::{Envelope, EventConsumer, Record};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::producer_client::ProducerClient;
use crate::read_model;

/// What became of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its effect was applied.
    Applied,
    /// Its event id had been applied before: nothing changed.
    Duplicate,
    /// It can never be applied; the reason says why.
    Rejected(String),
}

/// Why applying a record failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Retrying later may succeed.
    #[error("transient failure")]
    Transient(#[source] anyhow::Error),
    /// Retrying cannot help.
    #[error("{0}")]
    Permanent(String),
}

/// Applies events to the read model.
#[derive(Clone)]
pub struct Handler {
    pool: PgPool,
    producer: ProducerClient,
}

impl Handler {
    /// A handler writing to `pool`, asking `producer` about unknown users.
    pub fn new(pool: PgPool, producer: ProducerClient) -> Self {
        Self { pool, producer }
    }

    /// Applies one record, exactly once in effect.
    ///
    /// # Errors
    ///
    /// [`ProcessError::Transient`] when the database or the producer failed;
    /// [`ProcessError::Permanent`] when the record can never be applied.
    pub async fn handle(&self, record: &Record) -> Result<Outcome, ProcessError> {
        let envelope = Envelope::decode(record).map_err(|e| ProcessError::Permanent(e.to_string()))?;
        tracing::Span::current().record("event_id", tracing::field::display(envelope.id));
        let event = UserEvent::from_envelope(&envelope).map_err(|e| ProcessError::Permanent(error_chain(&e)))?;
        match event {
            UserEvent::Created(data) => self.user_created(record, envelope.id, &data).await,
            UserEvent::TokenIssued(data) => self.token_issued(record, envelope.id, &data).await,
        }
    }

    async fn user_created(&self, record: &Record, event_id: Uuid, data: &UserCreated) -> Result<Outcome, ProcessError> {
        let mut tx = self.pool.begin().await.map_err(transient)?;
        if !claim(&mut tx, record, event_id, UserEvent::CREATED_V1).await? {
            return Ok(Outcome::Duplicate);
        }
        read_model::insert_user(&mut tx, data.user_id, &data.username, &data.email, data.created_at)
            .await
            .map_err(transient)?;
        tx.commit().await.map_err(transient)?;
        Ok(Outcome::Applied)
    }

    async fn token_issued(&self, record: &Record, event_id: Uuid, data: &TokenIssued) -> Result<Outcome, ProcessError> {
        // The two topics are not ordered against each other: a token may
        // arrive before its user. Ask the producer, outside any transaction.
        let mut connection = self.pool.acquire().await.map_err(transient)?;
        if !read_model::has_user(&mut connection, data.user_id)
            .await
            .map_err(transient)?
        {
            let user = self
                .producer
                .get_user(data.user_id)
                .await
                .map_err(|e| ProcessError::Transient(e.into()))?
                .ok_or_else(|| ProcessError::Permanent(format!("the producer does not know user {}", data.user_id)))?;
            read_model::insert_user(&mut connection, user.id, &user.username, &user.email, user.created_at)
                .await
                .map_err(transient)?;
            tracing::info!(user_id = %user.id, "user fetched from the producer ahead of its event");
        }
        drop(connection);

        let mut tx = self.pool.begin().await.map_err(transient)?;
        if !claim(&mut tx, record, event_id, UserEvent::TOKEN_ISSUED_V1).await? {
            return Ok(Outcome::Duplicate);
        }
        if !read_model::count_token(&mut tx, data.user_id, data.issued_at)
            .await
            .map_err(transient)?
        {
            return Err(ProcessError::Transient(anyhow::anyhow!(
                "user {} vanished from the read model",
                data.user_id
            )));
        }
        tx.commit().await.map_err(transient)?;
        Ok(Outcome::Applied)
    }
}

/// Records `event_id` as processed; `false` when it already was (the
/// caller's transaction then changes nothing).
async fn claim(
    tx: &mut sqlx::PgConnection,
    record: &Record,
    event_id: Uuid,
    event_type: &str,
) -> Result<bool, ProcessError> {
    let inserted = sqlx::query(
        "INSERT INTO processed_events (event_id, event_type, topic, \"partition\", \"offset\") \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(event_type)
    .bind(&record.topic)
    .bind(record.partition)
    .bind(record.offset)
    .execute(&mut *tx)
    .await
    .map_err(transient)?;
    Ok(inserted.rows_affected() == 1)
}

fn transient(error: sqlx::Error) -> ProcessError {
    ProcessError::Transient(anyhow::Error::new(error).context("database"))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Consumes records until `shutdown` is cancelled, then commits what was
/// processed and leaves the group.
///
/// # Errors
///
/// When the final commit fails (the uncommitted records will be redelivered
/// and deduplicated).
pub async fn run(mut consumer: EventConsumer, handler: Handler, shutdown: CancellationToken) -> anyhow::Result<()> {
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => break,
            received = consumer.recv() => received,
        };
        let record = match received {
            Ok(record) => record,
            Err(error) => {
                tracing::warn!(error = error_chain(&error), "consumer error; carrying on");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let span = tracing::info_span!(
            "record",
            topic = record.topic,
            partition = record.partition,
            offset = record.offset,
            key = record.key_lossy(),
            event_id = tracing::field::Empty,
        );
        let Some(outcome) = handle_with_retry(&handler, &record, &shutdown)
            .instrument(span.clone())
            .await
        else {
            // Shutdown while retrying: leave the record uncommitted.
            break;
        };
        span.in_scope(|| match &outcome {
            Outcome::Applied => tracing::debug!("event applied"),
            Outcome::Duplicate => tracing::info!("event already applied; skipped"),
            Outcome::Rejected(reason) => tracing::error!(reason, "record rejected and skipped"),
        });
        if let Err(error) = consumer.mark_processed(&record) {
            span.in_scope(|| tracing::warn!(error = error_chain(&error), "could not mark the record processed"));
        }
    }
    consumer.shutdown().await.context("final offset commit failed")
}

/// Handles `record`, retrying transient failures under
/// [`service_common::retry::backoff`] until it succeeds. `None` when shutdown
/// came first.
async fn handle_with_retry(handler: &Handler, record: &Record, shutdown: &CancellationToken) -> Option<Outcome> {
    let mut delays = service_common::retry::backoff();
    for attempt in 1.. {
        match handler.handle(record).await {
            Ok(outcome) => return Some(outcome),
            Err(ProcessError::Permanent(reason)) => return Some(Outcome::Rejected(reason)),
            Err(ProcessError::Transient(error)) => {
                tracing::warn!(attempt, error = format!("{error:#}"), "event not applied; retrying");
                if !service_common::retry::sleep_or_cancel(&mut delays, shutdown).await {
                    return None;
                }
            }
        }
    }
    unreachable!("the retry loop only ends by returning")
}
