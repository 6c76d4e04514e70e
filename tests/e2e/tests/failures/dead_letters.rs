//! Poison records, records that exhaust the retry schedule, and the
//! operator endpoints that list and redrive dead letters.

use std::time::Duration;

use e2e::load::{
    assert_offsets_at_end, dead_letters, envelope_of, new_users, processed_count, publish, token_issued,
    wait_for_processed,
};
use e2e::process::NO_PRODUCER;
use e2e::proxy::{FaultProxy, Mode};
use e2e::{eventually, TestContext};
use kafka_service::failure::header;
use kafka_service::{EventProducer, Topic};
use reqwest::Client;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use crate::outages::users_the_consumer_has_not_seen;
use crate::{header_text, outgoing};

/// Produced straight to `issued-token`: a good token for user A, then 15
/// hostile records (a value that is not JSON, of the wrong shape, 256 KiB
/// of garbage or absent; an unknown, repeated or missing `ce_type`; no
/// headers at all; header bytes that are not UTF-8; an id, time, spec
/// version or content type that is invalid; a null `ce_subject`; a key or
/// subject that is not the data's user), then another good token for A and
/// one for user B. Each hostile record lands in the dead-letter topic with
/// its original key, value and headers and an `error-message` that names
/// what is wrong; the good records behind them are applied.
#[tokio::test]
async fn poison_records_are_dead_lettered_and_the_records_behind_them_processed() {
    let _serial = crate::one_at_a_time().await;
    let context = TestContext::new();
    let (users, created) = new_users(2);
    let (a, b) = (users[0], users[1]);
    publish(&context, &created).await;
    let consumer = context.start_consumer_process(NO_PRODUCER, &[]).await;
    let pool = context.consumer_pool().await;
    wait_for_processed(&pool, 2, Duration::from_secs(30)).await;

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
        (dead.len() >= poison.len()).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), poison.len());
    for ((original, reason), origin) in poison.iter().zip(&poison_offsets) {
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

/// The producer refuses every look-up: 2 users' 2 tokens each go through
/// the whole retry schedule (4 rounds) and are dead-lettered as
/// `exhausted`, first tokens before second ones. An operator lists them
/// and, once the producer is back, redrives them; they are applied once.
#[tokio::test]
async fn exhausted_records_are_dead_lettered_in_order_and_an_operator_redrives_them() {
    let _serial = crate::one_at_a_time().await;
    let (context, producer, users) = users_the_consumer_has_not_seen(2).await;
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", producer.port), Mode::Refuse).await;
    let consumer = context.start_consumer_process(&proxy.url(), &[]).await;
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

/// A retry copy forged (or left stale) with a `retry-not-before` in the
/// year 2100, for user A's key (so on A's retry partition) and an origin
/// that was never parked, is on the retry topic before A's own record is
/// parked behind it; a second one, for user B, copies B's real parked
/// origin. The first is skipped without waiting, so A's record is applied
/// when due once the producer answers; the second is dead-lettered at once
/// with the reason, since no schedule waits that long.
#[tokio::test]
async fn far_future_retry_copies_neither_block_their_partition_nor_wait() {
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
    let forged = |user, origin_offset: i64, origin_partition: i32| {
        let mut record = outgoing(&envelope_of(&token_issued(user)));
        for (name, value) in [
            (header::ORIGIN_TOPIC, tokens_topic.clone()),
            (header::ORIGIN_PARTITION, origin_partition.to_string()),
            (header::ORIGIN_OFFSET, origin_offset.to_string()),
            (header::ATTEMPTS, "1".to_owned()),
            (header::RETRY_ROUND, "1".to_owned()),
            (header::RETRY_NOT_BEFORE, "2100-01-01T00:00:00Z".to_owned()),
            (header::ERROR_MESSAGE, "forged".to_owned()),
        ] {
            record.headers.push((name.to_owned(), Some(value.into_bytes())));
        }
        record
    };
    records
        .send_record(&retry_topic, &forged(a, 1_000_000, 0))
        .await
        .unwrap();

    // Rounds 2 s and 4 s apart: A's record stays parked until the producer
    // answers again.
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
    records
        .send_record(&retry_topic, &forged(b, b_origin.1, b_origin.0))
        .await
        .unwrap();

    let dead = eventually(Duration::from_secs(20), "B's far-future copy dead-lettered", || async {
        dead_letters(&context).await.into_iter().find(|record| {
            record.key.as_deref() == Some(b.to_string().as_bytes())
                && header_text(record, header::ERROR_MESSAGE).contains("beyond the retry schedule")
        })
    })
    .await;
    assert_eq!(header_text(&dead, header::ERROR_CLASS), "permanent");

    proxy.set(Mode::Forward);
    eventually(Duration::from_secs(30), "A's token applied when due", || async {
        (e2e::read_model_token_counts(&pool).await.get(&a) == Some(&1)).then_some(())
    })
    .await;
    let dead = dead_letters(&context).await;
    assert!(
        dead.iter()
            .all(|record| record.key.as_deref() != Some(a.to_string().as_bytes())),
        "nothing of A dead-lettered"
    );

    consumer.kill().await;
    pool.close().await;
    producer.stop().await.unwrap();
    context.drop_databases().await;
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
