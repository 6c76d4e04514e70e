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
