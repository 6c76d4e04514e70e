//! Members joining and leaving the group mid-stream.

use std::time::Duration;

use e2e::load::{assert_exact_state, new_users, publish, tokens_for, wait_for_processed};
use e2e::process::{ServiceProcess, NO_PRODUCER};
use e2e::TestContext;

/// 1500 users and 2 tokens each (4500 events). Members A and B share the
/// partitions from the start; C joins mid-stream and A leaves (SIGTERM)
/// mid-stream: three rebalances under load, exact counts at the end.
#[tokio::test]
async fn members_joining_and_leaving_mid_stream_apply_every_event_once() {
    let _serial = crate::one_at_a_time().await;
    let context = TestContext::new();
    let (users, created) = new_users(1500);
    let a = context.start_consumer_process(NO_PRODUCER, &[]).await;
    let b = context.start_consumer_process(NO_PRODUCER, &[]).await;
    let pool = context.consumer_pool().await;
    // Both members are in the group before the load arrives.
    e2e::eventually(Duration::from_secs(30), "A and B sharing the partitions", || async {
        (holds_partitions(&a) && holds_partitions(&b)).then_some(())
    })
    .await;

    publish(&context, &created).await;
    publish(&context, &tokens_for(&users, 2)).await;
    wait_for_processed(&pool, 1000, Duration::from_secs(60)).await;
    let c = context.start_consumer_process(NO_PRODUCER, &[]).await;
    wait_for_processed(&pool, 2500, Duration::from_secs(60)).await;
    let (code, _) = a.terminate(Duration::from_secs(15)).await;
    assert_eq!(code, Some(0));

    assert_exact_state(&context, &pool, &users, 2).await;
    assert!(
        holds_partitions(&b) || holds_partitions(&c),
        "the survivors hold the partitions"
    );
    b.kill().await;
    c.kill().await;
    pool.close().await;
    context.drop_databases().await;
}

/// Whether the member's last logged assignment change left it holding
/// partitions.
fn holds_partitions(member: &ServiceProcess) -> bool {
    let log = std::fs::read_to_string(&member.log).unwrap_or_default();
    log.lines()
        .filter(|line| line.contains("rebalance: partitions assigned"))
        .any(|line| line.contains("]"))
}
