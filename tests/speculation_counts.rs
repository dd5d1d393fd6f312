//! Black-box: every guess precogd issues is counted once, as used, wasted, cancelled or failed,
//! or is still pending; so once all is quiet, issued = used + wasted + cancelled + failed +
//! pending. Sessions pushed out to make room, guesses that time out, and sessions that share a
//! guess's inputs are the cases that once broke the sum.

mod common;

use std::time::Duration;

use common::{Daemon, have_python, skip_unless, worker};
use serde_json::{Value, json};

fn config(sessions_max: usize, workers: usize, timeout: &str) -> String {
    format!(
        r#"
[sessions]
max = {sessions_max}

[[pool]]
name = "shop"
warm_min = 0

[[pool]]
name = "t"
command = ["python3", "{echo}"]
warm_min = {workers}
workers_max = {workers}
timeout = "{timeout}"
# Jobs here time out as they are written, first ones included: no start-up on top.
start_timeout = "0s"

[[process]]
name = "quote"
pool = "t"
inputs = ["n", "cpu_ms", "sleep_ms"]
idempotent = true
"#,
        echo = worker("echo.py")
    )
}

/// The test pool's figures from `stats`.
fn pool(d: &Daemon) -> Value {
    d.call(json!({"op": "stats"}))["pools"]["t"].clone()
}

fn speculation(d: &Daemon) -> Value {
    d.call(json!({"op": "stats"}))["speculation"].clone()
}

/// Issued minus every outcome; 0 when each guess is counted exactly once.
fn unaccounted(s: &Value) -> i64 {
    let n = |k: &str| s[k].as_i64().unwrap_or_else(|| panic!("no {k} in {s}"));
    n("issued") - n("used") - n("wasted") - n("cancelled") - n("failed") - n("pending")
}

/// Makes `quote` hot for session `s` with these inputs, so precogd guesses it.
fn guess(d: &Daemon, s: &str, attrs: Value, p: f64) {
    let r = d.call(json!({"op": "event", "session": s, "type": "page_view", "attrs": attrs}));
    assert_eq!(r["ok"], json!(true), "{r}");
    let r = d.call(json!({"op": "hint", "session": s,
        "predictions": [{"process": "quote", "p": p}]}));
    assert_eq!(r["ok"], json!(true), "{r}");
}

fn wait_until(what: &str, d: &Daemon, done: impl Fn(&Value) -> bool) -> Value {
    let mut s = Value::Null;
    let held = common::wait_until(Duration::from_secs(20), || {
        s = speculation(d);
        done(&s)
    });
    assert!(held, "{what}: {s}");
    s
}

#[test]
fn guesses_of_sessions_pushed_out_to_make_room_are_counted_wasted() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let d = Daemon::start(&config(5, 2, "10s"));
    for i in 0..20 {
        guess(
            &d,
            &format!("s{i}"),
            json!({"n": i, "cpu_ms": 1, "sleep_ms": 0}),
            0.95,
        );
        wait_until("the guess never finished", &d, |s| {
            s["issued"] == json!(i + 1) && d.call(json!({"op": "stats"}))["inflight_jobs"] == 0
        });
    }
    let s = speculation(&d);
    // At most the five sessions kept still wait for their results; the other fifteen went.
    assert!(s["pending"].as_u64() <= Some(5), "{s}");
    assert!(s["wasted"].as_u64() >= Some(15), "{s}");
    assert_eq!(unaccounted(&s), 0, "{s}");
}

#[test]
fn a_guess_that_times_out_is_counted_failed_with_its_cpu_time() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let d = Daemon::start(&config(100, 1, "1s"));
    guess(
        &d,
        "slow",
        json!({"n": 1, "cpu_ms": 3000, "sleep_ms": 0}),
        0.95,
    );
    let s = wait_until("the guess never failed", &d, |s| s["failed"] == json!(1));
    assert_eq!(unaccounted(&s), 0, "{s}");
    // What it burnt before the timeout killed its worker (up to a second; less when the
    // machine is busy, since a guess only gets CPU time nobody else wants).
    assert!(s["cpu_s_wasted"].as_f64() > Some(0.0), "{s}");
    assert_eq!(s["wasted"], json!(0), "{s}");
}

