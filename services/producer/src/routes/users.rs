//! `POST /users` and `GET /users/{id}`.

use actix_web::{web, HttpResponse};
use anyhow::Context;
use chrono::{DateTime, SubsecRound, Utc};
use events::{UserCreated, UserEvent};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use service_common::auth::Authenticated;
use service_common::http::ErrorBody;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{Email, NewUser, Password, Username};
use crate::error::ApiError;
use crate::{outbox, password};

/// `POST /users` body. Unknown fields are refused (`400 invalid_json`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    /// 3 to 32 characters: ASCII letters, digits, `_`, `-`, `.`; unique
    /// regardless of case.
    #[schema(min_length = 3, max_length = 32, pattern = "^[A-Za-z0-9_.-]{3,32}$", example = "ada")]
    username: String,
    /// An RFC 5322 address of at most 254 characters; unique regardless of
    /// case.
    #[schema(format = Email, max_length = 254, example = "ada@example.com")]
    email: String,
    /// 8 to 128 characters.
    #[schema(value_type = String, format = Password, min_length = 8, max_length = 128)]
    password: SecretString,
}

impl TryFrom<CreateUserRequest> for NewUser {
    type Error = crate::domain::ValidationError;

    fn try_from(request: CreateUserRequest) -> Result<Self, Self::Error> {
        Ok(NewUser {
            username: Username::parse(&request.username)?,
            email: Email::parse(&request.email)?,
            password: Password::parse(request.password)?,
        })
    }
}

/// A user as the API shows it: never the password hash.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, ToSchema)]
pub struct UserResponse {
    /// The user id (a UUID).
    pub id: Uuid,
    /// The username.
    pub username: String,
    /// The email address.
    pub email: String,
    /// When the user was created (microsecond precision, as stored).
    pub created_at: DateTime<Utc>,
}

/// Creates a user and, in the same transaction, its `user.created.v1` event.
///
/// `201` with the user; `409` when the username or email is taken; `422`
/// when a field breaks a rule; `400` for a malformed body.
#[utoipa::path(
    post,
    path = "/users",
    tag = "users",
    request_body = CreateUserRequest,
    responses(
        (status = 201, description = "Created; `user.created.v1` is on its way to `new-user-created`", body = UserResponse),
        (status = 400, description = "`invalid_json`: malformed body, a missing or unknown field", body = ErrorBody),
        (status = 409, description = "`conflict`: the username or email is taken", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over 16 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a field breaks its rule; the message names it", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "create user", skip_all, fields(user_id))]
pub async fn create_user(
    pool: web::Data<PgPool>,
    request: web::Json<CreateUserRequest>,
) -> Result<HttpResponse, ApiError> {
    let new_user = NewUser::try_from(request.into_inner())?;
    let password_hash = password::hash(new_user.password.into_secret()).await?;
    let user = UserResponse {
        id: Uuid::new_v4(),
        username: new_user.username.as_str().to_owned(),
        email: new_user.email.as_str().to_owned(),
        // PostgreSQL stores microseconds; the event and the answer say the same.
        created_at: Utc::now().trunc_subsecs(6),
    };
    tracing::Span::current().record("user_id", tracing::field::display(user.id));

    let mut tx = pool.begin().await.context("could not begin a transaction")?;
    sqlx::query("INSERT INTO users (id, username, email, password_hash, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(user.id)
        .bind(&user.username)
        .bind(&user.email)
        .bind(&password_hash)
        .bind(user.created_at)
        .execute(&mut *tx)
        .await
        .map_err(on_unique_violation)?;
    let event = UserEvent::Created(UserCreated {
        user_id: user.id,
        username: user.username.clone(),
        email: user.email.clone(),
        created_at: user.created_at,
    });
    let event_id = outbox::append(&mut tx, &event)
        .await
        .context("could not append to the outbox")?;
    tx.commit().await.context("could not commit the new user")?;
    outbox::notify(pool.get_ref()).await;
    tracing::info!(user_id = %user.id, %event_id, "user created");
    Ok(HttpResponse::Created().json(user))
}

/// Returns a user. Requires the user's own token or a service credential.
///
/// `200` with the user; `404` when unknown; `403` for another user's token;
/// `401` without a valid token.
#[utoipa::path(
    get,
    path = "/users/{id}",
    tag = "users",
    params(("id" = Uuid, Path, description = "The user id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user", body = UserResponse),
        (status = 401, description = "`unauthorized`: no valid token", body = ErrorBody),
        (status = 403, description = "`forbidden`: another user's token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such user (or the id is not a UUID)", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "get user", skip_all, fields(user_id = %path))]
pub async fn get_user(
    Authenticated(principal): Authenticated,
    pool: web::Data<PgPool>,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    if !principal.may_read_user(id) {
        return Err(ApiError::Forbidden);
    }
    let user: Option<UserResponse> = sqlx::query_as("SELECT id, username, email, created_at FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(pool.get_ref())
        .await
        .context("could not read the user")?;
    user.map(|user| HttpResponse::Ok().json(user)).ok_or(ApiError::NotFound)
}

/// Turns a unique violation into `409` naming the field; anything else is
/// unexpected.
fn on_unique_violation(error: sqlx::Error) -> ApiError {
    if let Some(db) = error.as_database_error() {
        match db.constraint() {
            Some("users_username_key") => return ApiError::Conflict("username"),
            Some("users_email_key") => return ApiError::Conflict("email"),
            _ => {}
        }
    }
    ApiError::Unexpected(anyhow::Error::new(error).context("could not insert the user"))
}
