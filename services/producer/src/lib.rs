//! The producer service: owns users and publishes what happens to them.
//!
//! `POST /users` and `POST /auth/token` change the database and, in the
//! same transaction, append an event to the outbox table; the
//! [`outbox::Relay`] publishes pending outbox rows to Kafka and marks each
//! one published after its delivery report. So an accepted request's event
//! is never lost, even when the broker is down, and HTTP requests never wait
//! for Kafka.
//!
//! # Layout
//!
//! - [`configuration`]: settings and their defaults;
//! - [`startup`]: [`startup::Application`], the HTTP server plus the relay;
//! - [`domain`]: parsed request data (username, email, password rules);
//! - [`routes`]: one module per resource;
//! - [`outbox`]: appending events, and the relay;
//! - [`password`]: argon2id hashing;
//! - [`login_limit`]: throttling of login attempts;
//! - [`error`]: the API error type;
//! - [`openapi`]: the OpenAPI document, served at `GET /openapi.json`.
#![warn(missing_docs)]

pub mod configuration;
pub mod domain;
pub mod error;
pub mod login_limit;
pub mod openapi;
pub mod outbox;
pub mod password;
pub mod routes;
pub mod startup;
