//! HTTP routes, one module per resource.

pub mod dead_letters;
pub mod events;
pub mod health;
pub mod parked;
pub mod users;
