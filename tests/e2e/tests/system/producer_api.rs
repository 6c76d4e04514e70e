//! The producer's HTTP API, including every error case.

use e2e::{create_user, issue_token, TestContext, PASSWORD};
use reqwest::Client;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use service_common::auth::TokenKeys;

async fn error_code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.expect("error responses have a JSON body");
    assert!(body["error"]["message"].is_string(), "error body has a message: {body}");
    body["error"]["code"]
        .as_str()
        .expect("error body has a code")
        .to_owned()
}

#[tokio::test]
async fn creating_a_user_returns_201_with_the_user_and_no_secret() {
    let context = TestContext::new();
    let producer = context.spawn_producer().await;
    let client = Client::new();

    let response = client
        .post(format!("{}/users", producer.url()))
        .json(&json!({ "username": "ada", "email": "ada@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    let mut keys: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["created_at", "email", "id", "username"]);
    assert!(body["id"].as_str().unwrap().parse::<uuid::Uuid>().is_ok());
    assert_eq!(body["username"], "ada");

    let pool = context.producer_pool().await;
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        hash.starts_with("$argon2id$"),
        "passwords are stored as argon2id hashes"
    );
    let outbox: Vec<(String, String)> = sqlx::query_as("SELECT event_type, subject FROM outbox")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        outbox,
        [("user.created.v1".to_owned(), body["id"].as_str().unwrap().to_owned())]
    );

    producer.stop().await.unwrap();
    context.drop_databases().await;
}

#[tokio::test]
async fn a_taken_username_or_email_is_409_regardless_of_case() {
    let context = TestContext::new();
    let producer = context.spawn_producer().await;
    let client = Client::new();
    let url = format!("{}/users", producer.url());
    let first = json!({ "username": "grace", "email": "grace@example.com", "password": PASSWORD });
    assert_eq!(client.post(&url).json(&first).send().await.unwrap().status(), 201);

    for (case, body) in [
        (
            "same username",
            json!({ "username": "GRACE", "email": "other@example.com", "password": PASSWORD }),
        ),
        (
            "same email",
            json!({ "username": "hopper", "email": "Grace@Example.com", "password": PASSWORD }),
        ),
    ] {
        let response = client.post(&url).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 409, "{case}");
        assert_eq!(error_code(response).await, "conflict", "{case}");
    }
    let pool = context.producer_pool().await;
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(outbox, 1, "a rejected request emits no event");

    producer.stop().await.unwrap();
    context.drop_databases().await;
}

#[tokio::test]
async fn invalid_input_is_a_4xx_with_a_json_error_body() {
    let context = TestContext::new();
    let producer = context.spawn_producer().await;
    let client = Client::new();
    let url = format!("{}/users", producer.url());

    let cases = [
        (
            "short username",
            json!({ "username": "ab", "email": "a@example.com", "password": PASSWORD }),
            422,
            "validation_failed",
        ),
        (
            "bad email",
            json!({ "username": "abc", "email": "not-an-email", "password": PASSWORD }),
            422,
            "validation_failed",
        ),
        (
            "short password",
            json!({ "username": "abc", "email": "a@example.com", "password": "short" }),
            422,
            "validation_failed",
        ),
        (
            "missing field",
            json!({ "username": "abc", "email": "a@example.com" }),
            400,
            "invalid_json",
        ),
        (
            "wrong type",
            json!({ "username": 42, "email": "a@example.com", "password": PASSWORD }),
            400,
            "invalid_json",
        ),
    ];
    for (case, body, status, code) in cases {
        let response = client.post(&url).json(&body).send().await.unwrap();
        assert_eq!(response.status(), status, "{case}");
        assert_eq!(error_code(response).await, code, "{case}");
    }

    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "invalid_json");

    let response = client.post(&url).body("username=ada").send().await.unwrap();
    assert_eq!(response.status(), 415);
    assert_eq!(error_code(response).await, "unsupported_media_type");

    let response = client
        .get(format!("{}/no-such-route", producer.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "not_found");

    producer.stop().await.unwrap();
    context.drop_databases().await;
}

