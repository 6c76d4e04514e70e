//! Retention: the producer deletes published outbox rows past
//! `outbox.retention`, in bounded batches, one instance at a time, and
//! never a row that is not published; the consumer deletes applied events'
//! ids past `inbox.retention`, and the live feed says when it cannot
//! replay.

use std::time::Duration;

use e2e::{create_user, eventually, issue_token, TestContext};
use kafka_service::{EventProducer, OutgoingRecord, Topic};
use reqwest::{Client, StatusCode};
use secrecy::ExposeSecret;
use serde_json::Value;
use sqlx::PgPool;

/// The advisory lock the outbox's pruner takes (`outbox::pruning`).
const OUTBOX_PRUNE_LOCK_KEY: i64 = 0x6f75_7470_7275;

/// 2500 rows published two days ago (retention: 1 hour) and two rows as
/// old that were never published: one failing, one set aside. While
/// another session holds the pruning lock nothing is deleted; once it lets
/// go, the old published rows are deleted in batches of 100 while users
/// are created and their events published, and the two unpublished rows
/// and every new row stay.
#[tokio::test]
async fn old_published_rows_are_pruned_while_the_relay_publishes_and_unpublished_rows_stay() {
    const OLD_PUBLISHED: i64 = 2500;
    let context = TestContext::new();
    let mut settings = context.producer_settings();
    settings.outbox.retention.hours = 1;
    settings.outbox.retention.batch_size = 100;
    settings.outbox.retention.interval_ms = 200;
    let producer = context.spawn_producer_with(settings).await;
    let pool = context.producer_pool().await;

    // Another instance is pruning: this session holds the lock.
    let mut other = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(OUTBOX_PRUNE_LOCK_KEY)
        .execute(&mut *other)
        .await
        .unwrap();
    let kept = insert_old_rows(&pool, OLD_PUBLISHED).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        old_published(&pool).await,
        OLD_PUBLISHED,
        "nothing is deleted while another instance holds the lock"
    );

    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(OUTBOX_PRUNE_LOCK_KEY)
        .execute(&mut *other)
        .await
        .unwrap();
    let client = Client::new();
    let mut users = Vec::new();
    for i in 0..20 {
        users.push(create_user(&client, &producer.url(), &format!("retained{i}")).await);
    }
    eventually(Duration::from_secs(20), "old published rows deleted", || async {
        (old_published(&pool).await == 0).then_some(())
    })
    .await;
    eventually(Duration::from_secs(20), "the new users' events published", || async {
        let published: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE subject = ANY($1) AND published_at IS NOT NULL")
                .bind(users.iter().map(|user| user.id.to_string()).collect::<Vec<_>>())
                .fetch_one(&pool)
                .await
                .unwrap();
        (published == 20).then_some(())
    })
    .await;

    let left: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM outbox WHERE occurred_at < now() - interval '1 day' ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(left, kept, "the failing and the set-aside row stay");
    let metrics = e2e::metrics::scrape(&client, &producer.url()).await;
    assert_eq!(
        e2e::metrics::samples(&metrics, "outbox_pruned_rows_total")[0].1,
        OLD_PUBLISHED as f64
    );
    let age = e2e::metrics::samples(&metrics, "outbox_oldest_age_seconds")[0].1;
    assert!(
        age < 3600.0,
        "the oldest published row kept is younger than the retention: {age} s"
    );
}

