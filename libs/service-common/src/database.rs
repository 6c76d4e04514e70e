//! The service's own PostgreSQL database.

use std::time::Duration;

use std::str::FromStr;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::configuration::DatabaseSettings;

/// Connects a pool of `database.max_connections` to `database.url` (with
/// `database.password` when set), creating the database first when
/// `create_if_missing` is set and it does not exist, and applies
/// `migrations` on a connection of their own. Every pool connection has the
/// configured `statement_timeout` and keepalives; the migrations run
/// without a statement timeout (an index build may take longer).
///
/// # Errors
///
/// When the URL does not parse, the server is unreachable (within 5 s) or
/// refuses TLS that `sslmode` requires, the database cannot be created, or a
/// migration fails. Messages never contain the URL or the password.
pub async fn connect(database: &DatabaseSettings, migrations: &Migrator) -> anyhow::Result<PgPool> {
    let url = database.url.expose_secret();
    let mut options = PgConnectOptions::from_str(url)
        .map_err(|_| anyhow::anyhow!("invalid configuration: database.url does not parse"))?;
    if let Some(password) = &database.password {
        options = options.password(password.expose_secret());
    }
    if database.create_if_missing {
        // Creating a database needs a connection to another one.
        let server = options.clone().database("postgres");
        let name = options.get_database().unwrap_or("postgres").to_owned();
        let mut connection = PgConnection::connect_with(&server)
            .await
            .context("could not reach the database server (database.url)")?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut connection)
            .await
            .context("could not reach the database server (database.url)")?;
        if !exists {
            // Identifiers cannot be bound parameters; quote it instead.
            let created = sqlx::query(&format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")))
                .execute(&mut connection)
                .await;
            match created {
                Ok(_) => tracing::info!(database = name, "database created"),
                // Another instance starting at the same time created it
                // first: `duplicate_database`, or, when both passed the
                // catalogue check together, `unique_violation` on
                // `pg_database_datname_index`.
                Err(sqlx::Error::Database(error)) if matches!(error.code().as_deref(), Some("42P04" | "23505")) => {
                    tracing::info!(database = name, "database created by another instance meanwhile");
                }
                Err(error) => return Err(error).context("could not create the database"),
            }
        }
    }
    let keepalive = database.keepalive;
    let session = options.clone().options([
        ("tcp_keepalives_idle", keepalive.idle_secs.to_string()),
        ("tcp_keepalives_interval", keepalive.interval_secs.to_string()),
        ("tcp_keepalives_count", keepalive.count.to_string()),
    ]);
    let mut migrating = PgConnection::connect_with(&session)
        .await
        .context("could not connect to the database (database.url)")?;
    migrations
        .run(&mut migrating)
        .await
        .context("database migration failed")?;
    migrating.close().await.context("database migration failed")?;
    let pool = PgPoolOptions::new()
        .max_connections(database.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(session.options([("statement_timeout", database.statement_timeout_ms.to_string())]))
        .await
        .context("could not connect to the database (database.url)")?;
    Ok(pool)
}
