//! The figures a run produces, and their markdown: what docs/benchmarks.md
//! shows.

use serde::Serialize;

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct Figures {
    /// The command that produced them.
    pub command: String,
    /// CPU cores the machine offers (broker, database, services and this
    /// program share them).
    pub cores: usize,
    /// When the run started (RFC 3339).
    pub started_at: String,
    /// Step 1: rdkafka alone.
    pub raw: Option<RawFigures>,
    /// Step 2: The consumer alone, draining a backlog.
    pub drain: Option<DrainFigures>,
    /// Step 2: The services' pipeline.
    pub pipeline: Option<PipelineFigures>,
    /// Step 2: The relay publishing a backlog.
    pub relay_drain: Option<RelayDrainFigures>,
    /// Step 2: The consumer's drain as members join the group.
    pub scaling: Option<ScalingFigures>,
    /// Step 3: Latency of events appended to the outbox at a steady rate.
    pub latency_outbox: Option<LatencySummary>,
    /// Step 3: Where the outbox latency run's time went.
    pub latency_stages: Option<LatencyStages>,
    /// Step 3: Latency of users created and tokens issued over HTTP.
    pub latency_http: Option<LatencySummary>,
    /// Step 3: Where the HTTP latency run's time went (from the 2xx, which
    /// follows the commit).
    pub latency_http_stages: Option<LatencyStages>,
    /// Step 3: Outbox commit → applied at rising rates, with the CPU each
    /// process used at each.
    pub latency_sweep: Vec<(LatencySummary, CpuProfile)>,
    /// Step 4: argon2id hashes per second on all cores, same parameters.
    pub argon2_per_second: Option<f64>,
    /// Step 4: The HTTP API.
    pub http: Vec<HttpFigures>,
    /// Step 5: Peak resident memory, KiB: (producer, consumer).
    pub peak_rss_kib: Option<(u64, u64)>,
    /// Where the CPU went during the pipeline run: CPU seconds by process,
    /// and the wall-clock seconds it took.
    pub pipeline_cpu: Option<CpuProfile>,
    /// The same during the HTTP runs.
    pub http_cpu: Option<CpuProfile>,
}

/// `, N missing` when some of `latency`'s events never arrived.
fn missing(latency: &LatencySummary) -> String {
    if latency.missing > 0 {
        format!(", {} missing", latency.missing)
    } else {
        String::new()
    }
}

/// CPU seconds per process over a stretch of wall-clock time.
#[derive(Debug, Clone, Serialize)]
pub struct CpuProfile {
    /// Wall-clock seconds.
    pub wall_seconds: f64,
    /// (process, CPU seconds), most first.
    pub by_process: Vec<(String, f64)>,
}

/// The raw client limit.
#[derive(Debug, Clone, Serialize)]
pub struct RawFigures {
    /// Records per burst.
    pub records: usize,
    /// Bytes of value per record (headers come on top).
    pub value_bytes: usize,
    /// Records per second produced and acknowledged: the median of
    /// [`RAW_BURSTS`] bursts of `records`.
    pub produce_per_s: f64,
    /// Each burst's produce rate, in order.
    pub produce_bursts_per_s: Vec<f64>,
    /// Records per second consumed, all the bursts' records from the
    /// receipt of the first to that of the last (committing every 1000 and
    /// at the end). Not per burst: librdkafka fetches ahead, so after the
    /// first burst's worth the records come from its queue.
    pub consume_per_s: f64,
    /// Records per second through both at once: produced while the joined
    /// consumer reads them, from the first send to the last receive.
    pub concurrent_per_s: f64,
    /// Seconds from subscribing to the first record (the group join).
    pub join_seconds: f64,
    /// The broker's CPU milliseconds per record: (produce, consume, both
    /// at once).
    pub broker_cpu_ms_per_record: (f64, f64, f64),
    /// Produce-to-consume latency of single records sent at 20 per second
    /// to the joined consumer: the broker's own floor for end-to-end
    /// latency at the HTTP latency run's rate.
    pub latency: LatencySummary,
    /// The same at the outbox latency run's rate (`--rate`).
    pub latency_at_rate: LatencySummary,
}

