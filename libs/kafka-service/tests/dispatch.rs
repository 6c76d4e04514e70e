//! The dispatcher against librdkafka's in-process mock cluster: records
//! are handled once each, in offset order per partition, in batches where
//! the handler takes them (never more than `max_batch_records` at once), partitions do not wait for each other, and
//! back-pressure (pausing a partition whose worker
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
/// Below the queue capacity (8), so that the bound, not the queue, is what
/// cuts a batch.
const MAX_BATCH_RECORDS: usize = 5;

/// Remembers the offsets it handled per partition, and which of them it
/// handled alone; partition 0 is slow. Batches take a leading run up to the
/// first offset that is 3 modulo 7, which is left to `handle`.
#[derive(Clone, Default)]
struct Recorder {
    handled: Handled,
    alone: Arc<Mutex<Vec<(i32, i64)>>>,
    largest_batch: Arc<Mutex<usize>>,
}

/// The offsets a handler handled, per partition, in the order it did.
#[derive(Clone, Default)]
struct Handled(Arc<Mutex<HashMap<i32, Vec<i64>>>>);

impl Handled {
    fn add(&self, record: &Record) {
        self.0
            .lock()
            .unwrap()
            .entry(record.partition)
            .or_default()
            .push(record.offset);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Vec<i64>>> {
        self.0.lock().unwrap()
    }
}

impl RecordHandler for Recorder {
    async fn handle(&self, record: &Record, _lease: &PartitionLease) -> Disposition {
        if record.partition == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.alone.lock().unwrap().push((record.partition, record.offset));
        self.handled.add(record);
        Disposition::Done
    }

    async fn handle_batch(&self, records: &[Record], _lease: &PartitionLease) -> usize {
        let mut largest = self.largest_batch.lock().unwrap();
        *largest = (*largest).max(records.len());
        drop(largest);
        let run = records.iter().take_while(|record| record.offset % 7 != 3).count();
        for record in &records[..run] {
            self.handled.add(record);
        }
        run
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_handled_once_in_partition_order_under_back_pressure() {
    // Small queues: the slow partition is paused and resumed many times.
    handled_once_in_partition_order(Queues {
        records: 8,
        bytes: usize::MAX,
    })
    .await;
}

/// The same, with partitions paused by the bytes queued: each record here
/// has 6 to 13 bytes of key and value, so 64 bytes is 5 to 10 records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_handled_once_in_partition_order_under_back_pressure_by_bytes() {
    handled_once_in_partition_order(Queues {
        records: 10_000,
        bytes: 64,
    })
    .await;
}

/// The bounds of each partition's queue.
#[derive(Clone, Copy)]
struct Queues {
    records: usize,
    bytes: usize,
}

async fn handled_once_in_partition_order(queues: Queues) {
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

    let recorder = Recorder::default();
    let (monitor, shutdown, run) =
        dispatch_events(&settings, "dispatch-test", recorder.clone(), MAX_BATCH_RECORDS, queues);

    let handled = || recorder.handled.lock().values().map(Vec::len).sum::<usize>();
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

    let handled = recorder.handled.lock();
    assert_eq!(
        handled.values().map(Vec::len).sum::<usize>(),
        RECORDS,
        "no record twice"
    );
    for (partition, offsets) in handled.iter() {
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(offsets, &expected, "partition {partition}: every offset, in order");
    }
    let alone = recorder.alone.lock().unwrap();
    for (partition, offsets) in handled.iter() {
        for offset in offsets.iter().filter(|offset| *offset % 7 == 3) {
            assert!(
                alone.contains(&(*partition, *offset)),
                "partition {partition} offset {offset}: a record the batch left is handled alone"
            );
        }
    }
    assert!(
        alone.len() < RECORDS / 2,
        "most records go in batches ({} of {RECORDS} alone)",
        alone.len()
    );
    let largest_batch = *recorder.largest_batch.lock().unwrap();
    assert!(
        (2..=MAX_BATCH_RECORDS).contains(&largest_batch),
        "batches of up to {MAX_BATCH_RECORDS} records offered (largest {largest_batch})"
    );
    assert!(monitor.since_progress() < Duration::from_secs(5));
}

/// Handles records one at a time, and panics on partition 0's offset 5.
#[derive(Clone, Default)]
struct Panicky {
    handled: Handled,
}

impl RecordHandler for Panicky {
    async fn handle(&self, record: &Record, _lease: &PartitionLease) -> Disposition {
        assert!(
            !(record.partition == 0 && record.offset == 5),
            "a bug met partition 0, offset 5"
        );
        self.handled.add(record);
        Disposition::Done
    }
}

/// A handler that panics on one record: the other partition flows on, the
/// panicking partition handles nothing past that record (its offset is
/// never committed past it), and readiness and liveness report the panic
/// with the record's coordinates so the task gets replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_panics_stops_its_partition_and_fails_readiness() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 2, 1).unwrap();
    let settings = KafkaSettings::new(cluster.bootstrap_servers());
    let producer = EventProducer::new(&settings, "test").unwrap();
    // Keyed records spread over both partitions (40 keys: each gets more
    // than 5 but for a one-in-a-million draw).
    let mut per_partition = [0_i64; 2];
    for i in 0..40 {
        let record = OutgoingRecord {
            key: Some(format!("key-{i}").into_bytes()),
            value: Some(i.to_string().into_bytes()),
            headers: Vec::new(),
        };
        let delivered = producer.send_record("events", &record).await.unwrap();
        per_partition[usize::try_from(delivered.partition).unwrap()] += 1;
    }
    assert!(per_partition[0] > 5, "{per_partition:?}");

