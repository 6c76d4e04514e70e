//! Which records are parked on the retry topic, per topic and key, in order
//! (`parked_records`). This is what keeps per-key order through retries:
//! while a key has a parked record from a topic, its later records from
//! that topic are parked behind it, and a parked record is applied only
//! when it is the oldest of its key from its topic. The topics are not
//! ordered against each other, so a record of one topic never waits for
//! another topic's: a user's `user.created` is applied while a token of
//! that user waits, parked, for the user to be known.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kafka_service::failure::{self, DeadLetterHeaders, FailureClass, Origin, RetryHeaders};
use kafka_service::Record;
use service_common::database::bounded;
use sqlx::PgPool;

/// Where a record read from the retry topic stands among its key's parked
/// records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// It is the oldest parked record of its key (or has no key): apply it.
    Head,
    /// An older record of its key is still parked (given by origin).
    Behind(String),
    /// It is no longer parked: it was applied or dead-lettered already, and
    /// this is a second copy (left by a crash between producing a copy and
    /// committing its source).
    Resolved,
    /// It names a parked record but is not a copy of it: its key, value or
    /// headers (failure headers aside) differ from the record kept in
    /// `parked_records`. Whoever wrote it, it must neither be applied in the
    /// parked record's place nor end that record's parking.
    Forged(String),
    /// Its dead-lettering was decided ([`Parking::dead_lettering`]) but
    /// not finished: the dead-letter copy may or may not be out, and the
    /// record is still parked. Finish it, with these headers; never apply
    /// it.
    DeadLettering(DeadLetterHeaders),
}

/// A parked record as `parked_records` keeps it.
#[derive(Debug, Clone)]
pub struct Parked {
    /// Where it was consumed first.
    pub origin: Origin,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// The record as it was consumed there, without failure headers; `None`
    /// for a row parked before records were kept.
    pub record: Option<Record>,
    /// The retry round of its latest copy (0: parked behind an earlier
    /// record of its key).
    pub round: u32,
    /// Processing attempts so far.
    pub attempts: u32,
    /// Why it is parked: the last error.
    pub reason: String,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
    /// When its latest copy on the retry topic is due.
    pub due_at: DateTime<Utc>,
    /// Parked records of its topic and key, itself included.
    pub records_of_key: i64,
}

/// The retry state a record is parked or rescheduled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// The retry round of the copy.
    pub round: u32,
    /// Processing attempts so far.
    pub attempts: u32,
    /// When the copy is due.
    pub due_at: DateTime<Utc>,
}

impl Schedule {
    /// The headers of the retry copy of `origin`'s record on this schedule,
    /// `reason` being its last error.
    pub fn headers(self, origin: &Origin, reason: &str) -> RetryHeaders {
        RetryHeaders {
            origin: origin.clone(),
            round: self.round,
            attempts: self.attempts,
            not_before: self.due_at,
            error: reason.to_owned(),
        }
    }
}

#[derive(sqlx::FromRow)]
struct ParkedRow {
    record_key: Option<Vec<u8>>,
    origin_topic: String,
    origin_partition: i32,
    origin_offset: i64,
    reason: String,
    parked_at: DateTime<Utc>,
    record_value: Option<Vec<u8>>,
    header_names: Vec<String>,
    header_values: Vec<Option<Vec<u8>>>,
    round: i32,
    attempts: i32,
    due_at: DateTime<Utc>,
    records_of_key: i64,
}

impl From<ParkedRow> for Parked {
    fn from(row: ParkedRow) -> Self {
        let origin = Origin {
            topic: row.origin_topic,
            partition: row.origin_partition,
            offset: row.origin_offset,
        };
        let record = row.record_value.map(|value| Record {
            topic: origin.topic.clone(),
            partition: origin.partition,
            offset: origin.offset,
            key: row.record_key.clone(),
            headers: row.header_names.into_iter().zip(row.header_values).collect(),
            value: Some(value),
            timestamp_ms: None,
            unreadable_header_names: 0,
        });
        Parked {
            origin,
            key: row.record_key,
            record,
            round: u32::try_from(row.round).unwrap_or_default(),
            attempts: u32::try_from(row.attempts).unwrap_or_default(),
            reason: row.reason,
            parked_at: row.parked_at,
            due_at: row.due_at,
            records_of_key: row.records_of_key,
        }
    }
}

/// What `parked_records` keeps of a parked record, to tell its copies from
/// forgeries.
#[derive(sqlx::FromRow)]
struct KeptRecord {
    /// The dead-lettering decided for it, if any: class, attempts, reason
    /// and time.
    dead_letter_class: Option<String>,
    dead_letter_attempts: Option<i32>,
    dead_letter_reason: Option<String>,
    dead_lettered_at: Option<DateTime<Utc>>,
    record_key: Option<Vec<u8>>,
    /// `None` for a row parked before records were kept: only the key can
    /// be compared then.
    record_value: Option<Vec<u8>>,
    header_names: Vec<String>,
    header_values: Vec<Option<Vec<u8>>>,
}

