//! The shape of both services' `main`.

use std::future::Future;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::configuration::{ConfigurationError, Environment};

/// The log filter when `RUST_LOG` is unset: `info`, except actix-http's
/// connection dispatcher, which logs a client's malformed request (bad bytes
/// in a header, say) at error level although it is the client's fault and
/// already answered with `400`; left on, any client could flood the error
/// log.
pub const DEFAULT_LOG_FILTER: &str = "info,actix_http::h1::dispatcher=off";

/// Loads the settings with `load` (a configuration error prints one line to
/// stderr, with its cause, and exits with status 2), installs telemetry and the signal
/// handlers, then runs `run` until it returns: status 0 after a clean
/// shutdown, 1 after an error, which is logged with its cause chain.
pub async fn main<S, F>(
    service: &'static str,
    load: impl FnOnce() -> Result<(Environment, S), ConfigurationError>,
    run: impl FnOnce(S, CancellationToken) -> F,
) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    let (environment, settings) = match load() {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("{service}: {:#}", anyhow::Error::from(error));
            return ExitCode::from(2);
        }
    };
    let _telemetry = crate::telemetry::init(service, environment, DEFAULT_LOG_FILTER);
    match run(settings, crate::shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "{service} stopped with an error");
            ExitCode::FAILURE
        }
    }
}
