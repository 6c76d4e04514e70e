//! The services as real processes (the binaries `cargo build` leaves in
//! `target/<profile>/`), configured through `APP_*` variables the way ECS
//! configures them, so tests can SIGKILL and SIGTERM them.
//!
//! `scripts/test.sh` builds the binaries before the tests run; `cargo test
//! --workspace` builds them too. Each process logs to
//! `<temp dir>/e2e-logs/<service>-<port>.log`; a failing test names the file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::{eventually, fast_retries, TestContext, JWT_SECRET};

/// A producer URL where nothing listens, for consumers whose events never
/// need a look-up (port 9, discard, is closed on loopback).
pub const NO_PRODUCER: &str = "http://127.0.0.1:9";

/// An `APP_*` override for tests of what happens once a record's retries
/// are used up while a dependency fails: the consumer's circuit breakers
/// never open, so every failure counts as a try, as a failure while the
/// dependency answers others does (`docs/delivery.md`, "Outages").
pub const BREAKER_NEVER_OPENS: (&str, &str) = ("APP_CIRCUIT_BREAKER__FAILURE_THRESHOLD", "4294967295");

/// The consumer processes' `session.timeout.ms`: how long the group
/// coordinator waits for a killed member's heartbeats before it gives the
/// member's partitions to the others. Production keeps librdkafka's 45 s
/// (`kafka.session_timeout_ms`); the tests use 10 s so that a SIGKILL
/// costs seconds, with three of librdkafka's 3 s heartbeats
/// (`heartbeat.interval.ms`) in each session, so a member busy on two
/// loaded cores is not timed out in steady state. Under the `consumer`
/// group protocol the broker holds both: `scripts/broker.sh` sets
/// `group.consumer.session.timeout.ms` and `heartbeat.interval.ms` to the
/// same 10 s and 3 s.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Replication factor 3 for every topic the services provision, for
/// services on a three-broker cluster.
pub const REPLICATED: [(&str, &str); 4] = [
    ("APP_KAFKA__TOPICS__NEW_USER_CREATED__REPLICATION_FACTOR", "3"),
    ("APP_KAFKA__TOPICS__ISSUED_TOKEN__REPLICATION_FACTOR", "3"),
    ("APP_KAFKA__TOPICS__RETRY__REPLICATION_FACTOR", "3"),
    ("APP_KAFKA__TOPICS__DEAD_LETTER__REPLICATION_FACTOR", "3"),
];

/// A service process listening on `127.0.0.1:<port>`.
pub struct ServiceProcess {
    /// `producer` or `consumer`.
    pub name: &'static str,
    /// Its HTTP port.
    pub port: u16,
    /// Where its log goes.
    pub log: PathBuf,
    child: Child,
}

impl ServiceProcess {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The partitions of each topic this consumer holds, as its own
    /// `/metrics` says (`kafka_consumer_assigned_partitions`); empty when
    /// the metrics cannot be read.
    pub async fn assigned_partitions(&self) -> BTreeMap<String, i64> {
        let Ok(response) = reqwest::get(format!("{}/metrics", self.url())).await else {
            return BTreeMap::new();
        };
        let text = response.text().await.unwrap_or_default();
        crate::metrics::samples(&text, "kafka_consumer_assigned_partitions")
            .into_iter()
            .filter_map(|(labels, value)| Some((labels.get("topic")?.clone(), value as i64)))
            .collect()
    }

    /// Its log so far (empty when unreadable). Plain text: the services
    /// colour their lines only on a terminal.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `WARN` and `ERROR` lines of its log so far, for an assertion's
    /// message: what the service said went wrong, where a CI report shows
    /// only the panic (the log file is gone with the machine).
    pub fn warnings(&self) -> String {
        let log = self.log_text();
        let lines: Vec<&str> = log
            .lines()
            .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
            .collect();
        format!("{} says:\n{}", self.name, lines.join("\n"))
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("process still running")
    }

