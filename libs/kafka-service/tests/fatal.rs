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
