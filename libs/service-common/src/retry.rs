//! The retry policy both services use for transient failures, and topic
//! provisioning under it.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use kafka_service::{AdminError, KafkaSettings, TopicSpec};
use tokio_util::sync::CancellationToken;

/// Longest pause between attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// Delays between attempts: exponential from 100 ms to [`MAX_DELAY`], with
/// jitter (so instances that failed together do not retry together),
/// without end.
pub fn backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(MAX_DELAY)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Sleeps for the next delay of `delays`. `false` when `shutdown` came
/// first.
pub async fn sleep_or_cancel(delays: &mut ExponentialBackoff, shutdown: &CancellationToken) -> bool {
    let delay = delays.next().unwrap_or(MAX_DELAY);
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// [`kafka_service::ensure_topics`], retried under [`backoff`] while the
/// broker is unreachable, until it succeeds or `shutdown` is cancelled.
/// `Ok(false)` means shutdown came first.
///
/// # Errors
///
/// The first error retrying cannot fix ([`AdminError::is_transient`] is
/// false): a topic with too few partitions, or one the broker refuses.
pub async fn provision_topics(
    settings: &KafkaSettings,
    specs: &[&TopicSpec],
    shutdown: &CancellationToken,
) -> Result<bool, AdminError> {
    let mut delays = backoff();
    loop {
        match kafka_service::ensure_topics(settings, specs).await {
            Ok(()) => return Ok(true),
            Err(error) if error.is_transient() => {
                let cause = std::error::Error::source(&error).map(ToString::to_string);
                tracing::warn!(%error, cause, "topic provisioning failed; retrying");
                if !sleep_or_cancel(&mut delays, shutdown).await {
                    return Ok(false);
                }
            }
            Err(error) => return Err(error),
        }
    }
}
