//! An outbox row the relay cannot publish holds back the later rows of its
//! key, and only those, until an operator retries it after a fix or sets it
//! aside; it is retried with backoff meanwhile, and shows in
//! `GET /outbox/failing` and the failing-rows metrics.

use std::time::Duration;

use e2e::{create_user, eventually, CreatedUser, TestContext};
use kafka_service::{Envelope, KafkaSettings, Topic};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use reqwest::{Client, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// A row of an event type no producer knows (a newer instance wrote it
/// during a rolling deploy), then a token event of the same user and one
/// of another user. The other user's arrives; the same user's stays back
/// while the row is retried with backoff; once the row is set aside it
/// follows, and the row stays with its reason.
#[tokio::test]
async fn a_row_that_cannot_be_published_holds_back_its_key_until_set_aside() {
    let context = TestContext::new();
    let producer = context.spawn_producer().await;
    let client = Client::new();
    let (stuck, other) = (
        create_user(&client, &producer.url(), "stuck").await,
        create_user(&client, &producer.url(), "other").await,
    );
    let pool = context.producer_pool().await;
    let kafka = context.kafka();
    // Each user's `user.created` is out before the rows under test go in.
    for user in [&stuck, &other] {
        records_of(&kafka, Topic::NewUserCreated, user, 1).await;
    }

    let unknown = append_raw(&pool, &stuck, "user.renamed.v1", json!({"user_id": stuck.id})).await;
    let after = append_token(&pool, &stuck).await;
    let others = append_token(&pool, &other).await;
    producer::outbox::notify(&pool).await;

    let delivered = records_of(&kafka, Topic::IssuedToken, &other, 1).await;
    assert_eq!(delivered[0].id, others, "another key flows past the failing row");
    let operator = operator_token();
    let failing = eventually(Duration::from_secs(10), "a second attempt", || async {
        let rows = list_failing(&client, &producer.url(), &operator).await;
        (rows.len() == 1 && rows[0]["attempts"].as_i64() >= Some(2)).then_some(rows)
    })
    .await;
    assert_eq!(failing[0]["id"], unknown);
    assert_eq!(failing[0]["key"], stuck.id.to_string());
    assert_eq!(failing[0]["waiting_rows"], 1);
    let error = failing[0]["last_error"].as_str().unwrap();
    assert!(error.contains("unknown event type `user.renamed.v1`"), "{error}");
    assert!(
        records_of_now(&kafka, Topic::IssuedToken, &stuck).await.is_empty(),
        "the key's later row waits for the failing one"
    );
    let metrics = e2e::metrics::scrape(&client, &producer.url()).await;
    assert_eq!(e2e::metrics::samples(&metrics, "outbox_failing_rows")[0].1, 1.0);
    assert!(e2e::metrics::samples(&metrics, "outbox_oldest_failing_age_seconds")[0].1 > 0.0);
    // Backoff: attempts 1 s, then 2 s, then 4 s apart, not one per poll
    // (200 ms here).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = attempts_of(&pool, unknown).await;
    assert!((2..=4).contains(&attempts), "{attempts} attempts in about 5 s");

    // A user token may not act on the outbox; an operator sets the row aside.
    let user_token = e2e::issue_token(&client, &producer.url(), &stuck.username).await;
    let forbidden = set_aside(&client, &producer.url(), &user_token, unknown, "no such event").await;
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    let empty = set_aside(&client, &producer.url(), &operator, unknown, " ").await;
    assert_eq!(empty.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let set = set_aside(
        &client,
        &producer.url(),
        &operator,
        unknown,
        "renamed is not a v1 event",
    )
    .await;
    assert_eq!(set.status(), StatusCode::OK);
    let again = set_aside(&client, &producer.url(), &operator, unknown, "twice").await;
    assert_eq!(again.status(), StatusCode::NOT_FOUND, "a row is set aside once");

    // The user's token record follows; the login issued meanwhile comes
    // after it.
    let records = records_of(&kafka, Topic::IssuedToken, &stuck, 2).await;
    assert_eq!(records[0].id, after, "the held-back row goes out first");
    let (reason, published): (Option<String>, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT set_aside_reason, published_at FROM outbox WHERE id = $1")
            .bind(unknown)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(reason.as_deref(), Some("renamed is not a v1 event"));
    assert_eq!(published, None, "a set-aside row is kept, unpublished");
    assert!(list_failing(&client, &producer.url(), &operator).await.is_empty());
    pool.close().await;
    producer.stop().await.unwrap();
    context.drop_databases().await;
}

/// A row the client refuses as too large (`message.max.bytes` 2000 here),
/// followed by a smaller row of its key. Once a producer with the default
/// limit runs and an operator retries the row, both arrive, in their order.
#[tokio::test]
async fn a_failing_row_retried_after_a_fix_goes_out_before_the_rows_it_held_back() {
    let context = TestContext::new();
    let mut small = context.producer_settings();
    small
        .kafka
        .librdkafka
        .insert("message.max.bytes".to_owned(), "2000".to_owned());
    let producer = context.spawn_producer_with(small).await;
    let client = Client::new();
    let user = create_user(&client, &producer.url(), "large").await;
    let pool = context.producer_pool().await;
    let kafka = context.kafka();
    records_of(&kafka, Topic::NewUserCreated, &user, 1).await;

    let large = append_raw(
        &pool,
        &user,
        "user.token_issued.v1",
        json!({"user_id": user.id, "padding": "x".repeat(4000)}),
    )
    .await;
    let after = append_token(&pool, &user).await;
    producer::outbox::notify(&pool).await;
    let operator = operator_token();
    let failing = eventually(Duration::from_secs(10), "the large row failing", || async {
        let rows = list_failing(&client, &producer.url(), &operator).await;
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    let error = failing[0]["last_error"].as_str().unwrap();
    assert!(error.to_lowercase().contains("too large"), "{error}");
    producer.stop().await.unwrap();
    // As after many failures, when the next attempt is far off (the backoff
    // reaches 60 s): an hour, so that only the operator's retry sends it.
    sqlx::query("UPDATE outbox SET next_attempt_at = now() + interval '1 hour' WHERE id = $1")
        .bind(large)
        .execute(&pool)
        .await
        .unwrap();

    // The fix: a producer with the default limit; the operator retries.
    let producer = context.spawn_producer().await;
    let retried = client
        .post(format!("{}/outbox/{large}/retry", producer.url()))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), StatusCode::OK);
    let records = records_of(&kafka, Topic::IssuedToken, &user, 2).await;
    let event_id: Uuid = sqlx::query_scalar("SELECT event_id FROM outbox WHERE id = $1")
        .bind(large)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        [records[0].id, records[1].id],
        [event_id, after],
        "the retried row first, then the row it held back"
    );
    let missing = client
        .post(format!("{}/outbox/{large}/retry", producer.url()))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    assert_eq!(
        missing.status(),
        StatusCode::NOT_FOUND,
        "a published row is no longer failing"
    );
    pool.close().await;
    producer.stop().await.unwrap();
    context.drop_databases().await;
}

fn operator_token() -> String {
    e2e::token_keys().service_token("operator").expose_secret().to_owned()
}

/// Appends a row as a newer or misbehaving writer would: any type and data.
async fn append_raw(pool: &PgPool, user: &CreatedUser, event_type: &str, data: Value) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO outbox (event_id, event_type, subject, occurred_at, data) \
         VALUES ($1, $2, $3, now(), $4) RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(event_type)
    .bind(user.id.to_string())
    .bind(data)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Appends a token event for `user` as `POST /auth/token` does; its event id.
async fn append_token(pool: &PgPool, user: &CreatedUser) -> Uuid {
    let now = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 0);
    let event = events::UserEvent::TokenIssued(events::TokenIssued {
        user_id: user.id,
        token_id: Uuid::new_v4(),
        issued_at: now,
        expires_at: now + chrono::Duration::minutes(15),
    });
    let mut tx = pool.begin().await.unwrap();
    producer::outbox::lock_subject(&mut tx, user.id).await.unwrap();
    let id = producer::outbox::append(&mut tx, &event).await.unwrap();
    tx.commit().await.unwrap();
    id
}

async fn attempts_of(pool: &PgPool, id: i64) -> i32 {
    sqlx::query_scalar("SELECT attempts FROM outbox WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn list_failing(client: &Client, url: &str, token: &str) -> Vec<Value> {
    let response = client
        .get(format!("{url}/outbox/failing"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["rows"].as_array().unwrap().clone()
}

async fn set_aside(client: &Client, url: &str, token: &str, id: i64, reason: &str) -> reqwest::Response {
    client
        .post(format!("{url}/outbox/{id}/set-aside"))
        .bearer_auth(token)
        .json(&json!({ "reason": reason }))
        .send()
        .await
        .unwrap()
}

/// `user`'s records on `topic`, in partition order, once there are `count`.
async fn records_of(kafka: &KafkaSettings, topic: Topic, user: &CreatedUser, count: usize) -> Vec<Envelope> {
    eventually(Duration::from_secs(30), "the user's records", || async {
        let records = records_of_now(kafka, topic, user).await;
        (records.len() >= count).then_some(records)
    })
    .await
}

async fn records_of_now(kafka: &KafkaSettings, topic: Topic, user: &CreatedUser) -> Vec<Envelope> {
    let key = user.id.to_string();
    kafka_service::reader::read_topic(kafka, kafka.topics.name(topic))
        .await
        .unwrap_or_default()
        .iter()
        .filter(|record| record.key.as_deref() == Some(key.as_bytes()))
        .map(|record| Envelope::decode(record).expect("a valid envelope"))
        .collect()
}

/// Two producer instances, users created through both. The leader's relay
/// connection is terminated on the server (`pg_terminate_backend`, as when
/// PostgreSQL restarts a backend or an operator ends it): its advisory lock
/// goes with it, and a relay (the standby, or the old leader once it
/// reconnects) holds it again within the bound docs/delivery.md states for
/// this case, one poll interval (200 ms here) plus a second. Every event
/// is published, and each user's distinct events reach the partition in
/// outbox order (a record may arrive twice: consumers deduplicate).
#[tokio::test]
async fn a_standby_relay_takes_over_when_the_leaders_connection_is_terminated() {
    let context = TestContext::new();
    let first = context.spawn_producer().await;
    let pool = context.producer_pool().await;
    let leader = eventually(Duration::from_secs(10), "a relay elected", || relay_leader(&pool)).await;
    let second = context.spawn_producer().await;
    eventually(Duration::from_secs(10), "a standby relay", || async {
        let relays: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
        )
        .bind(producer::outbox::RELAY_APPLICATION_NAME)
        .fetch_one(&pool)
        .await
        .unwrap();
        (relays == 2).then_some(())
    })
    .await;
    let client = Client::new();
    let urls = [first.url(), second.url()];
    let mut users = Vec::new();
    for round in 0..8 {
        let user = create_user(&client, &urls[round % 2], "takeover").await;
        e2e::issue_token(&client, &urls[(round + 1) % 2], &user.username).await;
        users.push(user);
    }

    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(leader)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(terminated);
    let started = std::time::Instant::now();
    let logins = async {
        for (round, user) in users.iter().enumerate() {
            e2e::issue_token(&client, &urls[round % 2], &user.username).await;
        }
    };
    let (_, successor) = tokio::join!(logins, async {
        eventually(Duration::from_secs(10), "a relay elected again", || async {
            relay_leader(&pool).await.filter(|pid| *pid != leader)
        })
        .await
    });
    let took_over = started.elapsed();
    println!("relay lock held again {took_over:?} after the leader's connection ended (backend {successor})");
    assert!(took_over < Duration::from_millis(1200), "took {took_over:?}");

    all_published(&pool, Duration::from_secs(30)).await;
    let kafka = context.kafka();
    for user in &users {
        let outbox: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT event_id, event_type FROM outbox WHERE subject = $1 ORDER BY id")
                .bind(user.id.to_string())
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(outbox.len(), 3, "one creation and two logins");
        for topic in [Topic::NewUserCreated, Topic::IssuedToken] {
            let expected: Vec<Uuid> = outbox
                .iter()
                .filter(|(_, event_type)| events::topic_of(event_type) == Some(topic))
                .map(|(id, _)| *id)
                .collect();
            let records = records_of(&kafka, topic, user, expected.len()).await;
            let mut seen = std::collections::HashSet::new();
            let distinct: Vec<Uuid> = records.iter().map(|r| r.id).filter(|id| seen.insert(*id)).collect();
            assert_eq!(
                distinct, expected,
                "{topic:?} of {}: every event, in outbox order",
                user.id
            );
        }
    }
    pool.close().await;
    first.stop().await.unwrap();
    second.stop().await.unwrap();
    context.drop_databases().await;
}

/// The backend pid that holds the relay's advisory lock in this database.
async fn relay_leader(pool: &PgPool) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()",
    )
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// The relay against librdkafka's mock cluster, which answers one produce
/// request with `OUT_OF_ORDER_SEQUENCE_NUMBER`: fatal for an idempotent
/// producer, whose client then fails every record for good. The producer
/// gets a new client, the relay gives up its leadership and starts over
/// from the first unconfirmed row, and every event, before and after the
/// fault, is published. (Before, the relay kept the lock and every send
/// failed from then on.)
#[tokio::test]
async fn the_relay_recovers_from_a_fatal_producer_error() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let (cluster, context) = mock_cluster();
    let producer = context.spawn_producer().await;
    let client = Client::new();
    let kafka = context.kafka();
    let mut users = vec![create_user(&client, &producer.url(), "fatal").await];
    records_of(&kafka, Topic::NewUserCreated, &users[0], 1).await;

    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    for _ in 0..5 {
        users.push(create_user(&client, &producer.url(), "fatal").await);
    }
    let pool = context.producer_pool().await;
    all_published(&pool, Duration::from_secs(30)).await;
    for user in &users {
        let created = records_of(&kafka, Topic::NewUserCreated, user, 1).await;
        assert_eq!(created[0].subject, user.id.to_string());
    }
    let failing: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE attempts > 0")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        failing, 0,
        "rows failed by the fatal error are not counted against them"
    );
    pool.close().await;
    producer.stop().await.unwrap();
    context.drop_databases().await;
}

