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
//! ([`Finish`]); a retry picks up at the write that failed, so a record's
//! round, attempts and dead letter come out as if nothing had failed.

use std::collections::VecDeque;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use kafka_service::failure::{self, DeadLetterHeaders, FailureClass, Origin, RetryHeaders};
use kafka_service::{
    Disposition, EventProducer, OutgoingRecord, PartitionLease, Record, RecordHandler, Topic, TopicRegistry,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use service_common::metrics::{seconds_histogram, Registry, TopicLabels};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::configuration::RetrySettings;
use crate::parking::{Parking, Position, Schedule};
use crate::processing::{Handler, Outcome, ProcessError};

/// How far past the retry schedule's longest wait a retry copy's
/// `retry-not-before` may lie before the copy counts as poison: clocks of
/// the instances that wrote and read it may differ by this much.
pub const DUE_TIME_MARGIN: Duration = Duration::from_secs(300);

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
}

/// What became of each record, by topic:
///
/// - `kafka_records_consumed_total{topic,outcome}`: `applied`, `duplicate`
///   (applied before), `parked` (moved to the retry topic, first time or
///   another round), `deferred` (copied to the retry topic again, behind an
///   older parked record of its key),
///   `dead_lettered`, `skipped` (a second copy of a resolved record);
/// - `kafka_record_retries_total{topic}`: in-place retries;
/// - `kafka_record_handling_duration_seconds{topic}`: from taking a record
///   to being done with it, retries and retry waits included.
#[derive(Clone)]
pub struct DeliveryMetrics {
    records: Family<OutcomeLabels, Counter>,
    retries: Family<TopicLabels, Counter>,
    duration: Family<TopicLabels, Histogram, fn() -> Histogram>,
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
        metrics
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

/// The result of a delivery's in-place tries.
enum Tried {
    /// Applied, or found applied before.
    Succeeded(Outcome),
    /// Refused for good: the handler's permanent error, with its causes.
    Rejected { reason: String, tries: u32 },
    /// Every in-place try failed transiently; `error` is the last one.
    Exhausted { error: String, tries: u32 },
}

/// Where a retry copy stands once it is due ([`Delivery::when_due`]).
enum WhenDue {
    /// Its record's place among its key's parked records.
    At(Position),
    /// Its due time is beyond the schedule's longest wait: the reason.
    TooFar(String),
}

impl RecordHandler for Delivery {
    async fn handle(&self, record: &Record, lease: &PartitionLease) -> Disposition {
        let span = record_span(record);
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
        );
        let started = std::time::Instant::now();
        let applied = async {
            let keys: Vec<&[u8]> = records.iter().filter_map(|record| record.key.as_deref()).collect();
            let parked = self.parking.parked_keys(&first.topic, &keys).await?;
            let run = records
                .iter()
                .take_while(|record| record.key.as_ref().is_none_or(|key| !parked.contains(key)))
                .count();
            let outcomes = self.handler.handle_batch(&records[..run]).await?;
            for (record, outcome) in records.iter().zip(&outcomes) {
                record_span(record).in_scope(|| self.log_outcome(record, *outcome));
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

impl Delivery {
    /// Applies records with `handler`, parks them on the retry topic of
    /// `topics` and dead-letters them to its dead-letter topic through
    /// `producer`, under `policy`.
    pub fn new(
        handler: Handler,
        parking: Parking,
        producer: EventProducer,
        topics: TopicRegistry,
        policy: RetrySettings,
        metrics: DeliveryMetrics,
    ) -> Self {
        Self {
            handler,
            parking,
            producer,
            topics,
            policy,
            metrics,
        }
    }

    /// Whether `record` was read from the retry topic.
    fn is_retry(&self, record: &Record) -> bool {
        self.topics.topic_named(&record.topic) == Some(Topic::Retry)
    }

    /// Decides what becomes of `record`: applies it when it can (retrying
    /// in place), and returns the writes that finish it (parking, a copy to
    /// the retry or dead-letter topic, unparking), none done yet.
    async fn decide(&self, record: &Record, cancel: &CancellationToken) -> Result<Finish, Interrupted> {
        if self.is_retry(record) {
            return self.decide_retry(record, cancel).await;
        }
        // Failure headers on an event-topic record are not trusted: whoever
        // produced the record put them there.
        let origin = Origin::consumed_at(record);
        if self.parking.is_parked(&record.topic, record.key.as_deref()).await? {
            tracing::info!("an earlier record with this key is parked; parking this one behind it");
            let reason = "parked behind an earlier record with the same key";
            let schedule = Schedule {
                round: 0,
                attempts: 0,
                due_at: Utc::now(),
            };
            return Ok(self.parked(record, origin, schedule, Duration::ZERO, reason));
        }
        Ok(match self.try_in_place(record, &origin, cancel).await? {
            Tried::Succeeded(outcome) => {
                self.log_outcome(record, outcome);
                Finish::default()
            }
            Tried::Rejected { reason, tries } => {
                self.dead_lettered(record, origin, FailureClass::Permanent, tries, reason)
            }
            Tried::Exhausted { error, tries } if self.policy.topic_rounds == 0 => {
                self.dead_lettered(record, origin, FailureClass::Exhausted, tries, error)
            }
            Tried::Exhausted { error, tries } => {
                let delay = self.policy.round_delay(1);
                let schedule = Schedule {
                    round: 1,
                    attempts: tries,
                    due_at: Utc::now() + delay,
                };
                self.parked(record, origin, schedule, delay, &error)
            }
        })
    }

    /// What becomes of a copy read from the retry topic: dead-lettered when
    /// its headers are not ours, when it is not a copy of the parked record
    /// it names (under its own coordinates, and that record stays parked),
    /// or when its due time is beyond the schedule; skipped when its record
    /// is no longer parked, deferred behind an older parked record of its
    /// key, otherwise tried once due.
    async fn decide_retry(&self, record: &Record, cancel: &CancellationToken) -> Result<Finish, Interrupted> {
        let headers = match RetryHeaders::of(record) {
            Ok(headers) => headers,
            Err(error) => {
                let reason = format!("not a retry record: {error}");
                let origin = Origin::consumed_at(record);
                return Ok(self.dead_lettered(record, origin, FailureClass::Permanent, 0, reason));
            }
        };
        let origin = &headers.origin;
        match self.when_due(record, &headers, cancel).await? {
            WhenDue::TooFar(reason) => {
                let attempts = headers.attempts;
                Ok(self.dead_lettered(record, origin.clone(), FailureClass::Permanent, attempts, reason))
            }
            WhenDue::At(Position::Forged(reason)) => {
                // Under its own coordinates: the record it names stays
                // parked, on its own schedule.
                let own = Origin::consumed_at(record);
                Ok(self.dead_lettered(record, own, FailureClass::Permanent, 0, reason))
            }
            WhenDue::At(Position::Resolved) => {
                tracing::info!(%origin, "second copy of a record already applied or dead-lettered; skipped");
                Ok(Finish::counted("skipped", []))
            }
            WhenDue::At(Position::Behind(head)) => Ok(self.deferred(record, &headers, head)),
            WhenDue::At(Position::Head) => {
                let tried = self.try_in_place(record, origin, cancel).await?;
                Ok(self.after_retry(record, &headers, tried))
            }
        }
    }

    /// Waits until the copy is due, and returns where its record stands
    /// then. A copy whose record is no longer parked is answered before any
    /// wait, so a stale or forged copy holds up nothing behind it; a due
    /// time beyond the retry schedule's longest wait is not waited for.
    async fn when_due(
        &self,
        record: &Record,
        headers: &RetryHeaders,
        cancel: &CancellationToken,
    ) -> Result<WhenDue, Interrupted> {
        let position = self.parking.position(&headers.origin, record).await?;
        if matches!(position, Position::Resolved | Position::Forged(_)) {
            return Ok(WhenDue::At(position));
        }
        let wait = (headers.not_before - Utc::now()).to_std().unwrap_or_default();
        let longest = Duration::from_millis(self.policy.topic_max_delay_ms) + DUE_TIME_MARGIN;
        if wait > longest {
            return Ok(WhenDue::TooFar(format!(
                "{} is {} s away, beyond the retry schedule's longest wait ({} s, retry.topic_max_delay_ms plus {} s)",
                failure::header::RETRY_NOT_BEFORE,
                wait.as_secs(),
                longest.as_secs(),
                DUE_TIME_MARGIN.as_secs()
            )));
        }
        if wait.is_zero() {
            return Ok(WhenDue::At(position));
        }
        tracing::debug!(
            wait_ms = wait.as_millis(),
            round = headers.round,
            "waiting for the retry's due time"
        );
        if cancel.run_until_cancelled(tokio::time::sleep(wait)).await.is_none() {
            return Err(Interrupted::Cancelled);
        }
        // Its key's parked records may have moved on meanwhile.
        Ok(WhenDue::At(self.parking.position(&headers.origin, record).await?))
    }

    /// Deferring a copy whose key's head is `head`, an older parked record:
    /// back to the end of the retry topic (same key, same partition), with
    /// its round and attempts. The delay keeps a key whose head is not on
    /// the retry topic yet (its source is being redelivered after a crash)
    /// from spinning.
    fn deferred(&self, record: &Record, headers: &RetryHeaders, head: String) -> Finish {
        let origin = &headers.origin;
        let schedule = Schedule {
            round: headers.round,
            attempts: headers.attempts,
            due_at: Utc::now() + self.policy.round_delay(1).min(Duration::from_secs(1)),
        };
        let copy = schedule.headers(origin, &format!("parked behind {head}")).copy(record);
        let attempts = schedule.attempts;
        Finish::counted(
            "deferred",
            [
                Step::Reschedule {
                    origin: origin.clone(),
                    schedule,
                    reason: None,
                },
                Step::Produce {
                    origin: origin.clone(),
                    copy,
                    kind: CopyKind::Deferred { head, attempts },
                },
            ],
        )
    }

    /// What a retry round's tries come to: unparking after a success,
    /// dead-lettering after a permanent failure or the last round, or the
    /// next round.
    fn after_retry(&self, record: &Record, headers: &RetryHeaders, tried: Tried) -> Finish {
        let origin = &headers.origin;
        match tried {
            Tried::Succeeded(outcome) => {
                self.log_outcome(record, outcome);
                if headers.round > 0 {
                    tracing::info!(%origin, round = headers.round, "record applied on retry");
                }
                Finish(VecDeque::from([Step::Unpark(origin.clone())]), None)
            }
            Tried::Rejected { reason, tries } => {
                let attempts = headers.attempts + tries;
                self.dead_lettered(record, origin.clone(), FailureClass::Permanent, attempts, reason)
            }
            Tried::Exhausted { error, tries } if headers.round >= self.policy.topic_rounds => {
                let attempts = headers.attempts + tries;
                self.dead_lettered(record, origin.clone(), FailureClass::Exhausted, attempts, error)
            }
            Tried::Exhausted { error, tries } => {
                let round = headers.round + 1;
                let delay = self.policy.round_delay(round);
                tracing::warn!(%origin, round, delay_ms = delay.as_millis(), error, "retry round failed; scheduled again");
                let schedule = Schedule {
                    round,
                    attempts: headers.attempts + tries,
                    due_at: Utc::now() + delay,
                };
                let copy = schedule.headers(origin, &error).copy(record);
                let attempts = schedule.attempts;
                Finish::counted(
                    "parked",
                    [
                        Step::Reschedule {
                            origin: origin.clone(),
                            schedule,
                            reason: Some(error),
                        },
                        Step::Produce {
                            origin: origin.clone(),
                            copy,
                            kind: CopyKind::Parked { round, delay, attempts },
                        },
                    ],
                )
            }
        }
    }

    /// Tries to apply `record` up to `retry.attempts` times, pausing between
    /// tries with exponential backoff and jitter, for at most
    /// `retry.max_elapsed_ms` of pauses in all.
    async fn try_in_place(
        &self,
        record: &Record,
        origin: &Origin,
        cancel: &CancellationToken,
    ) -> Result<Tried, Interrupted> {
        let policy = &self.policy;
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(policy.initial_delay_ms))
            .with_max_delay(Duration::from_millis(policy.max_delay_ms))
            .with_max_times(policy.attempts.saturating_sub(1) as usize)
            .with_total_delay(Some(Duration::from_millis(policy.max_elapsed_ms)))
            .with_jitter()
            .build();
        let mut tries = 0;
        loop {
            tries += 1;
            match self.handler.handle(record, origin).await {
                Ok(outcome) => return Ok(Tried::Succeeded(outcome)),
                Err(ProcessError::Permanent(error)) => {
                    let reason = format!("{error:#}");
                    return Ok(Tried::Rejected { reason, tries });
                }
                Err(ProcessError::Transient(error)) => {
                    let error = format!("{error:#}");
                    let Some(delay) = delays.next() else {
                        tracing::warn!(tries, error, "event not applied; in-place retries exhausted");
                        return Ok(Tried::Exhausted { error, tries });
                    };
                    tracing::warn!(
                        tries,
                        delay_ms = delay.as_millis(),
                        error,
                        "event not applied; retrying in place"
                    );
                    self.metrics
                        .retries
                        .get_or_create(&TopicLabels {
                            topic: record.topic.clone(),
                        })
                        .inc();
                    if cancel.run_until_cancelled(tokio::time::sleep(delay)).await.is_none() {
                        return Err(Interrupted::Cancelled);
                    }
                }
            }
        }
    }

    /// Parking `record`: record it in `parked_records`, then copy it to the
    /// retry topic on `schedule`, due after `delay`.
    fn parked(&self, record: &Record, origin: Origin, schedule: Schedule, delay: Duration, reason: &str) -> Finish {
        let (round, attempts) = (schedule.round, schedule.attempts);
        let copy = schedule.headers(&origin, reason).copy(record);
        Finish::counted(
            "parked",
            [
                Step::Park {
                    origin: origin.clone(),
                    schedule,
                    reason: reason.to_owned(),
                },
                Step::Produce {
                    origin,
                    copy,
                    kind: CopyKind::Parked { round, delay, attempts },
                },
            ],
        )
    }

    /// Dead-lettering `record`: copy it to the dead-letter topic, then end
    /// its parking (if it was parked).
    fn dead_lettered(
        &self,
        record: &Record,
        origin: Origin,
        class: FailureClass,
        attempts: u32,
        reason: String,
    ) -> Finish {
        let copy = DeadLetterHeaders {
            origin: origin.clone(),
            class,
            attempts,
            error: reason.clone(),
            failed_at: Utc::now(),
        }
        .copy(record);
        Finish::counted(
            "dead_lettered",
            [
                Step::Produce {
                    origin: origin.clone(),
                    copy,
                    kind: CopyKind::DeadLettered {
                        class,
                        attempts,
                        reason,
                    },
                },
                Step::Unpark(origin),
            ],
        )
    }

    /// Does `finish`'s writes in order, each removed once done, then counts
    /// the record's outcome. When one fails, `finish` keeps it and the ones
    /// after it for the next try.
    async fn finish(&self, record: &Record, finish: &mut Finish) -> Result<(), Interrupted> {
        while let Some(step) = finish.0.front() {
            match step {
                Step::Park {
                    origin,
                    schedule,
                    reason,
                } => self.parking.park(origin, record, *schedule, reason).await?,
                Step::Reschedule {
                    origin,
                    schedule,
                    reason,
                } => self.parking.reschedule(origin, *schedule, reason.as_deref()).await?,
                Step::Produce { origin, copy, kind } => {
                    let topic = match kind {
                        CopyKind::DeadLettered { .. } => self.topics.name(Topic::DeadLetter),
                        CopyKind::Parked { .. } | CopyKind::Deferred { .. } => self.topics.name(Topic::Retry),
                    };
                    match self.producer.send_record(topic, copy).await {
                        Ok(delivered) => kind.log(origin, delivered),
                        Err(error) if error.is_too_large() => {
                            let error = format!("{:#}", anyhow::Error::new(error));
                            let (steps, outcome) = too_large(record, origin, copy, kind, &error)?;
                            finish.0.pop_front();
                            for step in steps.into_iter().rev() {
                                finish.0.push_front(step);
                            }
                            if outcome.is_some() {
                                finish.1 = outcome;
                            }
                            continue;
                        }
                        Err(error) => return Err(error.into()),
                    }
                }
                Step::Unpark(origin) => self.parking.unpark(origin).await?,
            }
            finish.0.pop_front();
        }
        if let Some(outcome) = finish.1.take() {
            self.metrics.outcome(record, outcome);
        }
        Ok(())
    }
}

/// What replaces a copy of `record` from `origin` that is larger than the
/// producer or its topic accepts (`error`), so that the partition moves on
/// instead of trying it forever: the steps that take its place, and the
/// record's outcome when it changes.
///
/// - A dead-letter copy is written again [`failure::without_content`]:
///   the failure headers, and what was left out, with sizes.
/// - A retry copy cannot be parked, so the record is dead-lettered instead
///   (permanent, with both reasons), and its parking ends.
///
/// # Errors
///
/// [`Interrupted::Infrastructure`] when a dead-letter copy without content
/// is still too large: only an `error-message` or a topic limit of a few
/// kilobytes could make it so.
fn too_large(
    record: &Record,
    origin: &Origin,
    copy: &OutgoingRecord,
    kind: &CopyKind,
    error: &str,
) -> Result<(Vec<Step>, Option<&'static str>), Interrupted> {
    match kind {
        CopyKind::DeadLettered { .. } => {
            if copy
                .headers
                .iter()
                .any(|(name, _)| name == failure::header::DROPPED_CONTENT)
            {
                return Err(Interrupted::Infrastructure(anyhow::anyhow!(
                    "{error}, even without the record's key, value and headers"
                )));
            }
            tracing::error!(%origin, error, "dead-letter copy larger than the topic accepts; writing it without the record's content");
            let copy = failure::without_content(copy);
            let step = Step::Produce {
                origin: origin.clone(),
                copy,
                kind: kind.clone(),
            };
            Ok((vec![step], None))
        }
        CopyKind::Parked { attempts, .. } | CopyKind::Deferred { attempts, .. } => {
            let parked_because = copy
                .headers
                .iter()
                .find(|(name, _)| name == failure::header::ERROR_MESSAGE)
                .and_then(|(_, value)| value.as_deref())
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let reason = format!(
                "its retry copy is larger than the retry topic accepts ({error}); parked because: {parked_because}"
            );
            tracing::error!(%origin, reason, "retry copy too large; dead-lettering the record instead");
            let class = FailureClass::Permanent;
            let copy = DeadLetterHeaders {
                origin: origin.clone(),
                class,
                attempts: *attempts,
                error: reason.clone(),
                failed_at: Utc::now(),
            }
            .copy(record);
            let steps = vec![
                Step::Produce {
                    origin: origin.clone(),
                    copy,
                    kind: CopyKind::DeadLettered {
                        class,
                        attempts: *attempts,
                        reason,
                    },
                },
                Step::Unpark(origin.clone()),
            ];
            Ok((steps, Some("dead_lettered")))
        }
    }
}

/// The writes that finish a record, in order, and its outcome (the
/// `kafka_records_consumed_total` label), counted once they are all done.
/// Decided once per record: a write that fails is tried again with the same
/// contents (the same copy, with the same due time, round and attempts),
/// and the writes before it are not done again.
#[derive(Debug, Default)]
struct Finish(VecDeque<Step>, Option<&'static str>);

impl Finish {
    fn counted(outcome: &'static str, steps: impl IntoIterator<Item = Step>) -> Self {
        Self(steps.into_iter().collect(), Some(outcome))
    }
}

#[derive(Debug)]
enum Step {
    /// Record `origin` in `parked_records`, behind its key's earlier ones,
    /// with what it takes to copy it again.
    Park {
        origin: Origin,
        schedule: Schedule,
        reason: String,
    },
    /// Record in `parked_records` that `origin` has a new copy on the retry
    /// topic (and, when given, a new reason).
    Reschedule {
        origin: Origin,
        schedule: Schedule,
        reason: Option<String>,
    },
    /// Produce `copy` of the record from `origin` to the topic `kind` says.
    Produce {
        origin: Origin,
        copy: OutgoingRecord,
        kind: CopyKind,
    },
    /// End the parking of `origin`: applied or dead-lettered.
    Unpark(Origin),
}

/// What a copy of a record is: where it goes and what its log line says.
#[derive(Debug, Clone)]
enum CopyKind {
    /// To the retry topic for `round` (0: behind an earlier record of its
    /// key), due after `delay`, after `attempts` processing attempts.
    Parked { round: u32, delay: Duration, attempts: u32 },
    /// Back to the end of the retry topic, behind `head`, the oldest parked
    /// record of its key, after `attempts` processing attempts.
    Deferred { head: String, attempts: u32 },
    /// To the dead-letter topic.
    DeadLettered {
        class: FailureClass,
        attempts: u32,
        reason: String,
    },
}

impl CopyKind {
    /// Logs the copy of the record from `origin`, now `delivered`.
    fn log(&self, origin: &Origin, delivered: kafka_service::Delivery) {
        match self {
            CopyKind::Parked { round, delay, .. } => tracing::warn!(
                %origin,
                round,
                delay_ms = delay.as_millis(),
                retry_partition = delivered.partition,
                retry_offset = delivered.offset,
                "record parked on the retry topic"
            ),
            CopyKind::Deferred { head, .. } => {
                tracing::debug!(%origin, head, "an earlier record with this key is still parked; deferred behind it")
            }
            CopyKind::DeadLettered {
                class,
                attempts,
                reason,
            } => tracing::error!(
                %origin,
                class = class.as_str(),
                attempts,
                reason,
                dead_letter_partition = delivered.partition,
                dead_letter_offset = delivered.offset,
                "record dead-lettered"
            ),
        }
    }
}

/// The span of one record's handling: its coordinates, its event id (from
/// `ce_id`) and the trace of the request that caused the event (continued
/// from its `traceparent` header).
fn record_span(record: &Record) -> tracing::Span {
    let text = |name| record.header(name).and_then(|value| std::str::from_utf8(value).ok());
    let span = tracing::info_span!(
        "record",
        topic = record.topic,
        partition = record.partition,
        offset = record.offset,
        key = record.key_lossy(),
        event_id = text(kafka_service::envelope::headers::ID),
        trace_id = tracing::field::Empty,
    );
    service_common::telemetry::continue_trace(&span, text(service_common::telemetry::TRACEPARENT));
    span
}

impl Delivery {
    fn log_outcome(&self, record: &Record, outcome: Outcome) {
        match outcome {
            Outcome::Applied => {
                tracing::debug!("event applied");
                self.metrics.outcome(record, "applied");
            }
            Outcome::Duplicate => {
                tracing::info!("event already applied; skipped");
                self.metrics.outcome(record, "duplicate");
            }
        }
    }
}
