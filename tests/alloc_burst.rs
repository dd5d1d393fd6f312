//! Black-box: a burst of sessions predicted to need one process raises its pool's warm workers
//! before their runs arrive, so none of the runs is a cold start; afterwards the pool falls back
//! to `warm_min` once the keep-alive it learned from the gaps between requests has passed. A
//! lowered `workers_max` holds as soon as workers are free, whatever the keep-alive, and a
//! `warm_min` raised and lowered again leaves the pool at what the allocator plans.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{Conn, Daemon, have_python, skip_unless, worker};
use serde_json::{Value, json};

const BURST: usize = 4;

fn config() -> String {
    format!(
        r#"
[predict]
speculation = false

[[pool]]
name = "shop"
warm_min = 0

[[pool]]
name = "t"
command = ["python3", "{echo}"]
warm_min = 1
workers_max = 6
timeout = "10s"

[[process]]
name = "work"
pool = "t"
inputs = ["sleep_ms", "n"]
"#,
        echo = worker("echo.py")
    )
}

fn pool_stats(d: &Daemon) -> (Value, Value) {
    let s = d.call(json!({"op": "stats"}));
    (s["pools"]["t"].clone(), s["alloc"]["pools"]["t"].clone())
}

fn wait_for(what: &str, d: &Daemon, secs: u64, ok: impl Fn(&Value, &Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (pool, alloc) = pool_stats(d);
        if ok(&pool, &alloc) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {secs} s: pool {pool}\nalloc {alloc}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run(c: &mut Conn, session: &str, n: usize, sleep_ms: u64) -> Value {
    c.call(&json!({"op": "run", "session": session, "process": "work",
        "inputs": {"sleep_ms": sleep_ms, "n": n}}))
}

#[test]
fn a_predicted_burst_finds_warm_workers_and_they_go_after_the_keep_alive() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let d = Daemon::start(&config());
    wait_for("one warm worker", &d, 20, |p, _| p["workers"] == json!(1));

    // Quick requests one after another teach the pool its gaps: a short keep-alive.
    let mut c = d.connect();
    for n in 0..12 {
        let r = run(&mut c, "warmup", n, 0);
        assert_eq!(r["ok"], json!(true), "{r}");
    }

    // The burst: every session is predicted to ask for `work` soon.
    for i in 0..BURST {
        let r = d.call(json!({"op": "hint", "session": format!("s{i}"),
            "predictions": [{"process": "work", "p": 0.9}]}));
        assert_eq!(r["ok"], json!(true), "{r}");
    }
    wait_for("warm workers for the burst", &d, 20, |p, a| {
        a["warm"] == json!(BURST) && p["workers"].as_u64() >= Some(BURST as u64)
    });
    let cold_before = pool_stats(&d).0["cold_starts"].as_u64().unwrap();

    // The runs arrive together.
    let mut conns: Vec<Conn> = (0..BURST).map(|_| d.connect()).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.send(
            &json!({"op": "run", "session": format!("s{i}"), "process": "work",
            "inputs": {"sleep_ms": 300, "n": 100 + i}}),
        );
    }
    for c in &mut conns {
        let r = c.recv();
        assert_eq!(r["ok"], json!(true), "{r}");
        assert_eq!(r["served"], json!("warm"), "{r}");
    }
    let (pool, alloc) = pool_stats(&d);
    assert_eq!(pool["cold_starts"].as_u64().unwrap(), cold_before, "{pool}");
    let keep_alive = alloc["keep_alive_ms"].as_u64().unwrap();
    println!(
        "learned keep-alive: {keep_alive} ms; window learned: {}",
        alloc["window_learned"]
    );
    assert!(keep_alive <= 5_000, "{alloc}");

    for i in 0..BURST {
        d.call(json!({"op": "end", "session": format!("s{i}")}));
    }
    let ended = Instant::now();
    wait_for("the pool back at warm_min", &d, 30, |p, a| {
        a["warm"] == json!(1) && p["workers"] == json!(1)
    });
    println!(
        "back to one worker {:.1} s after the sessions ended",
        ended.elapsed().as_secs_f64()
    );
}

#[test]
fn a_lowered_workers_max_holds_as_soon_as_workers_are_free() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let sized = |warm: usize, max: usize| format!("warm_min = {warm}\nworkers_max = {max}\n");
    let d = Daemon::start(&config().replace(&sized(1, 6), &sized(3, 3)));
    let text = std::fs::read_to_string(&d.config).unwrap();
    wait_for("three warm workers", &d, 20, |p, _| {
        p["workers"] == json!(3)
    });

    // Three jobs run and three wait when the limit drops to one: the waiting jobs are served
    // by the one worker that stays, the others leave as their jobs end.
    let send = |n: usize, sleep_ms: u64| {
        let mut c = d.connect();
        c.send(
            &json!({"op": "run", "session": format!("b{n}"), "process": "work",
            "inputs": {"sleep_ms": sleep_ms, "n": n}}),
        );
        c
    };
    let mut running: Vec<Conn> = (0..3).map(|n| send(n, 1500)).collect();
    wait_for("three busy workers", &d, 10, |p, _| p["busy"] == json!(3));
    let mut waiting: Vec<Conn> = (3..6).map(|n| send(n, 100)).collect();
    wait_for("three queued jobs", &d, 10, |p, _| {
        p["queued_on_demand"] == json!(3)
    });
    d.reload_applied(&text.replace(&sized(3, 3), &sized(1, 1)));
    for c in &mut running {
        assert_eq!(c.recv()["ok"], json!(true));
    }
    let pids: HashSet<u64> = waiting
        .iter_mut()
        .map(|c| {
            let r = c.recv();
            assert_eq!(r["ok"], json!(true), "{r}");
            r["result"]["pid"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(pids.len(), 1, "served by {pids:?} under workers_max = 1");
    wait_for("one worker", &d, 10, |p, _| p["workers"] == json!(1));

    // Idle workers above a lowered limit leave at once, not after the keep-alive.
    d.reload_applied(&text);
    wait_for("three warm workers again", &d, 20, |p, _| {
        p["workers"] == json!(3)
    });
    let keep_alive = pool_stats(&d).1["keep_alive_ms"].clone();
    let lowered = Instant::now();
    d.reload_applied(&text.replace(&sized(3, 3), &sized(1, 2)));
    wait_for("two workers", &d, 10, |p, _| p["workers"] == json!(2));
    println!(
        "an idle worker left {:.1} s after workers_max was lowered; keep-alive {keep_alive} ms",
        lowered.elapsed().as_secs_f64()
    );
}

#[test]
fn a_warm_min_raised_and_lowered_again_leaves_the_pool_at_the_allocators_plan() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let d = Daemon::start(&config());
    let text = std::fs::read_to_string(&d.config).unwrap();
    wait_for("one warm worker, planned", &d, 20, |p, a| {
        p["workers"] == json!(1) && a["warm"] == json!(1)
    });
    // Raised and lowered again before the allocator plans anew: the pool must not keep the
    // raised count, which neither the configuration nor the plan asks for any more.
    let raised = text.replace("warm_min = 1\n", "warm_min = 3\n");
    d.reload_applied(&raised);
    d.reload_applied(&text);
    wait_for("the warm target back at the plan", &d, 10, |p, a| {
        p["target_warm"] == a["warm"] && a["warm"] == json!(1)
    });
}
