//! Which records are parked on the retry topic, per topic and key, in order
//! (`parked_records`). This is what keeps per-key order through retries:
//! while a key has a parked record from a topic, its later records from
//! that topic are parked behind it, and a parked record is applied only
//! when it is the oldest of its key from its topic. The topics are not
//! ordered against each other, so a record of one topic never waits for
//! another topic's: a user's `user.created` is applied while a token of
//! that user waits, parked, for the user to be known.

use std::collections::HashSet;

use kafka_service::failure::Origin;
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
}

/// The `parked_records` table.
#[derive(Clone)]
pub struct Parking {
    pool: PgPool,
}

impl Parking {
    /// Parking in `pool`'s database.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Whether any record of `topic` with `key` is parked. A record without
    /// a key is never parked behind another.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn is_parked(&self, topic: &str, key: Option<&[u8]>) -> sqlx::Result<bool> {
        let Some(key) = key else { return Ok(false) };
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM parked_records WHERE origin_topic = $1 AND record_key = $2)")
            .bind(topic)
            .bind(key)
            .fetch_one(&self.pool)
            .await
    }

    /// Which of `keys` have a parked record of `topic`: one query for a
    /// batch.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn parked_keys(&self, topic: &str, keys: &[&[u8]]) -> sqlx::Result<HashSet<Vec<u8>>> {
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
    }

    /// Parks the record from `origin`, behind every record of its topic with
    /// `key` parked before it. Parking a record again keeps its place.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn park(&self, origin: &Origin, key: Option<&[u8]>, reason: &str) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO parked_records (record_key, origin_topic, origin_partition, origin_offset, reason) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (origin_topic, origin_partition, origin_offset) DO NOTHING",
        )
        .bind(key)
        .bind(&origin.topic)
        .bind(origin.partition)
        .bind(origin.offset)
        .bind(reason)
        .execute(&self.pool)
        .await
        .map(drop)
    }

    /// Where the record from `origin` stands among the parked records of
    /// its topic with `key`.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn position(&self, origin: &Origin, key: Option<&[u8]>) -> sqlx::Result<Position> {
        let parked: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM parked_records \
             WHERE origin_topic = $1 AND origin_partition = $2 AND origin_offset = $3)",
        )
        .bind(&origin.topic)
        .bind(origin.partition)
        .bind(origin.offset)
        .fetch_one(&self.pool)
        .await?;
        if !parked {
            return Ok(Position::Resolved);
        }
        let Some(key) = key else { return Ok(Position::Head) };
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
    }

    /// Ends the parking of the record from `origin` (applied or
    /// dead-lettered), letting the next record of its key go.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn unpark(&self, origin: &Origin) -> sqlx::Result<()> {
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
    }
}
