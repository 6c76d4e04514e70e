//! Deciding what becomes of a record: applied when it can be (retried in
//! place), otherwise parked on the retry topic, retried another round,
//! deferred behind an older parked record of its key, or dead-lettered.
//! The decision is a [`Finish`]: the writes that carry it out, none done
//! yet.

use std::collections::VecDeque;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use kafka_service::failure::{self, DeadLetterHeaders, FailureClass, Origin, RetryHeaders};
use kafka_service::Record;
use service_common::metrics::TopicLabels;
use tokio_util::sync::CancellationToken;

use super::finishing::{CopyKind, Finish, Step};
use super::{Delivery, Interrupted};
use crate::circuit::Dependency;
use crate::configuration::DUE_TIME_MARGIN;
use crate::parking::{Position, Schedule};
use crate::processing::{Outcome, ProcessError};

/// The result of a delivery's in-place tries.
enum Tried {
    /// Applied, or found applied before.
    Succeeded(Outcome),
    /// Refused for good: the handler's permanent error, with its causes.
    Rejected { reason: String, tries: u32 },
    /// Every in-place try failed transiently; `error` is the last one.
    Exhausted { error: String, tries: u32 },
    /// It needs the producer, whose circuit is open: to be parked (or
    /// copied to the retry topic again) without counting a round, so that
    /// the records behind it that do not need the producer keep flowing.
    /// `tries` counts only the tries made while the circuit was closed.
    Postponed { error: String, tries: u32 },
}

/// Where a retry copy stands once it is due ([`Delivery::when_due`]).
enum WhenDue {
    /// Its record's place among its key's parked records.
    At(Position),
    /// Its due time is beyond the schedule's longest wait: the reason.
    TooFar(String),
}

