//! The system's runs: both services started against the local broker and
//! PostgreSQL, driven through the outbox and over HTTP.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHasher};
use e2e::process::ServiceProcess;
use e2e::TestContext;
use events::UserEvent;
use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::figures::{
    percentile, CpuProfile, DrainFigures, HttpFigures, LatencyStages, LatencySummary, PipelineFigures,
    RelayDrainFigures, Samples, ScalingFigures, StageSample,
};
use super::process::{cpu_seconds, group_cpu_seconds, CpuSeconds, MemoryWatch, Pressure, PressureWatch};
use super::raw::{user_created, Tuning};

/// The release-built services, their databases and a service credential.
pub struct System {
    context: TestContext,
    producer: ServiceProcess,
    consumer: ServiceProcess,
    producer_pool: PgPool,
    consumer_pool: PgPool,
    token: SecretString,
    client: reqwest::Client,
}

impl System {
    /// Runs `work`, and returns its output with the CPU seconds each
    /// process used meanwhile (see [`cpu_seconds`]), most first.
    pub async fn profile<T>(&self, work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<(T, CpuProfile)> {
        let before = cpu_seconds(self.producer.pid(), self.consumer.pid());
        let started = Instant::now();
        let output = work.await?;
        let after = cpu_seconds(self.producer.pid(), self.consumer.pid());
        Ok((output, cpu_profile(before, after, started.elapsed())))
    }

    /// Starts both services (release binaries next to this one) with warn
    /// logging, login limits out of the way and `tuning`.
    pub async fn start(tuning: &Tuning) -> anyhow::Result<Self> {
        let context = TestContext::new();
        let mut env = service_env(tuning);
        env.push(("APP_LOGIN_LIMIT__PER_ADDRESS_PER_MINUTE", "10000000".to_owned()));
        env.push(("APP_LOGIN_LIMIT__PER_USERNAME_PER_MINUTE", "10000000".to_owned()));
        if let Some(batch) = tuning.outbox_batch {
            env.push(("APP_OUTBOX__BATCH_SIZE", batch.to_string()));
        }
        let quiet = borrowed(&env);
        let producer = context.start_producer_process_with(&quiet).await;
        let consumer = context.start_consumer_process(&producer.url(), &quiet).await;
        wait_for_assignment(&context, &consumer).await?;
        let producer_pool = context.producer_pool().await;
        let consumer_pool = context.consumer_pool().await;
        let keys = service_common::auth::TokenKeys::new(&SecretString::from(e2e::JWT_SECRET.to_owned()))?;
        Ok(Self {
            token: keys.service_token("bench"),
            context,
            producer,
            consumer,
            producer_pool,
            consumer_pool,
            client: reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?,
        })
    }

    /// Samples both services' resident memory every 200 ms until stopped.
    pub fn watch_memory(&self) -> MemoryWatch {
        MemoryWatch::start(self.producer.pid(), self.consumer.pid())
    }

    /// Stops both services and drops their databases.
    pub async fn stop(self) {
        self.consumer.kill().await;
        self.producer.kill().await;
        self.producer_pool.close().await;
        self.consumer_pool.close().await;
        self.context.drop_databases().await;
    }

    async fn applied(&self) -> i64 {
        e2e::load::processed_count(&self.consumer_pool).await
    }

    /// Outbox rows so far: (appended, published by the relay).
    async fn outbox(&self) -> (i64, i64) {
        sqlx::query_as("SELECT count(*), count(published_at) FROM outbox")
            .fetch_one(&self.producer_pool)
            .await
            .unwrap_or((0, 0))
    }

    /// The consumer's live feed: arrival time of each applied event, by
    /// (user id, event type).
    async fn feed(&self) -> anyhow::Result<Arrivals> {
        let response = self
            .client
            .get(format!("{}/events/stream", self.consumer.url()))
            .bearer_auth(self.token.expose_secret())
            .timeout(Duration::from_secs(24 * 3600))
            .send()
            .await?;
        anyhow::ensure!(response.status().is_success(), "feed: {}", response.status());
        let arrivals: Arrivals = Arc::default();
        let seen = Arc::clone(&arrivals);
        tokio::spawn(async move {
            let mut events = e2e::sse::EventStream::new(response);
            while let Some((_, event)) = events.next_event().await {
                let key = (
                    event["user_id"].as_str().unwrap_or_default().to_owned(),
                    event["event_type"].as_str().unwrap_or_default().to_owned(),
                );
                seen.lock().unwrap().insert(key, Instant::now());
            }
        });
        Ok(arrivals)
    }
}

type Arrivals = Arc<Mutex<HashMap<(String, String), Instant>>>;

/// Appends `event` to the producer's outbox in its own transaction, as a
/// request would.
async fn append(pool: &PgPool, event: &UserEvent) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    producer::outbox::append(&mut tx, event).await?;
    tx.commit().await?;
    producer::outbox::notify(pool).await;
    Ok(())
}

