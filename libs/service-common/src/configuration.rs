//! Layered configuration, in increasing precedence:
//!
//! 1. the service's `base.yaml`;
//! 2. the file of the environment named by `APP_ENVIRONMENT`
//!    (`local.yaml`, the default, or `production.yaml`);
//! 3. environment variables with prefix `APP_` and separator `__`, e.g.
//!    `APP_DATABASE__URL` sets `database.url`.
//!
//! The files are compiled into the binary, so the services run from any
//! directory and the container image needs no configuration files.

use secrecy::SecretString;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// The deployment environment, from `APP_ENVIRONMENT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// A developer's machine: human-readable logs, local defaults.
    Local,
    /// ECS: JSON logs; secrets and addresses must come from the environment.
    Production,
}

impl Environment {
    /// The environment's name, as in `APP_ENVIRONMENT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Local => "local",
            Environment::Production => "production",
        }
    }

    /// Reads `APP_ENVIRONMENT`; unset means [`Environment::Local`].
    ///
    /// # Errors
    ///
    /// [`ConfigurationError`] naming the variable when its value is neither
    /// `local` nor `production`.
    pub fn from_env() -> Result<Self, ConfigurationError> {
        match std::env::var("APP_ENVIRONMENT")
            .as_deref()
            .map(str::to_lowercase)
            .as_deref()
        {
            Err(_) | Ok("local") => Ok(Environment::Local),
            Ok("production") => Ok(Environment::Production),
            Ok(other) => Err(ConfigurationError::UnknownEnvironment(other.to_owned())),
        }
    }
}

/// The configuration files of one service, embedded with `include_str!`.
#[derive(Debug, Clone, Copy)]
pub struct Files {
    /// `base.yaml`: defaults for every environment.
    pub base: &'static str,
    /// `local.yaml`.
    pub local: &'static str,
    /// `production.yaml`.
    pub production: &'static str,
}

/// A configuration error. With its source (`{:#}`), one line that names
/// the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigurationError {
    /// `APP_ENVIRONMENT` names no environment.
    #[error(
        "invalid configuration: APP_ENVIRONMENT: `{0}` is not a supported environment; use `local` or `production`"
    )]
    UnknownEnvironment(String),
    /// A file does not parse, a required key is missing or a value has the
    /// wrong type; the source names the key.
    #[error("invalid configuration")]
    Load(#[source] config::ConfigError),
    /// A value of the right type that the service refuses: the key and why.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Builds the service's settings from `files` and the process environment.
///
/// # Errors
///
/// [`ConfigurationError`] when `APP_ENVIRONMENT` is unknown, a file does
/// not parse, a required key is missing or a value has the wrong type.
pub fn load<T: DeserializeOwned>(files: Files) -> Result<(Environment, T), ConfigurationError> {
    let environment = Environment::from_env()?;
    let environment_file = match environment {
        Environment::Local => files.local,
        Environment::Production => files.production,
    };
    let settings = config::Config::builder()
        .add_source(config::File::from_str(files.base, config::FileFormat::Yaml))
        .add_source(config::File::from_str(environment_file, config::FileFormat::Yaml))
        .add_source(
            config::Environment::with_prefix("APP")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .and_then(config::Config::try_deserialize::<T>)
        .map_err(ConfigurationError::Load)?;
    Ok((environment, settings))
}

/// `http.*`: where the HTTP server listens.
#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    /// Listen address (`APP_HTTP__HOST`).
    pub host: String,
    /// Listen port (`APP_HTTP__PORT`); `0` picks a free port (tests).
    pub port: u16,
}

/// `database.*`: the service's own PostgreSQL database.
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// `postgres://user:password@host:port/database` (`APP_DATABASE__URL`).
    /// A secret: it may hold a password. TLS is chosen by its `sslmode`
    /// parameter: `require` encrypts, `verify-full` (with `sslrootcert`)
    /// also checks the server's certificate and name.
    pub url: SecretString,
    /// The password, when it is kept apart from the URL
    /// (`APP_DATABASE__PASSWORD`, e.g. injected from Secrets Manager); it
    /// replaces any password in `url`.
    #[serde(default)]
    pub password: Option<SecretString>,
    /// Size of the connection pool.
    pub max_connections: u32,
    /// Create the database at start-up when it does not exist.
    pub create_if_missing: bool,
    /// Longest one statement may run, in milliseconds: PostgreSQL's
    /// `statement_timeout`, set on every connection but the one that runs
    /// the migrations. The server cancels a longer statement with an error
    /// (SQLSTATE 57014). `0` turns the limit off. Default 10 000.
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// Longest a transaction may wait for its client between statements,
    /// in milliseconds: PostgreSQL's `idle_in_transaction_session_timeout`,
    /// set on every pool connection. The server then ends the session and
    /// its transaction, releasing its locks: what is left of a client that
    /// froze or lost its connection mid-transaction, which would otherwise
    /// hold row locks until the server's keepalives notice (never, when
    /// something in between keeps the connection open). No transaction of
    /// the services waits for anything but the database. `0` turns it off.
    /// Default 30 000.
    #[serde(default = "default_idle_in_transaction_timeout_ms")]
    pub idle_in_transaction_timeout_ms: u64,
    /// TCP keepalive on the server's side of every connection.
    #[serde(default)]
    pub keepalive: KeepaliveSettings,
}

