//! Black-box: what became of speculative results flows back to prediction. Results that are
//! never used are counted as wasted per process (with their CPU time) and raise the partitioner's
//! threshold; results that are used lower it again.

mod common;

use std::time::Duration;

use common::{Daemon, have_python, skip_unless, worker};
use serde_json::{Value, json};

fn config() -> String {
    format!(
        r#"
[predict]
precision_target = 0.5

[[pool]]
name = "shop"
warm_min = 0

[[pool]]
name = "t"
command = ["python3", "{echo}"]
warm_min = 1
workers_max = 2

[[process]]
name = "quote"
pool = "t"
inputs = ["n", "cpu_ms"]
idempotent = true
"#,
        echo = worker("echo.py")
    )
}

fn speculation(d: &Daemon) -> Value {
    d.call(json!({"op": "stats"}))["speculation"].clone()
}

/// A session that makes `quote` hot with its inputs known, and waits for the speculative job.
fn hot_session(d: &Daemon, s: &str, n: usize) {
    let r = d.call(json!({"op": "event", "session": s, "type": "page_view",
        "attrs": {"n": n, "cpu_ms": 5}}));
    assert_eq!(r["ok"], json!(true), "{r}");
    let r = d.call(json!({"op": "hint", "session": s,
        "predictions": [{"process": "quote", "p": 0.95}]}));
    assert_eq!(r["ok"], json!(true), "{r}");
    assert!(
        common::wait_until(Duration::from_secs(10), || !busy(d)),
        "speculative job did not finish"
    );
}

/// Whether any job (a guess included) is in flight.
fn busy(d: &Daemon) -> bool {
    d.call(json!({"op": "stats"}))["inflight_jobs"] != json!(0)
}

#[test]
fn wasted_results_raise_the_threshold_and_used_ones_lower_it() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let d = Daemon::start(&config());
    let start = speculation(&d)["threshold"].as_f64().unwrap();

    for i in 0..15 {
        let s = format!("waste{i}");
        hot_session(&d, &s, i);
        d.call(json!({"op": "end", "session": s}));
    }
    let after_waste = speculation(&d);
    let per = &after_waste["per_process"]["quote"];
    assert!(per["wasted"].as_u64() >= Some(10), "{after_waste}");
    assert!(per["cpu_ns_wasted"].as_u64() > Some(0), "{after_waste}");
    let high = after_waste["threshold"].as_f64().unwrap();
    assert!(high > start, "threshold {start} -> {high} after waste");

    for i in 0..15 {
        let s = format!("use{i}");
        hot_session(&d, &s, 1000 + i);
        let r = d.call(json!({"op": "run", "session": s, "process": "quote",
            "inputs": {"n": 1000 + i, "cpu_ms": 5}}));
        assert_eq!(r["served"], json!("cache"), "{r}");
        d.call(json!({"op": "end", "session": s}));
    }
    let after_use = speculation(&d);
    assert!(
        after_use["per_process"]["quote"]["used"].as_u64() >= Some(10),
        "{after_use}"
    );
    let low = after_use["threshold"].as_f64().unwrap();
    assert!(low < high, "threshold {high} -> {low} after use");
    println!("threshold: start {start:.3}, after waste {high:.3}, after use {low:.3}");
}

/// The CPU time a wasted guess used is what the worker burnt for it (echo.py burns `cpu_ms` of
/// its own CPU time), also when the session ended while the guess still ran.
#[test]
fn a_wasted_guess_counts_its_own_cpu_time_even_when_its_session_ends_first() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let d = Daemon::start(&config());
    let wasted_ms = |d: &Daemon| speculation(d)["cpu_s_wasted"].as_f64().unwrap() * 1000.0;

    // A real job first: the worker has started up (tens of milliseconds of Python's CPU time)
    // before the guesses.
    let r = d.call(json!({"op": "run", "session": "warm", "process": "quote",
        "inputs": {"n": 0, "cpu_ms": 0}}));
    assert_eq!(r["ok"], json!(true), "{r}");

    // Ended after its guess finished.
    let r = d.call(
        json!({"op": "event", "session": "done", "type": "page_view",
        "attrs": {"n": 1, "cpu_ms": 200}}),
    );
    assert_eq!(r["ok"], json!(true), "{r}");
    d.call(json!({"op": "hint", "session": "done",
        "predictions": [{"process": "quote", "p": 0.95}]}));
    assert!(
        common::wait_until(Duration::from_secs(10), || !busy(&d)),
        "speculative job did not finish"
    );
    d.call(json!({"op": "end", "session": "done"}));
    let first = wasted_ms(&d);
    assert!(
        (190.0..260.0).contains(&first),
        "wasted {first} ms for a 200 ms guess"
    );

    // Ended while its guess still runs: counted as wasted at once, its CPU time when it ends.
    d.call(
        json!({"op": "event", "session": "gone", "type": "page_view",
        "attrs": {"n": 2, "cpu_ms": 200}}),
    );
    d.call(json!({"op": "hint", "session": "gone",
        "predictions": [{"process": "quote", "p": 0.95}]}));
    assert!(
        common::wait_until(Duration::from_secs(10), || busy(&d)),
        "speculative job did not start"
    );
    let r = d.call(json!({"op": "end", "session": "gone"}));
    assert_eq!(r["speculative_wasted"], json!(1), "{r}");
    assert!(
        common::wait_until(Duration::from_secs(10), || wasted_ms(&d) >= first + 190.0),
        "the guess's CPU time was never counted: {}",
        speculation(&d)
    );
    let s = speculation(&d);
    assert_eq!(s["wasted"], json!(2), "{s}");
    assert_eq!(s["pending"], json!(0), "{s}");
    assert!(wasted_ms(&d) < first + 260.0, "{s}");
}
