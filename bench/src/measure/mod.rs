//! The measurements, and the figures they produce.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHasher};
use e2e::process::ServiceProcess;
use e2e::TestContext;
use events::{UserCreated, UserEvent};
use futures::StreamExt;
use kafka_service::{Envelope, TopicSpec};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct Figures {
    /// The command that produced them.
    pub command: String,
    /// CPU cores the machine offers (broker, database, services and this
    /// program share them).
    pub cores: usize,
    /// When the run started (RFC 3339).
    pub started_at: String,
    /// Step 1: rdkafka alone.
    pub raw: Option<RawFigures>,
    /// Step 2: The consumer alone, draining a backlog.
    pub drain: Option<DrainFigures>,
    /// Step 2: The services' pipeline.
    pub pipeline: Option<PipelineFigures>,
    /// Step 3: Latency of events appended to the outbox at a steady rate.
    pub latency_outbox: Option<LatencySummary>,
    /// Step 3: Latency of users created and tokens issued over HTTP.
    pub latency_http: Option<LatencySummary>,
    /// Step 4: argon2id hashes per second on all cores, same parameters.
    pub argon2_per_second: Option<f64>,
    /// Step 4: The HTTP API.
    pub http: Vec<HttpFigures>,
    /// Step 5: Peak resident memory, KiB: (producer, consumer).
    pub peak_rss_kib: Option<(u64, u64)>,
    /// Where the CPU went during the pipeline run: CPU seconds by process,
    /// and the wall-clock seconds it took.
    pub pipeline_cpu: Option<CpuProfile>,
    /// The same during the HTTP runs.
    pub http_cpu: Option<CpuProfile>,
}

/// `, N missing` when some of `latency`'s events never arrived.
fn missing(latency: &LatencySummary) -> String {
    if latency.missing > 0 {
        format!(", {} missing", latency.missing)
    } else {
        String::new()
    }
}

/// CPU seconds per process over a stretch of wall-clock time.
#[derive(Debug, Clone, Serialize)]
pub struct CpuProfile {
    /// Wall-clock seconds.
    pub wall_seconds: f64,
    /// (process, CPU seconds), most first.
    pub by_process: Vec<(String, f64)>,
}

/// CPU seconds (user + system) each process group has used so far: the
/// services by pid, the broker and PostgreSQL by name, this program.
pub fn cpu_seconds(producer: u32, consumer: u32) -> Vec<(String, f64)> {
    let of = cpu_seconds_of;
    vec![
        ("producer".to_owned(), of(&producer.to_string())),
        ("consumer".to_owned(), of(&consumer.to_string())),
        ("nisshi (broker)".to_owned(), cpu_seconds_by_name("nisshi")),
        ("postgres".to_owned(), cpu_seconds_by_name("postgres")),
        ("bench".to_owned(), of("self")),
    ]
}

/// CPU seconds (user + system) process `pid` has used so far: fields 14
/// and 15 of `/proc/<pid>/stat`, in clock ticks of 1/100 s (Linux's
/// USER_HZ). 0 when it is gone.
fn cpu_seconds_of(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

/// CPU seconds used so far by every process whose name starts with `name`.
fn cpu_seconds_by_name(name: &str) -> f64 {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|pid| pid.chars().all(|c| c.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim().starts_with(name))
        })
        .map(|pid| cpu_seconds_of(&pid))
        .sum()
}

/// The raw client limit.
#[derive(Debug, Clone, Serialize)]
pub struct RawFigures {
    /// Records per burst.
    pub records: usize,
    /// Bytes of value per record (headers come on top).
    pub value_bytes: usize,
    /// Records per second produced and acknowledged: the median of
    /// [`RAW_BURSTS`] bursts of `records`.
    pub produce_per_s: f64,
    /// Each burst's produce rate, in order.
    pub produce_bursts_per_s: Vec<f64>,
    /// Records per second consumed, all the bursts' records from the
    /// receipt of the first to that of the last (committing every 1000 and
    /// at the end). Not per burst: librdkafka fetches ahead, so after the
    /// first burst's worth the records come from its queue.
    pub consume_per_s: f64,
    /// Records per second through both at once: produced while the joined
    /// consumer reads them, from the first send to the last receive.
    pub concurrent_per_s: f64,
    /// Seconds from subscribing to the first record (the group join).
    pub join_seconds: f64,
    /// The broker's CPU milliseconds per record: (produce, consume, both
    /// at once).
    pub broker_cpu_ms_per_record: (f64, f64, f64),
    /// Produce-to-consume latency of single records sent at 20 per second
    /// to the joined consumer: the broker's own floor for end-to-end
    /// latency at the HTTP latency run's rate.
    pub latency: LatencySummary,
    /// The same at the outbox latency run's rate (`--rate`).
    pub latency_at_rate: LatencySummary,
}

