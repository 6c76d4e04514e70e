//! Faults of a three-broker Apache Kafka cluster (replication factor 3,
//! `min.insync.replicas` 2, idempotent producer with `acks=all`), with both
//! services running as processes and users created and logging in over
//! HTTP at a steady rate throughout:
//!
//! - the leader of a busy partition is killed with SIGKILL;
//! - a broker is paused with SIGSTOP for longer than its session timeout;
//! - two of the three brokers are down, so every partition is under
//!   `min.insync.replicas`, then both come back;
//! - one partition cannot be written while the others can.
//!
//! In each case every accepted request is answered, every accepted event is
//! applied exactly once and in the order it was accepted per user and topic,
//! and the relay and the consumer resume by themselves within
//! [`RECOVERY_BOUND`] of the fault's end (docs/delivery.md).
//!
//! The tests take turns ([`ONE_CLUSTER_AT_A_TIME`]): three JVMs per test are
//! what two cores carry.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::broker::Broker;
use e2e::process::{ServiceProcess, REPLICATED};
use e2e::{create_user, eventually, issue_token, TestContext};
use kafka_service::Topic;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use reqwest::Client;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Longest the pipeline may take, once a fault is over (the last broker
/// back and accepting clients), to apply every event accepted before and
/// during it. docs/delivery.md states it.
const RECOVERY_BOUND: Duration = Duration::from_secs(30);

/// How often the load starts a round: one user created, then two logins
/// (three events, two of them on the same topic, so their order matters).
const ROUND_INTERVAL: Duration = Duration::from_millis(250);

/// Load before a fault begins, and after it ends.
const STEADY: Duration = Duration::from_secs(5);

/// How long a broker stays killed or paused: over twice
/// `broker.session.timeout.ms` (3 s, scripts/broker.sh), so the controller
/// fences it and moves its leaderships.
const OUTAGE: Duration = Duration::from_secs(8);

static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The producer's settings: [`REPLICATED`], and a login limit per client
/// address above the load's rate (every login comes from 127.0.0.1).
const PRODUCER: [(&str, &str); 5] = [
    REPLICATED[0],
    REPLICATED[1],
    REPLICATED[2],
    REPLICATED[3],
    ("APP_LOGIN_LIMIT__PER_ADDRESS_PER_MINUTE", "100000"),
];

/// A cluster and both services on it.
struct World {
    /// `None` only while [`with_cluster`](Self::with_cluster) runs.
    cluster: Option<Broker>,
    context: TestContext,
    producer: ServiceProcess,
    consumer: ServiceProcess,
    client: Client,
}

impl World {
    async fn start() -> Self {
        let cluster = start_cluster().await;
        let context = TestContext::with_broker(cluster.bootstrap_servers());
        Self::start_on(cluster, context, &[]).await
    }

    /// Starts the services of `context` on `cluster`, the producer with
    /// `producer_env` besides [`PRODUCER`].
    async fn start_on(cluster: Broker, context: TestContext, producer_env: &[(&str, &str)]) -> Self {
        let env: Vec<(&str, &str)> = PRODUCER.iter().chain(producer_env).copied().collect();
        let producer = context.start_producer_process_with(&env).await;
        let consumer = context.start_consumer_process(&producer.url(), &REPLICATED).await;
        Self {
            cluster: Some(cluster),
            context,
            producer,
            consumer,
            client: Client::new(),
        }
    }

    /// Runs `action` on the cluster on a blocking thread (as
    /// `scripts/broker.sh` blocks), and takes the cluster back.
    async fn with_cluster(&mut self, action: impl FnOnce(&mut Broker) + Send + 'static) {
        e2e::broker::on_blocking_thread(&mut self.cluster, action).await;
    }

    fn cluster(&self) -> &Broker {
        self.cluster.as_ref().expect("the cluster")
    }

    /// The node that leads `partition` of `topic`.
    async fn leader_of(&self, topic: Topic, partition: i32) -> u8 {
        let name = self.context.topics.name(topic).to_owned();
        e2e::broker::leader_of(self.cluster().bootstrap_servers(), name, partition)
            .await
            .expect("a leader")
    }

    async fn ready(&self, service: &ServiceProcess) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}/health/ready", service.url()))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn metric(&self, service: &ServiceProcess, series: &str) -> f64 {
        let text = e2e::metrics::scrape(&self.client, &service.url()).await;
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} in {}'s metrics", service.name))
    }

    /// How long after `since` every event accepted so far (every outbox
    /// row now) was applied.
    ///
    /// # Panics
    ///
    /// When that takes longer than [`RECOVERY_BOUND`].
    async fn caught_up(&self, since: Instant) -> Duration {
        let producer_pool = self.context.producer_pool().await;
        let consumer_pool = self.context.consumer_pool().await;
        let accepted: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM outbox")
            .fetch_all(&producer_pool)
            .await
            .unwrap();
        eventually(
            RECOVERY_BOUND.saturating_sub(since.elapsed()),
            &format!("the {} events accepted so far to be applied", accepted.len()),
            || async {
                let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE event_id = ANY($1)")
                    .bind(&accepted)
                    .fetch_one(&consumer_pool)
                    .await
                    .ok()?;
                (applied == i64::try_from(accepted.len()).unwrap()).then_some(())
            },
        )
        .await;
        let took = since.elapsed();
        producer_pool.close().await;
        consumer_pool.close().await;
        took
    }

    /// Waits until every event `load` accepted is applied, asserts the
    /// exact outcome ([`assert_history`]) and that both services say all is
    /// well again, and stops the services.
    async fn finish(self, load: Accepted) {
        let consumer_pool = self.context.consumer_pool().await;
        let producer_pool = self.context.producer_pool().await;
        let expected = load.events();
        e2e::load::wait_for_processed(&consumer_pool, expected, RECOVERY_BOUND).await;
        assert_history(&self.context, &producer_pool, &consumer_pool, &load).await;
        let (status, body) = self.ready(&self.consumer).await;
        assert_eq!(status, 200, "the consumer is ready again: {body}");
        // Measured at the relay's next read (every poll interval, 200 ms).
        eventually(Duration::from_secs(5), "outbox_pending_rows 0", || async {
            (self.metric(&self.producer, "outbox_pending_rows").await == 0.0).then_some(())
        })
        .await;

        self.consumer.kill().await;
        self.producer.kill().await;
        producer_pool.close().await;
        consumer_pool.close().await;
        self.context.drop_databases().await;
    }
}

