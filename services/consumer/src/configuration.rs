//! The consumer's settings. See `configuration/*.yaml` for the defaults.

use std::time::Duration;

use kafka_service::{ConsumerSettings, KafkaSettings, Topic};
use secrecy::SecretString;
use serde::Deserialize;
use service_common::configuration::{self, ConfigurationError, Environment, Files};
pub use service_common::configuration::{DatabaseSettings, HttpSettings, ShutdownSettings};
pub use service_common::retention::RetentionSettings;

pub use crate::circuit::CircuitBreakerSettings;

/// The environment variable Copilot sets to the service discovery namespace
/// (`<env>.<app>.local`).
pub const SERVICE_DISCOVERY_ENDPOINT_VAR: &str = "COPILOT_SERVICE_DISCOVERY_ENDPOINT";

/// Everything the consumer is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the HTTP server listens.
    pub http: HttpSettings,
    /// The consumer's own PostgreSQL database.
    pub database: DatabaseSettings,
    /// Broker connection and topic registry.
    pub kafka: KafkaSettings,
    /// Consumer group membership and commit batching (also under `kafka`).
    pub consumer: ConsumerSettings,
    /// How to reach the producer service.
    pub producer: ProducerSettings,
    /// Access tokens.
    pub auth: AuthSettings,
    /// Retries of transient failures, in place and through the retry topic.
    pub retry: RetrySettings,
    /// When the database or the producer counts as down.
    pub circuit_breaker: CircuitBreakerSettings,
    /// How long a graceful stop may take.
    pub shutdown: ShutdownSettings,
    /// When readiness reports the member stuck.
    pub readiness: ReadinessSettings,
    /// The deduplication window.
    pub inbox: InboxSettings,
}

/// `inbox.*`: `processed_events`, the event ids already applied, by which
/// a record that comes back is applied once.
#[derive(Debug, Clone, Deserialize)]
pub struct InboxSettings {
    /// How long an applied event's id is kept (`inbox.retention.hours`),
    /// and how they are pruned. At least the longest time a record can
    /// come back ([`InboxSettings::check`]): a record older than that is
    /// applied again.
    pub retention: RetentionSettings,
}

/// What the broker keeps a topic's records for when neither the topic nor
/// configuration says (`log.retention.hours`, 168).
const BROKER_DEFAULT_RETENTION: Duration = Duration::from_secs(168 * 3600);

impl InboxSettings {
    /// Checks that the window outlasts the longest time a record can come
    /// back: the dead-letter topic's retention (an operator may redrive
    /// any record it still holds) plus the retry schedule
    /// ([`RetrySettings::schedule`]: a record parked, then dead-lettered at
    /// its end).
    ///
    /// # Errors
    ///
    /// [`ConfigurationError::Invalid`] naming both values and the least
    /// window that would do.
    pub fn check(&self, kafka: &KafkaSettings, retry: &RetrySettings) -> Result<(), ConfigurationError> {
        let dead_letter = kafka
            .topics
            .spec(Topic::DeadLetter)
            .retention_ms
            .map_or(BROKER_DEFAULT_RETENTION, |ms| Duration::from_millis(ms.max(0) as u64));
        let schedule = retry.schedule();
        let needed = dead_letter + schedule;
        if self.retention.period() >= needed {
            return Ok(());
        }
        let hours = |duration: Duration| duration.as_secs_f64() / 3600.0;
        Err(ConfigurationError::Invalid(format!(
            "inbox.retention.hours is {}, but a record can come back for {:.1} h: the dead-letter topic's \
             retention (kafka.topics.dead_letter.retention_ms, {:.1} h) plus the retry schedule (retry.*, \
             {:.1} h); a record older than the window would be applied again. Set it to at least {}",
            self.retention.hours,
            hours(needed),
            hours(dead_letter),
            hours(schedule),
            needed.as_secs().div_ceil(3600),
        )))
    }
}