/// The pipeline's throughput.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineFigures {
    /// Events appended.
    pub events: usize,
    /// Seconds from the first append to the last event applied.
    pub seconds: f64,
    /// Events per second, first append to last applied.
    pub per_s: f64,
    /// Events per second appended to the outbox (the source: one
    /// transaction per event, 8 connections), first append to last.
    pub appends_per_s: f64,
    /// `per_s` over the slower direction of the raw client limit.
    pub ratio_to_raw: f64,
}

/// The consumer's drain of a backlog of `issued-token` records while a
/// second and a third member join the group.
#[derive(Debug, Clone, Serialize)]
pub struct ScalingFigures {
    /// Records in the backlog.
    pub events: usize,
    /// Events per second applied with 1, 2 and 3 members, each from the
    /// moment the member before last held partitions (or the first event
    /// applied) to the next one's.
    pub per_s_by_members: Vec<f64>,
    /// Events per second applied with 1 and 2 members until the next
    /// member's process was started: the members' rate before any join
    /// was under way.
    pub per_s_before_next_launch: Vec<f64>,
    /// CPU over the same stretches, with 1, 2 and 3 members (`consumers`:
    /// all members together).
    pub cpu_by_members: Vec<CpuProfile>,
    /// Partitions revoked from a member over the drain, all members
    /// together.
    pub partitions_moved: u64,
    /// The fewest moves that take the group's partitions from 1 member to
    /// 2 and then 3 (half, then a third of them).
    pub fewest_moves: u64,
    /// Records handled again after a rebalance and found already applied
    /// (`kafka_records_consumed_total{outcome="duplicate"}`), all members.
    pub duplicates: u64,
}

/// The relay publishing a backlog of outbox rows.
#[derive(Debug, Clone, Serialize)]
pub struct RelayDrainFigures {
    /// Rows in the backlog.
    pub events: usize,
    /// Seconds from the relay's lock coming free to its first rows marked
    /// published: its election (it tries the lock every
    /// `outbox.poll_interval_ms`), the first read and the first delivery
    /// reports.
    pub start_seconds: f64,
    /// Rows per second marked published: those after the first marking,
    /// over the time from it to the last.
    pub per_s: f64,
    /// `per_s` over the raw client's produce rate.
    pub ratio_to_raw: f64,
    /// CPU over the drain (the consumer applies the rows meanwhile).
    pub cpu: CpuProfile,
}

/// The consumer alone draining a backlog.
#[derive(Debug, Clone, Serialize)]
pub struct DrainFigures {
    /// Events in the backlog.
    pub events: usize,
    /// Seconds from the group join to the first event applied.
    pub join_seconds: f64,
    /// Events per second applied: those after the first transaction that
    /// applied any, over the time from its start to the last one's.
    pub per_s: f64,
    /// `per_s` over the raw client's consume rate.
    pub ratio_to_raw: f64,
    /// The consumer's peak resident memory over the drain, KiB.
    pub peak_rss_kib: u64,
    /// CPU from the first event applied until the last was seen applied
    /// (up to 200 ms late; `producer` left out: it is not running).
    pub cpu: CpuProfile,
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    /// Events per second offered.
    pub rate_per_s: f64,
    /// Events timed.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Events that never arrived within 30 s of the end.
    pub missing: usize,
}

/// One event's commit (or `2xx`) → applied time, split where the
/// databases recorded it (see [`LatencyStages`]), milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct StageSample {
    /// Seconds from the run's start to the commit.
    pub committed_s: f64,
    /// From the commit to the arrival, the share of time some task waited
    /// for a core, and for I/O, machine-wide (Linux's pressure stall
    /// information); `None` without it.
    pub pressure: Option<(f64, f64)>,
    /// Commit → on the live feed.
    pub total_ms: f64,
    /// Commit → the relay marked its row published.
    pub published_ms: f64,
    /// Commit → the consumer's applying transaction began.
    pub apply_started_ms: f64,
    /// That transaction's start → on the live feed.
    pub applied_ms: f64,
}

