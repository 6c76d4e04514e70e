//! The consumer group as Kafka defines it: members share the partitions,
//! a member that dies loses its partitions to the others within the
//! session timeout plus one rebalance, a member that replaces a crashed
//! one gets partitions once the group rebalances, and a rolling restart
//! keeps every partition owned. Ownership comes from each member's own
//! metrics (`kafka_consumer_assigned_partitions`), effects from the read
//! model.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::load::{assert_exact_state, new_users, publish, tokens_for, wait_for_processed};
use e2e::process::{ServiceProcess, NO_PRODUCER, SESSION_TIMEOUT};
use e2e::TestContext;
use kafka_service::{GroupProtocol, Topic};

/// The topics a member consumes: both event topics and the retry topic.
const CONSUMED: [Topic; 3] = [Topic::NewUserCreated, Topic::IssuedToken, Topic::Retry];

/// Longest one rebalance may take once the coordinator knows the group
/// changed: every member learns of it at its next heartbeat (librdkafka's
/// `heartbeat.interval.ms`, 3 s), rejoins, and a cooperative rebalance that
/// moves partitions between live members takes a second round. Measured
/// here: see `docs/delivery.md`.
const ONE_REBALANCE: Duration = Duration::from_secs(10);

/// Small transactions, so that records are still in flight when members
/// come and go (see `crashes.rs`).
const SMALL_BATCHES: (&str, &str) = ("APP_KAFKA__MAX_BATCH_RECORDS", "4");

/// A retry schedule that outlasts a handover: rounds through the retry
/// topic after 1, 2, 4, 8, 8 and 8 s (31 s in all) instead of the tests'
/// usual 3 s. When a member is killed, the `user.created` records on its
/// partitions wait out the session timeout and a rebalance (up to 20 s,
/// [`SESSION_TIMEOUT`] plus [`ONE_REBALANCE`]), while those users' tokens,
/// on partitions a survivor holds, go round the retry topic waiting for
/// them; with 3 s of rounds they would be dead-lettered as exhausted
/// first. Production's schedule starts at one minute.
const RETRIES_OUTLAST_A_HANDOVER: [(&str, &str); 3] = [
    ("APP_RETRY__TOPIC_ROUNDS", "6"),
    ("APP_RETRY__TOPIC_INITIAL_DELAY_MS", "1000"),
    ("APP_RETRY__TOPIC_MAX_DELAY_MS", "8000"),
];

/// Three members started together share the 8 partitions of each topic
/// 3/3/2, and apply 600 users and 2 tokens each exactly once. Under the
/// classic protocol the broker waits 3 s (`group.initial.rebalance.delay.ms`)
/// before an empty group's first assignment, so all three are in it; under
/// KIP-848 it assigns as members arrive and moves partitions to newcomers.
#[tokio::test]
async fn three_members_share_each_topics_partitions_three_three_two() {
    let _serial = crate::one_at_a_time().await;
    let context = TestContext::new();
    let (a, b, c) = three_members(&context, &[]).await;
    let members = [&a, &b, &c];
    let split = wait_for_ownership(&context, &members, Duration::from_secs(30), |split| {
        split.values().all(|held| sorted(held) == [2, 3, 3])
    })
    .await;
    eprintln!("partitions per member, by topic: {split:?}");
    let mut before = Vec::new();
    for member in members {
        before.push(member.assigned_partitions().await);
    }

    let (users, created) = new_users(600);
    publish(&context, &created).await;
    publish(&context, &tokens_for(&users, 2)).await;
    let pool = context.consumer_pool().await;
    assert_exact_state(&context, &pool, &users, 2).await;
    // Each member holds as many partitions of each topic as before the
    // load: 8 of the 24 each under the classic protocol's
    // cooperative-sticky assignor, and 9, 9 and 6 under KIP-848's range
    // assignor, which gives one member the same two partition numbers of
    // every topic.
    let mut totals: Vec<i64> = before.iter().map(|held| held.values().sum()).collect();
    totals.sort_unstable();
    let expected = match e2e::group_protocol() {
        GroupProtocol::Classic => [8, 8, 8],
        GroupProtocol::Consumer => [6, 9, 9],
    };
    assert_eq!(totals, expected, "partitions per member of 24: {before:?}");
    for (member, before) in members.iter().zip(before) {
        let held = member.assigned_partitions().await;
        assert_eq!(
            held,
            before,
            "{}: the partitions it held before the load",
            member.log.display()
        );
    }
    a.kill().await;
    b.kill().await;
    c.kill().await;
    pool.close().await;
    context.drop_databases().await;
}

