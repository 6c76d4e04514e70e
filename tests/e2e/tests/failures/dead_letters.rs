//! Poison records, records that exhaust the retry schedule, and the
//! operator endpoints that list and redrive dead letters.

use std::time::Duration;

use e2e::load::{
    assert_offsets_at_end, dead_letters, envelope_of, new_users, outgoing, owned_headers, processed_count, publish,
    token_issued, wait_for_processed,
};
use e2e::process::{ServiceProcess, BREAKER_NEVER_OPENS, NO_PRODUCER};
use e2e::proxy::{FaultProxy, Mode};
use e2e::{eventually, TestContext};
use kafka_service::failure::header;
use kafka_service::producer::PARTITIONER;
use kafka_service::{Delivery, EventProducer, OutgoingRecord, Topic};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use reqwest::Client;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::header_text;
use crate::outages::users_the_consumer_has_not_seen;

/// Produced straight to `issued-token`: a good token for user A, then 16
/// hostile records (a value that is not JSON, of the wrong shape, 256 KiB
/// of garbage or absent; an unknown, repeated or missing `ce_type`; no
/// headers at all; header bytes that are not UTF-8; an id, time, spec
/// version or content type that is invalid; a null `ce_subject`; a key or
/// subject that is not the data's user; a valid event with one more header
/// whose *name* is not UTF-8), then another good token for A and one for
/// user B. Each hostile record lands in the dead-letter topic with its
/// original key, value and (readable) headers and an `error-message` that
/// names what is wrong; the good records behind them are applied.
#[tokio::test]
async fn poison_records_are_dead_lettered_and_the_records_behind_them_processed() {
    let _serial = crate::one_at_a_time().await;
    let (context, consumer, pool, [a, b]) = two_users_applied().await;

    let kafka = context.kafka();
    let topic = kafka.topics.name(Topic::IssuedToken).to_owned();
    let producer = EventProducer::new(&kafka, "poison").unwrap();
    let good = outgoing(&envelope_of(&token_issued(a)));
    let with_header = |name: &str, value: Option<&[u8]>| {
        let mut record = outgoing(&envelope_of(&token_issued(a)));
        for (header, old) in &mut record.headers {
            if header == name {
                *old = value.map(<[u8]>::to_vec);
            }
        }
        record
    };
    let mut not_json = outgoing(&envelope_of(&token_issued(a)));
    not_json.value = Some(b"{not json".to_vec());
    let mut no_headers = outgoing(&envelope_of(&token_issued(a)));
    no_headers.headers.clear();
    let mut no_value = outgoing(&envelope_of(&token_issued(a)));
    no_value.value = None;
    let mut wrong_types = outgoing(&envelope_of(&token_issued(a)));
    wrong_types.value = Some(br#"{"user_id": 42, "token_id": [], "issued_at": null}"#.to_vec());
    let mut huge = outgoing(&envelope_of(&token_issued(a)));
    huge.value = Some(vec![b'A'; 256 * 1024]);
    let mut other_key = outgoing(&envelope_of(&token_issued(a)));
    other_key.key = Some(b.to_string().into_bytes());
    // Key and ce_subject agree with each other but not with the data.
    let mut other_subject = with_header("ce_subject", Some(b.to_string().as_bytes()));
    other_subject.key = Some(b.to_string().into_bytes());
    let mut repeated_type = outgoing(&envelope_of(&token_issued(a)));
    repeated_type
        .headers
        .insert(0, ("ce_type".to_owned(), Some(b"user.deleted.v9".to_vec())));
    // Each hostile record, and what its dead letter's error-message names.
    let poison = [
        (not_json, "invalid data"),
        (with_header("ce_type", Some(b"user.deleted.v9")), "unknown event type"),
        (no_headers, "missing header `ce_specversion`"),
        (
            with_header("ce_id", Some(b"\xff\xfe not utf-8")),
            "invalid header `ce_id`: not UTF-8",
        ),
        (with_header("ce_id", Some(b"not-a-uuid")), "invalid header `ce_id`"),
        (with_header("ce_time", Some(b"yesterday")), "invalid header `ce_time`"),
        (
            with_header("ce_specversion", Some(b"2.0")),
            "invalid header `ce_specversion`",
        ),
        (
            with_header("content-type", Some(b"application/x-java-serialized-object")),
            "invalid header `content-type`",
        ),
        (with_header("ce_subject", None), "missing header `ce_subject`"),
        (no_value, "record has no value"),
        (wrong_types, "invalid data"),
        (huge, "invalid data"),
        (other_key, "record key does not match"),
        (other_subject, "is not the event's user id"),
        (repeated_type, "invalid header `ce_type`: repeated"),
    ];
    let mut poison_offsets = Vec::new();
    producer.send_record(&topic, &good).await.unwrap();
    for (record, _) in &poison {
        poison_offsets.push(producer.send_record(&topic, record).await.unwrap());
    }
    // rust-rdkafka cannot write this one (or read it: it panics).
    let unreadable_name = outgoing(&envelope_of(&token_issued(a)));
    let unreadable_name_at = send_with_raw_header(&kafka.bootstrap_servers, &topic, &unreadable_name).await;
    producer
        .send_record(&topic, &outgoing(&envelope_of(&token_issued(a))))
        .await
        .unwrap();
    producer
        .send_record(&topic, &outgoing(&envelope_of(&token_issued(b))))
        .await
        .unwrap();

    wait_for_processed(&pool, 5, Duration::from_secs(30)).await;
    let dead = eventually(Duration::from_secs(30), "a dead letter per hostile record", || async {
        let dead = dead_letters(&context).await;
        (dead.len() > poison.len()).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), poison.len() + 1);
    let poison = poison
        .iter()
        .map(|(record, reason)| (record, *reason))
        .chain([(&unreadable_name, "1 header name(s) not UTF-8")]);
    let origins = poison_offsets.iter().chain([&unreadable_name_at]);
    for ((original, reason), origin) in poison.zip(origins) {
        // Dead letters keep their key, so they spread over partitions:
        // find each by where it came from.
        let offset = origin.offset;
        let record = dead
            .iter()
            .find(|record| {
                header_text(record, header::ORIGIN_PARTITION) == origin.partition.to_string()
                    && header_text(record, header::ORIGIN_OFFSET) == offset.to_string()
            })
            .unwrap_or_else(|| panic!("no dead letter for {origin:?} ({reason})"));
        assert_eq!(record.key, original.key, "key kept");
        assert_eq!(record.value, original.value, "value kept");
        assert_eq!(header_text(record, header::ERROR_CLASS), "permanent");
        assert_eq!(header_text(record, header::ORIGIN_TOPIC), topic);
        assert_eq!(header_text(record, header::ORIGIN_OFFSET), offset.to_string());
        assert_eq!(header_text(record, header::ATTEMPTS), "1");
        let message = header_text(record, header::ERROR_MESSAGE);
        assert!(
            message.contains(reason),
            "offset {offset}: `{message}` should say `{reason}`"
        );
        assert!(record.header(header::FAILED_AT).is_some());
        for (name, value) in &original.headers {
            assert!(
                record.headers.contains(&(name.clone(), value.clone())),
                "header {name} kept"
            );
        }
    }
    let counts = e2e::read_model_token_counts(&pool).await;
    assert_eq!((counts[&a], counts[&b]), (2, 1));
    assert_eq!(processed_count(&pool).await, 5);
    assert_offsets_at_end(&context).await;

    consumer.kill().await;
    pool.close().await;
    context.drop_databases().await;
}

/// An operator dead-letters a record by its topic, partition and offset
/// (issue 23): for a record that stops its partition on every member in
/// turn, such as one whose handler panics. The request goes through a
/// member that reaches no broker, so nothing consumes meanwhile; the member
/// that then takes the partition dead-letters the record (`permanent`,
/// with the operator's reason) without handling it, and applies the record
/// behind it. Before, no operator action skipped a record by its offset.
#[tokio::test]
async fn an_operator_dead_letters_a_record_by_its_offset_and_its_partition_moves_on() {
    let _serial = crate::one_at_a_time().await;
    let (context, consumer, pool, [a, _]) = two_users_applied().await;
    consumer.terminate(Duration::from_secs(20)).await;
    let kafka = context.kafka();
    let topic = kafka.topics.name(Topic::IssuedToken).to_owned();
    let records = EventProducer::new(&kafka, "stuck").unwrap();
    let (stuck, behind) = (envelope_of(&token_issued(a)), envelope_of(&token_issued(a)));
    let at = records.send(&topic, &stuck).await.unwrap();
    records.send(&topic, &behind).await.unwrap();

    let cut_off = context
        .start_consumer_process(NO_PRODUCER, &[("APP_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")])
        .await;
    let client = Client::new();
    let ask = |token: String, record: Value| {
        let request = client
            .post(format!("{}/records/dead-letter", cut_off.url()))
            .bearer_auth(token)
            .json(&json!({"record": record, "reason": "its handler panics"}));
        async move { request.send().await.unwrap() }
    };
    let operator = e2e::token_keys().service_token("operator").expose_secret().to_owned();
    let record = json!({"topic": topic, "partition": at.partition, "offset": at.offset});
    let user = e2e::token_keys()
        .issue_user_token(a, chrono::Duration::minutes(5))
        .token;
    assert_eq!(
        ask(user.expose_secret().to_owned(), record.clone()).await.status(),
        403,
        "a user token"
    );
    let retry = json!({"topic": kafka.topics.name(Topic::Retry), "partition": 0, "offset": 0});
    assert_eq!(ask(operator.clone(), retry).await.status(), 422, "not an event topic");
    let response = ask(operator, record).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "its handler panics", "{body}");
    cut_off.kill().await;

    let consumer = context.start_consumer_process(NO_PRODUCER, &[]).await;
    wait_for_processed(&pool, 3, Duration::from_secs(30)).await;
    let dead = eventually(Duration::from_secs(30), "the dead letter", || async {
        let dead = dead_letters(&context).await;
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), 1, "one dead letter");
    assert_eq!(header_text(&dead[0], header::ORIGIN_TOPIC), topic);
    assert_eq!(
        header_text(&dead[0], header::ORIGIN_PARTITION),
        at.partition.to_string()
    );
    assert_eq!(header_text(&dead[0], header::ORIGIN_OFFSET), at.offset.to_string());
    assert_eq!(header_text(&dead[0], header::ERROR_CLASS), "permanent");
    assert_eq!(
        header_text(&dead[0], header::ERROR_MESSAGE),
        "dead-lettered by an operator: its handler panics"
    );
    let applied: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT event_id FROM processed_events WHERE topic = $1")
        .bind(&topic)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        applied,
        vec![behind.id],
        "the record behind is applied, the dead-lettered one is not"
    );
    assert_offsets_at_end(&context).await;

    consumer.kill().await;
    pool.close().await;
    context.drop_databases().await;
}