/// A fatal producer error while the relay is still handing rows to the
/// client reorders no key (issue 23, N2). A backlog of 1500 token rows of
/// 15 users, interleaved, read 10 at a time with room for all of them in
/// flight: the relay is still reading and sending when the mock cluster
/// answers the first produce request with `OUT_OF_ORDER_SEQUENCE_NUMBER`.
/// The client's next enqueue is refused and the client replaced. Before,
/// the rest of that batch went out on the new client while the rows before
/// it, on the old one, had yet to fail; they were sent again later, after
/// their key's later rows. Each user's distinct records must reach the
/// topic in outbox order.
#[tokio::test]
async fn a_fatal_producer_error_while_sending_reorders_no_key() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let (cluster, context) = mock_cluster();
    // The first run creates the database and its tables.
    context.spawn_producer().await.stop().await.unwrap();
    let pool = context.producer_pool().await;
    let users: Vec<Uuid> = (0..15).map(|_| Uuid::now_v7()).collect();
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, subject, occurred_at, data) \
         SELECT gen_random_uuid(), 'user.token_issued.v1', subject::text, now(), \
                json_build_object('user_id', subject, 'token_id', gen_random_uuid(), \
                  'issued_at', now(), 'expires_at', now() + interval '15 minutes') \
         FROM (SELECT n, ($1::uuid[])[n % 15 + 1] AS subject FROM generate_series(1, 1500) AS n) AS rows \
         ORDER BY n",
    )
    .bind(&users)
    .execute(&pool)
    .await
    .unwrap();

    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let mut settings = context.producer_settings();
    settings.outbox.batch_size = 10;
    settings.outbox.batches_in_flight = 200;
    let producer = context.spawn_producer_with(settings).await;
    all_published(&pool, Duration::from_secs(60)).await;
    let metrics = e2e::metrics::scrape(&Client::new(), &producer.url()).await;
    let failed: f64 = e2e::metrics::samples(&metrics, "kafka_records_published_total")
        .iter()
        .filter(|(labels, _)| labels["result"] == "failed")
        .map(|(_, count)| count)
        .sum();
    assert!(failed > 0.0, "the fault happened: records failed on the old client");

    let kafka = context.kafka();
    let records = kafka_service::reader::read_topic(&kafka, kafka.topics.name(Topic::IssuedToken))
        .await
        .unwrap();
    for user in &users {
        let key = user.to_string();
        let expected: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM outbox WHERE subject = $1 ORDER BY id")
            .bind(&key)
            .fetch_all(&pool)
            .await
            .unwrap();
        let mut seen = std::collections::HashSet::new();
        let distinct: Vec<Uuid> = records
            .iter()
            .filter(|record| record.key.as_deref() == Some(key.as_bytes()))
            .map(|record| Envelope::decode(record).expect("a valid envelope").id)
            .filter(|id| seen.insert(*id))
            .collect();
        assert_eq!(distinct.len(), expected.len(), "every event of {user} published");
        assert!(
            distinct == expected,
            "the events of {user} reached the topic out of outbox order"
        );
    }
    pool.close().await;
    producer.stop().await.unwrap();
    context.drop_databases().await;
}

