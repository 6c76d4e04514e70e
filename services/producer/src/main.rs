//! The producer service's entry point: configuration, telemetry, run until
//! SIGTERM or SIGINT.
//!
//! `producer healthcheck` is the container health check instead: exit
//! status 0 when the running service's `/health/ready` answers `200`.

use std::process::ExitCode;

use producer::configuration::Settings;
use producer::startup::Application;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None => serve(),
        Some("healthcheck") => match Settings::load() {
            Ok((_, settings)) => service_common::health::check("producer", settings.http.port),
            Err(error) => {
                eprintln!("producer: {error}");
                ExitCode::from(2)
            }
        },
        Some(other) => {
            eprintln!("producer: unknown subcommand `{other}`; run without one, or `producer healthcheck`");
            ExitCode::from(2)
        }
    }
}

#[tokio::main]
async fn serve() -> ExitCode {
    service_common::run::main("producer", Settings::load, |settings, shutdown| async move {
        Application::build(settings).await?.run_until_stopped(shutdown).await
    })
    .await
}
