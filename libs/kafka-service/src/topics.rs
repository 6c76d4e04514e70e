//! The topic registry: every topic the services use, by logical name.
//!
//! Services never spell a topic name: they ask the registry for
//! [`Topic::NewUserCreated`] and get the physical name from configuration,
//! whose defaults are the names below.

use serde::Deserialize;

/// Partition count of every topic unless configured otherwise, as in the Go
/// original's broker configuration (`num.partitions=8`).
pub const DEFAULT_PARTITIONS: i32 = 8;

/// Replication factor unless configured otherwise: 1 suits a single local
/// broker; production sets 3 (see `docs/config/topics.md`).
pub const DEFAULT_REPLICATION_FACTOR: i32 = 1;

/// Retention of the dead-letter topic unless configured otherwise: 30 days.
pub const DEAD_LETTER_RETENTION_MS: i64 = 30 * 24 * 60 * 60 * 1000;

/// A logical topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// One record per user created; key = user id. Default name
    /// `new-user-created`.
    NewUserCreated,
    /// One record per access token issued; key = user id. Default name
    /// `issued-token`.
    IssuedToken,
    /// Records waiting for another attempt, and records parked behind them
    /// (same key, original value and headers plus `retry-*` headers; see
    /// [`crate::failure`]). Consumed by the same group. Default name
    /// `side-topic-for-retry`, as in the Go original.
    Retry,
    /// Records that can never be processed, or that failed every retry
    /// (original key, value and headers plus failure headers). Nothing
    /// consumes it; operators inspect and redrive. Default name
    /// `dead-letter-queue`, as in the Go original.
    DeadLetter,
}

impl Topic {
    /// Every logical topic.
    pub const ALL: [Topic; 4] = [
        Topic::NewUserCreated,
        Topic::IssuedToken,
        Topic::Retry,
        Topic::DeadLetter,
    ];

    /// The topics events are published to (the producer's outbox relay
    /// provisions these; the consumer subscribes to them).
    pub const EVENTS: [Topic; 2] = [Topic::NewUserCreated, Topic::IssuedToken];

    /// `retention.ms` when configuration does not override it: 30 days for
    /// the dead-letter topic (time for an operator to look), the broker's
    /// default for the others.
    pub fn default_retention_ms(self) -> Option<i64> {
        match self {
            Topic::DeadLetter => Some(DEAD_LETTER_RETENTION_MS),
            _ => None,
        }
    }

    /// The physical name used when configuration does not override it.
    pub fn default_name(self) -> &'static str {
        match self {
            Topic::NewUserCreated => "new-user-created",
            Topic::IssuedToken => "issued-token",
            Topic::Retry => "side-topic-for-retry",
            Topic::DeadLetter => "dead-letter-queue",
        }
    }
}

/// A physical topic and how it is provisioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic's name on the broker.
    pub name: String,
    /// Number of partitions; an existing topic must have exactly this many
    /// (see [`crate::AdminError::PartitionCount`]).
    pub partitions: i32,
    /// Replication factor used when the topic is created.
    pub replication_factor: i32,
    /// `retention.ms` set when the topic is created, in milliseconds;
    /// `None` leaves the broker's default (`log.retention.hours`, 7 days).
    pub retention_ms: Option<i64>,
}

/// Physical names and provisioning of every [`Topic`].
///
/// Deserialized from `kafka.topics`, where each topic may override any of
/// `name`, `partitions` and `replication_factor`, e.g.
/// `APP_KAFKA__TOPICS__ISSUED_TOKEN__NAME=issued-token-v2`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "RawRegistry")]
pub struct TopicRegistry {
    new_user_created: TopicSpec,
    issued_token: TopicSpec,
    retry: TopicSpec,
    dead_letter: TopicSpec,
}

impl TopicRegistry {
    /// The spec of one topic.
    pub fn spec(&self, topic: Topic) -> &TopicSpec {
        match topic {
            Topic::NewUserCreated => &self.new_user_created,
            Topic::IssuedToken => &self.issued_token,
            Topic::Retry => &self.retry,
            Topic::DeadLetter => &self.dead_letter,
        }
    }

