//! The soak's report, as markdown (`report.md`) and JSON (`report.json`):
//! the faults injected, the events accepted, applied, lost, applied twice
//! and reordered, the dead letters, the hostile records, the longest
//! stalls, and every violation.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::faults::Injected;
use crate::history::{Checked, STALL_BOUND};
use crate::traffic::Accepted;

/// One soak's results.
pub struct Report {
    /// The schedule's seed.
    pub seed: u64,
    /// The `--minutes` asked for.
    pub minutes: f64,
    /// From the first fault's window to the end of the traffic.
    pub duration: Duration,
    /// Every fault, in order.
    pub injected: Vec<Injected>,
    /// What the traffic was told.
    pub accepted: Accepted,
    /// What the history checker found.
    pub checked: Checked,
}

fn seconds(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 10.0).round() / 10.0
}

impl Report {
    /// The report as JSON.
    pub fn json(&self) -> Value {
        let checked = &self.checked;
        let stall = |stall: &crate::monitor::Stall| {
            json!({
                "partition": stall.partition,
                "from_s": seconds(stall.from),
                "to_s": seconds(stall.to),
                "seconds": seconds(stall.to - stall.from),
            })
        };
        json!({
            "seed": self.seed,
            "minutes": self.minutes,
            "duration_s": seconds(self.duration),
            "replay": format!("scripts/soak.sh --minutes {} --seed {}", self.minutes, self.seed),
            "faults": self.injected.iter().map(|fault| json!({
                "fault": fault.fault,
                "at_s": seconds(fault.at),
                "healed_s": seconds(fault.healed),
                "outcome": fault.outcome,
            })).collect::<Vec<_>>(),
            "requests": {
                "accepted": self.accepted.requests(),
                "users_created": self.accepted.users.len(),
                "failed": self.accepted.failed,
            },
            "events": {
                "committed": checked.outbox_events,
                "applied": checked.applied,
                "lost": checked.lost.len(),
                "applied_twice": checked.applied_twice.len(),
                "reordered": checked.reordered.len(),
            },
            "dead_letters": checked.dead_letters,
            "hostile": checked.hostile.iter().map(|(peer, outcome)| json!({
                "kind": peer.kind.to_string(),
                "record": peer.to_string(),
                "outcome": outcome,
            })).collect::<Vec<_>>(),
            "longest_stall": checked.longest_stall.as_ref().map(stall),
            "longest_stall_without_fault": checked.longest_healed_stall.as_ref().map(|(healed, at)| json!({
                "seconds": seconds(*healed),
                "bound_s": STALL_BOUND.as_secs(),
                "stall": stall(at),
            })),
            "quiescent_after_s": checked.quiescence.after.map(seconds),
            "violations": checked.violations,
        })
    }

    /// The report as markdown.
    pub fn markdown(&self) -> String {
        let checked = &self.checked;
        let mut md = format!(
            "# Soak, seed {}\n\n{} min of faults ({:.0} s in all); replay with `scripts/soak.sh --minutes {} --seed {}`.\n\n",
            self.seed,
            self.minutes,
            self.duration.as_secs_f64(),
            self.minutes,
            self.seed
        );
        md.push_str(if checked.violations.is_empty() {
            "**No violation.**\n\n"
        } else {
            "**Violations:**\n\n"
        });
        for violation in &checked.violations {
            md.push_str(&format!("- {violation}\n"));
        }
        if !checked.violations.is_empty() {
            md.push('\n');
        }
        let failed: Vec<String> = self
            .accepted
            .failed
            .iter()
            .map(|(what, count)| format!("{count} {what}"))
            .collect();
        md.push_str("| | |\n|---|---|\n");
        for (what, value) in [
            ("faults injected", self.injected.len().to_string()),
            ("requests accepted (2xx)", self.accepted.requests().to_string()),
            (
                "requests failed",
                if failed.is_empty() {
                    "0".to_owned()
                } else {
                    failed.join(", ")
                },
            ),
            ("events committed (outbox)", checked.outbox_events.to_string()),
            ("events applied", checked.applied.to_string()),
            ("lost", checked.lost.len().to_string()),
            ("applied twice", checked.applied_twice.len().to_string()),
            ("reordered", checked.reordered.len().to_string()),
            ("dead letters", checked.dead_letters.to_string()),
            (
                "longest stall",
                checked.longest_stall.as_ref().map_or("none".to_owned(), |stall| {
                    format!(
                        "{:.0} s, {} (from {:.0} s)",
                        (stall.to - stall.from).as_secs_f64(),
                        stall.partition,
                        stall.from.as_secs_f64()
                    )
                }),
            ),
            (
                "longest stall while no fault was active",
                checked
                    .longest_healed_stall
                    .as_ref()
                    .map_or("none".to_owned(), |(healed, stall)| {
                        format!(
                            "{:.0} s, {} (bound {} s)",
                            healed.as_secs_f64(),
                            stall.partition,
                            STALL_BOUND.as_secs()
                        )
                    }),
            ),
            (
                "quiescent after the traffic stopped",
                checked
                    .quiescence
                    .after
                    .map_or(format!("not reached: {}", checked.quiescence.pending), |after| {
                        format!("{:.1} s", after.as_secs_f64())
                    }),
            ),
        ] {
            md.push_str(&format!("| {what} | {value} |\n"));
        }
        md.push_str("\n## Faults\n\n| at (s) | healed (s) | fault | outcome |\n|---:|---:|---|---|\n");
        for fault in &self.injected {
            md.push_str(&format!(
                "| {:.1} | {:.1} | {} | {} |\n",
                fault.at.as_secs_f64(),
                fault.healed.as_secs_f64(),
                fault.fault,
                fault.outcome
            ));
        }
        md.push_str("\n## Hostile records\n\n| record | kind | outcome |\n|---|---|---|\n");
        for (peer, outcome) in &checked.hostile {
            md.push_str(&format!("| {peer} | {} | {outcome} |\n", peer.kind));
        }
        for (what, list) in [
            ("Lost", &checked.lost),
            ("Applied twice", &checked.applied_twice),
            ("Reordered", &checked.reordered),
        ] {
            if !list.is_empty() {
                md.push_str(&format!("\n## {what} (first 20)\n\n"));
                for line in list.iter().take(20) {
                    md.push_str(&format!("- {line}\n"));
                }
            }
        }
        md
    }

    /// Writes `report.md` and `report.json` into `out`.
    ///
    /// # Panics
    ///
    /// When `out` cannot be written.
    pub fn write(&self, out: &Path) {
        std::fs::create_dir_all(out).expect("the report's directory");
        std::fs::write(out.join("report.md"), self.markdown()).expect("report.md");
        let json = serde_json::to_string_pretty(&self.json()).expect("the report serializes") + "\n";
        std::fs::write(out.join("report.json"), json).expect("report.json");
    }
}
