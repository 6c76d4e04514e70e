//! The soak: the whole deployment on this machine (a three-broker Kafka
//! cluster, two producers, three consumers, PostgreSQL) under steady HTTP
//! traffic and a random schedule of faults drawn from a seed, then a check
//! of the whole history. `scripts/soak.sh` builds and runs it:
//!
//! ```text
//! soak [--minutes N] [--seed S] [--out DIR]
//! ```
//!
//! - `--minutes`: how long faults are injected (default 3); the first
//!   round of the schedule, one fault of every kind, always runs whole.
//! - `--seed`: the schedule's seed (default: drawn, and printed); the same
//!   seed injects the same faults in the same order.
//! - `--out`: where `report.md` and `report.json` go (default
//!   `.run/soak/<seed>`).
//!
//! Exits 0 when the history has no violation, 1 when it has (the report
//! lists them), 2 on bad arguments.

mod deployment;
mod faults;
mod history;
mod monitor;
mod peer;
mod report;
mod traffic;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::deployment::Deployment;
use crate::faults::Schedule;

/// How long traffic goes on after the last fault is healed, before the
/// soak waits for quiescence.
const AFTER_HEALING: Duration = Duration::from_secs(10);

struct Args {
    minutes: f64,
    seed: u64,
    out: PathBuf,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let mut minutes = 3.0;
        let mut seed = None;
        let mut out = None;
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--minutes" => minutes = value.parse().map_err(|_| format!("--minutes {value}: not a number"))?,
                "--seed" => seed = Some(value.parse().map_err(|_| format!("--seed {value}: not a u64"))?),
                "--out" => out = Some(PathBuf::from(value)),
                other => return Err(format!("unknown option {other}")),
            }
        }
        let seed = seed.unwrap_or_else(|| fastrand::u64(..));
        let out = out.unwrap_or_else(|| PathBuf::from(format!(".run/soak/{seed}")));
        Ok(Self { minutes, seed, out })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("soak: {error}\nusage: soak [--minutes N] [--seed S] [--out DIR]");
            return ExitCode::from(2);
        }
    };
    println!(
        "soak: seed {}, faults for {} min; replay with `scripts/soak.sh --minutes {} --seed {}`",
        args.seed, args.minutes, args.minutes, args.seed
    );
    let window = Duration::from_secs_f64(args.minutes * 60.0);

    let mut world = Deployment::start(&args.out).await;
    let started = Instant::now();
    let stop = CancellationToken::new();
    let watching = CancellationToken::new();
    let monitor = monitor::start(&world, started, watching.clone());
    let traffic = traffic::start(world.producer_urls(), stop.clone());

    let mut schedule = Schedule::new(args.seed);
    let mut injected = Vec::new();
    let mut peers = Vec::new();
    let mut crashes = Vec::new();
    while started.elapsed() < window || !schedule.first_round_done() {
        let planned = schedule.next();
        tokio::time::sleep(planned.quiet).await;
        crashes.extend(world.restart_exited().await);
        let at = started.elapsed();
        println!("soak: {:>6.1} s  {}", at.as_secs_f64(), planned.fault);
        let outcome = faults::inject(&mut world, &planned, &mut peers).await;
        injected.push(faults::Injected {
            fault: planned.fault.to_string(),
            at,
            healed: started.elapsed(),
            outcome,
        });
    }
    println!(
        "soak: every fault healed; traffic for {} s more",
        AFTER_HEALING.as_secs()
    );
    tokio::time::sleep(AFTER_HEALING).await;
    crashes.extend(world.restart_exited().await);
    stop.cancel();
    let accepted = traffic.await.expect("the traffic task");
    let healed = started.elapsed();
    println!("soak: traffic stopped; waiting for quiescence");
    let quiescence = history::wait_for_quiescence(&world).await;
    watching.cancel();
    let stalls = monitor.await.expect("the stall monitor");
    crashes.extend(world.restart_exited().await);
    let crashes = tally(crashes);
    for crash in &crashes {
        eprintln!("soak: {crash}");
    }

    let checked = history::check(&world, &accepted, &peers, &injected, &stalls, quiescence, crashes).await;
    let report = report::Report {
        seed: args.seed,
        minutes: args.minutes,
        duration: healed,
        injected,
        accepted,
        checked,
    };
    report.write(&args.out);
    world.stop().await;
    println!("{}", report.markdown());
    println!("soak: report in {}/report.md and report.json", args.out.display());
    if report.checked.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "soak: {} violation(s); replay with `scripts/soak.sh --minutes {} --seed {}`",
            report.checked.violations.len(),
            args.minutes,
            args.seed
        );
        ExitCode::from(1)
    }
}

/// `lines` with repeats counted: `line (N times)`, in first-seen order.
fn tally(lines: Vec<String>) -> Vec<String> {
    let mut counted: Vec<(String, usize)> = Vec::new();
    for line in lines {
        match counted.iter_mut().find(|(seen, _)| *seen == line) {
            Some((_, count)) => *count += 1,
            None => counted.push((line, 1)),
        }
    }
    counted
        .into_iter()
        .map(|(line, count)| {
            if count == 1 {
                line
            } else {
                format!("{line} ({count} times)")
            }
        })
        .collect()
}
