//! The consumer's API error: each variant maps to a status code and the
//! JSON error body; internal details are logged, never sent.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use service_common::http::error_response;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// `403 forbidden`: the token is valid but does not allow this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// `404 not_found`.
    #[error("no such resource")]
    NotFound,
    /// `400 invalid_header`: a request header has a value that cannot be.
    #[error("{0}")]
    InvalidHeader(&'static str),
    /// `410 replay_window_passed`: what the client asks to replay is no
    /// longer kept; the message says what to do.
    #[error("{0}")]
    ReplayWindowPassed(String),
    /// `422 validation_failed`: the request is well-formed but cannot be
    /// carried out; the message says why.
    #[error("{0}")]
    Validation(String),
    /// `503 broker_unavailable`: Kafka did not answer.
    #[error("the kafka broker is unavailable")]
    BrokerUnavailable(#[source] anyhow::Error),
    /// `503 upstream_unavailable`: the producer could not be asked.
    #[error("the producer service is unavailable")]
    UpstreamUnavailable(#[source] anyhow::Error),
    /// `500 internal_error`: anything else; the cause is logged.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::InvalidHeader(_) => StatusCode::BAD_REQUEST,
            ApiError::ReplayWindowPassed(_) => StatusCode::GONE,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::UpstreamUnavailable(_) | ApiError::BrokerUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let code = match self {
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::InvalidHeader(_) => "invalid_header",
            ApiError::ReplayWindowPassed(_) => "replay_window_passed",
            ApiError::Validation(_) => "validation_failed",
            ApiError::BrokerUnavailable(error) => {
                tracing::warn!(error = format!("{error:#}"), "broker unavailable");
                "broker_unavailable"
            }
            ApiError::UpstreamUnavailable(error) => {
                tracing::warn!(error = format!("{error:#}"), "producer unavailable");
                "upstream_unavailable"
            }
            ApiError::Unexpected(error) => {
                tracing::error!(error = format!("{error:#}"), "request failed");
                return error_response(self.status_code(), "internal_error", "internal error");
            }
        };
        error_response(self.status_code(), code, &self.to_string())
    }
}
