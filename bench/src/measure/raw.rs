//! The raw baseline: rdkafka alone, producing and consuming at the
//! broker's pace, without the services.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::TestContext;
use events::{UserCreated, UserEvent};
use kafka_service::{Envelope, TopicSpec};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message};
use uuid::Uuid;

use super::figures::{percentile, RawFigures, Samples};
use super::process::broker_cpu_seconds;

/// A `user.created.v1` event for a new user, as the producer writes it.
pub(super) fn user_created() -> UserEvent {
    let user_id = Uuid::now_v7();
    let username = format!("bench-{}", &user_id.simple().to_string()[20..]);
    UserEvent::Created(UserCreated {
        user_id,
        email: format!("{username}@example.com"),
        username,
        created_at: chrono::Utc::now(),
    })
}

/// How the services and the raw client are configured for a run.
pub struct Tuning {
    /// The consumer's `kafka.partition_queue_capacity` (its default: 4096).
    pub queue_capacity: Option<usize>,
    /// The consumer's `kafka.partition_queue_bytes` (its default: 1 MiB).
    pub queue_bytes: Option<usize>,
    /// The producer's `outbox.batch_size` (its default: 500).
    pub outbox_batch: Option<usize>,
    /// `fetch.wait.max.ms` of the consumer service and of the raw consumer,
    /// in milliseconds.
    pub fetch_wait_ms: u64,
}

/// Produce bursts the raw client limit takes the median of: one burst on a
/// shared two-core machine moved by a third between runs.
pub const RAW_BURSTS: usize = 3;
// The raw produce rate is the middle burst's: an odd count has one.
const _: () = assert!(RAW_BURSTS % 2 == 1);