#[test]
fn a_session_cancels_only_its_own_queued_guess_and_only_once() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let d = Daemon::start(&config(100, 1, "10s"));
    // The only worker is busy, so the next guesses wait in the queue.
    guess(
        &d,
        "busy",
        json!({"n": 1, "cpu_ms": 0, "sleep_ms": 1500}),
        0.95,
    );
    wait_until("the first guess never started", &d, |_| {
        pool(&d)["busy"] == 1
    });
    let same = json!({"n": 2, "cpu_ms": 0, "sleep_ms": 0});
    guess(&d, "a", same.clone(), 0.95);
    // Same user, same inputs: the job is already on its way, so b issues nothing of its own.
    guess(&d, "b", same, 0.95);
    assert_eq!(speculation(&d)["issued"], json!(2));

    // b loses interest: a's guess is not b's to cancel.
    d.call(json!({"op": "hint", "session": "b", "predictions": [{"process": "quote", "p": 0.0}]}));
    assert_eq!(speculation(&d)["cancelled"], json!(0));
    // a loses interest: its queued guess is cancelled, once.
    d.call(json!({"op": "hint", "session": "a", "predictions": [{"process": "quote", "p": 0.0}]}));
    for s in ["a", "b", "busy"] {
        d.call(json!({"op": "end", "session": s}));
    }
    let s = wait_until("jobs still in flight", &d, |_| {
        d.call(json!({"op": "stats"}))["inflight_jobs"] == 0
    });
    assert_eq!(s["cancelled"], json!(1), "{s}");
    assert_eq!(unaccounted(&s), 0, "{s}");
}

#[test]
fn a_guess_whose_session_ended_can_still_serve_another_session() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let d = Daemon::start(&config(100, 2, "10s"));
    let inputs = json!({"n": 7, "cpu_ms": 300, "sleep_ms": 0});
    guess(&d, "a", inputs.clone(), 0.95);
    wait_until("the guess never started", &d, |_| pool(&d)["busy"] == 1);
    let r = d.call(json!({"op": "end", "session": "a"}));
    assert_eq!(r["speculative_wasted"], json!(1), "{r}");
    // Another session asks for the same result while the guess still runs: it joins it.
    let r = d.call(json!({"op": "run", "session": "b", "process": "quote", "inputs": inputs}));
    assert_eq!(r["served"], json!("inflight"), "{r}");
    let s = wait_until("the guess's CPU time was never counted", &d, |s| {
        s["cpu_s_wasted"].as_f64() > Some(0.25)
    });
    assert_eq!(unaccounted(&s), 0, "{s}");
    // Its result was used, so it stays in the cache.
    let r = d.call(json!({"op": "run", "session": "c", "process": "quote", "inputs": inputs}));
    assert_eq!(r["served"], json!("cache"), "{r}");
}

#[test]
fn a_guess_whose_result_expired_unused_is_wasted_not_used() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let cfg = config(100, 1, "10s").replace("idempotent = true", "idempotent = true\nttl = \"1s\"");
    let d = Daemon::start(&cfg);
    let inputs = json!({"n": 3, "cpu_ms": 100, "sleep_ms": 0});
    guess(&d, "a", inputs.clone(), 0.95);
    wait_until("the guess never finished", &d, |_| {
        d.call(json!({"op": "stats"}))["inflight_jobs"] == 0
    });
    std::thread::sleep(Duration::from_millis(1500));
    // The result is gone: the run computes it again, and the guess did not help.
    let r = d.call(json!({"op": "run", "session": "a", "process": "quote", "inputs": inputs}));
    assert_ne!(r["served"], json!("cache"), "{r}");
    let s = speculation(&d);
    assert_eq!((&s["used"], &s["wasted"]), (&json!(0), &json!(1)), "{s}");
    assert!(s["cpu_s_wasted"].as_f64() > Some(0.05), "{s}");
    assert_eq!(unaccounted(&s), 0, "{s}");
}