impl KeptRecord {
    /// The dead-letter headers decided for the record from `origin`, when
    /// its dead-lettering was decided.
    fn dead_lettering(&self, origin: &Origin) -> Option<DeadLetterHeaders> {
        Some(DeadLetterHeaders {
            origin: origin.clone(),
            class: self
                .dead_letter_class
                .as_deref()?
                .parse()
                .unwrap_or(FailureClass::Permanent),
            attempts: u32::try_from(self.dead_letter_attempts?).unwrap_or_default(),
            error: self.dead_letter_reason.clone()?,
            failed_at: self.dead_lettered_at?,
        })
    }

    /// What of `copy` differs from this record (`key`, `value` or
    /// `headers`), if anything. Failure headers are not compared: every
    /// copy has its own.
    fn differs_from(&self, copy: &Record) -> Option<&'static str> {
        if copy.key != self.record_key {
            return Some("key");
        }
        let Some(value) = &self.record_value else {
            return None;
        };
        if copy.value.as_ref() != Some(value) {
            return Some("value");
        }
        let original = failure::original(copy).headers;
        let kept = self.header_names.iter().zip(&self.header_values);
        if original.len() != self.header_names.len()
            || !original
                .iter()
                .zip(kept)
                .all(|((name, value), (kept_name, kept_value))| name == kept_name && value == kept_value)
        {
            return Some("headers");
        }
        None
    }
}

/// The columns of a [`ParkedRow`], from `parked_records parked`.
const PARKED_ROW: &str = "parked.record_key, parked.origin_topic, parked.origin_partition, parked.origin_offset, \
    parked.reason, parked.parked_at, parked.record_value, parked.header_names, parked.header_values, \
    parked.round, parked.attempts, parked.due_at, \
    (SELECT count(*) FROM parked_records same WHERE same.origin_topic = parked.origin_topic \
       AND same.record_key IS NOT DISTINCT FROM parked.record_key) AS records_of_key";

/// Only the oldest parked record of each topic and key, of
/// `parked_records parked`.
const HEAD_OF_KEY: &str = "NOT EXISTS (SELECT 1 FROM parked_records older \
    WHERE older.origin_topic = parked.origin_topic AND older.record_key = parked.record_key \
    AND older.id < parked.id)";

/// The `parked_records` table. Every call is bounded by the deadline it
/// was made with ([`service_common::database::bounded`]): a database that
/// stops answering fails the call instead of hanging its partition.
#[derive(Clone)]
pub struct Parking {
    pool: PgPool,
    deadline: Option<Duration>,
}

impl Parking {
    /// Parking in `pool`'s database, each call given up after `deadline`
    /// (`None`: never).
    pub fn new(pool: PgPool, deadline: Option<Duration>) -> Self {
        Self { pool, deadline }
    }

