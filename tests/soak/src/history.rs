//! The history checker, run once every fault is healed and the traffic
//! has stopped. Ground truth is the producer's outbox: every event a
//! request committed, whether or not its response reached the client.
//!
//! - Every 2xx's event is in the outbox, and every outbox event is applied
//!   exactly once: in `processed_events`, and counted once in the read
//!   model (`users.tokens_issued` equals the user's token events).
//! - Each user's events of one topic were applied in the order they were
//!   committed (outbox `id` order against `processed_events.sequence`, the
//!   order the consumers applied them in).
//! - Every hostile record is in the dead-letter topic under its
//!   coordinates with the reason [`PeerRecord::expected`] names, or (a
//!   forged copy naming a record that was not parked) skipped with a log
//!   line that names it; none is applied, and nothing else is
//!   dead-lettered.
//! - No partition went without progress for longer than [`STALL_BOUND`]
//!   in all outside the faults' windows.
//! - No service exited without being told to.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use kafka_service::failure::header;
use kafka_service::{Record, Topic};
use sqlx::PgPool;
use uuid::Uuid;

use crate::deployment::Deployment;
use crate::faults::Injected;
use crate::monitor::Stall;
use crate::peer::{Injection, PeerRecord};
use crate::traffic::Accepted;

/// Longest a partition may go without progress while no fault is active,
/// measured from the end of the fault before: the recovery bound that
/// docs/delivery.md states for the cluster tests, 30 s.
pub const STALL_BOUND: Duration = Duration::from_secs(30);

/// Longest the soak waits, after the traffic stops, for every event to be
/// published and applied, every partition committed to its end and
/// nothing parked.
pub const QUIESCENCE_BOUND: Duration = Duration::from_secs(120);

/// How the wait for quiescence ended.
#[derive(Debug, Clone)]
pub struct Quiescence {
    /// How long it took; `None` when [`QUIESCENCE_BOUND`] passed first.
    pub after: Option<Duration>,
    /// What was still pending at the last look (empty when quiescent).
    pub pending: String,
}

