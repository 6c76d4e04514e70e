//! HTTP routes, one module per resource.

pub mod dead_letters;
pub mod users;
