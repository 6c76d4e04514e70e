//! A Nisshi broker of a test's own, for tests that stop the broker or need
//! a listener the shared one does not have (TLS): on a free loopback port,
//! with SQLite storage in a fresh directory, so it can be killed and
//! started again with its data.
//!
//! The binary is `nisshi` on `PATH` (`scripts/broker.sh install` puts it
//! there), or the one `NISSHI` names.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::free_port;

/// A TLS listener's certificate chain and private key, both PEM files.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The certificate chain (`--cert`).
    pub cert: PathBuf,
    /// The private key (`--key`).
    pub key: PathBuf,
}

/// A running (or stopped) broker process of one test.
pub struct Broker {
    port: u16,
    dir: PathBuf,
    tls: Option<ServerTls>,
    process: Option<Child>,
}

impl Broker {
    /// Starts a broker with a plaintext listener.
    pub fn start_new() -> Self {
        Self::start_with(None)
    }

    /// Starts a broker whose listener only accepts TLS, with `tls`.
    pub fn start_tls(tls: ServerTls) -> Self {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<ServerTls>) -> Self {
        let dir = std::env::temp_dir().join(format!("e2e-broker-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("broker data directory");
        let mut broker = Self {
            port: free_port(),
            dir,
            tls,
            process: None,
        };
        broker.start();
        broker
    }

    /// Starts the process again on the same port and data (after
    /// [`kill`](Self::kill)).
    ///
    /// # Panics
    ///
    /// When the binary is missing or the port does not open within 10 s.
    pub fn start(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("broker log");
        let mut command = Command::new(std::env::var("NISSHI").unwrap_or_else(|_| "nisshi".to_owned()));
        command
            .args(["broker", "--storage-engine", "sqlite://nisshi.db"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url]);
        if let Some(tls) = &self.tls {
            command.arg("--cert").arg(&tls.cert).arg("--key").arg(&tls.key);
        }
        let mut child = command
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nisshi is installed (scripts/broker.sh install)");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.process = Some(child);
                return;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nisshi exited with {status}; see {}", self.log().display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!(
            "nisshi did not listen on port {} within 10 s; see {}",
            self.port,
            self.log().display()
        );
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where the broker logs.
    pub fn log(&self) -> PathBuf {
        self.dir.join("nisshi.log")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
