//! `POST /auth/token`.

use actix_web::{web, HttpRequest, HttpResponse};
use anyhow::Context;
use events::{TokenIssued, UserEvent};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use service_common::auth::TokenKeys;
use service_common::http::ErrorBody;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::login_limit::LoginLimiter;
use crate::{outbox, password};

/// `POST /auth/token` body. Unknown fields are refused (`400 invalid_json`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The username, in any letter case.
    #[schema(example = "ada")]
    username: String,
    /// The password.
    #[schema(value_type = String, format = Password)]
    password: SecretString,
}

/// `POST /auth/token` answer (OAuth 2.0 token response shape, RFC 6749 §5.1).
#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// A JWT (HS256) for `Authorization: Bearer`.
    access_token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    token_type: &'static str,
    /// Seconds until the token expires.
    expires_in: u64,
}

/// Lifetime of issued tokens, from `auth.token_ttl_secs`.
#[derive(Debug, Clone, Copy)]
pub struct TokenTtl(pub chrono::Duration);

/// Checks a username and password and issues an access token; the
/// `user.token_issued.v1` event is appended in a transaction before the
/// token is returned.
///
/// `200` with the token; `401` for an unknown username or a wrong password
/// (the same answer, in the same time); `400` for a malformed body; `429`
/// with `Retry-After` when this address or this username has used up its
/// attempts (per-address and per-username token buckets).
#[utoipa::path(
    post,
    path = "/auth/token",
    tag = "auth",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "A token; `user.token_issued.v1` is on its way to `issued-token`", body = TokenResponse),
        (status = 400, description = "`invalid_json`: malformed body, a missing or unknown field", body = ErrorBody),
        (status = 401, description = "`invalid_credentials`: unknown username or wrong password", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over 16 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = ErrorBody),
        (
            status = 429,
            description = "`too_many_requests`: this address or this username has used its attempts",
            body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until the next attempt may succeed"))
        ),
    )
)]
#[tracing::instrument(name = "issue token", skip_all, fields(user_id))]
pub async fn issue_token(
    pool: web::Data<PgPool>,
    keys: web::Data<TokenKeys>,
    ttl: web::Data<TokenTtl>,
    limiter: web::Data<LoginLimiter>,
    http: HttpRequest,
    request: web::Json<TokenRequest>,
) -> Result<HttpResponse, ApiError> {
    let TokenRequest { username, password } = request.into_inner();
    let address = limiter.client_address(&http);
    if let Err(throttled) = limiter.check(address, &username) {
        tracing::warn!(by = ?throttled.by, client = ?address, "login attempt throttled");
        return Err(ApiError::TooManyAttempts(throttled.retry_after));
    }
    let user: Option<(Uuid, String)> =
        sqlx::query_as("SELECT id, password_hash FROM users WHERE lower(username) = lower($1)")
            .bind(&username)
            .fetch_optional(pool.get_ref())
            .await
            .context("could not read the user")?;
    let (user_id, stored_hash) = user.unzip();
    if !password::verify(password, stored_hash).await? {
        return Err(ApiError::InvalidCredentials);
    }
    let user_id = user_id.expect("a verified password belongs to a known user");
    tracing::Span::current().record("user_id", tracing::field::display(user_id));

    let mut tx = pool.begin().await.context("could not begin a transaction")?;
    // The token, and so the event's time, after the lock: one user's token
    // events reach their partition in commit order (outbox::lock_subject).
    outbox::lock_subject(&mut tx, user_id)
        .await
        .context("could not lock the user")?;
    let issued = keys.issue_user_token(user_id, ttl.0);
    let event = UserEvent::TokenIssued(TokenIssued {
        user_id,
        token_id: issued.token_id,
        issued_at: issued.issued_at,
        expires_at: issued.expires_at,
    });
    let event_id = outbox::append(&mut tx, &event)
        .await
        .context("could not append to the outbox")?;
    tx.commit().await.context("could not commit the token event")?;
    outbox::notify(pool.get_ref()).await;
    tracing::info!(%user_id, token_id = %issued.token_id, %event_id, "token issued");

    Ok(HttpResponse::Ok().json(TokenResponse {
        access_token: issued.token.expose_secret().to_owned(),
        token_type: "Bearer",
        expires_in: (issued.expires_at - issued.issued_at).num_seconds().unsigned_abs(),
    }))
}