/// Every producer instance measures the outbox gauges, not only the relay's
/// leader (issue 23, N4): a standby reports a row that cannot be published,
/// so the alert on them fires whichever instance is scraped, and while no
/// relay leads. Before, only the leader measured them, inside its reads: a
/// standby kept 0, and a leader that could not read kept its last values.
#[tokio::test]
async fn a_standby_instance_reports_the_outbox_gauges_too() {
    let context = TestContext::new();
    let leader = context.spawn_producer().await;
    let pool = context.producer_pool().await;
    eventually(Duration::from_secs(10), "a relay elected", || relay_leader(&pool)).await;
    let standby = context.spawn_producer().await;
    let client = Client::new();
    let user = create_user(&client, &leader.url(), "gauges").await;
    append_raw(&pool, &user, "user.renamed.v1", json!({"user_id": user.id})).await;
    producer::outbox::notify(&pool).await;

    eventually(Duration::from_secs(10), "the standby's gauges", || async {
        let metrics = e2e::metrics::scrape(&client, &standby.url()).await;
        let gauge = |name| e2e::metrics::samples(&metrics, name).first().map(|(_, value)| *value);
        (gauge("outbox_pending_rows") == Some(1.0)
            && gauge("outbox_failing_rows") == Some(1.0)
            && gauge("outbox_oldest_failing_age_seconds") > Some(0.0))
        .then_some(())
    })
    .await;
    pool.close().await;
    standby.stop().await.unwrap();
    leader.stop().await.unwrap();
    context.drop_databases().await;
}

