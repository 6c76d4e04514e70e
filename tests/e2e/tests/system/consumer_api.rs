//! The consumer's HTTP API and its event handler, against a real producer
//! and PostgreSQL.

use std::time::Duration;

use consumer::processing::{Handler, Outcome, ProcessError};
use consumer::producer_client::ProducerClient;
use e2e::{create_user, issue_token, TestContext};
use events::{TokenIssued, UserCreated, UserEvent};
use kafka_service::failure::Origin;
use kafka_service::{Envelope, Record};
use reqwest::Client;
use secrecy::SecretString;
use serde_json::Value;
use service_common::auth::TokenKeys;
use uuid::Uuid;

/// Where `record` was consumed from (no retry involved).
fn origin(record: &Record) -> Origin {
    Origin::of(record).unwrap()
}

/// The record the relay would publish for `event`, at `offset`.
fn record_of(event: &UserEvent, offset: i64) -> Record {
    let envelope = Envelope {
        id: Uuid::now_v7(),
        event_type: event.event_type().to_owned(),
        source: events::PRODUCER_SOURCE.to_owned(),
        time: event.time(),
        subject: event.user_id().to_string(),
        data: serde_json::to_vec(&event.data()).unwrap(),
    };
    Record {
        topic: "t".to_owned(),
        partition: 0,
        offset,
        key: Some(envelope.key().to_vec()),
        headers: envelope
            .headers()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Some(v.into_bytes())))
            .collect(),
        value: Some(envelope.data.clone()),
        timestamp_ms: None,
        unreadable_header_names: 0,
    }
}

fn keys() -> TokenKeys {
    TokenKeys::new(&SecretString::from(e2e::JWT_SECRET.to_owned())).unwrap()
}

/// A consumer whose topics nobody writes to, so its read model holds only
/// what a test puts there, and a handler on its database.
async fn isolated_consumer(producer_url: &str) -> (TestContext, e2e::Service, Handler, sqlx::PgPool) {
    let context = TestContext::new();
    let service = context.spawn_consumer(producer_url).await;
    let pool = context.consumer_pool().await;
    let client = ProducerClient::new(producer_url, Duration::from_secs(2), keys()).unwrap();
    let settings = context.consumer_settings(producer_url).circuit_breaker;
    let breakers = consumer::circuit::Breakers::new(&settings, &mut service_common::metrics::Registry::default());
    let handler = Handler::new(pool.clone(), client, consumer::feed::Feed::default(), None, breakers);
    (context.clone(), service, handler, pool)
}

#[tokio::test]
async fn a_redelivered_event_is_applied_once() {
    let (context, service, handler, pool) = isolated_consumer("http://127.0.0.1:9").await;
    let user_id = Uuid::new_v4();
    let created = record_of(
        &UserEvent::Created(UserCreated {
            user_id,
            username: "ada".into(),
            email: "ada@example.com".into(),
            created_at: chrono::Utc::now(),
        }),
        0,
    );
    let token = record_of(
        &UserEvent::TokenIssued(TokenIssued {
            user_id,
            token_id: Uuid::new_v4(),
            issued_at: chrono::Utc::now(),
            expires_at: chrono::Utc::now(),
        }),
        1,
    );

    assert_eq!(
        handler.handle(&created, &origin(&created)).await.unwrap(),
        Outcome::Applied
    );
    assert_eq!(handler.handle(&token, &origin(&token)).await.unwrap(), Outcome::Applied);
    assert_eq!(
        handler.handle(&created, &origin(&created)).await.unwrap(),
        Outcome::Duplicate
    );
    assert_eq!(
        handler.handle(&token, &origin(&token)).await.unwrap(),
        Outcome::Duplicate
    );

    let counts = e2e::read_model_token_counts(&pool).await;
    assert_eq!(counts.get(&user_id), Some(&1));
    let processed: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(processed, 2);

    service.stop().await.unwrap();
    context.drop_databases().await;
}

#[tokio::test]
async fn a_batch_applies_its_leading_run_once_and_stops_where_a_record_needs_more() {
    let (context, service, handler, pool) = isolated_consumer("http://127.0.0.1:9").await;
    let created = |offset| {
        let user_id = Uuid::new_v4();
        let event = UserEvent::Created(UserCreated {
            user_id,
            username: format!("user-{offset}"),
            email: format!("user-{offset}@example.com"),
            created_at: chrono::Utc::now(),
        });
        (user_id, record_of(&event, offset))
    };
    let token = |user_id, offset| {
        let event = UserEvent::TokenIssued(TokenIssued {
            user_id,
            token_id: Uuid::new_v4(),
            issued_at: chrono::Utc::now(),
            expires_at: chrono::Utc::now(),
        });
        record_of(&event, offset)
    };
    let (ada, ada_created) = created(0);
    let (bob, bob_created) = created(2);
    let mut ada_again = ada_created.clone();
    ada_again.offset = 3;
    let (dan, dan_created) = created(5);
    let mut garbage = dan_created.clone();
    garbage.offset = 6;
    garbage.value = Some(b"{not json".to_vec());
    let records = vec![
        ada_created,
        // Ada is created earlier in the same run.
        token(ada, 1),
        bob_created,
        // The same event again: a duplicate within the run.
        ada_again,
        // Nobody knows this user: the producer must be asked, one at a time.
        token(Uuid::new_v4(), 4),
        dan_created,
        garbage,
    ];

    let outcomes = handler.handle_batch(&records).await.unwrap();
    assert_eq!(
        outcomes,
        [Outcome::Applied, Outcome::Applied, Outcome::Applied, Outcome::Duplicate],
        "the run ends before the token of an unknown user"
    );
    assert!(handler.handle_batch(&records[4..]).await.unwrap().is_empty());
    assert_eq!(handler.handle_batch(&records[5..]).await.unwrap(), [Outcome::Applied]);
    assert!(
        handler.handle_batch(&records[6..]).await.unwrap().is_empty(),
        "an undecodable record is left alone"
    );
    // Redelivered after a crash: nothing applies twice.
    assert_eq!(
        handler.handle_batch(&records[..2]).await.unwrap(),
        [Outcome::Duplicate; 2]
    );

    let counts = e2e::read_model_token_counts(&pool).await;
    assert_eq!(counts.get(&ada), Some(&1));
    assert_eq!(counts.get(&bob), Some(&0));
    assert_eq!(counts.get(&dan), Some(&0));
    let processed: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(processed, 4);
    // `sequence` follows the offsets: the order the feed and the per-user
    // order checks rely on.
    let offsets: Vec<i64> = sqlx::query_scalar("SELECT \"offset\" FROM processed_events ORDER BY sequence")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(offsets, [0, 1, 2, 5]);

    service.stop().await.unwrap();
    context.drop_databases().await;
}

