//! How the services connect to PostgreSQL: TLS chosen by the URL's
//! `sslmode`.

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
    }
}

static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

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

    let connected = service_common::database::connect(&settings(url), &NO_MIGRATIONS).await;

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
