//! The shape of both services' `main`.

use std::future::Future;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::configuration::{ConfigurationError, Environment};

/// Loads the settings with `load` (a configuration error prints one line to
/// stderr and exits with status 2), installs telemetry and the signal
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
            eprintln!("{service}: {error}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = crate::telemetry::init(service, environment, "info");
    match run(settings, crate::shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "{service} stopped with an error");
            ExitCode::FAILURE
        }
    }
}
