//! HTTP routes, one module per resource.

pub mod auth;
pub mod users;
