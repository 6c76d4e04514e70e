//! Parked records that would otherwise wait for good, and the operator's
//! actions on parked records.
//!
//! A parked record comes back when its copy on the retry topic is consumed.
//! If the copy is lost (retention, a recreated retry topic, a reset group),
//! the record would stay parked and its key's later records behind it
//! forever. [`Recovery::run`] looks every [`SWEEP_INTERVAL`] for records at
//! the head of their key whose latest copy was due more than
//! `retry.orphan_after_ms` ago and copies them to the retry topic again,
//! due at once, with their round and attempts ([`Parking::orphans`]). A
//! copy that was only slow, not lost, then arrives twice; the second finds
//! the record resolved or is applied at most once, like any redelivery.
//! Every instance sweeps, so two may copy the same record in the same
//! interval, with the same effect.
//!
//! Operators list the parked keys, release one (copy it again now) or
//! dead-letter it (`/parked`, [`crate::routes::parked`]).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::Utc;
use kafka_service::failure::{DeadLetterHeaders, FailureClass, Origin};
use kafka_service::{Delivery, EventProducer, Record, Topic, TopicRegistry};
use prometheus_client::metrics::gauge::Gauge;
use service_common::metrics::Registry;
use tokio_util::sync::CancellationToken;

use crate::configuration::RetrySettings;
use crate::parking::{Parked, Parking, Schedule};

/// How often parking is measured and lost copies looked for.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Most records one sweep copies again.
const SWEEP_LIMIT: i64 = 100;

/// Finds and recovers parked records whose copy was lost, measures parking
/// and carries out the operator's actions. Cheap to clone.
#[derive(Clone)]
pub struct Recovery {
    parking: Parking,
    producer: EventProducer,
    retry_topic: String,
    dead_letter_topic: String,
    /// How long past its due time a copy may stay away before it counts as
    /// lost (`retry.orphan_after_ms`).
    orphan_after: Duration,
    metrics: ParkingMetrics,
}

/// Parking's metrics, measured every [`SWEEP_INTERVAL`]:
///
/// - `kafka_parked_records`: records parked on the retry topic;
/// - `kafka_parked_oldest_age_seconds`: how long the oldest has been parked
///   (0 when none).
#[derive(Clone)]
struct ParkingMetrics {
    parked: Gauge,
    oldest_age: Gauge<f64, AtomicU64>,
}

