//! The replay's report: runs by how they were served, the app-seen latency of `run`, and the
//! daemon's speculation counters, per mode; as a table side by side or as JSON. Pure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::backend::Served;
use super::drive::{Played, RunRecord};

/// Runs answered after this are past the warm-up, where no cold spawn should happen.
pub const WARM_UP: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub mean: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Speculation {
    pub issued: Option<u64>,
    pub cancelled: Option<u64>,
    pub used: Option<u64>,
    pub wasted: Option<u64>,
    pub cpu_s_wasted: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ModeReport {
    pub mode: String,
    pub runs: u64,
    /// Runs by `served`, plus `failed`.
    pub served: BTreeMap<String, u64>,
    /// Share of runs answered from the cache or by joining a job in flight.
    pub cache_or_inflight: f64,
    pub run_errors: BTreeMap<String, u64>,
    /// The first failed run's process and message, by error code.
    pub first_failures: BTreeMap<String, String>,
    pub latency_us: Latency,
    /// Mean latency by how the run was served; `None` where no run was served that way.
    pub mean_us_by_served: BTreeMap<String, Option<f64>>,
    /// Runs whose inputs the action's own event made known, and their mean latency; then the
    /// mean of the others, whose inputs were known before the action.
    pub new_input_runs: u64,
    pub new_inputs_mean_us: Option<f64>,
    pub known_inputs_mean_us: Option<f64>,
    pub speculation: Speculation,
    /// The daemon's cold starts over all pools (None without a daemon or the counter).
    pub cold_starts: Option<u64>,
    /// Runs that had to start a worker, answered after the first minute.
    pub cold_runs_after_first_minute: u64,
    pub events: u64,
    /// Refused `event`/`end` requests by `op:code`.
    pub event_errors: BTreeMap<String, u64>,
    /// Runs by process, then by `served`.
    pub per_process: BTreeMap<String, BTreeMap<String, u64>>,
    /// How late actions started against the schedule.
    pub lag_ms_p99: f64,
    pub lag_ms_max: f64,
    pub wall_s: f64,
    /// Every run's latency, sorted, for the chart.
    #[serde(skip)]
    pub latencies_us: Vec<u64>,
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

impl ModeReport {
    /// Builds the report of one mode from what the replay saw and the daemon's `stats` reply.
    pub fn new(mode: &str, played: &Played, stats: Option<&Value>) -> ModeReport {
        let mut served: BTreeMap<String, u64> = Served::ALL
            .iter()
            .map(|s| (s.name().to_string(), 0))
            .collect();
        let mut run_errors = BTreeMap::new();
        let mut first_failures = BTreeMap::new();
        let mut per_process: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        let mut cold_late = 0;
        for r in &played.runs {
            *served.entry(r.served.name().into()).or_default() += 1;
            *per_process
                .entry(r.process.clone())
                .or_default()
                .entry(r.served.name().into())
                .or_default() += 1;
            if let Some(code) = &r.error {
                *run_errors.entry(code.clone()).or_default() += 1;
                let message = r.message.as_deref().unwrap_or("no message");
                first_failures
                    .entry(code.clone())
                    .or_insert_with(|| format!("{}: {message}", r.process));
            }
            cold_late += (r.served == Served::Cold && r.at > WARM_UP) as u64;
        }
        let mean_of = |keep: &dyn Fn(&RunRecord) -> bool| {
            let (n, sum) = played
                .runs
                .iter()
                .filter(|r| keep(r))
                .fold((0u64, 0u64), |(n, sum), r| (n + 1, sum + r.latency_us));
            (n > 0).then(|| sum as f64 / n as f64)
        };
        let mean_us_by_served = Served::ALL
            .iter()
            .map(|s| (s.name().to_string(), mean_of(&|r| r.served == *s)))
            .collect();
        let mut latencies_us: Vec<u64> = played.runs.iter().map(|r| r.latency_us).collect();
        latencies_us.sort_unstable();
        let runs = played.runs.len() as u64;
        let mean = latencies_us.iter().sum::<u64>() as f64 / runs.max(1) as f64;
        let mut lag = played.lag_us.clone();
        lag.sort_unstable();

        ModeReport {
            mode: mode.to_string(),
            runs,
            cache_or_inflight: (served["cache"] + served["inflight"]) as f64 / runs.max(1) as f64,
            served,
            run_errors,
            first_failures,
            latency_us: Latency {
                p50: quantile(&latencies_us, 0.5),
                p90: quantile(&latencies_us, 0.9),
                p99: quantile(&latencies_us, 0.99),
                mean,
            },
            mean_us_by_served,
            new_input_runs: played.runs.iter().filter(|r| r.new_inputs).count() as u64,
            new_inputs_mean_us: mean_of(&|r| r.new_inputs),
            known_inputs_mean_us: mean_of(&|r| !r.new_inputs),
            speculation: stats.map(speculation_of).unwrap_or_default(),
            cold_starts: stats.and_then(cold_starts_of),
            cold_runs_after_first_minute: cold_late,
            // Without a daemon there is nobody to tell.
            events: if mode == "spawn" { 0 } else { played.events },
            event_errors: played.notify_errors.clone(),
            per_process,
            lag_ms_p99: quantile(&lag, 0.99) as f64 / 1000.0,
            lag_ms_max: lag.last().copied().unwrap_or(0) as f64 / 1000.0,
            wall_s: played.wall.as_secs_f64(),
            latencies_us,
        }
    }
}

impl ModeReport {
    /// Takes off the daemon's counters what they held before this mode's measured pass (a
    /// ceiling's first pass only fills the cache).
    pub fn discount(&mut self, before: &Value) {
        fn less<T: Copy + std::ops::Sub<Output = T> + PartialOrd>(
            now: Option<T>,
            then: Option<T>,
        ) -> Option<T> {
            match (now, then) {
                (Some(n), Some(t)) if n >= t => Some(n - t),
                _ => None,
            }
        }
        let then = speculation_of(before);
        let s = &mut self.speculation;
        s.issued = less(s.issued, then.issued);
        s.cancelled = less(s.cancelled, then.cancelled);
        s.used = less(s.used, then.used);
        s.wasted = less(s.wasted, then.wasted);
        s.cpu_s_wasted = less(s.cpu_s_wasted, then.cpu_s_wasted);
        self.cold_starts = less(self.cold_starts, cold_starts_of(before));
    }
}

fn mean_text(mean: Option<f64>) -> String {
    mean.map_or("-".into(), |m| format!("{m:.0}"))
}

fn speculation_of(stats: &Value) -> Speculation {
    let s = &stats["speculation"];
    Speculation {
        issued: s["issued"].as_u64(),
        cancelled: s["cancelled"].as_u64(),
        used: s["used"].as_u64(),
        wasted: s["wasted"].as_u64(),
        cpu_s_wasted: s["cpu_s_wasted"].as_f64(),
    }
}

fn cold_starts_of(stats: &Value) -> Option<u64> {
    let pools = stats["pools"].as_object()?;
    pools
        .values()
        .map(|p| p["cold_starts"].as_u64())
        .sum::<Option<u64>>()
}

/// A whole replay: what was played and each mode's report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub file: String,
    pub format: String,
    pub speed: f64,
    pub sessions: usize,
    pub recorded_events: usize,
    /// Real span of the replayed sessions after idle stretches were cut, in seconds.
    pub span_s: f64,
    pub modes: Vec<ModeReport>,
    /// Each mode's mean latency over precog's (or the first mode's).
    pub mean_latency_ratio: BTreeMap<String, f64>,
}

impl Report {
    pub fn new(head: Report) -> Report {
        let mut r = head;
        let base = r
            .modes
            .iter()
            .find(|m| m.mode == "precog")
            .or(r.modes.first())
            .map(|m| (m.mode.clone(), m.latency_us.mean));
        if let Some((name, mean)) = base.filter(|b| b.1 > 0.0) {
            for m in &r.modes {
                if m.mode != name {
                    let key = format!("{}/{name}", m.mode);
                    r.mean_latency_ratio.insert(key, m.latency_us.mean / mean);
                }
            }
        }
        r
    }

    /// The side-by-side table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "replay of {} ({}): {}, {}, {:.0} s of shop time at {}x",
            self.file,
            self.format,
            crate::counted(self.sessions as u64, "session", "sessions"),
            crate::counted(
                self.recorded_events as u64,
                "recorded event",
                "recorded events"
            ),
            self.span_s,
            self.speed
        );
        let names: Vec<&str> = self.modes.iter().map(|m| m.mode.as_str()).collect();
        let mut row = |label: &str, cells: Vec<String>| {
            let _ = write!(out, "{label:<30}");
            for c in cells {
                let _ = write!(out, " {c:>12}");
            }
            out.push('\n');
        };
        row("", names.iter().map(|n| n.to_string()).collect());
        let each = |f: &dyn Fn(&ModeReport) -> String| -> Vec<String> {
            self.modes.iter().map(f).collect()
        };
        row("runs", each(&|m| m.runs.to_string()));
        for s in Served::ALL {
            row(
                &format!("  served {}", s.name()),
                each(&|m| m.served[s.name()].to_string()),
            );
        }
        row(
            "  from cache or inflight",
            each(&|m| format!("{:.1}%", m.cache_or_inflight * 100.0)),
        );
        row("latency p50 (us)", each(&|m| m.latency_us.p50.to_string()));
        row("latency p90 (us)", each(&|m| m.latency_us.p90.to_string()));
        row("latency p99 (us)", each(&|m| m.latency_us.p99.to_string()));
        row(
            "latency mean (us)",
            each(&|m| format!("{:.0}", m.latency_us.mean)),
        );
        if !self.mean_latency_ratio.is_empty() {
            let base = self
                .modes
                .iter()
                .find(|m| {
                    !self
                        .mean_latency_ratio
                        .keys()
                        .any(|k| k.starts_with(&m.mode))
                })
                .map_or("", |m| m.mode.as_str());
            row(
                &format!("mean latency / {base}"),
                each(
                    &|m| match self.mean_latency_ratio.get(&format!("{}/{base}", m.mode)) {
                        Some(r) => format!("{r:.2}x"),
                        None => "1.00x".into(),
                    },
                ),
            );
        }
        for s in Served::ALL.iter().filter(|s| **s != Served::Failed) {
            row(
                &format!("  mean when {} (us)", s.name()),
                each(&|m| mean_text(m.mean_us_by_served[s.name()])),
            );
        }
        row(
            "runs on inputs known before",
            each(&|m| (m.runs - m.new_input_runs).to_string()),
        );
        row(
            "  their mean latency (us)",
            each(&|m| mean_text(m.known_inputs_mean_us)),
        );
        row(
            "runs on inputs new in event",
            each(&|m| m.new_input_runs.to_string()),
        );
        row(
            "  their mean latency (us)",
            each(&|m| mean_text(m.new_inputs_mean_us)),
        );
        let opt = |v: Option<u64>| v.map_or("n/a".to_string(), |v| v.to_string());
        row(
            "speculative jobs issued",
            each(&|m| opt(m.speculation.issued)),
        );
        row("speculative jobs used", each(&|m| opt(m.speculation.used)));
        row(
            "speculative jobs wasted",
            each(&|m| opt(m.speculation.wasted)),
        );
        row(
            "speculative jobs cancelled",
            each(&|m| opt(m.speculation.cancelled)),
        );
        row(
            "CPU s wasted on speculation",
            each(&|m| {
                m.speculation
                    .cpu_s_wasted
                    .map_or("n/a".into(), |v| format!("{v:.3}"))
            }),
        );
        row("cold starts (daemon)", each(&|m| opt(m.cold_starts)));
        row(
            "cold runs after first minute",
            each(&|m| m.cold_runs_after_first_minute.to_string()),
        );
        row("failed runs", each(&|m| join_counts(&m.run_errors)));
        row("events sent", each(&|m| m.events.to_string()));
        row("refused events", each(&|m| join_counts(&m.event_errors)));
        row(
            "schedule lag p99/max (ms)",
            each(&|m| format!("{:.1}/{:.0}", m.lag_ms_p99, m.lag_ms_max)),
        );
        row("wall time (s)", each(&|m| format!("{:.1}", m.wall_s)));
        out
    }
}

