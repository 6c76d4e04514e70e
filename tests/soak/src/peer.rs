//! Records from a hostile peer, written straight to the topics the
//! consumers read, keyed by a user the traffic just created so that each
//! lands on a busy partition. What the consumers must do with each is in
//! [`PeerRecord::expected`]; the history checker holds them to it.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use e2e::load::{envelope_of, outgoing, owned_headers, token_issued};
use kafka_service::failure::header;
use kafka_service::{OutgoingRecord, Topic};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::deployment::Deployment;

/// A value this many bytes long, with its headers, fits the topic (the
/// broker's `message.max.bytes`, 1 MiB + 12) but not with the failure
/// headers a retry or dead-letter copy adds to it (the services' producer
/// allows librdkafka's default, 1 000 000 bytes).
const NEAR_LIMIT_BYTES: usize = 1_010_000;

/// A hostile peer's fault: one record, or (forged copies) three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// A valid token event with one more header whose name is not UTF-8
    /// (N1).
    UnreadableHeaderName,
    /// A value of garbage within a few hundred bytes of the size limit
    /// (N6).
    NearSizeLimit,
    /// A valid envelope with an event type nobody knows.
    UnknownType,
    /// With both producers paused, a token for a user nobody knows, which
    /// the consumers park (their look-ups time out); then two retry copies
    /// naming it, due now: one with its key and other content, one with
    /// another key (N7). Both producers resume 3 s later, and the parked
    /// token is dead-lettered once the producer says it does not know the
    /// user.
    ForgedCopies,
}

impl Hostile {
    /// Every kind.
    pub const ALL: [Self; 4] = [
        Self::UnreadableHeaderName,
        Self::NearSizeLimit,
        Self::UnknownType,
        Self::ForgedCopies,
    ];
}

impl fmt::Display for Hostile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnreadableHeaderName => "header name not UTF-8",
            Self::NearSizeLimit => "garbage near the size limit",
            Self::UnknownType => "unknown event type",
            Self::ForgedCopies => "forged retry copies of a parked token, right key and wrong key",
        })
    }
}

/// A kind of hostile record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRecord {
    /// See [`Hostile::UnreadableHeaderName`].
    UnreadableHeaderName,
    /// See [`Hostile::NearSizeLimit`].
    NearSizeLimit,
    /// See [`Hostile::UnknownType`].
    UnknownType,
    /// The parked token of [`Hostile::ForgedCopies`].
    UnknownUser,
    /// A retry copy naming a parked record with its key and other content.
    ForgedCopyRightKey,
    /// A retry copy naming a parked record, with another key.
    ForgedCopyWrongKey,
}

impl PeerRecord {
    /// What the dead letter's `error-message` must say.
    pub fn expected(self) -> &'static str {
        match self {
            Self::UnreadableHeaderName => "header name(s) not UTF-8",
            Self::NearSizeLimit => "invalid data",
            Self::UnknownType => "unknown event type",
            Self::UnknownUser => "the producer does not know user",
            Self::ForgedCopyRightKey | Self::ForgedCopyWrongKey => "forged retry copy",
        }
    }
}

impl fmt::Display for PeerRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnreadableHeaderName => "header name not UTF-8",
            Self::NearSizeLimit => "garbage near the size limit",
            Self::UnknownType => "unknown event type",
            Self::UnknownUser => "token of an unknown user (parked)",
            Self::ForgedCopyRightKey => "forged retry copy, right key",
            Self::ForgedCopyWrongKey => "forged retry copy, wrong key",
        })
    }
}

/// A hostile record as written.
#[derive(Debug, Clone)]
pub struct Injection {
    /// Its kind.
    pub kind: PeerRecord,
    /// Where it was written.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its `ce_id`, which must never be applied.
    pub event_id: Uuid,
    /// For a forged copy: the origin it names, and whether a record was
    /// parked there when it was written. A copy naming a record that is not
    /// parked is skipped (with a log line naming it) rather than
    /// dead-lettered.
    pub names: Option<(String, bool)>,
}

impl fmt::Display for Injection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]@{}", self.topic, self.partition, self.offset)?;
        if let Some((origin, parked)) = &self.names {
            write!(
                f,
                ", naming {origin} ({})",
                if *parked { "parked" } else { "not parked" }
            )?;
        }
        Ok(())
    }
}

