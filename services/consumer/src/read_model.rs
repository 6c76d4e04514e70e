//! The read model: one row per user, with token counts.

use chrono::{DateTime, Utc};
use events::UserCreated;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// A user as the read model holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct UserView {
    /// The user id.
    pub id: Uuid,
    /// The username.
    pub username: String,
    /// The email address.
    pub email: String,
    /// When the user was created.
    pub created_at: DateTime<Utc>,
    /// How many `issued-token` events were applied for this user.
    pub tokens_issued: i64,
    /// `issued_at` of the latest token, if any.
    pub last_token_issued_at: Option<DateTime<Utc>>,
}

/// Reads one user.
///
/// # Errors
///
/// The database error.
pub async fn find_user(pool: &PgPool, id: Uuid) -> Result<Option<UserView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, username, email, created_at, tokens_issued, last_token_issued_at FROM users WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Whether the read model knows user `id`.
///
/// # Errors
///
/// The database error.
pub async fn has_user(connection: &mut PgConnection, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)")
        .bind(id)
        .fetch_one(connection)
        .await
}

/// Which of `ids` the read model knows.
///
/// # Errors
///
/// The database error.
pub async fn known_users(pool: &PgPool, ids: &[Uuid]) -> Result<std::collections::HashSet<Uuid>, sqlx::Error> {
    let known: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM users WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(pool)
        .await?;
    Ok(known.into_iter().collect())
}

/// Inserts a user unless it is already there (from an earlier event or a
/// fetch from the producer): user data never changes, so either copy is
/// right.
///
/// # Errors
///
/// The database error.
pub async fn insert_user(
    connection: &mut PgConnection,
    id: Uuid,
    username: &str,
    email: &str,
    created_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO users (id, username, email, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(username)
    .bind(email)
    .bind(created_at)
    .execute(connection)
    .await
    .map(drop)
}

/// Inserts `users` as [`insert_user`] does each, in one statement.
///
/// # Errors
///
/// The database error.
pub async fn insert_users(connection: &mut PgConnection, users: &[&UserCreated]) -> Result<(), sqlx::Error> {
    if users.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = users.iter().map(|user| user.user_id).collect();
    let usernames: Vec<&str> = users.iter().map(|user| user.username.as_str()).collect();
    let emails: Vec<&str> = users.iter().map(|user| user.email.as_str()).collect();
    let created: Vec<DateTime<Utc>> = users.iter().map(|user| user.created_at).collect();
    sqlx::query(
        "INSERT INTO users (id, username, email, created_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[]) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&usernames)
    .bind(&emails)
    .bind(&created)
    .execute(connection)
    .await
    .map(drop)
}

/// Counts issued `tokens`, (user id, issued at) pairs, several per user
/// allowed, in one statement: each user's `tokens_issued` grows by its
/// pairs, and its `last_token_issued_at` becomes the latest seen. Returns
/// how many distinct users were updated: fewer than `tokens` names when
/// some are unknown.
///
/// # Errors
///
/// The database error.
pub async fn count_tokens(connection: &mut PgConnection, tokens: &[(Uuid, DateTime<Utc>)]) -> Result<u64, sqlx::Error> {
    if tokens.is_empty() {
        return Ok(0);
    }
    let (ids, issued): (Vec<Uuid>, Vec<DateTime<Utc>>) = tokens.iter().copied().unzip();
    let result = sqlx::query(
        "UPDATE users SET tokens_issued = tokens_issued + t.issued, \
         last_token_issued_at = GREATEST(last_token_issued_at, t.latest) \
         FROM (SELECT id, count(*) AS issued, max(issued_at) AS latest \
               FROM UNNEST($1::uuid[], $2::timestamptz[]) AS token(id, issued_at) GROUP BY id) AS t \
         WHERE users.id = t.id",
    )
    .bind(&ids)
    .bind(&issued)
    .execute(connection)
    .await?;
    Ok(result.rows_affected())
}

/// Counts one issued token. Returns `false` when the user is unknown.
///
/// # Errors
///
/// The database error.
pub async fn count_token(
    connection: &mut PgConnection,
    id: Uuid,
    issued_at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    Ok(count_tokens(connection, &[(id, issued_at)]).await? == 1)
}
