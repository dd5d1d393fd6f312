//! Counters the engine keeps, and the `stats` reply built from them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::{Engine, json_map};
use crate::protocol::ErrorCode;

/// Request and outcome counters; plain numbers owned by the engine task.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: u64,
    pub served_cache: u64,
    pub served_inflight: u64,
    pub served_warm: u64,
    pub served_cold: u64,
    /// Shared with the server, which answers some errors without the engine.
    pub errors: Arc<ErrorCounts>,
    /// Latency of answered runs, as seen by the server, in power-of-two microsecond buckets.
    pub run_latency_us: [u64; 32],
}

/// Error replies by code: those the engine answers, and those the server answers itself (lines
/// that are not requests, overlong lines, refused connections).
#[derive(Debug, Default)]
pub struct ErrorCounts(Mutex<BTreeMap<&'static str, u64>>);

impl ErrorCounts {
    pub fn count(&self, code: ErrorCode) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(code.as_str()).or_default() += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Counters {
    pub fn count_error(&mut self, code: ErrorCode) {
        self.errors.count(code);
    }

    pub fn count_served(&mut self, served: &str) {
        match served {
            "cache" => self.served_cache += 1,
            "inflight" => self.served_inflight += 1,
            "warm" => self.served_warm += 1,
            _ => self.served_cold += 1,
        }
    }

    pub fn record_latency(&mut self, d: Duration) {
        let us = d.as_micros().max(1) as u64;
        let bucket = (63 - us.leading_zeros()) as usize;
        self.run_latency_us[bucket.min(31)] += 1;
    }

    /// Upper bound of the bucket holding the `q` quantile, in microseconds.
    pub fn latency_quantile_us(&self, q: f64) -> u64 {
        let total: u64 = self.run_latency_us.iter().sum();
        if total == 0 {
            return 0;
        }
        let want = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.run_latency_us.iter().enumerate() {
            seen += n;
            if seen >= want {
                return 1 << (i + 1);
            }
        }
        1 << 32
    }
}

impl Engine {
    pub(super) fn stats(&self) -> Map<String, Value> {
        let c = &self.counters;
        let pools: Map<String, Value> = self
            .pools
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    serde_json::to_value(p.stats()).unwrap_or_default(),
                )
            })
            .collect();
        json_map(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs(),
            "requests": c.requests,
            "served": {
                "cache": c.served_cache,
                "inflight": c.served_inflight,
                "warm": c.served_warm,
                "cold": c.served_cold,
            },
            "errors": c.errors.snapshot(),
            "run_latency_us": {
                "p50": c.latency_quantile_us(0.5),
                "p99": c.latency_quantile_us(0.99),
            },
            "inflight_jobs": self.inflight.len(),
            "policy": self.policy_view(),
            "pools": pools,
            "cache": match &self.cache {
                Some(cache) => store_json(&cache.stats()),
                None => store_off_json(self.cache_off.as_deref()),
            },
            "sessions": {"active": self.predictor.session_count(),
                "inputs_bytes": self.predictor.session_inputs_bytes()},
            "speculation": self.speculation_json(),
            "alloc": self.alloc_json(),
            "tune": self.tune_json(),
            "states": match &self.states {
                Some(states) => store_json(&states.stats()),
                None => store_off_json(self.states_off.as_deref()),
            },
        }))
    }
}

fn store_json(s: &crate::store::StoreStats) -> Value {
    json!({
        "open": true,
        "entries": s.entries,
        "bytes": s.bytes_used,
        "capacity": s.capacity,
        "hits": s.hits,
        "misses": s.misses,
        "expired": s.expired,
        "evicted": s.evicted,
        "damaged_dropped": s.damaged_dropped,
        "write_errors": s.write_errors,
        "disabled": s.disabled,
        "disabled_reason": disabled_reason(s),
    })
}

/// A store precogd runs without: it could not be opened at start (`why`), and nothing is kept
/// in it until a restart opens it.
fn store_off_json(why: Option<&str>) -> Value {
    json!({
        "open": false,
        "disabled": true,
        "disabled_reason": format!(
            "not opened at start: {}",
            why.unwrap_or("no store configured")
        ),
    })
}

/// Why a store stopped storing, for an operator reading `stats`.
fn disabled_reason(s: &crate::store::StoreStats) -> Option<&'static str> {
    if s.file_changed {
        Some("file changed under precogd")
    } else if s.disabled {
        Some("write error")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_counted_by_the_engine_and_the_server_add_up() {
        let mut c = Counters::default();
        let shared = c.errors.clone();
        c.count_error(ErrorCode::Timeout);
        shared.count(ErrorCode::BadJson);
        shared.count(ErrorCode::BadJson);
        let counts = c.errors.snapshot();
        assert_eq!(counts.get("timeout"), Some(&1));
        assert_eq!(counts.get("bad_json"), Some(&2));
    }

    #[test]
    fn latency_quantiles_come_from_buckets() {
        let mut c = Counters::default();
        for _ in 0..99 {
            c.record_latency(Duration::from_micros(100));
        }
        c.record_latency(Duration::from_millis(50));
        assert_eq!(c.latency_quantile_us(0.5), 128);
        assert_eq!(c.latency_quantile_us(1.0), 65536);
    }
}
