//! How the services connect to PostgreSQL: TLS chosen by the URL's
//! `sslmode`.

use std::time::Duration;

use e2e::TestContext;
use secrecy::SecretString;
use service_common::configuration::DatabaseSettings;
use sqlx::migrate::Migrator;

fn settings(url: String) -> DatabaseSettings {
    DatabaseSettings {
        url: SecretString::from(url),
        password: None,
        max_connections: 1,
        create_if_missing: true,
        statement_timeout_ms: 10_000,
        idle_in_transaction_timeout_ms: 30_000,
        keepalive: Default::default(),
    }
}

const NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

#[tokio::test]
async fn sslmode_require_encrypts_or_refuses_to_connect() {
    let context = TestContext::new();
    let url = format!("{}?sslmode=require", context.producer_database_url);
    // Whether this server offers TLS (Debian's packaged PostgreSQL does, with
    // a self-signed certificate; the CI's postgres image does not).
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", e2e::database_server_url()))
        .await
        .expect("the test server answers");
    let ssl: String = sqlx::query_scalar("SHOW ssl").fetch_one(&admin).await.unwrap();
    admin.close().await;
    let offers_tls = ssl == "on";

    let connected = service_common::database::connect(&settings(url), NO_MIGRATIONS).await;

    if offers_tls {
        let pool = connected.expect("sslmode=require connects to a server that offers TLS");
        let encrypted: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(encrypted, "the session is encrypted");
        pool.close().await;
    } else {
        let error = connected.expect_err("sslmode=require must not fall back to plaintext");
        assert!(format!("{error:#}").contains("could not"), "{error:#}");
    }
    context.drop_databases().await;
}

/// Every pool connection carries the configured statement timeout, idle
/// in transaction timeout and keepalives (a long statement is cancelled by the server), while the
/// migrations run without the timeout: a migration slower than it
/// completes.
#[tokio::test]
async fn connections_carry_the_statement_timeout_and_keepalives_but_migrations_do_not() {
    let context = TestContext::new();
    let mut database = settings(context.producer_database_url.clone());
    database.max_connections = 2;
    database.statement_timeout_ms = 1_000;
    database.idle_in_transaction_timeout_ms = 2_000;
    database.keepalive = service_common::configuration::KeepaliveSettings {
        idle_secs: 7,
        interval_secs: 3,
        count: 2,
    };
    let migrations = std::env::temp_dir().join(format!("slow-migration-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir(&migrations).unwrap();
    std::fs::write(
        migrations.join("1_slow.sql"),
        "SELECT pg_sleep(1.5); CREATE TABLE migrated (id int);",
    )
    .unwrap();
    let migrator = Migrator::new(migrations.as_path()).await.unwrap();
    std::fs::remove_dir_all(&migrations).unwrap();

    let pool = service_common::database::connect(&database, migrator)
        .await
        .expect("a migration slower than the statement timeout completes");
    let show = |name: &'static str| {
        let pool = pool.clone();
        async move {
            let value: String = sqlx::query_scalar(&format!("SHOW {name}"))
                .fetch_one(&pool)
                .await
                .unwrap();
            value
        }
    };
    assert_eq!(show("statement_timeout").await, "1s");
    assert_eq!(show("idle_in_transaction_session_timeout").await, "2s");
    assert_eq!(show("tcp_keepalives_idle").await, "7");
    assert_eq!(show("tcp_keepalives_interval").await, "3");
    assert_eq!(show("tcp_keepalives_count").await, "2");
    let slow = sqlx::query("SELECT pg_sleep(3)").execute(&pool).await.unwrap_err();
    let code = slow
        .as_database_error()
        .and_then(|error| error.code())
        .map(|code| code.into_owned());
    assert_eq!(
        code.as_deref(),
        Some("57014"),
        "cancelled by the statement timeout: {slow}"
    );
    sqlx::query("SELECT count(*) FROM migrated")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    context.drop_databases().await;
}

/// A rollback: the release before starts against the schema that today's
/// release migrated. Each service's database is migrated with all of its
/// migrations, then connected to with all but the newest, as the release
/// before it has them, and must start. (sqlx refuses by default a schema
/// with a migration it does not know, `VersionMissing`, so ECS's rollback
/// of a deploy that added a migration, or a redeploy of the previous
/// image, crash-looped.) That older code also works on the newer schema is
/// the migrations' rule, expand before contract, which
/// `deploy::migrations_contract_only_what_an_earlier_release_stopped_using`
/// checks.
#[tokio::test]
async fn the_release_before_starts_against_the_schema_todays_release_migrated() {
    let context = TestContext::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (service, url) in [
        ("producer", &context.producer_database_url),
        ("consumer", &context.consumer_database_url),
    ] {
        let today = root.join(format!("services/{service}/migrations"));
        let migrated =
            service_common::database::connect(&settings(url.clone()), Migrator::new(today.as_path()).await.unwrap())
                .await
                .unwrap_or_else(|error| panic!("{service}: today's release migrates: {error:#}"));
        migrated.close().await;

        let mut files: Vec<_> = std::fs::read_dir(&today)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        let newest = files.pop().expect("a migration");
        let before = std::env::temp_dir().join(format!("release-before-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&before).unwrap();
        for file in &files {
            std::fs::copy(file, before.join(file.file_name().unwrap())).unwrap();
        }
        let previous = Migrator::new(before.as_path()).await.unwrap();
        std::fs::remove_dir_all(&before).unwrap();

        let started = service_common::database::connect(&settings(url.clone()), previous)
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "{service}: the release before {} does not start: {error:#}",
                    newest.display()
                )
            });
        started.close().await;
    }
    context.drop_databases().await;
}