/// What the table's words mean, for the modes it has.
const LEGEND: &[(&str, &str)] = &[
    (
        "precog",
        "precogd with prediction: likely runs are computed ahead and answered from its cache",
    ),
    (
        "no-predict",
        "the same precogd with prediction off: warm workers, and the results they cached",
    ),
    (
        "spawn",
        "no daemon: a worker process is started for each run",
    ),
];

impl Report {
    /// The table's terms, then what this replay shows, in a few sentences.
    pub fn reading(&self) -> String {
        let mut out = String::from("\nwhat the rows mean:\n");
        for (mode, meaning) in LEGEND {
            if self.modes.iter().any(|m| m.mode == *mode) {
                let _ = writeln!(out, "  {mode:<12}{meaning}");
            }
        }
        out.push_str(
            "  served      cache: a finished result, often a guess's; inflight: joined a job \
             already running;\n              warm: run on an idle worker; cold: a worker had to \
             start first\n  runs on inputs known before / new in event\n              whether \
             the action's own event made a run's inputs known: no guess can start before it\n  \
             speculative jobs  issued: computed ahead of time; used: a run was answered from \
             one;\n              wasted: its session ended first; cancelled: dropped before it \
             ran, or its worker\n              taken back for a real run; the rest failed or were \
             still running\n  cold starts (daemon)  jobs, runs or guesses, that a newly started \
             worker ran\n  cold runs after first minute  runs past the warm-up that waited for \
             a worker to start\n  events sent   the replayed events, and an `input` event after \
             each cart total; refused:\n              those precogd answered with an error\n  \
             schedule lag  how late the replay sent each step against the recorded timeline\n",
        );
        let _ = write!(out, "{}", self.conclusion());
        out
    }