/// The pipeline's throughput.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineFigures {
    /// Events appended.
    pub events: usize,
    /// Seconds from the first append to the last event applied.
    pub seconds: f64,
    /// Events per second, first append to last applied.
    pub per_s: f64,
    /// Events per second appended to the outbox (the source: one
    /// transaction per event, 8 connections), first append to last.
    pub appends_per_s: f64,
    /// `per_s` over the slower direction of the raw client limit.
    pub ratio_to_raw: f64,
}

/// The consumer alone draining a backlog.
#[derive(Debug, Clone, Serialize)]
pub struct DrainFigures {
    /// Events in the backlog.
    pub events: usize,
    /// Seconds from the group join to the first event applied.
    pub join_seconds: f64,
    /// Events per second applied, from the first applied to the last.
    pub per_s: f64,
    /// `per_s` over the raw client's consume rate.
    pub ratio_to_raw: f64,
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    /// Events per second offered.
    pub rate_per_s: f64,
    /// Events timed.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Events that never arrived within 30 s of the end.
    pub missing: usize,
}

/// One HTTP endpoint at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct HttpFigures {
    /// `POST /users` or `POST /auth/token`.
    pub endpoint: &'static str,
    /// Clients sending at once.
    pub concurrency: usize,
    /// Successful requests.
    pub requests: usize,
    /// Requests answered with anything but success.
    pub failures: usize,
    /// Successful requests per second.
    pub per_s: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// `per_s` over the argon2 floor (one hash per request).
    pub ratio_to_argon2: f64,
}

impl Figures {
    /// Empty figures for a run of `command`.
    pub fn new(command: &str) -> Self {
        Self {
            command: command.to_owned(),
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            raw: None,
            drain: None,
            pipeline: None,
            latency_outbox: None,
            latency_http: None,
            argon2_per_second: None,
            http: Vec::new(),
            peak_rss_kib: None,
            pipeline_cpu: None,
            http_cpu: None,
        }
    }