    /// The physical name of one topic.
    pub fn name(&self, topic: Topic) -> &str {
        &self.spec(topic).name
    }

    /// The logical topic a physical name belongs to, if any.
    pub fn topic_named(&self, name: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|&topic| self.name(topic) == name)
    }

    /// The specs of `topics`, in order (`Topic::ALL` for every topic).
    pub fn specs(&self, topics: &[Topic]) -> Vec<&TopicSpec> {
        topics.iter().map(|&topic| self.spec(topic)).collect()
    }

    /// Replaces the physical name of `topic` (tests use unique names).
    pub fn with_name(mut self, topic: Topic, name: impl Into<String>) -> Self {
        let spec = match topic {
            Topic::NewUserCreated => &mut self.new_user_created,
            Topic::IssuedToken => &mut self.issued_token,
            Topic::Retry => &mut self.retry,
            Topic::DeadLetter => &mut self.dead_letter,
        };
        spec.name = name.into();
        self
    }
}

impl Default for TopicRegistry {
    fn default() -> Self {
        RawRegistry::default().into()
    }
}

/// What configuration may say about one topic: any field, or none.
#[derive(Debug, Default, Deserialize)]
struct RawSpec {
    name: Option<String>,
    partitions: Option<i32>,
    replication_factor: Option<i32>,
    retention_ms: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRegistry {
    #[serde(default)]
    new_user_created: RawSpec,
    #[serde(default)]
    issued_token: RawSpec,
    #[serde(default)]
    retry: RawSpec,
    #[serde(default)]
    dead_letter: RawSpec,
}

impl RawSpec {
    fn resolve(self, topic: Topic) -> TopicSpec {
        TopicSpec {
            name: self.name.unwrap_or_else(|| topic.default_name().to_owned()),
            partitions: self.partitions.unwrap_or(DEFAULT_PARTITIONS),
            replication_factor: self.replication_factor.unwrap_or(DEFAULT_REPLICATION_FACTOR),
            retention_ms: self.retention_ms.or(topic.default_retention_ms()),
        }
    }
}

impl From<RawRegistry> for TopicRegistry {
    fn from(raw: RawRegistry) -> Self {
        Self {
            new_user_created: raw.new_user_created.resolve(Topic::NewUserCreated),
            issued_token: raw.issued_token.resolve(Topic::IssuedToken),
            retry: raw.retry.resolve(Topic::Retry),
            dead_letter: raw.dead_letter.resolve(Topic::DeadLetter),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_go_originals_topics_with_eight_partitions() {
        let registry = TopicRegistry::default();
        assert_eq!(registry.name(Topic::NewUserCreated), "new-user-created");
        assert_eq!(registry.name(Topic::IssuedToken), "issued-token");
        assert_eq!(registry.name(Topic::Retry), "side-topic-for-retry");
        assert_eq!(registry.name(Topic::DeadLetter), "dead-letter-queue");
        assert!(registry.specs(&Topic::ALL).iter().all(|spec| spec.partitions == 8));
        assert_eq!(registry.spec(Topic::DeadLetter).retention_ms, Some(2_592_000_000));
        assert_eq!(registry.spec(Topic::IssuedToken).retention_ms, None);
    }

    #[test]
    fn configuration_overrides_one_field_and_keeps_the_other_defaults() {
        let registry: TopicRegistry = serde_json::from_value(serde_json::json!({
            "issued_token": { "name": "issued-token-v2" },
            "new_user_created": { "partitions": 16 }
        }))
        .unwrap();

        assert_eq!(registry.name(Topic::IssuedToken), "issued-token-v2");
        assert_eq!(registry.spec(Topic::IssuedToken).partitions, 8);
        assert_eq!(registry.name(Topic::NewUserCreated), "new-user-created");
        assert_eq!(registry.spec(Topic::NewUserCreated).partitions, 16);
    }

    #[test]
    fn a_physical_name_maps_back_to_its_logical_topic() {
        let registry = TopicRegistry::default().with_name(Topic::IssuedToken, "t-1");
        assert_eq!(registry.topic_named("t-1"), Some(Topic::IssuedToken));
        assert_eq!(registry.topic_named("issued-token"), None);
    }
}