/// 1500 users and 2 tokens each (4500 events) through three members; one is
/// killed with SIGKILL mid-stream. Its partitions go to the two survivors
/// within the session timeout plus one rebalance, and every event is
/// applied exactly once.
#[tokio::test]
async fn a_member_killed_mid_stream_loses_its_partitions_to_the_survivors_within_the_session_timeout() {
    let _serial = crate::one_at_a_time().await;
    let context = TestContext::new();
    let [rounds, initial, max] = RETRIES_OUTLAST_A_HANDOVER;
    let (a, b, c) = three_members(&context, &[SMALL_BATCHES, rounds, initial, max]).await;
    wait_for_ownership(&context, &[&a, &b, &c], Duration::from_secs(30), each_member_holds_some).await;

    let (users, created) = new_users(1500);
    publish(&context, &created).await;
    publish(&context, &tokens_for(&users, 2)).await;
    let pool = context.consumer_pool().await;
    wait_for_processed(&pool, 500, Duration::from_secs(60)).await;
    let killed = kill_mid_stream(c, &pool, 4500).await;
    let took = wait_for_heirs(&context, &[&a, &b], killed).await;
    eprintln!("the survivors held all partitions {took:?} after the kill");
    assert_exact_state(&context, &pool, &users, 2).await;
    a.kill().await;
    b.kill().await;
    pool.close().await;
    context.drop_databases().await;
}

/// The group's only member is killed with SIGKILL and a new one starts at
/// once, while the dead member's session is still open. The newcomer owns
/// every partition once the coordinator drops the dead member and the
/// group rebalances, and finishes the stream: 1000 users, 1 token each.
#[tokio::test]
async fn a_member_started_right_after_a_crash_gets_the_partitions_once_the_group_rebalances() {
    let _serial = crate::one_at_a_time().await;
    let context = TestContext::new();
    let (users, created) = new_users(1000);
    publish(&context, &created).await;
    publish(&context, &tokens_for(&users, 1)).await;

    let first = context.start_consumer_process(NO_PRODUCER, &[SMALL_BATCHES]).await;
    let pool = context.consumer_pool().await;
    wait_for_processed(&pool, 200, Duration::from_secs(60)).await;
    let killed = kill_mid_stream(first, &pool, 2000).await;
    let second = context.start_consumer_process(NO_PRODUCER, &[SMALL_BATCHES]).await;
    let took = wait_for_heirs(&context, &[&second], killed).await;
    eprintln!("the new member held all partitions {took:?} after the kill");
    assert_exact_state(&context, &pool, &users, 1).await;
    second.kill().await;
    pool.close().await;
    context.drop_databases().await;
}

/// Three members, each in turn stopped with SIGTERM and replaced by a new
/// one while records flow (500 users' events published before each step):
/// after every step the live members own every partition, and at the end
/// every event has been applied exactly once.
#[tokio::test]
async fn a_rolling_restart_keeps_every_partition_owned_and_applies_every_record_once() {
    let _serial = crate::one_at_a_time().await;
    let context = TestContext::new();
    let (a, b, c) = three_members(&context, &[SMALL_BATCHES]).await;
    let mut members = vec![a, b, c];
    wait_for_ownership(&context, &refs(&members), Duration::from_secs(30), |_| true).await;
    let pool = context.consumer_pool().await;

    let mut users = Vec::new();
    for step in 0..3 {
        let (ids, created) = new_users(500);
        publish(&context, &created).await;
        publish(&context, &tokens_for(&ids, 1)).await;
        users.extend(ids);

        let old = members.remove(0);
        let log = old.log.clone();
        let (code, _) = old.terminate(Duration::from_secs(15)).await;
        assert_eq!(code, Some(0), "step {step}: clean exit; see {}", log.display());
        members.push(context.start_consumer_process(NO_PRODUCER, &[SMALL_BATCHES]).await);
        // A member that leaves (SIGTERM) hands its partitions back at once,
        // so no session timeout is waited out here.
        wait_for_ownership(&context, &refs(&members), ONE_REBALANCE * 2, each_member_holds_some).await;
    }
    assert_exact_state(&context, &pool, &users, 1).await;
    for member in members {
        member.kill().await;
    }
    pool.close().await;
    context.drop_databases().await;
}

