//! Topic provisioning and consumer-group offsets.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::context::KafkaContext;
use crate::error::AdminError;
use crate::settings::KafkaSettings;
use crate::topics::TopicSpec;

/// [`ensure_topics`], retried while the broker is unreachable, pausing for
/// each of `delays` in turn (30 s once they run out), until it succeeds or
/// `shutdown` is cancelled. `Ok(false)` means shutdown came first.
///
/// # Errors
///
/// The first error retrying cannot fix ([`AdminError::is_transient`] is
/// false): a topic with another partition count than configured, or one
/// the broker refuses.
pub async fn provision_topics(
    settings: &KafkaSettings,
    specs: &[&TopicSpec],
    mut delays: impl Iterator<Item = Duration>,
    shutdown: &CancellationToken,
) -> Result<bool, AdminError> {
    loop {
        match ensure_topics(settings, specs).await {
            Ok(()) => return Ok(true),
            Err(error) if error.is_transient() => {
                let cause = std::error::Error::source(&error).map(ToString::to_string);
                tracing::warn!(%error, cause, "topic provisioning failed; retrying");
                let delay = delays.next().unwrap_or(Duration::from_secs(30));
                if shutdown.run_until_cancelled(tokio::time::sleep(delay)).await.is_none() {
                    return Ok(false);
                }
            }
            Err(error) => return Err(error),
        }
    }
}

/// Creates every topic in `specs` that does not exist, then checks that each
/// has exactly its configured number of partitions.
///
/// Idempotent: safe to call on every start of every instance. Topics that
/// exist are only described, so a deployment whose topics were created
/// beforehand needs no permission to create topics.
///
/// # Errors
///
/// - [`AdminError::Broker`] when the broker does not answer within
///   `request_timeout_ms` (transient: see [`AdminError::is_transient`]);
/// - [`AdminError::CreateTopic`] when the broker refuses to create a topic,
///   or a topic is missing under MSK IAM authentication, where rdkafka's
///   admin client cannot authenticate (rust-rdkafka issue #757): create the
///   topics first (`deploy/README.md` shows how);
/// - [`AdminError::PartitionCount`] when an existing topic has fewer or
///   more partitions than configured: keys would not land where they did.
pub async fn ensure_topics(settings: &KafkaSettings, specs: &[&TopicSpec]) -> Result<(), AdminError> {
    let names: Vec<String> = specs.iter().map(|spec| spec.name.clone()).collect();
    let existing = describe(settings, &names).await?;
    let missing: Vec<&TopicSpec> = specs
        .iter()
        .zip(&existing)
        .filter(|(_, partitions)| **partitions == 0)
        .map(|(spec, _)| *spec)
        .collect();
    let partitions = if missing.is_empty() {
        existing
    } else {
        create(settings, &missing).await?;
        describe_created(settings, &names).await?
    };

    for (spec, actual) in specs.iter().zip(partitions) {
        if actual != spec.partitions {
            return Err(AdminError::PartitionCount {
                topic: spec.name.clone(),
                expected: spec.partitions,
                actual,
            });
        }
        tracing::debug!(topic = spec.name, partitions = actual, "topic ready");
    }
    Ok(())
}

/// The partitions of the topics in `metadata` (of one topic, as asked);
/// `0` for a topic the broker reports with an error, such as unknown.
pub(crate) fn partitions_in(metadata: &rdkafka::metadata::Metadata) -> i32 {
    metadata
        .topics()
        .iter()
        .filter(|topic| topic.error().is_none())
        .map(|topic| i32::try_from(topic.partitions().len()).unwrap_or(i32::MAX))
        .sum()
}

/// The partition count of each of `names`, in order; `0` for a topic that
/// does not exist.
async fn describe(settings: &KafkaSettings, names: &[String]) -> Result<Vec<i32>, AdminError> {
    let client = KafkaContext::base_consumer(settings, "metadata", &[]).map_err(AdminError::Config)?;
    let timeout = settings.request_timeout();
    let names = names.to_vec();
    tokio::task::spawn_blocking(move || {
        names
            .iter()
            .map(|name| {
                let metadata = client.fetch_metadata(Some(name), timeout)?;
                Ok(partitions_in(&metadata))
            })
            .collect::<Result<Vec<i32>, _>>()
    })
    .await
    .expect("metadata request panicked")
    .map_err(|source| AdminError::Broker {
        context: "describe topics".to_owned(),
        source,
    })
}

/// The partition counts of `names` once each of them is in the broker's
/// metadata. Kafka answers CreateTopics once its controller has committed
/// the topics; the broker that answers a metadata request learns of them
/// from the metadata log moments later, and until then reports them as
/// unknown (0 here). Polls every 100 ms for up to `request_timeout_ms`.
///
/// # Errors
///
/// [`AdminError::Broker`] (transient) when a topic is still unknown then,
/// or a metadata request fails.
async fn describe_created(settings: &KafkaSettings, names: &[String]) -> Result<Vec<i32>, AdminError> {
    let deadline = tokio::time::Instant::now() + settings.request_timeout();
    loop {
        let partitions = describe(settings, names).await?;
        if !partitions.contains(&0) {
            return Ok(partitions);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AdminError::Broker {
                context: "created topics are not in the broker's metadata yet".to_owned(),
                source: KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates `specs`; a topic that another instance created meanwhile is fine.
async fn create(settings: &KafkaSettings, specs: &[&TopicSpec]) -> Result<(), AdminError> {
    let context = KafkaContext::new(settings);
    if context.uses_oauthbearer() {
        return Err(AdminError::CreateTopic {
            topic: specs
                .iter()
                .map(|spec| spec.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            reason: "it does not exist, and rdkafka's admin client cannot authenticate with MSK IAM \
                     (rust-rdkafka #757); create it first, as deploy/README.md shows"
                .to_owned(),
        });
    }
    let admin: AdminClient<KafkaContext> = settings
        .client_config("admin", &[])
        .create_with_context(context)
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
    let consumer = KafkaContext::base_consumer(settings, "offsets", &[("group.id", group_id.to_owned())])
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
    consumer: &BaseConsumer<KafkaContext>,
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