#[test]
fn a_guess_a_run_joined_that_then_fails_is_failed_not_used() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let d = Daemon::start(&config(100, 1, "1s"));
    let inputs = json!({"n": 4, "cpu_ms": 3000, "sleep_ms": 0});
    guess(&d, "a", inputs.clone(), 0.95);
    wait_until("the guess never started", &d, |_| pool(&d)["busy"] == 1);
    let r = d.call(json!({"op": "run", "session": "a", "process": "quote", "inputs": inputs}));
    assert_eq!(
        r["ok"],
        json!(false),
        "the guess times out, and the run with it: {r}"
    );
    let s = wait_until("the failure was never counted", &d, |s| {
        s["failed"] == json!(1)
    });
    assert_eq!(s["used"], json!(0), "{s}");
    assert!(s["cpu_s_wasted"].as_f64() > Some(0.0), "{s}");
    assert_eq!(unaccounted(&s), 0, "{s}");
}

#[test]
fn a_guess_a_run_joined_is_used_even_if_its_session_ends_before_it_finishes() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let d = Daemon::start(&config(100, 1, "10s"));
    let inputs = json!({"n": 5, "cpu_ms": 0, "sleep_ms": 600});
    guess(&d, "a", inputs.clone(), 0.95);
    wait_until("the guess never started", &d, |_| pool(&d)["busy"] == 1);
    // The run joins the guess on a connection of its own; the session ends meanwhile.
    let mut c = d.connect();
    let run = std::thread::spawn(move || {
        c.call(&json!({"op": "run", "session": "a", "process": "quote", "inputs": inputs}))
    });
    std::thread::sleep(Duration::from_millis(100));
    let r = d.call(json!({"op": "end", "session": "a"}));
    assert_eq!(r["speculative_wasted"], json!(0), "{r}");
    let r = run.join().expect("the run's thread");
    assert_eq!(r["served"], json!("inflight"), "{r}");
    let s = wait_until("the guess was never judged", &d, |s| {
        s["pending"] == json!(0)
    });
    assert_eq!((&s["used"], &s["wasted"]), (&json!(1), &json!(0)), "{s}");
    assert_eq!(unaccounted(&s), 0, "{s}");
}

#[test]
fn each_run_that_joins_a_guess_has_its_whole_timeout_from_when_it_joined() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    // The guess takes 2.2 s against a timeout of 1 s. One run joins after 0.8 s, another after
    // 1.6 s: the job may go on until 2.6 s, so it finishes in time for both.
    let d = Daemon::start(&config(100, 1, "1s"));
    let inputs = json!({"n": 6, "cpu_ms": 0, "sleep_ms": 2200});
    guess(&d, "a", inputs.clone(), 0.95);
    wait_until("the guess never started", &d, |_| pool(&d)["busy"] == 1);
    let join = |session: &str, after_ms: u64| {
        let mut c = d.connect();
        let req = json!({"op": "run", "session": session, "process": "quote",
            "inputs": inputs.clone()});
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(after_ms));
            c.call(&req)
        })
    };
    let (first, second) = (join("a", 800), join("b", 1600));
    for run in [first, second] {
        let r = run.join().expect("the run's thread");
        assert_eq!(r["ok"], json!(true), "{r}");
        let served = r["served"].as_str().unwrap_or_default();
        // The second run may come after the guess finished on a slow machine.
        assert!(served == "inflight" || served == "cache", "{r}");
    }
    let s = wait_until("the guess was never judged", &d, |s| {
        s["pending"] == json!(0)
    });
    assert_eq!((&s["used"], &s["failed"]), (&json!(1), &json!(0)), "{s}");
    assert_eq!(unaccounted(&s), 0, "{s}");
}

