//! The fault schedule, drawn from a seed, and how each fault is injected
//! and healed. Faults run one at a time: each is injected, held, and
//! healed before the next quiet interval begins, so that every moment of
//! the soak is either inside one fault's window or healed.
//!
//! The schedule deals from a deck holding one fault of every kind,
//! shuffled; when the deck is empty it is shuffled again. The same seed
//! deals the same faults, with the same targets and hold times, in the
//! same order.

use std::fmt;
use std::time::Duration;

use e2e::broker::Broker;
use e2e::proxy::Mode;
use kafka_service::Topic;
use sqlx::{Connection, PgConnection};

use crate::deployment::{Deployment, CONSUMERS, PRODUCERS};
use crate::peer::{self, Hostile};

/// How long a broker killed as a partition's leader stays down: over twice
/// `broker.session.timeout.ms` (3 s, scripts/broker.sh), so the controller
/// fences it and moves its leaderships.
const LEADER_OUTAGE: Duration = Duration::from_secs(8);

/// Records redelivered just before the database freezes: about 10 s of the
/// consumers' work at the soak's traffic.
const REDELIVERY_BURST: usize = 2_000;

/// How long a service has to exit after SIGTERM.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(30);

/// One fault, with its target.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// SIGKILL producer `n` (0-based), then start it again.
    KillProducer(usize),
    /// SIGTERM producer `n`, then start it again.
    TerminateProducer(usize),
    /// SIGKILL consumer `n`, then start it again.
    KillConsumer(usize),
    /// SIGTERM consumer `n`, then start it again.
    TerminateConsumer(usize),
    /// SIGSTOP broker node `n` (1-based), then SIGCONT.
    PauseBroker(u8),
    /// SIGSTOP producer `n`, then SIGCONT.
    PauseProducer(usize),
    /// SIGSTOP consumer `n`, then SIGCONT.
    PauseConsumer(usize),
    /// SIGKILL the broker that leads `issued-token`'s partition `n`, then
    /// start it again.
    KillPartitionLeader(i32),
    /// Restart PostgreSQL (fast shutdown: open transactions roll back).
    RestartPostgres,
    /// `pg_terminate_backend` on one of the consumers' database sessions,
    /// preferably one inside a transaction.
    TerminateBackend,
    /// Every consumer's database connections freeze for good the next
    /// time they are inside a transaction (the proxy's
    /// `FreezeInTransaction`). Just before, up to 2000 records are
    /// redelivered, so that the consumers are busy.
    FreezeDatabase,
    /// A fourth consumer joins the group, then leaves it (SIGTERM).
    AddConsumer,
    /// Records from a hostile peer.
    Peer(Hostile),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KillProducer(n) => write!(f, "SIGKILL producer-{}, restart", n + 1),
            Self::TerminateProducer(n) => write!(f, "SIGTERM producer-{}, restart", n + 1),
            Self::KillConsumer(n) => write!(f, "SIGKILL consumer-{}, restart", n + 1),
            Self::TerminateConsumer(n) => write!(f, "SIGTERM consumer-{}, restart", n + 1),
            Self::PauseBroker(n) => write!(f, "SIGSTOP broker {n}, SIGCONT"),
            Self::PauseProducer(n) => write!(f, "SIGSTOP producer-{}, SIGCONT", n + 1),
            Self::PauseConsumer(n) => write!(f, "SIGSTOP consumer-{}, SIGCONT", n + 1),
            Self::KillPartitionLeader(p) => write!(f, "SIGKILL the leader of issued-token[{p}], restart"),
            Self::RestartPostgres => write!(f, "restart PostgreSQL"),
            Self::TerminateBackend => write!(f, "terminate a consumer's database session"),
            Self::FreezeDatabase => write!(f, "freeze the consumers' database connections mid-transaction"),
            Self::AddConsumer => write!(f, "add consumer-{}, then remove it", CONSUMERS + 1),
            Self::Peer(hostile) => write!(f, "hostile: {hostile}"),
        }
    }
}

/// A fault as dealt: the quiet time before it, and how long it is held.
pub struct Planned {
    /// The fault.
    pub fault: Fault,
    /// Quiet time before it, 2 to 6 s.
    pub quiet: Duration,
    /// How long it lasts before it is healed, 3 to 10 s (not used by
    /// instant faults).
    pub hold: Duration,
}

