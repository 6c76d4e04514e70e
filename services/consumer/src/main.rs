//! The consumer service's entry point: configuration, telemetry, run until
//! SIGTERM or SIGINT.
//!
//! Subcommands:
//!
//! - `consumer service-token` prints a service credential (valid for five
//!   minutes, signed with the configured `auth.jwt_secret`) for the operator
//!   endpoints (`/dead-letters`);
//! - `consumer healthcheck` is the container health check: exit status 0
//!   when the running service's `/health/live` answers `200` (liveness,
//!   not readiness: see `service_common::health::CONTAINER_CHECK_PATH`).

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc, which keeps freed large blocks (each
/// argon2 hash takes 19 MiB) in its arenas instead of returning them:
/// under tests/e2e/tests/load the producer's resident memory reached 0.7 to
/// 2 GiB with glibc and kept growing, and stays near 100 MiB with mimalloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use consumer::configuration::Settings;
use consumer::startup::Application;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None => serve(),
        Some("service-token") => service_common::auth::print_service_token(
            "consumer",
            Settings::load().map(|(_, settings)| settings.auth.jwt_secret),
        ),
        Some("healthcheck") => match Settings::load() {
            Ok((_, settings)) => service_common::health::check("consumer", settings.http.port),
            Err(error) => {
                eprintln!("consumer: {error}");
                ExitCode::from(2)
            }
        },
        Some(other) => {
            eprintln!(
                "consumer: unknown subcommand `{other}`; run without one, or `consumer service-token`, \
                 or `consumer healthcheck`"
            );
            ExitCode::from(2)
        }
    }
}

#[tokio::main]
async fn serve() -> ExitCode {
    service_common::run::main("consumer", Settings::load, |settings, shutdown| async move {
        Application::build(settings).await?.run_until_stopped(shutdown).await
    })
    .await
}