/// The system call a process is blocked in, by its x86-64 number, from `/proc/<pid>/syscall`.
fn blocked_in(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Two workers that take `steps` steps of `step_ms` each, with a checkpoint after each step.
fn checkpointing_config(timeout: &str) -> String {
    format!(
        r#"
[[pool]]
name = "shop"
warm_min = 0

[[pool]]
name = "t"
command = ["python3", "{}"]
warm_min = 2
workers_max = 2
timeout = "{}"
start_timeout = "0s"

[[process]]
name = "quote"
pool = "t"
inputs = ["n", "steps", "step_ms"]
idempotent = true
"#,
        worker("checkpointer.py"),
        timeout
    )
}

/// The one worker in a step of a job: asleep in `nanosleep`, `clock_nanosleep`, `select`,
/// `pselect6` or `poll` (what Python's `time.sleep` uses, by version). Idle workers wait in
/// `read`, and a worker still starting up is in none of these.
fn busy_worker(d: &Daemon) -> u32 {
    const SLEEPS: [u64; 5] = [35, 230, 23, 270, 7];
    let mut busy = Vec::new();
    let one = common::wait_until(Duration::from_secs(10), || {
        busy = common::children_of(d.pid());
        busy.retain(|&w| blocked_in(w).is_some_and(|call| SLEEPS.contains(&call)));
        busy.len() == 1
    });
    assert!(one, "not one worker in a job's step: {busy:?}");
    busy[0]
}

fn kill(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill the worker");
}

#[test]
fn a_joined_guess_retried_after_its_worker_died_is_not_taken_back() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let d = Daemon::start(&checkpointing_config("10s"));
    // Ten steps of 200 ms, with a checkpoint after each.
    let inputs = json!({"n": 1, "steps": 10, "step_ms": 200});
    guess(&d, "a", inputs.clone(), 0.95);
    wait_until("the guess never started", &d, |_| pool(&d)["busy"] == 1);
    // A job that dies before its first checkpoint fails instead of being tried again; on a
    // loaded machine the worker may take long to get to it.
    wait_until("the guess never saved a checkpoint", &d, |_| {
        d.call(json!({"op": "stats"}))["states"]["entries"].as_u64() >= Some(1)
    });
    let mut c = d.connect();
    let joined = std::thread::spawn(move || {
        c.call(&json!({"op": "run", "session": "a", "process": "quote", "inputs": inputs}))
    });
    std::thread::sleep(Duration::from_millis(300));

    // The worker that is not waiting to read a job holds the guess: it dies after checkpoints.
    kill(busy_worker(&d));

    // The job resumes on the other worker. A real run takes the replacement, and another real
    // run then finds no free worker: the resumed job must not be taken back for it.
    wait_until("the job never resumed", &d, |_| {
        let p = pool(&d);
        p["crashes"] == 1 && p["busy"] == 1
    });
    let mut c = d.connect();
    let filler = std::thread::spawn(move || {
        c.call(&json!({"op": "run", "session": "r1", "process": "quote",
            "inputs": {"n": 2, "steps": 3, "step_ms": 300}}))
    });
    wait_until("the pool never filled", &d, |_| pool(&d)["busy"] == 2);
    // Guesses are taken back only once they have run for a while (50 ms).
    std::thread::sleep(Duration::from_millis(300));
    let r = d.call(json!({"op": "run", "session": "r2", "process": "quote",
        "inputs": {"n": 3, "steps": 1, "step_ms": 50}}));
    assert_eq!(r["ok"], json!(true), "{r}");

    let r = joined.join().expect("the joined run's thread");
    assert_eq!(r["served"], json!("inflight"), "{r}");
    assert_eq!(r["result"]["done"], json!(10), "{r}");
    assert!(r["result"]["resumed_from"].as_u64() > Some(0), "{r}");
    let r = filler.join().expect("the filler's thread");
    assert_eq!(r["ok"], json!(true), "{r}");
    let stats = d.call(json!({"op": "stats"}));
    assert_eq!(stats["pools"]["t"]["preempted"], json!(0), "{stats}");
    let s = wait_until("the guess was never judged", &d, |s| {
        s["pending"] == json!(0)
    });
    assert_eq!((&s["used"], &s["cancelled"]), (&json!(1), &json!(0)), "{s}");
}