    /// Whether any record of `topic` with `key` is parked. A record without
    /// a key is never parked behind another.
    ///
    /// # Errors
    ///
    /// When the database fails or does not answer within the deadline.
    pub async fn is_parked(&self, topic: &str, key: Option<&[u8]>) -> sqlx::Result<bool> {
        bounded(self.deadline, async {
            let Some(key) = key else { return Ok(false) };
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM parked_records WHERE origin_topic = $1 AND record_key = $2)",
            )
            .bind(topic)
            .bind(key)
            .fetch_one(&self.pool)
            .await
        })
        .await
    }

    /// Which of `keys` have a parked record of `topic`: one query for a
    /// batch.
    ///
    /// # Errors
    ///
    /// The database error, or no answer within the deadline.
    pub async fn parked_keys(&self, topic: &str, keys: &[&[u8]]) -> sqlx::Result<HashSet<Vec<u8>>> {
        bounded(self.deadline, async {
            if keys.is_empty() {
                return Ok(HashSet::new());
            }
            let parked: Vec<Vec<u8>> = sqlx::query_scalar(
                "SELECT DISTINCT record_key FROM parked_records WHERE origin_topic = $1 AND record_key = ANY($2)",
            )
            .bind(topic)
            .bind(keys)
            .fetch_all(&self.pool)
            .await?;
            Ok(parked.into_iter().collect())
        })
        .await
    }

    /// Parks `record`, consumed at `origin`, behind every record of its
    /// topic with its key parked before it, keeping the record (without
    /// failure headers) and `schedule` so that it can be copied again.
    /// Parking a record again keeps its place.
    ///
    /// # Errors
    ///
    /// When the database fails or does not answer within the deadline.
    pub async fn park(&self, origin: &Origin, record: &Record, schedule: Schedule, reason: &str) -> sqlx::Result<()> {
        bounded(self.deadline, async {
            let kept = failure::original(record);
            let (names, values): (Vec<String>, Vec<Option<Vec<u8>>>) = kept.headers.into_iter().unzip();
            sqlx::query(
                "INSERT INTO parked_records (record_key, origin_topic, origin_partition, origin_offset, reason, \
                   record_value, header_names, header_values, round, attempts, due_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                 ON CONFLICT (origin_topic, origin_partition, origin_offset) DO NOTHING",
            )
            .bind(kept.key)
            .bind(&origin.topic)
            .bind(origin.partition)
            .bind(origin.offset)
            .bind(reason)
            .bind(kept.value)
            .bind(names)
            .bind(values)
            .bind(i32::try_from(schedule.round).unwrap_or(i32::MAX))
            .bind(i32::try_from(schedule.attempts).unwrap_or(i32::MAX))
            .bind(schedule.due_at)
            .execute(&self.pool)
            .await
            .map(drop)
        })
        .await
    }

    /// Records that the record from `origin` has a new copy on the retry
    /// topic, with `schedule`, and, when given, a new `reason`.
    ///
    /// # Errors
    ///
    /// When the database fails or does not answer within the deadline.
    pub async fn reschedule(&self, origin: &Origin, schedule: Schedule, reason: Option<&str>) -> sqlx::Result<()> {
        bounded(self.deadline, async {
            sqlx::query(
                "UPDATE parked_records SET round = $4, attempts = $5, due_at = $6, reason = COALESCE($7, reason) \
                 WHERE origin_topic = $1 AND origin_partition = $2 AND origin_offset = $3",
            )
            .bind(&origin.topic)
            .bind(origin.partition)
            .bind(origin.offset)
            .bind(i32::try_from(schedule.round).unwrap_or(i32::MAX))
            .bind(i32::try_from(schedule.attempts).unwrap_or(i32::MAX))
            .bind(schedule.due_at)
            .bind(reason)
            .execute(&self.pool)
            .await
            .map(drop)
        })
        .await
    }

    /// The parked record from `origin`, if it is parked.
    ///
    /// # Errors
    ///
    /// When the database fails or does not answer within the deadline.
    pub async fn get(&self, origin: &Origin) -> sqlx::Result<Option<Parked>> {
        bounded(self.deadline, async {
            let query = format!(
                "SELECT {PARKED_ROW} FROM parked_records parked \
                 WHERE origin_topic = $1 AND origin_partition = $2 AND origin_offset = $3"
            );
            let row: Option<ParkedRow> = sqlx::query_as(&query)
                .bind(&origin.topic)
                .bind(origin.partition)
                .bind(origin.offset)
                .fetch_optional(&self.pool)
                .await?;
            Ok(row.map(Parked::from))
        })
        .await
    }

    /// The oldest parked record of each topic and key, oldest first, at
    /// most `limit`.
    ///
    /// # Errors
    ///
    /// When the database fails or does not answer within the deadline.
    pub async fn heads(&self, limit: i64) -> sqlx::Result<Vec<Parked>> {
        bounded(self.deadline, async {
            let query = format!(
                "SELECT {PARKED_ROW} FROM parked_records parked WHERE {HEAD_OF_KEY} ORDER BY parked.id LIMIT $1"
            );
            let rows: Vec<ParkedRow> = sqlx::query_as(&query).bind(limit).fetch_all(&self.pool).await?;
            Ok(rows.into_iter().map(Parked::from).collect())
        })
        .await
    }

    /// Heads of their key whose latest copy was due more than `after` ago
    /// and has not come back (it would have unparked or rescheduled them):
    /// copies lost to retention, a recreated retry topic or a reset group.
    /// Only rows that keep their record, at most `limit`.
    ///
    /// # Errors
    ///
    /// When the database fails or does not answer within the deadline.
    pub async fn orphans(&self, after: Duration, limit: i64) -> sqlx::Result<Vec<Parked>> {
        bounded(self.deadline, async {
            let query = format!(
                "SELECT {PARKED_ROW} FROM parked_records parked \
                 WHERE {HEAD_OF_KEY} AND parked.record_value IS NOT NULL \
                   AND parked.due_at < now() - make_interval(secs => $1) \
                 ORDER BY parked.id LIMIT $2"
            );
            let rows: Vec<ParkedRow> = sqlx::query_as(&query)
                .bind(after.as_secs_f64())
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
            Ok(rows.into_iter().map(Parked::from).collect())
        })
        .await
    }

    /// How many records are parked, and how long ago the oldest was, in
    /// seconds (0 when none).
    ///
    /// # Errors
    ///
    /// When the database fails or does not answer within the deadline.
    pub async fn stats(&self) -> sqlx::Result<(i64, f64)> {
        bounded(self.deadline, async {
            let (count, oldest): (i64, Option<f64>) = sqlx::query_as(
                "SELECT count(*), EXTRACT(EPOCH FROM now() - min(parked_at))::float8 FROM parked_records",
            )
            .fetch_one(&self.pool)
            .await?;
            Ok((count, oldest.unwrap_or(0.0).max(0.0)))
        })
        .await
    }

    /// Where `copy`, a record read from the retry topic naming `origin`,
    /// stands among the parked records of its topic and key. The copy is
    /// first compared with the record `parked_records` kept for `origin`:
    /// a copy that differs is [`Position::Forged`]. The key compared is
    /// the parked row's, so a copy with another key cannot hide behind it.
    ///
    /// # Errors
    ///
    /// When the database fails or does not answer within the deadline.
    pub async fn position(&self, origin: &Origin, copy: &Record) -> sqlx::Result<Position> {
        bounded(self.deadline, async {
            let kept: Option<KeptRecord> = sqlx::query_as(
                "SELECT record_key, record_value, header_names, header_values, dead_letter_class, \
                   dead_letter_attempts, dead_letter_reason, dead_lettered_at FROM parked_records \
                 WHERE origin_topic = $1 AND origin_partition = $2 AND origin_offset = $3",
            )
            .bind(&origin.topic)
            .bind(origin.partition)
            .bind(origin.offset)
            .fetch_optional(&self.pool)
            .await?;
            let Some(kept) = kept else {
                return Ok(Position::Resolved);
            };
            if let Some(difference) = kept.differs_from(copy) {
                return Ok(Position::Forged(format!(
                    "forged retry copy: its {difference} differs from the parked record {origin} it names"
                )));
            }
            if let Some(headers) = kept.dead_lettering(origin) {
                return Ok(Position::DeadLettering(headers));
            }
            let Some(key) = kept.record_key else {
                return Ok(Position::Head);
            };
            let (topic, partition, offset): (String, i32, i64) = sqlx::query_as(
                "SELECT origin_topic, origin_partition, origin_offset FROM parked_records \
                 WHERE origin_topic = $1 AND record_key = $2 ORDER BY id LIMIT 1",
            )
            .bind(&origin.topic)
            .bind(key)
            .fetch_one(&self.pool)
            .await?;
            let head = Origin {
                topic,
                partition,
                offset,
            };
            Ok(if head == *origin {
                Position::Head
            } else {
                Position::Behind(head.to_string())
            })
        })
        .await
    }

    /// Records that the record from `origin` is to be dead-lettered with
    /// `headers`, before its copy is produced: until it is unparked, a
    /// copy of it read from the retry topic finishes that
    /// ([`Position::DeadLettering`]) instead of being tried. Nothing
    /// happens when it is not parked.
    ///
    /// # Errors
    ///
    /// When the database fails or does not answer within the deadline.
    pub async fn dead_lettering(&self, origin: &Origin, headers: &DeadLetterHeaders) -> sqlx::Result<()> {
        bounded(self.deadline, async {
            sqlx::query(
                "UPDATE parked_records SET dead_letter_class = $4, dead_letter_attempts = $5, \
                   dead_letter_reason = $6, dead_lettered_at = $7 \
                 WHERE origin_topic = $1 AND origin_partition = $2 AND origin_offset = $3",
            )
            .bind(&origin.topic)
            .bind(origin.partition)
            .bind(origin.offset)
            .bind(headers.class.as_str())
            .bind(i32::try_from(headers.attempts).unwrap_or(i32::MAX))
            .bind(&headers.error)
            .bind(headers.failed_at)
            .execute(&self.pool)
            .await
            .map(drop)
        })
        .await
    }

    /// Ends the parking of the record from `origin` (applied or
    /// dead-lettered), letting the next record of its key go.
    ///
    /// # Errors
    ///
    /// When the database fails or does not answer within the deadline.
    pub async fn unpark(&self, origin: &Origin) -> sqlx::Result<()> {
        bounded(self.deadline, async {
            sqlx::query(
                "DELETE FROM parked_records \
                 WHERE origin_topic = $1 AND origin_partition = $2 AND origin_offset = $3",
            )
            .bind(&origin.topic)
            .bind(origin.partition)
            .bind(origin.offset)
            .execute(&self.pool)
            .await
            .map(drop)
        })
        .await
    }
}
