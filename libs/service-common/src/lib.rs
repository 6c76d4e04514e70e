//! What both services do the same way.
//!
//! # Layout
//!
//! - [`configuration`]: layered configuration (embedded base file, then the
//!   `APP_ENVIRONMENT` file, then `APP_*` environment variables).
//! - [`telemetry`]: the tracing subscriber, W3C trace context across the
//!   services, and OTLP export when configured.
//! - [`auth`]: access tokens (JWT, HS256): user tokens the producer issues
//!   and the service credential the consumer presents to the producer.
//! - [`http`]: the JSON error body every 4xx/5xx carries, and actix-web
//!   extractor settings that answer malformed input with it.
//! - [`server`]: the HTTP server around each service's routes: tracing,
//!   metrics, `/health/live`, JSON `404`s.
//! - [`shutdown`]: SIGTERM/SIGINT as a cancellation token.
//! - [`database`]: the pool, database creation and migrations.
//! - [`health`]: the liveness and readiness handlers.
//! - [`openapi`]: what both services' OpenAPI documents share.
//! - [`metrics`]: the Prometheus registry, HTTP metrics and `GET /metrics`.
//! - [`run`]: the shape of `main`.
//! - [`retry`]: the backoff policy for transient failures.
//! - [`retention`]: deleting rows older than a retention period, in
//!   bounded batches, one instance at a time.
#![warn(missing_docs)]

pub mod auth;
pub mod configuration;
pub mod database;
pub mod health;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod retention;
pub mod retry;
pub mod run;
pub mod server;
pub mod shutdown;
pub mod telemetry;
