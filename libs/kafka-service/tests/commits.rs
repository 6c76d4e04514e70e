//! Offset commits against librdkafka's in-process mock cluster: a commit
//! the broker refuses is retried, even while the partition stays idle.

use std::time::Duration;

use kafka_service::{ConsumerSettings, EventConsumer, EventProducer, GroupMonitor, KafkaSettings, OutgoingRecord};
use prometheus_client::registry::Registry;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tokio_util::sync::CancellationToken;

/// One record, processed and its offset stored; the broker refuses the
/// first `OffsetCommit` (`OFFSET_METADATA_TOO_LARGE`, which librdkafka does
/// not retry by itself). No record follows, so nothing else would cause a
/// commit: the consumer must retry the failed one on its own, and the group
/// ends up with offset 1 committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_commit_is_retried_while_the_partition_is_idle() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 1, 1).unwrap();
    let settings = KafkaSettings::new(cluster.bootstrap_servers());
    let producer = EventProducer::new(&settings, "test").unwrap();
    let record = OutgoingRecord {
        key: Some(b"key".to_vec()),
        value: Some(b"value".to_vec()),
        headers: Vec::new(),
    };
    producer.send_record("events", &record).await.unwrap();

    let mut group = ConsumerSettings::new("commit-test");
    group.commit_interval_ms = 100;
    let mut registry = Registry::default();
    let monitor = GroupMonitor::new(&mut registry);
    let mut consumer = EventConsumer::new(
        &settings,
        &group,
        "test",
        &["events"],
        CancellationToken::new(),
        monitor,
    )
    .unwrap();
    let received = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("the record arrives")
        .unwrap();
    cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE],
    );
    let lease = consumer.lease(&received.topic, received.partition).expect("assigned");
    lease.store(&received).unwrap();

    // The consumer commits only while it is polled, as a worker loop does.
    let polling = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let _ = consumer.recv().await;
        }
    });
    let _ = polling.await;

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("kafka_consumer_commits_total{result=\"failed\"} 1"),
        "the first commit was refused: {text}"
    );
    let offsets = kafka_service::group_offsets(&settings, "commit-test", &["events"])
        .await
        .unwrap();
    assert_eq!(offsets[0].committed, Some(1), "the refused commit was retried");
}