/// Injects `hostile`, and returns the records written.
///
/// # Panics
///
/// When the cluster does not take a record within 30 s.
pub async fn send(world: &Deployment, hostile: Hostile) -> Vec<Injection> {
    let kafka = world.context.kafka();
    let tokens = kafka.topics.name(Topic::IssuedToken).to_owned();
    let writer = Writer::new(&kafka.bootstrap_servers);
    if hostile == Hostile::ForgedCopies {
        return forged_copies(world, &writer, &tokens, kafka.topics.name(Topic::Retry)).await;
    }
    let envelope = envelope_of(&token_issued(latest_user(world).await));
    let mut record = outgoing(&envelope);
    let mut headers = owned_headers(&record);
    let kind = match hostile {
        Hostile::UnreadableHeaderName => {
            headers = hostile::with_raw_header(headers, b"\xff\xfe", Some(b"x"));
            PeerRecord::UnreadableHeaderName
        }
        Hostile::NearSizeLimit => {
            record.value = Some(vec![b'A'; NEAR_LIMIT_BYTES]);
            PeerRecord::NearSizeLimit
        }
        Hostile::UnknownType => {
            for (name, value) in &mut record.headers {
                if name == "ce_type" {
                    *value = Some(b"user.deleted.v9".to_vec());
                }
            }
            headers = owned_headers(&record);
            PeerRecord::UnknownType
        }
        Hostile::ForgedCopies => unreachable!("handled above"),
    };
    vec![writer.send(kind, &tokens, &record, headers, envelope.id, None).await]
}

