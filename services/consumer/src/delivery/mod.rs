//! What happens to each record: applied, retried in place, parked on the
//! retry topic, or dead-lettered. The guarantees and their reasons are in
//! `docs/delivery.md`; in short:
//!
//! - A **transient** failure (database or producer unavailable) is retried
//!   in place (`retry.attempts`, exponential backoff with jitter, bounded in
//!   time). Meanwhile the partition waits; other partitions flow.
//! - A record that exhausts its in-place tries is **parked**: recorded in
//!   `parked_records` and copied to the retry topic with its next-attempt
//!   time. Only after that copy's delivery report is its offset stored.
//! - While a key has a parked record from a topic, the key's later records
//!   from that topic are parked behind it (round 0), so **per-key order**
//!   holds on each topic; other keys, and the other topic, flow.
//! - A retry-topic record waits for its time, then is applied only if it is
//!   the oldest parked record of its key; otherwise it goes back to the end
//!   of the retry topic. A failed round is copied again with a longer delay,
//!   up to `retry.topic_rounds`; then the record is dead-lettered.
//! - A record that can never succeed (undecodable, unknown type, missing
//!   headers, invalid data) is **dead-lettered** at once. A dead-lettered
//!   record is never retried.
//!
//! If parking or dead-lettering itself fails (database or broker down), it
//! is retried without end (backoff up to 30 s) until it succeeds or the
//! partition is revoked: nothing is committed past a record that is not
//! applied, parked or dead-lettered. What a record needs is decided once
//! (a `Finish`); a retry picks up at the write that failed, so a record's
//! round, attempts and dead letter come out as if nothing had failed.
//!
//! # Layout
//!
//! - `deciding`: what a record needs (applied in place, parked, retried
//!   again, deferred, dead-lettered), decided once;
//! - `finishing`: the writes that carry the decision out, in order, each
//!   resumed where it failed.

use std::sync::Arc;

use kafka_service::reader::PartitionReader;
use kafka_service::{Disposition, EventProducer, PartitionLease, Record, RecordHandler, Topic, TopicRegistry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use service_common::metrics::{seconds_histogram, Registry, TopicLabels};
use service_common::telemetry::messaging;
use tracing::Instrument;

use crate::configuration::RetrySettings;
use crate::dead_letter_requests::DeadLetterRequests;
use crate::parking::Parking;
use crate::processing::{Handler, Outcome};

mod deciding;
mod finishing;

/// Handles each record of the consumed topics (the event topics and the
/// retry topic). Cheap to clone: one per partition worker.
#[derive(Clone)]
pub struct Delivery {
    /// Applies a record: one try.
    handler: Handler,
    /// Which records are parked, per topic and key: what makes a record
    /// wait behind an earlier one, and what a retry copy is checked against.
    parking: Parking,
    /// Sends the retry and dead-letter copies.
    producer: EventProducer,
    /// The topics' physical names: where a record came from, and where its
    /// copies go.
    topics: TopicRegistry,
    /// How often and how long to retry, in place and through the retry
    /// topic (`retry.*`).
    policy: RetrySettings,
    /// What became of each record, by topic.
    metrics: DeliveryMetrics,
    /// Records an operator asked to dead-letter instead of handling them.
    requests: DeadLetterRequests,
    /// Reads the dead-letter topic, to find whether the copy of a
    /// dead-lettering that was not finished is out already.
    reader: Arc<PartitionReader>,
    /// The consumer group, on every `process` span.
    group_id: String,
}

/// What became of each record, by topic:
///
/// - `kafka_records_consumed_total{topic,outcome}`: `applied`, `duplicate`
///   (applied before), `parked` (moved to the retry topic, first time or
///   another round), `deferred` (copied to the retry topic again, behind an
///   older parked record of its key), `postponed` (copied to the retry
///   topic again at the same round: the producer it needs is down, see
///   [`crate::circuit`]), `dead_lettered`, `skipped` (a second copy of a
///   resolved record);
/// - `kafka_record_retries_total{topic}`: in-place retries;
/// - `kafka_record_handling_duration_seconds{topic}`: from taking a record
///   to being done with it, retries and retry waits included;
/// - `event_freshness_seconds{topic}`: from each applied event's time
///   (`ce_time`) to the commit of its effect, by the topic it was applied
///   from (see [`freshness_histogram`]).
#[derive(Clone)]
pub struct DeliveryMetrics {
    records: Family<OutcomeLabels, Counter>,
    retries: Family<TopicLabels, Counter>,
    duration: Family<TopicLabels, Histogram, fn() -> Histogram>,
    freshness: Family<TopicLabels, Histogram, fn() -> Histogram>,
}

/// Buckets of `event_freshness_seconds`: 5 ms doubling to about 2.9 h, so
/// that both a healthy pipeline (tens of ms) and a record applied at the
/// end of the retry schedule (about 2.5 h) fall in a bucket.
///
/// The time measured from is `ce_time`, which the producer takes inside
/// the outbox transaction, just before its insert and commit: the figure
/// includes that commit (a few ms), so it overstates the time from commit
/// to apply by as much, never understates it.
pub fn freshness_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.005, 2.0, 22,
    ))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    topic: String,
    outcome: &'static str,
}

