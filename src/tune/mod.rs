//! The quota tuner: what jobs really use, and the CPU quota and memory limit each pool should
//! have because of it.
//!
//! Pure code over plain numbers. The engine feeds it every finished job (run time, CPU time,
//! and, where cgroups tell it, memory) and once a second what each pool used; the tuner answers
//! with [`QuotaChange`]s, which the engine writes to the pool's cgroup and announces.
//!
//! The rules, per pool:
//! - CPU quota: a high percentile of the CPU a job uses while it runs (CPU time over run time)
//!   times the jobs that run at once, plus a margin. A pool that used nearly all of its quota in
//!   the last interval is being throttled, which hides its real demand, so the quota grows by
//!   half at a time until it is not.
//! - memory limit: the recent peak plus a margin. An OOM kill raises the limit at once by at
//!   least a fifth (or a fixed step), and the raised value becomes a floor the limit never goes
//!   below again: the same job is never killed twice for the same lack of memory.
//! - hysteresis: a rise above a small band applies at once; a fall must be wanted for a while
//!   and by a wider band, so the limits do not flap.
//! - everything stays within the configured bounds (`cpu_min`, `cpu_max`, `memory_ceiling`).

mod histogram;

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

pub use histogram::LogHistogram;

/// Headroom over the measured CPU demand.
const CPU_MARGIN: f64 = 0.25;
/// A pool that used this share of its quota in an interval was throttled.
const THROTTLED_SHARE: f64 = 0.9;
/// How much a throttled pool's quota grows per step.
const THROTTLED_GROWTH: f64 = 1.5;
/// Headroom over the recent memory peak: a share, and at least a fixed amount.
const MEMORY_MARGIN: f64 = 0.5;
const MEMORY_MARGIN_MIN: u64 = 32 << 20;
/// After an OOM kill the limit grows by at least this share, or this step, whichever is more.
const OOM_GROWTH: f64 = 0.2;
const OOM_STEP: u64 = 32 << 20;
/// A rise smaller than this share of the current value is not worth a write.
const UP_BAND: f64 = 0.1;
/// A fall must be at least this share of the current value...
const DOWN_BAND: f64 = 0.2;
/// ...and wanted this long.
const DOWN_DELAY_MS: u64 = 60_000;
/// Jobs needed before the per-job figures are trusted.
const MIN_JOBS: f64 = 3.0;
/// Measurements lose half their weight after this long.
const HALF_LIFE_MS: u64 = 10 * 60_000;
/// The CPU percentile a quota covers.
const CPU_QUANTILE: f64 = 0.95;

/// Which limit a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Knob {
    /// Percent of one CPU.
    CpuQuota,
    /// Bytes.
    MemoryMax,
}

impl Knob {
    pub fn as_str(self) -> &'static str {
        match self {
            Knob::CpuQuota => "cpu_quota",
            Knob::MemoryMax => "memory_max",
        }
    }
}

/// A limit to change, with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaChange {
    pub knob: Knob,
    pub old: f64,
    pub new: f64,
    pub why: String,
}

/// What a finished job measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobSample {
    pub exec_us: u64,
    pub cpu_ns: u64,
}

/// What one process's jobs used, faded over time.
#[derive(Debug, Clone, Default)]
pub struct ProcessUsage {
    pub run_us: LogHistogram,
    pub cpu_ns: LogHistogram,
    /// Peak memory of the workers that ran the process's jobs, in bytes.
    pub memory_peak: LogHistogram,
    pub jobs: u64,
    pub oom_kills: u64,
}

impl ProcessUsage {
    pub fn to_json(&self) -> Value {
        json!({
            "jobs": self.jobs,
            "oom_kills": self.oom_kills,
            "run_us": quantiles(&self.run_us),
            "cpu_us": quantiles(&self.cpu_ns).map(|q| q.map(|v| v / 1000)),
            "memory_peak": quantiles(&self.memory_peak),
        })
    }

    fn fade(&mut self, factor: f64) {
        self.run_us.fade(factor);
        self.cpu_ns.fade(factor);
        self.memory_peak.fade(factor);
    }
}

fn quantiles(h: &LogHistogram) -> Option<[u64; 3]> {
    Some([h.quantile(0.5)?, h.quantile(0.95)?, h.max()])
}

/// The configured bounds a pool's limits stay within.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TuneBounds {
    pub cpu_min: f64,
    pub cpu_max: f64,
    pub memory_min: u64,
    pub memory_ceiling: u64,
}

/// What a pool used in the last interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolObservation {
    pub now_ms: u64,
    /// Workers running a job now.
    pub busy: usize,
    /// CPU the pool used over the interval, in percent of one CPU.
    pub cpu_used_pct: Option<f64>,
    /// Memory the pool's workers hold at their peak, in bytes.
    pub memory_peak: Option<u64>,
}

