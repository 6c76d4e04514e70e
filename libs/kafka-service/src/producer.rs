//! An idempotent producer whose `send` resolves on the delivery report.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::context::KafkaContext;
use crate::envelope::Envelope;
use crate::error::ProduceError;
use crate::monitor::{seconds_histogram, TopicLabels};
use crate::settings::KafkaSettings;

/// Where the broker stored a record: its delivery report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The partition the record was written to.
    pub partition: i32,
    /// The record's offset in that partition.
    pub offset: i64,
}

/// A record to publish: key, value and headers, in record order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRecord {
    /// The record key; records with the same key go to the same partition.
    pub key: Option<Vec<u8>>,
    /// The record value.
    pub value: Option<Vec<u8>>,
    /// Headers in record order; a header may repeat or have no value.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// librdkafka's partitioner that puts a keyed record where Java clients put
/// it: the murmur2 hash of the key, made positive, modulo the partition
/// count (Kafka's `BuiltInPartitioner.partitionForKey`); a record without
/// a key goes to a random partition. librdkafka's default,
/// `consistent_random`, hashes with CRC-32 instead, so a user's events
/// from a Java producer and from this one would land on different
/// partitions and lose their order. Every producer of the event topics
/// sets it, tests and benchmarks included.
pub const PARTITIONER: &str = "murmur2_random";

/// A producer with `enable.idempotence=true` and `acks=all`: librdkafka
/// retries without duplicating or reordering records within a partition,
/// and a record counts as delivered only once every in-sync replica has it.
///
/// # Requests in flight
///
/// One request at a time per broker connection
/// (`max.in.flight.requests.per.connection=1`; idempotence allows up to
/// 5), because more loses records. With two requests to a partition in
/// flight, the first can fail with a retriable error (`NOT_ENOUGH_REPLICAS`
/// while the partition is under `min.insync.replicas`) and the second,
/// sent a moment later, succeed once the partition takes writes again: a
/// broker that has no state yet for this producer on that partition takes
/// any first sequence number. librdkafka then takes the first request's
/// records for written (`rd_kafka_handle_idempotent_Produce_success`
/// acknowledges every record before the successful batch, on the
/// assumption that an earlier failure was only a lost response) and
/// reports them delivered, though no replica has them. The cluster fault
/// test `the_relay_keeps_publishing_…` lost two records this way. With one
/// request in flight the second is not sent before the first succeeds.
/// The cost is throughput: see `docs/benchmarks.md`.
///
/// # Partitioner
///
/// A record goes to partition `(murmur2(key) & 0x7fffffff) % partitions`,
/// where Java clients put it ([`PARTITIONER`]), so that a JVM service
/// producing to the same topics keeps a user's events on one partition.
///
/// It recovers from a fatal error. librdkafka raises one when it can no
/// longer vouch for the idempotent producer's state (a head-of-line
/// `OUT_OF_ORDER_SEQUENCE_NUMBER`, for example; its `INTRODUCTION.md`,
/// "Fatal errors"), and from then on the client fails every record. The
/// first failure seen after it replaces the client with a new one (a new
/// producer id): the records the old client had not delivered fail, and are
/// the caller's to send again (consumers deduplicate by `ce_id`), in order.
/// [`fatal_error`](Self::fatal_error) says so until the new client delivers
/// a record (a late delivery on the old one does not count). A caller that
/// keeps many records in flight and must not let a key's record on the new
/// client overtake its earlier ones on the old client enqueues with
/// [`enqueue_on`](Self::enqueue_on), which refuses once the client it
/// names was replaced.
///
/// Every record it sends is counted, whoever sends it (the relay, the
/// consumer's retry and dead-letter copies, a redrive), once
/// [`register_metrics`](Self::register_metrics) registered the counts:
///
/// - `kafka_records_published_total{topic,result}`: `delivered`, or
///   `failed` when the client refused the record or its delivery report is
///   an error;
/// - `kafka_delivery_duration_seconds{topic}`: from handing a record to the
///   client to its delivery report, either way.
///
/// Cheap to clone: clones share one client and its counts.
#[derive(Clone)]
pub struct EventProducer {
    /// What the clones share.
    shared: Arc<Shared>,
    /// How long [`ping`](Self::ping)'s metadata request may take
    /// (`kafka.request_timeout_ms`).
    request_timeout: Duration,
}

