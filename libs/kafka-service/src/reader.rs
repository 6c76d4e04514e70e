//! Reads ranges of partitions outside any consumer group: nothing is
//! committed and no group is joined (listing dead letters, audits in tests).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::consumer::Record;
use crate::context::KafkaContext;
use crate::error::AdminError;
use crate::settings::KafkaSettings;

/// One Kafka client for any number of reads, so that a request reading
/// eight partitions connects and fetches metadata once, not eight times.
/// Reads through it take turns.
pub struct PartitionReader {
    consumer: Arc<Mutex<BaseConsumer<KafkaContext>>>,
    timeout: Duration,
}

impl PartitionReader {
    /// A reader with `settings`' client settings. It connects on first use.
    ///
    /// # Errors
    ///
    /// [`AdminError::Config`] for bad client settings.
    pub fn new(settings: &KafkaSettings) -> Result<Self, AdminError> {
        let consumer = KafkaContext::base_consumer(
            settings,
            "reader",
            &[
                // Required by librdkafka even when no group is joined.
                ("group.id", "kafka-service-reader".to_owned()),
                ("enable.auto.commit", "false".to_owned()),
                ("enable.partition.eof", "false".to_owned()),
            ],
        )
        .map_err(AdminError::Config)?;
        Ok(Self {
            consumer: Arc::new(Mutex::new(consumer)),
            timeout: settings.request_timeout(),
        })
    }

    /// The number of partitions `topic` has (`0` when it does not exist).
    ///
    /// # Errors
    ///
    /// [`AdminError::Broker`] when the broker does not answer within
    /// `request_timeout_ms`.
    pub async fn partition_count(&self, topic: &str) -> Result<i32, AdminError> {
        let topic = topic.to_owned();
        self.blocking(move |consumer, timeout| {
            let metadata = consumer
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|source| AdminError::Broker {
                    context: format!("could not fetch the metadata of {topic}"),
                    source,
                })?;
            Ok(crate::admin::partitions_in(&metadata))
        })
        .await
    }

    /// The records of `partition` of `topic` from `from_offset` (or the log
    /// start, if later) up to `max_records` of them, stopping at the high
    /// watermark as it was when the call began. Records come in offset
    /// order.
    ///
    /// # Errors
    ///
    /// [`AdminError::Broker`] when the broker does not answer within
    /// `request_timeout_ms` (for the watermarks, or for each fetch).
    pub async fn read(
        &self,
        topic: &str,
        partition: i32,
        from_offset: i64,
        max_records: usize,
    ) -> Result<Vec<Record>, AdminError> {
        let topic = topic.to_owned();
        self.blocking(move |consumer, timeout| {
            read_blocking(consumer, timeout, &topic, partition, from_offset, max_records)
        })
        .await
    }

    /// The offset of the first record of `partition` of `topic` whose
    /// timestamp is `timestamp_ms` (milliseconds since the epoch) or later;
    /// the high watermark when there is none (`ListOffsets` by time).
    ///
    /// # Errors
    ///
    /// [`AdminError::Broker`] when the broker does not answer within
    /// `request_timeout_ms`.
    pub async fn offset_at(&self, topic: &str, partition: i32, timestamp_ms: i64) -> Result<i64, AdminError> {
        let topic = topic.to_owned();
        self.blocking(move |consumer, timeout| {
            let broker = |context: &str| {
                let context = format!("{context} {topic}[{partition}]");
                move |source| AdminError::Broker { context, source }
            };
            let mut times = TopicPartitionList::with_capacity(1);
            times
                .add_partition_offset(&topic, partition, Offset::Offset(timestamp_ms))
                .map_err(broker("could not ask for the offset by time of"))?;
            let offsets = consumer
                .offsets_for_times(times, timeout)
                .map_err(broker("could not find the offset by time of"))?;
            match offsets.find_partition(&topic, partition).map(|found| found.offset()) {
                Some(Offset::Offset(offset)) => Ok(offset),
                _ => {
                    let (_, high) = consumer
                        .fetch_watermarks(&topic, partition, timeout)
                        .map_err(broker("could not fetch watermarks of"))?;
                    Ok(high)
                }
            }
        })
        .await
    }

    /// The high watermark of `partition` of `topic`: the offset the next
    /// record written to it will have.
    ///
    /// # Errors
    ///
    /// [`AdminError::Broker`] when the broker does not answer within
    /// `request_timeout_ms`.
    pub async fn high_watermark(&self, topic: &str, partition: i32) -> Result<i64, AdminError> {
        let topic = topic.to_owned();
        self.blocking(move |consumer, timeout| {
            let (_, high) = consumer
                .fetch_watermarks(&topic, partition, timeout)
                .map_err(|source| AdminError::Broker {
                    context: format!("could not fetch watermarks of {topic}[{partition}]"),
                    source,
                })?;
            Ok(high)
        })
        .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&BaseConsumer<KafkaContext>, Duration) -> Result<T, AdminError> + Send + 'static,
    ) -> Result<T, AdminError> {
        let consumer = Arc::clone(&self.consumer);
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || {
            // A read that panicked left nothing half-done that matters: the
            // next one assigns afresh.
            let consumer = consumer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            read(&consumer, timeout)
        })
        .await
        .expect("partition read panicked")
    }
}

