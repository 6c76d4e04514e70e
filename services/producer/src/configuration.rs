//! The producer's settings. See `configuration/*.yaml` for the defaults.

use kafka_service::KafkaSettings;
use secrecy::SecretString;
use serde::Deserialize;
use service_common::configuration::{self, ConfigurationError, Environment, Files};

pub use crate::login_limit::LoginLimitSettings;
pub use service_common::configuration::{DatabaseSettings, HttpSettings, ShutdownSettings};
pub use service_common::retention::RetentionSettings;

/// Everything the producer is configured with.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Where the HTTP server listens.
    pub http: HttpSettings,
    /// The producer's own PostgreSQL database.
    pub database: DatabaseSettings,
    /// Broker connection and topic registry.
    pub kafka: KafkaSettings,
    /// Access tokens.
    pub auth: AuthSettings,
    /// Throttling of `POST /auth/token`.
    pub login_limit: LoginLimitSettings,
    /// The outbox relay.
    pub outbox: OutboxSettings,
    /// How long a graceful stop may take.
    pub shutdown: ShutdownSettings,
}

/// `auth.*`
#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    /// HS256 signing key, at least 32 bytes (`APP_AUTH__JWT_SECRET`). Never
    /// logged.
    pub jwt_secret: SecretString,
    /// Lifetime of issued access tokens, in seconds.
    pub token_ttl_secs: u64,
}

/// `outbox.*`
#[derive(Debug, Clone, Deserialize)]
pub struct OutboxSettings {
    /// Rows the relay reads and hands to the producer at a time.
    pub batch_size: u32,
    /// Batches' worth of rows awaiting their delivery reports at once: the
    /// relay reads and sends more while earlier rows are in flight, up to
    /// `batches_in_flight` × `batch_size` rows. A row whose report has not
    /// come within `kafka.request_timeout_ms` stops counting, so one
    /// partition that cannot be written does not hold up the others.
    pub batches_in_flight: usize,
    /// Fallback poll period when no notification arrives, in milliseconds.
    pub poll_interval_ms: u64,
    /// How long published rows are kept (`outbox.retention.hours`), and how
    /// they are pruned. Rows not published (pending, failing, set aside)
    /// are never deleted by age.
    pub retention: RetentionSettings,
}

impl Settings {
    /// Loads the settings: embedded files, then `APP_*` variables.
    ///
    /// # Errors
    ///
    /// [`ConfigurationError`] naming the key at fault; in `production`, also
    /// a short or public signing key.
    pub fn load() -> Result<(Environment, Self), ConfigurationError> {
        let (environment, settings): (Environment, Self) = configuration::load(Files {
            base: include_str!("../configuration/base.yaml"),
            local: include_str!("../configuration/local.yaml"),
            production: include_str!("../configuration/production.yaml"),
        })?;
        service_common::auth::check_production_secret(environment, &settings.auth.jwt_secret)?;
        Ok((environment, settings))
    }
}