    fn conclusion(&self) -> String {
        let mode = |name: &str| self.modes.iter().find(|m| m.mode == name);
        let mut out = String::new();
        let Some(precog) = mode("precog") else {
            return out;
        };
        out.push_str(
            "\nin this replay, mean run latency and runs from the cache or a job in flight:\n",
        );
        for (name, label) in [
            ("precog", "precog"),
            ("no-predict", "without prediction"),
            ("spawn", "a process per run"),
        ] {
            let Some(m) = mode(name) else { continue };
            let _ = write!(out, "  {label:<20}{:>8.0} us", m.latency_us.mean);
            if name != "precog" && precog.latency_us.mean > 0.0 {
                let ratio = m.latency_us.mean / precog.latency_us.mean;
                let _ = write!(out, " ({ratio:.2}x precog's)");
            }
            if name != "spawn" {
                let _ = write!(
                    out,
                    ", {:.1}% from the cache or in flight",
                    m.cache_or_inflight * 100.0
                );
            }
            out.push('\n');
        }
        let failed: u64 = self
            .modes
            .iter()
            .map(|m| m.run_errors.values().sum::<u64>())
            .sum();
        if failed > 0 {
            let _ = writeln!(out, "{failed} runs failed; the first of each kind:");
            for m in self.modes.iter() {
                for (code, first) in &m.first_failures {
                    let _ = writeln!(out, "  {:<12}{code} in {first}", m.mode);
                }
            }
        }
        if precog.cold_runs_after_first_minute > 0 {
            let _ = writeln!(
                out,
                "{} of precog's runs after the first minute waited for a worker to start.",
                precog.cold_runs_after_first_minute
            );
        }
        let lag = self.modes.iter().map(|m| m.lag_ms_max).fold(0.0, f64::max);
        if lag >= LATE_MS {
            let _ = writeln!(
                out,
                "the replay fell up to {lag:.0} ms behind its timeline: this machine was busy, \
                 and the latencies include that."
            );
        }
        out
    }
}

/// A schedule lag from which the replay says the machine could not keep up.
const LATE_MS: f64 = 1000.0;

/// Counts summed by error code (the part after `op:`), for a narrow table cell.
fn join_counts(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "0".into();
    }
    let mut by_code: BTreeMap<&str, u64> = BTreeMap::new();
    for (k, v) in counts {
        *by_code
            .entry(k.rsplit(':').next().unwrap_or(k))
            .or_default() += v;
    }
    by_code
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
