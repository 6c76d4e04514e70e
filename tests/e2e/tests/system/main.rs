//! API and end-to-end tests against a real broker and PostgreSQL. See the
//! `e2e` library for the environment they need.

mod alerts;
mod broker_outage;
mod consumer_api;
mod consumption;
mod database;
mod event_flow;
mod feed;
mod outbox;
mod producer_api;
mod retention;
mod tls;
mod topics;