/// A long migration does not get the task replaced (issue 25, item 4):
/// a service binds its listener before it migrates and answers `503
/// starting` meanwhile, `/health/live` included, so a load balancer's
/// target check sends it no traffic, while the container check
/// (`producer healthcheck`) passes; once the migrations finish, it serves.
/// The migration is held up by holding sqlx's migration lock, which the
/// service's migrator waits for before it looks at anything.
#[tokio::test]
async fn a_service_answers_starting_while_it_migrates_and_serves_after() {
    use sqlx::migrate::Migrate;
    use sqlx::Connection;

    let context = TestContext::new();
    let url = context.producer_database_url.clone();
    // The database exists, so that the test can hold the lock in it.
    service_common::database::connect(&settings(url.clone()), NO_MIGRATIONS)
        .await
        .unwrap()
        .close()
        .await;
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    holder.lock().await.unwrap();

    let process = context.spawn_producer_process_with(&[]);
    let client = reqwest::Client::new();
    let live = format!("{}/health/live", process.url());
    e2e::eventually(
        Duration::from_secs(30),
        "the producer to answer while it migrates",
        || {
            let request = client.get(&live).send();
            async move {
                let response = request.await.ok()?;
                (response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE).then_some(response)
            }
        },
    )
    .await;
    let response = client
        .post(format!("{}/users", process.url()))
        .json(&serde_json::json!({"email": "a@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "5");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "starting", "{body}");
    let check = std::process::Command::new(e2e::process::binary("producer"))
        .arg("healthcheck")
        .env("APP_ENVIRONMENT", "local")
        .env("APP_HTTP__PORT", process.port.to_string())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "the container check passes while the service migrates: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    holder.unlock().await.unwrap();
    let ready = format!("{}/health/ready", process.url());
    e2e::eventually(
        Duration::from_secs(30),
        "the producer to be ready after migrating",
        || {
            let request = client.get(&ready).send();
            async move { request.await.ok().filter(|r| r.status().is_success()).map(drop) }
        },
    )
    .await;
    assert_eq!(
        client.get(&live).send().await.unwrap().status(),
        reqwest::StatusCode::OK
    );
    process.kill().await;
    holder.close().await.unwrap();
    context.drop_databases().await;
}
