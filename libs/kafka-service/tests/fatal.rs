//! The producer recovers from a fatal error: librdkafka's mock cluster
//! answers one produce request with `OUT_OF_ORDER_SEQUENCE_NUMBER`, which
//! for the head-of-line request of an idempotent producer is fatal (the
//! client fails every record from then on). The next send goes out on a new
//! client.

use std::time::Duration;

use kafka_service::{EventProducer, KafkaSettings, OutgoingRecord};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

fn record(n: u32) -> OutgoingRecord {
    OutgoingRecord {
        key: Some(format!("key-{n}").into_bytes()),
        value: Some(b"value".to_vec()),
        headers: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_error_replaces_the_client_and_the_next_send_is_delivered() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 1, 1).unwrap();
    let settings = KafkaSettings::new(cluster.bootstrap_servers());
    let producer = EventProducer::new(&settings, "fatal-test").unwrap();
    producer
        .send_record("events", &record(1))
        .await
        .expect("delivered before the fault");

    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let failed = producer.send_record("events", &record(2)).await;
    assert!(failed.is_err(), "the refused record fails: {failed:?}");
    let fatal = producer.fatal_error().expect("the fatal error is reported");
    assert!(fatal.contains("OutOfOrderSequenceNumber"), "{fatal}");

    let delivered = tokio::time::timeout(Duration::from_secs(10), producer.send_record("events", &record(3)))
        .await
        .expect("an answer within 10 s");
    assert!(
        delivered.is_ok(),
        "the next record goes out on a new client: {delivered:?}"
    );
    assert_eq!(producer.fatal_error(), None, "recovered once a record is delivered");
}

/// A record the old client delivers after it was replaced does not end the
/// recovery (issue 23, N2): the records it had not delivered are still to
/// be sent again, so only a delivery on the new client does. Partition 1's
/// leader answers after 2 s, so its record is in flight when partition 0's
/// produce request gets the fatal error, and is delivered after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_delivery_on_the_replaced_client_does_not_end_the_recovery() {
    let cluster = MockCluster::new(2).unwrap();
    cluster.create_topic("events", 2, 1).unwrap();
    cluster.partition_leader("events", 0, Some(1)).unwrap();
    cluster.partition_leader("events", 1, Some(2)).unwrap();
    let settings = KafkaSettings::new(cluster.bootstrap_servers());
    let producer = EventProducer::new(&settings, "fatal-test").unwrap();
    // A key of each partition.
    let mut keys = [None, None];
    for n in 0..100 {
        let delivery = producer.send_record("events", &record(n)).await.unwrap();
        keys[delivery.partition as usize].get_or_insert(n);
        if keys.iter().all(Option::is_some) {
            break;
        }
    }
    let [Some(first), Some(second)] = keys else {
        panic!("no key of each partition in 100 tries: {keys:?}");
    };

    cluster.broker_round_trip_time(2, Duration::from_secs(2)).unwrap();
    let slow = tokio::spawn({
        let producer = producer.clone();
        async move { producer.send_record("events", &record(second)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let failed = producer.send_record("events", &record(first)).await;
    assert!(failed.is_err(), "the refused record fails: {failed:?}");
    assert!(producer.fatal_error().is_some(), "the fatal error is reported");

    let late = slow.await.unwrap();
    assert!(late.is_ok(), "the old client delivers the record in flight: {late:?}");
    assert!(
        producer.fatal_error().is_some(),
        "a delivery on the replaced client ended the recovery"
    );
    producer
        .send_record("events", &record(first))
        .await
        .expect("delivered on the new client");
    assert_eq!(producer.fatal_error(), None, "recovered once the new client delivers");
}