/// Waits until the outbox is published, every outbox event applied, the
/// group's committed offsets at the end of every partition it reads, and
/// nothing parked; at most [`QUIESCENCE_BOUND`].
pub async fn wait_for_quiescence(world: &Deployment) -> Quiescence {
    let started = Instant::now();
    let mut pending = String::from("nothing looked at yet");
    while started.elapsed() < QUIESCENCE_BOUND {
        match pending_work(world).await {
            Ok(None) => {
                return Quiescence {
                    after: Some(started.elapsed()),
                    pending: String::new(),
                }
            }
            Ok(Some(what)) => pending = what,
            Err(error) => pending = format!("could not look: {error:#}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Quiescence { after: None, pending }
}

/// What is still pending, or `None`.
async fn pending_work(world: &Deployment) -> anyhow::Result<Option<String>> {
    let producer = PgPool::connect(&world.context.producer_database_url).await?;
    let consumer = PgPool::connect(&world.context.consumer_database_url).await?;
    let unpublished: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&producer)
        .await?;
    let events: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM outbox")
        .fetch_all(&producer)
        .await?;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE event_id = ANY($1)")
        .bind(&events)
        .fetch_one(&consumer)
        .await?;
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM parked_records")
        .fetch_one(&consumer)
        .await?;
    producer.close().await;
    consumer.close().await;
    let kafka = world.context.kafka();
    let names: Vec<&str> = [Topic::NewUserCreated, Topic::IssuedToken, Topic::Retry]
        .iter()
        .map(|topic| kafka.topics.name(*topic))
        .collect();
    let lag: i64 = kafka_service::group_offsets(&kafka, &world.context.group_id, &names)
        .await?
        .iter()
        .map(kafka_service::PartitionOffsets::lag)
        .sum();
    let unapplied = i64::try_from(events.len())? - applied;
    Ok((unpublished > 0 || unapplied > 0 || parked > 0 || lag > 0)
        .then(|| format!("{unpublished} unpublished, {unapplied} unapplied, {parked} parked, lag {lag}")))
}

/// What the checker found.
#[derive(Debug)]
pub struct Checked {
    /// Events committed to the outbox (every 2xx, and requests whose
    /// response was lost).
    pub outbox_events: usize,
    /// Outbox events applied.
    pub applied: usize,
    /// Accepted events, or outbox events, never applied.
    pub lost: Vec<String>,
    /// Events counted more than once in the read model.
    pub applied_twice: Vec<String>,
    /// A user's events of one topic applied out of their commit order.
    pub reordered: Vec<String>,
    /// Records on the dead-letter topic.
    pub dead_letters: usize,
    /// Each hostile record and what became of it.
    pub hostile: Vec<(Injection, String)>,
    /// The longest stall, faults or not.
    pub longest_stall: Option<Stall>,
    /// The most time one stall spent outside the faults' windows, and
    /// that stall.
    pub longest_healed_stall: Option<(Duration, Stall)>,
    /// The wait for quiescence.
    pub quiescence: Quiescence,
    /// Everything above that breaks a promise.
    pub violations: Vec<String>,
}

/// Checks the whole history (see the module's documentation).
///
/// # Panics
///
/// When a database or the dead-letter topic cannot be read.
pub async fn check(
    world: &Deployment,
    accepted: &Accepted,
    peers: &[Injection],
    injected: &[Injected],
    stalls: &[Stall],
    quiescence: Quiescence,
    crashes: Vec<String>,
) -> Checked {
    let producer = PgPool::connect(&world.context.producer_database_url)
        .await
        .expect("the producer's database");
    let consumer = PgPool::connect(&world.context.consumer_database_url)
        .await
        .expect("the consumer's database");
    let outbox: Vec<(Uuid, String, String)> =
        sqlx::query_as("SELECT event_id, subject, event_type FROM outbox ORDER BY id")
            .fetch_all(&producer)
            .await
            .expect("the outbox");
    let processed: HashMap<Uuid, i64> = sqlx::query_as("SELECT event_id, sequence FROM processed_events")
        .fetch_all(&consumer)
        .await
        .expect("processed_events")
        .into_iter()
        .collect();
    let read_model: HashMap<Uuid, i64> = e2e::read_model_token_counts(&consumer).await;
    producer.close().await;
    consumer.close().await;

    let mut lost = Vec::new();
    let mut applied_twice = Vec::new();
    let mut reordered = Vec::new();
    // Outbox events per user: created, tokens.
    let mut committed: HashMap<Uuid, (u32, i64)> = HashMap::new();
    let mut last_applied: HashMap<(&str, &str), i64> = HashMap::new();
    for (event_id, subject, event_type) in &outbox {
        let user: Uuid = subject.parse().expect("outbox subjects are user ids");
        let entry = committed.entry(user).or_default();
        if event_type == events::UserEvent::TOKEN_ISSUED_V1 {
            entry.1 += 1;
        } else {
            entry.0 += 1;
        }
        let Some(&sequence) = processed.get(event_id) else {
            lost.push(format!(
                "{event_type} {event_id} of {subject}: committed, never applied"
            ));
            continue;
        };
        if let Some(before) = last_applied.insert((subject, event_type), sequence) {
            if sequence < before {
                reordered.push(format!(
                    "{event_type} {event_id} of {subject} applied before an event of its user committed earlier"
                ));
            }
        }
    }
    for (user, tokens) in &accepted.users {
        match committed.get(user) {
            None => lost.push(format!("user {user}: created (201), not in the outbox")),
            Some((_, committed_tokens)) if *committed_tokens < i64::from(*tokens) => lost.push(format!(
                "user {user}: {tokens} tokens issued (200), {committed_tokens} in the outbox"
            )),
            Some(_) => {}
        }
    }
    for (user, (_, tokens)) in &committed {
        match read_model.get(user) {
            None => lost.push(format!("user {user}: committed, not in the read model")),
            Some(counted) if counted < tokens => {
                lost.push(format!(
                    "user {user}: {tokens} token events committed, {counted} counted"
                ));
            }
            Some(counted) if counted > tokens => {
                applied_twice.push(format!(
                    "user {user}: {tokens} token events committed, {counted} counted"
                ));
            }
            Some(_) => {}
        }
    }
    let outbox_ids: HashSet<Uuid> = outbox.iter().map(|(event_id, _, _)| *event_id).collect();
    let mut violations = crashes;
    for peer in peers {
        if processed.contains_key(&peer.event_id) {
            violations.push(format!("hostile record {} ({}) was applied", peer, peer.kind));
        }
    }
    let peer_ids: HashSet<Uuid> = peers.iter().map(|peer| peer.event_id).collect();
    for event_id in processed.keys() {
        if !outbox_ids.contains(event_id) && !peer_ids.contains(event_id) {
            violations.push(format!("event {event_id} applied, but nobody committed it"));
        }
    }

    let dead = e2e::load::dead_letters(&world.context).await;
    let logs: Vec<String> = world
        .consumers
        .iter()
        .map(|service| std::fs::read_to_string(service.log()).unwrap_or_default())
        .collect();
    let mut explained = HashSet::new();
    let mut hostile = Vec::new();
    for peer in peers {
        let found = dead.iter().position(|record| {
            text(record, header::ORIGIN_TOPIC) == peer.topic
                && text(record, header::ORIGIN_PARTITION) == peer.partition.to_string()
                && text(record, header::ORIGIN_OFFSET) == peer.offset.to_string()
        });
        let outcome = match found {
            Some(index) => {
                explained.insert(index);
                let message = text(&dead[index], header::ERROR_MESSAGE);
                let dropped = dead[index].header(header::DROPPED_CONTENT).is_some();
                if !message.contains(peer.kind.expected()) {
                    violations.push(format!(
                        "hostile record {peer}: dead-lettered saying `{message}`, not `{}`",
                        peer.kind.expected()
                    ));
                } else if peer.kind == PeerRecord::NearSizeLimit && !dropped {
                    violations.push(format!(
                        "hostile record {peer}: dead-lettered without `dropped-content`"
                    ));
                }
                format!("dead-lettered: {message}")
            }
            None if peer.names.as_ref().is_some_and(|(_, parked)| !parked)
                && logs.iter().any(|log| skip_logged(log, peer)) =>
            {
                "skipped (logged): the record it names was not parked".to_owned()
            }
            None => {
                violations.push(format!(
                    "hostile record {peer} ({}): neither dead-lettered nor skipped",
                    peer.kind
                ));
                "lost track of".to_owned()
            }
        };
        hostile.push((peer.clone(), outcome));
    }
    for (index, record) in dead.iter().enumerate() {
        if !explained.contains(&index) {
            violations.push(format!(
                "dead letter {}[{}]@{} of an accepted event: {} ({})",
                text(record, header::ORIGIN_TOPIC),
                text(record, header::ORIGIN_PARTITION),
                text(record, header::ORIGIN_OFFSET),
                text(record, header::ERROR_MESSAGE),
                text(record, header::ERROR_CLASS),
            ));
        }
    }

    let longest_stall = stalls.iter().max_by_key(|stall| stall.to - stall.from).cloned();
    let windows: Vec<(Duration, Duration)> = injected.iter().map(|fault| (fault.at, fault.healed)).collect();
    let longest_healed_stall = stalls
        .iter()
        .map(|stall| (time_outside(stall, &windows), stall.clone()))
        .max_by_key(|(healed, _)| *healed);
    if let Some((healed, stall)) = &longest_healed_stall {
        if *healed > STALL_BOUND {
            violations.push(format!(
                "{} went {} s without progress while no fault was active (bound {} s), in a stall from {:.0} s to {:.0} s",
                stall.partition,
                healed.as_secs(),
                STALL_BOUND.as_secs(),
                stall.from.as_secs_f64(),
                stall.to.as_secs_f64()
            ));
        }
    }
    if quiescence.after.is_none() {
        violations.push(format!(
            "not quiescent within {} s of the traffic's end: {}",
            QUIESCENCE_BOUND.as_secs(),
            quiescence.pending
        ));
    }
    for (what, list) in [
        ("lost", &lost),
        ("applied twice", &applied_twice),
        ("reordered", &reordered),
    ] {
        if !list.is_empty() {
            violations.push(format!("{} event(s) {what}; first: {}", list.len(), list[0]));
        }
    }
    Checked {
        outbox_events: outbox.len(),
        applied: outbox
            .iter()
            .filter(|(event_id, _, _)| processed.contains_key(event_id))
            .count(),
        lost,
        applied_twice,
        reordered,
        dead_letters: dead.len(),
        hostile,
        longest_stall,
        longest_healed_stall,
        quiescence,
        violations,
    }
}

/// How much of `stall` lies outside every window in `windows` (sorted,
/// not overlapping: faults run one at a time). Summed rather than the
/// longest gap, so that a partition stuck across several faults is not
/// excused by the faults that follow.
fn time_outside(stall: &Stall, windows: &[(Duration, Duration)]) -> Duration {
    let mut outside = Duration::ZERO;
    let mut from = stall.from;
    for &(start, end) in windows {
        if end <= from {
            continue;
        }
        if start >= stall.to {
            break;
        }
        outside += start.saturating_sub(from);
        from = from.max(end);
    }
    outside + stall.to.saturating_sub(from)
}

/// Whether `log` has a line saying the record at `peer`'s coordinates was
/// skipped (its span names topic, partition and offset).
fn skip_logged(log: &str, peer: &Injection) -> bool {
    let fields = [
        format!("topic=\"{}\"", peer.topic),
        format!("partition={}", peer.partition),
        format!("offset={}", peer.offset),
    ];
    log.lines()
        .any(|line| line.contains("skipped") && fields.iter().all(|field| line.contains(field.as_str())))
}

/// Header `name` of `record` as text (empty when absent or not UTF-8).
fn text<'r>(record: &'r Record, name: &str) -> &'r str {
    record
        .header(name)
        .and_then(|value| std::str::from_utf8(value).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stall(from: u64, to: u64) -> Stall {
        Stall {
            partition: "t[0]".to_owned(),
            from: Duration::from_secs(from),
            to: Duration::from_secs(to),
        }
    }

    #[test]
    fn a_stall_counts_only_its_time_outside_the_faults() {
        let s = Duration::from_secs;
        let windows = [(s(10), s(20)), (s(50), s(60))];
        assert_eq!(time_outside(&stall(0, 5), &windows), s(5));
        assert_eq!(time_outside(&stall(12, 18), &windows), s(0));
        assert_eq!(time_outside(&stall(15, 45), &windows), s(25));
        assert_eq!(time_outside(&stall(5, 70), &windows), s(45));
        assert_eq!(time_outside(&stall(55, 100), &windows), s(40));
    }
}
