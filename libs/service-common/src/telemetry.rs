//! The tracing subscriber.

use tracing_subscriber::EnvFilter;

use crate::configuration::Environment;

/// Installs the global subscriber: JSON lines in production, human-readable
/// lines locally. The level comes from `RUST_LOG` when set, else `default`
/// (e.g. `"info"`).
///
/// # Panics
///
/// When a global subscriber is already installed.
pub fn init(environment: Environment, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    match environment {
        Environment::Production => builder.json().flatten_event(true).init(),
        Environment::Local => builder.init(),
    }
}