/// What was injected, when (seconds since the soak's start), and what came
/// of it.
pub struct Injected {
    /// The fault, as [`Fault`] displays it.
    pub fault: String,
    /// When it was injected.
    pub at: Duration,
    /// When it was healed (for instant faults, when it was sent).
    pub healed: Duration,
    /// What happened, e.g. the broker that was killed.
    pub outcome: String,
}

/// The fault schedule of one seed.
pub struct Schedule {
    rng: fastrand::Rng,
    deck: Vec<Fault>,
    dealt_rounds: u32,
}

impl Schedule {
    /// The schedule of `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
            deck: Vec::new(),
            dealt_rounds: 0,
        }
    }

    /// Whether one fault of every kind has been dealt and injected.
    pub fn first_round_done(&self) -> bool {
        self.dealt_rounds > 1 || (self.dealt_rounds == 1 && self.deck.is_empty())
    }

    /// The next fault.
    pub fn next(&mut self) -> Planned {
        if self.deck.is_empty() {
            self.deck = self.shuffled_deck();
            self.dealt_rounds += 1;
        }
        let fault = self.deck.pop().expect("a full deck");
        Planned {
            fault,
            quiet: Duration::from_millis(self.rng.u64(2_000..=6_000)),
            hold: Duration::from_millis(self.rng.u64(3_000..=10_000)),
        }
    }

    fn shuffled_deck(&mut self) -> Vec<Fault> {
        let rng = &mut self.rng;
        let mut deck = vec![
            Fault::KillProducer(rng.usize(..PRODUCERS)),
            Fault::TerminateProducer(rng.usize(..PRODUCERS)),
            Fault::KillConsumer(rng.usize(..CONSUMERS)),
            Fault::TerminateConsumer(rng.usize(..CONSUMERS)),
            Fault::PauseBroker(rng.u8(1..=3)),
            Fault::PauseProducer(rng.usize(..PRODUCERS)),
            Fault::PauseConsumer(rng.usize(..CONSUMERS)),
            Fault::KillPartitionLeader(rng.i32(0..8)),
            Fault::RestartPostgres,
            Fault::TerminateBackend,
            Fault::FreezeDatabase,
            Fault::AddConsumer,
        ];
        deck.extend(Hostile::ALL.map(Fault::Peer));
        rng.shuffle(&mut deck);
        deck
    }
}