    /// How the process ended, if it has (without waiting).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGSTOP: the process holds its sockets and answers nothing.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }

    /// SIGKILL, and waits for the process to be gone.
    pub async fn kill(mut self) {
        signal(self.pid(), "KILL");
        let _ = self.child.wait().await;
    }

    /// SIGTERM, and waits up to `limit` for a graceful exit. Returns the exit
    /// code and how long the process took.
    ///
    /// # Panics
    ///
    /// When the process is still running after `limit` (it is killed).
    pub async fn terminate(mut self, limit: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        signal(self.pid(), "TERM");
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => (status.expect("wait for the process").code(), started.elapsed()),
            Err(_) => {
                let _ = self.child.kill().await;
                panic!(
                    "{} did not exit within {limit:?} of SIGTERM; see {}",
                    self.name,
                    self.log.display()
                );
            }
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        // A test that panics must not leave processes behind.
        let _ = self.child.start_kill();
    }
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill -{name} {pid}");
}

/// The path of a workspace binary of the same profile as the running
/// executable: `target/<profile>/`, whether this is a test
/// (`target/<profile>/deps/`) or a binary such as the benchmark.
///
/// # Panics
///
/// When it has not been built.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("the executable is in a directory");
    let profile_dir = if dir.ends_with("deps") {
        dir.parent().expect("deps is in target/<profile>")
    } else {
        dir
    };
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the services first (`cargo build -p producer -p consumer`, which scripts/test.sh does)",
        path.display()
    );
    path
}

/// A free loopback port (bound and released; the service binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

impl TestContext {
    /// `APP_*` variables both services share: local environment, broker,
    /// this test's topic names, the signing key.
    fn common_env(&self) -> Vec<(String, String)> {
        let topics = &self.topics;
        let mut env = vec![
            ("RUST_LOG".to_owned(), "info".to_owned()),
            ("APP_ENVIRONMENT".to_owned(), "local".to_owned()),
            (
                "APP_KAFKA__BOOTSTRAP_SERVERS".to_owned(),
                self.bootstrap_servers.clone(),
            ),
            ("APP_KAFKA__REQUEST_TIMEOUT_MS".to_owned(), "2000".to_owned()),
            ("APP_AUTH__JWT_SECRET".to_owned(), JWT_SECRET.to_owned()),
            ("APP_SHUTDOWN__TIMEOUT_MS".to_owned(), "10000".to_owned()),
        ];
        for (key, topic) in [
            ("NEW_USER_CREATED", kafka_service::Topic::NewUserCreated),
            ("ISSUED_TOKEN", kafka_service::Topic::IssuedToken),
            ("RETRY", kafka_service::Topic::Retry),
            ("DEAD_LETTER", kafka_service::Topic::DeadLetter),
        ] {
            env.push((format!("APP_KAFKA__TOPICS__{key}__NAME"), topics.name(topic).to_owned()));
        }
        env
    }

    /// Starts the producer binary on a free port and waits until it is live.
    pub async fn start_producer_process(&self) -> ServiceProcess {
        self.start_producer_process_with(&[]).await
    }

    /// As [`start_producer_process`](Self::start_producer_process), with
    /// `extra` `APP_*` variables overriding or adding to the defaults.
    pub async fn start_producer_process_with(&self, extra: &[(&str, &str)]) -> ServiceProcess {
        let process = self.spawn_producer_process_with(extra);
        wait_until_live(&process).await;
        process
    }

