//! The producer's API error: each variant maps to a status code and the
//! JSON error body; internal details are logged, never sent.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use service_common::http::error_response;

use crate::domain::ValidationError;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// `422 validation_failed`: a field breaks a rule.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// `409 conflict`: the username or email is taken.
    #[error("{0} is already taken")]
    Conflict(&'static str),
    /// `401 invalid_credentials`: unknown username or wrong password.
    #[error("invalid username or password")]
    InvalidCredentials,
    /// `403 forbidden`: a valid token that does not grant this resource.
    #[error("this token does not grant access to this resource")]
    Forbidden,
    /// `404 not_found`.
    #[error("no such resource")]
    NotFound,
    /// `409 conflict`: the outbox row is due, so the relay may be
    /// publishing it now.
    #[error(
        "the row is due (next attempt {}), so the relay may be publishing it now; \
         set it aside once this attempt failed",
        next_attempt_at.map_or_else(|| "unknown".to_owned(), |at| at.to_rfc3339())
    )]
    Due {
        /// When it was due.
        next_attempt_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// `429 too_many_requests` with `Retry-After` (whole seconds, rounded
    /// up): too many login attempts from this address or for this username.
    #[error("too many login attempts; retry in {} s", retry_after_secs(.0))]
    TooManyAttempts(std::time::Duration),
    /// `500 internal_error`: anything else; the cause is logged.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict(_) | ApiError::Due { .. } => StatusCode::CONFLICT,
            ApiError::InvalidCredentials => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let code = match self {
            ApiError::Validation(_) => "validation_failed",
            ApiError::Conflict(_) | ApiError::Due { .. } => "conflict",
            ApiError::InvalidCredentials => "invalid_credentials",
            ApiError::Forbidden => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::TooManyAttempts(wait) => {
                let mut response = error_response(self.status_code(), "too_many_requests", &self.to_string());
                response.headers_mut().insert(
                    actix_web::http::header::RETRY_AFTER,
                    actix_web::http::header::HeaderValue::from(retry_after_secs(wait)),
                );
                return response;
            }
            ApiError::Unexpected(error) => {
                tracing::error!(error = format!("{error:#}"), "request failed");
                return error_response(self.status_code(), "internal_error", "internal error");
            }
        };
        error_response(self.status_code(), code, &self.to_string())
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
fn retry_after_secs(wait: &std::time::Duration) -> u64 {
    let whole = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    whole.max(1)
}
