//! What a consumer-group member reports about itself: Prometheus metrics,
//! and the progress readiness needs to tell a stuck member from a busy one.
//!
//! Metrics (registered by [`GroupMonitor::new`]):
//!
//! | name | labels | meaning |
//! |---|---|---|
//! | `kafka_consumer_lag_records` | `topic`, `partition` | records between the last one processed (or committed) and the high watermark, per assigned partition (librdkafka statistics, every [`STATISTICS_INTERVAL_MS`]; for a paused partition, from the high watermark asked of the broker as often, since librdkafka's stops moving while it is not fetched) |
//! | `kafka_consumer_assigned_partitions` | `topic` | partitions of the topic this member holds |
//! | `kafka_consumer_rebalances_total` | `kind` (`assign`, `revoke`) | partitions assigned or revoked, by rebalance |
//! | `kafka_consumer_commits_total` | `result` (`ok`, `failed`) | offset commits |
//! | `kafka_consumer_offsets_stored_total` | | records whose offset was stored (processed) |

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// How often librdkafka reports statistics (and so lag), in milliseconds.
pub const STATISTICS_INTERVAL_MS: u64 = 5_000;

/// Labels naming one partition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
}

/// Labels of a metric kept per topic.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    /// The physical topic name.
    pub topic: String,
}

/// Histogram buckets for durations, in seconds: 0.5 ms doubling to about
/// 16 s.
pub fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Metrics and progress of one group member. Cheap to clone.
#[derive(Clone)]
pub struct GroupMonitor {
    inner: Arc<Inner>,
}

struct Inner {
    started: Instant,
    /// Milliseconds after `started` of the last stored offset; `-1` for none.
    last_progress_ms: AtomicI64,
    /// Per held partition, milliseconds after `started` of its last stored
    /// offset, or of its assignment when none was stored since.
    progress_by_partition: Mutex<HashMap<(String, i32), i64>>,
    lag_by_partition: Mutex<HashMap<(String, i32), i64>>,
    /// Partitions an operator holds: paused on purpose, never stalled.
    held: Mutex<HashSet<(String, i32)>>,
    lag: Family<PartitionLabels, Gauge>,
    /// Partitions held, per topic; a topic stays (at 0) once it was held,
    /// so a member that lost every partition of a topic says so.
    assigned: Family<TopicLabels, Gauge>,
    /// Partitions held, all topics together.
    assigned_total: AtomicI64,
    /// Every topic this member has held a partition of.
    topics_held: Mutex<BTreeSet<String>>,
    /// Why the member can no longer do its work (a partition worker
    /// panicked), once it happened: it stays until the process ends.
    failure: Mutex<Option<String>>,
    rebalances: Family<KindLabels, Counter>,
    commits: Family<ResultLabels, Counter>,
    stored: Counter,
}