/// The pipeline run's progress, sampled every 100 ms, in time order.
#[derive(Debug, Default)]
pub struct Progress {
    /// The samples, oldest first.
    pub samples: Vec<ProgressSample>,
}

/// One sample of [`Progress`]: counts so far.
#[derive(Debug, Clone, Copy)]
pub struct ProgressSample {
    /// Seconds since the first append.
    pub seconds: f64,
    /// Events appended to the outbox.
    pub appended: i64,
    /// Outbox rows published to Kafka.
    pub published: i64,
    /// Events the consumer applied.
    pub applied: i64,
}

/// Waits until `consumer` holds every partition of the topics it reads
/// (both event topics and the retry topic). The runs are timed from their
/// first record, and would otherwise count the group's first join: Kafka
/// holds it for `group.initial.rebalance.delay.ms` (3 s), in case more
/// members come.
///
/// # Errors
///
/// When that takes over 60 s.
async fn wait_for_assignment(context: &TestContext, consumer: &ServiceProcess) -> anyhow::Result<()> {
    use kafka_service::Topic;
    let expected: i64 = context
        .topics
        .specs(&[Topic::NewUserCreated, Topic::IssuedToken, Topic::Retry])
        .iter()
        .map(|spec| i64::from(spec.partitions))
        .sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer.assigned_partitions().await.values().sum::<i64>() < expected {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the consumer was not assigned its {expected} partitions within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Step 2: `events` appended at once (8 connections, one transaction each, as
/// concurrent requests would), then waited for until all are applied.
pub async fn pipeline(system: &System, events: usize) -> anyhow::Result<(PipelineFigures, Progress)> {
    let before = system.applied().await;
    let (appended_before, published_before) = system.outbox().await;
    let batch: Vec<UserEvent> = (0..events).map(|_| user_created()).collect();
    let started = Instant::now();
    let mut progress = Progress::default();
    let appending = async {
        let results = futures::stream::iter(batch.iter().map(|event| append(&system.producer_pool, event)))
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await;
        (results, started.elapsed().as_secs_f64())
    };
    let watching = async {
        loop {
            let applied = system.applied().await - before;
            let (appended, published) = system.outbox().await;
            progress.samples.push(ProgressSample {
                seconds: started.elapsed().as_secs_f64(),
                appended: appended - appended_before,
                published: published - published_before,
                applied,
            });
            if applied >= events as i64 || started.elapsed() > Duration::from_secs(600) {
                return applied;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let ((appended, append_seconds), applied) = tokio::join!(appending, watching);
    for result in appended {
        result?;
    }
    anyhow::ensure!(
        applied >= events as i64,
        "only {applied} of {events} applied in 10 minutes"
    );
    let seconds = progress.samples.last().map_or(0.0, |sample| sample.seconds);
    Ok((
        PipelineFigures {
            events,
            seconds,
            per_s: events as f64 / seconds,
            appends_per_s: events as f64 / append_seconds,
            ratio_to_raw: 0.0,
        },
        progress,
    ))
}

/// Step 2: the relay publishing a backlog of `events` outbox rows appended
/// while it could not publish, with the consumer applying them meanwhile.
///
/// What keeps the relay from publishing is its own election: this takes
/// the relay's advisory lock (ending the leader's connection, which makes
/// it stand by and try the lock every `outbox.poll_interval_ms`), appends
/// the rows as [`pipeline`] does, and lets the lock go. Unlike a broker
/// outage, the producer client has nothing to reconnect; the rate is
/// taken from the first rows marked published to the last, by the
/// marking statements' own times (`published_at`), and the election is
/// reported apart.
pub async fn relay_drain(system: &System, events: usize) -> anyhow::Result<RelayDrainFigures> {
    let applied_before = system.applied().await;
    let mut holder = system.producer_pool.acquire().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND datname = current_database()",
        )
        .bind(producer::outbox::RELAY_APPLICATION_NAME)
        .execute(&mut *holder)
        .await?;
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(producer::outbox::RELAY_LOCK_KEY)
            .fetch_one(&mut *holder)
            .await?;
        if taken {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "relay drain: the relay's lock not taken in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last_id_before: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM outbox")
        .fetch_one(&system.producer_pool)
        .await?;
    let batch: Vec<UserEvent> = (0..events).map(|_| user_created()).collect();
    let appended = futures::stream::iter(batch.iter().map(|event| append(&system.producer_pool, event)))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    for result in appended {
        result?;
    }

    let (released_at, _): (chrono::DateTime<chrono::Utc>, bool) =
        sqlx::query_as("SELECT clock_timestamp(), pg_advisory_unlock($1)")
            .bind(producer::outbox::RELAY_LOCK_KEY)
            .fetch_one(&mut *holder)
            .await?;
    drop(holder);
    let profiled = system
        .profile(async {
            let started = Instant::now();
            loop {
                let pending: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE id > $1 AND published_at IS NULL")
                        .bind(last_id_before)
                        .fetch_one(&system.producer_pool)
                        .await?;
                if pending == 0 {
                    return Ok(());
                }
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(600),
                    "relay drain: {pending} of {events} rows unpublished after 10 minutes"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await?;
    let ((), cpu) = profiled;
    let (start_seconds, span_seconds, after_first): (f64, f64, i64) = sqlx::query_as(
        "WITH mine AS (SELECT published_at FROM outbox WHERE id > $1), \
              bounds AS (SELECT min(published_at) AS first, max(published_at) AS last FROM mine) \
         SELECT extract(epoch FROM bounds.first - $2)::float8, extract(epoch FROM bounds.last - bounds.first)::float8, \
                (SELECT count(*) FROM mine WHERE published_at > bounds.first) \
         FROM bounds",
    )
    .bind(last_id_before)
    .bind(released_at)
    .fetch_one(&system.producer_pool)
    .await?;
    // The next steps start with every event applied.
    let started = Instant::now();
    while system.applied().await < applied_before + events as i64 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "relay drain: the consumer did not apply the rows in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(RelayDrainFigures {
        events,
        start_seconds,
        per_s: after_first as f64 / span_seconds,
        ratio_to_raw: 0.0,
        cpu,
    })
}

/// Step 2: the consumer service alone (release build, `tuning`) applying a
/// backlog of `events` `user.created.v1` records that the contract's own
/// producer (`e2e::load::publish`, what the relay would publish) wrote to
/// its topic before it started; timed from the first event applied to the
/// last, as the raw consume rate is.
pub async fn drain(events: usize, tuning: &Tuning) -> anyhow::Result<DrainFigures> {
    let context = TestContext::new();
    let (_, created) = e2e::load::new_users(events);
    e2e::load::publish(&context, &created).await;
    let env = service_env(tuning);
    let env = borrowed(&env);
    let started = Instant::now();
    let consumer = context.start_consumer_process(e2e::process::NO_PRODUCER, &env).await;
    let pool = context.consumer_pool().await;
    let total = i64::try_from(events)?;
    let mut first = None;
    let mut cpu_at_first = Vec::new();
    let last = loop {
        let applied = e2e::load::processed_count(&pool).await;
        let now = Instant::now();
        if applied > 0 && first.is_none() {
            first = Some((now, applied));
            cpu_at_first = cpu_seconds(0, consumer.pid());
        }
        if applied >= total {
            break now;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "drain: {applied} of {events} applied in 10 minutes"
        );
        // Counting a growing table is work for the database the drain
        // runs on: once the drain started, the rate comes from the
        // database's own times (below), and this only watches for its end.
        let poll = if first.is_none() { 20 } else { 200 };
        tokio::time::sleep(Duration::from_millis(poll)).await;
    };
    let (first, _) = first.expect("events applied");
    // `processed_at` is the start of the transaction that applied the
    // event: the rate counts the events after the first transaction, over
    // the time from its start to the last transaction's.
    let (span_seconds, after_first): (f64, i64) = sqlx::query_as(
        "WITH bounds AS (SELECT min(processed_at) AS first, max(processed_at) AS last FROM processed_events) \
         SELECT extract(epoch FROM bounds.last - bounds.first)::float8, \
                (SELECT count(*) FROM processed_events WHERE processed_at > bounds.first) \
         FROM bounds",
    )
    .fetch_one(&pool)
    .await?;
    let mut cpu = cpu_profile(cpu_at_first, cpu_seconds(0, consumer.pid()), last - first);
    cpu.by_process.retain(|(name, _)| name != "producer");
    let peak_rss_kib = super::process::peak_rss_kib(consumer.pid());
    consumer.kill().await;
    pool.close().await;
    context.drop_databases().await;
    Ok(DrainFigures {
        events,
        join_seconds: (first - started).as_secs_f64(),
        per_s: after_first as f64 / span_seconds,
        ratio_to_raw: 0.0,
        peak_rss_kib,
        cpu,
    })
}

/// Step 2: the consumer draining a backlog of `issued-token` records, for
/// `users` users created first with `tokens_per_user` each, while a second
/// member joins the group (at a twentieth of the backlog) and a third (at
/// a quarter); then every event is checked applied exactly once, in per-user
/// order, with the group's offsets at the end and nothing dead-lettered
/// (`e2e::load::assert_exact_state`, which panics otherwise).
///
/// The users are created by a first member that then stops, so that the
/// tokens wait as a backlog rather than for their users.
pub async fn scaling(users: usize, tokens_per_user: usize, tuning: &Tuning) -> anyhow::Result<ScalingFigures> {
    // (members, divisor): with that many members, the next joins once a
    // 1/divisor of the backlog is applied.
    const JOIN_AT: [(usize, i64); 2] = [(1, 20), (2, 4)];
    let context = TestContext::new();
    let (ids, created) = e2e::load::new_users(users);
    e2e::load::publish(&context, &created).await;
    let env = service_env(tuning);
    let env = borrowed(&env);
    let creator = context.start_consumer_process(e2e::process::NO_PRODUCER, &env).await;
    let pool = context.consumer_pool().await;
    let created = i64::try_from(users)?;
    e2e::load::wait_for_processed(&pool, created, Duration::from_secs(120)).await;
    creator.terminate(Duration::from_secs(30)).await;

    let tokens = e2e::load::tokens_for(&ids, tokens_per_user);
    e2e::load::publish(&context, &tokens).await;
    let total = i64::try_from(tokens.len())?;
    let mut members = vec![context.start_consumer_process(e2e::process::NO_PRODUCER, &env).await];
    let client = reqwest::Client::new();
    // (when, tokens applied, CPU so far): the first applied, then each
    // time a new member holds partitions, then the last applied.
    let mut boundaries: Vec<(Instant, i64, CpuSeconds)> = Vec::new();
    // (when, tokens applied) as each later member's process is started.
    let mut launches: Vec<(Instant, i64)> = Vec::new();
    let group_cpu =
        |members: &[ServiceProcess]| group_cpu_seconds(&members.iter().map(ServiceProcess::pid).collect::<Vec<_>>());
    let mut partitions = 0;
    let started = Instant::now();
    loop {
        let applied = e2e::load::processed_count(&pool).await - created;
        let now = Instant::now();
        if applied >= total {
            boundaries.push((now, applied, group_cpu(&members)));
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "scaling: {applied} of {total} applied in 10 minutes"
        );
        if boundaries.is_empty() {
            if applied > 0 {
                boundaries.push((now, applied, group_cpu(&members)));
                partitions = members[0].assigned_partitions().await.values().sum::<i64>();
            }
        } else if boundaries.len() < members.len() {
            if members
                .last()
                .expect("a member")
                .assigned_partitions()
                .await
                .values()
                .sum::<i64>()
                > 0
            {
                let applied = e2e::load::processed_count(&pool).await - created;
                boundaries.push((Instant::now(), applied, group_cpu(&members)));
            }
        } else if JOIN_AT
            .iter()
            .any(|&(joined, divisor)| members.len() == joined && applied >= total / divisor)
        {
            launches.push((now, applied));
            members.push(context.start_consumer_process(e2e::process::NO_PRODUCER, &env).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    e2e::load::assert_exact_state(&context, &pool, &ids, i64::try_from(tokens_per_user)?).await;

    let mut partitions_moved = 0.0;
    let mut duplicates = 0.0;
    for member in &members {
        let text = e2e::metrics::scrape(&client, &member.url()).await;
        partitions_moved += e2e::metrics::samples(&text, "kafka_consumer_rebalances_total")
            .iter()
            .filter(|(labels, _)| labels.get("kind").map(String::as_str) == Some("revoke"))
            .map(|(_, value)| value)
            .sum::<f64>();
        duplicates += e2e::metrics::samples(&text, "kafka_records_consumed_total")
            .iter()
            .filter(|(labels, _)| labels.get("outcome").map(String::as_str) == Some("duplicate"))
            .map(|(_, value)| value)
            .sum::<f64>();
    }
    for member in members {
        member.terminate(Duration::from_secs(30)).await;
    }
    pool.close().await;
    context.drop_databases().await;
    let partitions = u64::try_from(partitions)?;
    Ok(ScalingFigures {
        events: tokens.len(),
        per_s_by_members: boundaries
            .windows(2)
            .map(|pair| (pair[1].1 - pair[0].1) as f64 / (pair[1].0 - pair[0].0).as_secs_f64())
            .collect(),
        per_s_before_next_launch: boundaries
            .iter()
            .zip(&launches)
            .map(|((from, applied, _), (to, applied_then))| {
                (applied_then - applied) as f64 / to.saturating_duration_since(*from).as_secs_f64()
            })
            .collect(),
        cpu_by_members: boundaries
            .windows(2)
            .map(|pair| cpu_profile(pair[0].2.clone(), pair[1].2.clone(), pair[1].0 - pair[0].0))
            .collect(),
        partitions_moved: partitions_moved as u64,
        fewest_moves: partitions / 2 + partitions / 3,
        duplicates: duplicates as u64,
    })
}

/// CPU seconds each process used between `before` and `after` (both from
/// [`cpu_seconds`], same processes), most first, over `wall`.
fn cpu_profile(before: CpuSeconds, after: CpuSeconds, wall: Duration) -> CpuProfile {
    let mut by_process: Vec<(String, f64)> = after
        .into_iter()
        .zip(before)
        .map(|((name, after), (_, before))| (name, after - before))
        .collect();
    by_process.sort_by(|a, b| b.1.total_cmp(&a.1));
    CpuProfile {
        wall_seconds: wall.as_secs_f64(),
        by_process,
    }
}

/// `env` as the `(name, value)` pairs the process starters take.
fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(name, value)| (*name, value.as_str())).collect()
}

/// The services' variables for `tuning` (log level, fetch wait, partition
/// queues).
fn service_env(tuning: &Tuning) -> Vec<(&'static str, String)> {
    let mut env = vec![
        (
            "RUST_LOG",
            std::env::var("BENCH_SERVICE_LOG").unwrap_or_else(|_| "warn".to_owned()),
        ),
        ("APP_KAFKA__FETCH_WAIT_MAX_MS", tuning.fetch_wait_ms.to_string()),
    ];
    if let Some(capacity) = tuning.queue_capacity {
        env.push(("APP_KAFKA__PARTITION_QUEUE_CAPACITY", capacity.to_string()));
    }
    if let Some(bytes) = tuning.queue_bytes {
        env.push(("APP_KAFKA__PARTITION_QUEUE_BYTES", bytes.to_string()));
    }
    env
}

/// Step 3: One event appended every `1/rate` s for `duration`, each in a
/// transaction of its own started on time whether the ones before have
/// committed or not (as concurrent HTTP requests append), and timed from
/// its commit to its arrival on the live feed.
pub async fn outbox_latency(system: &System, rate: u32, duration: Duration) -> anyhow::Result<Samples> {
    let arrivals = system.feed().await?;
    let (committed, _, seconds) = append_at_rate(system, rate, duration).await?;
    Ok(collect(&arrivals, &committed, UserEvent::CREATED_V1, seconds).await)
}

/// [`outbox_latency`], with where each event's time went: [`LatencyStages`].
/// (Apart from it so that the sweep's CPU profiles hold no sampling and
/// no stage queries.)
pub async fn outbox_latency_with_stages(
    system: &System,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<(Samples, LatencyStages)> {
    let arrivals = system.feed().await?;
    let pressure = PressureWatch::start();
    let (committed, started, seconds) = append_at_rate(system, rate, duration).await?;
    let samples = collect(&arrivals, &committed, UserEvent::CREATED_V1, seconds).await;
    let pressure = pressure.stop().await;
    let stages = stage_samples(system, &arrivals, UserEvent::CREATED_V1, &committed, started, &pressure).await?;
    Ok((samples, LatencyStages::of(stages)))
}

/// Appends as [`outbox_latency`] describes: each event's user and commit,
/// when the appending started, and the seconds it lasted.
async fn append_at_rate(
    system: &System,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<(Vec<(String, Moment)>, Instant, f64)> {
    let mut appends = tokio::task::JoinSet::new();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    while started.elapsed() < duration {
        ticks.tick().await;
        let pool = system.producer_pool.clone();
        appends.spawn(async move {
            let event = user_created();
            let mut tx = pool.begin().await?;
            producer::outbox::append(&mut tx, &event).await?;
            tx.commit().await?;
            let committed = Moment::now();
            producer::outbox::notify(&pool).await;
            anyhow::Ok((event.user_id().to_string(), committed))
        });
    }
    let mut committed = Vec::with_capacity(appends.len());
    while let Some(appended) = appends.join_next().await {
        committed.push(appended??);
    }
    Ok((committed, started, started.elapsed().as_secs_f64()))
}

/// When an event was committed (or answered `2xx`): on the monotonic clock
/// that latencies are taken on, and in seconds since the Unix epoch, the
/// clock PostgreSQL's `now()` reads.
#[derive(Debug, Clone, Copy)]
struct Moment {
    at: Instant,
    epoch_s: f64,
}

impl Moment {
    fn now() -> Self {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        Self {
            at: Instant::now(),
            epoch_s: since_epoch,
        }
    }
}

/// Splits each event's commit → applied time at the moments the two
/// databases recorded: the relay marking its row published (`published_at`,
/// after the broker's delivery report) and the consumer's applying
/// transaction beginning (`processed_at`). Both are `now()` on this
/// machine's clock, which the commit's time is read from too.
/// `committed` holds, by user, when its `event_type` event was committed
/// (or answered `2xx`, which follows the commit).
async fn stage_samples(
    system: &System,
    arrivals: &Arrivals,
    event_type: &str,
    committed: &[(String, Moment)],
    started: Instant,
    pressure: &Pressure,
) -> anyhow::Result<Vec<StageSample>> {
    let committed: HashMap<&str, Moment> = committed.iter().map(|(user, at)| (user.as_str(), *at)).collect();
    let users: Vec<&str> = committed.keys().copied().collect();
    let published: Vec<(String, Uuid, Option<f64>)> = sqlx::query_as(
        "SELECT subject, event_id, extract(epoch FROM published_at)::float8 FROM outbox \
         WHERE subject = ANY($1) AND event_type = $2",
    )
    .bind(&users)
    .bind(event_type)
    .fetch_all(&system.producer_pool)
    .await?;
    let event_ids: Vec<Uuid> = published.iter().map(|(_, id, _)| *id).collect();
    let apply_started: HashMap<Uuid, f64> = sqlx::query_as(
        "SELECT event_id, extract(epoch FROM processed_at)::float8 FROM processed_events WHERE event_id = ANY($1)",
    )
    .bind(&event_ids)
    .fetch_all(&system.consumer_pool)
    .await?
    .into_iter()
    .collect();
    let arrived = arrivals.lock().unwrap();
    let mut stages = Vec::with_capacity(published.len());
    for (user, event_id, published_at) in published {
        let (Some(&committed), Some(published_at), Some(&apply_started)) =
            (committed.get(user.as_str()), published_at, apply_started.get(&event_id))
        else {
            continue;
        };
        let Some(arrival) = arrived.get(&(user, event_type.to_owned())) else {
            continue;
        };
        let total_ms = arrival.saturating_duration_since(committed.at).as_secs_f64() * 1000.0;
        let to_apply_ms = (apply_started - committed.epoch_s) * 1000.0;
        stages.push(StageSample {
            committed_s: committed.at.duration_since(started).as_secs_f64(),
            pressure: pressure.between(committed.at, *arrival),
            total_ms,
            published_ms: (published_at - committed.epoch_s) * 1000.0,
            apply_started_ms: to_apply_ms,
            applied_ms: total_ms - to_apply_ms,
        });
    }
    Ok(stages)
}

/// Step 3: [`outbox_latency`] at rising rates, `seconds` each, from `rates`,
/// until the p99 reaches 100 ms, events go missing or the appends fall more
/// than 5 % short of the rate offered; with the CPU each process used at
/// each rate.
pub async fn latency_sweep(
    system: &System,
    rates: &[u32],
    seconds: Duration,
) -> anyhow::Result<Vec<(LatencySummary, CpuProfile)>> {
    let mut steps = Vec::new();
    for &rate in rates {
        let (samples, cpu) = system.profile(outbox_latency(system, rate, seconds)).await?;
        let achieved = samples.rate();
        let summary = samples.summary(achieved);
        let over = summary.p99_ms >= 100.0 || summary.missing > 0 || achieved < 0.95 * f64::from(rate);
        eprintln!(
            "bench: sweep {rate}/s: appended {achieved:.0}/s, p99 {:.1} ms",
            summary.p99_ms
        );
        steps.push((summary, cpu));
        if over {
            break;
        }
    }
    Ok(steps)
}

/// Step 3: A user created and a token issued over HTTP every 100 ms (20 events
/// per second: below what password hashing allows), each timed from its
/// 2xx to its arrival on the live feed.
pub async fn http_latency(system: &System, duration: Duration) -> anyhow::Result<(Samples, LatencyStages)> {
    let arrivals = system.feed().await?;
    let pressure = PressureWatch::start();
    let producer = system.producer.url();
    let mut created = Vec::new();
    let mut issued = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    let started = Instant::now();
    while started.elapsed() < duration {
        ticks.tick().await;
        let user = e2e::create_user(&system.client, &producer, "latency").await;
        created.push((user.id.to_string(), Moment::now()));
        e2e::issue_token(&system.client, &producer, &user.username).await;
        issued.push((user.id.to_string(), Moment::now()));
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut samples = collect(&arrivals, &created, UserEvent::CREATED_V1, seconds).await;
    let tokens = collect(&arrivals, &issued, UserEvent::TOKEN_ISSUED_V1, seconds).await;
    samples.latencies_ms.extend(tokens.latencies_ms);
    samples.sent += tokens.sent;
    let pressure = pressure.stop().await;
    let mut stages = Vec::new();
    for (event_type, sent) in [(UserEvent::CREATED_V1, &created), (UserEvent::TOKEN_ISSUED_V1, &issued)] {
        stages.extend(stage_samples(system, &arrivals, event_type, sent, started, &pressure).await?);
    }
    Ok((samples, LatencyStages::of(stages)))
}

/// Waits up to 30 s for every sent event, then the latencies of those that
/// arrived.
async fn collect(arrivals: &Arrivals, sent: &[(String, Moment)], event_type: &str, seconds: f64) -> Samples {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = {
            let arrived = arrivals.lock().unwrap();
            sent.iter()
                .all(|(user, _)| arrived.contains_key(&(user.clone(), event_type.to_owned())))
        };
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let arrived = arrivals.lock().unwrap();
    let latencies_ms = sent
        .iter()
        .filter_map(|(user, at)| {
            arrived
                .get(&(user.clone(), event_type.to_owned()))
                .map(|arrival| arrival.saturating_duration_since(at.at).as_secs_f64() * 1000.0)
        })
        .collect();
    Samples {
        latencies_ms,
        sent: sent.len(),
        seconds,
    }
}

/// Step 4: argon2id hashes per second with the producer's parameters, one
/// thread per core, for `duration`.
pub fn argon2_floor(duration: Duration) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let started = Instant::now();
    let hashes: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..cores)
            .map(|_| {
                scope.spawn(|| {
                    let mut count = 0;
                    while started.elapsed() < duration {
                        let salt = SaltString::generate(&mut OsRng);
                        Argon2::default()
                            .hash_password(b"correct horse battery", &salt)
                            .expect("argon2 hashes");
                        count += 1;
                    }
                    count
                })
            })
            .collect();
        workers.into_iter().map(|worker| worker.join().unwrap()).sum()
    });
    hashes as f64 / started.elapsed().as_secs_f64()
}

/// Step 4: `POST /users` and `POST /auth/token` at 1, 2, 4 and 8 concurrent
/// clients, `duration` each, beside `floor` argon2 hashes per second.
pub async fn http_api(system: &System, duration: Duration, floor: f64) -> anyhow::Result<Vec<HttpFigures>> {
    let producer = system.producer.url();
    let mut users = Vec::new();
    for _ in 0..8 {
        users.push(e2e::create_user(&system.client, &producer, "http").await.username);
    }
    let mut figures = Vec::new();
    for endpoint in ["POST /users", "POST /auth/token"] {
        for concurrency in [1, 2, 4, 8] {
            let started = Instant::now();
            let clients = (0..concurrency).map(|worker| {
                let client = system.client.clone();
                let producer = producer.clone();
                let username = users[worker].clone();
                async move {
                    let mut latencies = Vec::new();
                    let mut failures = 0;
                    while started.elapsed() < duration {
                        let request = if endpoint == "POST /users" {
                            let name = format!("h{}", &Uuid::new_v4().simple().to_string()[..20]);
                            client.post(format!("{producer}/users")).json(&json!({
                                "username": name, "email": format!("{name}@example.com"), "password": e2e::PASSWORD
                            }))
                        } else {
                            client
                                .post(format!("{producer}/auth/token"))
                                .json(&json!({ "username": username, "password": e2e::PASSWORD }))
                        };
                        let sent = Instant::now();
                        match request.send().await {
                            Ok(response) if response.status().is_success() => {
                                latencies.push(sent.elapsed().as_secs_f64() * 1000.0)
                            }
                            _ => failures += 1,
                        }
                    }
                    (latencies, failures)
                }
            });
            let results = futures::future::join_all(clients).await;
            let seconds = started.elapsed().as_secs_f64();
            let failures = results.iter().map(|(_, f)| f).sum();
            let mut latencies: Vec<f64> = results.into_iter().flat_map(|(l, _)| l).collect();
            latencies.sort_by(f64::total_cmp);
            let per_s = latencies.len() as f64 / seconds;
            figures.push(HttpFigures {
                endpoint,
                concurrency,
                requests: latencies.len(),
                failures,
                per_s,
                p50_ms: percentile(&latencies, 0.5),
                p99_ms: percentile(&latencies, 0.99),
                ratio_to_argon2: per_s / floor,
            });
        }
    }
    Ok(figures)
}
