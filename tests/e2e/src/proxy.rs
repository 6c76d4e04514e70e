//! A TCP proxy on loopback that can be told to fail: it sits between the
//! consumer and the real producer, and forwards, refuses or stalls
//! connections on command. The producer itself stays real.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

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
}

/// A fault-injecting proxy on `127.0.0.1:<port>`, stopped when dropped.
pub struct FaultProxy {
    /// Its port.
    pub port: u16,
    mode: Arc<Mutex<Mode>>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`host:port`) in `mode`.
    pub async fn start(upstream: String, mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let mode = Arc::new(Mutex::new(mode));
        let shared = Arc::clone(&mode);
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mode = *shared.lock().unwrap_or_else(PoisonError::into_inner);
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    match mode {
                        Mode::Forward => {
                            if let Ok(mut server) = TcpStream::connect(&upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        }
                        Mode::Refuse => drop(client),
                        Mode::Stall => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            drop(client);
                        }
                    }
                });
            }
        });
        Self { port, mode, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Changes what happens to new connections (open ones are unaffected).
    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner) = mode;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
