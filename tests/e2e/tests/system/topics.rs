//! Topic provisioning, and where keys land, against the real broker.

use e2e::partitioner::java_partition;
use e2e::TestContext;
use kafka_service::{AdminError, EventProducer, OutgoingRecord, Topic, TopicSpec};

#[tokio::test]
async fn provisioning_is_idempotent_and_refuses_a_topic_with_another_partition_count() {
    let context = TestContext::new();
    let kafka = context.kafka();
    let spec = kafka.topics.spec(Topic::NewUserCreated).clone();
    let small = TopicSpec {
        partitions: 2,
        ..spec.clone()
    };

    kafka_service::ensure_topics(&kafka, &[&small])
        .await
        .expect("topic created with 2 partitions");
    kafka_service::ensure_topics(&kafka, &[&small])
        .await
        .expect("a second run changes nothing");
    let error = kafka_service::ensure_topics(&kafka, &[&spec])
        .await
        .expect_err("8 partitions configured");

    match &error {
        AdminError::PartitionCount {
            topic,
            expected,
            actual,
        } => {
            assert_eq!((topic.as_str(), *expected, *actual), (spec.name.as_str(), 8, 2));
        }
        other => panic!("expected PartitionCount, got {other:?}"),
    }
    assert!(!error.is_transient(), "retrying cannot fix it");
    assert!(
        error.to_string().contains("has 2 partitions but 8 are configured"),
        "{error}"
    );

    // More partitions than configured: someone added some, and keys moved.
    let fewer = TopicSpec { partitions: 1, ..small };
    let error = kafka_service::ensure_topics(&kafka, &[&fewer])
        .await
        .expect_err("1 partition configured");
    assert!(
        matches!(
            &error,
            AdminError::PartitionCount {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("migrate to a new topic as docs/config/topics.md says"),
        "{error}"
    );
}

/// A user's records land on the partition the Java client gives their key
/// (murmur2), not librdkafka's default (CRC-32): a JVM service producing to
/// the same topics keeps each user's events on one partition. 64 keys
/// cover all 8 partitions; with CRC-32 most of them land elsewhere.
#[tokio::test]
async fn keys_land_on_the_partition_the_java_client_gives_them() {
    let context = TestContext::new();
    let kafka = context.kafka();
    let spec = kafka.topics.spec(Topic::NewUserCreated);
    kafka_service::ensure_topics(&kafka, &[spec])
        .await
        .expect("topic created");
    let producer = EventProducer::new(&kafka, "partitioner-test").expect("a producer");

    let mut landed = Vec::new();
    let mut expected = Vec::new();
    for i in 0..64 {
        let key = uuid::Uuid::from_u128(i).to_string().into_bytes();
        let record = OutgoingRecord {
            key: Some(key.clone()),
            value: Some(b"{}".to_vec()),
            headers: Vec::new(),
        };
        let delivery = producer.send_record(&spec.name, &record).await.expect("delivered");
        landed.push(delivery.partition);
        expected.push(java_partition(&key, spec.partitions));
    }
    assert_eq!(landed, expected, "partitions by key, in the order sent");
    let mut used = expected.clone();
    used.sort_unstable();
    used.dedup();
    assert_eq!(used.len(), 8, "the keys cover every partition: {used:?}");
}
