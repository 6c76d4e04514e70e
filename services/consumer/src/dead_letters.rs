//! The dead-letter topic, for operators: reading dead letters, and
//! redriving chosen ones to their origin topic with their original key,
//! value and headers (failure headers removed). The routes in
//! [`crate::routes::dead_letters`] only call this and shape the answers.
//!
//! Redriving is safe: effects are idempotent (each event id is applied at
//! most once), so a record redriven twice, or one that had in fact been
//! applied, changes nothing the second time.

use std::time::Duration;

use kafka_service::failure::{self, Origin};
use kafka_service::reader::PartitionReader;
use kafka_service::{AdminError, Delivery, EventProducer, KafkaSettings, Record, Topic};

/// A record of the dead-letter topic, by partition and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Partition of the dead-letter topic.
    pub partition: i32,
    /// Offset in that partition.
    pub offset: i64,
}

/// Why dead letters could not be read or chosen.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The dead-letter topic has no such partition.
    #[error("the dead-letter topic has partitions 0 to {}; there is no partition {partition}", .count - 1)]
    NoPartition {
        /// The partition asked for.
        partition: i32,
        /// The dead-letter topic's partitions.
        count: i32,
    },
    /// A chosen offset is negative.
    #[error("offset {0} is negative")]
    NegativeOffset(i64),
    /// Nothing is at a chosen position (never written, or past retention).
    #[error("no dead letter at partition {} offset {}", .0.partition, .0.offset)]
    NotFound(Position),
    /// A chosen record's origin headers are missing, malformed, or name a
    /// topic other than an event topic: redriving it would feed the retry
    /// or dead-letter topic, or a topic nobody consumes.
    #[error("the dead letter at partition {} offset {} has no event topic as its origin", .0.partition, .0.offset)]
    NotAnEventOrigin(Position),
    /// A chosen dead letter does not hold its record: the whole copy was
    /// too large, and its `dropped-content` says what was left out
    /// ([`failure::without_content`]). Redriving it would publish an empty
    /// record; the original is at its origin while that topic keeps it.
    #[error(
        "the dead letter at partition {} offset {} does not hold its record ({dropped}); the original is at {origin}",
        .position.partition, .position.offset
    )]
    ContentDropped {
        /// Where it is on the dead-letter topic.
        position: Position,
        /// Where the original is.
        origin: Origin,
        /// What was left out (its `dropped-content`).
        dropped: String,
    },
    /// The broker did not answer.
    #[error(transparent)]
    Broker(#[from] AdminError),
}

/// A chosen dead letter, checked: it exists and its origin is an event
/// topic.
#[derive(Debug)]
pub struct Chosen {
    /// Where it is on the dead-letter topic.
    pub position: Position,
    /// Where it was first consumed from, and where it is redriven to.
    pub origin: Origin,
    /// The dead letter itself.
    pub record: Record,
}

/// One redriven dead letter.
#[derive(Debug)]
pub struct Redriven {
    /// Where it is on the dead-letter topic.
    pub position: Position,
    /// The origin topic it was produced to.
    pub topic: String,
    /// Where the broker put it there.
    pub delivery: Delivery,
}

/// What a redrive did: the records the broker confirmed, in order, and, if
/// it stopped early, at which record and why.
#[derive(Debug)]
pub struct Redrive {
    /// Confirmed, in the order given.
    pub redriven: Vec<Redriven>,
    /// The index of the first record not confirmed (it may still be
    /// delivered; the ones after it were not sent), and why.
    pub stopped: Option<(usize, String)>,
}

/// Up to `limit` dead letters in offset order, partition by partition: of
/// `partition` only, or of every partition when `None`, from `from_offset`
/// in each.
///
/// # Errors
///
/// [`DeadLetterError::NoPartition`] for a partition the topic lacks;
/// [`DeadLetterError::Broker`] when the broker does not answer.
pub async fn list(
    kafka: &KafkaSettings,
    partition: Option<i32>,
    from_offset: i64,
    limit: usize,
) -> Result<Vec<Record>, DeadLetterError> {
    let topic = kafka.topics.name(Topic::DeadLetter);
    let reader = PartitionReader::new(kafka)?;
    let count = reader.partition_count(topic).await?;
    let partitions = match partition {
        Some(partition) => vec![existing_partition(partition, count)?],
        None => (0..count).collect(),
    };
    let mut records = Vec::new();
    for partition in partitions {
        let left = limit - records.len();
        if left == 0 {
            break;
        }
        records.extend(reader.read(topic, partition, from_offset, left).await?);
    }
    Ok(records)
}

