//! Operator endpoints for outbox rows the relay could not publish: list
//! them, retry one after its cause is fixed, or set one aside. Each failing
//! row holds back the later rows of its key (see [`crate::outbox`]). All
//! need a service credential (`producer service-token` prints one); user
//! tokens get `403`.

use actix_web::{web, HttpResponse};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use service_common::auth::{Authenticated, Principal};
use service_common::http::ErrorBody;
use sqlx::PgPool;
use utoipa::ToSchema;

use crate::domain::ValidationError;
use crate::error::ApiError;
use crate::outbox::{self, FailingRow, SetAside};

/// Most rows `GET /outbox/failing` lists.
pub const MAX_ROWS: i64 = 500;

/// `GET /outbox/failing` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct FailingRows {
    /// Oldest first, at most 500.
    pub rows: Vec<FailingRow>,
}

/// `POST /outbox/{id}/set-aside` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAsideRequest {
    /// Why it is set aside, kept with the row: 1 to 1000 characters.
    #[schema(min_length = 1, max_length = 1000)]
    pub reason: String,
}

/// Lists pending outbox rows whose publishing failed, oldest first, each
/// with its last error and how many later rows of its key wait for it.
///
/// `200 {"rows": [...]}`; `401` without a valid token; `403` with a user
/// token.
#[utoipa::path(
    get,
    path = "/outbox/failing",
    tag = "outbox",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Failing rows, oldest first", body = FailingRows),
        (status = 401, description = "`unauthorized`: no valid token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a user token; this needs a service credential", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "list failing outbox rows", skip_all)]
pub async fn list_failing(caller: Authenticated, pool: web::Data<PgPool>) -> Result<HttpResponse, ApiError> {
    require_operator(&caller)?;
    let rows = outbox::failing_rows(&pool, MAX_ROWS)
        .await
        .context("could not read the failing outbox rows")?;
    Ok(HttpResponse::Ok().json(FailingRows { rows }))
}

/// Makes a failing row due now, once its cause is fixed (a deploy that
/// knows its event type, a larger broker limit): the relay tries it again
/// at once, and on success its key's waiting rows follow in order.
///
/// `200` with the row; `404` when no pending row with that id has failed;
/// `401`/`403` as for listing.
#[utoipa::path(
    post,
    path = "/outbox/{id}/retry",
    tag = "outbox",
    params(("id" = i64, Path, description = "The outbox row id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The row, due now", body = FailingRow),
        (status = 401, description = "`unauthorized`: no valid token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a user token; this needs a service credential", body = ErrorBody),
        (status = 404, description = "`not_found`: no failing row with this id", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "retry outbox row", skip_all, fields(outbox_id = %path))]
pub async fn retry(
    caller: Authenticated,
    pool: web::Data<PgPool>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&caller)?;
    let row = outbox::retry_now(&pool, path.into_inner())
        .await
        .context("could not retry the outbox row")?;
    row.map(|row| HttpResponse::Ok().json(row)).ok_or(ApiError::NotFound)
}

/// Sets a failing row aside: it is never published, and its key's waiting
/// rows flow again. The row stays in the outbox with the time and the
/// reason (`set_aside_at`, `set_aside_reason`); the event it carried is
/// not delivered, so use this only for an event that must not or cannot be
/// published, and say why.
///
/// `200` with the row as it was; `409` when the row is due, so the relay
/// may be publishing it now (set it aside once that attempt failed, after
/// which it is due again later); `422` for an empty or overlong reason;
/// `404` and `401`/`403` as for retry.
#[utoipa::path(
    post,
    path = "/outbox/{id}/set-aside",
    tag = "outbox",
    params(("id" = i64, Path, description = "The outbox row id")),
    request_body = SetAsideRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The row, now set aside", body = FailingRow),
        (status = 400, description = "`invalid_json`: a malformed body, a missing or unknown field", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a user token; this needs a service credential", body = ErrorBody),
        (status = 404, description = "`not_found`: no failing row with this id", body = ErrorBody),
        (status = 409, description = "`conflict`: the row is due, so the relay may be publishing it now", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over 16 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: the reason is empty or too long", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "set outbox row aside", skip_all, fields(outbox_id = %path))]
pub async fn set_aside(
    caller: Authenticated,
    pool: web::Data<PgPool>,
    path: web::Path<i64>,
    request: web::Json<SetAsideRequest>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&caller)?;
    let reason = service_common::http::operator_reason(&request.reason).ok_or(ValidationError {
        field: "reason",
        rule: "must be 1 to 1000 characters",
    })?;
    let set_aside = outbox::set_aside(&pool, path.into_inner(), reason)
        .await
        .context("could not set the outbox row aside")?;
    match set_aside {
        SetAside::Done(row) => Ok(HttpResponse::Ok().json(row)),
        SetAside::Due(row) => Err(ApiError::Due {
            next_attempt_at: row.next_attempt_at,
        }),
        SetAside::NotFailing => Err(ApiError::NotFound),
    }
}

fn require_operator(caller: &Authenticated) -> Result<(), ApiError> {
    match &caller.0 {
        Principal::Service(_) => Ok(()),
        Principal::User(_) => Err(ApiError::Forbidden),
    }
}
