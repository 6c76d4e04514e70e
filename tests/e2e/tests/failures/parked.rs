//! Parked records whose copy is lost, and the operator's endpoints for
//! parked records.

use std::time::Duration;

use e2e::load::{dead_letters, new_users, publish, tokens_for};
use e2e::process::NO_PRODUCER;
use e2e::{eventually, TestContext};
use kafka_service::failure::header;
use kafka_service::Topic;
use reqwest::{Client, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::header_text;

/// Parks one token of each of `users` (nobody can be asked about them)
/// with a consumer on `settings`, due in 3 s; stops it before the copies
/// are due and starts one on a new, empty retry topic, as after the topic
/// was recreated: the copies are lost. The new consumer, its settings and
/// the new retry topic's name.
async fn park_then_lose_the_copies(
    context: &TestContext,
    mut settings: consumer::configuration::Settings,
    users: &[uuid::Uuid],
) -> (e2e::Service, consumer::configuration::Settings, String) {
    settings.retry.topic_initial_delay_ms = 3_000;
    settings.retry.topic_max_delay_ms = 3_000;
    let consumer = context.spawn_consumer_with(settings.clone()).await;
    let pool = context.consumer_pool().await;
    publish(context, &tokens_for(users, 1)).await;
    eventually(Duration::from_secs(30), "the tokens parked", || async {
        (parked_count(&pool).await == users.len() as i64).then_some(())
    })
    .await;
    pool.close().await;
    consumer.stop().await.unwrap();
    let new_retry_topic = format!("{}-recreated", context.topics.name(Topic::Retry));
    settings.kafka.topics = settings
        .kafka
        .topics
        .clone()
        .with_name(Topic::Retry, new_retry_topic.clone());
    let consumer = context.spawn_consumer_with(settings.clone()).await;
    (consumer, settings, new_retry_topic)
}

async fn parked_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM parked_records")
        .fetch_one(pool)
        .await
        .unwrap_or(-1)
}

/// A token for a user nobody can be asked about is parked, due in 3 s; the
/// consumer stops before the copy is due and comes back on a new, empty
/// retry topic (as after the topic was recreated): the copy is lost. Once
/// the copy is `retry.orphan_after_ms` (1 s here) overdue, the consumer
/// copies the record again with its round and attempts, and, the user's
/// creation having arrived meanwhile, applies it. Nothing is dead-lettered,
/// nothing stays parked. (Before, the record stayed parked for good, and
/// every later token of the user behind it.)
#[tokio::test]
async fn a_parked_record_whose_copy_is_lost_is_copied_again_and_applied() {
    let context = TestContext::new();
    let mut settings = context.consumer_settings(NO_PRODUCER);
    settings.retry.orphan_after_ms = Some(1_000);
    let (users, created) = new_users(1);
    let (consumer, settings, new_retry_topic) = park_then_lose_the_copies(&context, settings, &users).await;
    let pool = context.consumer_pool().await;
    publish(&context, &created).await;
    eventually(Duration::from_secs(40), "the token applied", || async {
        let counts = e2e::read_model_token_counts(&pool).await;
        (counts.get(&users[0]) == Some(&1)).then_some(())
    })
    .await;

    assert_eq!(parked_count(&pool).await, 0, "nothing left parked");
    assert!(dead_letters(&context).await.is_empty(), "nothing dead-lettered");
    let copies = kafka_service::reader::read_topic(&settings.kafka, &new_retry_topic)
        .await
        .unwrap();
    assert_eq!(copies.len(), 1, "copied again once");
    assert_eq!(header_text(&copies[0], header::RETRY_ROUND), "1", "its round kept");
    assert_eq!(header_text(&copies[0], header::ATTEMPTS), "2", "its attempts kept");
    pool.close().await;
    consumer.stop().await.unwrap();
    context.drop_databases().await;
}

/// Two users' tokens parked (nobody can be asked about the users), then
/// their copies lost as in the test above (a new retry topic), with the
/// default `retry.orphan_after_ms` (over five minutes), so only an operator
/// acts. The operator lists both keys, releases one (copied again, due now;
/// its user has arrived meanwhile, so it is applied) and dead-letters the
/// other with a reason; the list is then empty. A user token may do none
/// of it.
#[tokio::test]
async fn an_operator_lists_releases_and_dead_letters_parked_records() {
    let context = TestContext::new();
    let (users, created) = new_users(2);
    let settings = context.consumer_settings(NO_PRODUCER);
    let (consumer, _, _) = park_then_lose_the_copies(&context, settings, &users).await;
    let pool = context.consumer_pool().await;

    let client = Client::new();
    let url = consumer.url();
    let keys = e2e::token_keys();
    let operator = keys.service_token("operator");
    let operator = operator.expose_secret();
    let list = || async {
        let response = client
            .get(format!("{url}/parked"))
            .bearer_auth(operator)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        body["keys"].as_array().unwrap().clone()
    };
    let parked = list().await;
    assert_eq!(parked.len(), 2, "{parked:?}");
    for key in &parked {
        assert_eq!(key["records"], 1);
        assert_eq!(key["round"], 1);
        assert_eq!(key["record_kept"], true);
    }
    let user_token = keys.issue_user_token(users[0], chrono::Duration::minutes(5));
    let forbidden = client
        .get(format!("{url}/parked"))
        .bearer_auth(user_token.token.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);

    let (released, dead) = (&parked[0], &parked[1]);
    let released_user: uuid::Uuid = released["key"].as_str().unwrap().parse().unwrap();
    let user_created = created
        .iter()
        .find(|event| event.user_id() == released_user)
        .unwrap()
        .clone();
    publish(&context, &[user_created]).await;
    let response = client
        .post(format!("{url}/parked/release"))
        .bearer_auth(operator)
        .json(&json!({ "origin": released["origin"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    eventually(Duration::from_secs(30), "the released token applied", || async {
        let counts = e2e::read_model_token_counts(&pool).await;
        (counts.get(&released_user) == Some(&1)).then_some(())
    })
    .await;

    let empty = client
        .post(format!("{url}/parked/dead-letter"))
        .bearer_auth(operator)
        .json(&json!({ "origin": dead["origin"], "reason": " " }))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let dead_lettered = client
        .post(format!("{url}/parked/dead-letter"))
        .bearer_auth(operator)
        .json(&json!({ "origin": dead["origin"], "reason": "the user was deleted upstream" }))
        .send()
        .await
        .unwrap();
    assert_eq!(dead_lettered.status(), StatusCode::OK);
    let letters = dead_letters(&context).await;
    assert_eq!(letters.len(), 1);
    assert!(header_text(&letters[0], header::ERROR_MESSAGE).contains("the user was deleted upstream"));
    assert_eq!(letters[0].key.as_deref(), dead["key"].as_str().map(str::as_bytes));
    let again = client
        .post(format!("{url}/parked/dead-letter"))
        .bearer_auth(operator)
        .json(&json!({ "origin": dead["origin"], "reason": "twice" }))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    assert!(list().await.is_empty(), "nothing left parked");
    pool.close().await;
    consumer.stop().await.unwrap();
    context.drop_databases().await;
}