/// [`Hostile::ForgedCopies`].
async fn forged_copies(world: &Deployment, writer: &Writer, tokens: &str, retry: &str) -> Vec<Injection> {
    for producer in &world.producers {
        producer.process().pause();
    }
    let stranger = Uuid::new_v4();
    let envelope = envelope_of(&token_issued(stranger));
    let record = outgoing(&envelope);
    let parked = writer
        .send(
            PeerRecord::UnknownUser,
            tokens,
            &record,
            owned_headers(&record),
            envelope.id,
            None,
        )
        .await;
    let was_parked = is_parked(world, &parked).await;
    let origin = (parked.topic.clone(), parked.partition, parked.offset);
    let mut written = vec![parked];
    for kind in [PeerRecord::ForgedCopyRightKey, PeerRecord::ForgedCopyWrongKey] {
        let envelope = envelope_of(&token_issued(stranger));
        let mut copy = retry_copy(&envelope, &origin);
        if kind == PeerRecord::ForgedCopyWrongKey {
            copy.key = Some(Uuid::new_v4().to_string().into_bytes());
        }
        let named = Some((format!("{}[{}]@{}", origin.0, origin.1, origin.2), was_parked));
        written.push(
            writer
                .send(kind, retry, &copy, owned_headers(&copy), envelope.id, named)
                .await,
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for producer in &world.producers {
        producer.process().resume();
    }
    written
}

/// Waits up to 20 s for the consumers to park `record`.
async fn is_parked(world: &Deployment, record: &Injection) -> bool {
    for _ in 0..40 {
        if let Ok(mut connection) = PgConnection::connect(&world.context.consumer_database_url).await {
            let parked: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM parked_records WHERE origin_topic = $1 AND origin_partition = $2 AND origin_offset = $3",
            )
            .bind(&record.topic)
            .bind(record.partition)
            .bind(record.offset)
            .fetch_optional(&mut connection)
            .await
            .ok()
            .flatten();
            let _ = connection.close().await;
            if parked.is_some() {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// A retry copy of `envelope`'s record naming `origin`, due now, as the
/// consumer writes them.
fn retry_copy(envelope: &kafka_service::Envelope, (topic, partition, offset): &(String, i32, i64)) -> OutgoingRecord {
    let mut record = outgoing(envelope);
    for (name, value) in [
        (header::ORIGIN_TOPIC, topic.clone()),
        (header::ORIGIN_PARTITION, partition.to_string()),
        (header::ORIGIN_OFFSET, offset.to_string()),
        (header::ATTEMPTS, "1".to_owned()),
        (header::RETRY_ROUND, "1".to_owned()),
        (header::RETRY_NOT_BEFORE, chrono::Utc::now().to_rfc3339()),
        (header::ERROR_MESSAGE, "forged".to_owned()),
    ] {
        record.headers.push((name.to_owned(), Some(value.into_bytes())));
    }
    record
}

/// A peer's producer that allows what the broker allows (1 MiB + 12).
struct Writer(FutureProducer);

impl Writer {
    fn new(bootstrap_servers: &str) -> Self {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap_servers)
            .set("partitioner", kafka_service::producer::PARTITIONER)
            .set("message.max.bytes", "1048576")
            .set("message.timeout.ms", "30000")
            .create()
            .expect("a producer");
        Self(producer)
    }

    async fn send(
        &self,
        kind: PeerRecord,
        topic: &str,
        record: &OutgoingRecord,
        headers: OwnedHeaders,
        event_id: Uuid,
        names: Option<(String, bool)>,
    ) -> Injection {
        let mut sent = FutureRecord::to(topic).headers(headers);
        if let Some(key) = &record.key {
            sent = sent.key(key);
        }
        if let Some(value) = &record.value {
            sent = sent.payload(value);
        }
        let delivered = self
            .0
            .send(sent, Duration::from_secs(30))
            .await
            .unwrap_or_else(|(error, _)| panic!("the hostile record ({kind}) was not written: {error}"));
        Injection {
            kind,
            topic: topic.to_owned(),
            partition: delivered.partition,
            offset: delivered.offset,
            event_id,
            names,
        }
    }
}

/// Writes the newest `count` records of both event topics that the
/// producer published (fewer when they hold fewer; hostile records are
/// left out) to their topics again, as an at-least-once peer redelivers:
/// the same keys, values and headers, so the same event ids, which the
/// consumers must recognise and not apply again. Returns how many were
/// written.
///
/// # Panics
///
/// When the topics cannot be read or the records not written.
pub async fn redeliver(world: &Deployment, count: usize) -> usize {
    let kafka = world.context.kafka();
    let producer = kafka_service::EventProducer::new(&kafka, "soak-redelivery").expect("a producer");
    let published: HashSet<Uuid> = match PgConnection::connect(&world.context.producer_database_url).await {
        Ok(mut connection) => sqlx::query_scalar("SELECT event_id FROM outbox WHERE published_at IS NOT NULL")
            .fetch_all(&mut connection)
            .await
            .unwrap_or_default()
            .into_iter()
            .collect(),
        Err(_) => HashSet::new(),
    };
    let mut copies = Vec::new();
    for topic in [Topic::NewUserCreated, Topic::IssuedToken] {
        let name = kafka.topics.name(topic);
        let mut records = kafka_service::reader::read_topic(&kafka, name)
            .await
            .unwrap_or_else(|error| panic!("{name} readable: {error}"));
        records.retain(|record| {
            record
                .header(kafka_service::envelope::headers::ID)
                .and_then(|id| std::str::from_utf8(id).ok()?.parse().ok())
                .is_some_and(|id| published.contains(&id))
        });
        records.sort_by_key(|record| std::cmp::Reverse(record.timestamp_ms));
        records.truncate(count / 2);
        copies.extend(records.into_iter().map(|record| {
            let copy = OutgoingRecord {
                key: record.key,
                value: record.value,
                headers: record.headers,
            };
            (name, copy)
        }));
    }
    let written = futures::future::join_all(copies.iter().map(|(name, copy)| producer.send_record(name, copy))).await;
    written
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .expect("the redelivered records written")
        .len()
}

/// The user of the newest event in the outbox (a fresh id when there is
/// none yet).
async fn latest_user(world: &Deployment) -> Uuid {
    let Ok(mut connection) = PgConnection::connect(&world.context.producer_database_url).await else {
        return Uuid::new_v4();
    };
    let subject: Option<String> = sqlx::query_scalar("SELECT subject FROM outbox ORDER BY id DESC LIMIT 1")
        .fetch_optional(&mut connection)
        .await
        .ok()
        .flatten();
    subject
        .and_then(|subject| subject.parse().ok())
        .unwrap_or_else(Uuid::new_v4)
}
