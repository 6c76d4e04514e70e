//! The event handlers: one attempt at applying one record to the read
//! model, exactly once in effect.
//!
//! Each event's effect and its id (in `processed_events`) are written in one
//! database transaction, so a record delivered again finds its id there and
//! changes nothing. [`Handler::handle_batch`] writes a run of a partition's
//! events in one transaction of three statements, on the same terms. What
//! happens when an attempt fails (retries, the retry topic, the dead-letter
//! topic) is [`crate::delivery`]'s business.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use events::{TokenIssued, UserCreated, UserEvent};
use kafka_service::failure::Origin;
use kafka_service::{Envelope, Record};
use sqlx::PgPool;
use uuid::Uuid;

use crate::circuit::{Breakers, Dependency};
use crate::feed::{Feed, FeedEvent};
use crate::producer_client::ProducerClient;
use crate::read_model;

/// What became of a record that was handled without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its effect was applied.
    Applied,
    /// Its event id had been applied before: nothing changed.
    Duplicate,
}

/// Why applying a record failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A dependency failed (it did not answer, answered with an error, or
    /// its circuit is open): retrying once it answers may succeed.
    #[error("{} unavailable", dependency.name())]
    Unavailable {
        /// Which dependency.
        dependency: Dependency,
        /// The failed call, or the open circuit.
        #[source]
        error: anyhow::Error,
    },
    /// Retrying later may succeed, though every dependency answered.
    #[error("transient failure")]
    Transient(#[source] anyhow::Error),
    /// Retrying cannot help. The record is dead-lettered with this error's
    /// whole cause chain (`{:#}`) as its reason.
    #[error("permanent failure")]
    Permanent(#[source] anyhow::Error),
}

/// Applies events to the read model.
#[derive(Clone)]
pub struct Handler {
    pool: PgPool,
    producer: ProducerClient,
    /// Where applied events are announced (the live feed).
    feed: Feed,
    /// Longest one [`handle`](Self::handle) or
    /// [`handle_batch`](Self::handle_batch) may take; `None`: no bound.
    deadline: Option<Duration>,
    /// Told of each call to the database and the producer; an open one
    /// fails a handling at once.
    breakers: Breakers,
}

impl Handler {
    /// A handler writing to `pool`, asking `producer` about unknown users,
    /// giving up a record's handling after `deadline` (`None`: never). The
    /// deadline covers a database that stops answering, which no
    /// server-side limit does ([`service_common::database::bounded`]): set
    /// it to the longest a handling may legitimately take, the statement
    /// deadline plus one call to the producer (whose own timeout is
    /// shorter), so that running out of it is the database's failure.
    /// `breakers` are told of each call's outcome.
    pub fn new(
        pool: PgPool,
        producer: ProducerClient,
        feed: Feed,
        deadline: Option<Duration>,
        breakers: Breakers,
    ) -> Self {
        Self {
            pool,
            producer,
            feed,
            deadline,
            breakers,
        }
    }

    /// Applies one record, exactly once in effect. `origin` is where the
    /// record was first consumed from (it differs from the record's own
    /// coordinates when it comes from the retry topic); it is recorded with
    /// the event id.
    ///
    /// # Errors
    ///
    /// [`ProcessError::Unavailable`] when the database or the producer
    /// failed or its circuit is open, or the handling took longer than the
    /// deadline (the database's failure: the producer's calls time out
    /// before it); [`ProcessError::Transient`] when the read model lost a
    /// user in between; [`ProcessError::Permanent`] when the record can
    /// never be applied (not a valid envelope, an unknown event type,
    /// invalid data, a user the producer does not know).
    pub async fn handle(&self, record: &Record, origin: &Origin) -> Result<Outcome, ProcessError> {
        let database = self.breakers.of(Dependency::Database);
        if !database.permits() {
            return Err(circuit_open(Dependency::Database));
        }
        let handled = match self.deadline {
            None => self.handle_unbounded(record, origin).await,
            Some(deadline) => tokio::time::timeout(deadline, self.handle_unbounded(record, origin))
                .await
                .unwrap_or_else(|_| {
                    Err(ProcessError::Unavailable {
                        dependency: Dependency::Database,
                        error: anyhow::anyhow!("not handled within {} ms", deadline.as_millis()),
                    })
                }),
        };
        match &handled {
            Ok(_) => database.succeeded(),
            Err(ProcessError::Unavailable {
                dependency: Dependency::Database,
                ..
            }) => database.failed(),
            Err(_) => {}
        }
        handled
    }

    /// The breakers this handler tells of each call.
    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    async fn handle_unbounded(&self, record: &Record, origin: &Origin) -> Result<Outcome, ProcessError> {
        let envelope = Envelope::decode(record).map_err(permanent)?;
        tracing::Span::current().record("event_id", tracing::field::display(envelope.id));
        let event = UserEvent::from_envelope(&envelope).map_err(permanent)?;
        let applied = Applied::of(origin, &envelope, &event);
        match event {
            UserEvent::Created(data) => self.user_created(&applied, &data).await,
            UserEvent::TokenIssued(data) => self.token_issued(&applied, &data).await,
        }
    }

    async fn user_created(&self, event: &Applied<'_>, data: &UserCreated) -> Result<Outcome, ProcessError> {
        let mut tx = self.pool.begin().await.map_err(database_failed)?;
        let Some(sequence) = claim(&mut tx, event).await.map_err(database_failed)? else {
            return Ok(Outcome::Duplicate);
        };
        read_model::insert_user(&mut tx, data.user_id, &data.username, &data.email, data.created_at)
            .await
            .map_err(database_failed)?;
        tx.commit().await.map_err(database_failed)?;
        self.feed.publish(event.feed_event(sequence));
        Ok(Outcome::Applied)
    }

    async fn token_issued(&self, event: &Applied<'_>, data: &TokenIssued) -> Result<Outcome, ProcessError> {
        // The two topics are not ordered against each other: a token may
        // arrive before its user. Ask the producer, outside any transaction.
        let mut connection = self.pool.acquire().await.map_err(database_failed)?;
        if !read_model::has_user(&mut connection, data.user_id)
            .await
            .map_err(database_failed)?
        {
            let breaker = self.breakers.of(Dependency::Producer);
            if !breaker.permits() {
                return Err(circuit_open(Dependency::Producer));
            }
            let answer = self.producer.get_user(data.user_id).await;
            if answer.is_ok() {
                breaker.succeeded();
            } else {
                breaker.failed();
            }
            let user = answer
                .map_err(|error| ProcessError::Unavailable {
                    dependency: Dependency::Producer,
                    error: error.into(),
                })?
                .ok_or_else(|| {
                    ProcessError::Permanent(anyhow::anyhow!("the producer does not know user {}", data.user_id))
                })?;
            read_model::insert_user(&mut connection, user.id, &user.username, &user.email, user.created_at)
                .await
                .map_err(database_failed)?;
            tracing::info!(user_id = %user.id, "user fetched from the producer ahead of its event");
        }
        drop(connection);

        let mut tx = self.pool.begin().await.map_err(database_failed)?;
        let Some(sequence) = claim(&mut tx, event).await.map_err(database_failed)? else {
            return Ok(Outcome::Duplicate);
        };
        if !read_model::count_token(&mut tx, data.user_id, data.issued_at)
            .await
            .map_err(database_failed)?
        {
            return Err(ProcessError::Transient(anyhow::anyhow!(
                "user {} vanished from the read model",
                data.user_id
            )));
        }
        tx.commit().await.map_err(database_failed)?;
        self.feed.publish(event.feed_event(sequence));
        Ok(Outcome::Applied)
    }
}

impl Handler {
    /// Applies, in one transaction, the longest leading run of `records`
    /// (consumed from their own topic, in offset order) that needs nothing
    /// but the read model: events that decode, and tokens of users the read
    /// model has or that an earlier event of the run creates. Exactly once
    /// in effect, as [`handle`](Self::handle). Returns the run's outcomes;
    /// empty when the first record needs `handle` (to be rejected, or to
    /// fetch its user from the producer).
    ///
    /// # Errors
    ///
    /// The database error, no answer within the deadline, or the database's
    /// circuit open; nothing of the run is applied then.
    pub async fn handle_batch(&self, records: &[Record]) -> anyhow::Result<Vec<Outcome>> {
        let database = self.breakers.of(Dependency::Database);
        anyhow::ensure!(database.permits(), "the database's circuit is open");
        let applied = match self.deadline {
            None => self.handle_batch_unbounded(records).await,
            Some(deadline) => tokio::time::timeout(deadline, self.handle_batch_unbounded(records))
                .await
                .unwrap_or_else(|_| {
                    Err(anyhow::anyhow!(
                        "batch not applied within {} ms (the database did not answer)",
                        deadline.as_millis()
                    ))
                }),
        };
        // Every error of a run is the database's, but for a user that
        // vanished from the read model in between, which only an operator
        // deleting rows causes.
        if applied.is_ok() {
            database.succeeded();
        } else {
            database.failed();
        }
        applied
    }

    async fn handle_batch_unbounded(&self, records: &[Record]) -> anyhow::Result<Vec<Outcome>> {
        let mut run = Vec::with_capacity(records.len());
        for record in records {
            let Ok(envelope) = Envelope::decode(record) else { break };
            let Ok(event) = UserEvent::from_envelope(&envelope) else {
                break;
            };
            run.push((Origin::consumed_at(record), envelope, event));
        }
        let token_users: Vec<Uuid> = run
            .iter()
            .filter_map(|(_, _, event)| match event {
                UserEvent::TokenIssued(data) => Some(data.user_id),
                UserEvent::Created(_) => None,
            })
            .collect();
        let mut known: HashSet<Uuid> = if token_users.is_empty() {
            HashSet::new()
        } else {
            read_model::known_users(&self.pool, &token_users).await?
        };
        let usable = run
            .iter()
            .position(|(_, _, event)| match event {
                UserEvent::Created(data) => {
                    known.insert(data.user_id);
                    false
                }
                UserEvent::TokenIssued(data) => !known.contains(&data.user_id),
            })
            .unwrap_or(run.len());
        run.truncate(usable);
        if run.is_empty() {
            return Ok(Vec::new());
        }

        // Three statements whatever the run's length: the claims, the new
        // users, the token counts.
        let applied: Vec<Applied<'_>> = run
            .iter()
            .map(|(origin, envelope, event)| Applied::of(origin, envelope, event))
            .collect();
        let mut tx = self.pool.begin().await?;
        let mut claimed = claim_all(&mut tx, &applied).await?;
        let mut outcomes = Vec::with_capacity(run.len());
        let mut announced = Vec::new();
        let mut new_users = Vec::new();
        let mut tokens = Vec::new();
        for ((_, _, event), applied) in run.iter().zip(&applied) {
            // Removed once taken: an event the run holds twice (published
            // again after a relay crash) is applied at its first copy.
            let Some(sequence) = claimed.remove(&applied.event_id) else {
                outcomes.push(Outcome::Duplicate);
                continue;
            };
            match event {
                UserEvent::Created(data) => new_users.push(data),
                UserEvent::TokenIssued(data) => tokens.push((data.user_id, data.issued_at)),
            }
            outcomes.push(Outcome::Applied);
            announced.push(applied.feed_event(sequence));
        }
        read_model::insert_users(&mut tx, &new_users).await?;
        let token_users: HashSet<Uuid> = tokens.iter().map(|(user_id, _)| *user_id).collect();
        let counted = read_model::count_tokens(&mut tx, &tokens).await?;
        anyhow::ensure!(
            counted == token_users.len() as u64,
            "users vanished from the read model: {counted} of the run's {} found",
            token_users.len()
        );
        tx.commit().await?;
        for event in announced {
            self.feed.publish(event);
        }
        Ok(outcomes)
    }
}

/// The event being applied: where it came from and what it is about.
struct Applied<'a> {
    origin: &'a Origin,
    event_id: Uuid,
    event_type: &'static str,
    time: DateTime<Utc>,
    user_id: Uuid,
    subject: &'a str,
}