    /// The results as markdown tables.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "Run `{}` on {} cores, {}.\n\n| measure | figure |\n|---|---|\n",
            self.command, self.cores, self.started_at
        );
        if let Some(raw) = &self.raw {
            let (produce_cpu, consume_cpu, concurrent_cpu) = raw.broker_cpu_ms_per_record;
            let rates = |bursts: &[f64]| bursts.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
            out += &format!(
                "| raw rdkafka produce ({} bursts of {} records, {} B values, 7 headers, idempotent, acks=all) | median {:.0} records/s of {} (broker CPU {produce_cpu:.2} ms/record) |\n",
                raw.produce_bursts_per_s.len(),
                raw.records,
                raw.value_bytes,
                raw.produce_per_s,
                rates(&raw.produce_bursts_per_s)
            );
            out += &format!(
                "| raw rdkafka consume ({} records, group, manual commits; join took {:.1} s) | {:.0} records/s (broker CPU {consume_cpu:.2} ms/record) |\n",
                raw.records * raw.produce_bursts_per_s.len(),
                raw.join_seconds,
                raw.consume_per_s
            );
            out += &format!(
                "| raw rdkafka produce and consume at once, send of the first → receipt of the last | {:.0} records/s (broker CPU {concurrent_cpu:.2} ms/record) |\n",
                raw.concurrent_per_s
            );
            for l in [&raw.latency, &raw.latency_at_rate] {
                out += &format!(
                    "| raw rdkafka latency, send → receive, {:.0} records/s | p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms{} |\n",
                    l.rate_per_s,
                    l.p50_ms,
                    l.p95_ms,
                    l.p99_ms,
                    l.max_ms,
                    missing(l)
                );
            }
        }
        if let Some(drain) = &self.drain {
            out += &format!(
                "| drain: the consumer alone applying a backlog of {} `user.created.v1` records (group join took {:.1} s) | {:.0} events/s ({:.0} % of raw consume) |\n",
                drain.events,
                drain.join_seconds,
                drain.per_s,
                drain.ratio_to_raw * 100.0
            );
        }
        if let Some(pipeline) = &self.pipeline {
            out += &format!(
                "| pipeline: outbox → relay → Kafka → consumer → read model ({} events) | {:.0} events/s ({:.0} % of raw; appended at {:.0} events/s) |\n",
                pipeline.events,
                pipeline.per_s,
                pipeline.ratio_to_raw * 100.0,
                pipeline.appends_per_s
            );
        }
        for (name, latency) in [
            ("outbox commit → applied", &self.latency_outbox),
            ("HTTP 2xx → applied", &self.latency_http),
        ] {
            if let Some(l) = latency {
                out += &format!(
                    "| latency, {name}, {:.0} events/s, {} events | p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms{} |\n",
                    l.rate_per_s,
                    l.count,
                    l.p50_ms,
                    l.p95_ms,
                    l.p99_ms,
                    l.max_ms,
                    missing(l)
                );
            }
        }
        if let Some(floor) = self.argon2_per_second {
            out += &format!(
                "| argon2id floor (m=19 MiB, t=2, p=1) on {} cores | {floor:.1} hashes/s |\n",
                self.cores
            );
        }
        for http in &self.http {
            out += &format!(
                "| `{}` × {} | {:.1} req/s ({:.0} % of argon2), p50 {:.0} ms, p99 {:.0} ms{} |\n",
                http.endpoint,
                http.concurrency,
                http.per_s,
                http.ratio_to_argon2 * 100.0,
                http.p50_ms,
                http.p99_ms,
                if http.failures > 0 {
                    format!(", {} failed", http.failures)
                } else {
                    String::new()
                }
            );
        }
        for (name, cpu) in [("pipeline run", &self.pipeline_cpu), ("HTTP runs", &self.http_cpu)] {
            if let Some(cpu) = cpu {
                let parts: Vec<String> = cpu
                    .by_process
                    .iter()
                    .map(|(name, seconds)| format!("{name} {seconds:.1} s"))
                    .collect();
                out += &format!(
                    "| CPU during the {name} ({:.0} s × {} cores) | {} |\n",
                    cpu.wall_seconds,
                    self.cores,
                    parts.join(", ")
                );
            }
        }
        if let Some((producer, consumer)) = self.peak_rss_kib {
            out += &format!(
                "| peak resident memory | producer {:.0} MiB, consumer {:.0} MiB |\n",
                producer as f64 / 1024.0,
                consumer as f64 / 1024.0
            );
        }
        out
    }
}

/// Latencies of one run, with when each was sent (for plots).
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// Milliseconds per event that arrived.
    pub latencies_ms: Vec<f64>,
    /// Events sent.
    pub sent: usize,
    /// Seconds the sending lasted.
    pub seconds: f64,
}

impl Samples {
    /// Events per second sent.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.seconds.max(f64::EPSILON)
    }

    /// Percentiles at `rate` events per second.
    pub fn summary(&self, rate: f64) -> LatencySummary {
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        LatencySummary {
            rate_per_s: rate,
            count: sorted.len(),
            p50_ms: percentile(&sorted, 0.50),
            p95_ms: percentile(&sorted, 0.95),
            p99_ms: percentile(&sorted, 0.99),
            max_ms: sorted.last().copied().unwrap_or(f64::NAN),
            missing: self.sent - sorted.len(),
        }
    }
}

