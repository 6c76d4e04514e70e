//! Test support for the tests in `tests/`, against the real broker and
//! PostgreSQL that `scripts/test.sh` provides, each test with its own
//! databases, topic names and consumer group:
//!
//! - `tests/system`: API and end-to-end tests, with both services
//!   in-process on port 0 ([`TestContext::spawn_producer`]);
//! - `tests/failures`: failure tests, with the services as processes
//!   ([`process`]) that can be killed, a fault-injecting proxy ([`proxy`]),
//!   and load and exact-state assertions ([`load`]); tests that stop the
//!   broker or need a TLS listener start one of their own ([`broker`]);
//! - the live feed's tests read it with [`sse::EventStream`].
//!
//! Environment: `TEST_KAFKA_BOOTSTRAP_SERVERS` (default `127.0.0.1:19092`)
//! and `TEST_DATABASE_URL` (a server URL, default
//! `postgres://postgres@127.0.0.1:5432`). Nothing is skipped when they are
//! unreachable: the tests fail and say so.
#![warn(missing_docs)]

pub mod broker;
pub mod load;
pub mod metrics;
pub mod partitioner;
pub mod process;
pub mod proxy;
pub mod sse;

use std::future::Future;
use std::time::Duration;

use kafka_service::{ConsumerSettings, KafkaSettings, Topic, TopicRegistry};
use secrecy::SecretString;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The signing key the test services share.
pub const JWT_SECRET: &str = "test-signing-key-0123456789abcdef-0123456789";

/// The signing keys of every service the tests start (from [`JWT_SECRET`]):
/// `token_keys().service_token("operator")` is an operator's credential.
pub fn token_keys() -> service_common::auth::TokenKeys {
    service_common::auth::TokenKeys::new(&SecretString::from(JWT_SECRET.to_owned())).expect("a valid test key")
}
/// The password of every test user.
pub const PASSWORD: &str = "correct horse battery";

/// The broker's bootstrap servers.
pub fn bootstrap_servers() -> String {
    std::env::var("TEST_KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:19092".to_owned())
}

/// The consumer group protocol every test member uses, from
/// `TEST_KAFKA_GROUP_PROTOCOL`: `classic` (the default) or `consumer`
/// (KIP-848). `scripts/test.sh` runs the group tests under both.
///
/// # Panics
///
/// On any other value.
pub fn group_protocol() -> kafka_service::GroupProtocol {
    match std::env::var("TEST_KAFKA_GROUP_PROTOCOL").as_deref() {
        Err(_) | Ok("classic") => kafka_service::GroupProtocol::Classic,
        Ok("consumer") => kafka_service::GroupProtocol::Consumer,
        Ok(other) => panic!("TEST_KAFKA_GROUP_PROTOCOL is classic or consumer, not {other}"),
    }
}

/// The PostgreSQL server URL, without a database name.
pub fn database_server_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// One test's world: its databases, topic names and consumer group.
#[derive(Debug, Clone)]
pub struct TestContext {
    /// Broker address the services use.
    pub bootstrap_servers: String,
    /// Topic registry with names unique to this test.
    pub topics: TopicRegistry,
    /// Consumer group unique to this test.
    pub group_id: String,
    /// The producer's database URL.
    pub producer_database_url: String,
    /// The consumer's database URL.
    pub consumer_database_url: String,
}

impl TestContext {
    /// A fresh context against the shared test broker.
    pub fn new() -> Self {
        Self::with_broker(bootstrap_servers())
    }

    /// A fresh context against the broker at `bootstrap_servers`.
    pub fn with_broker(bootstrap_servers: String) -> Self {
        Self::with_servers(bootstrap_servers, &database_server_url())
    }

