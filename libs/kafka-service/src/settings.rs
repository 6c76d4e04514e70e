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
    /// How clients connect and authenticate (`kafka.security.*`); plaintext
    /// when absent.
    #[serde(default)]
    pub security: Security,
    /// Any other librdkafka property, passed through verbatim after the
    /// settings above (so it can override them), e.g.
    /// `{"security.protocol": "ssl"}`.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
}

/// How clients connect to the brokers and prove who they are, chosen by
/// `kafka.security.protocol`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(tag = "protocol", rename_all = "snake_case", deny_unknown_fields)]
pub enum Security {
    /// No encryption, no authentication: a local broker (the default).
    #[default]
    Plaintext,
    /// TLS to the brokers (`security.protocol=ssl`), e.g. Amazon MSK's
    /// port 9094 or a broker with its own certificate.
    Ssl {
        /// PEM file of the certificate authorities to trust
        /// (`ssl.ca.location`); absent means the system's store, found by
        /// librdkafka's `probe`.
        #[serde(default)]
        ca_location: Option<String>,
    },
    /// Amazon MSK IAM access control: TLS plus SASL/OAUTHBEARER
    /// (`security.protocol=sasl_ssl`, `sasl.mechanism=OAUTHBEARER`, MSK's
    /// port 9098), with tokens signed by the task's IAM role (see
    /// [`crate::context`]).
    MskIam {
        /// The AWS region of the cluster, e.g. `eu-west-1` (the token is a
        /// SigV4 presigned URL for `kafka.<region>.amazonaws.com`).
        region: String,
    },
}

impl Security {
    /// The librdkafka properties this choice sets.
    pub(crate) fn properties(&self) -> Vec<(&'static str, String)> {
        match self {
            Security::Plaintext => vec![("security.protocol", "plaintext".to_owned())],
            Security::Ssl { ca_location } => vec![
                ("security.protocol", "ssl".to_owned()),
                (
                    "ssl.ca.location",
                    ca_location.clone().unwrap_or_else(|| "probe".to_owned()),
                ),
            ],
            Security::MskIam { .. } => vec![
                ("security.protocol", "sasl_ssl".to_owned()),
                ("sasl.mechanism", "OAUTHBEARER".to_owned()),
                ("ssl.ca.location", "probe".to_owned()),
            ],
        }
    }
}

/// Settings of a consumer-group member. They live in the same `kafka`
/// section as [`KafkaSettings`] and are read from it separately.
#[derive(Debug, Clone, Deserialize)]
pub struct ConsumerSettings {
    /// The consumer group this member joins (`group.id`).
    pub group_id: String,
    /// Where a partition with no committed offset starts (`auto.offset.reset`):
    /// `earliest` (the default, so no event is skipped) or `latest`.
    #[serde(default)]
    pub auto_offset_reset: AutoOffsetReset,
    /// The consumer group protocol (`group.protocol`): `classic` (the
    /// default) or `consumer` (KIP-848).
    #[serde(default)]
    pub group_protocol: GroupProtocol,
    /// How long the group coordinator waits for a heartbeat before it removes
    /// this member and rebalances, in milliseconds (`session.timeout.ms`).
    /// Classic protocol only: under `consumer` the broker sets it for the
    /// group (`group.consumer.session.timeout.ms`), and librdkafka refuses
    /// the client setting.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// How often this member heartbeats to the group coordinator, in
    /// milliseconds (`heartbeat.interval.ms`). Classic protocol only, like
    /// `session_timeout_ms`.
    ///
    /// Members learn that a rebalance has begun from a heartbeat's answer,
    /// so when a member joins, the partitions that move to it are owned by
    /// no one for up to one interval: revoked at once, assigned in a second
    /// round once every member has rejoined. With librdkafka's 3000 that
    /// was 3 s per join in `scripts/bench.sh`'s scaling run
    /// (docs/benchmarks.md, "Scaling"); 1000 makes it 1 s for one
    /// heartbeat a second per member, and stays within Kafka's advice of at
    /// most a third of the session timeout.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Commit processed offsets after this many records have been processed
    /// since the last commit.
    #[serde(default = "default_commit_batch_size")]
    pub commit_batch_size: usize,
    /// Commit processed offsets at least this often while records are being
    /// processed, in milliseconds.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// Records queued per partition for its worker before the partition is
    /// paused (see `dispatch`).
    #[serde(default = "default_partition_queue_capacity")]
    pub partition_queue_capacity: usize,
    /// Bytes (keys, values and headers) queued per partition for its worker
    /// before the partition is paused, whichever of this and
    /// `partition_queue_capacity` comes first (see `dispatch`). The default,
    /// 1 MiB, is librdkafka's `max.partition.fetch.bytes`: one fetch
    /// response's worth, so a partition is not paused in the middle of one.
    #[serde(default = "default_partition_queue_bytes")]
    pub partition_queue_bytes: usize,
    /// The most records of one partition its worker hands to the handler at
    /// once; the consumer service applies them in one database transaction
    /// (see `dispatch`), so this bounds a transaction's size.
    #[serde(default = "default_max_batch_records")]
    pub max_batch_records: usize,
    /// The longest a fetch request waits at the broker for records to
    /// arrive, in milliseconds (`fetch.wait.max.ms`; librdkafka's default,
    /// 500, when absent).
    ///
    /// Apache Kafka answers a waiting fetch as soon as `fetch.min.bytes`
    /// (librdkafka's default: 1 byte) have arrived, so this does not delay
    /// records that arrive while a fetch waits: it paces polling while
    /// nothing arrives, and bounds how long a partition that has just become
    /// fetchable (newly assigned, or resumed) waits for the fetch in flight,
    /// which librdkafka sent without it. After the first assignment the
    /// first fetch holds one partition, so records on the others wait up to
    /// this long (docs/benchmarks.md, "End-to-end latency").
    #[serde(default = "default_fetch_wait_max_ms")]
    pub fetch_wait_max_ms: u64,
    /// The most librdkafka fetches ahead of what the dispatcher has taken,
    /// for all partitions together, in KiB (`queued.max.messages.kbytes`;
    /// librdkafka's default is 65536, 64 MiB). Beside the partition queues
    /// (`partition_queue_bytes` each), this is what a backlog costs in
    /// memory. The default, 8 MiB, holds one fetch response
    /// (`max.partition.fetch.bytes`, 1 MiB) for each of a topic's 8
    /// partitions: on a 200 000-record backlog (`scripts/bench.sh`,
    /// docs/benchmarks.md) it drained as fast as 16 MiB, with a peak RSS of
    /// 124 MiB against 151; 4 MiB drained three times slower.
    #[serde(default = "default_prefetch_queue_kbytes")]
    pub prefetch_queue_kbytes: u64,
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
            security: Security::default(),
            librdkafka: BTreeMap::new(),
        }
    }

    /// A client's librdkafka properties: bootstrap servers, client id and
    /// security, then the client kind's own `properties`, then the
    /// pass-through map, which overrides them all.
    pub(crate) fn client_config(&self, client_id: &str, properties: &[(&str, String)]) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", client_id);
        for (key, value) in self.security.properties().iter().chain(properties) {
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

/// Where a partition with no committed offset starts: librdkafka's
/// `auto.offset.reset`, of which these are the two values that do not
/// fail the partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoOffsetReset {
    /// The partition's first record still kept: nothing is skipped.
    #[default]
    Earliest,
    /// The partition's end: only records produced from now on.
    Latest,
}

