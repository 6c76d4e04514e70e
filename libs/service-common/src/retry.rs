//! The retry policy both services use for transient failures.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
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
    shutdown.run_until_cancelled(tokio::time::sleep(delay)).await.is_some()
}
