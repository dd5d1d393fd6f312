//! The engine's side of allocation and tuning: it feeds the pure [`crate::alloc`] and
//! [`crate::tune`] with what the engine sees (hot paths, arrivals, finished jobs, what the
//! cgroups measured) and applies their decisions to the pools and their cgroups.
//!
//! Hot paths come in with every event and hint; the warm targets are recomputed from them at
//! most every [`REPLAN_EVERY`] so a burst of sessions raises a pool before its runs arrive,
//! without a plan per event. The tick (once a second) measures the pools, tunes the quotas and
//! re-plans. Every change that reaches a cgroup is logged at `info` with the old value, the new
//! one and why, and announced as an [`EngineEvent`].

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::run::now_ms;
use super::{Command, Engine, EngineEvent, JobKey};
use crate::alloc::{self, Budget, IdleGaps, KeepAliveBounds, PoolDemand, PoolPlan, WarmWindow};
use crate::cgroup::PoolLimits;
use crate::config::{ByteSize, PoolConfig};
use crate::partition::HotEntry;
use crate::pool::{FailureKind, JobOutcome};
use crate::tune::{JobSample, Knob, PoolObservation, PoolTuner, ProcessBook, QuotaChange};

/// A session's hot path counts towards demand this long after it was last computed.
const DEMAND_WINDOW_MS: u64 = 15_000;
/// The least time between two plans triggered by events.
const REPLAN_EVERY: Duration = Duration::from_millis(50);
/// How long after a refused write of limits they are tried again.
const WRITE_RETRY: Duration = Duration::from_secs(10);
/// What a warm worker saves until a cold start was measured, in milliseconds.
const DEFAULT_SAVED_MS: f64 = 100.0;
/// The weight of the newest measurement in the moving averages.
const EWMA: f64 = 0.2;

/// Allocation and tuning state, owned by the engine.
#[derive(Default)]
pub(super) struct Tuning {
    pools: HashMap<String, PoolTuning>,
    processes: ProcessBook,
    /// Per session: when its hot path was last computed, and its chance per pool.
    sessions: HashMap<String, (u64, Vec<(String, f64)>)>,
    last_plan: Option<Instant>,
    bounds: KeepAliveBounds,
    /// Operators' changes of a pool's limits, answered once the cgroup holds them or the kernel
    /// refused them.
    awaiting_write: HashMap<String, Vec<ControlReply>>,
}

/// Where the answer to an operator's action goes.
pub(super) type ControlReply = tokio::sync::oneshot::Sender<Result<Value, String>>;

struct PoolTuning {
    tuner: PoolTuner,
    gaps: IdleGaps,
    arrivals: u64,
    arrivals_per_s: f64,
    exec_ms: Option<f64>,
    cold_ms: Option<f64>,
    warm_ms: Option<f64>,
    busy_recent: f64,
    last_cpu: Option<(u64, Instant)>,
    /// Processes that finished jobs since the last tick, for memory attribution.
    finished: BTreeSet<String>,
    /// Limits the configuration sets, which the tuner and the allocator adjust.
    configured: PoolLimits,
    /// Limits the cgroup holds: those last written, or read back after a refused write (which
    /// may have put some of its settings in force), so the next write is never skipped as done.
    applied: PoolLimits,
    /// A write of new limits is on its way; the next waits for it.
    writing: bool,
    /// The configured limits changed while a write was on its way: that write does not carry
    /// them, so a refusal of it is not theirs.
    changed_while_writing: bool,
    /// A write was refused: the tuner's limits are tried again from this time on (a change of
    /// the configured limits is written at once).
    retry_at: Option<Instant>,
    plan: Option<PoolPlan>,
    window: Option<WarmWindow>,
}

fn ewma(old: Option<f64>, new: f64) -> Option<f64> {
    Some(old.map_or(new, |o| o * (1.0 - EWMA) + new * EWMA))
}

fn bounds_of(p: &PoolConfig, budget: &crate::config::BudgetConfig) -> crate::tune::TuneBounds {
    let cpus = budget.cpus.0.len().max(1) as f64;
    // A quota without `cpu_min` or `cpu_max` is the operator's fixed choice: no bounds, no tuning.
    let fixed = p
        .cpu_quota
        .filter(|_| p.cpu_min.is_none() && p.cpu_max.is_none());
    crate::tune::TuneBounds {
        cpu_min: fixed.or(p.cpu_min).map_or(10.0, |c| c.0),
        cpu_max: fixed.or(p.cpu_max).map_or(cpus * 100.0, |c| c.0),
        memory_min: p.memory_reserve.map_or(32 << 20, |m| m.0),
        memory_ceiling: p
            .memory_ceiling
            .or(p.memory_max.map(|m| ByteSize(m.0.max(budget.memory.0))))
            .map_or(u64::MAX, |m| m.0),
    }
}

