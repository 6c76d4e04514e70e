//! The dispatcher against librdkafka's in-process mock cluster: records
//! are handled once each, in offset order per partition, partitions do not
//! wait for each other, and back-pressure (pausing a partition whose worker
//! is behind) loses and repeats nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_service::dispatch::{self, DispatchSettings};
use kafka_service::{
    ConsumerSettings, Disposition, EventConsumer, EventProducer, GroupMonitor, KafkaSettings, OutgoingRecord,
    PartitionLease, Record, RecordHandler,
};
use prometheus_client::registry::Registry;
use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 4;
const RECORDS: usize = 200;

/// Remembers the offsets it handled per partition; partition 0 is slow.
#[derive(Clone, Default)]
struct Recorder {
    handled: Arc<Mutex<HashMap<i32, Vec<i64>>>>,
}

impl RecordHandler for Recorder {
    async fn handle(&self, record: &Record, _lease: &PartitionLease) -> Disposition {
        if record.partition == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.handled
            .lock()
            .unwrap()
            .entry(record.partition)
            .or_default()
            .push(record.offset);
        Disposition::Done
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_handled_once_in_partition_order_under_back_pressure() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", PARTITIONS, 1).unwrap();
    let settings = KafkaSettings::new(cluster.bootstrap_servers());

    let producer = EventProducer::new(&settings, "test").unwrap();
    for i in 0..RECORDS {
        let record = OutgoingRecord {
            key: Some(format!("key-{}", i % 40).into_bytes()),
            value: Some(i.to_string().into_bytes()),
            headers: Vec::new(),
        };
        producer.send_record("events", &record).await.unwrap();
    }

    let mut group = ConsumerSettings::new("dispatch-test");
    group.commit_interval_ms = 100;
    let shutdown = CancellationToken::new();
    let monitor = GroupMonitor::new(&mut Registry::default());
    let consumer = EventConsumer::new(
        &settings,
        &group,
        "test",
        &["events"],
        shutdown.child_token(),
        monitor.clone(),
    )
    .unwrap();
    let recorder = Recorder::default();
    let run = tokio::spawn(dispatch::run(
        consumer,
        recorder.clone(),
        DispatchSettings {
            // Small queues: the slow partition is paused and resumed many times.
            queue_capacity: 8,
            drain_timeout: Duration::from_secs(5),
        },
        shutdown.clone(),
    ));

    let handled = || recorder.handled.lock().unwrap().values().map(Vec::len).sum::<usize>();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while handled() < RECORDS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "handled {} of {RECORDS}",
            handled()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    run.await.unwrap().unwrap();

    let handled = recorder.handled.lock().unwrap();
    assert_eq!(
        handled.values().map(Vec::len).sum::<usize>(),
        RECORDS,
        "no record twice"
    );
    for (partition, offsets) in handled.iter() {
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(offsets, &expected, "partition {partition}: every offset, in order");
    }
    assert!(monitor.since_progress() < Duration::from_secs(5));
}
