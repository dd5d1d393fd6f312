//! The table `pools` and `set-pool` print: one line per pool, from the D-Bus `Pools` data or,
//! without the bus, from the socket's `stats`.
//!
//! CPU and MEMORY show the limits in force, as the pool's cgroup has them (the tuner moves them
//! within their bounds), followed by the configured value in brackets when that differs. A pool
//! without a cgroup has no limit in force: its configured value is shown with a `*`.

use serde_json::Value;

/// The header line.
pub fn header() -> String {
    format!(
        "{:<12} {:>7} {:>5} {:>5} {:>5} {:>12} {:>14} {:>8} {:>7} {:>5}",
        "POOL", "WORKERS", "BUSY", "WARM", "MAX", "CPU", "MEMORY", "TIMEOUT", "FAILED", "LOST"
    )
}

/// What the table's marks mean, for the lines that use them.
pub fn legend(rows: &[String]) -> Vec<&'static str> {
    let mut out = Vec::new();
    if rows.iter().any(|r| r.contains(')')) {
        out.push("(…): the configured value, where the tuner has moved the limit in force");
    }
    if rows.iter().any(|r| r.contains('*')) {
        out.push("*: configured, not enforced: the pool runs without a cgroup");
    }
    out
}

/// One line: `p` is a pool as `Pools` gives it (`limits`, `live`) or as
/// `view::pools_from_stats` builds it from `stats` (`live`, `tune`).
pub fn row(name: &str, p: &Value) -> String {
    let (live, limits, tune) = (&p["live"], &p["limits"], &p["tune"]);
    let count = |v: &Value| match v {
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let first = |a: &Value, b: &Value| if a.is_null() { b.clone() } else { a.clone() };
    // The cgroup's limits when the pool has one; `None` without a cgroup.
    let in_force = live["cgroup"]
        .as_object()
        .map(|cg| cg.get("limits").cloned().unwrap_or(Value::Null));
    let cpu = limit_cell(
        in_force.as_ref().map(|l| l["cpu_quota_pct"].as_f64()),
        limits["cpu_quota"]
            .as_str()
            .and_then(|t| t.trim_end_matches('%').parse::<f64>().ok())
            .or_else(|| tune["cpu_quota_pct"].as_f64()),
        percent,
    );
    let memory = limit_cell(
        in_force
            .as_ref()
            .map(|l| l["memory_max"].as_u64().map(|b| b as f64)),
        limits["memory_max"]
            .as_u64()
            .or_else(|| tune["memory_max"].as_u64())
            .map(|b| b as f64),
        |b| bytes(b as u64),
    );
    let timeout = limits["timeout_ms"]
        .as_u64()
        .or_else(|| live["timeout_ms"].as_u64())
        .map(millis)
        .unwrap_or_else(|| "-".into());
    // Workers lost while or between jobs: crashed, killed at the timeout, killed for memory.
    let lost: Option<u64> = ["crashes", "timeouts", "oom_kills"]
        .iter()
        .map(|k| live[*k].as_u64())
        .sum();
    format!(
        "{:<12} {:>7} {:>5} {:>5} {:>5} {:>12} {:>14} {:>8} {:>7} {:>5}",
        name,
        count(&live["workers"]),
        count(&live["busy"]),
        count(&first(&live["target_warm"], &limits["warm_min"])),
        count(&first(&live["workers_max"], &limits["workers_max"])),
        cpu,
        memory,
        timeout,
        count(&live["jobs_failed"]),
        lost.map_or_else(|| "-".into(), |n| n.to_string()),
    )
}

/// A limit's cell: `in_force` is `None` without a cgroup, `Some(None)` for a cgroup without
/// that limit; `configured` is the configured (or, from `stats`, the tuner's) value.
fn limit_cell(
    in_force: Option<Option<f64>>,
    configured: Option<f64>,
    show: impl Fn(f64) -> String,
) -> String {
    match (in_force, configured) {
        (Some(Some(now)), Some(c)) if show(now) != show(c) => {
            format!("{} ({})", show(now), show(c))
        }
        (Some(Some(now)), _) => show(now),
        (Some(None), _) => "-".into(),
        (None, Some(c)) => format!("{}*", show(c)),
        (None, None) => "-".into(),
    }
}

/// A percentage of one CPU: `150%`, `37.5%`.
fn percent(pct: f64) -> String {
    let tenths = (pct * 10.0).round() / 10.0;
    format!("{tenths}%")
}

/// A byte count in the configuration's units: `256M`, `1G`, `1.5M`.
pub fn bytes(b: u64) -> String {
    const MIB: u64 = 1 << 20;
    if b == 0 {
        "0".into()
    } else if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
        format!("{}G", b >> 30)
    } else if b.is_multiple_of(MIB) {
        format!("{}M", b / MIB)
    } else if b >= MIB {
        format!("{:.1}M", b as f64 / MIB as f64)
    } else {
        format!("{}K", b.div_ceil(1 << 10))
    }
}