    /// As [`start_producer_process_with`](Self::start_producer_process_with),
    /// without waiting for it to be live.
    pub fn spawn_producer_process_with(&self, extra: &[(&str, &str)]) -> ServiceProcess {
        let mut env = self.common_env();
        env.extend([
            ("APP_DATABASE__URL".to_owned(), self.producer_database_url.clone()),
            ("APP_OUTBOX__POLL_INTERVAL_MS".to_owned(), "200".to_owned()),
        ]);
        env.extend(
            extra
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned())),
        );
        spawn("producer", env)
    }

    /// Starts the consumer binary on a free port, calling the producer at
    /// `producer_url`, with [`fast_retries`], and waits until it is live.
    /// `extra` overrides or adds `APP_*` variables.
    pub async fn start_consumer_process(&self, producer_url: &str, extra: &[(&str, &str)]) -> ServiceProcess {
        let retry = fast_retries();
        let mut env = self.common_env();
        env.extend(
            [
                ("APP_DATABASE__URL", self.consumer_database_url.clone()),
                ("APP_KAFKA__GROUP_ID", self.group_id.clone()),
                ("APP_KAFKA__COMMIT_INTERVAL_MS", "200".to_owned()),
                ("APP_KAFKA__SESSION_TIMEOUT_MS", SESSION_TIMEOUT.as_millis().to_string()),
                ("APP_KAFKA__GROUP_PROTOCOL", crate::group_protocol().as_str().to_owned()),
                ("APP_PRODUCER__BASE_URL", producer_url.to_owned()),
                ("APP_PRODUCER__TIMEOUT_MS", "500".to_owned()),
                ("APP_RETRY__ATTEMPTS", retry.attempts.to_string()),
                ("APP_RETRY__INITIAL_DELAY_MS", retry.initial_delay_ms.to_string()),
                ("APP_RETRY__MAX_DELAY_MS", retry.max_delay_ms.to_string()),
                ("APP_RETRY__MAX_ELAPSED_MS", retry.max_elapsed_ms.to_string()),
                ("APP_RETRY__TOPIC_ROUNDS", retry.topic_rounds.to_string()),
                (
                    "APP_RETRY__TOPIC_INITIAL_DELAY_MS",
                    retry.topic_initial_delay_ms.to_string(),
                ),
                ("APP_RETRY__TOPIC_MULTIPLIER", retry.topic_multiplier.to_string()),
                ("APP_RETRY__TOPIC_MAX_DELAY_MS", retry.topic_max_delay_ms.to_string()),
            ]
            .map(|(key, value)| (key.to_owned(), value)),
        );
        env.extend(
            extra
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned())),
        );
        start("consumer", env).await
    }
}

/// Starts `name` with `env`, as [`spawn`] does, and waits until it is live.
async fn start(name: &'static str, env: Vec<(String, String)>) -> ServiceProcess {
    let process = spawn(name, env);
    wait_until_live(&process).await;
    process
}

/// Starts `name` with `env`, on the port its `APP_HTTP__PORT` names or a
/// free one. A process started again on the same port appends to the same
/// log.
fn spawn(name: &'static str, mut env: Vec<(String, String)>) -> ServiceProcess {
    let named = env
        .iter()
        .rev()
        .find(|(key, _)| key == "APP_HTTP__PORT")
        .map(|(_, port)| port.parse().expect("APP_HTTP__PORT is a port"));
    let port = named.unwrap_or_else(free_port);
    env.push(("APP_HTTP__PORT".to_owned(), port.to_string()));
    let logs = std::env::temp_dir().join("e2e-logs");
    std::fs::create_dir_all(&logs).expect("log directory");
    let log = logs.join(format!("{name}-{port}.log"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("log file");
    let child = Command::new(binary(name))
        .envs(env)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file handle"))
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| panic!("could not start {name}: {error}"));
    ServiceProcess { name, port, log, child }
}

/// Waits up to 30 s for `process` to answer `200` on `/health/live`.
async fn wait_until_live(process: &ServiceProcess) {
    let name = process.name;
    let client = reqwest::Client::new();
    let live = format!("{}/health/live", process.url());
    eventually(
        Duration::from_secs(30),
        &format!("{name} to be live ({})", process.log.display()),
        || {
            let request = client.get(&live).send();
            async move { request.await.ok().filter(|r| r.status().is_success()).map(drop) }
        },
    )
    .await;
}