    let handler = Panicky::default();
    let (monitor, shutdown, run) = dispatch_events(
        &settings,
        "panic-test",
        handler.clone(),
        1,
        Queues {
            records: 8,
            bytes: usize::MAX,
        },
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let reason = loop {
        let done = handler.handled.lock().get(&1).map_or(0, Vec::len) as i64 == per_partition[1];
        if let Some(reason) = monitor.stalled(&["events"], Duration::from_secs(3600)) {
            if done {
                break reason;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "partition 1 handled and the panic reported; handled {:?}, readiness {:?}",
            handler.handled.lock(),
            monitor.stalled(&["events"], Duration::from_secs(3600))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        reason.contains("panicked") && reason.contains("events[0]@5"),
        "the reason names the record: {reason}"
    );
    // What the consumer's liveness (its container health check) reports.
    assert_eq!(monitor.failure().as_deref(), Some(reason.as_str()));
    shutdown.cancel();
    run.await.unwrap().unwrap();

    let handled = handler.handled.lock()[&0].clone();
    assert_eq!(handled, (0..5).collect::<Vec<i64>>(), "nothing past the panic");
    let offsets = kafka_service::group_offsets(&settings, "panic-test", &["events"])
        .await
        .unwrap();
    let committed = |partition| offsets.iter().find(|p| p.partition == partition).unwrap().committed;
    assert_eq!(committed(0), Some(5), "committed up to the record that panicked");
    assert_eq!(committed(1), Some(per_partition[1]));
}

/// Runs the dispatcher over topic `events` for group `group_id` with
/// `handler`, queues of 8 records and batches of at most
/// `max_batch_records`, committing every 100 ms. Returns the member's
/// monitor, the token that stops it, and the dispatcher's task.
fn dispatch_events<H: RecordHandler>(
    settings: &KafkaSettings,
    group_id: &str,
    handler: H,
    max_batch_records: usize,
    queues: Queues,
) -> (
    GroupMonitor,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), kafka_service::ConsumeError>>,
) {
    let mut group = ConsumerSettings::new(group_id);
    group.commit_interval_ms = 100;
    let shutdown = CancellationToken::new();
    let monitor = GroupMonitor::new(&mut Registry::default());
    let consumer = EventConsumer::new(
        settings,
        &group,
        "test",
        &["events"],
        shutdown.child_token(),
        monitor.clone(),
    )
    .unwrap();
    let run = tokio::spawn(dispatch::run(
        consumer,
        handler,
        DispatchSettings {
            queue_capacity: queues.records,
            queue_bytes: queues.bytes,
            max_batch_records,
            drain_timeout: Duration::from_secs(5),
        },
        shutdown.clone(),
    ));
    (monitor, shutdown, run)
}
