//! The benchmark: the real system measured beside the raw Kafka client
//! limit on the same broker, in one run, because absolute figures on a
//! shared machine drift from run to run and ratios do not.
//!
//! `scripts/bench.sh` builds in release mode, starts the broker and
//! PostgreSQL, and runs this; `docs/benchmarks.md` explains the results.
//!
//! 1. Raw client limit: rdkafka alone, producing `--events` records the
//!    size of a `user.created.v1` event to a fresh 8-partition topic
//!    (idempotent, `acks=all`), then a consumer group reading them back
//!    with manual commits.
//!    The produce rate is the median of three bursts.
//! 2. Drain: the release-built consumer alone applying a backlog of
//!    `--events` records written to its topic beforehand, beside the raw
//!    consume rate. Scaling: 25 times as many token events drained while
//!    a second and a third member join the group, with the partitions
//!    moved and every event checked applied once. Pipeline throughput: the same number of events
//!    appended to the producer's outbox in one burst (the producer's own
//!    `outbox::append`, no HTTP, no password hashing), relayed, consumed
//!    and applied by the release-built services; from the first append to
//!    the last applied. Relay drain: as many rows appended while the relay
//!    could not publish (the benchmark holds its election lock), published
//!    once it may, beside the raw produce rate.
//! 3. End-to-end latency: events appended at a steady rate, each timed from
//!    its commit to its arrival on the consumer's live feed (which publishes
//!    right after the read model's commit), and split where the databases
//!    recorded it, beside the kernel's pressure stall information; users
//!    created and tokens issued over HTTP, timed from the 2xx; and the
//!    outbox appends again at rising rates until the p99 reaches 100 ms.
//! 4. HTTP API: `POST /users` and `POST /auth/token` at several
//!    concurrencies, beside the argon2 hashes per second this machine does
//!    with the same parameters on all its cores.
//! 5. Peak resident memory of each service over the whole run.

mod measure;
mod plot;

use std::path::PathBuf;
use std::time::Duration;

use measure::{Figures, Samples};

/// Command line: `--events N` (default 5000), `--rate R` events/s for the
/// outbox latency run (default 200, the rate the latency target names),
/// `--seconds S` per latency run (default 15), `--http-seconds S` per HTTP
/// run (default 5), `--out DIR` (default docs/benchmarks), `--raw-only
/// true` to stop after the raw client limit, `--drain-only true` to stop
/// after the drains (the consumer alone, then with members joining),
/// `--latency-only true` to run only the outbox latency run after the raw
/// client (the latency's stages are printed with it),
/// `--queue-capacity N` and `--queue-bytes N` for the consumer's partition
/// queues, `--outbox-batch N` for the relay's batches,
/// `--fetch-wait-ms N` for every consumer's `fetch.wait.max.ms` (default
/// 500, librdkafka's and the consumer's: Kafka answers a waiting fetch as
/// soon as a record arrives, so the wait paces idle polling, and bounds how
/// long a partition newly assigned or resumed waits for the fetch in
/// flight).
/// Tokens per user in the scaling run: `--events` users, so 25 times as
/// many records, enough for a drain that outlasts two members' joins (each
/// takes about 5 s from the process's start to its first partitions).
const SCALING_TOKENS_PER_USER: usize = 25;

struct Options {
    events: usize,
    rate: u32,
    latency_seconds: u64,
    http_seconds: u64,
    out: PathBuf,
    /// Stop after the raw client limit (`--raw-only true`).
    raw_only: bool,
    /// Stop after the drain (`--drain-only true`).
    drain_only: bool,
    /// Skip the drains and the pipeline; stop after the outbox latency run
    /// at `--rate` (`--latency-only true`).
    latency_only: bool,
    /// How the services and the raw client are configured.
    tuning: measure::Tuning,
}

