//! What the kernel says of the services' processes: CPU seconds and
//! resident memory, from /proc.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// CPU seconds used so far, by process: (name, seconds).
pub type CpuSeconds = Vec<(String, f64)>;

/// CPU seconds (user + system) each process group has used so far: the
/// services and the broker by pid, PostgreSQL by name, this program.
pub fn cpu_seconds(producer: u32, consumer: u32) -> CpuSeconds {
    let mut cpu = vec![
        ("producer".to_owned(), cpu_seconds_of(&producer.to_string())),
        ("consumer".to_owned(), cpu_seconds_of(&consumer.to_string())),
    ];
    cpu.extend(shared_cpu_seconds());
    cpu
}

/// The CPU seconds of what every run shares: the broker, PostgreSQL and
/// this program.
fn shared_cpu_seconds() -> CpuSeconds {
    vec![
        ("kafka (broker)".to_owned(), broker_cpu_seconds()),
        ("postgres".to_owned(), cpu_seconds_by_name("postgres")),
        ("bench".to_owned(), cpu_seconds_of("self")),
    ]
}

/// CPU seconds (user + system) a consumer group's `members` (pids) have
/// used so far, together, beside the broker, PostgreSQL and this program.
pub fn group_cpu_seconds(members: &[u32]) -> CpuSeconds {
    let consumers = members.iter().map(|pid| cpu_seconds_of(&pid.to_string())).sum();
    let mut cpu = vec![("consumers".to_owned(), consumers)];
    cpu.extend(shared_cpu_seconds());
    cpu
}

/// CPU seconds (user + system) process `pid` has used so far: fields 14
/// and 15 of `/proc/<pid>/stat`, in clock ticks of 1/100 s (Linux's
/// USER_HZ). 0 when it is gone.
pub(super) fn cpu_seconds_of(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

/// CPU seconds the broker has used so far: the process `BENCH_BROKER_PID`
/// names (`scripts/bench.sh` sets it to the Kafka node's JVM).
///
/// # Panics
///
/// When `BENCH_BROKER_PID` is unset: without it the broker's CPU per
/// record would read 0.
pub(super) fn broker_cpu_seconds() -> f64 {
    let pid =
        std::env::var("BENCH_BROKER_PID").expect("BENCH_BROKER_PID names the broker's process (scripts/bench.sh)");
    cpu_seconds_of(&pid)
}

/// CPU seconds used so far by every process whose name starts with `name`.
fn cpu_seconds_by_name(name: &str) -> f64 {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|pid| pid.chars().all(|c| c.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim().starts_with(name))
        })
        .map(|pid| cpu_seconds_of(&pid))
        .sum()
}

/// The kernel's pressure stall totals so far (`/proc/pressure/cpu` and
/// `/proc/pressure/io`, the `some` lines' `total`, in seconds): how long at
/// least one task waited for a core, and for I/O (PostgreSQL's `fsync`s
/// among it), machine-wide. `None` where the kernel has no PSI.
fn pressure_seconds() -> Option<(f64, f64)> {
    let some_total = |resource: &str| -> Option<f64> {
        let text = std::fs::read_to_string(format!("/proc/pressure/{resource}")).ok()?;
        let line = text.lines().find(|line| line.starts_with("some "))?;
        let total = line.split_whitespace().find_map(|field| field.strip_prefix("total="))?;
        Some(total.parse::<f64>().ok()? / 1e6)
    };
    Some((some_total("cpu")?, some_total("io")?))
}

/// [`pressure_seconds`] sampled every 20 ms until stopped.
pub struct PressureWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(Instant, f64, f64)>>,
}

impl PressureWatch {
    /// Starts sampling.
    pub fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = Arc::clone(&stop);
            async move {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Some((cpu, io)) = pressure_seconds() {
                        samples.push((Instant::now(), cpu, io));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                samples
            }
        });
        Self { stop, task }
    }

    /// Stops sampling; the samples, oldest first.
    pub async fn stop(self) -> Pressure {
        self.stop.store(true, Ordering::Relaxed);
        Pressure(self.task.await.unwrap_or_default())
    }
}

/// Pressure stall samples: (when, CPU total, I/O total), oldest first.
pub struct Pressure(Vec<(Instant, f64, f64)>);

impl Pressure {
    /// The share of `from..to` in which some task waited for a core, and
    /// for I/O (0 to 1 each), from the samples around it; `None` when
    /// there are none, or the stretch is shorter than two samples apart.
    pub fn between(&self, from: Instant, to: Instant) -> Option<(f64, f64)> {
        let first = self.0.iter().rev().find(|(at, ..)| *at <= from)?;
        let last = self.0.iter().find(|(at, ..)| *at >= to)?;
        let seconds = last.0.duration_since(first.0).as_secs_f64();
        (seconds > 0.0).then(|| ((last.1 - first.1) / seconds, (last.2 - first.2) / seconds))
    }
}

/// A running memory sampler.
pub struct MemoryWatch {
    stop: Arc<AtomicBool>,
    peaks: Arc<(AtomicU64, AtomicU64)>,
    task: tokio::task::JoinHandle<()>,
}

impl MemoryWatch {
    /// Samples the resident memory of processes `producer` and `consumer`
    /// every 200 ms, keeping each one's peak, until stopped.
    pub fn start(producer: u32, consumer: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let task = tokio::spawn({
            let (stop, peaks) = (Arc::clone(&stop), Arc::clone(&peaks));
            async move {
                while !stop.load(Ordering::Relaxed) {
                    peaks.0.fetch_max(rss_kib(producer), Ordering::Relaxed);
                    peaks.1.fetch_max(rss_kib(consumer), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        Self { stop, peaks, task }
    }

    /// Stops sampling; the peaks in KiB, (producer, consumer).
    pub async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (
            self.peaks.0.load(Ordering::Relaxed),
            self.peaks.1.load(Ordering::Relaxed),
        )
    }
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The peak resident memory of process `pid` so far, KiB (the kernel's
/// `VmHWM`).
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_between_reads_the_samples_around_the_stretch() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        // CPU stalls for half of each 100 ms; I/O for all of the second.
        let pressure = Pressure(vec![(at(0), 0.0, 0.0), (at(100), 0.05, 0.0), (at(200), 0.10, 0.1)]);
        let (cpu, io) = pressure.between(at(10), at(190)).expect("within the samples");
        assert!((cpu - 0.5).abs() < 1e-9 && (io - 0.5).abs() < 1e-9, "{cpu} {io}");
        let (cpu, io) = pressure.between(at(100), at(200)).expect("on the samples");
        assert!((cpu - 0.5).abs() < 1e-9 && (io - 1.0).abs() < 1e-9, "{cpu} {io}");
        assert_eq!(pressure.between(at(150), at(250)), None, "past the last sample");
    }
}
