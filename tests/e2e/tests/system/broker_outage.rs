//! The broker goes down while users are created: requests still succeed,
//! and every event arrives once the broker is back.

use std::time::Duration;

use e2e::broker::Broker;
use e2e::{create_user, eventually, read_model_token_counts, TestContext};
use reqwest::Client;

#[tokio::test]
async fn users_created_while_the_broker_is_down_arrive_after_it_returns() {
    let mut broker = Broker::start_new();
    let context = TestContext::with_broker(broker.bootstrap_servers());
    let producer = context.spawn_producer().await;
    let consumer = context.spawn_consumer(&producer.url()).await;
    let client = Client::new();
    let pool = context.consumer_pool().await;

    // The flow works before the outage.
    let before = create_user(&client, &producer.url(), "before").await;
    eventually(Duration::from_secs(30), "the first user to arrive", || async {
        read_model_token_counts(&pool)
            .await
            .contains_key(&before.id)
            .then_some(())
    })
    .await;

    broker.kill();
    let mut during = Vec::new();
    for _ in 0..10 {
        // create_user asserts 201: the request does not wait for Kafka.
        during.push(create_user(&client, &producer.url(), "during").await);
    }
    // The producer still takes requests: ready, reporting the broker as of
    // its last check (every 10 s).
    e2e::wait_until_ready_without_broker(&client, &producer.url()).await;
    // The gauges an operator alerts on move during the outage: the rows
    // wait, and the oldest one's age grows (issue 23, N4: measured by the
    // relay only, they stood still once it had sent the rows).
    let gauge = |name: &'static str| {
        let (client, url) = (client.clone(), producer.url());
        async move { e2e::metrics::samples(&e2e::metrics::scrape(&client, &url).await, name)[0].1 }
    };
    eventually(Duration::from_secs(10), "the waiting rows counted", || async {
        (gauge("outbox_pending_rows").await == 10.0).then_some(())
    })
    .await;
    let age = gauge("outbox_oldest_pending_age_seconds").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = gauge("outbox_oldest_pending_age_seconds").await;
    assert!(
        later >= age + 2.0,
        "the oldest waiting row's age grows: {age} s, then {later} s 3 s later"
    );

    broker.start();
    eventually(
        Duration::from_secs(90),
        "every user created during the outage to arrive",
        || async {
            let counts = read_model_token_counts(&pool).await;
            during.iter().all(|user| counts.contains_key(&user.id)).then_some(())
        },
    )
    .await;
    let producer_pool = context.producer_pool().await;
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&producer_pool)
        .await
        .unwrap();
    assert_eq!(pending, 0, "every outbox row is marked published");
    let processed: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(processed, 11, "each event applied once");
    // The consumer commits again once the broker is back (it may first
    // have to rejoin the group), so its shutdown commit succeeds.
    e2e::load::assert_offsets_at_end(&context).await;

    consumer.stop().await.unwrap();
    producer.stop().await.unwrap();
    context.drop_databases().await;
}
