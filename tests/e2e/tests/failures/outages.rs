//! Dependencies that fail for a while: the consumer's database, and the
//! producer it asks about users.

use std::collections::HashMap;
use std::time::Duration;

use e2e::load::{
    assert_offsets_at_end, assert_per_user_order, dead_letters, new_users, processed_count, publish,
    publish_tokens_then_assert_exact_state, tokens_for, wait_for_processed,
};
use e2e::process::NO_PRODUCER;
use e2e::proxy::{FaultProxy, Mode};
use e2e::{create_user, eventually, TestContext};
use kafka_service::Topic;
use reqwest::Client;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// 400 users and 1 token each. The consumer's database refuses connections
/// (and its open ones are terminated) for 3 s mid-stream; the consumer is
/// killed with SIGKILL during the outage and restarted once the database is
/// back. Had it committed an offset past a record it had not applied, that
/// record would be lost now and the counts would be short.
#[tokio::test]
async fn a_database_outage_commits_nothing_past_unapplied_records() {
    let _serial = crate::one_at_a_time().await;
    let context = TestContext::new();
    let (users, created) = new_users(400);
    publish(&context, &created).await;
    let consumer = context.start_consumer_process(NO_PRODUCER, &[]).await;
    let pool = context.consumer_pool().await;
    wait_for_processed(&pool, 100, Duration::from_secs(60)).await;
    pool.close().await;

    let database = context.consumer_database_url.rsplit('/').next().unwrap().to_owned();
    let mut admin = PgConnection::connect(&format!("{}/postgres", e2e::database_server_url()))
        .await
        .unwrap();
    sqlx::query(&format!("ALTER DATABASE {database} ALLOW_CONNECTIONS false"))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&database)
        .execute(&mut admin)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    consumer.kill().await;
    sqlx::query(&format!("ALTER DATABASE {database} ALLOW_CONNECTIONS true"))
        .execute(&mut admin)
        .await
        .unwrap();

    let consumer = context.start_consumer_process(NO_PRODUCER, &[]).await;
    let pool = context.consumer_pool().await;
    publish_tokens_then_assert_exact_state(&context, &pool, &users, 1).await;
    consumer.kill().await;
    pool.close().await;
    context.drop_databases().await;
}