#[tokio::test]
async fn the_right_password_gets_a_bearer_token_and_an_event() {
    let context = TestContext::new();
    let producer = context.spawn_producer().await;
    let client = Client::new();
    let user = create_user(&client, &producer.url(), "linus").await;

    let response = client
        .post(format!("{}/auth/token", producer.url()))
        .json(&json!({ "username": user.username, "password": PASSWORD }))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let keys = TokenKeys::new(&SecretString::from(e2e::JWT_SECRET.to_owned())).unwrap();
    let principal = keys.verify(body["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(principal, service_common::auth::Principal::User(user.id));

    let pool = context.producer_pool().await;
    let types: Vec<String> = sqlx::query_scalar("SELECT event_type FROM outbox ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(types, ["user.created.v1", "user.token_issued.v1"]);
    let data: Value = sqlx::query_scalar("SELECT data FROM outbox WHERE event_type = 'user.token_issued.v1'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        !data.to_string().contains(body["access_token"].as_str().unwrap()),
        "the token itself is never an event"
    );

    producer.stop().await.unwrap();
    context.drop_databases().await;
}

#[tokio::test]
async fn a_wrong_password_or_unknown_user_is_401() {
    let context = TestContext::new();
    let producer = context.spawn_producer().await;
    let client = Client::new();
    let user = create_user(&client, &producer.url(), "mallory").await;

    for (case, username, password) in [
        ("wrong password", user.username.as_str(), "not the password"),
        ("unknown user", "nobody-here", PASSWORD),
    ] {
        let response = client
            .post(format!("{}/auth/token", producer.url()))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{case}");
        assert_eq!(error_code(response).await, "invalid_credentials", "{case}");
    }

    producer.stop().await.unwrap();
    context.drop_databases().await;
}

#[tokio::test]
async fn login_attempts_are_limited_per_username_and_per_address_with_429_and_retry_after() {
    let context = TestContext::new();
    let mut settings = context.producer_settings();
    settings.login_limit.per_address_per_minute = std::num::NonZeroU32::new(5).unwrap();
    settings.login_limit.per_username_per_minute = std::num::NonZeroU32::new(3).unwrap();
    let producer = context.spawn_producer_with(settings).await;
    let client = Client::new();
    let user = create_user(&client, &producer.url(), "target").await;
    let attempt = |username: String| {
        let request = client
            .post(format!("{}/auth/token", producer.url()))
            .json(&json!({ "username": username, "password": "a wrong guess" }));
        async move { request.send().await.unwrap() }
    };

    // Three guesses at one account are answered; the fourth is throttled
    // before its password is checked, even in another letter case.
    for _ in 0..3 {
        assert_eq!(attempt(user.username.clone()).await.status(), 401);
    }
    let throttled = attempt(user.username.to_uppercase()).await;
    assert_eq!(throttled.status(), 429);
    let retry_after: u64 = throttled.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    // Three per minute: room again within 20 s.
    assert!((1..=20).contains(&retry_after), "Retry-After: {retry_after}");
    assert_eq!(error_code(throttled).await, "too_many_requests");

    // This address has made 4 of its 5 attempts: one more account, then none.
    assert_eq!(attempt("someone-else".to_owned()).await.status(), 401);
    let throttled = attempt("a-third-account".to_owned()).await;
    assert_eq!(throttled.status(), 429);
    assert!(throttled.headers().contains_key("retry-after"));

    producer.stop().await.unwrap();
    context.drop_databases().await;
}

#[tokio::test]
async fn reading_a_user_needs_that_users_token_or_a_service_credential() {
    let context = TestContext::new();
    let producer = context.spawn_producer().await;
    let client = Client::new();
    let ada = create_user(&client, &producer.url(), "ada").await;
    let eve = create_user(&client, &producer.url(), "eve").await;
    let ada_token = issue_token(&client, &producer.url(), &ada.username).await;
    let eve_token = issue_token(&client, &producer.url(), &eve.username).await;
    let keys = TokenKeys::new(&SecretString::from(e2e::JWT_SECRET.to_owned())).unwrap();
    let service_token = keys.service_token("consumer");
    let url = format!("{}/users/{}", producer.url(), ada.id);

    let own = client.get(&url).bearer_auth(&ada_token).send().await.unwrap();
    assert_eq!(own.status(), 200);
    let body: Value = own.json().await.unwrap();
    assert_eq!(body["username"], ada.username.as_str());
    assert!(body.get("password_hash").is_none());

    let service = client
        .get(&url)
        .bearer_auth(service_token.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(service.status(), 200);

    let other = client.get(&url).bearer_auth(&eve_token).send().await.unwrap();
    assert_eq!(other.status(), 403);
    assert_eq!(error_code(other).await, "forbidden");

    let anonymous = client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(error_code(anonymous).await, "unauthorized");

    let forged = client
        .get(&url)
        .bearer_auth(format!("{ada_token}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);

    let unknown = format!("{}/users/{}", producer.url(), uuid::Uuid::new_v4());
    let response = client
        .get(&unknown)
        .bearer_auth(service_token.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "not_found");

    producer.stop().await.unwrap();
    context.drop_databases().await;
}

#[tokio::test]
async fn health_is_live_and_ready_with_database_and_broker_up() {
    let context = TestContext::new();
    let producer = context.spawn_producer().await;
    let client = Client::new();

    for path in ["/health/live", "/health/ready"] {
        let response = client.get(format!("{}{path}", producer.url())).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }

    producer.stop().await.unwrap();
    context.drop_databases().await;
}

/// With no broker, the producer is ready (its outbox keeps the events),
/// reports the broker in readiness' body and in `kafka_broker_reachable`,
/// and its container health check passes: ECS must not replace every task
/// during a broker outage.
#[tokio::test]
async fn without_a_broker_the_producer_stays_ready_and_healthy_and_reports_it() {
    // Port 9 (discard) on loopback: nothing listens there.
    let context = TestContext::with_broker("127.0.0.1:9".to_owned());
    let mut settings = context.producer_settings();
    // A metadata request to the absent broker waits this long.
    settings.kafka.request_timeout_ms = 3_000;
    let producer = context.spawn_producer_with(settings).await;
    let client = Client::new();
    let url = format!("{}/health/ready", producer.url());

    // Ready at once, from the database alone, without waiting for the
    // broker; the broker's state comes from the background check.
    let started = std::time::Instant::now();
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "readiness waited {:?} for the absent broker",
        started.elapsed()
    );
    let body = e2e::eventually(std::time::Duration::from_secs(10), "the first broker check", || async {
        let body: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        (body["broker"] != "unknown").then_some(body)
    })
    .await;
    assert_eq!(body, serde_json::json!({"status": "ready", "broker": "unreachable"}));
    let metrics = e2e::metrics::scrape(&client, &producer.url()).await;
    assert_eq!(e2e::metrics::samples(&metrics, "kafka_broker_reachable")[0].1, 0.0);
    let port = producer.url().rsplit(':').next().unwrap().to_owned();
    let check = std::process::Command::new(e2e::process::binary("producer"))
        .arg("healthcheck")
        .env("APP_HTTP__PORT", &port)
        .output()
        .expect("the health check runs");
    assert!(
        check.status.success(),
        "the container health check fails: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    producer.stop().await.unwrap();
    context.drop_databases().await;
}

/// A connection stays open while idle for longer than actix-web's default
/// keep-alive (5 s). The load balancer in front of the services keeps idle
/// connections for 60 s; one the service closes first can take a request
/// that then fails (a 502 there, `IncompleteMessage` in a reqwest client).
/// Two requests on one connection, 6 s apart, are both answered.
#[tokio::test]
async fn a_connection_idle_for_six_seconds_is_still_answered() {
    use http_body_util::{BodyExt, Empty};

    let context = TestContext::new();
    let producer = context.spawn_producer().await;
    let address = producer.url().trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let (mut connection, driver) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(driver);
    for request in 1..=2 {
        if request == 2 {
            tokio::time::sleep(std::time::Duration::from_secs(6)).await;
        }
        let get = hyper::Request::get("/health/live")
            .header("host", &address)
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let answer = match connection.send_request(get).await {
            // Read to the end, so that the connection is free for the next.
            Ok(response) => Ok((response.status(), response.into_body().collect().await)),
            Err(error) => Err(error),
        };
        assert!(
            matches!(answer, Ok((hyper::StatusCode::OK, Ok(_)))),
            "request {request} on the connection: {answer:?}"
        );
    }

    producer.stop().await.unwrap();
    context.drop_databases().await;
}