/// A duration as the configuration writes it: `2s`, `750ms`.
fn millis(ms: u64) -> String {
    if ms > 0 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cells(line: &str) -> Vec<String> {
        // Cells are right-aligned and may hold one space ("64M (256M)"): split on two or more.
        line.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    }

    fn live(with_cgroup: bool) -> Value {
        let mut live = json!({"workers": 2, "busy": 1, "target_warm": 2, "workers_max": 8,
            "timeout_ms": 2000, "jobs_failed": 5, "crashes": 1, "timeouts": 0, "oom_kills": 1});
        if with_cgroup {
            live["cgroup"] = json!({"limits": {"cpu_quota_pct": 150.0,
                "memory_max": 64u64 << 20, "pids_max": 64}});
        }
        live
    }

    #[test]
    fn the_bus_row_shows_the_limits_in_force_and_the_configured_ones() {
        let pool = json!({
            "limits": {"cpu_quota": "150%", "memory_max": 256u64 << 20, "warm_min": 2,
                "workers_max": 8, "timeout_ms": 2000},
            "live": live(true),
        });
        let line = row("shop", &pool);
        assert_eq!(
            cells(&line),
            [
                "shop",
                "2",
                "1",
                "2",
                "8",
                "150%",
                "64M (256M)",
                "2s",
                "5",
                "2"
            ],
            "{line}"
        );
        assert_eq!(legend(&[line]).len(), 1);
    }

    #[test]
    fn the_socket_row_fills_warm_cpu_and_memory_from_the_stats() {
        let pool = json!({"live": live(true), "tune": {"cpu_quota_pct": 150.0,
            "memory_max": 64u64 << 20}});
        let line = row("shop", &pool);
        assert_eq!(
            cells(&line),
            ["shop", "2", "1", "2", "8", "150%", "64M", "2s", "5", "2"],
            "{line}"
        );
        assert!(legend(&[line]).is_empty());
    }

    #[test]
    fn a_pool_without_a_cgroup_shows_its_limits_as_not_enforced() {
        let pool = json!({"live": live(false), "tune": {"cpu_quota_pct": 37.5,
            "memory_max": 256u64 << 20}});
        let line = row("shop", &pool);
        assert_eq!(cells(&line)[5..7], ["37.5%*", "256M*"], "{line}");
        assert_eq!(legend(&[line]).len(), 1);
        let bare = row("other", &json!({"live": {}}));
        assert_eq!(cells(&bare)[1..], ["-"; 9], "{bare}");
    }

    #[test]
    fn units_read_as_in_the_configuration() {
        assert_eq!(bytes(1 << 30), "1G");
        assert_eq!(bytes(1536 << 20), "1536M");
        assert_eq!(bytes(3 << 19), "1.5M");
        assert_eq!(bytes(1000), "1K");
        assert_eq!(millis(2000), "2s");
        assert_eq!(millis(750), "750ms");
        assert_eq!(percent(150.0), "150%");
        assert_eq!(percent(37.54), "37.5%");
    }
}
