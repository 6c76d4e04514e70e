//! Finishing a record: the writes its decision needs (parking, copies to
//! the retry or dead-letter topic, unparking), done in order. A write that
//! fails is tried again with the same contents, and the writes before it
//! are not done again.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kafka_service::failure::{self, DeadLetterHeaders, FailureClass, Origin};
use kafka_service::{OutgoingRecord, Record, Topic};

use super::{Delivery, Interrupted};
use crate::parking::Schedule;

impl Delivery {
    /// Does `finish`'s writes in order, each removed once done, then counts
    /// the record's outcome. When one fails, `finish` keeps it and the ones
    /// after it for the next try.
    pub(super) async fn finish(&self, record: &Record, finish: &mut Finish) -> Result<(), Interrupted> {
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
                Step::DeadLettering { origin, headers } => self.parking.dead_lettering(origin, headers).await?,
                Step::ProduceUnlessOut {
                    origin,
                    copy,
                    kind,
                    since,
                } => {
                    let topic = self.topics.name(Topic::DeadLetter);
                    let found = crate::dead_letters::find_copy(&self.reader, topic, origin, *since)
                        .await
                        .map_err(|error| Interrupted::Infrastructure(error.into()))?;
                    if let Some(position) = found {
                        tracing::info!(
                            %origin,
                            dead_letter_partition = position.partition,
                            dead_letter_offset = position.offset,
                            "its dead-letter copy is out already; not producing another"
                        );
                    } else {
                        let produce = Step::Produce {
                            origin: origin.clone(),
                            copy: copy.clone(),
                            kind: kind.clone(),
                        };
                        finish.0.pop_front();
                        finish.0.push_front(produce);
                        continue;
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
            let headers = DeadLetterHeaders {
                origin: origin.clone(),
                class,
                attempts: *attempts,
                error: reason.clone(),
                failed_at: Utc::now(),
            };
            let copy = headers.copy(record);
            let steps = vec![
                Step::DeadLettering {
                    origin: origin.clone(),
                    headers,
                },
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
pub(super) struct Finish(pub(super) VecDeque<Step>, pub(super) Option<&'static str>);

impl Finish {
    pub(super) fn counted(outcome: &'static str, steps: impl IntoIterator<Item = Step>) -> Self {
        Self(steps.into_iter().collect(), Some(outcome))
    }
}

#[derive(Debug)]
pub(super) enum Step {
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
    /// Record on `origin`'s parked row that it is being dead-lettered with
    /// `headers`, before its copy is produced.
    DeadLettering { origin: Origin, headers: DeadLetterHeaders },
    /// As [`Produce`](Self::Produce) of a dead-letter copy, unless a copy
    /// of `origin` reached the dead-letter topic at `since` or later: the
    /// dead-lettering a member decided and did not finish.
    ProduceUnlessOut {
        origin: Origin,
        copy: OutgoingRecord,
        kind: CopyKind,
        since: DateTime<Utc>,
    },
    /// End the parking of `origin`: applied or dead-lettered.
    Unpark(Origin),
}

/// What a copy of a record is: where it goes and what its log line says.
#[derive(Debug, Clone)]
pub(super) enum CopyKind {
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
