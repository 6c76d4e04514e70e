//! An Apache Kafka broker (or a three-broker cluster) of a test's own, for
//! tests that stop brokers or need a listener the shared one does not have
//! (TLS). It runs through `scripts/broker.sh`, the same script that starts
//! the shared test broker, on free loopback ports and with its data in a
//! fresh directory, so nodes can be killed, paused and started again with
//! their data.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A TLS listener's certificate chain, private key and CA, PEM files.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The certificate chain, for `127.0.0.1`.
    pub cert: PathBuf,
    /// The unencrypted PKCS#8 private key.
    pub key: PathBuf,
    /// The CA that signed `cert`: the broker's truststore (Kafka refuses to
    /// start unless it accepts the broker's own certificate).
    pub ca: PathBuf,
}

/// A running (or stopped) broker or cluster of one test. Dropping it kills
/// every node with SIGKILL and removes its data.
pub struct Broker {
    /// Node `n` (1-based) listens for clients on `port + n - 1`.
    port: u16,
    /// How many nodes: 1 or 3.
    nodes: u8,
    /// The data directory `scripts/broker.sh --dir` is given.
    dir: PathBuf,
}

impl Broker {
    /// Starts one combined broker and controller with a plaintext listener.
    pub fn start_new() -> Self {
        Self::launch(1, None)
    }

    /// Starts one node whose client listener only accepts TLS, with `tls`.
    pub fn start_tls(tls: ServerTls) -> Self {
        Self::launch(1, Some(tls))
    }

    /// Starts a cluster of three brokers (replication factor 3,
    /// `min.insync.replicas` 2; `scripts/broker.sh` has the settings).
    pub fn start_cluster() -> Self {
        Self::launch(3, None)
    }

    fn launch(nodes: u8, tls: Option<ServerTls>) -> Self {
        let dir = std::env::temp_dir().join(format!("e2e-broker-{}", uuid::Uuid::new_v4().simple()));
        let (port, controller_port) = free_port_ranges(nodes);
        let broker = Self { port, nodes, dir };
        let mut args = vec![
            "start".to_owned(),
            "--nodes".to_owned(),
            nodes.to_string(),
            "--port".to_owned(),
            port.to_string(),
            "--controller-port".to_owned(),
            controller_port.to_string(),
        ];
        if let Some(tls) = tls {
            args.push("--tls".to_owned());
            args.push(path_arg(&tls.cert));
            args.push(path_arg(&tls.key));
            args.push(path_arg(&tls.ca));
        }
        broker.script(&args);
        broker
    }

    /// Starts every node that is not running (after [`kill`](Self::kill)
    /// or [`kill_node`](Self::kill_node)), with its data, and returns once
    /// each of them accepts clients.
    ///
    /// # Panics
    ///
    /// When a node exits or does not open its port within 120 s (the
    /// script prints the node's log).
    pub fn start(&mut self) {
        self.script(&["start"]);
    }

    /// SIGKILL to every node, and waits for them to be gone.
    pub fn kill(&mut self) {
        self.script(&["stop", "--now"]);
    }

    /// SIGKILL to node `id` (1-based), and waits for it to be gone.
    pub fn kill_node(&self, id: u8) {
        self.script(&["kill", &id.to_string()]);
    }

    /// SIGSTOP to node `id`: it holds its connections and answers nothing.
    pub fn pause_node(&self, id: u8) {
        self.script(&["pause", &id.to_string()]);
    }

    /// SIGCONT to node `id` after [`pause_node`](Self::pause_node).
    pub fn resume_node(&self, id: u8) {
        self.script(&["resume", &id.to_string()]);
    }

    /// Every node's client address, `127.0.0.1:<port>` joined with commas.
    pub fn bootstrap_servers(&self) -> String {
        (0..u16::from(self.nodes))
            .map(|n| format!("127.0.0.1:{}", self.port + n))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Where node `id` logs.
    pub fn log(&self, id: u8) -> PathBuf {
        self.dir.join(format!("node-{id}")).join("kafka.log")
    }

    /// Runs `scripts/broker.sh ARGS --dir DIR`.
    ///
    /// # Panics
    ///
    /// When the script fails; its stderr says why.
    fn script<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) {
        let status = Command::new(script_path())
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .status()
            .expect("scripts/broker.sh runs");
        assert!(
            status.success(),
            "scripts/broker.sh {:?} --dir {} failed ({status}); it said why above",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
            self.dir.display(),
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new(script_path())
            .args(["stop", "--now", "--dir"])
            .arg(&self.dir)
            .status();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/broker.sh")
}

fn path_arg(path: &Path) -> String {
    path.to_str().expect("a UTF-8 path").to_owned()
}

/// Two runs of `nodes` consecutive loopback ports that are free now (client
/// and controller listeners), from a random start between 10000 and the
/// kernel's ephemeral ports. Not among those: while a broker is down, the
/// services keep reconnecting to its port, and the kernel may give one of
/// those connections that very port as its own source port; it then
/// connects to itself (a TCP simultaneous open) and holds the port, and
/// the broker cannot listen on it again.
fn free_port_ranges(nodes: u8) -> (u16, u16) {
    let free = |start: u16| {
        (start..start + u16::from(nodes)).all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
    };
    let span = u128::from(first_ephemeral_port() - 10_000 - u16::from(nodes));
    let random_start = || 10_000 + (uuid::Uuid::new_v4().as_u128() % span) as u16;
    let pick = || loop {
        let start = random_start();
        if free(start) {
            return start;
        }
    };
    let client = pick();
    loop {
        let controller = pick();
        if controller.abs_diff(client) >= u16::from(nodes) {
            return (client, controller);
        }
    }
}

/// The first port the kernel hands out as a source port
/// (`/proc/sys/net/ipv4/ip_local_port_range`; Linux's default is 32768).
fn first_ephemeral_port() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .filter(|&port: &u16| port > 12_000)
        .unwrap_or(32_768)
}

/// Runs `action` on the broker in `slot` on a blocking thread (starting and
/// stopping nodes waits on `scripts/broker.sh`), and puts the broker back.
///
/// # Panics
///
/// When `slot` is empty.
pub async fn on_blocking_thread(slot: &mut Option<Broker>, action: impl FnOnce(&mut Broker) + Send + 'static) {
    let mut broker = slot.take().expect("a broker");
    let broker = tokio::task::spawn_blocking(move || {
        action(&mut broker);
        broker
    })
    .await
    .expect("the broker action panicked");
    *slot = Some(broker);
}

/// The node that leads `partition` of `topic`, from the metadata of the
/// brokers at `bootstrap_servers`: `None` when the partition has no leader
/// or no broker answers within 5 s.
pub async fn leader_of(bootstrap_servers: String, topic: String, partition: i32) -> Option<u8> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap_servers)
            .create()
            .ok()?;
        let metadata = client
            .fetch_metadata(Some(&topic), std::time::Duration::from_secs(5))
            .ok()?;
        let leader = metadata
            .topics()
            .first()?
            .partitions()
            .get(usize::try_from(partition).ok()?)?
            .leader();
        u8::try_from(leader).ok()
    })
    .await
    .expect("the metadata request panicked")
}
