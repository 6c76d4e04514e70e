//! Reads a range of one partition outside any consumer group: nothing is
//! committed and no group is joined (listing dead letters, audits in tests).

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use crate::consumer::Record;
use crate::context::KafkaContext;
use crate::error::AdminError;
use crate::settings::KafkaSettings;

/// The records of `partition` of `topic` from `from_offset` (or the log
/// start, if later) up to `max_records` of them, stopping at the high
/// watermark as it was when the call began. Records come in offset order.
///
/// # Errors
///
/// [`AdminError::Config`] for bad client settings; [`AdminError::Broker`]
/// when the broker does not answer within `request_timeout_ms` (for the
/// watermarks, or for each fetch).
pub async fn read_partition(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
    from_offset: i64,
    max_records: usize,
) -> Result<Vec<Record>, AdminError> {
    let settings = settings.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_blocking(&settings, &topic, partition, from_offset, max_records))
        .await
        .expect("partition read panicked")
}

/// Every record of every partition of `topic` (up to the high watermarks as
/// they were at the start), partition by partition.
///
/// # Errors
///
/// As [`read_partition`], and when the topic's metadata cannot be fetched.
pub async fn read_topic(settings: &KafkaSettings, topic: &str) -> Result<Vec<Record>, AdminError> {
    let partitions = crate::admin::partition_count(settings, topic).await?;
    let mut records = Vec::new();
    for partition in 0..partitions {
        records.extend(read_partition(settings, topic, partition, 0, usize::MAX).await?);
    }
    Ok(records)
}

fn read_blocking(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
    from_offset: i64,
    max_records: usize,
) -> Result<Vec<Record>, AdminError> {
    let broker = |context: &str| {
        let context = format!("{context} {topic}[{partition}]");
        move |source| AdminError::Broker { context, source }
    };
    let timeout = settings.request_timeout();
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
    while next < end {
        match consumer.poll(timeout) {
            Some(Ok(message)) => {
                let record = Record::from(&message);
                next = record.offset + 1;
                if record.offset < end {
                    records.push(record);
                }
            }
            Some(Err(source)) => return Err(broker("could not read")(source)),
            // Offsets of a compacted or transactional log may have gaps;
            // nothing more arriving within the timeout means the end.
            None if !records.is_empty() => break,
            None => {
                return Err(AdminError::Broker {
                    context: format!("no record arrived within {timeout:?} from {topic}[{partition}]"),
                    source: rdkafka::error::KafkaError::NoMessageReceived,
                })
            }
        }
    }
    Ok(records)
}
