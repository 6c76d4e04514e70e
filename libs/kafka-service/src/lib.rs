//! The one crate in the workspace that speaks Kafka.
//!
//! Everything the services need from Kafka goes through the small surface
//! below; no other crate imports `rdkafka` (but the benchmark, `bench/`,
//! which measures rdkafka itself as the ceiling).
//!
//! # Layout
//!
//! - [`settings`]: connection and client settings ([`KafkaSettings`],
//!   [`ConsumerSettings`]) as they appear in the services' configuration.
//! - [`context`]: what every client shares: librdkafka logs into
//!   `tracing`, and Amazon MSK IAM authentication tokens.
//! - [`topics`]: the topic registry, mapping each logical [`Topic`] to its
//!   physical name, partition count and replication factor.
//! - [`admin`]: topic provisioning at start-up and consumer-group offsets
//!   (committed offset and high watermark per partition).
//! - [`envelope`]: the event envelope, a CloudEvents 1.0 event in the Kafka
//!   protocol binding's binary mode (`ce_*` headers, JSON value).
//! - [`producer`]: an idempotent producer that resolves once the broker has
//!   acknowledged a record (its delivery report).
//! - [`consumer`]: a consumer-group member with manual offset commits and
//!   cooperative-sticky rebalancing: each assigned partition is held under a
//!   [`PartitionLease`] whose processed offsets are committed in batches, and
//!   synchronously before the partition is revoked.
//! - [`dispatch`]: runs a consumer with one worker per assigned partition,
//!   so a partition that is waiting (retrying a record) holds up no other.
//! - [`monitor`]: a group member's metrics (lag, rebalances, commits) and
//!   progress, for readiness.
//! - [`failure`]: retry and dead-letter copies of failed records, and their
//!   headers.
//! - [`reader`]: reads ranges of partitions outside any group, through one
//!   client (listing dead letters).
//! - [`error`]: one error enum per concern.
#![warn(missing_docs)]

pub mod admin;
pub mod consumer;
pub mod context;
pub mod dispatch;
pub mod envelope;
pub mod error;
pub mod failure;
pub mod monitor;
pub mod producer;
pub mod reader;
pub mod settings;
pub mod topics;

pub use admin::{ensure_topics, group_offsets, provision_topics, PartitionOffsets};
pub use consumer::{EventConsumer, Hold, HoldHandle, PartitionLease, Record};
pub use dispatch::{Disposition, RecordHandler};
pub use envelope::{Envelope, EnvelopeError};
pub use error::{AdminError, ConsumeError, ProduceError};
pub use monitor::GroupMonitor;
pub use producer::{Delivery, EventProducer, OutgoingRecord};
pub use settings::{AutoOffsetReset, ConsumerSettings, GroupProtocol, KafkaSettings, Security};
pub use topics::{Topic, TopicRegistry, TopicSpec};