impl GroupMonitor {
    /// A monitor whose metrics are registered in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let inner = Inner {
            started: Instant::now(),
            last_progress_ms: AtomicI64::new(-1),
            progress_by_partition: Mutex::default(),
            lag_by_partition: Mutex::default(),
            held: Mutex::default(),
            lag: Family::default(),
            assigned: Family::default(),
            assigned_total: AtomicI64::new(0),
            topics_held: Mutex::default(),
            failure: Mutex::default(),
            rebalances: Family::default(),
            commits: Family::default(),
            stored: Counter::default(),
        };
        registry.register(
            "kafka_consumer_lag_records",
            "Records between the member's position and the high watermark, per assigned partition",
            inner.lag.clone(),
        );
        registry.register(
            "kafka_consumer_assigned_partitions",
            "Partitions of the topic assigned to this member",
            inner.assigned.clone(),
        );
        registry.register(
            "kafka_consumer_rebalances",
            "Partitions assigned to or revoked from this member",
            inner.rebalances.clone(),
        );
        registry.register(
            "kafka_consumer_commits",
            "Offset commits, by result",
            inner.commits.clone(),
        );
        registry.register(
            "kafka_consumer_offsets_stored",
            "Records processed and their offsets stored for commit",
            inner.stored.clone(),
        );
        Self { inner: Arc::new(inner) }
    }

    /// How long ago the member was created.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// How long ago a record was last processed (its offset stored), or the
    /// uptime when none has been.
    pub fn since_progress(&self) -> Duration {
        match u64::try_from(self.inner.last_progress_ms.load(Ordering::Relaxed)) {
            Ok(ms) => self.uptime().saturating_sub(Duration::from_millis(ms)),
            Err(_) => self.uptime(),
        }
    }

    /// Partitions this member holds, of all topics.
    pub fn assigned_partitions(&self) -> i64 {
        self.inner.assigned_total.load(Ordering::Relaxed)
    }

    /// The summed lag of the assigned partitions of `topics`, as of the last
    /// statistics report.
    pub fn lag(&self, topics: &[&str]) -> i64 {
        self.lag_map()
            .iter()
            .filter(|((topic, _), _)| topics.contains(&topic.as_str()))
            .map(|(_, lag)| *lag)
            .sum()
    }

    /// Why this member looks stuck, if it does: a partition worker that
    /// panicked (for good), no partition assigned `stall_after` after
    /// start, or a held partition of `topics` with records waiting and none
    /// processed for `stall_after` (since it was assigned, if none was).
    /// Partitions are judged one by one, so one stuck partition shows even
    /// while the member's others make progress; the message names each,
    /// as `stalled: issued-token[3] 12 records behind, none processed for
    /// 95 s`. (A member of a group with more members than partitions is
    /// legitimately idle: size the group to the partitions.) A partition
    /// an operator holds ([`HoldHandle`](crate::HoldHandle)) is paused on
    /// purpose and never counts.
    pub fn stalled(&self, topics: &[&str], stall_after: Duration) -> Option<String> {
        if let Some(failure) = self.failure() {
            return Some(failure);
        }
        let uptime = self.uptime();
        if uptime > stall_after && self.assigned_partitions() == 0 {
            return Some(format!("no partitions assigned {} s after start", uptime.as_secs()));
        }
        let mut stuck: Vec<(String, i32, i64, Duration)> = {
            let held = self.inner.held.lock().unwrap_or_else(PoisonError::into_inner).clone();
            let lag = self.lag_map();
            let progress = self.progress_map();
            lag.iter()
                .filter(|((topic, _), lag)| **lag > 0 && topics.contains(&topic.as_str()))
                .filter(|(key, _)| !held.contains(*key))
                .filter_map(|((topic, partition), lag)| {
                    let since = progress.get(&(topic.clone(), *partition)).map_or(uptime, |ms| {
                        uptime.saturating_sub(Duration::from_millis(ms.unsigned_abs()))
                    });
                    (since > stall_after).then(|| (topic.clone(), *partition, *lag, since))
                })
                .collect()
        };
        if stuck.is_empty() {
            return None;
        }
        stuck.sort();
        let each: Vec<String> = stuck
            .iter()
            .map(|(topic, partition, lag, since)| {
                format!(
                    "{topic}[{partition}] {lag} records behind, none processed for {} s",
                    since.as_secs()
                )
            })
            .collect();
        Some(format!("stalled: {}", each.join("; ")))
    }

    /// Why the member can no longer do its work (a partition worker
    /// panicked, its partition paused for good), once it cannot: a fault
    /// inside the process, which a restart fixes.
    pub fn failure(&self) -> Option<String> {
        self.inner
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records that the member can no longer do its work, and why; every
    /// later [`stalled`](Self::stalled) says so.
    pub(crate) fn failed(&self, reason: String) {
        *self.inner.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
    }

    /// A record of `topic` `partition` was processed and its offset stored.
    /// The partitions an operator holds now (paused on purpose: not a
    /// stall).
    pub(crate) fn set_held(&self, held: impl IntoIterator<Item = (String, i32)>) {
        *self.inner.held.lock().unwrap_or_else(PoisonError::into_inner) = held.into_iter().collect();
    }

    pub(crate) fn progressed(&self, topic: &str, partition: i32) {
        let ms = self.now_ms();
        self.inner.last_progress_ms.store(ms, Ordering::Relaxed);
        if let Some(last) = self.progress_map().get_mut(&(topic.to_owned(), partition)) {
            *last = ms;
        }
        self.inner.stored.inc();
    }

    /// Milliseconds since `started`.
    fn now_ms(&self) -> i64 {
        i64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// `count` partitions were assigned; `held` is what the member holds now.
    pub(crate) fn assigned<'a>(&self, count: usize, held: impl IntoIterator<Item = &'a (String, i32)>) {
        self.inner
            .rebalances
            .get_or_create(&KindLabels { kind: "assign" })
            .inc_by(count as u64);
        self.hold(held);
    }

    /// `partitions` were revoked; `held` is what the member holds now.
    pub(crate) fn revoked<'a>(&self, partitions: &[(String, i32)], held: impl IntoIterator<Item = &'a (String, i32)>) {
        self.inner
            .rebalances
            .get_or_create(&KindLabels { kind: "revoke" })
            .inc_by(partitions.len() as u64);
        self.hold(held);
        let mut lag = self.lag_map();
        for (topic, partition) in partitions {
            lag.remove(&(topic.clone(), *partition));
            self.inner.lag.remove(&PartitionLabels {
                topic: topic.clone(),
                partition: *partition,
            });
        }
    }

    pub(crate) fn committed(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.inner.commits.get_or_create(&ResultLabels { result }).inc();
    }

    /// Records the lag librdkafka reported for the partitions this member
    /// holds (`held`); `-1` (unknown yet) is left out.
    pub(crate) fn report_lag(&self, reported: impl IntoIterator<Item = (String, i32, i64)>, held: &[(String, i32)]) {
        let mut lag = self.lag_map();
        for (topic, partition, records) in reported {
            if records < 0 || !held.contains(&(topic.clone(), partition)) {
                continue;
            }
            self.inner
                .lag
                .get_or_create(&PartitionLabels {
                    topic: topic.clone(),
                    partition,
                })
                .set(records);
            lag.insert((topic, partition), records);
        }
    }

    fn hold<'a>(&self, held: impl IntoIterator<Item = &'a (String, i32)>) {
        let held: Vec<&(String, i32)> = held.into_iter().collect();
        {
            // A partition newly held counts as progressing from now.
            let now = self.now_ms();
            let mut progress = self.progress_map();
            progress.retain(|partition, _| held.contains(&partition));
            for partition in &held {
                progress.entry((*partition).clone()).or_insert(now);
            }
        }
        let mut topics = self.inner.topics_held.lock().unwrap_or_else(PoisonError::into_inner);
        // Topics held before and not now go to 0 rather than away.
        let mut per_topic: BTreeMap<String, i64> = topics.iter().map(|topic| (topic.clone(), 0)).collect();
        for (topic, _) in held {
            *per_topic.entry(topic.clone()).or_default() += 1;
        }
        for (topic, count) in &per_topic {
            self.inner
                .assigned
                .get_or_create(&TopicLabels { topic: topic.clone() })
                .set(*count);
        }
        self.inner
            .assigned_total
            .store(per_topic.values().sum(), Ordering::Relaxed);
        topics.extend(per_topic.into_keys());
    }

    fn progress_map(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i32), i64>> {
        self.inner
            .progress_by_partition
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lag_map(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i32), i64>> {
        self.inner
            .lag_by_partition
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_only_held_partitions_of_the_asked_topics_and_leaves_with_a_revoke() {
        let mut registry = Registry::default();
        let monitor = GroupMonitor::new(&mut registry);
        let held = vec![("a".to_owned(), 0), ("a".to_owned(), 1), ("retry".to_owned(), 0)];
        monitor.assigned(3, &held);
        monitor.report_lag(
            [
                ("a".to_owned(), 0, 5),
                ("a".to_owned(), 1, -1),
                ("a".to_owned(), 2, 100),
                ("retry".to_owned(), 0, 7),
            ],
            &held,
        );
        assert_eq!(monitor.lag(&["a"]), 5);
        assert_eq!(monitor.lag(&["a", "retry"]), 12);

        monitor.revoked(&[("a".to_owned(), 0)], &held[1..]);
        assert_eq!(monitor.lag(&["a"]), 0);
        assert_eq!(monitor.assigned_partitions(), 2);

        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("kafka_consumer_lag_records{topic=\"retry\",partition=\"0\"} 7"),
            "{text}"
        );
        assert!(
            !text.contains("topic=\"a\",partition=\"0\""),
            "revoked partitions leave the metric"
        );
        assert!(
            text.contains("kafka_consumer_rebalances_total{kind=\"revoke\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kafka_consumer_assigned_partitions{topic=\"a\"} 1"),
            "{text}"
        );

        monitor.revoked(&[("retry".to_owned(), 0)], &held[1..2]);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("kafka_consumer_assigned_partitions{topic=\"retry\"} 0"),
            "a topic no longer held says 0: {text}"
        );
        assert_eq!(monitor.assigned_partitions(), 1);
    }

    #[test]
    fn a_member_is_stalled_when_behind_without_progress_or_unassigned_long_after_start() {
        let monitor = GroupMonitor::new(&mut Registry::default());
        let quick = Duration::from_millis(10);
        assert_eq!(monitor.stalled(&["a"], Duration::from_secs(60)), None, "just started");
        std::thread::sleep(Duration::from_millis(20));
        let reason = monitor.stalled(&["a"], quick).unwrap();
        assert!(reason.starts_with("no partitions assigned"), "{reason}");

        monitor.assigned(1, &[("a".to_owned(), 0)]);
        assert_eq!(monitor.stalled(&["a"], quick), None, "assigned, nothing to do");
        monitor.report_lag([("a".to_owned(), 0, 3)], &[("a".to_owned(), 0)]);
        std::thread::sleep(Duration::from_millis(20));
        let reason = monitor.stalled(&["a"], quick).unwrap();
        assert!(reason.starts_with("stalled: a[0] 3 records behind"), "{reason}");
        assert_eq!(monitor.stalled(&["retry"], quick), None, "lag elsewhere does not count");
        monitor.progressed("a", 0);
        assert_eq!(
            monitor.stalled(&["a"], Duration::from_secs(60)),
            None,
            "making progress"
        );
    }

    #[test]
    fn progress_is_measured_from_the_last_stored_offset() {
        let monitor = GroupMonitor::new(&mut Registry::default());
        std::thread::sleep(Duration::from_millis(20));
        assert!(monitor.since_progress() >= Duration::from_millis(20));
        monitor.progressed("a", 0);
        assert!(monitor.since_progress() < Duration::from_millis(20));
    }

    /// One partition stuck while the member's other partition keeps
    /// processing: readiness must see the stuck one, and name it.
    #[test]
    fn one_stuck_partition_is_named_while_another_makes_progress() {
        let monitor = GroupMonitor::new(&mut Registry::default());
        let held = [("a".to_owned(), 0), ("a".to_owned(), 1)];
        monitor.assigned(2, &held);
        monitor.report_lag([("a".to_owned(), 0, 5), ("a".to_owned(), 1, 7)], &held);
        // Margins of 200 ms either way: partition 0 idle for 300 ms, the
        // checks each within microseconds of a progress or an assignment.
        let stall_after = Duration::from_millis(200);
        for _ in 0..6 {
            std::thread::sleep(Duration::from_millis(50));
            monitor.progressed("a", 1);
        }
        let reason = monitor.stalled(&["a"], stall_after).expect("partition 0 is stuck");
        assert!(reason.starts_with("stalled: a[0] 5 records behind"), "{reason}");
        assert!(!reason.contains("a[1]"), "partition 1 progresses: {reason}");

        // Assigned again after a revoke, it counts from its assignment.
        monitor.revoked(&[held[0].clone()], &held[1..]);
        monitor.assigned(1, &held);
        monitor.report_lag([("a".to_owned(), 0, 5)], &held);
        assert_eq!(monitor.stalled(&["a"], stall_after), None, "just assigned");
    }
}
