//! What the D-Bus interface shows, computed from the engine's `stats` snapshot.
//!
//! Pure functions over JSON values, shared by the daemon's interface and by `precogctl`, which
//! builds the same summary from the socket's `stats` reply when the bus is out of reach. Fields
//! the snapshot does not carry (yet) read as zero, so a newer client works with an older engine.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zbus::zvariant;

/// The interface's changing properties, as one comparable value.
#[derive(Debug, Clone, PartialEq)]
pub struct Properties {
    pub version: String,
    pub uptime_s: u64,
    pub active_sessions: u64,
    pub cache_bytes: u64,
    pub cache_entries: u64,
    pub hit_ratio: f64,
    pub speculation_precision: f64,
}

impl Properties {
    pub fn from_stats(stats: &Value) -> Properties {
        Properties {
            version: stats["version"].as_str().unwrap_or_default().to_string(),
            uptime_s: count(&stats["uptime_s"]),
            active_sessions: count(&stats["sessions"]["active"]),
            cache_bytes: count(&stats["cache"]["bytes"]),
            cache_entries: count(&stats["cache"]["entries"]),
            hit_ratio: hit_ratio(stats),
            speculation_precision: stats["speculation"]["precision"].as_f64().unwrap_or(0.0),
        }
    }

    /// The properties that differ from `before`, by their D-Bus names, with their new values.
    ///
    /// `Version` never changes while the daemon runs and `Uptime` changes every second, so
    /// neither is announced (the introspection data says so).
    pub fn changed_since(
        &self,
        before: &Properties,
    ) -> Vec<(&'static str, zvariant::Value<'static>)> {
        let mut out = Vec::new();
        if self.active_sessions != before.active_sessions {
            out.push(("ActiveSessions", self.active_sessions.into()));
        }
        if self.cache_bytes != before.cache_bytes {
            out.push(("CacheBytes", self.cache_bytes.into()));
        }
        if self.cache_entries != before.cache_entries {
            out.push(("CacheEntries", self.cache_entries.into()));
        }
        if self.hit_ratio != before.hit_ratio {
            out.push(("HitRatio", self.hit_ratio.into()));
        }
        if self.speculation_precision != before.speculation_precision {
            out.push(("SpeculationPrecision", self.speculation_precision.into()));
        }
        out
    }
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Runs answered from the cache or by joining a running job, over all runs answered.
pub fn hit_ratio(stats: &Value) -> f64 {
    let served = &stats["served"];
    let hits = count(&served["cache"]) + count(&served["inflight"]);
    let all = hits + count(&served["warm"]) + count(&served["cold"]);
    if all == 0 {
        0.0
    } else {
        hits as f64 / all as f64
    }
}

/// The short summary `Status()` returns: enough to tell at a glance whether precog is healthy.
pub fn status_summary(stats: &Value) -> Value {
    let p = Properties::from_stats(stats);
    let pools = stats["pools"].as_object();
    let sum = |field: &str| -> u64 {
        pools
            .map(|m| m.values().map(|p| count(&p[field])).sum())
            .unwrap_or(0)
    };
    let served = &stats["served"];
    let served_total: u64 = ["cache", "inflight", "warm", "cold"]
        .iter()
        .map(|k| count(&served[*k]))
        .sum();
    json!({
        "version": p.version,
        "uptime_s": p.uptime_s,
        "requests": count(&stats["requests"]),
        "runs_served": served_total,
        "hit_ratio": p.hit_ratio,
        "active_sessions": p.active_sessions,
        "cache_bytes": p.cache_bytes,
        "cache_entries": p.cache_entries,
        // Why the result cache stores nothing, when it does not.
        "cache_off": stats["cache"]["disabled_reason"].clone(),
        "speculation_precision": p.speculation_precision,
        // Guesses judged used or wasted: the precision's denominator (0: no precision yet).
        "speculation_judged": count(&stats["speculation"]["used"])
            + count(&stats["speculation"]["wasted"]),
        "pools": pools.map(|m| m.len()).unwrap_or(0),
        "workers": sum("workers"),
        "busy": sum("busy"),
        "workers_max": sum("workers_max"),
        "inflight_jobs": count(&stats["inflight_jobs"]),
    })
}

/// `Pools()`'s shape, built from a `stats` snapshot for a client that has only the socket: each
/// pool's live figures under `live` (with the limits its cgroup has in force, when it has one)
/// and its tuner's state under `tune`. `stats` does not carry the configured limits: there is
/// no `limits`.
pub fn pools_from_stats(stats: &Value) -> Value {
    let pools = stats["pools"].as_object().into_iter().flatten();
    let out: serde_json::Map<String, Value> = pools
        .map(|(name, live)| {
            let tune = stats["tune"]["pools"][name].clone();
            (name.clone(), json!({"live": live, "tune": tune}))
        })
        .collect();
    Value::Object(out)
}

/// Lets at most `per_window` signals through per window and counts the rest, so that a pool
/// whose workers crash in a loop cannot flood the bus.
#[derive(Debug)]
pub struct SignalLimiter {
    window: Duration,
    per_window: u32,
    started: Option<Instant>,
    sent: u32,
    dropped: u64,
}

impl SignalLimiter {
    pub fn new(per_window: u32, window: Duration) -> SignalLimiter {
        SignalLimiter {
            window,
            per_window,
            started: None,
            sent: 0,
            dropped: 0,
        }
    }

