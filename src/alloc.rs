//! The allocator: how many warm workers each pool keeps, and what it reserves for them, within
//! the `[budget]` precog may hold for all pools together.
//!
//! Pure code. Per pool the engine hands in the probabilities of the active sessions' hot paths
//! (summed per session over the pool's processes), the pool's arrival rate and run time, how much
//! latency a warm worker saves there (cold start minus warm run, as measured), and its learned
//! warm window. [`plan`] answers with the warm workers to keep and the memory and CPU weight to
//! reserve for them.
//!
//! Worker `k` of a pool is worth what it saves times the chance that a `k`-th run arrives: the
//! `k`-th most likely session's probability, or certainty for the workers the arrival rate alone
//! keeps busy (Little's law) and, inside the warm window, for the concurrency seen recently. The
//! pool's `warm_min` is always kept; beyond it, workers are granted in order of that worth for as
//! long as the memory budget lasts, so when it is short the pool where a warm worker saves most
//! wins.
//!
//! The warm window follows the hybrid policy of Shahrad et al. ("Serverless in the Wild", ATC'20):
//! from the histogram of idle gaps between a pool's requests, workers beyond the predicted demand
//! are let go after a request and brought back at a low percentile of the gap (pre-warm), and kept
//! until a high percentile (keep-alive). Too few gaps, or gaps longer than the histogram is worth,
//! fall back to a fixed keep-alive.

use crate::tune::LogHistogram;

/// The pre-warm and keep-alive percentiles of the idle-gap histogram.
const PREWARM_QUANTILE: f64 = 0.05;
const KEEP_ALIVE_QUANTILE: f64 = 0.99;
/// The margins the policy puts around both.
const PREWARM_MARGIN: f64 = 0.9;
const KEEP_ALIVE_MARGIN: f64 = 1.1;
/// Gaps needed before the histogram decides.
const MIN_GAPS: f64 = 10.0;
/// A worker whose chance of being needed is below this is not worth keeping warm.
const MIN_WORTH: f64 = 0.05;
/// Little's law gives the mean; keep this much more for arrivals that bunch up.
const RATE_HEADROOM: f64 = 1.5;

/// The bounds of a learned keep-alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAliveBounds {
    pub min_ms: u64,
    pub max_ms: u64,
    /// Used until enough gaps were seen.
    pub default_ms: u64,
}

impl Default for KeepAliveBounds {
    fn default() -> Self {
        KeepAliveBounds {
            min_ms: 2_000,
            max_ms: 600_000,
            default_ms: 30_000,
        }
    }
}

/// When a pool's extra workers should be warm, counted from its last request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmWindow {
    /// Bring extra workers back this long after the last request (0: keep them from the start).
    pub prewarm_ms: u64,
    /// Let them go this long after the last request.
    pub keep_alive_ms: u64,
    /// The window was learned from the pool's gaps, not the default.
    pub learned: bool,
}

impl WarmWindow {
    /// Whether the pool's recent concurrency should be kept warm `since_ms` after its last
    /// request.
    pub fn is_warm(&self, since_ms: u64) -> bool {
        since_ms >= self.prewarm_ms && since_ms < self.keep_alive_ms
    }
}

/// The idle gaps between one pool's requests.
#[derive(Debug, Clone, Default)]
pub struct IdleGaps {
    gaps_ms: LogHistogram,
    last_ms: Option<u64>,
}

impl IdleGaps {
    /// A request arrived at `now_ms`.
    pub fn arrival(&mut self, now_ms: u64) {
        if let Some(last) = self.last_ms {
            self.gaps_ms.record(now_ms.saturating_sub(last));
        }
        self.last_ms = Some(now_ms.max(self.last_ms.unwrap_or(0)));
    }

    pub fn since_last_ms(&self, now_ms: u64) -> Option<u64> {
        self.last_ms.map(|l| now_ms.saturating_sub(l))
    }

    /// Lets old gaps lose weight.
    pub fn fade(&mut self, factor: f64) {
        self.gaps_ms.fade(factor);
    }