/// The tuner of one pool.
#[derive(Debug, Clone)]
pub struct PoolTuner {
    pub bounds: TuneBounds,
    /// The quota in force (percent of one CPU); `None` leaves CPU unlimited and untuned.
    pub cpu_quota: Option<f64>,
    /// The memory limit in force; `None` leaves memory unlimited and untuned.
    pub memory_max: Option<u64>,
    /// CPU over run time of each job, in thousandths of a CPU.
    utilisation: LogHistogram,
    busy: LogHistogram,
    memory: LogHistogram,
    /// Set by an OOM kill: the memory limit never goes below it again.
    pub oom_floor: Option<u64>,
    cpu_down_since: Option<u64>,
    memory_down_since: Option<u64>,
    last_fade_ms: Option<u64>,
    pub changes: u64,
}

impl PoolTuner {
    pub fn new(bounds: TuneBounds, cpu_quota: Option<f64>, memory_max: Option<u64>) -> PoolTuner {
        PoolTuner {
            bounds,
            cpu_quota,
            memory_max,
            utilisation: LogHistogram::default(),
            busy: LogHistogram::default(),
            memory: LogHistogram::default(),
            oom_floor: None,
            cpu_down_since: None,
            memory_down_since: None,
            last_fade_ms: None,
            changes: 0,
        }
    }

    /// A job of this pool finished.
    pub fn job(&mut self, s: JobSample) {
        if s.exec_us == 0 || s.cpu_ns == 0 {
            return;
        }
        let permille = s.cpu_ns as f64 / (s.exec_us as f64 * 1000.0) * 1000.0;
        self.utilisation.record(permille.round() as u64);
    }

    /// The kernel killed a worker of this pool for lack of memory: raise the limit now.
    pub fn oom_killed(&mut self) -> Option<QuotaChange> {
        let cur = self.memory_max?;
        let grown = (cur as f64 * (1.0 + OOM_GROWTH)) as u64;
        let new = grown
            .max(cur.saturating_add(OOM_STEP))
            .min(self.bounds.memory_ceiling.max(cur));
        self.oom_floor = Some(self.oom_floor.unwrap_or(0).max(new));
        self.memory_down_since = None;
        if new <= cur {
            return None;
        }
        self.memory_max = Some(new);
        self.changes += 1;
        Some(QuotaChange {
            knob: Knob::MemoryMax,
            old: cur as f64,
            new: new as f64,
            why: format!("a worker was OOM-killed at {}", mib(cur)),
        })
    }

    /// Once an interval: what the pool used, and the changes it calls for.
    pub fn observe(&mut self, o: PoolObservation) -> Vec<QuotaChange> {
        self.fade_to(o.now_ms);
        self.busy.record(o.busy as u64);
        if let Some(m) = o.memory_peak.filter(|m| *m > 0) {
            self.memory.record(m);
        }
        let mut out = Vec::new();
        if let Some(c) = self.tune_cpu(&o) {
            out.push(c);
        }
        if let Some(c) = self.tune_memory(o.now_ms) {
            out.push(c);
        }
        self.changes += out.len() as u64;
        out
    }

    fn fade_to(&mut self, now_ms: u64) {
        let last = *self.last_fade_ms.get_or_insert(now_ms);
        let dt = now_ms.saturating_sub(last);
        if dt == 0 {
            return;
        }
        let factor = 0.5f64.powf(dt as f64 / HALF_LIFE_MS as f64);
        self.utilisation.fade(factor);
        self.busy.fade(factor);
        self.memory.fade(factor);
        self.last_fade_ms = Some(now_ms);
    }

    /// The quota the measurements call for, and why; `None` without enough of them.
    pub fn cpu_wanted(&self, used_pct: Option<f64>) -> Option<(f64, String)> {
        let cur = self.cpu_quota?;
        let at_once = self.busy.quantile(0.99).unwrap_or(0).max(1) as f64;
        let from_jobs = (self.utilisation.weight() >= MIN_JOBS).then(|| {
            let per_job = self.utilisation.quantile(CPU_QUANTILE).unwrap_or(0) as f64 / 1000.0;
            per_job * at_once * 100.0 * (1.0 + CPU_MARGIN)
        });
        let throttled = used_pct.filter(|u| *u >= cur * THROTTLED_SHARE);
        let (want, why) = match (throttled, from_jobs) {
            (Some(used), jobs) => (
                (cur * THROTTLED_GROWTH).max(jobs.unwrap_or(0.0)),
                format!("throttled: used {used:.0}% of a {cur:.0}% quota"),
            ),
            (None, Some(jobs)) => (
                jobs,
                format!("jobs use {:.0}% of a CPU each (p95), {at_once} at once", {
                    jobs / at_once / (1.0 + CPU_MARGIN)
                }),
            ),
            (None, None) => return None,
        };
        let clamped = want.clamp(self.bounds.cpu_min, self.bounds.cpu_max);
        Some((clamped, why))
    }