/// Where a latency run's time went, from each event's commit (or, over
/// HTTP, its `2xx`, which follows the commit), milliseconds as (p50, p99).
/// `apply_started_ms` and `applied_ms` add up to each event's total;
/// `published_ms` overlaps them, as the consumer may read a record before
/// its delivery report reaches the relay.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyStages {
    /// Events split: those that arrived and that both databases recorded.
    pub count: usize,
    /// Commit → the relay marked the row published: its read of the
    /// outbox, the produce, the broker's delivery report.
    pub published_ms: (f64, f64),
    /// Commit → the consumer's applying transaction began: the relay, the
    /// broker, the consumer's fetch and dispatch.
    pub apply_started_ms: (f64, f64),
    /// That transaction's start → on the live feed: the apply, its commit
    /// (with `fsync`), the feed.
    pub applied_ms: (f64, f64),
    /// Over the slowest 1 % of events by total: the median of
    /// (`published_ms`, `apply_started_ms`, `applied_ms`).
    pub slowest_percent_ms: (f64, f64, f64),
    /// When the slowest 1 % were committed, seconds into the run: (first,
    /// last).
    pub slowest_percent_committed_s: (f64, f64),
    /// The mean share of each event's time in which some task waited for a
    /// core, and for I/O (see [`StageSample::pressure`]): over all events,
    /// then over the slowest 1 %. `None` without pressure stall
    /// information.
    pub pressure: Option<((f64, f64), (f64, f64))>,
}

impl LatencyStages {
    /// The percentiles of `samples`.
    pub fn of(mut samples: Vec<StageSample>) -> Self {
        let quantiles = |stage: fn(&StageSample) -> f64, samples: &[StageSample]| {
            let mut values: Vec<f64> = samples.iter().map(stage).collect();
            values.sort_by(f64::total_cmp);
            (percentile(&values, 0.50), percentile(&values, 0.99))
        };
        let published_ms = quantiles(|s| s.published_ms, &samples);
        let apply_started_ms = quantiles(|s| s.apply_started_ms, &samples);
        let applied_ms = quantiles(|s| s.applied_ms, &samples);
        samples.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        let slowest = &samples[..samples.len().div_ceil(100)];
        let mean_pressure = |samples: &[StageSample]| {
            let shares: Vec<(f64, f64)> = samples.iter().filter_map(|s| s.pressure).collect();
            let n = shares.len() as f64;
            (!shares.is_empty()).then(|| {
                (
                    shares.iter().map(|s| s.0).sum::<f64>() / n,
                    shares.iter().map(|s| s.1).sum::<f64>() / n,
                )
            })
        };
        let pressure = mean_pressure(&samples).zip(mean_pressure(slowest));
        let median = |stage: fn(&StageSample) -> f64| quantiles(stage, slowest).0;
        let committed = slowest.iter().map(|s| s.committed_s);
        Self {
            count: samples.len(),
            published_ms,
            apply_started_ms,
            applied_ms,
            slowest_percent_ms: (
                median(|s| s.published_ms),
                median(|s| s.apply_started_ms),
                median(|s| s.applied_ms),
            ),
            slowest_percent_committed_s: (
                committed.clone().fold(f64::INFINITY, f64::min),
                committed.fold(f64::NEG_INFINITY, f64::max),
            ),
            pressure,
        }
    }
}

/// One HTTP endpoint at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct HttpFigures {
    /// `POST /users` or `POST /auth/token`.
    pub endpoint: &'static str,
    /// Clients sending at once.
    pub concurrency: usize,
    /// Successful requests.
    pub requests: usize,
    /// Requests answered with anything but success.
    pub failures: usize,
    /// Successful requests per second.
    pub per_s: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// `per_s` over the argon2 floor (one hash per request).
    pub ratio_to_argon2: f64,
}