/// 1500 users and 2 tokens each (4500 events). Members A and B share the
/// partitions from the start; C joins mid-stream and A leaves (SIGTERM)
/// mid-stream: three rebalances under load, exact counts at the end.
#[tokio::test]
async fn members_joining_and_leaving_mid_stream_apply_every_event_once() {
    let _serial = crate::one_at_a_time().await;
    let context = TestContext::new();
    let (users, created) = new_users(1500);
    let (a, b) = tokio::join!(
        context.start_consumer_process(NO_PRODUCER, &[]),
        context.start_consumer_process(NO_PRODUCER, &[]),
    );
    let pool = context.consumer_pool().await;
    // Both members are in the group before the load arrives.
    wait_for_ownership(&context, &[&a, &b], Duration::from_secs(30), each_member_holds_some).await;

    publish(&context, &created).await;
    publish(&context, &tokens_for(&users, 2)).await;
    wait_for_processed(&pool, 1000, Duration::from_secs(60)).await;
    let c = context.start_consumer_process(NO_PRODUCER, &[]).await;
    wait_for_processed(&pool, 2500, Duration::from_secs(60)).await;
    let (code, _) = a.terminate(Duration::from_secs(15)).await;
    assert_eq!(code, Some(0));

    assert_exact_state(&context, &pool, &users, 2).await;
    wait_for_ownership(&context, &[&b, &c], ONE_REBALANCE * 2, |_| true).await;
    b.kill().await;
    c.kill().await;
    pool.close().await;
    context.drop_databases().await;
}

/// Three members of this test's group, started together.
async fn three_members(
    context: &TestContext,
    extra: &[(&str, &str)],
) -> (ServiceProcess, ServiceProcess, ServiceProcess) {
    tokio::join!(
        context.start_consumer_process(NO_PRODUCER, extra),
        context.start_consumer_process(NO_PRODUCER, extra),
        context.start_consumer_process(NO_PRODUCER, extra),
    )
}

/// SIGKILLs `member` and asserts that fewer than `total` events had been
/// applied by then; returns when it died.
async fn kill_mid_stream(member: ServiceProcess, pool: &sqlx::PgPool, total: i64) -> Instant {
    member.kill().await;
    let killed = Instant::now();
    let applied = e2e::load::processed_count(pool).await;
    assert!(applied < total, "killed mid-stream, after {applied} of {total} events");
    killed
}

/// Waits until `heirs` own every partition, for at most the session
/// timeout plus one rebalance after `killed`; returns how long it took.
async fn wait_for_heirs(context: &TestContext, heirs: &[&ServiceProcess], killed: Instant) -> Duration {
    let bound = SESSION_TIMEOUT + ONE_REBALANCE;
    wait_for_ownership(context, heirs, bound.saturating_sub(killed.elapsed()), |_| true).await;
    killed.elapsed()
}

/// Per consumed topic, the partitions each member holds (in `members`'
/// order), from the members' metrics.
type Split = BTreeMap<String, Vec<i64>>;

/// Waits up to `timeout` until `members` together hold every partition of
/// every consumed topic exactly once (no partition unowned, none counted
/// twice) and `also` holds for the split. Returns the split.
///
/// # Panics
///
/// With the last split seen, when the time runs out.
async fn wait_for_ownership(
    context: &TestContext,
    members: &[&ServiceProcess],
    timeout: Duration,
    also: impl Fn(&Split) -> bool,
) -> Split {
    let topics: Vec<(String, i64)> = CONSUMED
        .iter()
        .map(|&topic| {
            let spec = context.topics.spec(topic);
            (spec.name.clone(), i64::from(spec.partitions))
        })
        .collect();
    let deadline = Instant::now() + timeout;
    loop {
        let mut split = Split::new();
        for member in members {
            let held = member.assigned_partitions().await;
            for (topic, _) in &topics {
                split
                    .entry(topic.clone())
                    .or_default()
                    .push(held.get(topic).copied().unwrap_or(0));
            }
        }
        let whole = topics
            .iter()
            .all(|(topic, partitions)| split[topic].iter().sum::<i64>() == *partitions);
        if whole && also(&split) {
            return split;
        }
        assert!(
            Instant::now() < deadline,
            "after {timeout:?} the members hold {split:?} partitions per topic; see {}",
            members
                .iter()
                .map(|member| member.log.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether every member holds at least one partition (of any topic).
fn each_member_holds_some(split: &Split) -> bool {
    let members = split.values().next().map_or(0, Vec::len);
    (0..members).all(|member| split.values().map(|held| held[member]).sum::<i64>() > 0)
}

fn sorted(held: &[i64]) -> Vec<i64> {
    let mut held = held.to_vec();
    held.sort_unstable();
    held
}

fn refs(members: &[ServiceProcess]) -> Vec<&ServiceProcess> {
    members.iter().collect()
}