/// What the steady load was told: each user created, with the tokens
/// issued to them.
#[derive(Default, Clone)]
struct Accepted(Arc<Mutex<HashMap<Uuid, i64>>>);

impl Accepted {
    /// Events the accepted requests emitted: one per user, one per token.
    fn events(&self) -> i64 {
        let users = self.0.lock().unwrap();
        users.values().map(|tokens| 1 + tokens).sum()
    }
}

/// Creates a user and logs them in twice every [`ROUND_INTERVAL`] until
/// `stop`; every request must succeed (the producer takes requests with or
/// without a broker: the outbox keeps the events).
fn steady_load(world: &World, stop: CancellationToken) -> (Accepted, tokio::task::JoinHandle<()>) {
    let accepted = Accepted::default();
    let (client, url, tally) = (world.client.clone(), world.producer.url(), accepted.clone());
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(ROUND_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while stop.run_until_cancelled(ticks.tick()).await.is_some() {
            let user = create_user(&client, &url, "cluster").await;
            tally.0.lock().unwrap().insert(user.id, 0);
            for _ in 0..2 {
                issue_token(&client, &url, &user.username).await;
                *tally.0.lock().unwrap().get_mut(&user.id).unwrap() += 1;
            }
        }
    });
    (accepted, task)
}

/// Every accepted event applied exactly once, each user's events of one
/// topic applied in the order the producer accepted them, every user with
/// their tokens in the read model, nothing dead-lettered, and the group's
/// offsets committed to the end.
async fn assert_history(context: &TestContext, producer_pool: &PgPool, consumer_pool: &PgPool, load: &Accepted) {
    let accepted: Vec<(Uuid, String, String)> =
        sqlx::query_as("SELECT event_id, subject, event_type FROM outbox ORDER BY id")
            .fetch_all(producer_pool)
            .await
            .unwrap();
    let applied: HashMap<Uuid, i64> = sqlx::query_as("SELECT event_id, sequence FROM processed_events")
        .fetch_all(consumer_pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(
        i64::try_from(accepted.len()).unwrap(),
        load.events(),
        "the outbox holds one event per accepted request"
    );
    assert_eq!(applied.len(), accepted.len(), "every accepted event applied, once");
    let mut last: HashMap<(&str, &str), i64> = HashMap::new();
    for (event_id, subject, event_type) in &accepted {
        let sequence = *applied
            .get(event_id)
            .unwrap_or_else(|| panic!("{event_type} {event_id} of {subject} applied"));
        if let Some(before) = last.insert((subject, event_type), sequence) {
            assert!(
                sequence > before,
                "{event_type} {event_id} of {subject} applied before an event of its user accepted earlier"
            );
        }
    }
    let counts = e2e::read_model_token_counts(consumer_pool).await;
    let users = load.0.lock().unwrap().clone();
    assert_eq!(counts, users, "every user in the read model with their tokens");
    e2e::load::assert_per_user_order(consumer_pool).await;
    e2e::load::assert_offsets_at_end(context).await;
    assert!(
        e2e::load::dead_letters(context).await.is_empty(),
        "nothing dead-lettered"
    );
}

/// A three-broker cluster, started on a blocking thread (the script
/// blocks for the 20 s or so it takes).
async fn start_cluster() -> Broker {
    tokio::task::spawn_blocking(Broker::start_cluster).await.unwrap()
}

fn client_config(bootstrap_servers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap_servers);
    config
}

