//! A TCP proxy on loopback that can be told to fail: it sits between a
//! service and a real upstream (the producer, PostgreSQL), and forwards,
//! refuses or stalls connections on command, or swallows them. The
//! upstream itself stays real.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    /// PostgreSQL only (a proxy from [`FaultProxy::postgres`]): every
    /// connection, open or new, freezes for good, as in
    /// [`BlackHole`](Self::BlackHole), right after the server next tells
    /// the client it is inside a transaction (a `ReadyForQuery` message
    /// with status `T`): the client's next statement of that transaction
    /// is never answered. A server that freezes under load does this to a
    /// client mid-transaction; a black hole mostly catches idle
    /// connections, which a pool's ping on acquire finds out.
    FreezeInTransaction,
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
        Self::launch(upstream, mode, false).await
    }

    /// Starts a proxy to the PostgreSQL server at `upstream` in `mode`,
    /// which follows the server's messages so that it can
    /// [`FreezeInTransaction`](Mode::FreezeInTransaction).
    pub async fn postgres(upstream: String, mode: Mode) -> Self {
        Self::launch(upstream, mode, true).await
    }

    async fn launch(upstream: String, mode: Mode, postgres: bool) -> Self {
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
                let watched = postgres.then(|| Arc::clone(&shared_mode));
                tokio::spawn(async move {
                    match mode {
                        Mode::Forward | Mode::FreezeInTransaction if watched.is_some() => {
                            if let Ok(server) = TcpStream::connect(&upstream).await {
                                forward_postgres(client, server, frozen, watched.expect("a postgres proxy")).await;
                            }
                        }
                        Mode::Forward | Mode::FreezeInTransaction => {
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

/// Forwards a PostgreSQL connection both ways until either side closes,
/// or until it freezes: when `frozen` is cancelled, or when the server
/// says the connection is inside a transaction while the proxy is in
/// [`Mode::FreezeInTransaction`]. A frozen connection holds both sockets
/// open, forwarding nothing, for [`BLACK_HOLE_HOLD`].
async fn forward_postgres(client: TcpStream, server: TcpStream, frozen: CancellationToken, mode: Arc<Mutex<Mode>>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let downstream = async {
        let mut messages = Messages::default();
        let mut buffer = vec![0; 16 * 1024];
        loop {
            let read = server_read.read(&mut buffer).await?;
            if read == 0 {
                return std::io::Result::Ok(false);
            }
            let chunk = &buffer[..read];
            let freeze_in_transaction =
                || *mode.lock().unwrap_or_else(PoisonError::into_inner) == Mode::FreezeInTransaction;
            match messages.in_transaction_at(chunk, freeze_in_transaction) {
                Some(end) => {
                    client_write.write_all(&chunk[..end]).await?;
                    return Ok(true);
                }
                None => client_write.write_all(chunk).await?,
            }
        }
    };
    let freeze = tokio::select! {
        _ = tokio::io::copy(&mut client_read, &mut server_write) => false,
        forwarded = downstream => forwarded.unwrap_or(false),
        () = frozen.cancelled() => true,
    };
    if freeze {
        // Both ends stay open, and nothing moves between them any more.
        tokio::time::sleep(BLACK_HOLE_HOLD).await;
    }
}

/// Where the server's messages begin and end, in the bytes it sends: an
/// optional one-byte answer to an `SSLRequest` (`N`: no TLS), then
/// messages of a type byte, a 4-byte big-endian length that counts itself,
/// and the body (PostgreSQL's frontend/backend protocol, version 3).
#[derive(Debug, Default)]
struct Messages {
    /// Past the connection's first byte.
    started: bool,
    /// TLS was agreed: nothing can be read any more.
    encrypted: bool,
    /// The type byte and length of the message being read, as far as read.
    header: Vec<u8>,
    /// Body bytes of the current message still to come.
    remaining: usize,
    /// The current message is a `ReadyForQuery` whose status byte is next.
    status_next: bool,
}

impl Messages {
    /// Reads `chunk`, and returns the offset just past the first
    /// `ReadyForQuery` with status `T` (in a transaction block) that ends
    /// in it, when `armed()` says to look for one then.
    fn in_transaction_at(&mut self, chunk: &[u8], armed: impl Fn() -> bool) -> Option<usize> {
        let mut at = 0;
        while at < chunk.len() && !self.encrypted {
            if !self.started {
                self.started = true;
                match chunk[at] {
                    b'N' => {
                        at += 1;
                        continue;
                    }
                    b'S' => {
                        self.encrypted = true;
                        break;
                    }
                    _ => {}
                }
            }
            if self.status_next {
                self.status_next = false;
                self.remaining = 0;
                at += 1;
                if chunk[at - 1] == b'T' && armed() {
                    return Some(at);
                }
                continue;
            }
            if self.remaining > 0 {
                let skipped = self.remaining.min(chunk.len() - at);
                self.remaining -= skipped;
                at += skipped;
                continue;
            }
            self.header.push(chunk[at]);
            at += 1;
            if self.header.len() == 5 {
                let length = u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]);
                let body = usize::try_from(length).unwrap_or(usize::MAX).saturating_sub(4);
                self.status_next = self.header[0] == b'Z' && body == 1;
                self.remaining = if self.status_next { 0 } else { body };
                self.header.clear();
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![kind];
        bytes.extend(u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        bytes.extend(body);
        bytes
    }

    #[test]
    fn a_ready_for_query_in_a_transaction_is_found_across_chunks() {
        let mut stream = vec![b'N'];
        stream.extend(message(b'R', &[0, 0, 0, 0]));
        stream.extend(message(b'Z', b"I"));
        stream.extend(message(b'C', b"BEGIN\0"));
        stream.extend(message(b'Z', b"T"));
        let end = stream.len();
        stream.extend(message(b'C', b"INSERT 0 1\0"));
        for split in 1..stream.len() {
            let mut messages = Messages::default();
            let found = messages.in_transaction_at(&stream[..split], || true).or_else(|| {
                messages
                    .in_transaction_at(&stream[split..], || true)
                    .map(|at| at + split)
            });
            assert_eq!(found, Some(end), "split at {split}");
        }
        let mut unarmed = Messages::default();
        assert_eq!(unarmed.in_transaction_at(&stream, || false), None);
    }
}
