//! The deployment the soak runs on this machine: a three-broker Kafka
//! cluster (`scripts/broker.sh start --nodes 3`), a PostgreSQL cluster of
//! its own (`scripts/postgres.sh --port --dir`, so that restarting it
//! touches no other server), two producers and three consumers as
//! processes, and a fourth consumer that a fault adds and removes. Each
//! consumer reaches PostgreSQL through a fault proxy of its own.
//!
//! Every service keeps its loopback port across restarts, below the
//! kernel's ephemeral ports, so that no outgoing connection takes it while
//! the service is down.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::broker::Broker;
use e2e::process::{ServiceProcess, REPLICATED};
use e2e::proxy::{FaultProxy, Mode};
use e2e::TestContext;
use kafka_service::Topic;

/// Producer instances.
pub const PRODUCERS: usize = 2;
/// Consumer instances that run throughout; one more is added and removed.
pub const CONSUMERS: usize = 3;

/// The consumers' retries: 3 tries in place, then 8 rounds through the
/// retry topic 0.5, 1, 2, 4 and then 8 s apart (39.5 s in all). Longer
/// than any fault the soak injects lasts, so that no accepted event is
/// dead-lettered as exhausted because a producer or the database was down.
const RETRIES: [(&str, &str); 8] = [
    ("APP_RETRY__ATTEMPTS", "3"),
    ("APP_RETRY__INITIAL_DELAY_MS", "100"),
    ("APP_RETRY__MAX_DELAY_MS", "1000"),
    ("APP_RETRY__MAX_ELAPSED_MS", "3000"),
    ("APP_RETRY__TOPIC_ROUNDS", "8"),
    ("APP_RETRY__TOPIC_INITIAL_DELAY_MS", "500"),
    ("APP_RETRY__TOPIC_MULTIPLIER", "2"),
    ("APP_RETRY__TOPIC_MAX_DELAY_MS", "8000"),
];

/// One service instance: its fixed port and settings, and its process
/// while it runs.
pub struct Service {
    /// `producer-1`, `consumer-3`, …
    pub name: String,
    port: u16,
    env: Vec<(String, String)>,
    /// `None` while a fault has it stopped.
    pub process: Option<ServiceProcess>,
    /// The consumer's way to PostgreSQL (`None` for producers).
    pub database: Option<FaultProxy>,
}

impl Service {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where its processes log, one file across restarts.
    pub fn log(&self) -> PathBuf {
        let kind = self.name.split('-').next().expect("a kind");
        std::env::temp_dir()
            .join("e2e-logs")
            .join(format!("{kind}-{}.log", self.port))
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect()
    }

    /// The running process.
    ///
    /// # Panics
    ///
    /// When a fault has it stopped.
    pub fn process(&self) -> &ServiceProcess {
        self.process
            .as_ref()
            .unwrap_or_else(|| panic!("{} is running", self.name))
    }
}

/// The soak's PostgreSQL cluster.
pub struct Postgres {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
}

impl Postgres {
    /// `scripts/postgres.sh ARGS --dir DIR`.
    ///
    /// # Panics
    ///
    /// When the script fails (it says why).
    pub fn script(&self, args: &[&str]) {
        let status = Command::new("scripts/postgres.sh")
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .status()
            .expect("scripts/postgres.sh runs");
        assert!(status.success(), "scripts/postgres.sh {args:?} failed");
    }
}

/// Everything the soak runs.
pub struct Deployment {
    /// `None` only while [`with_cluster`](Self::with_cluster) runs.
    cluster: Option<Broker>,
    /// Topic names, consumer group, database URLs (direct, not proxied).
    pub context: TestContext,
    /// The soak's PostgreSQL.
    pub postgres: Postgres,
    /// [`PRODUCERS`] producers.
    pub producers: Vec<Service>,
    /// [`CONSUMERS`] consumers, then the one a fault adds and removes.
    pub consumers: Vec<Service>,
}