    /// A fresh context against the broker at `bootstrap_servers` and the
    /// PostgreSQL server at `server` (a URL without database name).
    pub fn with_servers(bootstrap_servers: String, server: &str) -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let id = &id[..12];
        Self {
            bootstrap_servers,
            topics: TopicRegistry::default()
                .with_name(Topic::NewUserCreated, format!("new-user-created-{id}"))
                .with_name(Topic::IssuedToken, format!("issued-token-{id}"))
                .with_name(Topic::Retry, format!("retry-{id}"))
                .with_name(Topic::DeadLetter, format!("dead-letter-{id}")),
            group_id: format!("test-group-{id}"),
            producer_database_url: format!("{server}/test_producer_{id}"),
            consumer_database_url: format!("{server}/test_consumer_{id}"),
        }
    }

    /// Kafka settings for this context (short request timeout).
    pub fn kafka(&self) -> KafkaSettings {
        let mut kafka = KafkaSettings::new(&self.bootstrap_servers);
        kafka.topics = self.topics.clone();
        kafka.request_timeout_ms = 2_000;
        kafka
    }

    /// Producer settings: port 0, own database, short poll interval.
    pub fn producer_settings(&self) -> producer::configuration::Settings {
        use producer::configuration::*;
        Settings {
            http: HttpSettings {
                host: "127.0.0.1".to_owned(),
                port: 0,
            },
            database: DatabaseSettings {
                url: SecretString::from(self.producer_database_url.clone()),
                password: None,
                max_connections: 5,
                create_if_missing: true,
                statement_timeout_ms: 10_000,
                idle_in_transaction_timeout_ms: 30_000,
                keepalive: Default::default(),
            },
            kafka: self.kafka(),
            auth: AuthSettings {
                jwt_secret: SecretString::from(JWT_SECRET.to_owned()),
                token_ttl_secs: 900,
            },
            // Far above what a test sends; producer_api tests the limits.
            login_limit: LoginLimitSettings {
                per_address_per_minute: std::num::NonZeroU32::new(100_000).unwrap(),
                per_username_per_minute: std::num::NonZeroU32::new(100_000).unwrap(),
                trust_x_forwarded_for: false,
            },
            outbox: OutboxSettings {
                batch_size: 100,
                batches_in_flight: 4,
                poll_interval_ms: 200,
                // The defaults: nothing a test writes is that old.
                retention: RetentionSettings {
                    hours: 72,
                    batch_size: 1000,
                    interval_ms: 60_000,
                },
            },
            shutdown: ShutdownSettings { timeout_ms: 10_000 },
        }
    }

    /// Consumer settings: port 0, own database, this test's group, commits
    /// every 200 ms, the producer at `producer_url`.
    pub fn consumer_settings(&self, producer_url: &str) -> consumer::configuration::Settings {
        use consumer::configuration::*;
        let mut group = ConsumerSettings::new(&self.group_id);
        group.commit_interval_ms = 200;
        group.session_timeout_ms = 10_000;
        group.group_protocol = group_protocol();
        Settings {
            http: HttpSettings {
                host: "127.0.0.1".to_owned(),
                port: 0,
            },
            database: DatabaseSettings {
                url: SecretString::from(self.consumer_database_url.clone()),
                password: None,
                max_connections: 5,
                create_if_missing: true,
                statement_timeout_ms: 10_000,
                idle_in_transaction_timeout_ms: 30_000,
                keepalive: Default::default(),
            },
            kafka: self.kafka(),
            consumer: group,
            producer: ProducerSettings {
                base_url: producer_url.to_owned(),
                timeout_ms: 2_000,
            },
            auth: AuthSettings {
                jwt_secret: SecretString::from(JWT_SECRET.to_owned()),
            },
            retry: fast_retries(),
            circuit_breaker: CircuitBreakerSettings {
                failure_threshold: 5,
                open_min_secs: 1,
                open_max_secs: 2,
            },
            shutdown: ShutdownSettings { timeout_ms: 10_000 },
            readiness: ReadinessSettings { stall_after_ms: 60_000 },
            // The defaults: nothing a test applies is that old.
            inbox: InboxSettings {
                retention: RetentionSettings {
                    hours: 744,
                    batch_size: 1000,
                    interval_ms: 60_000,
                },
            },
        }
    }

    /// Starts a producer with [`Self::producer_settings`].
    pub async fn spawn_producer(&self) -> Service {
        self.spawn_producer_with(self.producer_settings()).await
    }

    /// Starts a producer with `settings`.
    pub async fn spawn_producer_with(&self, settings: producer::configuration::Settings) -> Service {
        let app = producer::startup::Application::build(settings)
            .await
            .expect("producer builds");
        Service::spawn(app.port(), |shutdown| app.run_until_stopped(shutdown))
    }

    /// Starts a consumer that calls the producer at `producer_url`.
    pub async fn spawn_consumer(&self, producer_url: &str) -> Service {
        self.spawn_consumer_with(self.consumer_settings(producer_url)).await
    }

    /// Starts a consumer with `settings`.
    pub async fn spawn_consumer_with(&self, settings: consumer::configuration::Settings) -> Service {
        let app = consumer::startup::Application::build(settings)
            .await
            .expect("consumer builds");
        Service::spawn(app.port(), |shutdown| app.run_until_stopped(shutdown))
    }

    /// A pool on the consumer's database (the read model).
    pub async fn consumer_pool(&self) -> PgPool {
        PgPool::connect(&self.consumer_database_url)
            .await
            .expect("consumer database reachable")
    }

    /// A pool on the producer's database.
    pub async fn producer_pool(&self) -> PgPool {
        PgPool::connect(&self.producer_database_url)
            .await
            .expect("producer database reachable")
    }

    /// Drops this test's databases (best effort; call at the end of a test).
    pub async fn drop_databases(&self) {
        let Ok(mut admin) = PgConnection::connect(&format!("{}/postgres", database_server_url())).await else {
            return;
        };
        for url in [&self.producer_database_url, &self.consumer_database_url] {
            let name = url.rsplit('/').next().expect("url has a database name");
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await;
        }
    }
}