impl Delivery {
    /// Decides what becomes of `record`: applies it when it can (retrying
    /// in place), and returns the writes that finish it (parking, a copy to
    /// the retry or dead-letter topic, unparking), none done yet.
    pub(super) async fn decide(&self, record: &Record, cancel: &CancellationToken) -> Result<Finish, Interrupted> {
        if let Some(reason) = self.requests.reason_for(record) {
            tracing::warn!(
                reason,
                "an operator asked for this record to be dead-lettered; not handling it"
            );
            let reason = format!("dead-lettered by an operator: {reason}");
            let origin = Origin::consumed_at(record);
            return Ok(self.dead_lettered(record, origin, FailureClass::Permanent, 0, reason, true));
        }
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
            Tried::Postponed { error, tries } => {
                let reason = format!("waiting for the producer, whose circuit is open: {error}");
                let schedule = Schedule {
                    round: 0,
                    attempts: tries,
                    due_at: Utc::now(),
                };
                self.parked(record, origin, schedule, Duration::ZERO, &reason)
            }
            Tried::Rejected { reason, tries } => {
                self.dead_lettered(record, origin, FailureClass::Permanent, tries, reason, false)
            }
            Tried::Exhausted { error, tries } if self.policy.topic_rounds == 0 => {
                self.dead_lettered(record, origin, FailureClass::Exhausted, tries, error, false)
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
                return Ok(self.dead_lettered(record, origin, FailureClass::Permanent, 0, reason, false));
            }
        };
        let origin = &headers.origin;
        match self.when_due(record, &headers, cancel).await? {
            WhenDue::TooFar(reason) => {
                let attempts = headers.attempts;
                Ok(self.dead_lettered(record, origin.clone(), FailureClass::Permanent, attempts, reason, true))
            }
            WhenDue::At(Position::Forged(reason)) => {
                // Under its own coordinates: the record it names stays
                // parked, on its own schedule.
                let own = Origin::consumed_at(record);
                Ok(self.dead_lettered(record, own, FailureClass::Permanent, 0, reason, false))
            }
            WhenDue::At(Position::DeadLettering(headers)) => Ok(self.dead_lettering_resumed(record, headers)),
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
    /// then. A copy whose record is no longer parked, or is being
    /// dead-lettered, is answered before any wait, so a stale or forged
    /// copy holds up nothing behind it; a due
    /// time beyond the retry schedule's longest wait is not waited for.
    async fn when_due(
        &self,
        record: &Record,
        headers: &RetryHeaders,
        cancel: &CancellationToken,
    ) -> Result<WhenDue, Interrupted> {
        let position = self.parking.position(&headers.origin, record).await?;
        if matches!(
            position,
            Position::Resolved | Position::Forged(_) | Position::DeadLettering(_)
        ) {
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
            Tried::Postponed { error, tries } => {
                // Not a round: due again once the circuit has surely let
                // calls through (its longest open time).
                let delay = self.handler.breakers().longest_open();
                let schedule = Schedule {
                    round: headers.round,
                    attempts: headers.attempts + tries,
                    due_at: Utc::now() + delay,
                };
                self.scheduled_again(record, headers, schedule, delay, error, "postponed")
            }
            Tried::Succeeded(outcome) => {
                self.log_outcome(record, outcome);
                if headers.round > 0 {
                    tracing::info!(%origin, round = headers.round, "record applied on retry");
                }
                Finish(VecDeque::from([Step::Unpark(origin.clone())]), None)
            }
            Tried::Rejected { reason, tries } => {
                let attempts = headers.attempts + tries;
                self.dead_lettered(record, origin.clone(), FailureClass::Permanent, attempts, reason, true)
            }
            Tried::Exhausted { error, tries } if headers.round >= self.policy.topic_rounds => {
                let attempts = headers.attempts + tries;
                self.dead_lettered(record, origin.clone(), FailureClass::Exhausted, attempts, error, true)
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
                self.scheduled_again(record, headers, schedule, delay, error, "parked")
            }
        }
    }

    /// A retry copy's record on the retry topic again on `schedule`, due
    /// after `delay`, for `error`; its outcome counted as `outcome`.
    fn scheduled_again(
        &self,
        record: &Record,
        headers: &RetryHeaders,
        schedule: Schedule,
        delay: Duration,
        error: String,
        outcome: &'static str,
    ) -> Finish {
        let origin = &headers.origin;
        let (round, attempts) = (schedule.round, schedule.attempts);
        let copy = schedule.headers(origin, &error).copy(record);
        Finish::counted(
            outcome,
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

    /// Tries to apply `record` up to `retry.attempts` times, pausing between
    /// tries with exponential backoff and jitter, for at most
    /// `retry.max_elapsed_ms` of pauses in all.
    ///
    /// A failure of a dependency whose circuit is not closed (the one that
    /// opened it included) is the outage's, and is not a try. A record that
    /// needs the database waits in place until the circuit lets calls
    /// through again, and is tried then (nothing can be parked without the
    /// database anyway); one that needs the producer is
    /// [`Tried::Postponed`], so that its partition moves on.
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
        let mut waited = false;
        loop {
            tries += 1;
            match self.handler.handle(record, origin).await {
                Ok(outcome) => return Ok(Tried::Succeeded(outcome)),
                Err(ProcessError::Permanent(error)) => {
                    let reason = format!("{error:#}");
                    return Ok(Tried::Rejected { reason, tries });
                }
                Err(ProcessError::Unavailable { dependency, error })
                    if !self.handler.breakers().of(dependency).is_closed() =>
                {
                    tries -= 1;
                    let error = format!("{error:#}");
                    if dependency == Dependency::Producer {
                        tracing::info!(
                            error,
                            "the producer's circuit is open; parking the record without counting a try"
                        );
                        return Ok(Tried::Postponed { error, tries });
                    }
                    if !waited {
                        tracing::info!(
                            dependency = dependency.name(),
                            error,
                            "circuit open; waiting for it to let calls through (not counted as a try)"
                        );
                        waited = true;
                    }
                    if !self.handler.breakers().of(dependency).wait(cancel).await {
                        return Err(Interrupted::Cancelled);
                    }
                }
                Err(ProcessError::Unavailable { error, .. } | ProcessError::Transient(error)) => {
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

    /// Dead-lettering `record`, from `origin`: copy it to the dead-letter
    /// topic. When it may be `parked`, the dead-lettering is recorded on its
    /// parked row first, and its parking ended after the copy: a member
    /// that takes the partition in between (a revoke, a crash) finishes the
    /// dead-lettering ([`Position::DeadLettering`]) instead of trying the
    /// record again. A record known not to be parked has no row to record
    /// it on or to unpark, so its copy is the only write, and there is no
    /// in between.
    fn dead_lettered(
        &self,
        record: &Record,
        origin: Origin,
        class: FailureClass,
        attempts: u32,
        reason: String,
        parked: bool,
    ) -> Finish {
        let headers = DeadLetterHeaders {
            origin: origin.clone(),
            class,
            attempts,
            error: reason.clone(),
            failed_at: Utc::now(),
        };
        let produce = Step::Produce {
            origin: origin.clone(),
            copy: headers.copy(record),
            kind: CopyKind::DeadLettered {
                class,
                attempts,
                reason,
            },
        };
        if !parked {
            return Finish::counted("dead_lettered", [produce]);
        }
        Finish::counted(
            "dead_lettered",
            [
                Step::DeadLettering {
                    origin: origin.clone(),
                    headers,
                },
                produce,
                Step::Unpark(origin),
            ],
        )
    }

    /// Finishing a dead-lettering that a member decided but did not finish
    /// (`headers`, recorded on the parked row): the copy, with the same
    /// headers, unless it is on the dead-letter topic already; then the
    /// unparking. The record is not tried again.
    fn dead_lettering_resumed(&self, record: &Record, headers: DeadLetterHeaders) -> Finish {
        tracing::warn!(
            origin = %headers.origin,
            "this record's dead-lettering was decided but not finished (a revoke or a crash in between); finishing it"
        );
        let origin = headers.origin.clone();
        let kind = CopyKind::DeadLettered {
            class: headers.class,
            attempts: headers.attempts,
            reason: headers.error.clone(),
        };
        Finish::counted(
            "dead_lettered",
            [
                Step::ProduceUnlessOut {
                    origin: origin.clone(),
                    copy: headers.copy(record),
                    kind,
                    since: headers.failed_at,
                },
                Step::Unpark(origin),
            ],
        )
    }
}