/// `readiness.*`
#[derive(Debug, Clone, Deserialize)]
pub struct ReadinessSettings {
    /// Readiness fails when a held partition of the event topics has
    /// records waiting and none processed for this long (each partition
    /// judged on its own), or when no partition is assigned this long
    /// after start, in milliseconds. Longer than an in-place retry
    /// cycle (`retry.max_elapsed_ms`), so a retry is not taken for a stall.
    pub stall_after_ms: u64,
}

/// `retry.*`: what happens to a record whose processing fails transiently
/// (database or producer unavailable). See `docs/delivery.md`.
#[derive(Debug, Clone, Deserialize)]
pub struct RetrySettings {
    /// Tries per delivery, the first one included, before the record moves
    /// to the retry topic.
    pub attempts: u32,
    /// First pause between in-place tries, in milliseconds; it doubles after
    /// each try, with jitter.
    pub initial_delay_ms: u64,
    /// Longest pause between in-place tries, in milliseconds.
    pub max_delay_ms: u64,
    /// Most time spent pausing between the in-place tries of one delivery,
    /// in milliseconds.
    pub max_elapsed_ms: u64,
    /// Rounds through the retry topic before the dead-letter topic; `0`
    /// sends a record that exhausts its in-place tries to the dead-letter
    /// topic at once.
    pub topic_rounds: u32,
    /// Wait before the first round, in milliseconds.
    pub topic_initial_delay_ms: u64,
    /// Each round waits this many times longer than the one before.
    pub topic_multiplier: u32,
    /// Longest wait before a round, in milliseconds.
    pub topic_max_delay_ms: u64,
    /// How long past its due time a parked record's copy may stay away from
    /// the consumer before it counts as lost (retention, a recreated retry
    /// topic, a reset group) and the record is copied again, in
    /// milliseconds. Default: `topic_max_delay_ms` plus 5 min: a copy waits
    /// at most that long behind the records ahead of it on its retry
    /// partition (each due at most `topic_max_delay_ms` after it was
    /// written), with room for clocks that differ.
    #[serde(default)]
    pub orphan_after_ms: Option<u64>,
}

/// How far past the retry schedule's longest wait a retry copy's
/// `retry-not-before` may lie before the copy counts as poison: clocks of
/// the instances that wrote and read it may differ by this much.
pub const DUE_TIME_MARGIN: Duration = Duration::from_secs(300);

impl RetrySettings {
    /// [`orphan_after_ms`](Self::orphan_after_ms), or its default.
    pub fn orphan_after(&self) -> Duration {
        self.orphan_after_ms
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_millis(self.topic_max_delay_ms) + DUE_TIME_MARGIN)
    }

    /// The longest a record can spend in the retry schedule before it is
    /// dead-lettered: every retry round's wait, and the in-place tries'
    /// pausing (`max_elapsed_ms`) at the first delivery and at each round.
    /// About 2.5 h at the defaults.
    pub fn schedule(&self) -> Duration {
        let rounds: Duration = (1..=self.topic_rounds).map(|round| self.round_delay(round)).sum();
        rounds + Duration::from_millis(self.max_elapsed_ms) * (self.topic_rounds + 1)
    }

    /// The wait before retry round `round` (1-based):
    /// `topic_initial_delay_ms * topic_multiplier^(round-1)`, at most
    /// `topic_max_delay_ms`.
    pub fn round_delay(&self, round: u32) -> Duration {
        let factor = u64::from(self.topic_multiplier).saturating_pow(round.saturating_sub(1));
        Duration::from_millis(
            self.topic_initial_delay_ms
                .saturating_mul(factor)
                .min(self.topic_max_delay_ms),
        )
    }
}

/// `producer.*`
#[derive(Debug, Clone, Deserialize)]
pub struct ProducerSettings {
    /// The producer's base URL (`APP_PRODUCER__BASE_URL`), e.g.
    /// `http://127.0.0.1:9001`. Filled from service discovery when unset.
    pub base_url: String,
    /// Whole-request timeout of each call, in milliseconds.
    pub timeout_ms: u64,
}

/// `auth.*`
#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    /// HS256 key shared with the producer, at least 32 bytes
    /// (`APP_AUTH__JWT_SECRET`). Never logged.
    pub jwt_secret: SecretString,
}