/// A member stopped between a parked record's dead-letter copy and its
/// unparking (issue 23). The test holds a `FOR KEY SHARE` lock on the
/// parked row, which lets the row be updated but not deleted, so once the
/// record exhausts its rounds (the producer refuses every look-up) and its
/// dead letter is out, the member cannot unpark it; it is killed while it
/// retries. Then the producer answers again, and the member that takes the
/// partition reads the last retry copy again. Before, it tried the record
/// again and applied the record it had dead-lettered. Now it finishes the
/// dead-lettering recorded on the row: the copy is out already, so no
/// second dead letter, the record is not applied, and the row is gone.
#[tokio::test]
async fn a_member_stopped_between_a_dead_letter_and_the_unparking_neither_applies_the_record_nor_dead_letters_it_twice()
{
    let _serial = crate::one_at_a_time().await;
    let (context, producer, users) = users_the_consumer_has_not_seen(1).await;
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", producer.port), Mode::Refuse).await;
    let consumer = context
        .start_consumer_process(&proxy.url(), &[BREAKER_NEVER_OPENS])
        .await;
    publish(&context, &[token_issued(users[0])]).await;
    let pool = context.consumer_pool().await;
    let parked: i64 = eventually(Duration::from_secs(30), "the token parked", || async {
        sqlx::query_scalar("SELECT id FROM parked_records")
            .fetch_optional(&pool)
            .await
            .unwrap()
    })
    .await;
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM parked_records WHERE id = $1 FOR KEY SHARE")
        .bind(parked)
        .execute(&mut *lock)
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "the dead letter", || async {
        (!dead_letters(&context).await.is_empty()).then_some(())
    })
    .await;
    consumer.kill().await;
    // Its backend would still run the waiting `DELETE` once the lock goes
    // (PostgreSQL does not notice a client gone while the backend waits).
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        .execute(&mut *lock)
        .await
        .unwrap();
    lock.rollback().await.unwrap();

    proxy.set(Mode::Forward);
    let consumer = context.start_consumer_process(&proxy.url(), &[]).await;
    eventually(Duration::from_secs(60), "the record unparked", || async {
        let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM parked_records")
            .fetch_one(&pool)
            .await
            .unwrap();
        (parked == 0).then_some(())
    })
    .await;
    assert_offsets_at_end(&context).await;
    assert_eq!(dead_letters(&context).await.len(), 1, "one dead letter");
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE event_type = 'user.token_issued.v1'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(applied, 0, "the dead-lettered record is not applied");

    consumer.kill().await;
    pool.close().await;
    producer.stop().await.unwrap();
    context.drop_databases().await;
}