    fn tune_cpu(&mut self, o: &PoolObservation) -> Option<QuotaChange> {
        let cur = self.cpu_quota?;
        let (want, why) = self.cpu_wanted(o.cpu_used_pct)?;
        let apply = decide(cur, want, o.now_ms, &mut self.cpu_down_since);
        if !apply {
            return None;
        }
        self.cpu_quota = Some(want);
        Some(QuotaChange {
            knob: Knob::CpuQuota,
            old: cur,
            new: want,
            why,
        })
    }

    /// The memory limit the measurements call for, and why.
    pub fn memory_wanted(&self) -> Option<(u64, String)> {
        self.memory_max?;
        let peak = self.memory.quantile(1.0)?;
        let margin = ((peak as f64 * MEMORY_MARGIN) as u64).max(MEMORY_MARGIN_MIN);
        let floor = self.bounds.memory_min.max(self.oom_floor.unwrap_or(0));
        let want = peak
            .saturating_add(margin)
            .max(floor)
            .min(self.bounds.memory_ceiling.max(floor));
        let why = match self.oom_floor {
            Some(f) if f == want => format!("kept at the size an OOM kill called for ({})", mib(f)),
            _ => format!("recent peak {} plus a margin", mib(peak)),
        };
        Some((want, why))
    }

    fn tune_memory(&mut self, now_ms: u64) -> Option<QuotaChange> {
        let cur = self.memory_max?;
        let (want, why) = self.memory_wanted()?;
        if !decide(cur as f64, want as f64, now_ms, &mut self.memory_down_since) {
            return None;
        }
        self.memory_max = Some(want);
        Some(QuotaChange {
            knob: Knob::MemoryMax,
            old: cur as f64,
            new: want as f64,
            why,
        })
    }

    pub fn to_json(&self) -> Value {
        json!({
            "cpu_quota_pct": self.cpu_quota,
            "memory_max": self.memory_max,
            "cpu_wanted_pct": self.cpu_wanted(None).map(|w| w.0),
            "memory_wanted": self.memory_wanted().map(|w| w.0),
            "oom_floor": self.oom_floor,
            "cpu_min_pct": self.bounds.cpu_min,
            "cpu_max_pct": self.bounds.cpu_max,
            "memory_min": self.bounds.memory_min,
            "memory_ceiling": self.bounds.memory_ceiling,
            "job_cpu_share_p95": self.utilisation.quantile(CPU_QUANTILE).map(|p| p as f64 / 1e3),
            "changes": self.changes,
        })
    }
}

/// Hysteresis: a rise past a small band applies now; a fall past a wider band applies once it
/// has been wanted for [`DOWN_DELAY_MS`].
fn decide(cur: f64, want: f64, now_ms: u64, down_since: &mut Option<u64>) -> bool {
    if want > cur * (1.0 + UP_BAND) {
        *down_since = None;
        return true;
    }
    if want < cur * (1.0 - DOWN_BAND) {
        let since = *down_since.get_or_insert(now_ms);
        if now_ms.saturating_sub(since) >= DOWN_DELAY_MS {
            *down_since = None;
            return true;
        }
        return false;
    }
    *down_since = None;
    false
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Per-process measurements, by process name.
#[derive(Debug, Clone, Default)]
pub struct ProcessBook {
    pub processes: BTreeMap<String, ProcessUsage>,
    last_fade_ms: Option<u64>,
}

impl ProcessBook {
    pub fn job(&mut self, process: &str, s: JobSample) -> &mut ProcessUsage {
        let u = self.processes.entry(process.to_string()).or_default();
        u.jobs += 1;
        if s.exec_us > 0 {
            u.run_us.record(s.exec_us);
        }
        if s.cpu_ns > 0 {
            u.cpu_ns.record(s.cpu_ns);
        }
        u
    }

    pub fn fade_to(&mut self, now_ms: u64) {
        let last = *self.last_fade_ms.get_or_insert(now_ms);
        let dt = now_ms.saturating_sub(last);
        if dt < 1000 {
            return;
        }
        let factor = 0.5f64.powf(dt as f64 / HALF_LIFE_MS as f64);
        for u in self.processes.values_mut() {
            u.fade(factor);
        }
        self.last_fade_ms = Some(now_ms);
    }
}

#[cfg(test)]
mod tests;
