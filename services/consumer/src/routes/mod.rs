//! HTTP routes, one module per resource.

pub mod consumption;
pub mod dead_letters;
pub mod events;
pub mod health;
pub mod parked;
pub mod records;
pub mod users;

use service_common::auth::{Authenticated, Principal};

use crate::error::ApiError;

/// The operator endpoints' check: a service credential passes, a user
/// token gets `403 forbidden` saying `needs` (what needs a service
/// credential).
fn require_operator(caller: &Authenticated, needs: &'static str) -> Result<(), ApiError> {
    match &caller.0 {
        Principal::Service(_) => Ok(()),
        Principal::User(_) => Err(ApiError::Forbidden(needs)),
    }
}

/// An operator request's `reason`, trimmed
/// ([`service_common::http::operator_reason`]), or `422` when it is empty
/// or longer than 1000 characters.
fn operator_reason(reason: &str) -> Result<&str, ApiError> {
    service_common::http::operator_reason(reason)
        .ok_or_else(|| ApiError::Validation("reason must be 1 to 1000 characters".to_owned()))
}
