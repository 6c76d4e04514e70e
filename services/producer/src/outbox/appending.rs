//! Appending events to the outbox, in the caller's transaction, and waking
//! the relay once it committed.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use events::UserEvent;

/// The PostgreSQL notification channel [`append`] notifies.
pub const CHANNEL: &str = "outbox";

/// Locks the row of user `user_id` until the caller's transaction ends, so
/// that one user's appends run one after another: call it before taking the
/// event's time. The relay publishes in outbox id order, and ids are taken
/// at insert; with the lock, a user's later insert comes after the earlier
/// transaction committed, so the user's records reach their partition in
/// commit order, with event times (`ce_time`) that never go backwards.
///
/// # Errors
///
/// The database error, which should abort the transaction.
pub async fn lock_subject(tx: &mut PgConnection, user_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map(drop)
}

/// Appends `event` to the outbox inside the caller's transaction and
/// returns its event id (`ce_id`). Call [`notify`] once the transaction has
/// committed. An event of an existing user must be preceded by
/// [`lock_subject`], with the event's time taken after it.
///
/// # Errors
///
/// The database error, which should abort the transaction.
pub async fn append(tx: &mut PgConnection, event: &UserEvent) -> Result<Uuid, sqlx::Error> {
    let event_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, subject, occurred_at, data, traceparent) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(event_id)
    .bind(event.event_type())
    .bind(event.user_id().to_string())
    .bind(event.time())
    .bind(event.data())
    .bind(service_common::telemetry::current_traceparent())
    .execute(&mut *tx)
    .await?;
    Ok(event_id)
}

/// Wakes the relay for rows committed by [`append`]: `NOTIFY outbox`, in a
/// statement of its own. Not an error to the caller when it fails (the
/// events are committed, and the relay finds them within
/// `outbox.poll_interval_ms`); it is logged at `warn`.
pub async fn notify(pool: &PgPool) {
    let notified = sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(pool)
        .await;
    if let Err(error) = notified {
        tracing::warn!(%error, "could not notify the outbox relay; it reads on its next poll");
    }
}
