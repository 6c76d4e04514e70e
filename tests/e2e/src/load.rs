//! Event load produced straight to the topics (what the producer's relay
//! would publish), and the exact-state assertions the failure tests share.

use std::collections::HashMap;
use std::time::Duration;

use events::{TokenIssued, UserCreated, UserEvent};
use futures::future::try_join_all;
use kafka_service::{Envelope, EventProducer, OutgoingRecord, Topic};
use rdkafka::message::{Header, OwnedHeaders};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{eventually, TestContext};

/// Records produced per concurrent burst.
const BURST: usize = 500;

/// The envelope the producer's relay would publish for `event`.
pub fn envelope_of(event: &UserEvent) -> Envelope {
    Envelope {
        id: Uuid::now_v7(),
        event_type: event.event_type().to_owned(),
        source: events::PRODUCER_SOURCE.to_owned(),
        time: event.time(),
        subject: event.user_id().to_string(),
        data: serde_json::to_vec(&event.data()).expect("events serialize"),
    }
}

/// The record `envelope` would be, with its headers as bytes.
pub fn outgoing(envelope: &Envelope) -> OutgoingRecord {
    OutgoingRecord {
        key: Some(envelope.key().to_vec()),
        value: Some(envelope.data.clone()),
        headers: envelope
            .headers()
            .into_iter()
            .map(|(name, value)| (name.to_owned(), Some(value.into_bytes())))
            .collect(),
    }
}

/// `record`'s headers as rust-rdkafka takes them, for tests that write
/// records through rust-rdkafka itself.
pub fn owned_headers(record: &OutgoingRecord) -> OwnedHeaders {
    record
        .headers
        .iter()
        .fold(OwnedHeaders::new(), |headers, (name, value)| {
            headers.insert(Header {
                key: name,
                value: value.as_deref(),
            })
        })
}

/// A `user.created.v1` event for `user_id`.
pub fn user_created(user_id: Uuid) -> UserEvent {
    let short = &user_id.simple().to_string()[..12];
    UserEvent::Created(UserCreated {
        user_id,
        username: format!("load-{short}"),
        email: format!("load-{short}@example.com"),
        created_at: chrono::Utc::now(),
    })
}

/// A `user.token_issued.v1` event for `user_id`.
pub fn token_issued(user_id: Uuid) -> UserEvent {
    let now = chrono::Utc::now();
    UserEvent::TokenIssued(TokenIssued {
        user_id,
        token_id: Uuid::new_v4(),
        issued_at: now,
        expires_at: now + chrono::Duration::minutes(15),
    })
}

/// Provisions this test's topics, then publishes `events` to them, keyed
/// by user, in bursts of 500;
/// records of one user keep their order (one partition, and the idempotent
/// producer does not reorder).
///
/// # Panics
///
/// When a record is not delivered.
pub async fn publish(context: &TestContext, events: &[UserEvent]) {
    let kafka = context.kafka();
    // The services provision their topics at start-up; the load may come
    // first, while consumers keep two cores busy: a longer timeout.
    let mut admin = kafka.clone();
    admin.request_timeout_ms = 15_000;
    kafka_service::ensure_topics(&admin, &kafka.topics.specs(&Topic::ALL))
        .await
        .expect("topics provisioned");
    let producer = EventProducer::new(&kafka, "load").expect("producer");
    for burst in events.chunks(BURST) {
        try_join_all(burst.iter().map(|event| {
            let topic = match event {
                UserEvent::Created(_) => Topic::NewUserCreated,
                UserEvent::TokenIssued(_) => Topic::IssuedToken,
            };
            let envelope = envelope_of(event);
            let producer = &producer;
            let name = kafka.topics.name(topic).to_owned();
            async move { producer.send(&name, &envelope).await }
        }))
        .await
        .expect("load delivered");
    }
}

/// `users` new user ids, and their `user.created.v1` events.
pub fn new_users(users: usize) -> (Vec<Uuid>, Vec<UserEvent>) {
    let ids: Vec<Uuid> = (0..users).map(|_| Uuid::now_v7()).collect();
    let events = ids.iter().map(|&id| user_created(id)).collect();
    (ids, events)
}

/// `per_user` token events for each of `users`, interleaved by user.
pub fn tokens_for(users: &[Uuid], per_user: usize) -> Vec<UserEvent> {
    (0..per_user)
        .flat_map(|_| users.iter().map(|&id| token_issued(id)))
        .collect()
}