/// Inserts `published` rows published two days ago, then a failing row
/// and a set-aside row that occurred as long ago but were never published;
/// returns the ids of the last two.
async fn insert_old_rows(pool: &PgPool, published: i64) -> Vec<i64> {
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, subject, occurred_at, data, published_at) \
         SELECT gen_random_uuid(), 'user.created', gen_random_uuid()::text, \
                now() - interval '2 days', '{}', now() - interval '2 days' \
         FROM generate_series(1, $1)",
    )
    .bind(published)
    .execute(pool)
    .await
    .unwrap();
    let failing: i64 = sqlx::query_scalar(
        "INSERT INTO outbox (event_id, event_type, subject, occurred_at, data, attempts, last_error, next_attempt_at) \
         VALUES (gen_random_uuid(), 'user.renamed', gen_random_uuid()::text, now() - interval '2 days', '{}', \
                 9, 'unknown event type', now() + interval '1 day') RETURNING id",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let set_aside: i64 = sqlx::query_scalar(
        "INSERT INTO outbox (event_id, event_type, subject, occurred_at, data, attempts, set_aside_at, set_aside_reason) \
         VALUES (gen_random_uuid(), 'user.renamed', gen_random_uuid()::text, now() - interval '2 days', '{}', \
                 9, now() - interval '2 days', 'not ours') RETURNING id",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    vec![failing, set_aside]
}

/// Rows published more than a day ago.
async fn old_published(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at < now() - interval '1 day'")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// 500 applied events' ids from two days ago (retention: 1 hour) are
/// deleted; a user's token record, applied, then written to its topic again
/// as a redrive does, is deduplicated (the id is inside the window) and
/// applied once. The live feed answers `410` to a resume from before the
/// deleted ids, and replays from after them.
#[tokio::test]
async fn a_redriven_record_inside_the_window_is_applied_once_and_the_feed_says_what_it_cannot_replay() {
    let context = TestContext::new();
    let producer = context.spawn_producer().await;
    let mut settings = context.consumer_settings(&producer.url());
    settings.inbox.retention.hours = 1;
    settings.inbox.retention.batch_size = 100;
    settings.inbox.retention.interval_ms = 200;
    let group_id = settings.consumer.group_id.clone();
    let consumer = context.spawn_consumer_with(settings).await;
    let pool = context.consumer_pool().await;
    sqlx::query(
        "INSERT INTO processed_events (event_id, event_type, topic, \"partition\", \"offset\", processed_at, subject, event_time) \
         SELECT gen_random_uuid(), 'user.created.v1', 'old-topic', 0, g, now() - interval '2 days', \
                gen_random_uuid()::text, now() - interval '2 days' \
         FROM generate_series(1, 500) AS g",
    )
    .execute(&pool)
    .await
    .unwrap();
    let through: i64 = eventually(Duration::from_secs(20), "old ids deleted", || async {
        let old: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE topic = 'old-topic'")
            .fetch_one(&pool)
            .await
            .unwrap();
        if old > 0 {
            return None;
        }
        consumer::inbox::pruned_through(&pool).await.unwrap()
    })
    .await;

    let client = Client::new();
    let user = create_user(&client, &producer.url(), "redriven").await;
    issue_token(&client, &producer.url(), &user.username).await;
    let kafka = context.kafka();
    let topic = kafka.topics.name(Topic::IssuedToken).to_owned();
    let key = user.id.to_string();
    let token = eventually(Duration::from_secs(30), "the token record", || async {
        let records = kafka_service::reader::read_topic(&kafka, &topic)
            .await
            .unwrap_or_default();
        records
            .into_iter()
            .find(|record| record.key.as_deref() == Some(key.as_bytes()))
    })
    .await;
    eventually(Duration::from_secs(30), "the token applied", || async {
        (tokens_issued(&pool, &user.id).await == 1).then_some(())
    })
    .await;

    // The redrive, then a second token behind it on the same partition.
    let writer = EventProducer::new(&kafka, "redrive").unwrap();
    let copy = OutgoingRecord {
        key: token.key.clone(),
        value: token.value.clone(),
        headers: token.headers.clone(),
    };
    writer.send_record(&topic, &copy).await.expect("redriven");
    issue_token(&client, &producer.url(), &user.username).await;
    let second = eventually(Duration::from_secs(30), "the second token record", || async {
        let records = kafka_service::reader::read_topic(&kafka, &topic)
            .await
            .unwrap_or_default();
        let mine: Vec<_> = records
            .into_iter()
            .filter(|record| record.key.as_deref() == Some(key.as_bytes()))
            .collect();
        (mine.len() == 3).then(|| mine.into_iter().max_by_key(|record| record.offset).unwrap())
    })
    .await;
    eventually(Duration::from_secs(30), "the group past the second token", || async {
        let offsets = kafka_service::group_offsets(&kafka, &group_id, &[&topic]).await.ok()?;
        offsets
            .iter()
            .any(|at| at.partition == second.partition && at.committed > Some(second.offset))
            .then_some(())
    })
    .await;
    assert_eq!(
        tokens_issued(&pool, &user.id).await,
        2,
        "the redriven token was applied once"
    );

    let operator = e2e::token_keys().service_token("operator");
    let resume = |after: i64| {
        client
            .get(format!("{}/events/stream", consumer.url()))
            .bearer_auth(operator.expose_secret())
            .header("Last-Event-ID", after.to_string())
            .send()
    };
    let gone = resume(through - 1).await.unwrap();
    assert_eq!(gone.status(), StatusCode::GONE);
    let body: Value = gone.json().await.unwrap();
    assert_eq!(body["error"]["code"], "replay_window_passed", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("deleted them up to {through}")),
        "{body}"
    );
    let replay = resume(through).await.unwrap();
    assert_eq!(replay.status(), StatusCode::OK, "from the window's start on");
}

async fn tokens_issued(pool: &PgPool, user: &uuid::Uuid) -> i64 {
    sqlx::query_scalar("SELECT tokens_issued FROM users WHERE id = $1")
        .bind(user)
        .fetch_optional(pool)
        .await
        .unwrap()
        .unwrap_or(0)
}
