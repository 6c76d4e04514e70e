//! `GET /users/{id}`.

use actix_web::{web, HttpResponse};
use anyhow::Context;
use service_common::auth::Authenticated;
use service_common::http::ErrorBody;
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ApiError;
use crate::producer_client::ProducerClient;
use crate::read_model::{self, UserView};

/// Returns a user from the read model; a user it does not know yet is
/// asked of the producer (with no tokens counted yet). Requires the user's
/// own token or a service credential, as the producer's `GET /users/{id}`
/// does.
///
/// `200` with the user; `404` when neither knows it; `401` without a valid
/// token; `403` for another user's token; `503` when the producer cannot be
/// asked.
#[utoipa::path(
    get,
    path = "/users/{id}",
    tag = "users",
    params(("id" = Uuid, Path, description = "The user id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user, with the tokens issued to it so far", body = UserView),
        (status = 401, description = "`unauthorized`: no valid token", body = ErrorBody),
        (status = 403, description = "`forbidden`: another user's token", body = ErrorBody),
        (status = 404, description = "`not_found`: neither the read model nor the producer knows it", body = ErrorBody),
        (status = 503, description = "`upstream_unavailable`: the producer could not be asked", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "get user", skip_all, fields(user_id = %path))]
pub async fn get_user(
    Authenticated(caller): Authenticated,
    pool: web::Data<PgPool>,
    producer: web::Data<ProducerClient>,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    if !caller.may_read_user(id) {
        return Err(ApiError::Forbidden("a user token reads only its own user"));
    }
    if let Some(user) = read_model::find_user(&pool, id)
        .await
        .context("could not read the user")?
    {
        return Ok(HttpResponse::Ok().json(user));
    }
    let user = producer
        .get_user(id)
        .await
        .map_err(|e| ApiError::UpstreamUnavailable(e.into()))?;
    let user = user.ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(UserView {
        id: user.id,
        username: user.username,
        email: user.email,
        created_at: user.created_at,
        tokens_issued: 0,
        last_token_issued_at: None,
    }))
}