/// Steady load; after [`STEADY`] `fault` begins, and returns once the
/// fault is over; steady load for [`STEADY`] more, or until every event
/// accepted up to the fault's end is applied, whichever is later. Then the
/// exact outcome ([`World::finish`]). Returns how long after the fault's
/// end the events accepted up to then were all applied.
async fn through(mut world: World, fault: impl AsyncFnOnce(&mut World)) -> Duration {
    let stop = CancellationToken::new();
    let (accepted, load) = steady_load(&world, stop.clone());
    tokio::time::sleep(STEADY).await;
    fault(&mut world).await;
    let over = Instant::now();
    let (took, ()) = tokio::join!(world.caught_up(over), tokio::time::sleep(STEADY));
    stop.cancel();
    load.await.expect("every request of the load succeeded");
    world.finish(accepted).await;
    took
}

#[tokio::test]
async fn killing_the_leader_of_a_busy_partition_loses_and_reorders_nothing() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let world = World::start().await;
    let took = through(world, async |world| {
        let leader = world.leader_of(Topic::IssuedToken, 0).await;
        world.cluster().kill_node(leader);
        let killed = Instant::now();
        // Two brokers carry every partition meanwhile: once the controller
        // has moved the dead broker's leaderships, events flow on.
        let failover = world.caught_up(killed).await;
        println!("leader killed: every event accepted before the kill applied {failover:?} after it");
        tokio::time::sleep(OUTAGE.saturating_sub(killed.elapsed())).await;
        assert_eq!(world.ready(&world.producer).await.0, 200);
        world.with_cluster(Broker::start).await;
    })
    .await;
    println!("leader killed: every event applied {took:?} after the broker was back");
}

#[tokio::test]
async fn a_broker_paused_past_its_session_timeout_loses_and_reorders_nothing() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let world = World::start().await;
    let took = through(world, async |world| {
        let leader = world.leader_of(Topic::IssuedToken, 0).await;
        world.cluster().pause_node(leader);
        tokio::time::sleep(OUTAGE).await;
        assert_eq!(world.ready(&world.producer).await.0, 200);
        world.cluster().resume_node(leader);
    })
    .await;
    println!("broker paused: every event applied {took:?} after it resumed");
}

#[tokio::test]
async fn two_of_three_brokers_down_hold_events_back_until_they_return() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let world = World::start().await;
    let took = through(world, async |world| {
        world.cluster().kill_node(2);
        world.cluster().kill_node(3);
        tokio::time::sleep(OUTAGE).await;
        // Under min.insync.replicas nothing is written: the producer still
        // takes requests, and its metrics show the events waiting.
        let (status, body) = world.ready(&world.producer).await;
        assert_eq!(status, 200, "the producer takes requests: {body}");
        eventually(
            Duration::from_secs(10),
            "the outbox metrics to show the wait",
            || async {
                let pending = world.metric(&world.producer, "outbox_pending_rows").await;
                let age = world.metric(&world.producer, "outbox_oldest_pending_age_seconds").await;
                (pending > 0.0 && age >= 2.0).then_some(())
            },
        )
        .await;
        world.with_cluster(Broker::start).await;
    })
    .await;
    println!("two brokers down: every event applied {took:?} after both were back");
}

/// The partition of `new-user-created` that cannot be written once node 1
/// is down: its replicas are nodes 1 and 2, the other partitions' are 2
/// and 3, and the topic's `min.insync.replicas` is 2.
const STUCK: i32 = 5;