impl Figures {
    /// Empty figures for a run of `command`.
    pub fn new(command: &str) -> Self {
        Self {
            command: command.to_owned(),
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            raw: None,
            drain: None,
            pipeline: None,
            relay_drain: None,
            scaling: None,
            latency_outbox: None,
            latency_stages: None,
            latency_http: None,
            latency_http_stages: None,
            latency_sweep: Vec::new(),
            argon2_per_second: None,
            http: Vec::new(),
            peak_rss_kib: None,
            pipeline_cpu: None,
            http_cpu: None,
        }
    }

    /// The results as markdown tables.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "Run `{}` on {} cores, {}.\n\n| measure | figure |\n|---|---|\n",
            self.command, self.cores, self.started_at
        );
        if let Some(raw) = &self.raw {
            let (produce_cpu, consume_cpu, concurrent_cpu) = raw.broker_cpu_ms_per_record;
            let rates = |bursts: &[f64]| bursts.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
            out += &format!(
                "| raw rdkafka produce ({} bursts of {} records, {} B values, 7 headers, idempotent, acks=all) | median {:.0} records/s of {} (broker CPU {produce_cpu:.2} ms/record) |\n",
                raw.produce_bursts_per_s.len(),
                raw.records,
                raw.value_bytes,
                raw.produce_per_s,
                rates(&raw.produce_bursts_per_s)
            );
            out += &format!(
                "| raw rdkafka consume ({} records, group, manual commits; join took {:.1} s) | {:.0} records/s (broker CPU {consume_cpu:.2} ms/record) |\n",
                raw.records * raw.produce_bursts_per_s.len(),
                raw.join_seconds,
                raw.consume_per_s
            );
            out += &format!(
                "| raw rdkafka produce and consume at once, send of the first → receipt of the last | {:.0} records/s (broker CPU {concurrent_cpu:.2} ms/record) |\n",
                raw.concurrent_per_s
            );
            for l in [&raw.latency, &raw.latency_at_rate] {
                out += &format!(
                    "| raw rdkafka latency, send → receive, {:.0} records/s | p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms{} |\n",
                    l.rate_per_s,
                    l.p50_ms,
                    l.p95_ms,
                    l.p99_ms,
                    l.max_ms,
                    missing(l)
                );
            }
        }
        if let Some(drain) = &self.drain {
            out += &format!(
                "| drain: the consumer alone applying a backlog of {} `user.created.v1` records (group join took {:.1} s) | {:.0} events/s ({:.0} % of raw consume); peak RSS {} MiB |\n",
                drain.events,
                drain.join_seconds,
                drain.per_s,
                drain.ratio_to_raw * 100.0,
                drain.peak_rss_kib / 1024
            );
        }
        if let Some(scaling) = &self.scaling {
            let rates: Vec<String> = scaling
                .per_s_by_members
                .iter()
                .enumerate()
                .map(|(members, per_s)| format!("{} {per_s:.0}", members + 1))
                .collect();
            out += &format!(
                "| scaling: a backlog of {} `token.issued.v1` records while a 2nd and a 3rd member join | events/s by members: {}{} (before the next member's process started: {}); {} partitions moved (the fewest possible: {}); {} records handled again and found applied; every event applied once |\n",
                scaling.events,
                rates.join(", "),
                if rates.len() < 3 {
                    " (the drain ended before the last member held partitions)"
                } else {
                    ""
                },
                scaling
                    .per_s_before_next_launch
                    .iter()
                    .enumerate()
                    .map(|(members, per_s)| format!("{} {per_s:.0}", members + 1))
                    .collect::<Vec<_>>()
                    .join(", "),
                scaling.partitions_moved,
                scaling.fewest_moves,
                scaling.duplicates
            );
        }
        if let Some(relay) = &self.relay_drain {
            out += &format!(
                "| relay drain: a backlog of {} outbox rows published once the relay may publish (its election and first batch took {:.1} s) | {:.0} rows/s ({:.0} % of raw produce) |\n",
                relay.events,
                relay.start_seconds,
                relay.per_s,
                relay.ratio_to_raw * 100.0
            );
        }
        if let Some(pipeline) = &self.pipeline {
            out += &format!(
                "| pipeline: outbox → relay → Kafka → consumer → read model ({} events) | {:.0} events/s ({:.0} % of raw; appended at {:.0} events/s) |\n",
                pipeline.events,
                pipeline.per_s,
                pipeline.ratio_to_raw * 100.0,
                pipeline.appends_per_s
            );
        }
        for (name, latency) in [
            ("outbox commit → applied", &self.latency_outbox),
            ("HTTP 2xx → applied", &self.latency_http),
        ] {
            if let Some(l) = latency {
                out += &format!(
                    "| latency, {name}, {:.0} events/s, {} events | p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms{} |\n",
                    l.rate_per_s,
                    l.count,
                    l.p50_ms,
                    l.p95_ms,
                    l.p99_ms,
                    l.max_ms,
                    missing(l)
                );
            }
        }
        for (name, from, stages) in [
            ("outbox commit → applied", "commit", &self.latency_stages),
            ("HTTP 2xx → applied", "2xx", &self.latency_http_stages),
        ] {
            let Some(stages) = stages else { continue };
            let (published, apply_started, applied) = stages.slowest_percent_ms;
            let (first, last) = stages.slowest_percent_committed_s;
            out += &format!(
                "| latency, {name}, by stage ({} events; p50 / p99, and the median over the slowest 1 %) | {from} → marked published {:.1} / {:.1} ms ({published:.1}); {from} → the applying transaction began {:.1} / {:.1} ms ({apply_started:.1}); its start → on the feed {:.1} / {:.1} ms ({applied:.1}); the slowest 1 % committed {first:.1} to {last:.1} s into the run{} |\n",
                stages.count,
                stages.published_ms.0,
                stages.published_ms.1,
                stages.apply_started_ms.0,
                stages.apply_started_ms.1,
                stages.applied_ms.0,
                stages.applied_ms.1,
                stages.pressure.map_or(String::new(), |((cpu, io), (slow_cpu, slow_io))| format!(
                    "; some task waiting for a core {:.0} % of the time (the slowest 1 %: {:.0} %), for I/O {:.0} % ({:.0} %)",
                    cpu * 100.0,
                    slow_cpu * 100.0,
                    io * 100.0,
                    slow_io * 100.0
                )),
            );
        }
        for (l, cpu) in &self.latency_sweep {
            let busiest: Vec<String> = cpu
                .by_process
                .iter()
                .take(3)
                .map(|(name, seconds)| format!("{name} {:.0} %", 100.0 * seconds / cpu.wall_seconds.max(f64::EPSILON)))
                .collect();
            out += &format!(
                "| sweep, outbox commit → applied, appended at {:.0} events/s | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{}; CPU of one core: {} |\n",
                l.rate_per_s,
                l.p50_ms,
                l.p99_ms,
                l.max_ms,
                missing(l),
                busiest.join(", ")
            );
        }
        if let Some((best, _)) = self
            .latency_sweep
            .iter()
            .filter(|(l, _)| l.p99_ms < 100.0 && l.missing == 0)
            .max_by(|a, b| a.0.rate_per_s.total_cmp(&b.0.rate_per_s))
        {
            out += &format!(
                "| highest rate swept with outbox commit → applied p99 under 100 ms | {:.0} events/s (p99 {:.1} ms) |\n",
                best.rate_per_s, best.p99_ms
            );
        }
        if let Some(floor) = self.argon2_per_second {
            out += &format!(
                "| argon2id floor (m=19 MiB, t=2, p=1) on {} cores | {floor:.1} hashes/s |\n",
                self.cores
            );
        }
        for http in &self.http {
            out += &format!(
                "| `{}` × {} | {:.1} req/s ({:.0} % of argon2), p50 {:.0} ms, p99 {:.0} ms{} |\n",
                http.endpoint,
                http.concurrency,
                http.per_s,
                http.ratio_to_argon2 * 100.0,
                http.p50_ms,
                http.p99_ms,
                if http.failures > 0 {
                    format!(", {} failed", http.failures)
                } else {
                    String::new()
                }
            );
        }
        let drain_cpu = self.drain.as_ref().map(|drain| drain.cpu.clone());
        let relay_cpu = self.relay_drain.as_ref().map(|relay| relay.cpu.clone());
        for (name, cpu) in [
            ("drain", &drain_cpu),
            ("relay drain", &relay_cpu),
            ("pipeline run", &self.pipeline_cpu),
            ("HTTP runs", &self.http_cpu),
        ] {
            if let Some(cpu) = cpu {
                let parts: Vec<String> = cpu
                    .by_process
                    .iter()
                    .map(|(name, seconds)| format!("{name} {seconds:.1} s"))
                    .collect();
                out += &format!(
                    "| CPU during the {name} ({:.1} s × {} cores) | {} |\n",
                    cpu.wall_seconds,
                    self.cores,
                    parts.join(", ")
                );
            }
        }
        for (members, cpu) in self
            .scaling
            .iter()
            .flat_map(|scaling| scaling.cpu_by_members.iter().enumerate())
        {
            out += &format!(
                "| CPU during the scaling drain with {} member{} ({:.1} s × {} cores) | {} |\n",
                members + 1,
                if members == 0 { "" } else { "s" },
                cpu.wall_seconds,
                self.cores,
                cpu.by_process
                    .iter()
                    .map(|(name, seconds)| format!("{name} {seconds:.1} s"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if let Some((producer, consumer)) = self.peak_rss_kib {
            out += &format!(
                "| peak resident memory | producer {:.0} MiB, consumer {:.0} MiB |\n",
                producer as f64 / 1024.0,
                consumer as f64 / 1024.0
            );
        }
        out
    }
}

/// Latencies of one run, with when each was sent (for plots).
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// Milliseconds per event that arrived.
    pub latencies_ms: Vec<f64>,
    /// Events sent.
    pub sent: usize,
    /// Seconds the sending lasted.
    pub seconds: f64,
}

impl Samples {
    /// Events per second sent.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.seconds.max(f64::EPSILON)
    }

    /// Percentiles at `rate` events per second.
    pub fn summary(&self, rate: f64) -> LatencySummary {
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        LatencySummary {
            rate_per_s: rate,
            count: sorted.len(),
            p50_ms: percentile(&sorted, 0.50),
            p95_ms: percentile(&sorted, 0.95),
            p99_ms: percentile(&sorted, 0.99),
            max_ms: sorted.last().copied().unwrap_or(f64::NAN),
            missing: self.sent - sorted.len(),
        }
    }
}

