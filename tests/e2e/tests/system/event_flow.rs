//! The whole flow: HTTP → outbox → Kafka (8 partitions) → consumer with
//! manual commits → read model, with a consumer restart mid-stream.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use e2e::{create_user, eventually, issue_token, read_model_token_counts, TestContext};
use kafka_service::{Envelope, Topic};
use reqwest::Client;

const USERS: usize = 24;
const TOKENS_PER_USER: usize = 3;

#[tokio::test]
async fn every_event_is_applied_exactly_once_across_a_consumer_restart() {
    let context = TestContext::new();
    let producer = context.spawn_producer().await;
    let consumer = context.spawn_consumer(&producer.url()).await;
    let client = Client::new();

    // First half of the users, with their tokens, while the consumer runs.
    let mut users = Vec::new();
    let mut tokens = Vec::new();
    for _ in 0..USERS / 2 {
        let user = create_user(&client, &producer.url(), "flow").await;
        for _ in 0..TOKENS_PER_USER {
            tokens.push(issue_token(&client, &producer.url(), &user.username).await);
        }
        users.push(user);
    }
    // Stop the consumer as soon as it has applied something: mid-stream.
    let pool = context.consumer_pool().await;
    eventually(
        Duration::from_secs(30),
        "the consumer to apply a first event",
        || async { (!read_model_token_counts(&pool).await.is_empty()).then_some(()) },
    )
    .await;
    consumer.stop().await.expect("consumer stops cleanly");

    // Second half while no consumer runs, then a new member of the group.
    for _ in USERS / 2..USERS {
        let user = create_user(&client, &producer.url(), "flow").await;
        for _ in 0..TOKENS_PER_USER {
            tokens.push(issue_token(&client, &producer.url(), &user.username).await);
        }
        users.push(user);
    }
    let consumer = context.spawn_consumer(&producer.url()).await;

    // Every user, each with exactly its tokens.
    let expected: HashMap<_, _> = users.iter().map(|user| (user.id, TOKENS_PER_USER as i64)).collect();
    eventually(
        Duration::from_secs(60),
        "the read model to hold every user and token",
        || async { (read_model_token_counts(&pool).await == expected).then_some(()) },
    )
    .await;
    let processed: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        processed as usize,
        USERS * (1 + TOKENS_PER_USER),
        "each event applied once"
    );

    // The group's committed offsets reach the end of both topics.
    let names = [
        context.topics.name(Topic::NewUserCreated),
        context.topics.name(Topic::IssuedToken),
    ];
    let offsets = eventually(
        Duration::from_secs(30),
        "committed offsets to reach the end",
        || async {
            let offsets = kafka_service::group_offsets(&context.kafka(), &context.group_id, &names)
                .await
                .ok()?;
            offsets.iter().all(|p| p.lag() == 0).then_some(offsets)
        },
    )
    .await;
    for name in names {
        assert_eq!(
            offsets.iter().filter(|p| p.topic == name).count(),
            8,
            "{name} has 8 partitions"
        );
    }
    let records: i64 = offsets.iter().map(|p| p.high_watermark).sum();
    assert_eq!(records as usize, USERS * (1 + TOKENS_PER_USER), "one record per event");

    consumer.stop().await.unwrap();
    producer.stop().await.unwrap();
    assert_records_keyed_by_user(&context, &names, &users, &tokens).await;
    context.drop_databases().await;
}