    /// Whether a signal at `now` may be sent. When a new window opens, returns the number
    /// dropped in the windows before, so that the caller can say so once.
    pub fn admit(&mut self, now: Instant) -> (bool, u64) {
        let mut dropped_before = 0;
        let expired = self
            .started
            .is_none_or(|s| now.saturating_duration_since(s) >= self.window);
        if expired {
            self.started = Some(now);
            self.sent = 0;
            dropped_before = std::mem::take(&mut self.dropped);
        }
        if self.sent < self.per_window {
            self.sent += 1;
            (true, dropped_before)
        } else {
            self.dropped += 1;
            (false, dropped_before)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> Value {
        json!({
            "version": "0.1.0",
            "uptime_s": 42,
            "requests": 10,
            "served": {"cache": 3, "inflight": 1, "warm": 4, "cold": 0},
            "pools": {
                "shop": {"workers": 2, "busy": 1, "workers_max": 8},
                "search": {"workers": 1, "busy": 0, "workers_max": 2},
            },
            "inflight_jobs": 1,
        })
    }

    #[test]
    fn missing_engine_fields_read_as_zero() {
        let p = Properties::from_stats(&stats());
        assert_eq!(p.version, "0.1.0");
        assert_eq!(p.uptime_s, 42);
        assert_eq!(p.active_sessions, 0);
        assert_eq!(p.cache_bytes, 0);
        assert_eq!(p.speculation_precision, 0.0);
    }

    #[test]
    fn engine_fields_are_read_by_their_names() {
        let mut s = stats();
        s["sessions"] = json!({"active": 7});
        s["cache"] = json!({"bytes": 4096, "entries": 3});
        s["speculation"] = json!({"precision": 0.75});
        let p = Properties::from_stats(&s);
        assert_eq!(
            (p.active_sessions, p.cache_bytes, p.cache_entries),
            (7, 4096, 3)
        );
        assert_eq!(p.speculation_precision, 0.75);
    }

    #[test]
    fn hit_ratio_counts_cache_and_inflight_over_all_runs() {
        assert_eq!(hit_ratio(&stats()), 0.5);
        assert_eq!(hit_ratio(&json!({})), 0.0);
    }

    #[test]
    fn status_says_why_the_cache_is_off() {
        assert_eq!(status_summary(&stats())["cache_off"], Value::Null);
        let mut s = stats();
        s["cache"] = json!({"entries": 0, "disabled": true,
            "disabled_reason": "file changed under precogd"});
        assert_eq!(
            status_summary(&s)["cache_off"],
            "file changed under precogd"
        );
    }

    #[test]
    fn status_sums_the_pools() {
        let s = status_summary(&stats());
        assert_eq!(s["pools"], 2);
        assert_eq!(s["workers"], 3);
        assert_eq!(s["busy"], 1);
        assert_eq!(s["runs_served"], 8);
        assert_eq!(s["hit_ratio"], 0.5);
    }

    #[test]
    fn pools_from_stats_carry_the_live_figures_and_the_tuner() {
        let mut s = stats();
        s["tune"] = json!({"pools": {"shop": {"memory_max": 64}}});
        let pools = pools_from_stats(&s);
        assert_eq!(pools["shop"]["live"]["workers_max"], 8);
        assert_eq!(pools["shop"]["tune"]["memory_max"], 64);
        assert_eq!(pools["search"]["tune"], Value::Null);
        assert!(pools["shop"].get("limits").is_none());
        assert_eq!(pools_from_stats(&json!({})), json!({}));
    }

    #[test]
    fn only_announced_properties_that_moved_are_listed() {
        let before = Properties::from_stats(&stats());
        let mut s = stats();
        s["uptime_s"] = json!(43);
        assert!(Properties::from_stats(&s).changed_since(&before).is_empty());

        s["served"]["cold"] = json!(8);
        s["cache"] = json!({"entries": 2});
        let names: Vec<&str> = Properties::from_stats(&s)
            .changed_since(&before)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["CacheEntries", "HitRatio"]);
    }

    #[test]
    fn limiter_drops_past_the_budget_and_reports_once() {
        let mut l = SignalLimiter::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        let sent = (0..10).filter(|_| l.admit(t0).0).count();
        assert_eq!(sent, 3);

        let (ok, dropped) = l.admit(t0 + Duration::from_millis(1500));
        assert!(ok);
        assert_eq!(dropped, 7);
        assert_eq!(l.admit(t0 + Duration::from_millis(1600)), (true, 0));
    }
}