/// Reads each chosen dead letter and checks that it can be redriven, all
/// before any is: a request with one bad choice redrives nothing.
///
/// # Errors
///
/// [`DeadLetterError`]: the first choice that is not a dead letter of an
/// event topic or does not hold its record, or the broker not answering.
pub async fn choose(kafka: &KafkaSettings, positions: &[Position]) -> Result<Vec<Chosen>, DeadLetterError> {
    let topic = kafka.topics.name(Topic::DeadLetter);
    let event_topics: Vec<&str> = Topic::EVENTS.iter().map(|&topic| kafka.topics.name(topic)).collect();
    let reader = PartitionReader::new(kafka)?;
    let count = reader.partition_count(topic).await?;
    let mut chosen = Vec::with_capacity(positions.len());
    for &position in positions {
        existing_partition(position.partition, count)?;
        if position.offset < 0 {
            return Err(DeadLetterError::NegativeOffset(position.offset));
        }
        let record = reader
            .read(topic, position.partition, position.offset, 1)
            .await?
            .into_iter()
            .find(|record| record.offset == position.offset)
            .ok_or(DeadLetterError::NotFound(position))?;
        let origin = Origin::of(&record)
            .ok()
            .filter(|origin| event_topics.contains(&origin.topic.as_str()))
            .ok_or(DeadLetterError::NotAnEventOrigin(position))?;
        if let Some(dropped) = record.header(failure::header::DROPPED_CONTENT) {
            return Err(DeadLetterError::ContentDropped {
                position,
                origin,
                dropped: String::from_utf8_lossy(dropped).into_owned(),
            });
        }
        chosen.push(Chosen {
            position,
            origin,
            record,
        });
    }
    Ok(chosen)
}

/// Produces each chosen dead letter to its origin topic, one at a time and
/// in order, each waited for at most `kafka.request_timeout_ms`; stops at
/// the first one the broker does not confirm. Never fails: what was and
/// was not confirmed is in the [`Redrive`].
pub async fn redrive(kafka: &KafkaSettings, producer: &EventProducer, chosen: Vec<Chosen>) -> Redrive {
    let wait = Duration::from_millis(kafka.request_timeout_ms);
    let mut redriven = Vec::with_capacity(chosen.len());
    for (
        index,
        Chosen {
            position,
            origin,
            record,
        },
    ) in chosen.into_iter().enumerate()
    {
        let sent = tokio::time::timeout(wait, producer.send_record(&origin.topic, &failure::original(&record))).await;
        let delivery = match sent {
            Ok(Ok(delivery)) => delivery,
            Ok(Err(error)) => return stopped(redriven, index, position, format!("{:#}", anyhow::Error::from(error))),
            Err(_) => {
                return stopped(
                    redriven,
                    index,
                    position,
                    format!("not confirmed within {} ms", wait.as_millis()),
                )
            }
        };
        tracing::info!(
            dead_letter_partition = position.partition,
            dead_letter_offset = position.offset,
            %origin,
            partition = delivery.partition,
            offset = delivery.offset,
            "dead letter redriven"
        );
        redriven.push(Redriven {
            position,
            topic: origin.topic,
            delivery,
        });
    }
    Redrive {
        redriven,
        stopped: None,
    }
}

fn stopped(redriven: Vec<Redriven>, index: usize, position: Position, why: String) -> Redrive {
    tracing::warn!(
        dead_letter_partition = position.partition,
        dead_letter_offset = position.offset,
        error = why,
        redriven = redriven.len(),
        "redrive stopped: the broker did not confirm a record"
    );
    Redrive {
        redriven,
        stopped: Some((index, why)),
    }
}

/// `partition` when the dead-letter topic, of `count` partitions, has it.
fn existing_partition(partition: i32, count: i32) -> Result<i32, DeadLetterError> {
    if (0..count).contains(&partition) {
        Ok(partition)
    } else {
        Err(DeadLetterError::NoPartition { partition, count })
    }
}

/// How far before a dead-lettering's time its copy's timestamp may lie
/// ([`find_copy`]): the copy is timestamped when it is produced, after the
/// decision, by the same instance's clock; this leaves room for a clock
/// step.
const COPY_TIME_MARGIN: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

/// Where on `topic` (the dead-letter topic) a copy of the record from
/// `origin` is, among the records timestamped from `since` (less
/// a minute) on; `None` when there is none. Every partition is
/// searched, from the offset of that time (`ListOffsets`) to its end.
///
/// # Errors
///
/// [`AdminError::Broker`] when the broker does not answer.
pub async fn find_copy(
    reader: &PartitionReader,
    topic: &str,
    origin: &Origin,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<Option<Position>, AdminError> {
    let from = (since - COPY_TIME_MARGIN).timestamp_millis();
    for partition in 0..reader.partition_count(topic).await? {
        let offset = reader.offset_at(topic, partition, from).await?;
        let records = reader.read(topic, partition, offset, usize::MAX).await?;
        if let Some(copy) = records
            .iter()
            .find(|record| Origin::of(record).is_ok_and(|of| of == *origin))
        {
            return Ok(Some(Position {
                partition,
                offset: copy.offset,
            }));
        }
    }
    Ok(None)
}
