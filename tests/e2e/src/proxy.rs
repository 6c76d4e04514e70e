//! A TCP proxy on loopback that can be told to fail: it sits between a
//! service and a real upstream (the producer, PostgreSQL), and forwards,
//! refuses or stalls connections on command, or swallows them. The
//! upstream itself stays real.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a connection in a black hole is held open, unanswered, before
/// the proxy lets go of it: longer than any test waits.
const BLACK_HOLE_HOLD: Duration = Duration::from_secs(600);

/// What the proxy does with each new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward it to the upstream.
    Forward,
    /// Close it at once (the client sees a connection reset or EOF).
    Refuse,
    /// Hold it open without forwarding or answering (the client times out),
    /// for at most 30 s.
    Stall,
    /// Answer nothing, as a server that froze or vanished without a reset:
    /// setting this also freezes every connection open now, for good (they
    /// stay frozen when the mode changes again), and new connections are
    /// held unanswered. Each is let go of after 10 minutes.
    BlackHole,
}

/// A fault-injecting proxy on `127.0.0.1:<port>`, stopped when dropped.
pub struct FaultProxy {
    /// Its port.
    pub port: u16,
    mode: Arc<Mutex<Mode>>,
    /// Cancelled to freeze the connections forwarded since the last
    /// [`Mode::BlackHole`]; replaced then.
    freeze: Arc<Mutex<CancellationToken>>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`host:port`) in `mode`.
    pub async fn start(upstream: String, mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let mode = Arc::new(Mutex::new(mode));
        let freeze = Arc::new(Mutex::new(CancellationToken::new()));
        let (shared_mode, shared_freeze) = (Arc::clone(&mode), Arc::clone(&freeze));
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mode = *shared_mode.lock().unwrap_or_else(PoisonError::into_inner);
                let frozen = shared_freeze.lock().unwrap_or_else(PoisonError::into_inner).clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    match mode {
                        Mode::Forward => {
                            if let Ok(mut server) = TcpStream::connect(&upstream).await {
                                tokio::select! {
                                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                    () = frozen.cancelled() => {
                                        // Both ends stay open, and nothing
                                        // moves between them any more.
                                        tokio::time::sleep(BLACK_HOLE_HOLD).await;
                                    }
                                }
                            }
                        }
                        Mode::Refuse => drop(client),
                        Mode::Stall => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            drop(client);
                        }
                        Mode::BlackHole => {
                            tokio::time::sleep(BLACK_HOLE_HOLD).await;
                            drop(client);
                        }
                    }
                });
            }
        });
        Self {
            port,
            mode,
            freeze,
            task,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Changes what happens to new connections. Open ones are unaffected,
    /// except by [`Mode::BlackHole`], which freezes them for good.
    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner) = mode;
        if mode == Mode::BlackHole {
            let mut freeze = self.freeze.lock().unwrap_or_else(PoisonError::into_inner);
            freeze.cancel();
            *freeze = CancellationToken::new();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