    /// The warm window the gaps call for.
    pub fn window(&self, b: KeepAliveBounds) -> WarmWindow {
        let fixed = WarmWindow {
            prewarm_ms: 0,
            keep_alive_ms: b.default_ms.clamp(b.min_ms, b.max_ms),
            learned: false,
        };
        if self.gaps_ms.weight() < MIN_GAPS {
            return fixed;
        }
        let (Some(lo), Some(hi)) = (
            self.gaps_ms.quantile(PREWARM_QUANTILE),
            self.gaps_ms.quantile(KEEP_ALIVE_QUANTILE),
        ) else {
            return fixed;
        };
        if hi > b.max_ms {
            // Gaps longer than any keep-alive: the histogram says nothing useful.
            return fixed;
        }
        let prewarm = (lo as f64 * PREWARM_MARGIN) as u64;
        // Letting a worker go for less than the shortest keep-alive saves nothing.
        let prewarm = if prewarm < b.min_ms { 0 } else { prewarm };
        let keep_alive = ((hi as f64 * KEEP_ALIVE_MARGIN) as u64).clamp(b.min_ms, b.max_ms);
        WarmWindow {
            prewarm_ms: prewarm,
            keep_alive_ms: keep_alive.max(prewarm + b.min_ms),
            learned: true,
        }
    }
}

/// What the allocator knows of one pool.
#[derive(Debug, Clone, Default)]
pub struct PoolDemand {
    pub name: String,
    pub warm_min: usize,
    pub workers_max: usize,
    /// Memory reserved per warm worker.
    pub reserve_per_worker: u64,
    /// The pool's configured CPU weight (100 when unset).
    pub cpu_weight: u64,
    /// Per active session: the chance it asks this pool for a run soon (at most 1 each).
    pub session_p: Vec<f64>,
    /// Runs per second arriving lately.
    pub arrivals_per_s: f64,
    /// Mean run time, in seconds.
    pub exec_s: f64,
    /// Latency a warm worker saves over a cold start, in milliseconds.
    pub saved_ms: f64,
    /// Most workers busy at once lately.
    pub recent_busy: usize,
    /// Time since the pool's last request, if any.
    pub since_last_ms: Option<u64>,
    pub window: Option<WarmWindow>,
}

/// What precog may reserve for all pools together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub memory: u64,
    pub cpus: usize,
}

/// The allocator's decision for one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolPlan {
    pub name: String,
    /// Warm workers to keep.
    pub warm: usize,
    /// Warm workers the demand alone asked for, before the budget.
    pub wanted: usize,
    /// Memory to reserve (v2 `memory.min`, v1 soft limit).
    pub memory_reserve: u64,
    pub cpu_weight: u64,
    /// Expected latency saved by the warm workers beyond `warm_min`, in milliseconds.
    pub benefit_ms: f64,
    /// Predicted runs soon (the sum of the sessions' chances).
    pub expected_runs: f64,
}

/// The chance that worker `k` (0-based, beyond none) of a pool is needed soon.
fn worth(d: &PoolDemand, sorted_p: &[f64], k: usize) -> f64 {
    let rate_need = (d.arrivals_per_s * d.exec_s * RATE_HEADROOM).ceil() as usize;
    let in_window = match (d.window, d.since_last_ms) {
        (Some(w), Some(since)) => w.is_warm(since),
        _ => false,
    };
    let mut p = sorted_p.get(k).copied().unwrap_or(0.0).clamp(0.0, 1.0);
    if k < rate_need || (in_window && k < d.recent_busy) {
        p = 1.0;
    }
    p
}

