//! Errors, one enum per concern. Messages are lowercase and keep the
//! underlying `rdkafka` error as their source.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Errors from topic provisioning and offset queries.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The client could not be created from the settings (a bad librdkafka
    /// property, for example).
    #[error("invalid kafka client configuration")]
    Config(#[source] KafkaError),
    /// The broker did not answer, or answered with an error, within the
    /// timeout. Usually transient: the broker is down or unreachable.
    #[error("kafka admin request failed: {context}")]
    Broker {
        /// What was being done.
        context: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// The broker refused to create a topic.
    #[error("could not create topic `{topic}`: {reason}")]
    CreateTopic {
        /// The physical topic name.
        topic: String,
        /// The broker's error code, as text.
        reason: String,
    },
    /// An existing topic has another partition count than configured.
    /// Not transient. A topic keeps its partition count for life: adding
    /// partitions moves keys to other partitions, so a user's later events
    /// would be read before earlier ones still waiting on the old
    /// partition. Configure the count the topic has, or migrate to a new
    /// topic (`docs/config/topics.md`, "Changing the partition count").
    #[error(
        "topic `{topic}` has {actual} partitions but {expected} are configured; a topic keeps \
         its partition count for life (changing it moves keys, and breaks per-key order): \
         configure {actual}, or migrate to a new topic as docs/config/topics.md says"
    )]
    PartitionCount {
        /// The physical topic name.
        topic: String,
        /// Partitions configured in the topic registry.
        expected: i32,
        /// Partitions the broker reports.
        actual: i32,
    },
}

impl AdminError {
    /// Whether retrying the same request later may succeed (the broker was
    /// unreachable or busy), as opposed to a configuration problem.
    pub fn is_transient(&self) -> bool {
        matches!(self, AdminError::Broker { .. })
    }
}

/// Errors from publishing a record.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The producer could not be created from the settings.
    #[error("invalid kafka producer configuration")]
    Config(#[source] KafkaError),
    /// The record was not delivered: the delivery report carried an error
    /// (after librdkafka's own retries, bounded by `message_timeout_ms`), or
    /// the record could not be queued.
    #[error("record to topic `{topic}` was not delivered")]
    Delivery {
        /// The physical topic name.
        topic: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// The broker's metadata could not be fetched (used by readiness checks).
    #[error("kafka broker unreachable")]
    Unreachable(#[source] KafkaError),
    /// The client the caller enqueues on was replaced after a fatal error
    /// ([`EventProducer::enqueue_on`](crate::EventProducer::enqueue_on)):
    /// the caller waits for the old client's reports, then starts over on
    /// the new one.
    #[error("the producer's client {generation} was replaced after a fatal error")]
    Replaced {
        /// The generation the caller named.
        generation: u64,
    },
}

impl ProduceError {
    /// Whether the record is larger than the producer or the topic accepts
    /// (`MSG_SIZE_TOO_LARGE`: refused by the client against its
    /// `message.max.bytes`, or by the broker against the topic's
    /// `max.message.bytes`). Sending the same record again never succeeds.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            ProduceError::Delivery { source, .. }
                if source.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge)
        )
    }
}

/// Errors from consuming records and committing offsets.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The consumer could not be created or subscribed.
    #[error("invalid kafka consumer configuration")]
    Config(#[source] KafkaError),
    /// Fetching the next record failed.
    #[error("could not receive a record")]
    Receive(#[source] KafkaError),
    /// Storing or committing offsets failed.
    #[error("could not commit offsets")]
    Commit(#[source] KafkaError),
    /// The partition was revoked from this member since its lease was taken.
    #[error("the partition was revoked")]
    Revoked,
}
