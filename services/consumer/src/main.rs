//! The consumer service's entry point: configuration, telemetry, run until
//! SIGTERM or SIGINT.

use consumer::configuration::Settings;
use consumer::startup::Application;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    service_common::run::main("consumer", Settings::load, |settings, shutdown| async move {
        Application::build(settings).await?.run_until_stopped(shutdown).await
    })
    .await
}