impl AutoOffsetReset {
    /// The librdkafka property value.
    pub fn as_str(self) -> &'static str {
        match self {
            AutoOffsetReset::Earliest => "earliest",
            AutoOffsetReset::Latest => "latest",
        }
    }
}

/// How the group's members find their partitions: librdkafka's
/// `group.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupProtocol {
    /// The classic protocol: members join, one of them assigns, with the
    /// cooperative-sticky assignor. The default, because every broker this
    /// system runs against supports it; Amazon MSK Serverless has not said
    /// that it supports the other.
    #[default]
    Classic,
    /// KIP-848, generally available since Apache Kafka 4.0 and librdkafka
    /// 2.12: the broker assigns, and each member heartbeats on its own, so a
    /// rebalance stops no other member. Session timeout and heartbeat
    /// interval are the broker's (`group.consumer.*`), and librdkafka
    /// refuses `session.timeout.ms`, `heartbeat.interval.ms` and
    /// `partition.assignment.strategy` under it.
    ///
    /// The member asks for the broker's `range` assignor
    /// (`group.remote.assignor`). The broker's default, `uniform`, balances
    /// the count of partitions per member over all topics together: three
    /// members of this group got all 8 partitions of one topic each
    /// (`failures/rebalances`), so one member applied every `user.created`.
    /// `range` splits each topic (3/3/2 over three members) and gives a
    /// member the same partition numbers of every topic, which here, both
    /// topics keyed by user id with the same count, means a user's creation
    /// and tokens.
    Consumer,
}

impl GroupProtocol {
    /// The librdkafka property value (and the configuration's).
    pub fn as_str(self) -> &'static str {
        match self {
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
        }
    }

    /// The librdkafka properties of this protocol for `consumer`.
    pub(crate) fn properties(self, consumer: &ConsumerSettings) -> Vec<(&'static str, String)> {
        let protocol = ("group.protocol", self.as_str().to_owned());
        match self {
            GroupProtocol::Classic => vec![
                protocol,
                ("session.timeout.ms", consumer.session_timeout_ms.to_string()),
                ("heartbeat.interval.ms", consumer.heartbeat_interval_ms.to_string()),
                ("partition.assignment.strategy", "cooperative-sticky".to_owned()),
            ],
            GroupProtocol::Consumer => vec![protocol, ("group.remote.assignor", "range".to_owned())],
        }
    }
}

