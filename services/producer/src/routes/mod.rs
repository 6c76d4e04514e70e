//! HTTP routes, one module per resource.

pub mod auth;
pub mod outbox;
pub mod users;