/// The file shape: `producer.base_url` may be missing until service
/// discovery fills it in.
#[derive(Deserialize)]
struct Raw {
    http: HttpSettings,
    database: DatabaseSettings,
    kafka: RawKafka,
    producer: RawProducer,
    auth: AuthSettings,
    retry: RetrySettings,
    circuit_breaker: CircuitBreakerSettings,
    shutdown: ShutdownSettings,
    readiness: ReadinessSettings,
    inbox: InboxSettings,
}

/// `kafka.*` holds the connection's settings and the group member's side
/// by side.
#[derive(Deserialize)]
struct RawKafka {
    #[serde(flatten)]
    connection: KafkaSettings,
    #[serde(flatten)]
    consumer: ConsumerSettings,
}

#[derive(Deserialize)]
struct RawProducer {
    base_url: Option<String>,
    timeout_ms: u64,
}

impl Settings {
    /// Loads the settings: embedded files, then `APP_*` variables, then
    /// `producer.base_url` from service discovery if still unset.
    ///
    /// # Errors
    ///
    /// [`ConfigurationError`] naming the key at fault; in `production`, also
    /// a short or public signing key.
    pub fn load() -> Result<(Environment, Self), ConfigurationError> {
        let (environment, raw): (Environment, Raw) = configuration::load(Files {
            base: include_str!("../configuration/base.yaml"),
            local: include_str!("../configuration/local.yaml"),
            production: include_str!("../configuration/production.yaml"),
        })?;
        let discovery = std::env::var(SERVICE_DISCOVERY_ENDPOINT_VAR).ok();
        let settings = Self::resolve(raw, discovery.as_deref())?;
        service_common::auth::check_production_secret(environment, &settings.auth.jwt_secret)?;
        Ok((environment, settings))
    }

    fn resolve(raw: Raw, discovery_endpoint: Option<&str>) -> Result<Self, ConfigurationError> {
        let base_url = match (raw.producer.base_url, discovery_endpoint) {
            (Some(url), _) => url,
            (None, Some(endpoint)) => producer_url_from_discovery(endpoint),
            (None, None) => {
                return Err(ConfigurationError::Invalid(format!(
                    "missing configuration key `producer.base_url` (APP_PRODUCER__BASE_URL), \
                     and {SERVICE_DISCOVERY_ENDPOINT_VAR} is not set to derive it"
                )))
            }
        };
        raw.inbox.check(&raw.kafka.connection, &raw.retry)?;
        raw.circuit_breaker.check()?;
        Ok(Self {
            http: raw.http,
            database: raw.database,
            kafka: raw.kafka.connection,
            consumer: raw.kafka.consumer,
            producer: ProducerSettings {
                base_url,
                timeout_ms: raw.producer.timeout_ms,
            },
            auth: raw.auth,
            retry: raw.retry,
            circuit_breaker: raw.circuit_breaker,
            shutdown: raw.shutdown,
            readiness: raw.readiness,
            inbox: raw.inbox,
        })
    }
}

/// The producer's address under Copilot service discovery: the service
/// name `producer` in the environment's namespace, on port 9001.
pub fn producer_url_from_discovery(endpoint: &str) -> String {
    format!("http://producer.{endpoint}:9001")
}

#[cfg(test)]
mod tests {
    use kafka_service::AutoOffsetReset;

    use super::*;

    fn raw(base_url: Option<&str>) -> Raw {
        serde_json::from_value(serde_json::json!({
            "http": { "host": "127.0.0.1", "port": 9000 },
            "database": { "url": "postgres://localhost/consumer", "max_connections": 5, "create_if_missing": false },
            "kafka": { "bootstrap_servers": "127.0.0.1:9092", "group_id": "g", "commit_batch_size": 10 },
            "producer": { "base_url": base_url, "timeout_ms": 2000 },
            "auth": { "jwt_secret": "0123456789abcdef0123456789abcdef" },
            "retry": {
                "attempts": 3, "initial_delay_ms": 200, "max_delay_ms": 5000, "max_elapsed_ms": 15000,
                "topic_rounds": 5, "topic_initial_delay_ms": 60000, "topic_multiplier": 5,
                "topic_max_delay_ms": 3600000
            },
            "circuit_breaker": { "failure_threshold": 5, "open_min_secs": 1, "open_max_secs": 10 },
            "shutdown": { "timeout_ms": 20000 },
            "readiness": { "stall_after_ms": 120000 },
            "inbox": { "retention": { "hours": 744, "batch_size": 1000, "interval_ms": 60000 } }
        }))
        .unwrap()
    }