/// While one partition cannot be written, the relay goes on publishing to
/// the others: every user whose records belong to another partition is
/// applied, and what waits is exactly the stuck partition's records. Then
/// the partition can be written again, and everything arrives, in order.
#[tokio::test]
async fn the_relay_keeps_publishing_to_the_partitions_that_can_be_written() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = start_cluster().await;
    let context = TestContext::with_broker(cluster.bootstrap_servers());
    create_with_one_unwritable_partition(&cluster.bootstrap_servers(), context.topics.name(Topic::NewUserCreated))
        .await;
    // Batches of one row, so that four batches in flight are four rows:
    // before the relay settled reports row by row, four batches waiting on
    // the stuck partition stopped all publishing.
    let mut world = World::start_on(cluster, context, &[("APP_OUTBOX__BATCH_SIZE", "1")]).await;
    world.cluster().kill_node(1);
    let consumer_pool = world.context.consumer_pool().await;
    let producer_pool = world.context.producer_pool().await;

    // At least 40 users, and on until 3 of them belong to the stuck
    // partition (40 random keys miss one partition of 8 in 0.5 % of runs;
    // bounded at 400).
    let accepted = Accepted::default();
    let mut expected_stuck = HashSet::new();
    let mut users = 0;
    while (users < 40 || expected_stuck.len() < 3) && users < 400 {
        let user = create_user(&world.client, &world.producer.url(), "stuck").await;
        issue_token(&world.client, &world.producer.url(), &user.username).await;
        accepted.0.lock().unwrap().insert(user.id, 1);
        if partition_of(&user.id.to_string()) == STUCK {
            expected_stuck.insert(user.id);
        }
        users += 1;
    }
    // A user's token lands on the same partition of `issued-token` (8
    // partitions, keyed the same) as their creation would on
    // `new-user-created`: the users of the stuck partition are those whose
    // token was applied from it.
    let stuck: HashSet<Uuid> = eventually(
        Duration::from_secs(30),
        "every token applied, and every creation but the stuck partition's",
        || async {
            let tokens: Vec<(String, i32)> = sqlx::query_as(
                "SELECT subject, \"partition\" FROM processed_events WHERE event_type = 'user.token_issued.v1'",
            )
            .fetch_all(&consumer_pool)
            .await
            .ok()?;
            let created: HashSet<String> =
                sqlx::query_scalar("SELECT subject FROM processed_events WHERE event_type = 'user.created.v1'")
                    .fetch_all(&consumer_pool)
                    .await
                    .ok()?
                    .into_iter()
                    .collect();
            (tokens.len() == users).then_some(())?;
            let stuck: HashSet<Uuid> = tokens
                .iter()
                .filter(|(_, partition)| *partition == STUCK)
                .map(|(subject, _)| subject.parse().unwrap())
                .collect();
            let others_applied = tokens
                .iter()
                .filter(|(_, partition)| *partition != STUCK)
                .all(|(subject, _)| created.contains(subject));
            (others_applied && created.len() + stuck.len() == users).then_some(stuck)
        },
    )
    .await;
    assert_eq!(stuck, expected_stuck, "the users whose keys hash to partition {STUCK}");
    let pending: HashSet<Uuid> =
        sqlx::query_scalar::<_, String>("SELECT subject FROM outbox WHERE published_at IS NULL")
            .fetch_all(&producer_pool)
            .await
            .unwrap()
            .into_iter()
            .map(|subject| subject.parse().unwrap())
            .collect();
    assert_eq!(pending, stuck, "what waits is exactly the stuck partition's records");

    world.with_cluster(Broker::start).await;
    let took = world.caught_up(Instant::now()).await;
    producer_pool.close().await;
    consumer_pool.close().await;
    world.finish(accepted).await;
    println!(
        "one partition stuck: {} users waited; applied {took:?} after it could be written",
        stuck.len()
    );
}

/// The partition of 8 that the services' producer gives `key`: the Java
/// client's (murmur2), as `kafka_service::producer::PARTITIONER` asks.
fn partition_of(key: &str) -> i32 {
    e2e::partitioner::java_partition(key.as_bytes(), 8)
}

/// Creates `topic` with 8 partitions of two replicas each (Kafka wants
/// the same count for all): partition [`STUCK`] on nodes 1 and 2, the
/// others on 2 and 3; `min.insync.replicas` 2, so that without node 1 the
/// stuck partition takes no `acks=all` write.
async fn create_with_one_unwritable_partition(bootstrap_servers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap_servers).create().unwrap();
    let assignment: Vec<[i32; 2]> = (0..8)
        .map(|partition| match partition {
            STUCK => [1, 2],
            even if even % 2 == 0 => [2, 3],
            _ => [3, 2],
        })
        .collect();
    let replicas: Vec<&[i32]> = assignment.iter().map(<[i32; 2]>::as_slice).collect();
    let spec = NewTopic::new(topic, 8, TopicReplication::Variable(&replicas)).set("min.insync.replicas", "2");
    let created = admin.create_topics([&spec], &AdminOptions::new()).await.unwrap();
    assert!(created.iter().all(Result::is_ok), "{topic} created: {created:?}");
}