/// Reads both topics from the start with a fresh group and checks every
/// record: key = `ce_subject` = the user id, one `user.created.v1` per user,
/// all event ids distinct, and each key in a single partition.
async fn assert_records_keyed_by_user(
    context: &TestContext,
    names: &[&str],
    users: &[e2e::CreatedUser],
    tokens: &[String],
) {
    // Every record matches the contract in docs/events/: its headers, and
    // its value against its type's schema.
    let contract = |file: &str| {
        let path = format!("{}/../../docs/events/{file}", env!("CARGO_MANIFEST_DIR"));
        let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap_or_else(|error| panic!("{path}: {error}"))
    };
    let headers_schema = contract("headers.json");
    let data_schemas: HashMap<&str, _> = events::UserEvent::ACCEPTED_TYPES
        .iter()
        .map(|event_type| (*event_type, contract(&format!("{event_type}.json"))))
        .collect();
    // No event carries a password, a hash or an access token, in its value
    // or its headers.
    let secrets: Vec<&str> = [e2e::PASSWORD, "$argon2"]
        .into_iter()
        .chain(tokens.iter().map(String::as_str))
        .collect();
    let mut records = Vec::new();
    for name in names {
        records.extend(kafka_service::reader::read_topic(&context.kafka(), name).await.unwrap());
    }
    let total = users.len() * (1 + TOKENS_PER_USER);
    assert_eq!(records.len(), total, "one record per event");
    let user_ids: HashSet<String> = users.iter().map(|user| user.id.to_string()).collect();
    let mut event_ids = HashSet::new();
    let mut partitions_of_key: HashMap<String, HashSet<i32>> = HashMap::new();
    let mut created = 0;
    for record in &records {
        let envelope = Envelope::decode(record).expect("records are valid envelopes");
        assert!(user_ids.contains(&envelope.subject), "key is one of our user ids");
        assert_eq!(record.key.as_deref(), Some(envelope.subject.as_bytes()));
        assert!(event_ids.insert(envelope.id), "event ids are unique");
        partitions_of_key
            .entry(envelope.subject.clone())
            .or_default()
            .insert(record.partition);
        if envelope.event_type == "user.created.v1" {
            assert_eq!(record.topic, names[0]);
            created += 1;
        }
        let data: serde_json::Value = serde_json::from_slice(&envelope.data).unwrap();
        assert_eq!(data["user_id"], envelope.subject.as_str());
        let header_object: serde_json::Map<String, serde_json::Value> = record
            .headers
            .iter()
            .map(|(name, value)| {
                let text = String::from_utf8(value.clone().unwrap_or_default()).expect("UTF-8 headers");
                (name.clone(), serde_json::Value::String(text))
            })
            .collect();
        let header_object = serde_json::Value::Object(header_object);
        let problems: Vec<String> = headers_schema
            .iter_errors(&header_object)
            .map(|e| e.to_string())
            .collect();
        assert!(
            problems.is_empty(),
            "headers break docs/events/headers.json: {problems:?}"
        );
        let schema = &data_schemas[envelope.event_type.as_str()];
        let problems: Vec<String> = schema.iter_errors(&data).map(|e| e.to_string()).collect();
        assert!(
            problems.is_empty(),
            "{} data breaks its schema: {problems:?}",
            envelope.event_type
        );
        assert!(data.get("password").is_none() && data.get("password_hash").is_none());
        let value = String::from_utf8_lossy(record.value.as_deref().unwrap_or_default());
        let headers: Vec<_> = record
            .headers
            .iter()
            .filter_map(|(_, value)| value.as_deref().map(String::from_utf8_lossy))
            .collect();
        for secret in &secrets {
            assert!(
                !value.contains(secret) && !headers.iter().any(|header| header.contains(secret)),
                "an event carries a secret"
            );
        }
    }
    assert_eq!(created, users.len());
    assert!(
        partitions_of_key.values().all(|p| p.len() <= 2),
        "a key stays in one partition per topic"
    );
}

/// A transaction appends a token event for a user and stays open; a login
/// of the same user comes meanwhile, and the transaction commits 500 ms
/// later. The login's record must not reach the partition before the
/// earlier transaction's, and the event times (`ce_time`) along the
/// partition must not go backwards: the login waits for the user's lock
/// and takes its time after it.
#[tokio::test]
async fn one_users_events_reach_their_partition_in_commit_order() {
    let context = TestContext::new();
    let producer = context.spawn_producer().await;
    let client = Client::new();
    let user = create_user(&client, &producer.url(), "order").await;
    let pool = context.producer_pool().await;

    let mut tx = pool.begin().await.unwrap();
    producer::outbox::lock_subject(&mut tx, user.id).await.unwrap();
    // Whole seconds, as a token's times are (they are the JWT's `iat`).
    let now = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 0);
    let earlier = events::TokenIssued {
        user_id: user.id,
        token_id: uuid::Uuid::new_v4(),
        issued_at: now,
        expires_at: now + chrono::Duration::minutes(15),
    };
    producer::outbox::append(&mut tx, &events::UserEvent::TokenIssued(earlier.clone()))
        .await
        .unwrap();
    let url = producer.url();
    let username = user.username.clone();
    let login = tokio::spawn(async move { issue_token(&Client::new(), &url, &username).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    tx.commit().await.unwrap();
    producer::outbox::notify(&pool).await;
    login.await.unwrap();

    let kafka = context.kafka();
    let topic = kafka.topics.name(Topic::IssuedToken).to_owned();
    let key = user.id.to_string();
    let records = eventually(Duration::from_secs(30), "both token records", || async {
        let records: Vec<_> = kafka_service::reader::read_topic(&kafka, &topic)
            .await
            .ok()?
            .into_iter()
            .filter(|record| record.key.as_deref() == Some(key.as_bytes()))
            .collect();
        (records.len() == 2).then_some(records)
    })
    .await;
    let envelopes: Vec<Envelope> = records
        .iter()
        .map(|record| Envelope::decode(record).expect("a valid envelope"))
        .collect();
    let token_of = |envelope: &Envelope| {
        let data: serde_json::Value = serde_json::from_slice(&envelope.data).unwrap();
        data["token_id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap()
    };
    assert_eq!(
        token_of(&envelopes[0]),
        earlier.token_id,
        "the transaction that committed first reached the partition first"
    );
    assert!(
        envelopes[0].time <= envelopes[1].time,
        "ce_time {} after {}",
        envelopes[1].time,
        envelopes[0].time
    );
    pool.close().await;
    producer.stop().await.unwrap();
    context.drop_databases().await;
}