/// A fresh context whose consumer (not knowing the producer) has applied
/// the creation of two users; the pool is the consumer's database.
async fn two_users_applied() -> (TestContext, ServiceProcess, PgPool, [uuid::Uuid; 2]) {
    let context = TestContext::new();
    let (users, created) = new_users(2);
    publish(&context, &created).await;
    let consumer = context.start_consumer_process(NO_PRODUCER, &[]).await;
    let pool = context.consumer_pool().await;
    wait_for_processed(&pool, 2, Duration::from_secs(30)).await;
    (context, consumer, pool, [users[0], users[1]])
}

/// Sends `record` with one more header after its own, named `\xff\xfe`
/// (not UTF-8); returns where it landed.
async fn send_with_raw_header(bootstrap_servers: &str, topic: &str, record: &OutgoingRecord) -> Delivery {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .set("partitioner", PARTITIONER)
        .create()
        .unwrap();
    let headers = hostile::with_raw_header(owned_headers(record), b"\xff\xfe", Some(b"x"));
    let sent = FutureRecord::to(topic)
        .key(record.key.as_deref().unwrap())
        .payload(record.value.as_deref().unwrap())
        .headers(headers);
    let delivered = producer.send(sent, Duration::from_secs(10)).await.unwrap();
    Delivery {
        partition: delivered.partition,
        offset: delivered.offset,
    }
}

