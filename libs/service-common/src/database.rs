//! The service's own PostgreSQL database.

use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};

/// Connects a pool of `max_connections` to `url`, creating the database
/// first when `create_if_missing` is set and it does not exist, and applies
/// `migrations`.
///
/// # Errors
///
/// When the server is unreachable (within 5 s), the database cannot be
/// created, or a migration fails. Messages never contain the URL, which may
/// hold a password.
pub async fn connect(
    url: &str,
    max_connections: u32,
    create_if_missing: bool,
    migrations: &Migrator,
) -> anyhow::Result<PgPool> {
    if create_if_missing
        && !Postgres::database_exists(url)
            .await
            .context("could not reach the database server (database.url)")?
    {
        Postgres::create_database(url)
            .await
            .context("could not create the database")?;
        tracing::info!("database created");
    }
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .context("could not connect to the database (database.url)")?;
    migrations.run(&pool).await.context("database migration failed")?;
    Ok(pool)
}