/// The published-records counts, by topic.
#[derive(Clone)]
struct ProducerMetrics {
    published: Family<PublishLabels, Counter>,
    delivery: Family<TopicLabels, Histogram, fn() -> Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublishLabels {
    topic: String,
    result: &'static str,
}

impl ProducerMetrics {
    fn new() -> Self {
        Self {
            published: Family::default(),
            delivery: Family::new_with_constructor(seconds_histogram),
        }
    }

    /// Counts one record's end: `delivered` or `failed`, `started` being
    /// when it was handed to the client.
    fn count(&self, topic: &str, delivered: bool, started: Instant) {
        let result = if delivered { "delivered" } else { "failed" };
        self.published
            .get_or_create(&PublishLabels {
                topic: topic.to_owned(),
                result,
            })
            .inc();
        self.delivery
            .get_or_create(&TopicLabels {
                topic: topic.to_owned(),
            })
            .observe(started.elapsed().as_secs_f64());
    }
}

struct Shared {
    /// The client, replaced after a fatal error.
    client: RwLock<Current>,
    /// What builds a client: the settings' configuration and context.
    config: rdkafka::ClientConfig,
    context: KafkaContext,
    /// The fatal error the client was last replaced for, until the new
    /// client delivers a record.
    fatal: Mutex<Option<String>>,
    /// Whether `fatal` is set, so that a delivery, the common case, need
    /// not take its lock.
    recovering: AtomicBool,
    /// Every record's end, by topic.
    metrics: ProducerMetrics,
}

/// The client records go out on, and its generation.
struct Current {
    client: FutureProducer<KafkaContext>,
    /// 0 for the first client, one more at each replacement.
    generation: u64,
}

impl EventProducer {
    /// Creates the producer. It connects lazily, so this succeeds while the
    /// broker is down.
    ///
    /// # Errors
    ///
    /// [`ProduceError::Config`] when librdkafka rejects the settings (an
    /// unknown property in `kafka.librdkafka`, for example).
    pub fn new(settings: &KafkaSettings, client_id: &str) -> Result<Self, ProduceError> {
        let config = settings.client_config(
            client_id,
            &[
                ("enable.idempotence", "true".to_owned()),
                ("acks", "all".to_owned()),
                ("partitioner", PARTITIONER.to_owned()),
                // One request in flight per broker connection, not 5: see
                // the type's documentation, "Requests in flight".
                ("max.in.flight.requests.per.connection", "1".to_owned()),
                ("message.timeout.ms", settings.message_timeout_ms.to_string()),
                // Records produced in a burst (the relay sends a batch of
                // outbox rows at once) share one request per partition.
                ("linger.ms", "5".to_owned()),
            ],
        );
        let context = KafkaContext::new(settings);
        let client = config
            .create_with_context(context.clone())
            .map_err(ProduceError::Config)?;
        Ok(Self {
            shared: Arc::new(Shared {
                client: RwLock::new(Current { client, generation: 0 }),
                config,
                context,
                fatal: Mutex::new(None),
                recovering: AtomicBool::new(false),
                metrics: ProducerMetrics::new(),
            }),
            request_timeout: settings.request_timeout(),
        })
    }

    /// Registers the published-records counts in `registry` (see the type's
    /// documentation). Register one producer per registry: the names are
    /// the same for every producer.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let metrics = &self.shared.metrics;
        registry.register(
            "kafka_records_published",
            "Records handed to Kafka, by topic and delivery result",
            metrics.published.clone(),
        );
        registry.register(
            "kafka_delivery_duration_seconds",
            "Time from producing a record to its delivery report",
            metrics.delivery.clone(),
        );
    }