impl Deployment {
    /// Starts PostgreSQL in `out/postgres` (fresh), the cluster, and every
    /// service but the extra consumer, and waits until each is live.
    pub async fn start(out: &Path) -> Self {
        let mut ports = PortPicker::default();
        let dir = std::path::absolute(out.join("postgres")).expect("an absolute path");
        let _ = std::fs::remove_dir_all(&dir);
        let postgres = Postgres {
            port: ports.next(),
            dir,
        };
        postgres.script(&["start", "--port", &postgres.port.to_string()]);
        let cluster = tokio::task::spawn_blocking(Broker::start_cluster).await.unwrap();
        let server = format!("postgres://postgres@127.0.0.1:{}", postgres.port);
        let context = TestContext::with_servers(cluster.bootstrap_servers(), &server);

        let producers: Vec<Service> = (1..=PRODUCERS)
            .map(|n| {
                let port = ports.next();
                let mut env = vec![
                    ("APP_HTTP__PORT".to_owned(), port.to_string()),
                    // Every login comes from 127.0.0.1.
                    (
                        "APP_LOGIN_LIMIT__PER_ADDRESS_PER_MINUTE".to_owned(),
                        "100000".to_owned(),
                    ),
                ];
                env.extend(owned(&REPLICATED));
                Service {
                    name: format!("producer-{n}"),
                    port,
                    env,
                    process: None,
                    database: None,
                }
            })
            .collect();
        let mut consumers = Vec::new();
        for n in 1..=CONSUMERS + 1 {
            let proxy = FaultProxy::postgres(format!("127.0.0.1:{}", postgres.port), Mode::Forward).await;
            let port = ports.next();
            let database = context
                .consumer_database_url
                .replace(&format!(":{}/", postgres.port), &format!(":{}/", proxy.port));
            let mut env = vec![
                ("APP_HTTP__PORT".to_owned(), port.to_string()),
                ("APP_DATABASE__URL".to_owned(), database),
            ];
            env.extend(owned(&REPLICATED));
            env.extend(owned(&RETRIES));
            consumers.push(Service {
                name: format!("consumer-{n}"),
                port,
                env,
                process: None,
                database: Some(proxy),
            });
        }
        let mut world = Self {
            cluster: Some(cluster),
            context,
            postgres,
            producers,
            consumers,
        };
        for index in 0..PRODUCERS {
            world.start_producer(index).await;
        }
        for index in 0..CONSUMERS {
            world.start_consumer(index).await;
        }
        world
    }

    /// The producers' URLs, which stay the same across restarts.
    pub fn producer_urls(&self) -> Vec<String> {
        self.producers.iter().map(Service::url).collect()
    }

    /// Starts producer `index` (again) and waits until it is live.
    pub async fn start_producer(&mut self, index: usize) {
        let process = self
            .context
            .start_producer_process_with(&self.producers[index].env())
            .await;
        self.producers[index].process = Some(process);
    }

    /// Starts consumer `index` (again), calling producer `index % 2`, and
    /// waits until it is live.
    pub async fn start_consumer(&mut self, index: usize) {
        let producer = self.producers[index % PRODUCERS].url();
        let process = self
            .context
            .start_consumer_process(&producer, &self.consumers[index].env())
            .await;
        self.consumers[index].process = Some(process);
    }

    /// Services that exited without being told to: each is started again,
    /// as ECS would (the added consumer is not). Returns what happened.
    pub async fn restart_exited(&mut self) -> Vec<String> {
        let mut said = Vec::new();
        let producers = exited(&mut self.producers, &mut said);
        let consumers = exited(&mut self.consumers, &mut said);
        for index in producers {
            self.start_producer(index).await;
        }
        for index in consumers.into_iter().filter(|index| *index < CONSUMERS) {
            self.start_consumer(index).await;
        }
        said
    }

    /// The cluster.
    pub fn cluster(&self) -> &Broker {
        self.cluster.as_ref().expect("the cluster")
    }

    /// Runs `action` on the cluster on a blocking thread (as
    /// `scripts/broker.sh` blocks), and takes the cluster back.
    pub async fn with_cluster(&mut self, action: impl FnOnce(&mut Broker) + Send + 'static) {
        e2e::broker::on_blocking_thread(&mut self.cluster, action).await;
    }

    /// The node that leads `partition` of `topic`, from the cluster's
    /// metadata.
    pub async fn leader_of(&self, topic: Topic, partition: i32) -> Option<u8> {
        let name = self.context.topics.name(topic).to_owned();
        e2e::broker::leader_of(self.cluster().bootstrap_servers(), name, partition).await
    }

    /// Stops every service (SIGTERM), the cluster and PostgreSQL.
    pub async fn stop(mut self) {
        for service in self.consumers.iter_mut().chain(&mut self.producers) {
            if let Some(process) = service.process.take() {
                let _ = tokio::time::timeout(Duration::from_secs(30), process.terminate(Duration::from_secs(20))).await;
            }
        }
        drop(self.cluster.take());
        self.postgres.script(&["stop"]);
    }
}

/// The indexes of `services` whose process has exited, each then marked
/// stopped and said in `said`.
fn exited(services: &mut [Service], said: &mut Vec<String>) -> Vec<usize> {
    let mut indexes = Vec::new();
    for (index, service) in services.iter_mut().enumerate() {
        if let Some(status) = service.process.as_mut().and_then(ServiceProcess::exited) {
            let log = service.log();
            said.push(format!(
                "{} exited on its own ({status}); its log: {}",
                service.name,
                log.display()
            ));
            service.process = None;
            indexes.push(index);
        }
    }
    indexes
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

/// Free loopback ports between 20000 and 30000: below Linux's ephemeral
/// ports (32768 up), so that no outgoing connection takes one while its
/// service is down.
#[derive(Default)]
struct PortPicker {
    taken: Vec<u16>,
}

impl PortPicker {
    fn next(&mut self) -> u16 {
        loop {
            let port = fastrand::u16(20_000..30_000);
            if !self.taken.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                self.taken.push(port);
                return port;
            }
        }
    }
}
