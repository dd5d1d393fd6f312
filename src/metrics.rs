//! The Prometheus text format (version 0.0.4) of the `stats` reply, for `precogctl stats
//! --prometheus` and the daemon's optional loopback `/metrics` listener.
//!
//! Pure code: [`render`] turns the `stats` JSON into text, [`listen_addr`] checks the configured
//! listener address, and [`http_response`] answers one HTTP/1.1 request line. Every metric is
//! named `precog_*` with its HELP and TYPE lines; labels are `pool`, `process` and `served`.

use std::fmt::Write;
use std::net::SocketAddr;

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricsError {
    #[error("daemon.metrics_listen `{0}` is not an address:port; write e.g. 127.0.0.1:9187")]
    BadAddress(String),
    #[error(
        "daemon.metrics_listen `{0}` is not a loopback address; /metrics is served on \
         127.0.0.1 or ::1 only (put a proxy in front to publish it)"
    )]
    NotLoopback(String),
}

/// The listener address, refused unless it is on loopback.
pub fn listen_addr(text: &str) -> Result<SocketAddr, MetricsError> {
    let addr: SocketAddr = text
        .parse()
        .map_err(|_| MetricsError::BadAddress(text.to_string()))?;
    if !addr.ip().is_loopback() {
        return Err(MetricsError::NotLoopback(text.to_string()));
    }
    Ok(addr)
}

struct Out {
    text: String,
    /// Factor applied to the samples being written: the stats carry µs and ns, Prometheus wants
    /// seconds.
    scale: f64,
}

