//! Topic provisioning and consumer-group offsets.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::error::AdminError;
use crate::settings::KafkaSettings;
use crate::topics::TopicSpec;

/// Creates every topic in `specs` that does not exist, then checks that each
/// has at least its configured number of partitions.
///
/// Idempotent: safe to call on every start of every instance.
///
/// # Errors
///
/// - [`AdminError::Broker`] when the broker does not answer within
///   `request_timeout_ms` (transient: see [`AdminError::is_transient`]);
/// - [`AdminError::CreateTopic`] when the broker refuses to create a topic;
/// - [`AdminError::TooFewPartitions`] when an existing topic has fewer
///   partitions than configured.
pub async fn ensure_topics(settings: &KafkaSettings, specs: &[&TopicSpec]) -> Result<(), AdminError> {
    let admin: AdminClient<DefaultClientContext> = settings
        .client_config("admin", &[])
        .create()
        .map_err(AdminError::Config)?;
    let retention: Vec<Option<String>> = specs
        .iter()
        .map(|spec| spec.retention_ms.map(|ms| ms.to_string()))
        .collect();
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .zip(&retention)
        .map(|(spec, retention)| {
            let topic = NewTopic::new(
                &spec.name,
                spec.partitions,
                TopicReplication::Fixed(spec.replication_factor),
            );
            match retention {
                Some(ms) => topic.set("retention.ms", ms),
                None => topic,
            }
        })
        .collect();
    let options = AdminOptions::new().request_timeout(Some(settings.request_timeout()));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|source| AdminError::Broker {
            context: "create topics".to_owned(),
            source,
        })?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(AdminError::CreateTopic {
                    topic,
                    reason: code.to_string(),
                })
            }
        }
    }

    let timeout = settings.request_timeout();
    let names: Vec<String> = specs.iter().map(|spec| spec.name.clone()).collect();
    let partitions = tokio::task::spawn_blocking(move || {
        let client = admin.inner();
        names
            .iter()
            .map(|name| {
                let metadata = client.fetch_metadata(Some(name), timeout)?;
                Ok(metadata
                    .topics()
                    .first()
                    .map_or(0, |topic| topic.partitions().len() as i32))
            })
            .collect::<Result<Vec<i32>, _>>()
    })
    .await
    .expect("metadata request panicked")
    .map_err(|source| AdminError::Broker {
        context: "describe topics".to_owned(),
        source,
    })?;

    for (spec, actual) in specs.iter().zip(partitions) {
        if actual < spec.partitions {
            return Err(AdminError::TooFewPartitions {
                topic: spec.name.clone(),
                expected: spec.partitions,
                actual,
            });
        }
        tracing::debug!(topic = spec.name, partitions = actual, "topic ready");
    }
    Ok(())
}

/// Where a consumer group stands on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The group's committed offset (the next record it will read), or
    /// `None` when it has committed nothing on this partition.
    pub committed: Option<i64>,
    /// The partition's high watermark (the offset the next record written
    /// will get).
    pub high_watermark: i64,
}

impl PartitionOffsets {
    /// Records written but not yet committed by the group (its lag).
    pub fn lag(&self) -> i64 {
        self.high_watermark - self.committed.unwrap_or(0)
    }
}

/// The committed offset and high watermark of every partition of `topics`
/// for consumer group `group_id`, without joining the group.
///
/// # Errors
///
/// [`AdminError::Broker`] when the broker does not answer within
/// `request_timeout_ms`.
pub async fn group_offsets(
    settings: &KafkaSettings,
    group_id: &str,
    topics: &[&str],
) -> Result<Vec<PartitionOffsets>, AdminError> {
    let consumer: BaseConsumer = settings
        .client_config("offsets", &[("group.id", group_id.to_owned())])
        .create()
        .map_err(AdminError::Config)?;
    let timeout = settings.request_timeout();
    let topics: Vec<String> = topics.iter().map(|&topic| topic.to_owned()).collect();
    tokio::task::spawn_blocking(move || query_offsets(&consumer, &topics, timeout))
        .await
        .expect("offset query panicked")
        .map_err(|source| AdminError::Broker {
            context: "fetch group offsets".to_owned(),
            source,
        })
}

fn query_offsets(
    consumer: &BaseConsumer,
    topics: &[String],
    timeout: Duration,
) -> rdkafka::error::KafkaResult<Vec<PartitionOffsets>> {
    let mut partitions = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            partitions.add_partition(topic, partition.id());
        }
    }
    let committed = consumer.committed_offsets(partitions, timeout)?;
    committed
        .elements()
        .iter()
        .map(|element| {
            let (_, high_watermark) = consumer.fetch_watermarks(element.topic(), element.partition(), timeout)?;
            Ok(PartitionOffsets {
                topic: element.topic().to_owned(),
                partition: element.partition(),
                committed: match element.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                },
                high_watermark,
            })
        })
        .collect()
}

/// The number of partitions `topic` has on the broker (`0` when it does not
/// exist).
///
/// # Errors
///
/// [`AdminError::Broker`] when the broker does not answer within
/// `request_timeout_ms`.
pub async fn partition_count(settings: &KafkaSettings, topic: &str) -> Result<i32, AdminError> {
    let consumer: BaseConsumer = settings
        .client_config("metadata", &[])
        .create()
        .map_err(AdminError::Config)?;
    let timeout = settings.request_timeout();
    let name = topic.to_owned();
    let metadata = tokio::task::spawn_blocking(move || consumer.fetch_metadata(Some(&name), timeout))
        .await
        .expect("metadata request panicked")
        .map_err(|source| AdminError::Broker {
            context: format!("fetch metadata of topic `{topic}`"),
            source,
        })?;
    let count = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().len())
        .sum::<usize>();
    Ok(i32::try_from(count).unwrap_or(i32::MAX))
}