/// Warm workers and reservations for every pool, within the budget.
pub fn plan(pools: &[PoolDemand], budget: Budget) -> Vec<PoolPlan> {
    let sorted: Vec<Vec<f64>> = pools
        .iter()
        .map(|d| {
            let mut p = d.session_p.clone();
            p.sort_by(|a, b| b.total_cmp(a));
            p
        })
        .collect();

    let mut warm: Vec<usize> = pools
        .iter()
        .map(|d| d.warm_min.min(d.workers_max))
        .collect();
    let mut memory_left = budget.memory.saturating_sub(
        pools
            .iter()
            .zip(&warm)
            .map(|(d, w)| d.reserve_per_worker * *w as u64)
            .sum(),
    );

    // Every worker a pool could add beyond its minimum, with what it is worth.
    let mut offers: Vec<(f64, usize, usize)> = Vec::new();
    let mut wanted = warm.clone();
    for (i, d) in pools.iter().enumerate() {
        for k in warm[i]..d.workers_max {
            let p = worth(d, &sorted[i], k);
            if p < MIN_WORTH {
                break;
            }
            wanted[i] = k + 1;
            offers.push((p * d.saved_ms.max(1.0), i, k));
        }
    }
    offers.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.2.cmp(&b.2)));

    let mut benefit = vec![0.0; pools.len()];
    for (value, i, k) in offers {
        // A pool's workers are granted in order; a gap means the budget ran out for it.
        if k != warm[i] {
            continue;
        }
        let cost = pools[i].reserve_per_worker;
        if cost > memory_left {
            continue;
        }
        memory_left -= cost;
        warm[i] += 1;
        benefit[i] += value;
    }

    pools
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let base = d.warm_min.max(1) as u64;
            let weight = d.cpu_weight.max(1) * (warm[i].max(1) as u64).max(base) / base;
            PoolPlan {
                name: d.name.clone(),
                warm: warm[i],
                wanted: wanted[i],
                memory_reserve: d.reserve_per_worker * warm[i] as u64,
                cpu_weight: weight.clamp(1, 10_000),
                benefit_ms: benefit[i],
                // An empty sum of floats is -0.0, which the log and `stats` would print as is.
                expected_runs: d.session_p.iter().sum::<f64>() + 0.0,
            }
        })
        .collect()
}