impl PoolTuning {
    fn new(p: &PoolConfig, budget: &crate::config::BudgetConfig) -> PoolTuning {
        let limits = PoolLimits::from_config(p);
        PoolTuning {
            tuner: PoolTuner::new(
                bounds_of(p, budget),
                limits.cpu_quota_pct,
                limits.memory_max,
            ),
            gaps: IdleGaps::default(),
            arrivals: 0,
            arrivals_per_s: 0.0,
            exec_ms: None,
            cold_ms: None,
            warm_ms: None,
            busy_recent: 0.0,
            last_cpu: None,
            finished: BTreeSet::new(),
            configured: limits.clone(),
            applied: limits,
            writing: false,
            changed_while_writing: false,
            retry_at: None,
            plan: None,
            window: None,
        }
    }

    fn saved_ms(&self) -> f64 {
        match (self.cold_ms, self.warm_ms) {
            (Some(c), Some(w)) => (c - w).max(1.0),
            _ => DEFAULT_SAVED_MS,
        }
    }
}

impl Tuning {
    /// Forgets a pool a reload removed: one added later under its name starts afresh, from its
    /// own configuration. Operators waiting for its cgroup to take their limits are answered:
    /// the write under way ends unheard.
    pub(super) fn forget_pool(&mut self, name: &str) {
        self.pools.remove(name);
        for reply in self.awaiting_write.remove(name).unwrap_or_default() {
            let _ = reply.send(Err(format!(
                "pool `{name}` was removed by a reload before its cgroup took the new limits"
            )));
        }
    }

    fn pool(&mut self, cfg: &crate::config::Config, name: &str) -> Option<&mut PoolTuning> {
        let p = cfg.pool(name)?;
        let t = self
            .pools
            .entry(name.to_string())
            .or_insert_with(|| PoolTuning::new(p, &cfg.budget));
        t.tuner.bounds = bounds_of(p, &cfg.budget);
        Some(t)
    }
}

impl Engine {
    /// A session's hot path was recomputed: it is the session's demand from now on.
    pub(super) fn note_hot_path(&mut self, session: &str, hot: &[HotEntry]) {
        let mut per_pool: Vec<(String, f64)> = Vec::new();
        for h in hot {
            let Some(pool) = self.config.process(&h.process).map(|p| &p.pool) else {
                continue;
            };
            match per_pool.iter_mut().find(|(n, _)| n == pool) {
                Some((_, p)) => *p = 1.0 - (1.0 - *p) * (1.0 - h.p),
                None => per_pool.push((pool.clone(), h.p)),
            }
        }
        self.tuning
            .sessions
            .insert(session.to_string(), (now_ms(), per_pool));
        if self
            .tuning
            .last_plan
            .is_none_or(|t| t.elapsed() >= REPLAN_EVERY)
        {
            self.allocate();
        }
    }

    pub(super) fn session_gone(&mut self, session: &str) {
        self.tuning.sessions.remove(session);
    }

    /// A job was handed to a pool.
    pub(super) fn note_arrival(&mut self, pool: &str) {
        let cfg = &self.config;
        if let Some(t) = self.tuning.pool(cfg, pool) {
            t.gaps.arrival(now_ms());
            t.arrivals += 1;
        }
    }

    /// A job finished: its figures go to the tuner; an OOM kill raises the limit at once.
    pub(super) fn tuning_job_done(&mut self, key: &JobKey, outcome: &JobOutcome) {
        let Some(pool) = self.config.process(&key.process).map(|p| p.pool.clone()) else {
            return;
        };
        let sample = JobSample {
            exec_us: outcome.exec_us,
            cpu_ns: outcome.cpu_ns,
        };
        let oom = matches!(&outcome.result, Err(f) if f.kind == FailureKind::Oom);
        let usage = self.tuning.processes.job(&key.process, sample);
        if oom {
            usage.oom_kills += 1;
        }
        let cfg = &self.config;
        let Some(t) = self.tuning.pool(cfg, &pool) else {
            return;
        };
        t.finished.insert(key.process.clone());
        if outcome.result.is_ok() {
            t.tuner.job(sample);
            let latency_ms = (outcome.wait_us + outcome.exec_us) as f64 / 1000.0;
            t.exec_ms = ewma(t.exec_ms, outcome.exec_us as f64 / 1000.0);
            if outcome.cold {
                t.cold_ms = ewma(t.cold_ms, latency_ms);
            } else {
                t.warm_ms = ewma(t.warm_ms, latency_ms);
            }
        }
        if oom && let Some(change) = t.tuner.oom_killed() {
            self.apply_quota(&pool);
            self.announce(&pool, &change);
        }
    }

