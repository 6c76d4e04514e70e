//! Shutdown signals.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGTERM (what ECS sends before SIGKILL,
/// 30 s later) or SIGINT (Ctrl-C). Every long-running task of a service
/// watches it and winds down.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler installs");
            tokio::select! {
                _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
                _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
            tracing::info!("Ctrl-C received, shutting down");
        }
        cancel.cancel();
    });
    token
}

/// Once `shutdown` is cancelled, gives the service `deadline` to stop; if it
/// is still running then, logs that and exits the process with status 1
/// (a commit or a broker call that hangs must not outlive the deadline, or
/// ECS's SIGKILL would come first and the log would not say why).
///
/// The watchdog is disarmed when the returned guard is dropped: hold it
/// until the service has stopped.
#[must_use = "the watchdog is disarmed when the guard is dropped"]
pub fn exit_after_deadline(shutdown: CancellationToken, deadline: std::time::Duration) -> DeadlineGuard {
    DeadlineGuard(tokio::spawn(async move {
        shutdown.cancelled().await;
        tokio::time::sleep(deadline).await;
        tracing::error!(
            deadline_ms = deadline.as_millis(),
            "graceful shutdown did not finish within its deadline; exiting now"
        );
        std::process::exit(1);
    }))
}

/// Disarms the [`exit_after_deadline`] watchdog when dropped.
#[derive(Debug)]
pub struct DeadlineGuard(tokio::task::JoinHandle<()>);

impl Drop for DeadlineGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// If the guard did not disarm the watchdog, it would exit this test
    /// process with status 1 and fail the run.
    #[tokio::test]
    async fn a_service_that_stopped_in_time_is_not_killed_by_its_watchdog() {
        let shutdown = CancellationToken::new();
        let guard = exit_after_deadline(shutdown.clone(), std::time::Duration::from_millis(50));
        shutdown.cancel();
        drop(guard);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