/// Rows in the consumer's `processed_events` (0 while the database is not
/// there yet).
pub async fn processed_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM processed_events")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

/// Waits up to `timeout` for `expected` processed events.
pub async fn wait_for_processed(pool: &PgPool, expected: i64, timeout: Duration) {
    eventually(timeout, &format!("{expected} processed events"), || async {
        (processed_count(pool).await >= expected).then_some(())
    })
    .await;
}

/// Waits until every one of `users` has been created in the read model,
/// then issues `tokens_per_user` tokens to each and asserts the exact final
/// state ([`assert_exact_state`]).
pub async fn publish_tokens_then_assert_exact_state(
    context: &TestContext,
    pool: &PgPool,
    users: &[Uuid],
    tokens_per_user: usize,
) {
    let created = i64::try_from(users.len()).expect("count");
    wait_for_processed(pool, created, Duration::from_secs(60)).await;
    publish(context, &tokens_for(users, tokens_per_user)).await;
    let per_user = i64::try_from(tokens_per_user).expect("count");
    assert_exact_state(context, pool, users, per_user).await;
}

/// Asserts the exact final state after `users` were created and each was
/// issued `tokens_per_user` tokens: every event applied exactly once, in
/// per-user order, committed offsets at the end of every event-topic
/// partition, and nothing dead-lettered.
pub async fn assert_exact_state(context: &TestContext, pool: &PgPool, users: &[Uuid], tokens_per_user: i64) {
    let expected_events = i64::try_from(users.len()).expect("count") * (1 + tokens_per_user);
    wait_for_processed(pool, expected_events, Duration::from_secs(120)).await;
    // A short pause, then the count again: nothing applied twice (the
    // primary key would refuse it anyway) and nothing extra arriving late.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        processed_count(pool).await,
        expected_events,
        "every event applied exactly once"
    );

    let counts: HashMap<Uuid, i64> = crate::read_model_token_counts(pool).await;
    assert_eq!(counts.len(), users.len(), "every user in the read model, once");
    for user in users {
        assert_eq!(counts.get(user), Some(&tokens_per_user), "tokens of user {user}");
    }
    assert_per_user_order(pool).await;
    assert_offsets_at_end(context).await;
    let dead = dead_letters(context).await;
    assert!(dead.is_empty(), "nothing dead-lettered, got {} records", dead.len());
}

/// Asserts that each user's events of one topic were applied in the order
/// of their offsets on that topic (`processed_events.sequence` is the
/// application order; topic/partition/offset the record's origin).
pub async fn assert_per_user_order(pool: &PgPool) {
    let rows: Vec<(Option<String>, String, i32, i64)> =
        sqlx::query_as("SELECT subject, topic, \"partition\", \"offset\" FROM processed_events ORDER BY sequence")
            .fetch_all(pool)
            .await
            .expect("processed events");
    let mut last: HashMap<(Option<String>, String), (i32, i64)> = HashMap::new();
    for (subject, topic, partition, offset) in rows {
        if let Some(&(last_partition, last_offset)) = last.get(&(subject.clone(), topic.clone())) {
            assert_eq!(partition, last_partition, "one partition per user and topic");
            assert!(
                offset > last_offset,
                "user {subject:?} on {topic}: offset {offset} applied after {last_offset}"
            );
        }
        last.insert((subject, topic), (partition, offset));
    }
}

/// Waits until the group's committed offset equals the high watermark on
/// every partition of both event topics.
pub async fn assert_offsets_at_end(context: &TestContext) {
    let kafka = context.kafka();
    let names = [
        kafka.topics.name(Topic::NewUserCreated),
        kafka.topics.name(Topic::IssuedToken),
    ];
    eventually(
        Duration::from_secs(30),
        "committed offsets at the high watermarks",
        || {
            let kafka = &kafka;
            let names = &names;
            async move {
                let offsets = kafka_service::group_offsets(kafka, &context.group_id, names)
                    .await
                    .ok()?;
                (offsets.len() == 16 && offsets.iter().all(|p| p.lag() == 0)).then_some(())
            }
        },
    )
    .await;
}

/// Every record on this test's dead-letter topic.
pub async fn dead_letters(context: &TestContext) -> Vec<kafka_service::Record> {
    let kafka = context.kafka();
    kafka_service::reader::read_topic(&kafka, kafka.topics.name(Topic::DeadLetter))
        .await
        .expect("dead-letter topic readable")
}