/// Step 1: rdkafka alone on the test broker: [`RAW_BURSTS`] bursts of
/// `records` records the size of a `user.created.v1` event, with its
/// headers, to a fresh 8-partition topic, then a group reading them back,
/// then the latency floor, then producing and consuming at once.
pub async fn raw_client(records: usize, rate: u32, tuning: &Tuning) -> anyhow::Result<RawFigures> {
    let context = TestContext::new();
    let kafka = context.kafka();
    let topic = format!("bench-raw-{}", &Uuid::new_v4().simple().to_string()[..12]);
    kafka_service::ensure_topics(
        &kafka,
        &[&TopicSpec {
            name: topic.clone(),
            partitions: 8,
            replication_factor: 1,
            retention_ms: None,
        }],
    )
    .await?;
    let events: Vec<Envelope> = (0..records).map(|_| e2e::load::envelope_of(&user_created())).collect();
    let value_bytes = events[0].data.len();

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", kafka_service::producer::PARTITIONER)
        .set("max.in.flight.requests.per.connection", "1")
        .set("linger.ms", "5")
        .create()?;
    let broker_cpu = broker_cpu_seconds();
    let mut produce_bursts_per_s = Vec::new();
    for _ in 0..RAW_BURSTS {
        produce_bursts_per_s.push(produce_burst(&producer, &topic, &events).await?);
    }
    let broker_cpu_produce = broker_cpu_seconds() - broker_cpu;

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("group.id", format!("{topic}-group"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "15000")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("fetch.wait.max.ms", tuning.fetch_wait_ms.to_string())
        .create()?;
    consumer.subscribe(&[&topic])?;
    let broker_cpu = broker_cpu_seconds();
    let subscribed = Instant::now();
    let (first, consume_per_s) = consume_backlog(&consumer, records * RAW_BURSTS).await?;
    let broker_cpu_consume = broker_cpu_seconds() - broker_cpu;

    // Latency floor: single records at 20 per second (the HTTP latency
    // run's rate) and at `rate` (the outbox latency run's), 10 s each.
    let latency = raw_latency(&producer, &consumer, &topic, &events, 20)
        .await?
        .summary(20.0);
    let latency_at_rate = raw_latency(&producer, &consumer, &topic, &events, rate)
        .await?
        .summary(f64::from(rate));

    let broker_cpu = broker_cpu_seconds();
    let concurrent_per_s = produce_while_consuming(&producer, &consumer, &topic, &events).await?;
    let broker_cpu_concurrent = broker_cpu_seconds() - broker_cpu;
    let per_record = |seconds: f64| seconds * 1000.0 / (records * RAW_BURSTS) as f64;
    Ok(RawFigures {
        records,
        value_bytes,
        // The median, for the odd number of bursts.
        produce_per_s: {
            let mut sorted = produce_bursts_per_s.clone();
            sorted.sort_by(f64::total_cmp);
            percentile(&sorted, 0.50)
        },
        produce_bursts_per_s,
        consume_per_s,
        concurrent_per_s,
        join_seconds: (first - subscribed).as_secs_f64(),
        broker_cpu_ms_per_record: (
            per_record(broker_cpu_produce),
            per_record(broker_cpu_consume),
            broker_cpu_concurrent * 1000.0 / records as f64,
        ),
        latency,
        latency_at_rate,
    })
}

/// Sends every one of `events` to `topic` at once and waits for all their
/// delivery reports: records per second.
async fn produce_burst(producer: &FutureProducer, topic: &str, events: &[Envelope]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let deliveries: Vec<_> = events
        .iter()
        .map(|envelope| producer.send(record_of(topic, envelope), Timeout::Never))
        .collect();
    for delivery in futures::future::join_all(deliveries).await {
        delivery
            .map_err(|(error, _)| error)
            .context("a raw record was not delivered")?;
    }
    Ok(events.len() as f64 / started.elapsed().as_secs_f64())
}

/// Reads `expected` records with `consumer` (just subscribed), storing
/// offsets and committing every 1000: when the first arrived, and records
/// per second from the first to the last.
async fn consume_backlog(consumer: &StreamConsumer, expected: usize) -> anyhow::Result<(Instant, f64)> {
    let mut first = None;
    let mut received = 0;
    while received < expected {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .context("raw consumer: no record for 60 s")??;
        first.get_or_insert_with(Instant::now);
        consumer.store_offset_from_message(&message)?;
        received += 1;
        if received % 1000 == 0 {
            consumer.commit_consumer_state(CommitMode::Async)?;
        }
        let _ = message.payload();
    }
    let first = first.expect("records arrived");
    // `received - 1` gaps between the first receipt and the last.
    let per_s = (received - 1) as f64 / first.elapsed().as_secs_f64();
    consumer.commit_consumer_state(CommitMode::Sync)?;
    Ok((first, per_s))
}

/// Both at once, as in the pipeline: `events` produced again to `topic`
/// while `consumer` (already joined) reads them. Records per second.
async fn produce_while_consuming(
    producer: &FutureProducer,
    consumer: &StreamConsumer,
    topic: &str,
    events: &[Envelope],
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let producing = async {
        let deliveries: Vec<_> = events
            .iter()
            .map(|envelope| producer.send(record_of(topic, envelope), Timeout::Never))
            .collect();
        futures::future::join_all(deliveries).await
    };
    let consuming = async {
        let mut received = 0;
        while received < events.len() {
            match tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await {
                Ok(Ok(message)) => {
                    consumer.store_offset_from_message(&message)?;
                    received += 1;
                    if received % 1000 == 0 {
                        consumer.commit_consumer_state(CommitMode::Async)?;
                    }
                }
                _ => anyhow::bail!("raw consumer: no record for 60 s while producing"),
            }
        }
        anyhow::Ok(())
    };
    let (_, consumed) = tokio::join!(producing, consuming);
    consumed?;
    Ok(events.len() as f64 / started.elapsed().as_secs_f64())
}

/// Records sent at `rate` per second for 10 s to `topic`, without waiting
/// for one's delivery report before sending the next, each timed from its
/// send to its arrival at `consumer` (already joined), matched by key.
async fn raw_latency(
    producer: &FutureProducer,
    consumer: &StreamConsumer,
    topic: &str,
    events: &[Envelope],
    rate: u32,
) -> anyhow::Result<Samples> {
    let probes = (rate as usize * 10).min(events.len());
    let mut sent: Vec<(String, Instant)> = Vec::with_capacity(probes);
    let mut arrived: HashMap<String, Instant> = HashMap::with_capacity(probes);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let receiving = async {
        while arrived.len() < probes {
            match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
                Ok(Ok(message)) => {
                    let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
                    arrived.insert(key, Instant::now());
                }
                _ => break,
            }
        }
    };
    let sending = async {
        let mut deliveries = Vec::with_capacity(probes);
        for envelope in &events[..probes] {
            ticks.tick().await;
            sent.push((envelope.subject.clone(), Instant::now()));
            deliveries.push(
                producer
                    .send_result(record_of(topic, envelope))
                    .map_err(|(error, _)| error),
            );
        }
        for delivery in deliveries {
            delivery?
                .await
                .context("a probe's delivery report was lost")?
                .map_err(|(error, _)| error)
                .context("a probe was not delivered")?;
        }
        anyhow::Ok(())
    };
    let ((), delivered) = tokio::join!(receiving, sending);
    delivered?;
    let latencies_ms = sent
        .iter()
        .filter_map(|(key, at)| {
            arrived
                .get(key)
                .map(|arrival| arrival.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    Ok(Samples {
        latencies_ms,
        sent: probes,
        seconds: probes as f64 / f64::from(rate),
    })
}

/// `envelope` as the relay publishes it: keyed by its subject, with its
/// CloudEvents headers.
fn record_of<'a>(topic: &'a str, envelope: &'a Envelope) -> FutureRecord<'a, [u8], [u8]> {
    let headers = envelope
        .headers()
        .iter()
        .fold(OwnedHeaders::new(), |acc, (key, value)| {
            acc.insert(Header {
                key,
                value: Some(value.as_bytes()),
            })
        });
    FutureRecord::to(topic)
        .key(envelope.key())
        .payload(envelope.data.as_slice())
        .headers(headers)
}