    #[test]
    fn the_kafka_section_yields_client_and_group_settings() {
        let settings = Settings::resolve(raw(Some("http://p:9001")), None).unwrap();
        assert_eq!(settings.kafka.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(settings.consumer.group_id, "g");
        assert_eq!(settings.consumer.commit_batch_size, 10);
        assert_eq!(settings.consumer.auto_offset_reset, AutoOffsetReset::Earliest);
    }

    #[test]
    fn retry_rounds_wait_exponentially_longer_up_to_the_cap() {
        let settings = Settings::resolve(raw(Some("http://p:9001")), None).unwrap();
        let delays: Vec<u64> = (1..=5)
            .map(|round| settings.retry.round_delay(round).as_secs())
            .collect();
        assert_eq!(delays, [60, 300, 1500, 3600, 3600]);
        assert_eq!(settings.retry.round_delay(40).as_secs(), 3600, "no overflow");
    }

    #[test]
    fn an_inbox_window_shorter_than_a_record_can_come_back_is_refused() {
        let settings = Settings::resolve(raw(Some("http://p:9001")), None).unwrap();
        assert_eq!(settings.retry.schedule().as_secs(), 9060 + 6 * 15);

        let mut short = raw(Some("http://p:9001"));
        short.inbox.retention.hours = 722;
        let error = Settings::resolve(short, None).unwrap_err().to_string();
        assert!(
            error.contains(
                "inbox.retention.hours is 722, but a record can come back for 722.5 h: the dead-letter \
                 topic's retention (kafka.topics.dead_letter.retention_ms, 720.0 h) plus the retry schedule"
            ),
            "{error}"
        );
        assert!(error.contains("Set it to at least 723"), "{error}");

        let mut enough = raw(Some("http://p:9001"));
        enough.inbox.retention.hours = 723;
        Settings::resolve(enough, None).expect("723 h outlasts 722.5 h");
    }

    #[test]
    fn the_embedded_defaults_load() {
        let (_, raw): (Environment, Raw) = configuration::load(Files {
            base: include_str!("../configuration/base.yaml"),
            local: include_str!("../configuration/local.yaml"),
            production: include_str!("../configuration/production.yaml"),
        })
        .unwrap();
        let settings = Settings::resolve(raw, None).unwrap();
        assert_eq!(settings.consumer.group_id, "user-read-model");
        assert!(settings.shutdown.timeout_ms < 30_000, "below ECS's SIGKILL");
        assert_eq!(settings.retry.topic_rounds, 5);
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&settings.auth.jwt_secret),
            service_common::auth::LOCAL_DEVELOPMENT_SECRET,
            "production refuses exactly the key local.yaml ships with"
        );
    }

    #[test]
    fn an_explicit_producer_url_wins_over_service_discovery() {
        let settings = Settings::resolve(raw(Some("http://p:9001")), Some("test.app.local")).unwrap();
        assert_eq!(settings.producer.base_url, "http://p:9001");
    }

    #[test]
    fn without_a_producer_url_service_discovery_supplies_it() {
        let settings = Settings::resolve(raw(None), Some("test.kafka-example.local")).unwrap();
        assert_eq!(
            settings.producer.base_url,
            "http://producer.test.kafka-example.local:9001"
        );
    }

    #[test]
    fn without_either_start_up_fails_naming_the_key() {
        let error = Settings::resolve(raw(None), None).unwrap_err();
        assert!(error.to_string().contains("producer.base_url"), "{error}");
    }
}