/// An operator cannot set aside a row the relay is publishing (issue 23):
/// the set-aside would claim the event is never published while its record
/// is on its way to the broker. The mock cluster refuses the row's first
/// produce request (`MSG_SIZE_TOO_LARGE`, for good: the row fails and is due
/// again in a second), then answers after 4 s, so the second attempt is in
/// flight when the operator asks: `409`. Before, the row was set aside and
/// published both. Once it is published, it is no longer failing: `404`.
#[tokio::test]
async fn a_row_in_flight_cannot_be_set_aside() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let (cluster, context) = mock_cluster();
    let producer = context.spawn_producer().await;
    let client = Client::new();
    let user = create_user(&client, &producer.url(), "in-flight").await;
    let kafka = context.kafka();
    records_of(&kafka, Topic::NewUserCreated, &user, 1).await;
    let pool = context.producer_pool().await;

    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let token = append_token(&pool, &user).await;
    producer::outbox::notify(&pool).await;
    let id: i64 = eventually(Duration::from_secs(10), "the row's first attempt to fail", || async {
        sqlx::query_scalar("SELECT id FROM outbox WHERE event_id = $1 AND attempts = 1")
            .bind(token)
            .fetch_optional(&pool)
            .await
            .unwrap()
    })
    .await;
    cluster.broker_round_trip_time(1, Duration::from_secs(4)).unwrap();
    // Due a second after the failure; the relay reads it within its poll
    // interval (200 ms), so by then it is in flight for 4 s.
    eventually(Duration::from_secs(10), "the row's second attempt", || async {
        let due: bool =
            sqlx::query_scalar("SELECT next_attempt_at < now() - interval '1 second' FROM outbox WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        due.then_some(())
    })
    .await;
    let operator = operator_token();
    let response = set_aside(&client, &producer.url(), &operator, id, "must not go out").await;
    assert_eq!(
        response.status(),
        StatusCode::CONFLICT,
        "a row in flight is not set aside"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "conflict", "{body}");

    all_published(&pool, Duration::from_secs(30)).await;
    let set_aside_at: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT set_aside_at FROM outbox WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(set_aside_at, None, "published, and not set aside");
    let response = set_aside(&client, &producer.url(), &operator, id, "too late").await;
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "a published row is not failing"
    );
    pool.close().await;
    producer.stop().await.unwrap();
    context.drop_databases().await;
}

