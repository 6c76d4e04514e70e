//! Client settings, as they appear under the `kafka` key of each service's
//! configuration. Names are librdkafka's property names in snake_case;
//! durations end in their unit.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::topics::TopicRegistry;

/// Settings every Kafka client of a service shares (the `kafka` section).
#[derive(Debug, Clone, Deserialize)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list of brokers to bootstrap from
    /// (`bootstrap.servers`).
    pub bootstrap_servers: String,
    /// Upper bound for one admin or metadata request, in milliseconds: topic
    /// provisioning, readiness checks and offset queries wait this long.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// How long librdkafka keeps retrying a record before its delivery report
    /// says it failed, in milliseconds (`message.timeout.ms`); `0`, the
    /// default, retries until delivered.
    ///
    /// Infinite by default because a timeout can break per-key order: when
    /// records 2 and 3 of a partition time out while 4 and 5 go through, the
    /// partition holds 1, 4, 5 (librdkafka `INTRODUCTION.md`, "Idempotent
    /// Producer", message timeout considerations), and republishing 2 and 3
    /// would put them after 4 and 5.
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// The topic registry: physical names, partition counts and replication
    /// factors. Every field has a default.
    #[serde(default)]
    pub topics: TopicRegistry,
    /// Any other librdkafka property, passed through verbatim after the
    /// settings above (so it can override them), e.g.
    /// `{"security.protocol": "ssl"}`.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
}

/// Settings of a consumer-group member. They live in the same `kafka`
/// section as [`KafkaSettings`] and are read from it separately.
#[derive(Debug, Clone, Deserialize)]
pub struct ConsumerSettings {
    /// The consumer group this member joins (`group.id`).
    pub group_id: String,
    /// Where a partition with no committed offset starts (`auto.offset.reset`):
    /// `earliest` (the default, so no event is skipped) or `latest`.
    #[serde(default = "default_auto_offset_reset")]
    pub auto_offset_reset: String,
    /// How long the group coordinator waits for a heartbeat before it removes
    /// this member and rebalances, in milliseconds (`session.timeout.ms`).
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// Commit processed offsets after this many records have been processed
    /// since the last commit.
    #[serde(default = "default_commit_batch_size")]
    pub commit_batch_size: usize,
    /// Commit processed offsets at least this often while records are being
    /// processed, in milliseconds.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// Records queued per partition for its worker before the partition is
    /// paused (see [`crate::dispatch`]).
    #[serde(default = "default_partition_queue_capacity")]
    pub partition_queue_capacity: usize,
}

impl KafkaSettings {
    /// Settings for a broker at `bootstrap_servers` with every other field at
    /// its default.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            request_timeout_ms: default_request_timeout_ms(),
            message_timeout_ms: default_message_timeout_ms(),
            topics: TopicRegistry::default(),
            librdkafka: BTreeMap::new(),
        }
    }

    /// A client's librdkafka properties: bootstrap servers and client id,
    /// then the client kind's own `properties`, then the pass-through map,
    /// which overrides both.
    pub(crate) fn client_config(&self, client_id: &str, properties: &[(&str, String)]) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", client_id);
        for (key, value) in properties {
            config.set(*key, value);
        }
        for (key, value) in &self.librdkafka {
            config.set(key, value);
        }
        config
    }

    pub(crate) fn request_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.request_timeout_ms)
    }
}

impl ConsumerSettings {
    /// Settings for group `group_id` with every other field at its default.
    pub fn new(group_id: impl Into<String>) -> Self {
        Self {
            group_id: group_id.into(),
            auto_offset_reset: default_auto_offset_reset(),
            session_timeout_ms: default_session_timeout_ms(),
            commit_batch_size: default_commit_batch_size(),
            commit_interval_ms: default_commit_interval_ms(),
            partition_queue_capacity: default_partition_queue_capacity(),
        }
    }
}

fn default_request_timeout_ms() -> u64 {
    5_000
}

fn default_message_timeout_ms() -> u64 {
    0
}

fn default_auto_offset_reset() -> String {
    "earliest".to_owned()
}

/// librdkafka's default since 2.0 (KIP-735).
fn default_session_timeout_ms() -> u64 {
    45_000
}

fn default_commit_batch_size() -> usize {
    500
}

fn default_commit_interval_ms() -> u64 {
    1_000
}

fn default_partition_queue_capacity() -> usize {
    256
}
