//! The broker goes down while users are created: requests still succeed,
//! and every event arrives once the broker is back.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::{create_user, eventually, read_model_token_counts, TestContext};
use reqwest::Client;

/// A Tansu broker of this test's own, on a free loopback port, with SQLite
/// storage in a fresh directory (so it can be stopped and started again
/// with its data).
struct Broker {
    port: u16,
    dir: PathBuf,
    process: Option<Child>,
}

impl Broker {
    fn start_new() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("e2e-tansu-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut broker = Self {
            port,
            dir,
            process: None,
        };
        broker.start();
        broker
    }

    fn start(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.join("tansu.log")).unwrap();
        let child = Command::new(std::env::var("TANSU").unwrap_or_else(|_| "tansu".to_owned()))
            .args([
                "broker",
                "--storage-engine",
                "sqlite://tansu.db",
                "--listener-url",
                &url,
            ])
            .args(["--advertised-listener-url", &url])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tansu is installed (scripts/broker.sh installs it)");
        self.process = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("tansu did not start on port {}", self.port);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn users_created_while_the_broker_is_down_arrive_after_it_returns() {
    let mut broker = Broker::start_new();
    let context = TestContext::with_broker(broker.bootstrap_servers());
    let producer = context.spawn_producer().await;
    let consumer = context.spawn_consumer(&producer.url()).await;
    let client = Client::new();
    let pool = context.consumer_pool().await;

    // The flow works before the outage.
    let before = create_user(&client, &producer.url(), "before").await;
    eventually(Duration::from_secs(30), "the first user to arrive", || async {
        read_model_token_counts(&pool)
            .await
            .contains_key(&before.id)
            .then_some(())
    })
    .await;

    broker.kill();
    let mut during = Vec::new();
    for _ in 0..10 {
        // create_user asserts 201: the request does not wait for Kafka.
        during.push(create_user(&client, &producer.url(), "during").await);
    }
    let ready = client
        .get(format!("{}/health/ready", producer.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "readiness reports the broker down");

    broker.start();
    eventually(
        Duration::from_secs(90),
        "every user created during the outage to arrive",
        || async {
            let counts = read_model_token_counts(&pool).await;
            during.iter().all(|user| counts.contains_key(&user.id)).then_some(())
        },
    )
    .await;
    let producer_pool = context.producer_pool().await;
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&producer_pool)
        .await
        .unwrap();
    assert_eq!(pending, 0, "every outbox row is marked published");
    let processed: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(processed, 11, "each event applied once");

    consumer.stop().await.unwrap();
    producer.stop().await.unwrap();
    context.drop_databases().await;
}
