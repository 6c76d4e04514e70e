//! What the services' own logs say about a real run (services as processes,
//! real broker and PostgreSQL).

use std::time::Duration;

use e2e::{create_user, issue_token, TestContext, JWT_SECRET, PASSWORD};
use reqwest::Client;
use secrecy::{ExposeSecret, SecretString};
use service_common::auth::TokenKeys;

/// Creates a user, issues a token, reads the user from both services and
/// lists dead letters, then reads both processes' logs: no password, hash,
/// signing key or token appears in them.
#[tokio::test]
async fn logs_never_contain_passwords_hashes_keys_or_tokens() {
    let context = TestContext::new();
    let producer = context.start_producer_process().await;
    let consumer = context.start_consumer_process(&producer.url(), &[]).await;
    let client = Client::new();

    let user = create_user(&client, &producer.url(), "secretive").await;
    let token = issue_token(&client, &producer.url(), &user.username).await;
    for service in [&producer, &consumer] {
        let response = client
            .get(format!("{}/users/{}", service.url(), user.id))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", service.name);
    }
    let bad_login = client
        .post(format!("{}/auth/token", producer.url()))
        .json(&serde_json::json!({ "username": user.username, "password": "wrong password 123" }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_login.status(), 401);
    let operator = TokenKeys::new(&SecretString::from(JWT_SECRET.to_owned()))
        .unwrap()
        .service_token("operator");
    let listed = client
        .get(format!("{}/dead-letters", consumer.url()))
        .bearer_auth(operator.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    // The consumer applies both events (the token needs no look-up by then).
    let pool = context.consumer_pool().await;
    e2e::load::wait_for_processed(&pool, 2, Duration::from_secs(30)).await;

    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(user.id)
        .fetch_one(&context.producer_pool().await)
        .await
        .unwrap();
    let secrets = [
        ("the password", PASSWORD.to_owned()),
        ("a wrong password", "wrong password 123".to_owned()),
        ("the password hash", hash),
        ("the signing key", JWT_SECRET.to_owned()),
        ("the user's token", token),
        ("the operator's token", operator.expose_secret().to_owned()),
    ];
    let logs: Vec<(String, String)> = [&producer, &consumer]
        .iter()
        .map(|service| {
            (
                service.log.display().to_string(),
                std::fs::read_to_string(&service.log).unwrap(),
            )
        })
        .collect();
    for (path, text) in &logs {
        assert!(text.contains(&user.id.to_string()), "{path} logs the request at all");
        for (what, secret) in &secrets {
            assert!(!text.contains(secret.as_str()), "{path} contains {what}");
        }
    }

    consumer.kill().await;
    producer.kill().await;
    pool.close().await;
    context.drop_databases().await;
}