    /// Once a second: measure every pool, tune its limits, and plan the warm workers.
    pub(super) fn tuning_tick(&mut self) {
        let now = now_ms();
        self.tuning.processes.fade_to(now);
        self.tuning
            .sessions
            .retain(|_, (at, _)| now.saturating_sub(*at) < DEMAND_WINDOW_MS);
        let names: Vec<String> = self.pools.keys().cloned().collect();
        for name in names {
            let busy = self.pools[&name].stats().busy;
            let placement = self.placements.get(&name).cloned();
            let cfg = &self.config;
            let Some(t) = self.tuning.pool(cfg, &name) else {
                continue;
            };
            let mut obs = PoolObservation {
                now_ms: now,
                busy,
                ..Default::default()
            };
            if let Some(pl) = &placement {
                let usage = pl.pool().usage();
                let at = Instant::now();
                if let Some((cpu, then)) = t.last_cpu {
                    let wall = at.duration_since(then).as_secs_f64();
                    if wall > 0.0 {
                        let used = usage.cpu_ns.saturating_sub(cpu) as f64 / 1e9 / wall;
                        obs.cpu_used_pct = Some(used * 100.0);
                    }
                }
                t.last_cpu = Some((usage.cpu_ns, at));
                let workers = pl.worker_usage();
                let sum: u64 = workers
                    .iter()
                    .map(|u| u.memory_peak.max(u.memory_now))
                    .sum();
                obs.memory_peak = Some(sum.max(usage.memory_now));
                let worker_peak = workers.iter().map(|u| u.memory_peak).max().unwrap_or(0);
                for process in std::mem::take(&mut t.finished) {
                    if worker_peak > 0
                        && let Some(u) = self.tuning.processes.processes.get_mut(&process)
                    {
                        u.memory_peak.record(worker_peak);
                    }
                }
            }
            let t = self.tuning.pools.get_mut(&name).expect("pool tuning");
            t.finished.clear();
            t.busy_recent = (t.busy_recent * 0.9).max(busy as f64);
            t.arrivals_per_s = t.arrivals_per_s * (1.0 - EWMA) + t.arrivals as f64 * EWMA;
            t.arrivals = 0;
            if placement.is_none() {
                continue;
            }
            let changes = t.tuner.observe(obs);
            let retry = t.retry_at.is_some_and(|at| at <= Instant::now());
            if retry {
                t.retry_at = None;
            }
            if !changes.is_empty() || retry {
                self.apply_quota(&name);
            }
            for c in changes {
                self.announce(&name, &c);
            }
        }
        self.allocate();
    }

    /// The warm workers the allocator last planned for `pool`, if it has planned any.
    pub(super) fn planned_warm(&self, pool: &str) -> Option<usize> {
        self.tuning.pools.get(pool)?.plan.as_ref().map(|p| p.warm)
    }

