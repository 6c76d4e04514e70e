//! The JSON error body, and extractor settings that answer malformed input
//! with it.
//!
//! Every 4xx and 5xx answer has the body
//! `{"error": {"code": "<machine-readable>", "message": "<for humans>"}}`.
//! Messages of 5xx answers never carry internal details.

use actix_web::error::{InternalError, JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Largest JSON request body accepted, in bytes.
pub const MAX_JSON_BODY_BYTES: usize = 16 * 1024;

/// Longest reason an operator may give, in characters, for an action kept
/// with what it changed (an outbox row set aside, a parked record
/// dead-lettered).
pub const MAX_REASON_CHARS: usize = 1000;

/// An operator's `reason`, trimmed, when it is 1 to [`MAX_REASON_CHARS`]
/// characters; `None` otherwise, for the caller to answer `422`.
pub fn operator_reason(reason: &str) -> Option<&str> {
    let reason = reason.trim();
    (!reason.is_empty() && reason.chars().count() <= MAX_REASON_CHARS).then_some(reason)
}

/// The body of every 4xx and 5xx answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"error": {"code": "not_found", "message": "no such resource"}}))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong, for programs and for people.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable, stable: `invalid_json`, `not_found`,
    /// `unauthorized`, `validation_failed`, ...
    pub code: String,
    /// For people; never internal details.
    pub message: String,
}

/// An error response with the JSON error body.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(ErrorBody {
        error: ErrorDetail {
            code: code.to_owned(),
            message: message.to_owned(),
        },
    })
}

/// JSON extractor settings: a size limit, and malformed or mistyped bodies
/// answered with `400 invalid_json` / `415 unsupported_media_type` /
/// `413 payload_too_large` in the JSON error body.
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default().limit(MAX_JSON_BODY_BYTES).error_handler(
        |error: JsonPayloadError, _req: &HttpRequest| {
            let (status, code) = match &error {
                JsonPayloadError::ContentType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
                JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
                    (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
                }
                _ => (StatusCode::BAD_REQUEST, "invalid_json"),
            };
            let response = error_response(status, code, &error.to_string());
            InternalError::from_response(error, response).into()
        },
    )
}

/// Path extractor settings: a malformed path segment (an id that is not a
/// UUID, say) is `404 not_found`, as for an unknown id.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|error: PathError, _req: &HttpRequest| {
        let response = error_response(StatusCode::NOT_FOUND, "not_found", "no such resource");
        InternalError::from_response(error, response).into()
    })
}

/// Query-string extractor settings: a malformed or unknown parameter is
/// `400 invalid_query` with the JSON error body.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|error: QueryPayloadError, _req: &HttpRequest| {
        let response = error_response(StatusCode::BAD_REQUEST, "invalid_query", &error.to_string());
        InternalError::from_response(error, response).into()
    })
}

/// The default service: unknown routes are `404 not_found` with the JSON
/// error body.
pub async fn not_found() -> HttpResponse {
    error_response(StatusCode::NOT_FOUND, "not_found", "no such resource")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operator_reason_is_trimmed_and_between_1_and_1000_characters() {
        assert_eq!(operator_reason("  fixed upstream \n"), Some("fixed upstream"));
        assert_eq!(operator_reason(" \t "), None);
        let longest = "é".repeat(MAX_REASON_CHARS);
        assert_eq!(operator_reason(&longest), Some(longest.as_str()));
        assert_eq!(operator_reason(&format!("{longest}x")), None);
    }
}