/// Two records that fit their topic but not with failure headers added,
/// written by a peer whose `message.max.bytes` (1 MiB) is above the
/// consumer's producer's (1 000 000 bytes, librdkafka's default) and within
/// the broker's (1 MiB + 12 bytes): garbage for user A (permanent), and a
/// valid token, padded, for a user nobody knows while the producer cannot
/// be reached (transient, so it is to be parked). Neither copy can ever be
/// written whole. The garbage is dead-lettered without its content; the
/// token, which cannot go to the retry topic, is dead-lettered instead.
/// Both dead letters say what they dropped and where the original is, and
/// the records behind them are applied: no partition is stuck.
#[tokio::test]
async fn records_too_large_to_copy_are_dead_lettered_without_their_content_and_nothing_stalls() {
    const VALUE_BYTES: usize = 1_010_000;
    let _serial = crate::one_at_a_time().await;
    let (context, consumer, pool, [a, b]) = two_users_applied().await;

    let kafka = context.kafka();
    let topic = kafka.topics.name(Topic::IssuedToken).to_owned();
    let writer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("partitioner", PARTITIONER)
        .set("message.max.bytes", "1048576")
        .create()
        .unwrap();
    let mut garbage = outgoing(&envelope_of(&token_issued(a)));
    garbage.value = Some(vec![b'A'; VALUE_BYTES]);
    let stranger = uuid::Uuid::new_v4();
    let mut padded = outgoing(&envelope_of(&token_issued(stranger)));
    let mut data: Value = serde_json::from_slice(padded.value.as_deref().unwrap()).unwrap();
    data["padding"] = json!("P".repeat(VALUE_BYTES));
    padded.value = Some(serde_json::to_vec(&data).unwrap());
    let mut origins = Vec::new();
    for record in [&garbage, &padded] {
        let sent = FutureRecord::to(&topic)
            .key(record.key.as_deref().unwrap())
            .payload(record.value.as_deref().unwrap())
            .headers(owned_headers(record));
        origins.push(writer.send(sent, Duration::from_secs(10)).await.unwrap());
    }
    let producer = EventProducer::new(&kafka, "behind").unwrap();
    for user in [a, b] {
        let token = outgoing(&envelope_of(&token_issued(user)));
        producer.send_record(&topic, &token).await.unwrap();
    }

    wait_for_processed(&pool, 4, Duration::from_secs(60)).await;
    let dead = eventually(Duration::from_secs(60), "two dead letters", || async {
        let dead = dead_letters(&context).await;
        (dead.len() >= 2).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), 2);
    let expected = [
        (a, "invalid data", "value (1010000 bytes), 7 header(s)"),
        (
            stranger,
            "its retry copy is larger than the retry topic accepts",
            "value (1010",
        ),
    ];
    for ((user, reason, dropped), origin) in expected.iter().zip(&origins) {
        let (partition, offset) = (origin.partition, origin.offset);
        let record = dead
            .iter()
            .find(|record| {
                header_text(record, header::ORIGIN_PARTITION) == partition.to_string()
                    && header_text(record, header::ORIGIN_OFFSET) == offset.to_string()
            })
            .unwrap_or_else(|| panic!("no dead letter for {partition}@{offset} ({reason})"));
        assert_eq!(record.key, Some(user.to_string().into_bytes()), "key kept");
        assert_eq!(record.value, None, "value dropped");
        assert_eq!(header_text(record, header::ERROR_CLASS), "permanent");
        assert_eq!(header_text(record, header::ORIGIN_TOPIC), topic);
        let message = header_text(record, header::ERROR_MESSAGE);
        assert!(message.contains(reason), "`{message}` should say `{reason}`");
        let said = header_text(record, header::DROPPED_CONTENT);
        assert!(said.starts_with(dropped), "`{said}` should start with `{dropped}`");
    }
    let counts = e2e::read_model_token_counts(&pool).await;
    assert_eq!((counts[&a], counts[&b]), (1, 1));
    assert_eq!(processed_count(&pool).await, 4);
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM parked_records")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(parked, 0, "the token's parking ended");
    assert_offsets_at_end(&context).await;

    // Redriving a dead letter without its record would publish an empty
    // one: refused, saying where the original is.
    let operator = e2e::token_keys().service_token("operator");
    let response = Client::new()
        .post(format!("{}/dead-letters/redrive", consumer.url()))
        .bearer_auth(operator.expose_secret())
        .json(&json!({ "records": [{ "partition": dead[0].partition, "offset": dead[0].offset }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("does not hold its record") && message.contains(&topic),
        "{message}"
    );

    consumer.kill().await;
    pool.close().await;
    context.drop_databases().await;
}

/// The producer refuses every look-up: 2 users' 2 tokens each go through
/// the whole retry schedule (4 rounds) and are dead-lettered as
/// `exhausted`, first tokens before second ones. An operator lists them
/// and, once the producer is back, redrives them; they are applied once.
#[tokio::test]
async fn exhausted_records_are_dead_lettered_in_order_and_an_operator_redrives_them() {
    let _serial = crate::one_at_a_time().await;
    let (context, producer, users) = users_the_consumer_has_not_seen(2).await;
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", producer.port), Mode::Refuse).await;
    let consumer = context
        .start_consumer_process(&proxy.url(), &[BREAKER_NEVER_OPENS])
        .await;
    let tokens: Vec<_> = [0, 1, 0, 1].iter().map(|&i| token_issued(users[i])).collect();
    publish(&context, &tokens).await;

    let dead = eventually(Duration::from_secs(60), "four dead letters", || async {
        let dead = dead_letters(&context).await;
        (dead.len() >= 4).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), 4);
    for record in &dead {
        assert_eq!(header_text(record, header::ERROR_CLASS), "exhausted");
        // 2 tries in place on first delivery and in each of the 4 rounds.
        assert_eq!(header_text(record, header::ATTEMPTS), "10");
        assert!(header_text(record, header::ERROR_MESSAGE).contains("producer"));
    }
    for user in &users {
        let offsets: Vec<i64> = dead
            .iter()
            .filter(|record| record.key.as_deref() == Some(user.to_string().as_bytes()))
            .map(|record| header_text(record, header::ORIGIN_OFFSET).parse().unwrap())
            .collect();
        assert_eq!(offsets.len(), 2);
        // Same dead-letter partition (same key): offset order is dead-letter order.
        assert!(offsets[0] < offsets[1], "{user}: first token dead-lettered first");
    }

    let client = Client::new();
    let keys = e2e::token_keys();
    let operator = keys.service_token("operator");
    let user_token = keys.issue_user_token(users[0], chrono::Duration::minutes(5));
    let list = format!("{}/dead-letters", consumer.url());
    let forbidden = client
        .get(&list)
        .bearer_auth(user_token.token.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403, "users cannot read dead letters");
    assert_eq!(client.get(&list).send().await.unwrap().status(), 401);
    let listed: Value = client
        .get(&list)
        .bearer_auth(operator.expose_secret())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = listed["records"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 4);
    assert!(listed.iter().all(|record| record["error_class"] == "exhausted"));

    proxy.set(Mode::Forward);
    let chosen: Vec<Value> = listed
        .iter()
        .map(|record| json!({ "partition": record["partition"], "offset": record["offset"] }))
        .collect();
    let redrive = format!("{}/dead-letters/redrive", consumer.url());
    let response = client
        .post(&redrive)
        .bearer_auth(operator.expose_secret())
        .json(&json!({ "records": chosen }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["redriven"].as_array().unwrap().len(), 4);

    let pool = context.consumer_pool().await;
    wait_for_processed(&pool, 4, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(processed_count(&pool).await, 4);
    let counts = e2e::read_model_token_counts(&pool).await;
    assert_eq!((counts[&users[0]], counts[&users[1]]), (2, 2));

    let missing = client
        .post(&redrive)
        .bearer_auth(operator.expose_secret())
        .json(&json!({ "records": [{ "partition": 0, "offset": 999 }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 422, "a dead letter that does not exist");

    consumer.kill().await;
    pool.close().await;
    producer.stop().await.unwrap();
    context.drop_databases().await;
}

/// Retry copies that are not what they claim, on the retry topic while
/// users A's and B's real tokens are parked (the producer refuses look-ups
/// until the end):
///
/// - for A's key, an origin that was never parked, due in the year 2100:
///   skipped without waiting, so it holds up nothing behind it;
/// - naming B's real parked origin, with another token's content, due in
///   2100, and again due now; and naming it with the key of a user nobody
///   knows: each is dead-lettered as forged under its own coordinates, and
///   B's record stays parked.
///
/// Once the producer answers, A's and B's real tokens are applied, once
/// each, and nothing forged is.
#[tokio::test]
async fn forged_retry_copies_are_dead_lettered_and_the_parked_records_they_name_applied() {
    let _serial = crate::one_at_a_time().await;
    let (context, producer, users) = users_the_consumer_has_not_seen(2).await;
    let (a, b) = (users[0], users[1]);
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", producer.port), Mode::Refuse).await;
    let kafka = context.kafka();
    let retry_topic = kafka.topics.name(Topic::Retry).to_owned();
    let tokens_topic = kafka.topics.name(Topic::IssuedToken).to_owned();
    let records = EventProducer::new(&kafka, "forger").unwrap();
    kafka_service::ensure_topics(&kafka, &kafka.topics.specs(&Topic::ALL))
        .await
        .unwrap();
    // A retry copy of a new token of `user`, naming `origin`, due at `due`.
    let forged = |user, (origin_partition, origin_offset): (i32, i64), due: &str| {
        let mut record = outgoing(&envelope_of(&token_issued(user)));
        for (name, value) in [
            (header::ORIGIN_TOPIC, tokens_topic.clone()),
            (header::ORIGIN_PARTITION, origin_partition.to_string()),
            (header::ORIGIN_OFFSET, origin_offset.to_string()),
            (header::ATTEMPTS, "1".to_owned()),
            (header::RETRY_ROUND, "1".to_owned()),
            (header::RETRY_NOT_BEFORE, due.to_owned()),
            (header::ERROR_MESSAGE, "forged".to_owned()),
        ] {
            record.headers.push((name.to_owned(), Some(value.into_bytes())));
        }
        record
    };
    let far = "2100-01-01T00:00:00Z";
    records
        .send_record(&retry_topic, &forged(a, (0, 1_000_000), far))
        .await
        .unwrap();

    // Rounds 2 s and 4 s apart: the real tokens stay parked until the
    // producer answers again.
    let slower = [
        ("APP_RETRY__TOPIC_INITIAL_DELAY_MS", "2000"),
        ("APP_RETRY__TOPIC_MAX_DELAY_MS", "4000"),
    ];
    let consumer = context.start_consumer_process(&proxy.url(), &slower).await;
    publish(&context, &[token_issued(a), token_issued(b)]).await;
    let pool = context.consumer_pool().await;
    let b_origin: (i32, i64) = eventually(Duration::from_secs(30), "both tokens parked", || async {
        let parked: Vec<(String, i32, i64)> = sqlx::query_as(
            "SELECT convert_from(record_key, 'UTF8'), origin_partition, origin_offset FROM parked_records",
        )
        .fetch_all(&pool)
        .await
        .ok()?;
        let b_row = parked.iter().find(|(key, _, _)| *key == b.to_string())?;
        (parked.len() == 2).then_some((b_row.1, b_row.2))
    })
    .await;
    let now = chrono::Utc::now().to_rfc3339();
    let mut other_key = forged(b, b_origin, &now);
    let stranger = uuid::Uuid::new_v4().to_string();
    other_key.key = Some(stranger.clone().into_bytes());
    let forgeries = [
        (forged(b, b_origin, far), "its value differs"),
        (forged(b, b_origin, &now), "its value differs"),
        (other_key, "its key differs"),
    ];
    let mut forged_at = Vec::new();
    for (record, _) in &forgeries {
        forged_at.push(records.send_record(&retry_topic, record).await.unwrap());
    }

    let dead = eventually(Duration::from_secs(20), "the forgeries dead-lettered", || async {
        let dead = dead_letters(&context).await;
        (dead.len() >= forgeries.len()).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), forgeries.len(), "{dead:?}");
    for ((forgery, reason), at) in forgeries.iter().zip(&forged_at) {
        let record = dead
            .iter()
            .find(|record| {
                header_text(record, header::ORIGIN_TOPIC) == retry_topic
                    && header_text(record, header::ORIGIN_PARTITION) == at.partition.to_string()
                    && header_text(record, header::ORIGIN_OFFSET) == at.offset.to_string()
            })
            .unwrap_or_else(|| panic!("no dead letter under the forgery's own coordinates {at:?}"));
        assert_eq!(record.key, forgery.key);
        assert_eq!(header_text(record, header::ERROR_CLASS), "permanent");
        let message = header_text(record, header::ERROR_MESSAGE);
        assert!(
            message.contains("forged retry copy") && message.contains(reason),
            "`{message}` should say `{reason}`"
        );
    }
    let still_parked: i64 = sqlx::query_scalar("SELECT count(*) FROM parked_records")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(still_parked, 2, "neither real token was unparked by a forgery");

    proxy.set(Mode::Forward);
    eventually(Duration::from_secs(30), "the real tokens applied when due", || async {
        let counts = e2e::read_model_token_counts(&pool).await;
        (counts.get(&a) == Some(&1) && counts.get(&b) == Some(&1)).then_some(())
    })
    .await;
    let forged_ids: Vec<uuid::Uuid> = forgeries
        .iter()
        .map(|(record, _)| header_text_of(record, "ce_id").parse().unwrap())
        .collect();
    let applied_forgeries: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE event_id = ANY($1)")
        .bind(&forged_ids)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied_forgeries, 0, "nothing forged applied");
    let b_applied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM processed_events WHERE topic = $1 AND \"partition\" = $2 AND \"offset\" = $3",
    )
    .bind(&tokens_topic)
    .bind(b_origin.0)
    .bind(b_origin.1)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(b_applied, 1, "B's real token applied from its own origin");
    assert_eq!(
        dead_letters(&context).await.len(),
        forgeries.len(),
        "nothing real dead-lettered"
    );

    consumer.kill().await;
    pool.close().await;
    producer.stop().await.unwrap();
    context.drop_databases().await;
}

/// The value of `record`'s header `name` as text (empty when absent).
fn header_text_of<'r>(record: &'r OutgoingRecord, name: &str) -> &'r str {
    record
        .headers
        .iter()
        .find(|(key, _)| key == name)
        .and_then(|(_, value)| value.as_deref())
        .map(|value| std::str::from_utf8(value).unwrap())
        .unwrap_or_default()
}

/// Redrive against a broker that stops confirming records: librdkafka's
/// mock cluster, after a poison record was dead-lettered, answers every
/// produce request with a retriable error (so librdkafka retries without
/// end). The redrive answers within about `kafka.request_timeout_ms`
/// (2 s here) with `503` and says the record was not confirmed, instead of
/// hanging on the delivery report.
#[tokio::test]
async fn a_redrive_the_broker_does_not_confirm_answers_in_bounded_time_and_says_what_is_unconfirmed() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let cluster = MockCluster::new(1).unwrap();
    let context = TestContext::with_broker(cluster.bootstrap_servers());
    for topic in Topic::ALL {
        cluster.create_topic(context.topics.name(topic), 8, 1).unwrap();
    }
    let consumer = context.spawn_consumer(NO_PRODUCER).await;
    let kafka = context.kafka();
    let records = EventProducer::new(&kafka, "poison").unwrap();
    let (users, _) = new_users(1);
    let mut not_json = outgoing(&envelope_of(&token_issued(users[0])));
    not_json.value = Some(b"{not json".to_vec());
    records
        .send_record(kafka.topics.name(Topic::IssuedToken), &not_json)
        .await
        .unwrap();
    let dead = eventually(Duration::from_secs(30), "the poison record dead-lettered", || async {
        dead_letters(&context).await.into_iter().next()
    })
    .await;

    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 1000],
    );
    let keys = e2e::token_keys();
    let operator = keys.service_token("operator");
    let started = std::time::Instant::now();
    let response = Client::new()
        .post(format!("{}/dead-letters/redrive", consumer.url()))
        .bearer_auth(operator.expose_secret())
        .json(&json!({ "records": [{ "partition": dead.partition, "offset": dead.offset }] }))
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .expect("an answer within 15 s");
    let took = started.elapsed();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "broker_unavailable", "{body}");
    assert_eq!(
        body["not_confirmed"],
        json!([{ "partition": dead.partition, "offset": dead.offset }]),
        "{body}"
    );
    assert!(body.get("redriven").is_none(), "nothing confirmed: {body}");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");

    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    consumer.stop().await.unwrap();
    context.drop_databases().await;
}
