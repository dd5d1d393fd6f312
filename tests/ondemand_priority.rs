//! Guesses yield the CPU to real work: a speculative job runs at the lowest CPU weight, and when
//! a real request joins it while it runs, its worker gets the normal weight back at once.

mod common;

use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::{Value, json};

fn config() -> String {
    format!(
        r#"
[[pool]]
name = "t"
command = ["python3", "{}"]
warm_min = 3
workers_max = 3
timeout = "20s"

[[process]]
name = "spin"
pool = "t"
inputs = ["n", "cpu_ms", "report_policy"]
idempotent = true
"#,
        common::worker("echo.py")
    )
}

/// Makes `spin` hot for `session` with inputs known, so that precogd guesses it.
fn make_hot(c: &mut common::Conn, session: &str, inputs: &Value) {
    let ev = c.call(
        &json!({"op": "event", "session": session, "type": "page_view",
        "target": "cart", "attrs": inputs}),
    );
    assert_eq!(ev["ok"], json!(true), "{ev}");
    let h = c.call(&json!({"op": "hint", "session": session,
        "predictions": [{"process": "spin", "p": 0.95}]}));
    assert_eq!(h["ok"], json!(true), "{h}");
}

/// Waits until `predict` shows `spin` for `session` in `state`.
fn wait_state(c: &mut common::Conn, session: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = c.call(&json!({"op": "predict", "session": session, "n": 3}));
        let spin = p["predictions"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["process"] == json!("spin")).cloned());
        if spin.as_ref().is_some_and(|s| s["state"] == json!(state)) {
            return;
        }
        assert!(Instant::now() < deadline, "spin never became {state}: {p}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_guess_runs_in_the_background_until_a_real_request_joins_it() {
    if common::skip_unless(
        common::is_root(),
        "changing a worker's CPU weight needs root",
    ) || common::skip_unless(common::have_python(), "python3 is not installed")
    {
        return;
    }
    let d = Daemon::start(&config());
    let mut c = d.connect();

    // A guess nobody waits for stays in the background to the end.
    let alone = json!({"n": 1, "cpu_ms": 50, "report_policy": true});
    make_hot(&mut c, "alone", &alone);
    wait_state(&mut c, "alone", "cached");
    let r = c.call(&json!({"op": "run", "session": "alone", "process": "spin", "inputs": alone}));
    assert_eq!(r["served"], json!("cache"), "{r}");
    assert_eq!(r["result"]["background"], json!(true), "{r}");

    // A guess a real request joins finishes at the normal weight.
    let joined = json!({"n": 2, "cpu_ms": 400, "report_policy": true});
    make_hot(&mut c, "joined", &joined);
    wait_state(&mut c, "joined", "running");
    let r = c.call(&json!({"op": "run", "session": "joined", "process": "spin",
        "inputs": joined}));
    assert_eq!(r["served"], json!("inflight"), "{r}");
    assert_eq!(r["result"]["background"], json!(false), "{r}");

    // The worker that ran the joined guess serves real requests at the normal weight.
    let real = json!({"n": 3, "cpu_ms": 1, "report_policy": true});
    for _ in 0..3 {
        let r = c.call(&json!({"op": "run", "session": "real", "process": "spin",
            "inputs": real.clone()}));
        assert_eq!(r["ok"], json!(true), "{r}");
        assert_eq!(r["result"]["background"], json!(false), "{r}");
    }
}

#[test]
fn a_real_request_takes_back_the_worker_of_a_long_guess_when_the_pool_is_full() {
    if common::skip_unless(common::have_python(), "python3 is not installed") {
        return;
    }
    let one_worker = config().replace(
        "warm_min = 3\nworkers_max = 3",
        "warm_min = 1\nworkers_max = 1",
    );
    let d = Daemon::start(&one_worker);
    let mut c = d.connect();

    let guess = json!({"n": 10, "cpu_ms": 10000, "report_policy": false});
    make_hot(&mut c, "guessing", &guess);
    wait_state(&mut c, "guessing", "running");
    // Past the take-back grace a guess gets so a short one can finish.
    std::thread::sleep(Duration::from_millis(200));

    let t = Instant::now();
    let r = c.call(&json!({"op": "run", "session": "buyer", "process": "spin",
        "inputs": {"n": 11, "cpu_ms": 1, "report_policy": false}}));
    let took = t.elapsed();
    assert_eq!(r["ok"], json!(true), "{r}");
    assert!(
        took < Duration::from_secs(5),
        "the run waited {took:?}, as if behind the 10 s guess: {r}"
    );

    let stats = c.call(&json!({"op": "stats"}));
    assert_eq!(stats["pools"]["t"]["preempted"], json!(1), "{stats}");
    assert_eq!(stats["speculation"]["cancelled"], json!(1), "{stats}");
    // The guess is gone: a run for its inputs is a run of its own.
    assert_eq!(stats["pools"]["t"]["busy"], json!(0), "{stats}");
}

#[test]
fn guesses_wait_while_real_requests_lately_needed_every_worker() {
    if common::skip_unless(common::have_python(), "python3 is not installed") {
        return;
    }
    let two_workers = config().replace(
        "warm_min = 3\nworkers_max = 3",
        "warm_min = 2\nworkers_max = 2",
    );
    let d = Daemon::start(&two_workers);
    let mut c = d.connect();

    // One real request at a time leaves a worker to spare: a guess runs.
    let r = c.call(&json!({"op": "run", "session": "buyer", "process": "spin",
        "inputs": {"n": 1, "cpu_ms": 1, "report_policy": false}}));
    assert_eq!(r["ok"], json!(true), "{r}");
    let first = json!({"n": 2, "cpu_ms": 1, "report_policy": false});
    make_hot(&mut c, "early", &first);
    wait_state(&mut c, "early", "cached");

    // Two at once need both workers: the next guess is held, not issued.
    std::thread::scope(|s| {
        for n in [3, 4] {
            let mut conn = d.connect();
            s.spawn(move || {
                let r = conn.call(&json!({"op": "run", "session": format!("b{n}"),
                    "process": "spin",
                    "inputs": {"n": n, "cpu_ms": 300, "report_policy": false}}));
                assert_eq!(r["ok"], json!(true), "{r}");
            });
        }
    });
    let late = json!({"n": 5, "cpu_ms": 1, "report_policy": false});
    make_hot(&mut c, "late", &late);
    let stats = c.call(&json!({"op": "stats"}));
    let pool = &stats["pools"]["t"];
    assert_eq!(pool["real_load"], json!(2), "{stats}");
    assert_eq!(pool["queued_speculative"], json!(0), "{stats}");
    assert_eq!(pool["busy"], json!(0), "{stats}");
    assert!(stats["speculation"]["held"].as_u64() >= Some(1), "{stats}");
    wait_state(&mut c, "late", "cold");

    // Once the load is behind it (one to two windows of 5 s), the next hint issues the guess.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = c.call(&json!({"op": "stats"}));
        if stats["pools"]["t"]["real_load"] == json!(0) {
            break;
        }
        assert!(Instant::now() < deadline, "the load never faded: {stats}");
        std::thread::sleep(Duration::from_millis(100));
    }
    make_hot(&mut c, "late", &late);
    wait_state(&mut c, "late", "cached");
    let r = c.call(&json!({"op": "run", "session": "late", "process": "spin", "inputs": late}));
    assert_eq!(r["served"], json!("cache"), "{r}");
}
