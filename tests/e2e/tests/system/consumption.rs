//! Operator control over consumption: a paused topic stays paused on every
//! member of the group, across a restart and a rebalance, until resumed.

use std::time::Duration;

use e2e::{create_user, eventually, issue_token, TestContext};
use kafka_service::Topic;
use reqwest::{Client, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// The token topic paused with a reason: a user's creation is applied and
/// the user's token is not; the member stays ready (its stall bound is
/// 2 s) while the paused partition's lag counts the token. The member is
/// replaced by two new ones (a restart and a rebalance): still paused.
/// Resumed, the token is applied. A user token gets `403`, a topic the
/// group does not consume `422`, resuming what is not paused `404`.
#[tokio::test]
async fn a_paused_topic_stays_paused_on_every_member_and_across_restarts_until_resumed() {
    let context = TestContext::new();
    let producer = context.spawn_producer().await;
    let mut settings = context.consumer_settings(&producer.url());
    settings.readiness.stall_after_ms = 2000;
    let first = context.spawn_consumer_with(settings.clone()).await;
    let client = Client::new();
    let operator = e2e::token_keys().service_token("operator");
    let operator = operator.expose_secret();
    let kafka = context.kafka();
    let issued = kafka.topics.name(Topic::IssuedToken).to_owned();

    let paused = client
        .post(format!("{}/consumption/pause", first.url()))
        .bearer_auth(operator)
        .json(&json!({"topic": issued, "reason": "migrating the read model"}))
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status(), StatusCode::OK);
    let body: Value = paused.json().await.unwrap();
    assert_eq!(body["reason"], "migrating the read model");
    assert_eq!(body["partition"], Value::Null);
    // Every member reads the pauses every second.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let user = create_user(&client, &producer.url(), "paused").await;
    issue_token(&client, &producer.url(), &user.username).await;
    let pool = context.consumer_pool().await;
    eventually(Duration::from_secs(30), "the user applied", || async {
        user_exists(&pool, user.id).await.then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(20),
        "the paused partition's lag counts the token",
        || async {
            let text = e2e::metrics::scrape(&client, &first.url()).await;
            let lag: f64 = e2e::metrics::samples(&text, "kafka_consumer_lag_records")
                .iter()
                .filter(|(labels, _)| labels.get("topic") == Some(&issued))
                .map(|(_, lag)| lag)
                .sum();
            (lag == 1.0).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(tokens_issued(&pool, user.id).await, 0, "the token waits while paused");
    let ready = client
        .get(format!("{}/health/ready", first.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "a paused partition is not a stall");

    // A restart, and a second member: the pause holds on both.
    first.stop().await.unwrap();
    let second = context.spawn_consumer_with(settings.clone()).await;
    let third = context.spawn_consumer_with(settings).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        tokens_issued(&pool, user.id).await,
        0,
        "still paused after a restart and a rebalance"
    );
    let listed: Value = client
        .get(format!("{}/consumption/pauses", third.url()))
        .bearer_auth(operator)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["pauses"].as_array().unwrap().len(), 1, "{listed}");

    let resumed = client
        .post(format!("{}/consumption/resume", second.url()))
        .bearer_auth(operator)
        .json(&json!({"topic": issued}))
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), StatusCode::NO_CONTENT);
    eventually(Duration::from_secs(30), "the token applied once resumed", || async {
        (tokens_issued(&pool, user.id).await == 1).then_some(())
    })
    .await;

    let user_token = issue_token(&client, &producer.url(), &user.username).await;
    for (token, body, status) in [
        (
            user_token.as_str(),
            json!({"topic": issued, "reason": "x"}),
            StatusCode::FORBIDDEN,
        ),
        (
            operator,
            json!({"topic": "no-such-topic", "reason": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            operator,
            json!({"topic": issued, "partition": -1, "reason": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            operator,
            json!({"topic": issued, "reason": ""}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let answer = client
            .post(format!("{}/consumption/pause", second.url()))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), status, "{body}");
    }
    let nothing = client
        .post(format!("{}/consumption/resume", second.url()))
        .bearer_auth(operator)
        .json(&json!({"topic": issued, "partition": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(nothing.status(), StatusCode::NOT_FOUND);
}

async fn user_exists(pool: &PgPool, id: Uuid) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn tokens_issued(pool: &PgPool, id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT tokens_issued FROM users WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A read model restored from a backup lacks what was applied after it:
/// 10 users get a token, the read model and its inbox are backed up, each
/// user gets a second token, and the backup is restored. The group's
/// offsets are past the second tokens, so it will not bring them back. A
/// replay of the token topic from before the first tokens does, through
/// the inbox: it reports the 10 second tokens applied and the 10 first
/// ones duplicates, each user has exactly 2 tokens, and the group's
/// committed offsets are the same before and after. A user token gets
/// `403`; the retry topic, a time in the future and one before the
/// deduplication window get `422`.
#[tokio::test]
async fn a_replay_through_the_inbox_brings_back_what_a_restored_backup_lacks_and_leaves_the_groups_offsets_alone() {
    let context = TestContext::new();
    let consumer = context.spawn_consumer(e2e::process::NO_PRODUCER).await;
    let pool = context.consumer_pool().await;
    let (users, created) = e2e::load::new_users(10);
    e2e::load::publish(&context, &created).await;
    e2e::load::wait_for_processed(&pool, 10, Duration::from_secs(30)).await;
    // Kafka timestamps are this machine's clock, in milliseconds.
    let before_tokens = chrono::Utc::now() - chrono::Duration::seconds(1);
    e2e::load::publish(&context, &e2e::load::tokens_for(&users, 1)).await;
    e2e::load::wait_for_processed(&pool, 20, Duration::from_secs(30)).await;
    for statement in [
        "CREATE TABLE users_backup AS SELECT * FROM users",
        "CREATE TABLE processed_events_backup AS SELECT * FROM processed_events",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    e2e::load::publish(&context, &e2e::load::tokens_for(&users, 1)).await;
    e2e::load::wait_for_processed(&pool, 30, Duration::from_secs(30)).await;
    e2e::load::assert_offsets_at_end(&context).await;
    let mut restore = pool.begin().await.unwrap();
    for statement in [
        "TRUNCATE users, processed_events",
        "INSERT INTO users SELECT * FROM users_backup",
        "INSERT INTO processed_events SELECT * FROM processed_events_backup",
    ] {
        sqlx::query(statement).execute(&mut *restore).await.unwrap();
    }
    restore.commit().await.unwrap();
    let kafka = context.kafka();
    let event_topics = [
        kafka.topics.name(Topic::NewUserCreated),
        kafka.topics.name(Topic::IssuedToken),
    ];
    let committed = || async {
        kafka_service::group_offsets(&kafka, &context.group_id, &event_topics)
            .await
            .unwrap()
    };
    let offsets_before = committed().await;

    let client = Client::new();
    let operator = e2e::token_keys().service_token("operator");
    let operator = operator.expose_secret();
    let replays = format!("{}/consumption/replays", consumer.url());
    let issued = kafka.topics.name(Topic::IssuedToken);
    let ask = |token: &str, body: Value| client.post(&replays).bearer_auth(token).json(&body).send();
    let user_token = e2e::token_keys().issue_user_token(users[0], chrono::Duration::seconds(60));
    let forbidden = ask(
        user_token.token.expose_secret(),
        json!({"topic": issued, "from": before_tokens, "reason": "restore"}),
    )
    .await
    .unwrap();
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    let long_ago = chrono::Utc::now() - chrono::Duration::days(40);
    let tomorrow = chrono::Utc::now() + chrono::Duration::days(1);
    for (topic, from) in [
        (kafka.topics.name(Topic::Retry), before_tokens),
        (issued, tomorrow),
        (issued, long_ago),
    ] {
        let refused = ask(operator, json!({"topic": topic, "from": from, "reason": "restore"}))
            .await
            .unwrap();
        assert_eq!(
            refused.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{topic} from {from}"
        );
    }

    let asked = ask(
        operator,
        json!({"topic": issued, "from": before_tokens, "reason": "restored from last night's backup"}),
    )
    .await
    .unwrap();
    assert_eq!(asked.status(), StatusCode::ACCEPTED);
    let replay: Value = asked.json().await.unwrap();
    assert_eq!(replay["reason"], "restored from last night's backup");
    let done = eventually(Duration::from_secs(30), "the replay done", || async {
        let list: Value = client
            .get(&replays)
            .bearer_auth(operator)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let replay = list["replays"][0].clone();
        (replay["state"] == "done").then_some(replay)
    })
    .await;
    assert_eq!(done["id"], replay["id"]);
    assert_eq!(
        (
            &done["applied"],
            &done["duplicates"],
            &done["rejected"],
            &done["remaining"]
        ),
        (&json!(10), &json!(10), &json!(0), &json!(0)),
        "{done}"
    );
    let counts = e2e::read_model_token_counts(&pool).await;
    for user in &users {
        assert_eq!(counts.get(user), Some(&2), "tokens of {user}");
    }
    assert_eq!(e2e::load::processed_count(&pool).await, 30);
    assert_eq!(
        committed().await,
        offsets_before,
        "the group's committed offsets untouched"
    );

    pool.close().await;
    consumer.stop().await.unwrap();
    context.drop_databases().await;
}