impl Out {
    /// Writes with `write`, each sample multiplied by `factor`.
    fn scaled(&mut self, factor: f64, write: impl FnOnce(&mut Out)) {
        let before = std::mem::replace(&mut self.scale, factor);
        write(self);
        self.scale = before;
    }

    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP precog_{name} {help}");
        let _ = writeln!(self.text, "# TYPE precog_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        let _ = write!(self.text, "precog_{name}");
        if !labels.is_empty() {
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.text, "{{{}}}", inner.join(","));
        }
        // `+ 0.0` turns a negative zero (a sum of tiny negative terms, say) into `0`.
        let _ = writeln!(self.text, " {}", v * self.scale + 0.0);
    }

    /// One unlabelled metric, when the value is there.
    fn single(&mut self, name: &str, kind: &str, help: &str, v: Option<f64>) {
        if let Some(v) = v {
            self.family(name, kind, help);
            self.sample(name, &[], v);
        }
    }

    /// One metric per entry of an object of objects, labelled by the entry's key.
    fn per(&mut self, name: &str, kind: &str, help: &str, label: &str, m: &Value, f: &[&str]) {
        let Some(obj) = m.as_object() else { return };
        let rows: Vec<(&String, f64)> = obj
            .iter()
            .filter_map(|(k, v)| Some((k, path(v, f)?)))
            .collect();
        if rows.is_empty() {
            return;
        }
        self.family(name, kind, help);
        for (k, v) in rows {
            self.sample(name, &[(label, k)], v);
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn path(v: &Value, keys: &[&str]) -> Option<f64> {
    let mut cur = v;
    for k in keys {
        cur = match (cur, k.parse::<usize>()) {
            (Value::Array(items), Ok(i)) => items.get(i)?,
            _ => cur.get(k)?,
        };
    }
    match cur {
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        other => other.as_f64(),
    }
}

/// The `stats` reply as Prometheus text.
pub fn render(stats: &Value) -> String {
    let mut o = Out {
        text: String::new(),
        scale: 1.0,
    };
    let s = stats;
    o.single(
        "uptime_seconds",
        "gauge",
        "Seconds since precogd started.",
        path(s, &["uptime_s"]),
    );
    o.single(
        "requests_total",
        "counter",
        "Requests received on the socket.",
        path(s, &["requests"]),
    );
    if let Some(served) = s["served"].as_object() {
        o.family("runs_served_total", "counter", "Runs answered, by how.");
        for (k, v) in served {
            if let Some(v) = v.as_f64() {
                o.sample("runs_served_total", &[("served", k)], v);
            }
        }
    }
    if let Some(errors) = s["errors"].as_object().filter(|e| !e.is_empty()) {
        o.family("errors_total", "counter", "Error replies, by code.");
        for (k, v) in errors {
            o.sample("errors_total", &[("code", k)], v.as_f64().unwrap_or(0.0));
        }
    }
    for q in ["p50", "p99"] {
        o.single(
            &format!("run_latency_{q}_seconds"),
            "gauge",
            &format!("Run latency {q} (upper bucket bound)."),
            path(s, &["run_latency_us", q]).map(|us| us / 1e6),
        );
    }
    o.single(
        "inflight_jobs",
        "gauge",
        "Jobs running or queued.",
        path(s, &["inflight_jobs"]),
    );
    o.single(
        "sessions_active",
        "gauge",
        "Sessions with a profile.",
        path(s, &["sessions", "active"]),
    );
    o.single(
        "session_inputs_bytes",
        "gauge",
        "What the inputs the sessions made known take together.",
        path(s, &["sessions", "inputs_bytes"]),
    );

    let sp = &s["speculation"];
    for (k, help) in [
        ("issued", "Speculative jobs issued."),
        ("used", "Speculative results used by a run."),
        ("wasted", "Speculative results never used."),
        (
            "cancelled",
            "Speculative jobs dropped before they ran, or taken back for a real request.",
        ),
        ("failed", "Speculative jobs that ended without a result."),
        (
            "held",
            "Guesses not issued: their pool had no worker that real requests left spare.",
        ),
    ] {
        o.single(
            &format!("speculative_{k}_total"),
            "counter",
            help,
            path(sp, &[k]),
        );
    }
    o.single(
        "speculative_cpu_wasted_seconds_total",
        "counter",
        "CPU time of wasted speculative results.",
        path(sp, &["cpu_s_wasted"]),
    );
    o.single(
        "speculation_threshold",
        "gauge",
        "Shared probability threshold, moved by every speculative result.",
        path(sp, &["threshold"]),
    );
    let per = &sp["per_process"];
    o.per(
        "process_speculative_used_total",
        "counter",
        "Speculative results used, per process.",
        "process",
        per,
        &["used"],
    );
    o.per(
        "process_speculative_wasted_total",
        "counter",
        "Speculative results wasted, per process.",
        "process",
        per,
        &["wasted"],
    );
    o.per(
        "process_speculation_threshold",
        "gauge",
        "Probability above which the process is precomputed, once its results were judged.",
        "process",
        per,
        &["threshold"],
    );
    o.scaled(1e-9, |o| {
        o.per(
            "process_speculative_cpu_wasted_seconds_total",
            "counter",
            "CPU time of wasted speculative results, per process.",
            "process",
            per,
            &["cpu_ns_wasted"],
        );
    });

    let pools = &s["pools"];
    for (name, f, kind, help) in [
        ("pool_workers", "workers", "gauge", "Live workers."),
        (
            "pool_workers_busy",
            "busy",
            "gauge",
            "Workers running a job.",
        ),
        (
            "pool_target_warm",
            "target_warm",
            "gauge",
            "Warm workers the pool keeps.",
        ),
        (
            "pool_queued_on_demand",
            "queued_on_demand",
            "gauge",
            "Runs waiting for a worker.",
        ),
        (
            "pool_queued_speculative",
            "queued_speculative",
            "gauge",
            "Speculative jobs waiting.",
        ),
        (
            "pool_real_load",
            "real_load",
            "gauge",
            "Most real jobs held at once for 1% of the last 5 to 10 s; guesses use those above.",
        ),
        (
            "pool_workers_started_total",
            "spawned",
            "counter",
            "Workers started.",
        ),
        (
            "pool_worker_start_failures_total",
            "start_failures",
            "counter",
            "Workers that could not start or died at start.",
        ),
        (
            "pool_worker_crashes_total",
            "crashes",
            "counter",
            "Workers that exited or were lost outside a shutdown.",
        ),
        (
            "pool_worker_protocol_errors_total",
            "protocol_errors",
            "counter",
            "Workers killed for breaking the worker protocol, counted in crashes too.",
        ),
        (
            "pool_timeouts_total",
            "timeouts",
            "counter",
            "Jobs that ran past the pool's timeout.",
        ),
        (
            "pool_cold_starts_total",
            "cold_starts",
            "counter",
            "Jobs that waited for a start.",
        ),
        (
            "pool_jobs_ok_total",
            "jobs_ok",
            "counter",
            "Jobs that produced a result.",
        ),
        (
            "pool_jobs_failed_total",
            "jobs_failed",
            "counter",
            "Jobs that failed.",
        ),
        (
            "pool_oom_kills_total",
            "oom_kills",
            "counter",
            "Workers the OOM killer ended.",
        ),
        (
            "pool_preempted_total",
            "preempted",
            "counter",
            "Speculative jobs taken back.",
        ),
    ] {
        o.per(name, kind, help, "pool", pools, &[f]);
    }

    let alloc = &s["alloc"];
    o.single(
        "budget_memory_bytes",
        "gauge",
        "Memory precog may reserve for all pools.",
        path(alloc, &["budget", "memory"]),
    );
    o.single(
        "budget_memory_reserved_bytes",
        "gauge",
        "Memory reserved for warm workers.",
        path(alloc, &["budget", "memory_reserved"]),
    );
    let ap = &alloc["pools"];
    for (name, f, help) in [
        (
            "alloc_warm_workers",
            "warm",
            "Warm workers the allocator keeps.",
        ),
        (
            "alloc_wanted_workers",
            "wanted",
            "Warm workers demand asked for, before the budget.",
        ),
        (
            "alloc_expected_runs",
            "expected_runs",
            "Runs the active sessions are predicted to ask.",
        ),
        (
            "alloc_memory_reserve_bytes",
            "memory_reserve",
            "Memory reserved for the warm workers.",
        ),
        (
            "alloc_saved_milliseconds",
            "saved_ms",
            "Latency a warm worker saves over a cold one.",
        ),
        (
            "alloc_keep_alive_milliseconds",
            "keep_alive_ms",
            "Learned keep-alive of idle workers.",
        ),
        (
            "alloc_prewarm_milliseconds",
            "prewarm_ms",
            "Learned pre-warm delay after a request.",
        ),
        (
            "alloc_arrivals_per_second",
            "arrivals_per_s",
            "Jobs arriving per second.",
        ),
    ] {
        o.per(name, "gauge", help, "pool", ap, &[f]);
    }

    let tp = &s["tune"]["pools"];
    for (name, f, help) in [
        (
            "tune_cpu_quota_percent",
            "cpu_quota_pct",
            "CPU quota in force, percent of a CPU.",
        ),
        (
            "tune_memory_max_bytes",
            "memory_max",
            "Memory limit in force.",
        ),
        (
            "tune_oom_floor_bytes",
            "oom_floor",
            "Memory limit an OOM kill set as a floor.",
        ),
        (
            "tune_changes_total",
            "changes",
            "Limit changes the tuner made.",
        ),
    ] {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        o.per(name, kind, help, "pool", tp, &[f]);
    }
    let procs = &s["tune"]["processes"];
    o.per(
        "process_jobs_total",
        "counter",
        "Jobs finished, per process.",
        "process",
        procs,
        &["jobs"],
    );
    o.scaled(1e-6, |o| {
        o.per(
            "process_run_p95_seconds",
            "gauge",
            "Run time p95, per process.",
            "process",
            procs,
            &["run_us", "1"],
        );
    });
    o.scaled(1e-6, |o| {
        o.per(
            "process_cpu_p95_seconds",
            "gauge",
            "CPU time per job p95, per process.",
            "process",
            procs,
            &["cpu_us", "1"],
        );
    });
    o.per(
        "process_memory_peak_bytes",
        "gauge",
        "Peak memory of the workers that ran it.",
        "process",
        procs,
        &["memory_peak", "2"],
    );
    o.text
}

/// The answer to one HTTP request head: `/metrics` for GET, 404 or 405 otherwise.
pub fn http_response(head: &str, body: impl FnOnce() -> String) -> String {
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, target.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "only /metrics is here\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET is served\n".into(),
        ),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stats() -> Value {
        json!({
            "uptime_s": 5, "requests": 10,
            "served": {"cache": 3, "warm": 6, "cold": 1, "inflight": 0},
            "errors": {},
            "run_latency_us": {"p50": 128, "p99": 2048},
            "speculation": {"issued": 4, "used": 3, "wasted": 1, "cancelled": 0,
                "cpu_s_wasted": 0.5, "threshold": 0.25,
                "per_process": {"calc_shipping": {"used": 3, "wasted": 1,
                    "cpu_ns_wasted": 500000000u64, "threshold": 0.125}}},
            "pools": {"shop": {"workers": 2, "busy": 1, "cold_starts": 1}},
            "alloc": {"budget": {"memory": 1024, "memory_reserved": 64},
                "pools": {"shop": {"warm": 2, "keep_alive_ms": 2000}}},
            "tune": {"pools": {"shop": {"cpu_quota_pct": 150.0, "changes": 1}},
                "processes": {"calc_shipping": {"jobs": 7, "run_us": [100, 2000, 3000]}}},
        })
    }

    #[test]
    fn every_family_has_help_and_type_and_labels_name_pool_process_served() {
        let t = render(&stats());
        assert!(t.contains("# TYPE precog_runs_served_total counter\n"));
        assert!(
            t.contains("precog_runs_served_total{served=\"warm\"} 6\n"),
            "{t}"
        );
        assert!(t.contains("precog_pool_workers{pool=\"shop\"} 2\n"));
        assert!(t.contains("precog_alloc_keep_alive_milliseconds{pool=\"shop\"} 2000\n"));
        assert!(t.contains("precog_tune_cpu_quota_percent{pool=\"shop\"} 150\n"));
        assert!(t.contains(
            "precog_process_speculative_cpu_wasted_seconds_total{process=\"calc_shipping\"} 0.5\n"
        ));
        assert!(
            t.contains("precog_process_speculation_threshold{process=\"calc_shipping\"} 0.125\n")
        );
        assert!(t.contains("precog_process_run_p95_seconds{process=\"calc_shipping\"} 0.002\n"));
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(t.contains(&format!("# HELP {name} ")), "no HELP for {name}");
            assert!(t.contains(&format!("# TYPE {name} ")), "no TYPE for {name}");
            assert!(name.starts_with("precog_"));
        }
    }

    #[test]
    fn a_negative_zero_is_written_as_zero() {
        let mut s = stats();
        s["alloc"]["pools"]["shop"]["expected_runs"] = json!(-0.0);
        let t = render(&s);
        assert!(
            t.contains("precog_alloc_expected_runs{pool=\"shop\"} 0\n"),
            "{t}"
        );
        assert!(!t.contains(" -0\n"), "{t}");
    }

    #[test]
    fn only_loopback_addresses_may_listen() {
        assert!(listen_addr("127.0.0.1:9187").is_ok());
        assert!(listen_addr("[::1]:9187").is_ok());
        assert!(matches!(
            listen_addr("0.0.0.0:9187"),
            Err(MetricsError::NotLoopback(_))
        ));
        assert!(matches!(
            listen_addr("10.1.2.3:80"),
            Err(MetricsError::NotLoopback(_))
        ));
        assert!(matches!(
            listen_addr("localhost"),
            Err(MetricsError::BadAddress(_))
        ));
    }

    #[test]
    fn http_serves_get_metrics_only() {
        let ok = http_response("GET /metrics HTTP/1.1\r\nHost: x\r\n", || "a 1\n".into());
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(ok.ends_with("\r\n\r\na 1\n"));
        assert!(http_response("GET / HTTP/1.1", String::new).starts_with("HTTP/1.1 404"));
        assert!(http_response("POST /metrics HTTP/1.1", String::new).starts_with("HTTP/1.1 405"));
    }
}
