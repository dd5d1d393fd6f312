//! Black-box: a burst of sessions predicted to need one process raises its pool's warm workers
//! before their runs arrive, so none of the runs is a cold start; afterwards the pool falls back
//! to `warm_min` once the keep-alive it learned from the gaps between requests has passed.

mod common;

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
