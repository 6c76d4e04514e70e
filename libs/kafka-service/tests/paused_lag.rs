//! Lag of a paused partition, against librdkafka's in-process mock
//! cluster. librdkafka learns a partition's high watermark from fetch
//! responses, and a paused partition is not fetched, so its statistics
//! keep the lag it had when it was paused; the consumer's back-pressure
//! pauses exactly the partitions that fall behind.

use std::time::Duration;

use kafka_service::{ConsumerSettings, EventConsumer, EventProducer, GroupMonitor, KafkaSettings, OutgoingRecord};
use prometheus_client::registry::Registry;
use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

/// 10 records, the first received and processed, then the partition
/// paused and 50 more written: the member's lag counts all 59 within a few
/// statistics intervals (5 s each), not the 9 it had when paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_partitions_lag_counts_records_written_while_it_is_paused() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 1, 1).unwrap();
    let settings = KafkaSettings::new(cluster.bootstrap_servers());
    let producer = EventProducer::new(&settings, "test").unwrap();
    let write = |count: usize| {
        let producer = &producer;
        async move {
            for i in 0..count {
                let record = OutgoingRecord {
                    key: Some(b"key".to_vec()),
                    value: Some(i.to_string().into_bytes()),
                    headers: Vec::new(),
                };
                producer.send_record("events", &record).await.unwrap();
            }
        }
    };
    write(10).await;

    let mut registry = Registry::default();
    let monitor = GroupMonitor::new(&mut registry);
    let mut consumer = EventConsumer::new(
        &settings,
        &ConsumerSettings::new("paused-lag-test"),
        "test",
        &["events"],
        CancellationToken::new(),
        monitor.clone(),
    )
    .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("the first record arrives")
        .unwrap();
    consumer.pause("events", 0);
    consumer.lease("events", 0).expect("assigned").store(&first).unwrap();
    write(50).await;

    // The member keeps polling, as the dispatch loop does while it waits.
    let lag = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
            if monitor.lag(&["events"]) == 59 {
                return;
            }
        }
    })
    .await;
    assert!(
        lag.is_ok(),
        "lag while paused: {} records, not the 59 written after the one processed",
        monitor.lag(&["events"])
    );
}