/// Every record of every partition of `topic` (up to the high watermarks as
/// they were at the start), partition by partition, through one client.
///
/// # Errors
///
/// As [`PartitionReader::new`] and [`PartitionReader::read`], and when the
/// topic's metadata cannot be fetched.
pub async fn read_topic(settings: &KafkaSettings, topic: &str) -> Result<Vec<Record>, AdminError> {
    let reader = PartitionReader::new(settings)?;
    let partitions = reader.partition_count(topic).await?;
    let mut records = Vec::new();
    for partition in 0..partitions {
        records.extend(reader.read(topic, partition, 0, usize::MAX).await?);
    }
    Ok(records)
}

fn read_blocking(
    consumer: &BaseConsumer<KafkaContext>,
    timeout: Duration,
    topic: &str,
    partition: i32,
    from_offset: i64,
    max_records: usize,
) -> Result<Vec<Record>, AdminError> {
    let broker = |context: &str| {
        let context = format!("{context} {topic}[{partition}]");
        move |source| AdminError::Broker { context, source }
    };
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, timeout)
        .map_err(broker("could not fetch watermarks of"))?;
    let start = from_offset.max(low);
    if start >= high || max_records == 0 {
        return Ok(Vec::new());
    }
    let end = high.min(start.saturating_add(i64::try_from(max_records).unwrap_or(i64::MAX)));
    let mut assignment = TopicPartitionList::with_capacity(1);
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(start))
        .map_err(broker("could not assign"))?;
    consumer.assign(&assignment).map_err(broker("could not assign"))?;

    let mut records = Vec::new();
    let mut next = start;
    let outcome = loop {
        if next >= end {
            break Ok(records);
        }
        match consumer.poll(timeout) {
            // librdkafka drops what an earlier assignment fetched; this
            // check keeps that promise visible here.
            Some(Ok(message)) if message.topic() != topic || message.partition() != partition => {}
            Some(Ok(message)) if message.offset() < start => {}
            Some(Ok(message)) => {
                let record = Record::from(&message);
                next = record.offset + 1;
                if record.offset < end {
                    records.push(record);
                }
            }
            Some(Err(source)) => break Err(broker("could not read")(source)),
            // Offsets of a compacted or transactional log may have gaps;
            // nothing more arriving within the timeout means the end.
            None if !records.is_empty() => break Ok(records),
            None => {
                break Err(AdminError::Broker {
                    context: format!("no record arrived within {timeout:?} from {topic}[{partition}]"),
                    source: KafkaError::NoMessageReceived,
                })
            }
        }
    };
    // The next read assigns its own partition; this one stops fetching now.
    let _ = consumer.unassign();
    outcome
}