    /// Plans warm workers and reservations for every pool and applies what changed.
    pub(super) fn allocate(&mut self) {
        self.tuning.last_plan = Some(Instant::now());
        let now = now_ms();
        let mut demands = Vec::new();
        for p in &self.config.pools {
            let Some(t) = self.tuning.pools.get(&p.name) else {
                demands.push(PoolDemand {
                    name: p.name.clone(),
                    warm_min: p.warm_min,
                    workers_max: p.workers_max,
                    ..PoolDemand::default()
                });
                continue;
            };
            let session_p = self
                .tuning
                .sessions
                .values()
                .filter(|(at, _)| now.saturating_sub(*at) < DEMAND_WINDOW_MS)
                .filter_map(|(_, per)| per.iter().find(|(n, _)| *n == p.name).map(|x| x.1))
                .collect();
            let per_worker = p.memory_reserve.map_or(0, |m| m.0) / p.warm_min.max(1) as u64;
            demands.push(PoolDemand {
                name: p.name.clone(),
                warm_min: p.warm_min,
                workers_max: p.workers_max,
                reserve_per_worker: per_worker,
                cpu_weight: p.cpu_weight.unwrap_or(100),
                session_p,
                arrivals_per_s: t.arrivals_per_s,
                exec_s: t.exec_ms.unwrap_or(0.0) / 1000.0,
                saved_ms: t.saved_ms(),
                recent_busy: t.busy_recent.round() as usize,
                since_last_ms: t.gaps.since_last_ms(now),
                window: Some(t.gaps.window(self.tuning.bounds)),
            });
        }
        let budget = Budget {
            memory: self.config.budget.memory.0,
            cpus: self.config.budget.cpus.0.len(),
        };
        for (plan, demand) in alloc::plan(&demands, budget).into_iter().zip(demands) {
            let name = plan.name.clone();
            let Some(pool) = self.pools.get(&name).cloned() else {
                continue;
            };
            let cfg = &self.config;
            let Some(t) = self.tuning.pool(cfg, &name) else {
                continue;
            };
            let before = t.plan.as_ref().map(|p| p.warm);
            if before != Some(plan.warm) {
                pool.set_target_warm(plan.warm);
                if before.is_some() {
                    tracing::info!(pool = %name, old = before, new = plan.warm,
                        expected_runs = plan.expected_runs, "pool resized");
                }
                let _ = self.events.send(EngineEvent::PoolResized {
                    pool: name.clone(),
                    workers: plan.warm as u64,
                });
            }
            if let Some(w) = demand.window
                && t.window != Some(w)
            {
                pool.set_keep_alive(Duration::from_millis(w.keep_alive_ms));
                t.window = Some(w);
            }
            let reserve_changed = t.applied.memory_reserve.is_some()
                && t.plan.as_ref().map(|p| (p.memory_reserve, p.cpu_weight))
                    != Some((plan.memory_reserve, plan.cpu_weight));
            t.plan = Some(plan);
            if reserve_changed {
                self.apply_quota(&name);
            }
        }
    }

    /// Pool `old`'s configured limits were changed (by a reload or `set-pool`) to `new`'s: they
    /// are written to its cgroup now, and a quota or memory limit set by hand is where the tuner
    /// goes on from (above the floor a past OOM kill set, still).
    pub(super) fn limits_reconfigured(
        &mut self,
        old: &PoolConfig,
        new: &PoolConfig,
        budget: &crate::config::BudgetConfig,
    ) {
        let limits = PoolLimits::from_config(new);
        let t = self
            .tuning
            .pools
            .entry(new.name.clone())
            .or_insert_with(|| PoolTuning::new(old, budget));
        if limits == t.configured {
            return;
        }
        if limits.cpu_quota_pct != t.configured.cpu_quota_pct {
            t.tuner.cpu_quota = limits.cpu_quota_pct;
        }
        if limits.memory_max != t.configured.memory_max {
            t.tuner.memory_max = limits.memory_max;
        }
        t.tuner.bounds = bounds_of(new, budget);
        tracing::info!(pool = %new.name, old = %t.configured, new = %limits,
            "configured limits changed; writing them to the pool's cgroup");
        t.configured = limits;
        // The operator's new limits go out now, even while an earlier refusal waits its retry.
        t.retry_at = None;
        t.changed_while_writing = t.writing;
        self.apply_quota(&new.name);
    }

    /// Writes the tuner's limits and the allocator's reservation to the pool's cgroup.
    fn apply_quota(&mut self, pool: &str) {
        let Some(pl) = self.placements.get(pool).cloned() else {
            return;
        };
        let Some(t) = self.tuning.pools.get_mut(pool) else {
            return;
        };
        let mut next = t.configured.clone();
        next.cpu_quota_pct = t.tuner.cpu_quota.or(next.cpu_quota_pct);
        next.memory_max = t.tuner.memory_max.or(next.memory_max);
        if let (Some(plan), Some(_)) = (&t.plan, next.memory_reserve) {
            let cap = next.memory_max.unwrap_or(u64::MAX);
            next.memory_reserve = Some(plan.memory_reserve.min(cap));
            if next.cpu_weight.is_some() {
                next.cpu_weight = Some(plan.cpu_weight);
            }
        }
        // After a refusal the next try waits for `retry_at`: a value the kernel refuses is not
        // written (and warned about) at every tick.
        let waiting = t.retry_at.is_some_and(|at| at > Instant::now());
        if next == t.applied || t.writing || waiting {
            return;
        }
        t.writing = true;
        let to_engine = self.done_tx.clone();
        let pool = pool.to_string();
        // Off the runtime: lowering a memory limit makes the kernel reclaim in the writer.
        tokio::task::spawn_blocking(move || {
            let cgroup = pl.pool();
            let (limits, result) = match cgroup.set_limits(&next) {
                Ok(()) => (next, Ok(())),
                Err(e) => (cgroup.limits(), Err(e.to_string())),
            };
            let _ = to_engine.send(Command::LimitsWritten {
                pool,
                limits,
                result,
            });
        });
    }

