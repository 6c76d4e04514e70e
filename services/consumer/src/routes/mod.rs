//! HTTP routes, one module per resource.

pub mod dead_letters;
pub mod health;
pub mod users;