#[test]
fn a_run_for_a_guess_waiting_to_be_retried_runs_at_once_instead_of_waiting_behind_guesses() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let d = Daemon::start(&checkpointing_config("10s"));
    let inputs = json!({"n": 1, "steps": 10, "step_ms": 200});
    guess(&d, "a", inputs.clone(), 0.95);
    wait_until("the guess never started", &d, |_| pool(&d)["busy"] == 1);
    let guessing = busy_worker(&d);
    // A long real job takes the other worker.
    let mut c = d.connect();
    let long = std::thread::spawn(move || {
        let r = c.call(&json!({"op": "run", "session": "r", "process": "quote",
            "inputs": {"n": 2, "steps": 4, "step_ms": 600}}));
        (r, std::time::Instant::now())
    });
    wait_until("the long job never started", &d, |_| pool(&d)["busy"] == 2);
    wait_until("the guess never saved a checkpoint", &d, |_| {
        d.call(json!({"op": "stats"}))["states"]["entries"].as_u64() >= Some(1)
    });
    // The guess's worker dies after checkpoints. The job waits among the guesses to be tried
    // again, and guesses leave one worker idle, so it cannot run while the long job does.
    kill(guessing);
    wait_until("the worker was never replaced", &d, |_| {
        let p = pool(&d);
        p["crashes"] == 1 && p["workers"] == 2
    });
    // A run for the guess's inputs takes the free worker at once and resumes from the
    // checkpoint; it does not wait for the long job to end.
    let r = d.call(json!({"op": "run", "session": "a", "process": "quote", "inputs": inputs}));
    let answered = std::time::Instant::now();
    assert_eq!(r["result"]["done"], json!(10), "{r}");
    assert!(r["result"]["resumed_from"].as_u64() > Some(0), "{r}");
    let (long, long_done) = long.join().expect("the long job's thread");
    assert_eq!(long["ok"], json!(true), "{long}");
    assert!(answered < long_done, "the run waited for the long job: {r}");
}

#[test]
fn a_run_that_joins_a_retried_guess_has_its_whole_timeout_too() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let d = Daemon::start(&checkpointing_config("1s"));
    // Sixteen steps of 100 ms against a timeout of 1 s.
    let inputs = json!({"n": 1, "steps": 16, "step_ms": 100});
    guess(&d, "a", inputs.clone(), 0.95);
    wait_until("the guess never started", &d, |_| pool(&d)["busy"] == 1);
    let guessing = busy_worker(&d);
    let join = |session: &str| {
        let mut c = d.connect();
        let req = json!({"op": "run", "session": session, "process": "quote",
            "inputs": inputs.clone()});
        std::thread::spawn(move || c.call(&req))
    };
    let first = join("a");
    wait_until("the guess never saved a checkpoint", &d, |_| {
        d.call(json!({"op": "stats"}))["states"]["entries"].as_u64() >= Some(1)
    });
    std::thread::sleep(Duration::from_millis(300));
    // The worker dies; the job resumes as real work with about 1.2 s of steps left, more than
    // the timeout. A second run joins half a second in, and has a whole timeout from then.
    kill(guessing);
    wait_until("the job never resumed", &d, |_| {
        let p = pool(&d);
        p["crashes"] == 1 && p["busy"] == 1
    });
    std::thread::sleep(Duration::from_millis(500));
    let second = join("b").join().expect("the second run's thread");
    assert_eq!(second["result"]["done"], json!(16), "{second}");
    assert!(
        second["result"]["resumed_from"].as_u64() > Some(0),
        "{second}"
    );
    let first = first.join().expect("the first run's thread");
    assert_eq!(first["result"]["done"], json!(16), "{first}");
}