    /// The fatal error the client was replaced for, from the first failure
    /// after it until the new client delivers a record: while it lasts,
    /// records fail and must be sent again.
    pub fn fatal_error(&self) -> Option<String> {
        self.shared.fatal.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Which client records go out on now: 0 for the first, one more each
    /// time a fatal error replaced it. See [`enqueue_on`](Self::enqueue_on).
    pub fn generation(&self) -> u64 {
        self.shared
            .client
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .generation
    }

    fn client(&self) -> FutureProducer<KafkaContext> {
        self.current().0
    }

    /// The current client and its generation, read together.
    fn current(&self) -> (FutureProducer<KafkaContext>, u64) {
        let current = self.shared.client.read().unwrap_or_else(PoisonError::into_inner);
        (current.client.clone(), current.generation)
    }

    /// Whether `used` is the current client.
    fn is_current(&self, used: &FutureProducer<KafkaContext>) -> bool {
        let current = self.shared.client.read().unwrap_or_else(PoisonError::into_inner);
        current.client.client().native_ptr() == used.client().native_ptr()
    }

    /// After a record failed on `used`: when `used` is in a fatal state and
    /// still the current client, replaces it. The old client is dropped on
    /// a blocking thread (dropping one waits for its threads).
    fn recover(&self, used: FutureProducer<KafkaContext>) {
        let Some((code, reason)) = used.client().fatal_error() else {
            return;
        };
        let mut current = self.shared.client.write().unwrap_or_else(PoisonError::into_inner);
        if current.client.client().native_ptr() != used.client().native_ptr() {
            // Replaced already; this may be the old client's last handle.
            tokio::task::spawn_blocking(move || drop(used));
            return;
        }
        match self.shared.config.create_with_context(self.shared.context.clone()) {
            Ok(fresh) => {
                let old = std::mem::replace(&mut current.client, fresh);
                current.generation += 1;
                drop(current);
                tracing::error!(
                    ?code,
                    reason,
                    "fatal producer error; replaced the client (the records it had not delivered fail and are sent again)"
                );
                let mut fatal = self.shared.fatal.lock().unwrap_or_else(PoisonError::into_inner);
                *fatal = Some(format!("{code:?}: {reason}"));
                self.shared.recovering.store(true, Ordering::Release);
                drop(fatal);
                tokio::task::spawn_blocking(move || drop((old, used)));
            }
            Err(error) => tracing::error!(%error, reason, "fatal producer error, and no new client could be made"),
        }
    }

    /// Records a delivery on `used`: when it is the current client, that
    /// client works, whatever came before. A late delivery on a replaced
    /// client says nothing of the records it failed, which are still to be
    /// sent again.
    fn delivered(&self, used: &FutureProducer<KafkaContext>) {
        if !self.shared.recovering.load(Ordering::Acquire) || !self.is_current(used) {
            return;
        }
        let mut fatal = self.shared.fatal.lock().unwrap_or_else(PoisonError::into_inner);
        self.shared.recovering.store(false, Ordering::Release);
        if fatal.take().is_some() {
            tracing::info!("producer delivering again after a fatal error");
        }
    }

    /// Publishes `envelope` to `topic`, keyed by its subject, and waits for
    /// the delivery report.
    ///
    /// # Errors
    ///
    /// [`ProduceError::Delivery`] when the broker rejected the record, or did
    /// not acknowledge it within `message_timeout_ms` (librdkafka retries
    /// until then; by default forever, so while the broker is down this
    /// waits).
    pub async fn send(&self, topic: &str, envelope: &Envelope) -> Result<Delivery, ProduceError> {
        self.deliver(topic, envelope_record(topic, envelope, &[])).await
    }

    /// Hands `envelope`, with `extra` headers after its own (a
    /// `traceparent`, say), to client `generation`'s queue
    /// and returns a future of its delivery report that need not be polled
    /// for the record to go out. Records enqueued one after another keep
    /// that order within their partition, so a caller can keep many records
    /// in flight without giving up per-key order.
    ///
    /// That order holds on one client only. When a fatal error replaces the
    /// client, the records the old one had not delivered fail, while records
    /// enqueued on the new one may already be delivered: a key's later
    /// record would overtake its earlier one, sent again. So a caller takes
    /// [`generation`](Self::generation) before its first record, enqueues
    /// on it, and once refused with [`ProduceError::Replaced`] waits for
    /// every report of the old client before it starts over on the new
    /// generation.
    ///
    /// # Errors
    ///
    /// At once, the record not enqueued (so a caller can hold back what
    /// must not overtake it):
    /// - [`ProduceError::Replaced`] when client `generation` was replaced;
    /// - [`ProduceError::Delivery`] when the client refuses the record (its
    ///   queue is full, `queue.buffering.max.messages`, 100 000 records by
    ///   default; the record is larger than `message.max.bytes`; the topic
    ///   is unknown to the client).
    ///
    /// The future resolves to [`ProduceError::Delivery`] as `send`'s does.
    pub fn enqueue_on(
        &self,
        generation: u64,
        topic: &str,
        envelope: &Envelope,
        extra: &[(&str, String)],
    ) -> Result<impl Future<Output = Result<Delivery, ProduceError>> + Send + 'static, ProduceError> {
        let (client, current) = self.current();
        if current != generation {
            return Err(ProduceError::Replaced { generation });
        }
        let started = Instant::now();
        let delivery = match client.send_result(envelope_record(topic, envelope, extra)) {
            Ok(delivery) => delivery,
            Err((source, _)) => {
                self.shared.metrics.count(topic, false, started);
                self.recover(client);
                return Err(ProduceError::Delivery {
                    topic: topic.to_owned(),
                    source,
                });
            }
        };
        let topic = topic.to_owned();
        let producer = self.clone();
        Ok(async move {
            let report = match delivery.await {
                Ok(Ok(delivery)) => Ok(Delivery {
                    partition: delivery.partition,
                    offset: delivery.offset,
                }),
                Ok(Err((source, _))) => Err(source),
                // The client was destroyed before it reported.
                Err(_canceled) => Err(KafkaError::Canceled),
            };
            producer.reported(client, topic, started, report)
        })
    }