impl ConsumerSettings {
    /// Settings for group `group_id` with every other field at its default.
    pub fn new(group_id: impl Into<String>) -> Self {
        Self {
            group_id: group_id.into(),
            auto_offset_reset: AutoOffsetReset::default(),
            group_protocol: GroupProtocol::default(),
            session_timeout_ms: default_session_timeout_ms(),
            heartbeat_interval_ms: default_heartbeat_interval_ms(),
            commit_batch_size: default_commit_batch_size(),
            commit_interval_ms: default_commit_interval_ms(),
            partition_queue_capacity: default_partition_queue_capacity(),
            partition_queue_bytes: default_partition_queue_bytes(),
            max_batch_records: default_max_batch_records(),
            fetch_wait_max_ms: default_fetch_wait_max_ms(),
            prefetch_queue_kbytes: default_prefetch_queue_kbytes(),
        }
    }
}

fn default_request_timeout_ms() -> u64 {
    5_000
}

fn default_message_timeout_ms() -> u64 {
    0
}

/// librdkafka's default since 2.0 (KIP-735).
fn default_session_timeout_ms() -> u64 {
    45_000
}

fn default_heartbeat_interval_ms() -> u64 {
    1_000
}

fn default_commit_batch_size() -> usize {
    500
}

fn default_commit_interval_ms() -> u64 {
    1_000
}

fn default_partition_queue_capacity() -> usize {
    4_096
}

fn default_partition_queue_bytes() -> usize {
    1_048_576
}

fn default_max_batch_records() -> usize {
    256
}

fn default_prefetch_queue_kbytes() -> u64 {
    8_192
}

fn default_fetch_wait_max_ms() -> u64 {
    500
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> serde_json::Result<ConsumerSettings> {
        serde_json::from_str(json)
    }

    #[test]
    fn auto_offset_reset_takes_earliest_or_latest_and_refuses_anything_else() {
        let default = parse(r#"{"group_id": "g"}"#).unwrap();
        assert_eq!(default.auto_offset_reset, AutoOffsetReset::Earliest);
        let latest = parse(r#"{"group_id": "g", "auto_offset_reset": "latest"}"#).unwrap();
        assert_eq!(latest.auto_offset_reset.as_str(), "latest");
        let error = parse(r#"{"group_id": "g", "auto_offset_reset": "none"}"#).unwrap_err();
        assert!(error.to_string().contains("unknown variant `none`"), "{error}");
    }

    #[test]
    fn the_consumer_group_protocol_leaves_out_what_librdkafka_refuses_under_it() {
        let default = parse(r#"{"group_id": "g"}"#).unwrap();
        assert_eq!(default.group_protocol, GroupProtocol::Classic);
        let keys = |settings: &ConsumerSettings| {
            settings
                .group_protocol
                .properties(settings)
                .into_iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(&default),
            [
                "group.protocol=classic",
                "session.timeout.ms=45000",
                "heartbeat.interval.ms=1000",
                "partition.assignment.strategy=cooperative-sticky"
            ]
        );
        let consumer = parse(r#"{"group_id": "g", "group_protocol": "consumer"}"#).unwrap();
        assert_eq!(
            keys(&consumer),
            ["group.protocol=consumer", "group.remote.assignor=range"]
        );
        let error = parse(r#"{"group_id": "g", "group_protocol": "kip848"}"#).unwrap_err();
        assert!(error.to_string().contains("unknown variant `kip848`"), "{error}");
    }

    fn security(yaml: &str) -> Security {
        #[derive(Deserialize)]
        struct Section {
            #[serde(default)]
            security: Security,
        }
        serde_json::from_str::<Section>(yaml).unwrap().security
    }

    #[test]
    fn security_defaults_to_plaintext() {
        assert_eq!(security("{}"), Security::Plaintext);
    }

    #[test]
    fn msk_iam_selects_sasl_ssl_with_oauthbearer() {
        let chosen = security(r#"{"security": {"protocol": "msk_iam", "region": "eu-west-1"}}"#);
        assert_eq!(
            chosen,
            Security::MskIam {
                region: "eu-west-1".to_owned()
            }
        );
        let config = KafkaSettings {
            security: chosen,
            ..KafkaSettings::new("b-1.example:9098")
        }
        .client_config("test", &[]);
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanism"), Some("OAUTHBEARER"));
        assert_eq!(config.get("ssl.ca.location"), Some("probe"));
    }

    #[test]
    fn ssl_uses_the_given_ca_and_the_pass_through_map_wins() {
        let mut settings = KafkaSettings {
            security: security(r#"{"security": {"protocol": "ssl", "ca_location": "/etc/ca.pem"}}"#),
            ..KafkaSettings::new("broker:9094")
        };
        assert_eq!(
            settings.client_config("test", &[]).get("ssl.ca.location"),
            Some("/etc/ca.pem")
        );
        settings
            .librdkafka
            .insert("ssl.ca.location".to_owned(), "/other.pem".to_owned());
        assert_eq!(
            settings.client_config("test", &[]).get("ssl.ca.location"),
            Some("/other.pem")
        );
    }

    #[test]
    fn an_unknown_protocol_is_refused() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Section {
            security: Security,
        }
        let error = serde_json::from_str::<Section>(r#"{"security": {"protocol": "sasl_plain"}}"#).unwrap_err();
        assert!(error.to_string().contains("unknown variant `sasl_plain`"), "{error}");
    }
}