impl<'a> Applied<'a> {
    fn of(origin: &'a Origin, envelope: &'a Envelope, event: &UserEvent) -> Self {
        Self {
            origin,
            event_id: envelope.id,
            event_type: event.event_type(),
            time: envelope.time,
            user_id: event.user_id(),
            subject: &envelope.subject,
        }
    }

    fn feed_event(&self, sequence: i64) -> FeedEvent {
        FeedEvent {
            sequence,
            event_type: self.event_type.to_owned(),
            user_id: self.user_id,
            event_id: self.event_id,
            time: self.time,
            topic: self.origin.topic.clone(),
            partition: self.origin.partition,
            offset: self.origin.offset,
        }
    }
}

/// Records the event as processed and returns its `sequence`; `None` when
/// it already was (the caller's transaction then changes nothing).
async fn claim(tx: &mut sqlx::PgConnection, event: &Applied<'_>) -> Result<Option<i64>, sqlx::Error> {
    Ok(claim_all(tx, std::slice::from_ref(event))
        .await?
        .remove(&event.event_id))
}

/// Records `events` as processed, in their order, in one statement, and
/// returns the `sequence` of each that was not processed before, by event
/// id (an event listed twice is claimed once).
async fn claim_all(tx: &mut sqlx::PgConnection, events: &[Applied<'_>]) -> Result<HashMap<Uuid, i64>, sqlx::Error> {
    let ids: Vec<Uuid> = events.iter().map(|event| event.event_id).collect();
    let types: Vec<&str> = events.iter().map(|event| event.event_type).collect();
    let topics: Vec<&str> = events.iter().map(|event| event.origin.topic.as_str()).collect();
    let partitions: Vec<i32> = events.iter().map(|event| event.origin.partition).collect();
    let offsets: Vec<i64> = events.iter().map(|event| event.origin.offset).collect();
    let subjects: Vec<&str> = events.iter().map(|event| event.subject).collect();
    let times: Vec<DateTime<Utc>> = events.iter().map(|event| event.time).collect();
    // `ORDER BY n`: the rows, and so their `sequence` values, in the run's
    // order, as one claim at a time would give them.
    let claimed: Vec<(Uuid, i64)> = sqlx::query_as(
        "INSERT INTO processed_events (event_id, event_type, topic, \"partition\", \"offset\", subject, event_time) \
         SELECT id, event_type, topic, \"partition\", \"offset\", subject, event_time \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::integer[], $5::bigint[], $6::text[], $7::timestamptz[]) \
              WITH ORDINALITY AS event(id, event_type, topic, \"partition\", \"offset\", subject, event_time, n) \
         ORDER BY n \
         ON CONFLICT (event_id) DO NOTHING RETURNING event_id, sequence",
    )
    .bind(&ids)
    .bind(&types)
    .bind(&topics)
    .bind(&partitions)
    .bind(&offsets)
    .bind(&subjects)
    .bind(&times)
    .fetch_all(&mut *tx)
    .await?;
    Ok(claimed.into_iter().collect())
}

/// A record that can never be applied, because of `error`.
fn permanent(error: impl std::error::Error + Send + Sync + 'static) -> ProcessError {
    ProcessError::Permanent(anyhow::Error::new(error))
}

/// A database call that failed.
fn database_failed(error: sqlx::Error) -> ProcessError {
    ProcessError::Unavailable {
        dependency: Dependency::Database,
        error: anyhow::Error::new(error).context("database"),
    }
}

/// A call not made because `dependency`'s circuit is open.
fn circuit_open(dependency: Dependency) -> ProcessError {
    ProcessError::Unavailable {
        dependency,
        error: anyhow::anyhow!("{}'s circuit is open", dependency.name()),
    }
}
