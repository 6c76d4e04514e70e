//! A record whose header name is not UTF-8 (any peer may write one:
//! `kcat -H $'\xff=x'`), read by a consumer-group member and by the
//! partition reader, against librdkafka's in-process mock cluster.
//!
//! rust-rdkafka 0.39 panics reading such a name. Before the fix the panic
//! came out of [`EventConsumer::recv`], outside any worker, and took the
//! member down; every member that took the partition next went the same
//! way.

use std::time::Duration;

use kafka_service::reader::read_topic;
use kafka_service::{ConsumerSettings, Envelope, EnvelopeError, EventConsumer, GroupMonitor, KafkaSettings, Record};
use prometheus_client::registry::Registry;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

/// Writes one record with headers `ce_id`, a name that is not UTF-8, and
/// `traceparent`, to partition 0 of `topic`.
async fn write_hostile_record(bootstrap_servers: &str, topic: &str) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .create()
        .unwrap();
    let headers = OwnedHeaders::new().insert(Header {
        key: "ce_id",
        value: Some("1"),
    });
    let headers = hostile::with_raw_header(headers, b"\xff\xfe", Some(b"x"));
    let headers = headers.insert(Header {
        key: "traceparent",
        value: Some("2"),
    });
    let record = FutureRecord::to(topic)
        .partition(0)
        .key("user")
        .payload("value")
        .headers(headers);
    producer.send(record, Duration::from_secs(10)).await.unwrap();
}

/// What both readers must see: the record, its readable headers in order,
/// and a count of the one left out.
fn assert_read_as_expected(record: &Record) {
    assert_eq!(record.key.as_deref(), Some(&b"user"[..]));
    assert_eq!(record.value.as_deref(), Some(&b"value"[..]));
    assert_eq!(
        record.headers,
        [
            ("ce_id".to_owned(), Some(b"1".to_vec())),
            ("traceparent".to_owned(), Some(b"2".to_vec()))
        ]
    );
    assert_eq!(record.unreadable_header_names, 1);
    assert_eq!(
        Envelope::decode(record),
        Err(EnvelopeError::UnreadableHeaderNames(1)),
        "undecodable, so it is dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_name_that_is_not_utf8_is_counted_and_left_out_not_a_crash() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 1, 1).unwrap();
    write_hostile_record(&cluster.bootstrap_servers(), "events").await;
    let settings = KafkaSettings::new(cluster.bootstrap_servers());

    let mut registry = Registry::default();
    let mut consumer = EventConsumer::new(
        &settings,
        &ConsumerSettings::new("hostile-test"),
        "test",
        &["events"],
        CancellationToken::new(),
        GroupMonitor::new(&mut registry),
    )
    .unwrap();
    let received = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("the record arrives")
        .unwrap();
    assert_read_as_expected(&received);

    let read = read_topic(&settings, "events").await.unwrap();
    assert_eq!(read.len(), 1);
    assert_read_as_expected(&read[0]);
}