    /// A write of new limits ended; limits wanted meanwhile are written next. After a refusal,
    /// `limits` is what the cgroup holds, and the write is tried again in [`WRITE_RETRY`].
    pub(super) fn limits_written(
        &mut self,
        pool: String,
        limits: PoolLimits,
        result: Result<(), String>,
    ) {
        let Some(t) = self.tuning.pools.get_mut(&pool) else {
            return;
        };
        t.writing = false;
        let superseded = std::mem::take(&mut t.changed_while_writing);
        if let Err(error) = result {
            tracing::warn!(pool, %error, retry_s = WRITE_RETRY.as_secs(), held = %limits,
                "cannot apply tuned limits");
            if superseded {
                // The limits configured since were never tried: they go out now, and whoever
                // changed them hears of their own write.
                t.applied = limits;
                t.retry_at = None;
                self.apply_quota(&pool);
                return self.answer_awaiting(&pool, None);
            }
            t.retry_at = Some(Instant::now() + WRITE_RETRY);
            self.answer_awaiting(&pool, Some((&error, &limits)));
            if let Some(t) = self.tuning.pools.get_mut(&pool) {
                t.applied = limits;
            }
            return;
        }
        if limits.memory_reserve != t.applied.memory_reserve
            || limits.cpu_weight != t.applied.cpu_weight
        {
            tracing::info!(
                pool,
                old_reserve = t.applied.memory_reserve,
                new_reserve = limits.memory_reserve,
                old_weight = t.applied.cpu_weight,
                new_weight = limits.cpu_weight,
                "reservation follows the warm workers"
            );
        }
        t.applied = limits;
        t.retry_at = None;
        self.apply_quota(&pool);
        self.answer_awaiting(&pool, None);
    }

    fn announce(&self, pool: &str, c: &QuotaChange) {
        let show = |v: f64| match c.knob {
            Knob::CpuQuota => format!("{v:.0}%"),
            Knob::MemoryMax => ByteSize(v as u64).to_string(),
        };
        let (old, new) = (show(c.old), show(c.new));
        tracing::info!(pool, what = c.knob.as_str(), %old, %new, why = %c.why, "quota changed");
        let _ = self.events.send(EngineEvent::QuotaChanged {
            pool: pool.to_string(),
            what: c.knob.as_str().to_string(),
            old,
            new,
            why: c.why.clone(),
        });
    }

    pub(super) fn alloc_json(&self) -> Value {
        let mut pools = Map::new();
        let mut reserved = 0;
        for (name, t) in &self.tuning.pools {
            let plan = t.plan.as_ref();
            reserved += plan.map_or(0, |p| p.memory_reserve);
            pools.insert(
                name.clone(),
                json!({
                    "warm": plan.map(|p| p.warm),
                    "wanted": plan.map(|p| p.wanted),
                    "expected_runs": plan.map(|p| p.expected_runs),
                    "benefit_ms": plan.map(|p| p.benefit_ms),
                    "memory_reserve": plan.map(|p| p.memory_reserve),
                    "cpu_weight": plan.map(|p| p.cpu_weight),
                    "arrivals_per_s": t.arrivals_per_s,
                    "saved_ms": t.saved_ms(),
                    "cold_ms": t.cold_ms,
                    "warm_ms": t.warm_ms,
                    "prewarm_ms": t.window.map(|w| w.prewarm_ms),
                    "keep_alive_ms": t.window.map(|w| w.keep_alive_ms),
                    "window_learned": t.window.is_some_and(|w| w.learned),
                }),
            );
        }
        json!({
            "budget": {
                "memory": self.config.budget.memory.0,
                "cpus": self.config.budget.cpus.0.len(),
                "memory_reserved": reserved,
            },
            "sessions_with_demand": self.tuning.sessions.len(),
            "pools": pools,
        })
    }

    pub(super) fn tune_json(&self) -> Value {
        let pools: Map<String, Value> = self
            .tuning
            .pools
            .iter()
            .map(|(n, t)| {
                let mut v = t.tuner.to_json();
                v["applied"] = json!(self.placements.contains_key(n));
                (n.clone(), v)
            })
            .collect();
        let processes: Map<String, Value> = self
            .tuning
            .processes
            .processes
            .iter()
            .map(|(n, u)| (n.clone(), u.to_json()))
            .collect();
        json!({"pools": pools, "processes": processes})
    }
}

#[path = "tuning_replies.rs"]
mod replies;
#[cfg(test)]
#[path = "tuning_tests.rs"]
mod tests;