    /// `report`, for a record handed to `used` at `started`: counts it, and
    /// notes a delivery or looks for a fatal error after a failure.
    fn reported(
        &self,
        used: FutureProducer<KafkaContext>,
        topic: String,
        started: Instant,
        report: Result<Delivery, KafkaError>,
    ) -> Result<Delivery, ProduceError> {
        self.shared.metrics.count(&topic, report.is_ok(), started);
        match report {
            Ok(delivery) => {
                self.delivered(&used);
                Ok(delivery)
            }
            Err(source) => {
                self.recover(used);
                Err(ProduceError::Delivery { topic, source })
            }
        }
    }

    /// Publishes `record` to `topic` as it is (the key picks the partition)
    /// and waits for the delivery report. Used to move a consumed record to
    /// the retry or dead-letter topic, or back to its origin.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub async fn send_record(&self, topic: &str, record: &OutgoingRecord) -> Result<Delivery, ProduceError> {
        let headers = record.headers.iter().fold(
            OwnedHeaders::new_with_capacity(record.headers.len()),
            |acc, (key, value)| {
                acc.insert(Header {
                    key,
                    value: value.as_deref(),
                })
            },
        );
        let mut future_record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers);
        if let Some(key) = &record.key {
            future_record = future_record.key(key.as_slice());
        }
        if let Some(value) = &record.value {
            future_record = future_record.payload(value.as_slice());
        }
        self.deliver(topic, future_record).await
    }

    async fn deliver<K, V>(&self, topic: &str, record: FutureRecord<'_, K, V>) -> Result<Delivery, ProduceError>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        V: rdkafka::message::ToBytes + ?Sized,
    {
        let client = self.client();
        let started = Instant::now();
        let report = client
            .send(record, Timeout::After(QUEUE_FULL_WAIT))
            .await
            .map(|delivery| Delivery {
                partition: delivery.partition,
                offset: delivery.offset,
            })
            .map_err(|(source, _)| source);
        self.reported(client, topic.to_owned(), started, report)
    }

    /// Checks that a broker answers a metadata request within the request
    /// timeout (readiness).
    ///
    /// # Errors
    ///
    /// [`ProduceError::Unreachable`] when none does.
    pub async fn ping(&self) -> Result<(), ProduceError> {
        let producer = self.client();
        let timeout = self.request_timeout;
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout).map(drop))
            .await
            .expect("metadata request panicked")
            .map_err(ProduceError::Unreachable)
    }

    /// Waits up to `timeout` for every queued record's delivery report
    /// (before shutdown).
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.client();
        let result = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        if let Ok(Err(error)) = result {
            tracing::warn!(%error, "producer flush did not complete");
        }
    }
}

/// `envelope` as a record for `topic`: keyed by its subject, its headers
/// followed by `extra`.
fn envelope_record<'a>(
    topic: &'a str,
    envelope: &'a Envelope,
    extra: &[(&str, String)],
) -> FutureRecord<'a, [u8], [u8]> {
    let headers = envelope.headers();
    let headers = headers
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .chain(extra.iter().map(|(key, value)| (*key, value.as_str())))
        .fold(
            OwnedHeaders::new_with_capacity(headers.len() + extra.len()),
            |acc, (key, value)| {
                acc.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                })
            },
        );
    FutureRecord::to(topic)
        .key(envelope.key())
        .payload(envelope.data.as_slice())
        .headers(headers)
}

/// How long `send` waits for room in librdkafka's local queue when it is
/// full before it fails.
const QUEUE_FULL_WAIT: Duration = Duration::from_secs(5);