/// 3000 users and 1 token each. Mid-stream (while workers are in the
/// middle of their transactions) the consumer's database stops
/// answering, as a server that froze or a connection the network dropped
/// without a reset would: through a proxy, every open connection goes into
/// a black hole for good, and new ones hang for 3 s, then work again. The
/// consumer gives up each call at its deadline (statement timeout 1 s here,
/// so 6 s for a parking call and 6.5 s for a handling), the server ends the
/// frozen transactions (`idle_in_transaction_session_timeout`, 2 s here)
/// and with them their row locks, readiness says `database` meanwhile, and
/// every record is applied exactly once, in order, with nothing
/// dead-lettered and no restart. Before, a worker waited on its frozen
/// connection for ever, and each released connection that never answered
/// kept a slot of the pool.
#[tokio::test]
async fn a_database_that_stops_answering_holds_up_no_partition_for_good() {
    let _serial = crate::one_at_a_time().await;
    let context = TestContext::new();
    let (users, created) = new_users(3000);
    publish(&context, &created).await;
    // postgres://user@host:port/database, with the proxy as host:port.
    let url = &context.consumer_database_url;
    let authority = url.split('@').nth(1).and_then(|rest| rest.split('/').next()).unwrap();
    let proxy = FaultProxy::start(authority.to_owned(), Mode::Forward).await;
    let proxied = url.replace(authority, &format!("127.0.0.1:{}", proxy.port));
    let consumer = context
        .start_consumer_process(
            NO_PRODUCER,
            &[
                ("APP_DATABASE__URL", &proxied),
                ("APP_DATABASE__STATEMENT_TIMEOUT_MS", "1000"),
                // The frozen connections' transactions hold row locks that
                // the retries wait for, until the server ends them.
                ("APP_DATABASE__IDLE_IN_TRANSACTION_TIMEOUT_MS", "2000"),
                // Rounds 1, 2, 4, 4 s apart: longer than the locks are held.
                ("APP_RETRY__TOPIC_INITIAL_DELAY_MS", "1000"),
                ("APP_RETRY__TOPIC_MAX_DELAY_MS", "4000"),
            ],
        )
        .await;
    let pool = context.consumer_pool().await;
    wait_for_processed(&pool, 200, Duration::from_secs(60)).await;

    proxy.set(Mode::BlackHole);
    let client = Client::new();
    let ready = format!("{}/health/ready", consumer.url());
    let said = eventually(Duration::from_secs(20), "readiness to name the database", || async {
        let response = client.get(&ready).send().await.ok()?;
        let body = response.text().await.ok()?;
        body.contains("database").then_some(body)
    })
    .await;
    assert!(said.contains("not_ready"), "{said}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set(Mode::Forward);

    publish_tokens_then_assert_exact_state(&context, &pool, &users, 1).await;
    eventually(Duration::from_secs(20), "readiness back", || async {
        let response = client.get(&ready).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    consumer.kill().await;
    pool.close().await;
    context.drop_databases().await;
}

/// The consumer's producer look-ups (a token for a user it has not seen)
/// first hang past the client timeout, then are refused, then work again.
/// 6 users, 3 tokens each (18 records). The records go through in-place
/// retries and the retry topic, later tokens of a user are parked behind
/// the first, and all end up applied exactly once, in per-user order, with
/// nothing dead-lettered.
#[tokio::test]
async fn records_survive_a_failing_producer_through_the_retry_topic_in_per_user_order() {
    let _serial = crate::one_at_a_time().await;
    let (context, producer, users) = users_the_consumer_has_not_seen(6).await;
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", producer.port), Mode::Stall).await;
    let consumer = context.start_consumer_process(&proxy.url(), &[]).await;
    publish(&context, &tokens_for(&users, 3)).await;

    let kafka = context.kafka();
    let retry_topic = kafka.topics.name(Topic::Retry).to_owned();
    eventually(Duration::from_secs(30), "records parked on the retry topic", || async {
        let parked = kafka_service::reader::read_topic(&kafka, &retry_topic).await.ok()?;
        (parked.len() >= users.len()).then_some(())
    })
    .await;
    proxy.set(Mode::Refuse);
    tokio::time::sleep(Duration::from_millis(600)).await;
    proxy.set(Mode::Forward);

    let pool = context.consumer_pool().await;
    assert_all_applied_once_in_order(&context, &pool, 18, &users, 3).await;

    consumer.kill().await;
    pool.close().await;
    producer.stop().await.unwrap();
    context.drop_databases().await;
}

/// The producer is down for 15 s, about seven times the retry schedule as
/// shortened here (2 tries in place, 2 rounds 0.5 s and 1 s apart: about
/// 2 s in all), while the consumer asks it about 6 users it has not seen,
/// 3 tokens each. The producer's circuit opens after 3 failed calls, and
/// from then on the tokens wait on the retry topic without counting tries
/// or rounds: nothing is dead-lettered, and once the producer is back all
/// 18 are applied once each, in per-user order. Meanwhile 10 users the
/// consumer knows get 2 tokens each, which need no producer and are applied
/// during the outage; the circuit is `open` in readiness' body and in
/// `dependency_circuit_state`, and `closed` again at the end. (Before the
/// breaker, every waiting token was dead-lettered, `exhausted`, about 2 s
/// into the outage.)
#[tokio::test]
async fn a_producer_outage_longer_than_the_retry_schedule_dead_letters_nothing() {
    let _serial = crate::one_at_a_time().await;
    let (context, producer, strangers) = users_the_consumer_has_not_seen(6).await;
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", producer.port), Mode::Refuse).await;
    let consumer = context
        .start_consumer_process(
            &proxy.url(),
            &[
                ("APP_RETRY__ATTEMPTS", "2"),
                ("APP_RETRY__INITIAL_DELAY_MS", "50"),
                ("APP_RETRY__MAX_DELAY_MS", "100"),
                ("APP_RETRY__MAX_ELAPSED_MS", "200"),
                ("APP_RETRY__TOPIC_ROUNDS", "2"),
                ("APP_RETRY__TOPIC_INITIAL_DELAY_MS", "500"),
                ("APP_RETRY__TOPIC_MULTIPLIER", "2"),
                ("APP_RETRY__TOPIC_MAX_DELAY_MS", "1000"),
                ("APP_CIRCUIT_BREAKER__FAILURE_THRESHOLD", "3"),
                ("APP_CIRCUIT_BREAKER__OPEN_MIN_SECS", "1"),
                ("APP_CIRCUIT_BREAKER__OPEN_MAX_SECS", "2"),
            ],
        )
        .await;
    let outage = std::time::Instant::now();
    publish(&context, &tokens_for(&strangers, 3)).await;
    let client = Client::new();
    let circuit = |state: &'static str| {
        let (client, url) = (&client, consumer.url());
        async move {
            let text = e2e::metrics::scrape(client, &url).await;
            e2e::metrics::samples(&text, "dependency_circuit_state")
                .iter()
                .any(|(labels, value)| labels["dependency"] == "producer" && *value == state_value(state))
                .then_some(())
        }
    };
    eventually(Duration::from_secs(20), "the producer's circuit open", || {
        circuit("open")
    })
    .await;
    let ready = client
        .get(format!("{}/health/ready", consumer.url()))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_ne!(body["circuits"]["producer"], "closed", "{body}");

    let pool = context.consumer_pool().await;
    let (known, created) = new_users(10);
    publish(&context, &created).await;
    wait_for_processed(&pool, 10, Duration::from_secs(30)).await;
    publish(&context, &tokens_for(&known, 2)).await;
    eventually(
        Duration::from_secs(30),
        "known users' tokens applied during the outage",
        || async {
            let counts = e2e::read_model_token_counts(&pool).await;
            known.iter().all(|user| counts.get(user) == Some(&2)).then_some(())
        },
    )
    .await;

    let outage_length = Duration::from_secs(15);
    assert!(outage.elapsed() < outage_length, "the outage is still on");
    tokio::time::sleep(outage_length - outage.elapsed()).await;
    assert!(
        dead_letters(&context).await.is_empty(),
        "nothing dead-lettered during the outage"
    );
    proxy.set(Mode::Forward);

    assert_all_applied_once_in_order(&context, &pool, 10 + 20 + 18, &strangers, 3).await;
    eventually(Duration::from_secs(10), "the producer's circuit closed", || {
        circuit("closed")
    })
    .await;

    consumer.kill().await;
    pool.close().await;
    producer.stop().await.unwrap();
    context.drop_databases().await;
}

/// Waits for `events` applied events, then asserts that no more arrive, each
/// of `users` has `tokens` tokens, every user's events were applied in
/// order, nothing is left parked or dead-lettered, and the group's offsets
/// are at the end.
async fn assert_all_applied_once_in_order(
    context: &TestContext,
    pool: &sqlx::PgPool,
    events: i64,
    users: &[Uuid],
    tokens: i64,
) {
    wait_for_processed(pool, events, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(processed_count(pool).await, events, "each event applied once");
    let counts: HashMap<Uuid, i64> = e2e::read_model_token_counts(pool).await;
    for user in users {
        assert_eq!(counts.get(user), Some(&tokens), "tokens of {user}");
    }
    assert_per_user_order(pool).await;
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM parked_records")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(parked, 0, "nothing left parked");
    assert!(dead_letters(context).await.is_empty(), "nothing dead-lettered");
    assert_offsets_at_end(context).await;
}

/// `dependency_circuit_state`'s value for `state`.
fn state_value(state: &str) -> f64 {
    match state {
        "closed" => 0.0,
        "half_open" => 1.0,
        _ => 2.0,
    }
}

/// The producer is down, and one user's token arrives before the user:
/// the token cannot be applied (the consumer cannot ask about the user)
/// and is parked. The user's `user.created`, on the other topic, is applied
/// at once, not parked behind the token: it is what the token waits for.
/// The token's next round then succeeds without the producer. Nothing
/// is dead-lettered. (Parked behind the token, the creation waited until
/// the token had exhausted its rounds and was dead-lettered.)
#[tokio::test]
async fn a_users_creation_is_not_parked_behind_the_token_that_waits_for_it() {
    let context = TestContext::new();
    let consumer = context.spawn_consumer(NO_PRODUCER).await;
    let pool = context.consumer_pool().await;
    let (users, created) = new_users(1);
    publish(&context, &e2e::load::tokens_for(&users, 1)).await;
    eventually(Duration::from_secs(30), "the token parked", || async {
        let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM parked_records")
            .fetch_one(&pool)
            .await
            .ok()?;
        (parked == 1).then_some(())
    })
    .await;

    publish(&context, &created).await;
    eventually(Duration::from_secs(30), "the user and the token applied", || async {
        let counts = e2e::read_model_token_counts(&pool).await;
        (counts.get(&users[0]) == Some(&1)).then_some(())
    })
    .await;
    assert!(dead_letters(&context).await.is_empty(), "nothing dead-lettered");
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM parked_records")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(parked, 0, "nothing left parked");
    let kafka = context.kafka();
    let copies = kafka_service::reader::read_topic(&kafka, kafka.topics.name(Topic::Retry))
        .await
        .unwrap();
    let tokens = kafka.topics.name(Topic::IssuedToken).as_bytes();
    assert!(
        copies
            .iter()
            .all(|copy| copy.header(kafka_service::failure::header::ORIGIN_TOPIC) == Some(tokens)),
        "only the token went through the retry topic, never the user's creation"
    );
    pool.close().await;
    consumer.stop().await.unwrap();
    context.drop_databases().await;
}

/// A context whose producer runs in-process and publishes its
/// `user.created.v1` events to a topic the consumer does not read, with
/// `count` users created through its API: tokens for them make the consumer
/// ask the producer.
pub async fn users_the_consumer_has_not_seen(count: usize) -> (TestContext, e2e::Service, Vec<Uuid>) {
    let context = TestContext::new();
    let mut settings = context.producer_settings();
    let unread = format!("{}-unread", context.topics.name(Topic::NewUserCreated));
    settings.kafka.topics = settings.kafka.topics.with_name(Topic::NewUserCreated, unread);
    let producer = context.spawn_producer_with(settings).await;
    let client = Client::new();
    let mut users = Vec::with_capacity(count);
    for i in 0..count {
        users.push(create_user(&client, &producer.url(), &format!("lookup{i}")).await.id);
    }
    (context, producer, users)
}
