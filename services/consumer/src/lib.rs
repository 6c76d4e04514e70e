//! The consumer service: a consumer-group member that applies user events
//! to its own read model, and serves that read model over HTTP.
//!
//! Delivery: at-least-once from Kafka (offsets are committed only after a
//! record's effect is committed to PostgreSQL), made exactly-once in effect
//! by recording each event id in the same transaction as its effect.
//!
//! # Layout
//!
//! - [`configuration`]: settings and their defaults;
//! - [`startup`]: [`startup::Application`], the HTTP server plus the
//!   processing loop;
//! - [`delivery`]: what happens to each record: applied, retried in place,
//!   parked on the retry topic, or dead-lettered;
//! - [`parking`]: which records are parked, per key, in order;
//! - [`recovery`]: parked records whose copies were lost, and the
//!   operator's actions on parked records;
//! - [`dead_letters`]: reading and redriving dead letters;
//! - [`dead_letter_requests`]: records an operator asked to dead-letter by
//!   their offset;
//! - [`pauses`]: topics and partitions an operator paused;
//! - [`replays`]: replaying an event topic from a time, through the inbox;
//! - [`processing`]: the event handlers (one attempt at applying a record);
//! - [`circuit`]: the circuit breakers of the database and the producer;
//! - [`read_model`]: the read model's queries;
//! - [`inbox`]: retention of the deduplication window;
//! - [`feed`]: the live feed of applied events (Server-Sent Events);
//! - [`producer_client`]: HTTP calls to the producer service;
//! - [`routes`]: one module per resource;
//! - [`error`]: the API error type;
//! - [`openapi`]: the OpenAPI document, served at `GET /openapi.json`.
#![warn(missing_docs)]

pub mod circuit;
pub mod configuration;
pub mod dead_letter_requests;
pub mod dead_letters;
pub mod delivery;
pub mod error;
pub mod feed;
pub mod inbox;
pub mod openapi;
pub mod parking;
pub mod pauses;
pub mod processing;
pub mod producer_client;
pub mod read_model;
pub mod recovery;
pub mod replays;
pub mod routes;
pub mod startup;