/// Why an action on a parked record failed.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The database failed.
    #[error("parking (database)")]
    Database(#[from] sqlx::Error),
    /// The broker did not take the copy.
    #[error("the copy was not delivered")]
    Broker(#[from] kafka_service::ProduceError),
    /// The row was parked before records were kept with it, so there is no
    /// record to copy again: dead-letter it instead.
    #[error("the parked record was not kept (parked before records were); dead-letter it instead")]
    NotKept,
}

impl Recovery {
    /// Recovery of the records parked in `parking`, copying them with
    /// `producer` to the topics of `topics`; its metrics in `registry`.
    pub fn new(
        parking: Parking,
        producer: EventProducer,
        topics: &TopicRegistry,
        policy: &RetrySettings,
        registry: &mut Registry,
    ) -> Self {
        let metrics = ParkingMetrics {
            parked: Gauge::default(),
            oldest_age: Gauge::default(),
        };
        registry.register(
            "kafka_parked_records",
            "Records parked on the retry topic",
            metrics.parked.clone(),
        );
        registry.register(
            "kafka_parked_oldest_age_seconds",
            "How long the oldest parked record has been parked",
            metrics.oldest_age.clone(),
        );
        Self {
            parking,
            producer,
            retry_topic: topics.name(Topic::Retry).to_owned(),
            dead_letter_topic: topics.name(Topic::DeadLetter).to_owned(),
            orphan_after: policy.orphan_after(),
            metrics,
        }
    }

    /// Sweeps every [`SWEEP_INTERVAL`] until `shutdown`; a failed sweep is
    /// logged and the next one tries again.
    pub async fn run(self, shutdown: CancellationToken) {
        while shutdown
            .run_until_cancelled(async {
                if let Err(error) = self.sweep().await {
                    let error = anyhow::Error::from(error);
                    tracing::warn!(error = format!("{error:#}"), "could not sweep the parked records");
                }
                tokio::time::sleep(SWEEP_INTERVAL).await;
            })
            .await
            .is_some()
        {}
    }

    /// Measures parking, and copies again every head of its key whose copy
    /// was lost.
    async fn sweep(&self) -> Result<(), RecoveryError> {
        let (parked, oldest_age) = self.parking.stats().await?;
        self.metrics.parked.set(parked);
        self.metrics.oldest_age.set(oldest_age);
        for orphan in self.parking.orphans(self.orphan_after, SWEEP_LIMIT).await? {
            tracing::warn!(
                origin = %orphan.origin,
                round = orphan.round,
                due_at = %orphan.due_at,
                "a parked record's copy did not come back from the retry topic; copying it again"
            );
            self.copy_again(&orphan).await?;
        }
        Ok(())
    }

    /// The retry topic's name.
    pub fn retry_topic(&self) -> &str {
        &self.retry_topic
    }

    /// The dead-letter topic's name.
    pub fn dead_letter_topic(&self) -> &str {
        &self.dead_letter_topic
    }

    /// The oldest parked record of each topic and key, oldest first.
    ///
    /// # Errors
    ///
    /// [`RecoveryError::Database`].
    pub async fn heads(&self, limit: i64) -> Result<Vec<Parked>, RecoveryError> {
        Ok(self.parking.heads(limit).await?)
    }

    /// Copies the parked record from `origin` to the retry topic again, due
    /// now, with its round and attempts: an operator's "try it now". `None`
    /// when it is not parked.
    ///
    /// # Errors
    ///
    /// [`RecoveryError::NotKept`] for a row without its record, and the
    /// database's or the broker's error.
    pub async fn release(&self, origin: &Origin) -> Result<Option<(Parked, Delivery)>, RecoveryError> {
        let Some(parked) = self.parking.get(origin).await? else {
            return Ok(None);
        };
        let delivered = self.copy_again(&parked).await?;
        tracing::warn!(%origin, "parked record released by an operator");
        Ok(Some((parked, delivered)))
    }

    /// Dead-letters the parked record from `origin` (class `permanent`,
    /// the error naming the operator's `reason`) and unparks it, so its
    /// key's next record goes. A row without its record is dead-lettered
    /// with its key and failure headers only: its content stays at its
    /// origin offset. `None` when it is not parked.
    ///
    /// # Errors
    ///
    /// The database's or the broker's error; after a broker error nothing
    /// changed, after a database error the dead letter may exist and the
    /// record still be parked (doing it again is safe).
    pub async fn dead_letter(
        &self,
        origin: &Origin,
        reason: &str,
    ) -> Result<Option<(Parked, Delivery)>, RecoveryError> {
        let Some(parked) = self.parking.get(origin).await? else {
            return Ok(None);
        };
        let record = parked.record.clone().unwrap_or_else(|| Record {
            topic: origin.topic.clone(),
            partition: origin.partition,
            offset: origin.offset,
            key: parked.key.clone(),
            headers: Vec::new(),
            value: None,
            timestamp_ms: None,
            unreadable_header_names: 0,
        });
        let error = format!("dead-lettered by an operator: {reason}");
        let copy = DeadLetterHeaders {
            origin: origin.clone(),
            class: FailureClass::Permanent,
            attempts: parked.attempts,
            error,
            failed_at: Utc::now(),
        }
        .copy(&record);
        let delivered = self.producer.send_record(&self.dead_letter_topic, &copy).await?;
        self.parking.unpark(origin).await?;
        tracing::error!(%origin, reason, "parked record dead-lettered by an operator");
        Ok(Some((parked, delivered)))
    }

    /// Copies `parked` to the retry topic, due now, keeping its round and
    /// attempts, and records the new due time.
    async fn copy_again(&self, parked: &Parked) -> Result<Delivery, RecoveryError> {
        let record = parked.record.as_ref().ok_or(RecoveryError::NotKept)?;
        let schedule = Schedule {
            round: parked.round,
            attempts: parked.attempts,
            due_at: Utc::now(),
        };
        let copy = schedule.headers(&parked.origin, &parked.reason).copy(record);
        self.parking.reschedule(&parked.origin, schedule, None).await?;
        Ok(self.producer.send_record(&self.retry_topic, &copy).await?)
    }
}