fn options() -> Options {
    let mut options = Options {
        events: 5_000,
        rate: 200,
        latency_seconds: 15,
        http_seconds: 5,
        out: PathBuf::from("docs/benchmarks"),
        raw_only: false,
        drain_only: false,
        latency_only: false,
        tuning: measure::Tuning {
            queue_capacity: None,
            queue_bytes: None,
            outbox_batch: None,
            fetch_wait_ms: 500,
        },
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).map(String::as_str).unwrap_or_default();
        match pair[0].as_str() {
            "--events" => options.events = value.parse().expect("--events N"),
            "--rate" => options.rate = value.parse().expect("--rate R"),
            "--seconds" => options.latency_seconds = value.parse().expect("--seconds S"),
            "--http-seconds" => options.http_seconds = value.parse().expect("--http-seconds S"),
            "--out" => options.out = PathBuf::from(value),
            "--raw-only" => options.raw_only = value == "true",
            "--drain-only" => options.drain_only = value == "true",
            "--latency-only" => options.latency_only = value == "true",
            "--queue-capacity" => options.tuning.queue_capacity = Some(value.parse().expect("--queue-capacity N")),
            "--queue-bytes" => options.tuning.queue_bytes = Some(value.parse().expect("--queue-bytes N")),
            "--outbox-batch" => options.tuning.outbox_batch = Some(value.parse().expect("--outbox-batch N")),
            "--fetch-wait-ms" => options.tuning.fetch_wait_ms = value.parse().expect("--fetch-wait-ms N"),
            other => panic!("unknown option {other}; see bench/src/main.rs"),
        }
    }
    options
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = options();
    std::fs::create_dir_all(&options.out)?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut figures = Figures::new(&command);

    eprintln!("bench: 1/5 raw client limit, {} records", options.events);
    let raw = measure::raw_client(options.events, options.rate, &options.tuning).await?;
    figures.raw = Some(raw.clone());
    if options.raw_only {
        println!("{}", figures.markdown());
        return Ok(());
    }
    if options.latency_only {
        let system = measure::System::start(&options.tuning).await?;
        // The full run's earlier steps warm the consumer; here a short run
        // does, as the first records after an assignment wait up to
        // `fetch.wait.max.ms` (see docs/benchmarks.md, "End-to-end latency").
        measure::outbox_latency_with_stages(&system, options.rate, Duration::from_secs(2)).await?;
        eprintln!(
            "bench: 3/5 outbox latency, {} events/s for {} s",
            options.rate, options.latency_seconds
        );
        let (samples, stages) =
            measure::outbox_latency_with_stages(&system, options.rate, Duration::from_secs(options.latency_seconds))
                .await?;
        system.stop().await;
        figures.latency_outbox = Some(samples.summary(options.rate as f64));
        figures.latency_stages = Some(stages);
        println!("{}", figures.markdown());
        return Ok(());
    }

    eprintln!(
        "bench: 2/5 the consumer draining a backlog of {} events",
        options.events
    );
    let mut drain = measure::drain(options.events, &options.tuning).await?;
    drain.ratio_to_raw = drain.per_s / raw.consume_per_s;
    figures.drain = Some(drain);
    eprintln!(
        "bench: 2/5 the consumer draining {} token events as a 2nd and a 3rd member join",
        options.events * SCALING_TOKENS_PER_USER
    );
    figures.scaling = Some(measure::scaling(options.events, SCALING_TOKENS_PER_USER, &options.tuning).await?);
    if options.drain_only {
        println!("{}", figures.markdown());
        return Ok(());
    }

    // Before the services start, so that nothing else runs meanwhile.
    eprintln!("bench: the argon2 floor");
    let floor = measure::argon2_floor(Duration::from_secs(options.http_seconds));
    figures.argon2_per_second = Some(floor);

    eprintln!("bench: starting the release-built services");
    let system = measure::System::start(&options.tuning).await?;
    let memory = system.watch_memory();

    eprintln!("bench: 2/5 pipeline throughput, {} events", options.events);
    let ((mut pipeline, progress), cpu) = system.profile(measure::pipeline(&system, options.events)).await?;
    figures.pipeline_cpu = Some(cpu);
    pipeline.ratio_to_raw = pipeline.per_s / raw.produce_per_s.min(raw.consume_per_s);
    figures.pipeline = Some(pipeline);

    eprintln!("bench: 2/5 relay drain, {} outbox rows", options.events);
    let mut relay = measure::relay_drain(&system, options.events).await?;
    relay.ratio_to_raw = relay.per_s / raw.produce_per_s;
    figures.relay_drain = Some(relay);

    eprintln!(
        "bench: 3/5 end-to-end latency, {} events/s for {} s",
        options.rate, options.latency_seconds
    );
    let (outbox_latency, stages): (Samples, _) =
        measure::outbox_latency_with_stages(&system, options.rate, Duration::from_secs(options.latency_seconds))
            .await?;
    figures.latency_stages = Some(stages);
    let (http_latency, http_stages): (Samples, _) =
        measure::http_latency(&system, Duration::from_secs(options.latency_seconds)).await?;
    figures.latency_http_stages = Some(http_stages);
    figures.latency_outbox = Some(outbox_latency.summary(options.rate as f64));
    figures.latency_http = Some(http_latency.summary(http_latency.rate()));
    eprintln!("bench: 3/5 outbox latency at rising rates, 5 s each");
    figures.latency_sweep =
        measure::latency_sweep(&system, &[400, 800, 1200, 1600, 2000], Duration::from_secs(5)).await?;

    eprintln!("bench: 4/5 HTTP API");
    let (http, cpu) = system
        .profile(measure::http_api(
            &system,
            Duration::from_secs(options.http_seconds),
            floor,
        ))
        .await?;
    figures.http = http;
    figures.http_cpu = Some(cpu);

    eprintln!("bench: 5/5 peak resident memory");
    figures.peak_rss_kib = Some(memory.stop().await);
    system.stop().await;

    plot::latency(&options.out.join("latency.png"), &outbox_latency, &http_latency)?;
    plot::throughput(&options.out.join("throughput.png"), &progress)?;
    let markdown = figures.markdown();
    println!("{markdown}");
    std::fs::write(options.out.join("results.md"), &markdown)?;
    std::fs::write(
        options.out.join("results.json"),
        serde_json::to_string_pretty(&figures)? + "\n",
    )?;
    eprintln!(
        "bench: wrote {}/results.{{md,json}}, latency.png, throughput.png",
        options.out.display()
    );
    Ok(())
}
