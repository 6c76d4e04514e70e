//! The service's own PostgreSQL database.

use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::configuration::DatabaseSettings;

/// Why [`connect`] failed. No message contains the URL or the password.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// `database.url` is not a PostgreSQL URL.
    #[error("invalid configuration: database.url does not parse")]
    InvalidUrl,
    /// The server did not answer, or refused TLS that `sslmode` requires,
    /// when asked whether the database exists.
    #[error("could not reach the database server (database.url)")]
    Unreachable(#[source] sqlx::Error),
    /// The database was missing and could not be created.
    #[error("could not create the database")]
    Create(#[source] sqlx::Error),
    /// A connection to the database failed.
    #[error("could not connect to the database (database.url)")]
    Connect(#[source] sqlx::Error),
    /// A migration failed.
    #[error("database migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// Connects a pool of `database.max_connections` to `database.url` (with
/// `database.password` when set), creating the database first when
/// `create_if_missing` is set and it does not exist, and applies
/// `migrations` on a connection of their own. Every pool connection has the
/// configured `statement_timeout`, `idle_in_transaction_session_timeout`
/// and keepalives, and is closed when it is given back and does not answer
/// a ping at once ([`RELEASE_PING_TIMEOUT`]); the migrations run without a
/// statement timeout (an index build may take longer).
///
/// A schema that has migrations `migrations` does not know, a later
/// release's, is accepted (sqlx's `ignore_missing`), so that the release
/// before can start again after a rollback: migrations only expand the
/// schema in the release that needs it, and contract it (drop, rename)
/// only after a release that no longer uses what they remove
/// (`docs/operations.md`, "Migrations and rollbacks"). A migration both
/// know must still be the same (its checksum).
///
/// # Errors
///
/// [`DatabaseError`]: the URL does not parse, the server is unreachable
/// (within 5 s) or refuses TLS that `sslmode` requires, the database cannot
/// be created, or a migration fails.
pub async fn connect(database: &DatabaseSettings, mut migrations: Migrator) -> Result<PgPool, DatabaseError> {
    migrations.set_ignore_missing(true);
    let url = database.url.expose_secret();
    let mut options = PgConnectOptions::from_str(url).map_err(|_| DatabaseError::InvalidUrl)?;
    if let Some(password) = &database.password {
        options = options.password(password.expose_secret());
    }
    if database.create_if_missing {
        // Creating a database needs a connection to another one.
        let server = options.clone().database("postgres");
        let name = options.get_database().unwrap_or("postgres").to_owned();
        let mut connection = PgConnection::connect_with(&server)
            .await
            .map_err(DatabaseError::Unreachable)?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut connection)
            .await
            .map_err(DatabaseError::Unreachable)?;
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
                Err(error) => return Err(DatabaseError::Create(error)),
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
        .map_err(DatabaseError::Connect)?;
    migrations.run(&mut migrating).await.map_err(DatabaseError::Migrate)?;
    migrating
        .close()
        .await
        .map_err(|error| DatabaseError::Migrate(error.into()))?;
    let pool = PgPoolOptions::new()
        .max_connections(database.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .after_release(|connection, _| Box::pin(answers_on_release(connection)))
        .connect_with(session.options([
            ("statement_timeout", database.statement_timeout_ms.to_string()),
            (
                "idle_in_transaction_session_timeout",
                database.idle_in_transaction_timeout_ms.to_string(),
            ),
        ]))
        .await
        .map_err(DatabaseError::Connect)?;
    Ok(pool)
}

/// Longest a connection given back to the pool may take to answer a ping
/// before it is closed instead of kept.
pub const RELEASE_PING_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether a connection given back to the pool still answers, within
/// [`RELEASE_PING_TIMEOUT`]. A connection whose statement was cut short (a
/// caller's deadline, [`bounded`]) may be waiting on a server that will
/// never answer. sqlx 0.8 pings every released connection itself, but
/// without a bound: on such a connection that ping waits for ever and keeps
/// its slot in the pool, and after `max_connections` of them the pool has
/// none left. This ping runs first; when it gets no answer the connection
/// is closed without a goodbye, and the pool opens a new one when needed.
async fn answers_on_release(connection: &mut PgConnection) -> sqlx::Result<bool> {
    match tokio::time::timeout(RELEASE_PING_TIMEOUT, connection.ping()).await {
        Ok(answer) => answer.map(|()| true),
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "a released connection did not answer a ping within {} ms; closed",
                RELEASE_PING_TIMEOUT.as_millis()
            ),
        ))),
    }
}

/// Runs `call` (database work) for at most `deadline`, `None` meaning no
/// bound. Past it the call is dropped, and with it its connection, which
/// [`connect`]'s pool closes unless it answers at once.
///
/// Server-side limits do not cover this: `statement_timeout` is enforced by
/// a server that answers, and TCP keepalive by a kernel that does. A server
/// that froze (a stopped process, a stuck storage volume) or a connection
/// dropped without a reset by the network in between answers neither, and
/// a caller would wait for ever.
///
/// # Errors
///
/// `call`'s error, or [`sqlx::Error::Io`] of kind `TimedOut` past the
/// deadline.
pub async fn bounded<T>(
    deadline: Option<Duration>,
    call: impl std::future::Future<Output = sqlx::Result<T>>,
) -> sqlx::Result<T> {
    let Some(deadline) = deadline else {
        return call.await;
    };
    tokio::time::timeout(deadline, call).await.unwrap_or_else(|_| {
        Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the database did not answer within {} ms", deadline.as_millis()),
        )))
    })
}