impl Default for TestContext {
    fn default() -> Self {
        Self::new()
    }
}

/// A service running in-process on `127.0.0.1:<port>`.
pub struct Service {
    /// Its HTTP port.
    pub port: u16,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    fn spawn<F, Fut>(port: u16, run: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(shutdown.clone()));
        Self { port, shutdown, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Shuts it down as SIGTERM would and returns how it ended.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await.expect("service task panicked")
    }
}

/// Polls `check` every 100 ms until it returns `Some`, for at most
/// `timeout`; panics with `what` after that.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits up to 20 s (two of the producer's background broker checks) for
/// the producer at `producer` to report the broker unreachable, asserting
/// that it stays ready meanwhile: its outbox keeps what is written.
pub async fn wait_until_ready_without_broker(client: &reqwest::Client, producer: &str) {
    let url = format!("{producer}/health/ready");
    eventually(
        Duration::from_secs(20),
        "readiness reporting the broker unreachable",
        || async {
            let ready = client.get(&url).send().await.ok()?;
            assert_eq!(
                ready.status(),
                200,
                "ready without a broker: the outbox keeps what is written"
            );
            let ready: serde_json::Value = ready.json().await.ok()?;
            (ready["broker"] == "unreachable").then_some(())
        },
    )
    .await;
}

/// A user created through the producer's API.
#[derive(Debug, Clone)]
pub struct CreatedUser {
    /// Its id.
    pub id: Uuid,
    /// Its username.
    pub username: String,
}

/// `POST /users` with a unique username; asserts `201`.
pub async fn create_user(client: &reqwest::Client, producer: &str, prefix: &str) -> CreatedUser {
    let username = format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let response = client
        .post(format!("{producer}/users"))
        .json(&json!({ "username": username, "email": format!("{username}@example.com"), "password": PASSWORD }))
        .send()
        .await
        .expect("producer reachable");
    assert_eq!(response.status(), 201, "POST /users for {username}");
    let body: Value = response.json().await.expect("JSON body");
    CreatedUser {
        id: body["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("id is a UUID"),
        username,
    }
}

/// `POST /auth/token`; asserts `200` and returns the access token.
pub async fn issue_token(client: &reqwest::Client, producer: &str, username: &str) -> String {
    let response = client
        .post(format!("{producer}/auth/token"))
        .json(&json!({ "username": username, "password": PASSWORD }))
        .send()
        .await
        .expect("producer reachable");
    assert_eq!(response.status(), 200, "POST /auth/token for {username}");
    let body: Value = response.json().await.expect("JSON body");
    body["access_token"].as_str().expect("access_token").to_owned()
}

/// The read model's `tokens_issued` per user id.
pub async fn read_model_token_counts(pool: &PgPool) -> std::collections::HashMap<Uuid, i64> {
    sqlx::query_as::<_, (Uuid, i64)>("SELECT id, tokens_issued FROM users")
        .fetch_all(pool)
        .await
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// Retries scaled down for tests: 2 tries in place 50 ms apart, then 4
/// rounds through the retry topic 200 ms, 400 ms, 800 ms and 1.6 s apart.
pub fn fast_retries() -> consumer::configuration::RetrySettings {
    consumer::configuration::RetrySettings {
        attempts: 2,
        initial_delay_ms: 50,
        max_delay_ms: 200,
        max_elapsed_ms: 1_000,
        topic_rounds: 4,
        topic_initial_delay_ms: 200,
        topic_multiplier: 2,
        topic_max_delay_ms: 2_000,
        orphan_after_ms: None,
    }
}