/// Cuts the pools' CPU quotas (percent of one CPU) to the CPU budget, taking first from the pools
/// where a warm worker saves least; no quota goes below its floor.
pub fn fit_cpu(quotas: &[(f64, f64, f64)], budget_cpus: usize) -> Vec<f64> {
    let budget = budget_cpus as f64 * 100.0;
    let mut out: Vec<f64> = quotas.iter().map(|q| q.0).collect();
    let mut over = out.iter().sum::<f64>() - budget;
    let mut order: Vec<usize> = (0..quotas.len()).collect();
    order.sort_by(|a, b| quotas[*a].2.total_cmp(&quotas[*b].2));
    for i in order {
        if over <= 0.0 {
            break;
        }
        let (q, floor, _) = quotas[i];
        let cut = (q - floor).max(0.0).min(over);
        out[i] = q - cut;
        over -= cut;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn pool(name: &str, session_p: Vec<f64>, saved_ms: f64) -> PoolDemand {
        PoolDemand {
            name: name.into(),
            warm_min: 1,
            workers_max: 8,
            reserve_per_worker: 32 * MIB,
            cpu_weight: 100,
            session_p,
            exec_s: 0.01,
            saved_ms,
            ..PoolDemand::default()
        }
    }

    fn big() -> Budget {
        Budget {
            memory: 1 << 30,
            cpus: 2,
        }
    }

    #[test]
    fn a_burst_of_likely_sessions_asks_for_a_worker_each() {
        let p = plan(&[pool("shop", vec![0.9; 6], 80.0)], big());
        assert_eq!(p[0].warm, 6);
        assert_eq!(p[0].memory_reserve, 6 * 32 * MIB);
        assert!(p[0].cpu_weight > 100);
        // Ten sessions cannot have more than workers_max.
        let p = plan(&[pool("shop", vec![0.9; 10], 80.0)], big());
        assert_eq!(p[0].warm, 8);
    }

    #[test]
    fn a_lull_falls_back_to_warm_min() {
        let p = plan(&[pool("shop", vec![0.01; 20], 80.0)], big());
        assert_eq!(p[0].warm, 1);
        assert_eq!(p[0].memory_reserve, 32 * MIB);
    }

    #[test]
    fn a_short_budget_goes_to_the_pool_where_warm_saves_most() {
        let budget = Budget {
            memory: 6 * 32 * MIB,
            cpus: 2,
        };
        let p = plan(
            &[
                pool("slow_start", vec![0.8; 4], 400.0),
                pool("fast_start", vec![0.9; 4], 20.0),
            ],
            budget,
        );
        assert_eq!(p[0].warm, 4, "{p:?}");
        assert_eq!(p[1].warm, 2, "{p:?}");
        assert_eq!(p[1].wanted, 4);
        let reserved: u64 = p.iter().map(|x| x.memory_reserve).sum();
        assert!(reserved <= budget.memory);
    }

    #[test]
    fn arrivals_alone_keep_workers_warm_by_littles_law() {
        let mut d = pool("shop", vec![], 50.0);
        d.arrivals_per_s = 200.0;
        d.exec_s = 0.02;
        // 4 busy on average, 6 with headroom.
        assert_eq!(plan(&[d], big())[0].warm, 6);
    }

    #[test]
    fn a_pool_without_sessions_expects_zero_runs_not_minus_zero() {
        let p = plan(&[pool("shop", vec![], 50.0)], big());
        assert_eq!(p[0].expected_runs.to_string(), "0");
        assert!(p[0].expected_runs.is_sign_positive());
    }

    #[test]
    fn recent_concurrency_is_kept_only_inside_the_warm_window() {
        let mut d = pool("shop", vec![], 50.0);
        d.recent_busy = 4;
        d.window = Some(WarmWindow {
            prewarm_ms: 0,
            keep_alive_ms: 5_000,
            learned: true,
        });
        d.since_last_ms = Some(1_000);
        assert_eq!(plan(std::slice::from_ref(&d), big())[0].warm, 4);
        d.since_last_ms = Some(6_000);
        assert_eq!(plan(&[d], big())[0].warm, 1);
    }

    #[test]
    fn the_window_comes_from_the_idle_gaps() {
        let b = KeepAliveBounds::default();
        let mut g = IdleGaps::default();
        assert!(!g.window(b).learned);
        // Requests every 10 to 20 seconds.
        let mut t = 0;
        for i in 0..100 {
            t += 10_000 + (i % 11) * 1_000;
            g.arrival(t);
        }
        let w = g.window(b);
        assert!(w.learned);
        assert!((8_000..=10_000).contains(&w.prewarm_ms), "{w:?}");
        assert!((20_000..=30_000).contains(&w.keep_alive_ms), "{w:?}");
        assert!(!w.is_warm(1_000) && w.is_warm(15_000) && !w.is_warm(40_000));
    }

    #[test]
    fn a_burst_of_quick_requests_gives_the_shortest_keep_alive() {
        let b = KeepAliveBounds {
            min_ms: 1_000,
            max_ms: 60_000,
            default_ms: 30_000,
        };
        let mut g = IdleGaps::default();
        for t in 0..50 {
            g.arrival(t * 20);
        }
        let w = g.window(b);
        assert_eq!((w.prewarm_ms, w.keep_alive_ms), (0, 1_000));
    }

    #[test]
    fn cpu_quotas_fit_the_budget_cutting_the_least_useful_first() {
        let q = fit_cpu(&[(150.0, 50.0, 400.0), (150.0, 20.0, 10.0)], 2);
        assert_eq!(q, vec![150.0, 50.0]);
        let q = fit_cpu(&[(150.0, 100.0, 400.0), (150.0, 100.0, 10.0)], 2);
        assert_eq!(q, vec![100.0, 100.0]);
        assert_eq!(fit_cpu(&[(50.0, 10.0, 1.0)], 1), vec![50.0]);
    }
}