impl DeliveryMetrics {
    /// The metrics, registered in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            records: Family::default(),
            retries: Family::default(),
            duration: Family::new_with_constructor(seconds_histogram),
            freshness: Family::new_with_constructor(freshness_histogram),
        };
        registry.register(
            "kafka_records_consumed",
            "Records consumed, by topic and outcome",
            metrics.records.clone(),
        );
        registry.register(
            "kafka_record_retries",
            "In-place retries of records",
            metrics.retries.clone(),
        );
        registry.register(
            "kafka_record_handling_duration_seconds",
            "Time from taking a record to being done with it, retries included",
            metrics.duration.clone(),
        );
        registry.register(
            "event_freshness_seconds",
            "Time from an event's time (ce_time, in its outbox transaction) to its effect committed, by topic",
            metrics.freshness.clone(),
        );
        metrics
    }

    /// Observes an applied record's freshness, from its `ce_time` header
    /// (skipped when it has none that parses: such a record is not applied).
    fn applied(&self, record: &Record) {
        let time = record
            .header(kafka_service::envelope::headers::TIME)
            .and_then(|time| std::str::from_utf8(time).ok())
            .and_then(|time| chrono::DateTime::parse_from_rfc3339(time).ok());
        if let Some(time) = time {
            let age = (chrono::Utc::now() - time.to_utc()).as_seconds_f64().max(0.0);
            self.freshness
                .get_or_create(&TopicLabels {
                    topic: record.topic.clone(),
                })
                .observe(age);
        }
    }

    fn outcome(&self, record: &Record, outcome: &'static str) {
        self.records
            .get_or_create(&OutcomeLabels {
                topic: record.topic.clone(),
                outcome,
            })
            .inc();
    }
}

/// Why a record's step stopped short.
#[derive(Debug)]
enum Interrupted {
    /// The lease was revoked or the service is stopping.
    Cancelled,
    /// Parking, dead-lettering or unparking failed.
    Infrastructure(anyhow::Error),
}

impl From<sqlx::Error> for Interrupted {
    fn from(error: sqlx::Error) -> Self {
        Interrupted::Infrastructure(anyhow::Error::new(error).context("parking (database)"))
    }
}

impl From<kafka_service::ProduceError> for Interrupted {
    fn from(error: kafka_service::ProduceError) -> Self {
        Interrupted::Infrastructure(error.into())
    }
}

