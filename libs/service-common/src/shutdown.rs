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
pub fn exit_after_deadline(shutdown: CancellationToken, deadline: std::time::Duration) {
    tokio::spawn(async move {
        shutdown.cancelled().await;
        tokio::time::sleep(deadline).await;
        tracing::error!(
            deadline_ms = deadline.as_millis(),
            "graceful shutdown did not finish within its deadline; exiting now"
        );
        std::process::exit(1);
    });
}