/// Injects `planned`, holds it, heals it, and says what happened. Hostile
/// records sent are added to `peers`.
///
/// # Panics
///
/// When a service or broker does not come back (its log is named).
pub async fn inject(world: &mut Deployment, planned: &Planned, peers: &mut Vec<peer::Injection>) -> String {
    let hold = planned.hold;
    match planned.fault {
        Fault::KillProducer(n) => {
            world.producers[n].process.take().expect("running").kill().await;
            tokio::time::sleep(hold).await;
            world.start_producer(n).await;
            format!("down {} s", hold.as_secs())
        }
        Fault::TerminateProducer(n) => {
            let process = world.producers[n].process.take().expect("running");
            let (code, took) = process.terminate(SHUTDOWN_LIMIT).await;
            tokio::time::sleep(hold).await;
            world.start_producer(n).await;
            format!("exit {code:?} after {} ms, down {} s", took.as_millis(), hold.as_secs())
        }
        Fault::KillConsumer(n) => {
            world.consumers[n].process.take().expect("running").kill().await;
            tokio::time::sleep(hold).await;
            world.start_consumer(n).await;
            format!("down {} s", hold.as_secs())
        }
        Fault::TerminateConsumer(n) => {
            let process = world.consumers[n].process.take().expect("running");
            let (code, took) = process.terminate(SHUTDOWN_LIMIT).await;
            tokio::time::sleep(hold).await;
            world.start_consumer(n).await;
            format!("exit {code:?} after {} ms, down {} s", took.as_millis(), hold.as_secs())
        }
        Fault::PauseBroker(node) => {
            world.cluster().pause_node(node);
            tokio::time::sleep(hold).await;
            world.cluster().resume_node(node);
            format!("paused {} s", hold.as_secs())
        }
        Fault::PauseProducer(n) => {
            world.producers[n].process().pause();
            tokio::time::sleep(hold).await;
            world.producers[n].process().resume();
            format!("paused {} s", hold.as_secs())
        }
        Fault::PauseConsumer(n) => {
            world.consumers[n].process().pause();
            tokio::time::sleep(hold).await;
            world.consumers[n].process().resume();
            format!("paused {} s", hold.as_secs())
        }
        Fault::KillPartitionLeader(partition) => {
            let Some(leader) = world.leader_of(Topic::IssuedToken, partition).await else {
                return "no leader known; nothing killed".to_owned();
            };
            world.cluster().kill_node(leader);
            tokio::time::sleep(hold.max(LEADER_OUTAGE)).await;
            world.with_cluster(Broker::start).await;
            format!("broker {leader} down {} s", hold.max(LEADER_OUTAGE).as_secs())
        }
        Fault::RestartPostgres => {
            let postgres = world.postgres.port;
            tokio::task::block_in_place(|| world.postgres.script(&["restart"]));
            format!("127.0.0.1:{postgres} restarted")
        }
        Fault::TerminateBackend => terminate_backend(world).await,
        Fault::FreezeDatabase => {
            // The consumers busy in their database, each connection frozen
            // the next time it is inside a transaction: a query in flight
            // that is never answered, as from a server that freezes under
            // load.
            let redelivered = peer::redeliver(world, REDELIVERY_BURST).await;
            for consumer in &world.consumers {
                consumer
                    .database
                    .as_ref()
                    .expect("a consumer's proxy")
                    .set(Mode::FreezeInTransaction);
            }
            tokio::time::sleep(hold).await;
            for consumer in &world.consumers {
                consumer
                    .database
                    .as_ref()
                    .expect("a consumer's proxy")
                    .set(Mode::Forward);
            }
            format!(
                "{} s, after {redelivered} records were redelivered; the connections frozen then stay frozen",
                hold.as_secs()
            )
        }
        Fault::AddConsumer => {
            world.start_consumer(CONSUMERS).await;
            // Long enough for the group to take it in and give its
            // partitions back.
            tokio::time::sleep(hold.max(Duration::from_secs(8))).await;
            let process = world.consumers[CONSUMERS].process.take().expect("running");
            let (code, took) = process.terminate(SHUTDOWN_LIMIT).await;
            format!(
                "member for {} s, exit {code:?} after {} ms",
                hold.max(Duration::from_secs(8)).as_secs(),
                took.as_millis()
            )
        }
        Fault::Peer(hostile) => {
            let written = peer::send(world, hostile).await;
            let said: Vec<String> = written
                .iter()
                .map(|record| format!("{}: {record}", record.kind))
                .collect();
            peers.extend(written);
            said.join("; ")
        }
    }
}

/// The consumers' database name.
fn consumer_database(world: &Deployment) -> String {
    world
        .context
        .consumer_database_url
        .rsplit('/')
        .next()
        .expect("a database name")
        .to_owned()
}

/// Terminates one session of the consumers' database, waiting up to 2 s
/// for one that is inside a transaction (or running a statement); failing
/// that, any idle one.
async fn terminate_backend(world: &Deployment) -> String {
    let server = format!("postgres://postgres@127.0.0.1:{}/postgres", world.postgres.port);
    let Ok(mut admin) = PgConnection::connect(&server).await else {
        return "PostgreSQL not reachable; nothing terminated".to_owned();
    };
    let database = consumer_database(world);
    let query = "SELECT pid, state FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid() AND state IN ('idle in transaction', 'active') \
                 LIMIT 1";
    let mut chosen: Option<(i32, String)> = None;
    for _ in 0..100 {
        chosen = sqlx::query_as(query)
            .bind(&database)
            .fetch_optional(&mut admin)
            .await
            .ok()
            .flatten();
        if chosen.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if chosen.is_none() {
        chosen = sqlx::query_as(
            "SELECT pid, coalesce(state, '') FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() LIMIT 1",
        )
        .bind(&database)
        .fetch_optional(&mut admin)
        .await
        .ok()
        .flatten();
    }
    let Some((pid, state)) = chosen else {
        return "no session of the consumers' database; nothing terminated".to_owned();
    };
    let _ = sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&mut admin)
        .await;
    let _ = admin.close().await;
    format!("session {pid} terminated ({state})")
}