/// The `q` quantile of `sorted` (nearest rank).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A `user.created.v1` event for a new user, as the producer writes it.
fn user_created() -> UserEvent {
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
    /// The consumer's `kafka.partition_queue_capacity` (its default: 256).
    pub queue_capacity: Option<usize>,
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
/// headers, to a fresh 8-partition topic, then a group reading them back.
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
        .set("linger.ms", "5")
        .create()?;
    let broker_cpu = cpu_seconds_by_name("nisshi");
    let mut produce_bursts_per_s = Vec::new();
    for _ in 0..RAW_BURSTS {
        let started = Instant::now();
        let deliveries: Vec<_> = events
            .iter()
            .map(|envelope| producer.send(record_of(&topic, envelope), Timeout::Never))
            .collect();
        for delivery in futures::future::join_all(deliveries).await {
            delivery
                .map_err(|(error, _)| error)
                .context("a raw record was not delivered")?;
        }
        produce_bursts_per_s.push(records as f64 / started.elapsed().as_secs_f64());
    }
    let broker_cpu_produce = cpu_seconds_by_name("nisshi") - broker_cpu;

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
    let broker_cpu = cpu_seconds_by_name("nisshi");
    let subscribed = Instant::now();
    let mut first = None;
    let mut received = 0;
    while received < records * RAW_BURSTS {
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
    // `received - 1` gaps between the first receipt and the last.
    let consume_per_s = (received - 1) as f64 / first.expect("records arrived").elapsed().as_secs_f64();
    consumer.commit_consumer_state(CommitMode::Sync)?;
    let first = first.expect("records arrived");
    let broker_cpu_consume = cpu_seconds_by_name("nisshi") - broker_cpu;

    // Latency floor: single records at 20 per second (the HTTP latency
    // run's rate) and at `rate` (the outbox latency run's), 10 s each.
    let latency = raw_latency(&producer, &consumer, &topic, &events, 20)
        .await?
        .summary(20.0);
    let latency_at_rate = raw_latency(&producer, &consumer, &topic, &events, rate)
        .await?
        .summary(f64::from(rate));

    // Both at once: the records produced again while the joined consumer
    // reads them, as in the pipeline.
    let broker_cpu = cpu_seconds_by_name("nisshi");
    let started = Instant::now();
    let producing = async {
        let deliveries: Vec<_> = events
            .iter()
            .map(|envelope| producer.send(record_of(&topic, envelope), Timeout::Never))
            .collect();
        futures::future::join_all(deliveries).await
    };
    let consuming = async {
        let mut received = 0;
        while received < records {
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
    let concurrent_per_s = records as f64 / started.elapsed().as_secs_f64();
    let broker_cpu_concurrent = cpu_seconds_by_name("nisshi") - broker_cpu;
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

/// The release-built services, their databases and a service credential.
pub struct System {
    context: TestContext,
    producer: ServiceProcess,
    consumer: ServiceProcess,
    producer_pool: PgPool,
    consumer_pool: PgPool,
    token: SecretString,
    client: reqwest::Client,
}

impl System {
    /// Runs `work`, and returns its output with the CPU seconds each
    /// process used meanwhile (see [`cpu_seconds`]), most first.
    pub async fn profile<T>(&self, work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<(T, CpuProfile)> {
        let before = cpu_seconds(self.producer.pid(), self.consumer.pid());
        let started = Instant::now();
        let output = work.await?;
        let mut by_process: Vec<(String, f64)> = cpu_seconds(self.producer.pid(), self.consumer.pid())
            .into_iter()
            .zip(before)
            .map(|((name, after), (_, before))| (name, after - before))
            .collect();
        by_process.sort_by(|a, b| b.1.total_cmp(&a.1));
        let profile = CpuProfile {
            wall_seconds: started.elapsed().as_secs_f64(),
            by_process,
        };
        Ok((output, profile))
    }

    /// Starts both services (release binaries next to this one) with warn
    /// logging, login limits out of the way and `tuning`.
    pub async fn start(tuning: &Tuning) -> anyhow::Result<Self> {
        let context = TestContext::new();
        let capacity = tuning.queue_capacity.map(|n| n.to_string());
        let batch = tuning.outbox_batch.map(|n| n.to_string());
        let fetch_wait = tuning.fetch_wait_ms.to_string();
        let log_filter = std::env::var("BENCH_SERVICE_LOG").unwrap_or_else(|_| "warn".to_owned());
        let mut quiet = vec![
            ("RUST_LOG", log_filter.as_str()),
            ("APP_LOGIN_LIMIT__PER_ADDRESS_PER_MINUTE", "10000000"),
            ("APP_LOGIN_LIMIT__PER_USERNAME_PER_MINUTE", "10000000"),
            ("APP_KAFKA__FETCH_WAIT_MAX_MS", &fetch_wait),
        ];
        if let Some(capacity) = &capacity {
            quiet.push(("APP_KAFKA__PARTITION_QUEUE_CAPACITY", capacity));
        }
        if let Some(batch) = &batch {
            quiet.push(("APP_OUTBOX__BATCH_SIZE", batch));
        }
        let producer = context.start_producer_process_with(&quiet).await;
        let consumer = context.start_consumer_process(&producer.url(), &quiet).await;
        let producer_pool = context.producer_pool().await;
        let consumer_pool = context.consumer_pool().await;
        let keys = service_common::auth::TokenKeys::new(&SecretString::from(e2e::JWT_SECRET.to_owned()))?;
        Ok(Self {
            token: keys.service_token("bench"),
            context,
            producer,
            consumer,
            producer_pool,
            consumer_pool,
            client: reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?,
        })
    }

    /// Samples both services' resident memory every 200 ms until stopped.
    pub fn watch_memory(&self) -> MemoryWatch {
        let pids = (self.producer.pid(), self.consumer.pid());
        let stop = Arc::new(AtomicBool::new(false));
        let peaks = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let task = tokio::spawn({
            let (stop, peaks) = (Arc::clone(&stop), Arc::clone(&peaks));
            async move {
                while !stop.load(Ordering::Relaxed) {
                    peaks.0.fetch_max(rss_kib(pids.0), Ordering::Relaxed);
                    peaks.1.fetch_max(rss_kib(pids.1), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        MemoryWatch { stop, peaks, task }
    }

    /// Stops both services and drops their databases.
    pub async fn stop(self) {
        self.consumer.kill().await;
        self.producer.kill().await;
        self.producer_pool.close().await;
        self.consumer_pool.close().await;
        self.context.drop_databases().await;
    }

    async fn applied(&self) -> i64 {
        e2e::load::processed_count(&self.consumer_pool).await
    }

    /// Outbox rows so far: (appended, published by the relay).
    async fn outbox(&self) -> (i64, i64) {
        sqlx::query_as("SELECT count(*), count(published_at) FROM outbox")
            .fetch_one(&self.producer_pool)
            .await
            .unwrap_or((0, 0))
    }

    /// The consumer's live feed: arrival time of each applied event, by
    /// (user id, event type).
    async fn feed(&self) -> anyhow::Result<Arrivals> {
        let response = self
            .client
            .get(format!("{}/events/stream", self.consumer.url()))
            .bearer_auth(self.token.expose_secret())
            .timeout(Duration::from_secs(24 * 3600))
            .send()
            .await?;
        anyhow::ensure!(response.status().is_success(), "feed: {}", response.status());
        let arrivals: Arrivals = Arc::default();
        let seen = Arc::clone(&arrivals);
        tokio::spawn(async move {
            let mut events = e2e::sse::EventStream::new(response);
            while let Some((_, event)) = events.next_event().await {
                let key = (
                    event["user_id"].as_str().unwrap_or_default().to_owned(),
                    event["event_type"].as_str().unwrap_or_default().to_owned(),
                );
                seen.lock().unwrap().insert(key, Instant::now());
            }
        });
        Ok(arrivals)
    }
}

type Arrivals = Arc<Mutex<HashMap<(String, String), Instant>>>;

/// A running memory sampler.
pub struct MemoryWatch {
    stop: Arc<AtomicBool>,
    peaks: Arc<(AtomicU64, AtomicU64)>,
    task: tokio::task::JoinHandle<()>,
}

impl MemoryWatch {
    /// Stops sampling; the peaks in KiB, (producer, consumer).
    pub async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (
            self.peaks.0.load(Ordering::Relaxed),
            self.peaks.1.load(Ordering::Relaxed),
        )
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Appends `event` to the producer's outbox in its own transaction, as a
/// request would.
async fn append(pool: &PgPool, event: &UserEvent) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    producer::outbox::append(&mut tx, event).await?;
    tx.commit().await?;
    producer::outbox::notify(pool).await;
    Ok(())
}

/// Every 100 ms: seconds since the start, and so far: events appended to
/// the outbox, outbox rows published to Kafka, events applied.
pub type Progress = Vec<(f64, i64, i64, i64)>;

/// Step 2: `events` appended at once (8 connections, one transaction each, as
/// concurrent requests would), then waited for until all are applied.
pub async fn pipeline(system: &System, events: usize) -> anyhow::Result<(PipelineFigures, Progress)> {
    let before = system.applied().await;
    let (appended_before, published_before) = system.outbox().await;
    let batch: Vec<UserEvent> = (0..events).map(|_| user_created()).collect();
    let started = Instant::now();
    let mut progress = Vec::new();
    let appending = async {
        let results = futures::stream::iter(batch.iter().map(|event| append(&system.producer_pool, event)))
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await;
        (results, started.elapsed().as_secs_f64())
    };
    let watching = async {
        loop {
            let applied = system.applied().await - before;
            let (appended, published) = system.outbox().await;
            progress.push((
                started.elapsed().as_secs_f64(),
                appended - appended_before,
                published - published_before,
                applied,
            ));
            if applied >= events as i64 || started.elapsed() > Duration::from_secs(600) {
                return applied;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let ((appended, append_seconds), applied) = tokio::join!(appending, watching);
    for result in appended {
        result?;
    }
    anyhow::ensure!(
        applied >= events as i64,
        "only {applied} of {events} applied in 10 minutes"
    );
    let seconds = progress.last().map_or(0.0, |(t, _, _, _)| *t);
    Ok((
        PipelineFigures {
            events,
            seconds,
            per_s: events as f64 / seconds,
            appends_per_s: events as f64 / append_seconds,
            ratio_to_raw: 0.0,
        },
        progress,
    ))
}

/// Step 2: the consumer service alone (release build, `tuning`) applying a
/// backlog of `events` `user.created.v1` records that the contract's own
/// producer (`e2e::load::publish`, what the relay would publish) wrote to
/// its topic before it started; timed from the first event applied to the
/// last, as the raw consume rate is.
pub async fn drain(events: usize, tuning: &Tuning) -> anyhow::Result<DrainFigures> {
    let context = TestContext::new();
    let (_, created) = e2e::load::new_users(events);
    e2e::load::publish(&context, &created).await;
    let fetch_wait = tuning.fetch_wait_ms.to_string();
    let log_filter = std::env::var("BENCH_SERVICE_LOG").unwrap_or_else(|_| "warn".to_owned());
    let mut env = vec![
        ("RUST_LOG", log_filter.as_str()),
        ("APP_KAFKA__FETCH_WAIT_MAX_MS", fetch_wait.as_str()),
    ];
    let capacity = tuning.queue_capacity.map(|n| n.to_string());
    if let Some(capacity) = &capacity {
        env.push(("APP_KAFKA__PARTITION_QUEUE_CAPACITY", capacity));
    }
    let started = Instant::now();
    let consumer = context.start_consumer_process(e2e::process::NO_PRODUCER, &env).await;
    let pool = context.consumer_pool().await;
    let total = i64::try_from(events)?;
    let mut first = None;
    let last = loop {
        let applied = e2e::load::processed_count(&pool).await;
        let now = Instant::now();
        if applied > 0 {
            first.get_or_insert((now, applied));
        }
        if applied >= total {
            break now;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "drain: {applied} of {events} applied in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (first, applied_at_first) = first.expect("events applied");
    consumer.kill().await;
    pool.close().await;
    context.drop_databases().await;
    Ok(DrainFigures {
        events,
        join_seconds: (first - started).as_secs_f64(),
        per_s: (total - applied_at_first) as f64 / (last - first).as_secs_f64(),
        ratio_to_raw: 0.0,
    })
}

/// Step 3: One event appended every `1/rate` s for `duration`, each timed from
/// its commit to its arrival on the live feed.
pub async fn outbox_latency(system: &System, rate: u32, duration: Duration) -> anyhow::Result<Samples> {
    let arrivals = system.feed().await?;
    let mut sent: Vec<(String, Instant)> = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    while started.elapsed() < duration {
        ticks.tick().await;
        let event = user_created();
        append(&system.producer_pool, &event).await?;
        sent.push((event.user_id().to_string(), Instant::now()));
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(collect(&arrivals, sent, UserEvent::CREATED_V1, seconds).await)
}

/// Step 3: A user created and a token issued over HTTP every 100 ms (20 events
/// per second: below what password hashing allows), each timed from its
/// 2xx to its arrival on the live feed.
pub async fn http_latency(system: &System, duration: Duration) -> anyhow::Result<Samples> {
    let arrivals = system.feed().await?;
    let producer = system.producer.url();
    let mut created = Vec::new();
    let mut issued = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    let started = Instant::now();
    while started.elapsed() < duration {
        ticks.tick().await;
        let user = e2e::create_user(&system.client, &producer, "latency").await;
        created.push((user.id.to_string(), Instant::now()));
        e2e::issue_token(&system.client, &producer, &user.username).await;
        issued.push((user.id.to_string(), Instant::now()));
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut samples = collect(&arrivals, created, UserEvent::CREATED_V1, seconds).await;
    let tokens = collect(&arrivals, issued, UserEvent::TOKEN_ISSUED_V1, seconds).await;
    samples.latencies_ms.extend(tokens.latencies_ms);
    samples.sent += tokens.sent;
    Ok(samples)
}

/// Waits up to 30 s for every sent event, then the latencies of those that
/// arrived.
async fn collect(arrivals: &Arrivals, sent: Vec<(String, Instant)>, event_type: &str, seconds: f64) -> Samples {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = {
            let arrived = arrivals.lock().unwrap();
            sent.iter()
                .all(|(user, _)| arrived.contains_key(&(user.clone(), event_type.to_owned())))
        };
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let arrived = arrivals.lock().unwrap();
    let latencies_ms = sent
        .iter()
        .filter_map(|(user, at)| {
            arrived
                .get(&(user.clone(), event_type.to_owned()))
                .map(|arrival| arrival.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    Samples {
        latencies_ms,
        sent: sent.len(),
        seconds,
    }
}

/// Step 4: argon2id hashes per second with the producer's parameters, one
/// thread per core, for `duration`.
pub fn argon2_floor(duration: Duration) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let started = Instant::now();
    let hashes: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..cores)
            .map(|_| {
                scope.spawn(|| {
                    let mut count = 0;
                    while started.elapsed() < duration {
                        let salt = SaltString::generate(&mut OsRng);
                        Argon2::default()
                            .hash_password(b"correct horse battery", &salt)
                            .expect("argon2 hashes");
                        count += 1;
                    }
                    count
                })
            })
            .collect();
        workers.into_iter().map(|worker| worker.join().unwrap()).sum()
    });
    hashes as f64 / started.elapsed().as_secs_f64()
}

/// Step 4: `POST /users` and `POST /auth/token` at 1, 2, 4 and 8 concurrent
/// clients, `duration` each, beside `floor` argon2 hashes per second.
pub async fn http_api(system: &System, duration: Duration, floor: f64) -> anyhow::Result<Vec<HttpFigures>> {
    let producer = system.producer.url();
    let mut users = Vec::new();
    for _ in 0..8 {
        users.push(e2e::create_user(&system.client, &producer, "http").await.username);
    }
    let mut figures = Vec::new();
    for endpoint in ["POST /users", "POST /auth/token"] {
        for concurrency in [1, 2, 4, 8] {
            let started = Instant::now();
            let clients = (0..concurrency).map(|worker| {
                let client = system.client.clone();
                let producer = producer.clone();
                let username = users[worker].clone();
                async move {
                    let mut latencies = Vec::new();
                    let mut failures = 0;
                    while started.elapsed() < duration {
                        let request = if endpoint == "POST /users" {
                            let name = format!("h{}", &Uuid::new_v4().simple().to_string()[..20]);
                            client.post(format!("{producer}/users")).json(&json!({
                                "username": name, "email": format!("{name}@example.com"), "password": e2e::PASSWORD
                            }))
                        } else {
                            client
                                .post(format!("{producer}/auth/token"))
                                .json(&json!({ "username": username, "password": e2e::PASSWORD }))
                        };
                        let sent = Instant::now();
                        match request.send().await {
                            Ok(response) if response.status().is_success() => {
                                latencies.push(sent.elapsed().as_secs_f64() * 1000.0)
                            }
                            _ => failures += 1,
                        }
                    }
                    (latencies, failures)
                }
            });
            let results = futures::future::join_all(clients).await;
            let seconds = started.elapsed().as_secs_f64();
            let failures = results.iter().map(|(_, f)| f).sum();
            let mut latencies: Vec<f64> = results.into_iter().flat_map(|(l, _)| l).collect();
            latencies.sort_by(f64::total_cmp);
            let per_s = latencies.len() as f64 / seconds;
            figures.push(HttpFigures {
                endpoint,
                concurrency,
                requests: latencies.len(),
                failures,
                per_s,
                p50_ms: percentile(&latencies, 0.5),
                p99_ms: percentile(&latencies, 0.99),
                ratio_to_argon2: per_s / floor,
            });
        }
    }
    Ok(figures)
}