impl DatabaseSettings {
    /// How long a caller waits for one statement before it takes the
    /// connection for dead: the statement timeout plus 5 s for the server's
    /// cancellation to come back; `None` when the statement timeout is off.
    pub fn statement_deadline(&self) -> Option<std::time::Duration> {
        (self.statement_timeout_ms > 0)
            .then(|| std::time::Duration::from_millis(self.statement_timeout_ms) + std::time::Duration::from_secs(5))
    }
}

/// `database.keepalive.*`: TCP keepalive probes the server sends on each
/// connection when it has been idle (PostgreSQL's `tcp_keepalives_idle`,
/// `tcp_keepalives_interval` and `tcp_keepalives_count`, set per
/// connection). A connection whose client vanished (its host died, the
/// network split) is closed after `idle_secs + interval_secs × count`
/// without an answer, 25 s by default, and its locks are released: the
/// outbox relay's leadership passes to a standby then. Without them the
/// operating system's defaults apply (Linux: 2 h idle, then 9 probes 75 s
/// apart). sqlx sets no keepalive on the client's side of a connection;
/// callers that must notice a dead server bound their statements instead
/// ([`DatabaseSettings::statement_deadline`]).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveSettings {
    /// Idle time before the first probe, in seconds.
    pub idle_secs: u32,
    /// Time between probes, in seconds.
    pub interval_secs: u32,
    /// Unanswered probes before the connection is closed.
    pub count: u32,
}

impl Default for KeepaliveSettings {
    fn default() -> Self {
        Self {
            idle_secs: 10,
            interval_secs: 5,
            count: 3,
        }
    }
}

fn default_statement_timeout_ms() -> u64 {
    10_000
}

fn default_idle_in_transaction_timeout_ms() -> u64 {
    30_000
}

/// `shutdown.*`: how long a graceful stop may take.
#[derive(Debug, Clone, Deserialize)]
pub struct ShutdownSettings {
    /// From SIGTERM or SIGINT to exit, in milliseconds. ECS sends SIGKILL
    /// 30 s after SIGTERM (the task definition's default `stopTimeout`), so
    /// keep this below 30000. Past it the process exits with status 1 and
    /// whatever was not committed is redelivered.
    pub timeout_ms: u64,
}

impl ShutdownSettings {
    /// [`timeout_ms`](Self::timeout_ms) as a duration.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.timeout_ms)
    }

    /// How long HTTP requests in flight may finish once shutdown begins:
    /// half of [`timeout`](Self::timeout), leaving the other half to what
    /// stops after the server (the outbox relay's last batches, the
    /// consumer's final commits).
    pub fn http_drain(&self) -> std::time::Duration {
        self.timeout() / 2
    }
}

#[cfg(test)]
mod tests {
    use kafka_service::{KafkaSettings, Security};

    use super::*;

    #[derive(Debug, Deserialize)]
    struct WithKafka {
        kafka: KafkaSettings,
    }

    fn kafka_from(base: &'static str) -> Result<KafkaSettings, ConfigurationError> {
        let files = Files {
            base,
            local: "{}",
            production: "{}",
        };
        load::<WithKafka>(files).map(|(_, settings)| settings.kafka)
    }

    #[test]
    fn kafka_security_is_chosen_by_its_protocol_key() {
        let kafka = kafka_from(
            "kafka:\n  bootstrap_servers: b-1:9098\n  security:\n    protocol: msk_iam\n    region: eu-west-1\n",
        )
        .unwrap();
        assert_eq!(
            kafka.security,
            Security::MskIam {
                region: "eu-west-1".to_owned()
            }
        );
        let kafka = kafka_from("kafka:\n  bootstrap_servers: 127.0.0.1:9092\n").unwrap();
        assert_eq!(kafka.security, Security::Plaintext);
    }

    #[test]
    fn msk_iam_without_a_region_is_a_configuration_error() {
        let error =
            kafka_from("kafka:\n  bootstrap_servers: b-1:9098\n  security:\n    protocol: msk_iam\n").unwrap_err();
        let error = format!("{:#}", anyhow::Error::from(error));
        assert!(error.contains("region"), "{error}");
    }
}