#[tokio::test]
async fn a_token_for_an_unknown_user_fetches_the_user_from_the_producer() {
    let producer_context = TestContext::new();
    let producer = producer_context.spawn_producer().await;
    let client = Client::new();
    let user = create_user(&client, &producer.url(), "grace").await;
    let (context, service, handler, pool) = isolated_consumer(&producer.url()).await;
    let token = record_of(
        &UserEvent::TokenIssued(TokenIssued {
            user_id: user.id,
            token_id: Uuid::new_v4(),
            issued_at: chrono::Utc::now(),
            expires_at: chrono::Utc::now(),
        }),
        7,
    );

    assert_eq!(handler.handle(&token, &origin(&token)).await.unwrap(), Outcome::Applied);

    let username: String = sqlx::query_scalar("SELECT username FROM users WHERE id = $1")
        .bind(user.id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(username, user.username);
    assert_eq!(e2e::read_model_token_counts(&pool).await.get(&user.id), Some(&1));

    service.stop().await.unwrap();
    producer.stop().await.unwrap();
    context.drop_databases().await;
    producer_context.drop_databases().await;
}

#[tokio::test]
async fn a_malformed_record_or_unknown_user_is_a_permanent_failure() {
    let producer_context = TestContext::new();
    let producer = producer_context.spawn_producer().await;
    let (context, service, handler, pool) = isolated_consumer(&producer.url()).await;

    let mut garbage = record_of(
        &UserEvent::Created(UserCreated {
            user_id: Uuid::new_v4(),
            username: "x".into(),
            email: "x@example.com".into(),
            created_at: chrono::Utc::now(),
        }),
        0,
    );
    garbage.value = Some(b"{not json".to_vec());
    let unknown_user = record_of(
        &UserEvent::TokenIssued(TokenIssued {
            user_id: Uuid::new_v4(),
            token_id: Uuid::new_v4(),
            issued_at: chrono::Utc::now(),
            expires_at: chrono::Utc::now(),
        }),
        1,
    );

    for (case, record) in [
        ("undecodable data", &garbage),
        ("user unknown to the producer", &unknown_user),
    ] {
        match handler.handle(record, &origin(record)).await {
            Err(ProcessError::Permanent(error)) => assert!(!format!("{error:#}").is_empty(), "{case}"),
            other => panic!("{case}: expected a permanent failure, got {other:?}"),
        }
    }
    let processed: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(processed, 0);

    service.stop().await.unwrap();
    producer.stop().await.unwrap();
    context.drop_databases().await;
    producer_context.drop_databases().await;
}

#[tokio::test]
async fn the_consumer_answers_from_the_producer_for_users_it_has_not_seen() {
    let producer_context = TestContext::new();
    let producer = producer_context.spawn_producer().await;
    let client = Client::new();
    let user = create_user(&client, &producer.url(), "linus").await;
    let token = issue_token(&client, &producer.url(), &user.username).await;
    let (context, consumer, _, _) = isolated_consumer(&producer.url()).await;

    let anonymous = client
        .get(format!("{}/users/{}", consumer.url(), user.id))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    let response = client
        .get(format!("{}/users/{}", consumer.url(), user.id))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["username"], user.username.as_str());
    assert_eq!(body["tokens_issued"], 0);
    assert!(body["last_token_issued_at"].is_null());

    let someone_else = client
        .get(format!("{}/users/{}", consumer.url(), Uuid::new_v4()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(someone_else.status(), 403, "a user token reads only its own user");

    let service = keys().service_token("test");
    let unknown = client
        .get(format!("{}/users/{}", consumer.url(), Uuid::new_v4()))
        .bearer_auth(secrecy::ExposeSecret::expose_secret(&service))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    consumer.stop().await.unwrap();
    producer.stop().await.unwrap();
    context.drop_databases().await;
    producer_context.drop_databases().await;
}

#[tokio::test]
async fn the_consumer_answers_503_when_the_producer_is_unreachable() {
    let (context, consumer, _, _) = isolated_consumer("http://127.0.0.1:9").await;
    let user = Uuid::new_v4();
    let token = keys().issue_user_token(user, chrono::Duration::minutes(5));
    let client = Client::new();

    let response = client
        .get(format!("{}/users/{user}", consumer.url()))
        .bearer_auth(secrecy::ExposeSecret::expose_secret(&token.token))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_unavailable");
    let ready = client
        .get(format!("{}/health/ready", consumer.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        200,
        "the producer is not part of the consumer's readiness"
    );

    consumer.stop().await.unwrap();
    context.drop_databases().await;
}
