//! Rows whose publishing failed: the relay records each attempt with its
//! backoff (`record_failures`), and operators list them, retry one now or
//! set one aside over `/outbox/failing`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::notify;

/// Backoff of a row whose publishing failed: it is read again this long
/// after its first failure, twice as long after each further one, and at
/// most [`FAILED_ROW_MAX_BACKOFF`] later. Long enough that a row that cannot
/// be published costs one attempt a minute, short enough that one that
/// failed for a passing reason (a full queue) is retried at once.
const FAILED_ROW_FIRST_BACKOFF: Duration = Duration::from_secs(1);
const FAILED_ROW_MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A pending outbox row whose publishing failed, as operators see it.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct FailingRow {
    /// The outbox row id (what retry and set-aside take).
    pub id: i64,
    /// The event id (`ce_id`).
    pub event_id: Uuid,
    /// The event type (`ce_type`).
    pub event_type: String,
    /// The record key: the user id.
    pub key: String,
    /// When the event happened.
    pub occurred_at: DateTime<Utc>,
    /// Failed publishing attempts.
    pub attempts: i32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the relay tries it again.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Later rows of its key that wait for it.
    pub waiting_rows: i64,
}

/// A [`FailingRow`]'s columns, from `outbox failing`.
const FAILING_ROW: &str = "id, event_id, event_type, subject AS key, occurred_at, attempts, last_error, \
    next_attempt_at, (SELECT count(*) FROM outbox later WHERE later.subject = failing.subject \
    AND later.id > failing.id AND later.published_at IS NULL AND later.set_aside_at IS NULL) AS waiting_rows";

/// A failing row: pending (neither published nor set aside), and failed at
/// least once.
const IS_FAILING: &str = "published_at IS NULL AND set_aside_at IS NULL AND attempts > 0";

/// Pending rows whose publishing failed at least once, oldest first, at
/// most `limit`.
///
/// # Errors
///
/// The database error.
pub async fn failing_rows(pool: &PgPool, limit: i64) -> Result<Vec<FailingRow>, sqlx::Error> {
    let query = format!("SELECT {FAILING_ROW} FROM outbox failing WHERE {IS_FAILING} ORDER BY id LIMIT $1");
    sqlx::query_as(&query).bind(limit).fetch_all(pool).await
}

/// Makes failing row `id` due now (after the cause was fixed: a deploy
/// that knows its event type, say) and wakes the relay. Returns the row,
/// or `None` when no pending row with that id has failed.
///
/// # Errors
///
/// The database error.
pub async fn retry_now(pool: &PgPool, id: i64) -> Result<Option<FailingRow>, sqlx::Error> {
    let query = format!(
        "UPDATE outbox failing SET next_attempt_at = now() WHERE id = $1 AND {IS_FAILING} RETURNING {FAILING_ROW}"
    );
    let row = sqlx::query_as(&query).bind(id).fetch_optional(pool).await?;
    if row.is_some() {
        notify(pool).await;
    }
    Ok(row)
}

/// What [`set_aside`] did.
#[derive(Debug)]
pub enum SetAside {
    /// The row, as it was, is set aside.
    Done(FailingRow),
    /// The row is due, so the relay may be publishing it now: it is left as
    /// it was. Once this attempt fails it is due again later
    /// (`next_attempt_at`), and can be set aside then.
    Due(FailingRow),
    /// No pending row with that id has failed.
    NotFailing,
}

/// How far ahead a failing row must be due for [`set_aside`] to take it:
/// the relay reads a row once it is due, so a row due later than this is
/// not in flight, and will not be read before the set-aside commits (the
/// `UPDATE` would have to take longer than this).
const SET_ASIDE_MARGIN_SECS: f64 = 1.0;

/// Sets failing row `id` aside: it is never published, the later rows of
/// its key flow again, and the row stays in the outbox with `set_aside_at`
/// and `reason` as the record of it. Wakes the relay.
///
/// Only a row that is not due (within a second) is taken:
/// a due row may be in flight, and its record delivered after it was set
/// aside ([`SetAside::Due`]).
///
/// # Errors
///
/// The database error.
pub async fn set_aside(pool: &PgPool, id: i64, reason: &str) -> Result<SetAside, sqlx::Error> {
    let query = format!(
        "UPDATE outbox failing SET set_aside_at = now(), set_aside_reason = $2 WHERE id = $1 AND {IS_FAILING} \
           AND next_attempt_at > clock_timestamp() + make_interval(secs => $3) \
         RETURNING {FAILING_ROW}"
    );
    let row: Option<FailingRow> = sqlx::query_as(&query)
        .bind(id)
        .bind(reason)
        .bind(SET_ASIDE_MARGIN_SECS)
        .fetch_optional(pool)
        .await?;
    if let Some(row) = row {
        tracing::warn!(outbox_id = row.id, event_id = %row.event_id, key = row.key, reason, "outbox row set aside; it will not be published");
        notify(pool).await;
        return Ok(SetAside::Done(row));
    }
    let query = format!("SELECT {FAILING_ROW} FROM outbox failing WHERE id = $1 AND {IS_FAILING}");
    let due: Option<FailingRow> = sqlx::query_as(&query).bind(id).fetch_optional(pool).await?;
    Ok(due.map_or(SetAside::NotFailing, SetAside::Due))
}

/// Records one failed attempt of each row in `failed` (outbox id, error):
/// its attempt count, the error, and when it is due again
/// ([`FAILED_ROW_FIRST_BACKOFF`] doubling up to [`FAILED_ROW_MAX_BACKOFF`]);
/// logs each at `warn`.
///
/// # Errors
///
/// The database error.
pub(super) async fn record_failures(
    connection: &mut PgConnection,
    failed: &[(i64, String)],
) -> Result<(), sqlx::Error> {
    let ids: Vec<i64> = failed.iter().map(|(id, _)| *id).collect();
    let errors: Vec<&str> = failed.iter().map(|(_, error)| error.as_str()).collect();
    let recorded: Vec<(i64, Uuid, String, String, i32, f64, String)> = sqlx::query_as(
        "UPDATE outbox o SET attempts = o.attempts + 1, last_error = f.error, \
           next_attempt_at = now() + make_interval(secs => least($3 * 2 ^ least(o.attempts, 30), $4)) \
         FROM UNNEST($1::bigint[], $2::text[]) AS f(id, error) WHERE o.id = f.id \
         RETURNING o.id, o.event_id, o.event_type, o.subject, o.attempts, \
           EXTRACT(EPOCH FROM o.next_attempt_at - now())::float8, o.last_error",
    )
    .bind(&ids)
    .bind(&errors)
    .bind(FAILED_ROW_FIRST_BACKOFF.as_secs_f64())
    .bind(FAILED_ROW_MAX_BACKOFF.as_secs_f64())
    .fetch_all(&mut *connection)
    .await?;
    for (id, event_id, event_type, key, attempts, retry_in, error) in recorded {
        tracing::warn!(
            outbox_id = id,
            %event_id,
            event_type,
            key,
            attempts,
            retry_in_secs = retry_in,
            error,
            "outbox row not published; its key's later rows wait for it (GET /outbox/failing)"
        );
    }
    Ok(())
}