impl RecordHandler for Delivery {
    async fn handle(&self, record: &Record, lease: &PartitionLease) -> Disposition {
        let span = self.record_span(record);
        let started = std::time::Instant::now();
        let disposition = async {
            let cancel = lease.revoked();
            let mut delays = service_common::retry::backoff();
            // Decided once; each retry resumes at the write that failed.
            let mut finish = None;
            loop {
                let attempt = async {
                    if finish.is_none() {
                        finish = Some(self.decide(record, cancel).await?);
                    }
                    self.finish(record, finish.as_mut().expect("decided above")).await
                };
                match attempt.await {
                    Ok(()) => return Disposition::Done,
                    Err(Interrupted::Cancelled) => {
                        tracing::info!("partition revoked or stopping; record abandoned, it will be redelivered");
                        return Disposition::Abandoned;
                    }
                    Err(Interrupted::Infrastructure(error)) => {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "could not park or dead-letter the record; retrying"
                        );
                        if !service_common::retry::sleep_or_cancel(&mut delays, cancel).await {
                            return Disposition::Abandoned;
                        }
                    }
                }
            }
        }
        .instrument(span)
        .await;
        self.metrics
            .duration
            .get_or_create(&TopicLabels {
                topic: record.topic.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        disposition
    }

    /// Applies the leading run of event-topic `records` that can go in one
    /// transaction (see [`Handler::handle_batch`]), up to the first record
    /// whose key is parked. Retry-topic records, a lone record, and any
    /// failure leave the records to [`handle`](Self::handle), one at a
    /// time, with its retries.
    async fn handle_batch(&self, records: &[Record], lease: &PartitionLease) -> usize {
        let Some(first) = records.first() else { return 0 };
        if records.len() < 2 || self.is_retry(first) || lease.revoked().is_cancelled() {
            return 0;
        }
        let span = tracing::info_span!(
            "batch",
            topic = first.topic,
            partition = first.partition,
            first_offset = first.offset,
            records = records.len(),
            otel.name = format!("process {}", first.topic),
            otel.kind = "consumer",
        );
        messaging::set_batch_attributes(&span, records, &self.group_id);
        let started = std::time::Instant::now();
        let applied = async {
            let keys: Vec<&[u8]> = records.iter().filter_map(|record| record.key.as_deref()).collect();
            let parked = self.parking.parked_keys(&first.topic, &keys).await?;
            let run = records
                .iter()
                .take_while(|record| record.key.as_ref().is_none_or(|key| !parked.contains(key)))
                .take_while(|record| self.requests.reason_for(record).is_none())
                .count();
            let outcomes = self.handler.handle_batch(&records[..run]).await?;
            for (record, outcome) in records.iter().zip(&outcomes) {
                self.record_span(record).in_scope(|| self.log_outcome(record, *outcome));
            }
            if let Some(last) = records[..outcomes.len()].last() {
                tracing::info!(
                    count = outcomes.len(),
                    topic = first.topic,
                    partition = first.partition,
                    first_offset = first.offset,
                    last_offset = last.offset,
                    "batch applied"
                );
            }
            anyhow::Ok(outcomes.len())
        }
        .instrument(span.clone())
        .await;
        let done = applied.unwrap_or_else(|error| {
            span.in_scope(|| {
                tracing::info!(
                    error = format!("{error:#}"),
                    "batch not applied; handling its records one at a time"
                )
            });
            0
        });
        if done > 0 {
            let per_record = started.elapsed().as_secs_f64();
            let histogram = self.metrics.duration.get_or_create(&TopicLabels {
                topic: first.topic.clone(),
            });
            for _ in 0..done {
                histogram.observe(per_record);
            }
        }
        done
    }
}

/// Where a record's copies go, and how they are found again: the retry
/// and dead-letter topics of `topics`, written through `producer` and read
/// through `reader`.
pub struct Copies {
    /// Sends the retry and dead-letter copies.
    pub producer: EventProducer,
    /// Reads the dead-letter topic.
    pub reader: Arc<PartitionReader>,
    /// The topics' physical names.
    pub topics: TopicRegistry,
}

impl Delivery {
    /// Applies records with `handler`, parks them on the retry topic and
    /// dead-letters them to the dead-letter topic of `copies`, under
    /// `policy`; dead-letters the records in `requests` without handling
    /// them. `group_id` names the consumer group on its spans.
    pub fn new(
        handler: Handler,
        parking: Parking,
        copies: Copies,
        policy: RetrySettings,
        metrics: DeliveryMetrics,
        requests: DeadLetterRequests,
        group_id: &str,
    ) -> Self {
        Self {
            group_id: group_id.to_owned(),
            handler,
            parking,
            producer: copies.producer,
            topics: copies.topics,
            policy,
            metrics,
            requests,
            reader: copies.reader,
        }
    }

    /// Whether `record` was read from the retry topic.
    fn is_retry(&self, record: &Record) -> bool {
        self.topics.topic_named(&record.topic) == Some(Topic::Retry)
    }
}

impl Delivery {
    /// The span of one record's handling: its coordinates, its event id
    /// (from `ce_id`) and the trace of the request that caused the event
    /// (continued from its `traceparent` header); exported as `process
    /// <topic>` with the messaging attributes.
    fn record_span(&self, record: &Record) -> tracing::Span {
        let text = |name| record.header(name).and_then(|value| std::str::from_utf8(value).ok());
        let span = tracing::info_span!(
            "record",
            topic = record.topic,
            partition = record.partition,
            offset = record.offset,
            key = record.key_lossy(),
            event_id = text(kafka_service::envelope::headers::ID),
            trace_id = tracing::field::Empty,
            otel.name = format!("process {}", record.topic),
            otel.kind = "consumer",
        );
        service_common::telemetry::continue_trace(&span, text(service_common::telemetry::TRACEPARENT));
        messaging::set_process_attributes(&span, record, &self.group_id);
        span
    }
}

impl Delivery {
    fn log_outcome(&self, record: &Record, outcome: Outcome) {
        match outcome {
            Outcome::Applied => {
                tracing::debug!("event applied");
                self.metrics.outcome(record, "applied");
                self.metrics.applied(record);
            }
            Outcome::Duplicate => {
                tracing::info!("event already applied; skipped");
                self.metrics.outcome(record, "duplicate");
            }
        }
    }
}