/// The `q` quantile of `sorted` (nearest rank).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(total_ms: f64, apply_started_ms: f64) -> StageSample {
        StageSample {
            committed_s: total_ms / 1000.0,
            pressure: Some((0.5, total_ms / 1000.0)),
            total_ms,
            published_ms: apply_started_ms / 2.0,
            apply_started_ms,
            applied_ms: total_ms - apply_started_ms,
        }
    }

    #[test]
    fn stages_split_the_total_and_single_out_the_slowest_percent() {
        // 200 events of 1..=200 ms, each half before the apply began; the
        // slowest 1 % are the two of 199 and 200 ms.
        let samples: Vec<StageSample> = (1..=200).map(|ms| sample(f64::from(ms), f64::from(ms) / 2.0)).collect();
        let stages = LatencyStages::of(samples);
        assert_eq!(stages.count, 200);
        assert_eq!(stages.apply_started_ms, (50.0, 99.0));
        assert_eq!(stages.applied_ms, (50.0, 99.0));
        assert_eq!(stages.slowest_percent_ms, (49.75, 99.5, 99.5));
        assert_eq!(stages.slowest_percent_committed_s, (0.199, 0.2));
        let ((cpu, io), (slow_cpu, slow_io)) = stages.pressure.expect("pressure");
        assert_eq!((cpu, slow_cpu), (0.5, 0.5));
        assert!((io - 0.1005).abs() < 1e-9, "{io}");
        assert!((slow_io - 0.1995).abs() < 1e-9, "{slow_io}");
    }

    #[test]
    fn percentile_is_the_nearest_rank() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(percentile(&sorted, 0.5), 50.0);
        assert_eq!(percentile(&sorted[..1], 0.99), 1.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