/// A backlog of 6000 rows, read 100 at a time (60 reads): the pending rows
/// are counted about once a second while the relay catches up, not after
/// every read (counting a large backlog costs more than reading a batch of
/// it). Counted from the `outbox pending rows measured` lines.
#[tokio::test]
async fn catching_up_on_a_backlog_counts_pending_rows_about_once_a_second() {
    let context = TestContext::new();
    // The first run creates the database and its tables.
    context.spawn_producer().await.stop().await.unwrap();
    let pool = context.producer_pool().await;
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, subject, occurred_at, data) \
         SELECT gen_random_uuid(), 'user.token_issued.v1', subject::text, now(), \
                json_build_object('user_id', subject, 'token_id', gen_random_uuid(), \
                  'issued_at', now(), 'expires_at', now() + interval '15 minutes') \
         FROM (SELECT gen_random_uuid() AS subject FROM generate_series(1, 6000)) AS users",
    )
    .execute(&pool)
    .await
    .unwrap();

    let started = std::time::Instant::now();
    let producer = context
        .start_producer_process_with(&[
            ("RUST_LOG", "info,producer::outbox=debug"),
            ("APP_OUTBOX__BATCH_SIZE", "100"),
        ])
        .await;
    all_published(&pool, Duration::from_secs(60)).await;
    let took = started.elapsed();
    let log = std::fs::read_to_string(&producer.log).unwrap();
    let measured = log.matches("outbox pending rows measured").count();
    println!("caught up on 6000 rows in {took:?}, counting the pending rows {measured} times");
    assert!(
        measured as u64 <= took.as_secs() + 3 && measured < 30,
        "counted {measured} times in {took:?} for 60 reads"
    );
    producer.kill().await;
    pool.close().await;
    context.drop_databases().await;
}

/// librdkafka's mock cluster (one broker) with every topic of a fresh test
/// context, 8 partitions each; and the context.
fn mock_cluster() -> (MockCluster<'static, DefaultProducerContext>, TestContext) {
    let cluster = MockCluster::new(1).unwrap();
    let context = TestContext::with_broker(cluster.bootstrap_servers());
    for topic in Topic::ALL {
        cluster.create_topic(context.topics.name(topic), 8, 1).unwrap();
    }
    (cluster, context)
}

/// Waits up to `timeout` for every outbox row to be marked published.
async fn all_published(pool: &PgPool, timeout: Duration) {
    eventually(timeout, "every outbox row published", || async {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(pool)
            .await
            .unwrap();
        (pending == 0).then_some(())
    })
    .await;
}
