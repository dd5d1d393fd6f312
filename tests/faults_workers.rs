//! Black-box fault tests of misbehaving workers and clients on the real daemon: a worker that
//! ignores SIGTERM, one that leaves a grandchild behind, one that writes garbage or a 100 MiB
//! line, one that crashes at start, and a client that leaves before its answer.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Daemon, children_of, have_python, is_root, skip_unless, wait_until, worker};
use serde_json::{Value, json};

fn pool(name: &str, command: &str, extra: &str) -> String {
    format!(
        "[[pool]]\nname = \"{name}\"\ncommand = {command}\nwarm_min = 1\nworkers_max = 2\n\
         timeout = \"10s\"\n{extra}\n"
    )
}

fn python(script: &str) -> String {
    format!("[\"python3\", \"{}\"]", worker(script))
}

fn process(name: &str, pool: &str, input: &str) -> String {
    format!("[[process]]\nname = \"{name}\"\npool = \"{pool}\"\ninputs = [\"{input}\"]\n")
}

const NO_SHOP: &str = "[[pool]]\nname = \"shop\"\nwarm_min = 0\n";

/// True while `pid` is a live process (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rfind(')').map(|i| &stat[i + 2..]).unwrap_or("");
    let fields: Vec<&str> = after.split(' ').collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    tick(11) + tick(12)
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64
}

fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[test]
fn a_worker_ignoring_sigterm_is_killed_with_its_children_at_stop() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    // The shell starts a child that ignores SIGTERM too, then becomes the worker.
    let command = format!(
        "[\"sh\", \"-c\", \"(trap '' TERM; exec sleep 600) & exec python3 {}\"]",
        worker("ignore_term.py")
    );
    let config = format!(
        "{NO_SHOP}{}{}",
        pool("stubborn", &command, ""),
        process("hang", "stubborn", "x")
    );
    let mut d = Daemon::start_with("shutdown_grace = \"1s\"", &config);
    let mut workers = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            workers = d
                .workers()
                .into_iter()
                .filter(|p| cmdline(*p).contains("ignore_term.py"))
                .collect();
            !workers.is_empty() && workers.iter().all(|w| !children_of(*w).is_empty())
        }),
        "no stubborn worker with a child started:\n{}",
        d.log()
    );
    let children: Vec<u32> = workers.iter().flat_map(|w| children_of(*w)).collect();

    // Give it a job it will never answer, then stop the daemon.
    let sock = d.socket.clone();
    let client = std::thread::spawn(move || {
        let mut c = common::Conn::open(&sock).unwrap();
        c.send(&json!({"op": "run", "session": "s", "process": "hang", "inputs": {"x": 1}}));
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut c.reader, &mut line);
        line
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    assert!(d.stop(), "precogd did not stop cleanly:\n{}", d.log());
    let took = started.elapsed();
    println!("stopped in {took:?} with a worker ignoring SIGTERM");
    assert!(took < Duration::from_secs(8), "stop took {took:?}");

    for pid in workers.iter().chain(&children) {
        assert!(
            wait_until(Duration::from_secs(2), || !alive(*pid)),
            "process {pid} ({}) outlived the daemon",
            cmdline(*pid)
        );
    }
    let answer = client.join().unwrap();
    assert!(
        answer.is_empty() || answer.contains("\"ok\":false"),
        "the hung job got: {answer}"
    );
}

#[test]
fn a_grandchild_that_leaves_the_group_is_reaped_through_the_cgroup() {
    if skip_unless(is_root(), "needs root for cgroups")
        || skip_unless(
            Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists()
                || Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
            "no cgroup filesystem",
        )
        || skip_unless(have_python(), "python3 is not installed")
    {
        return;
    }
    let config = format!(
        "{NO_SHOP}{}{}",
        pool("t", &python("echo.py"), ""),
        process("escape", "t", "spawn_grandchild")
    );
    let mut d = Daemon::start(&config);
    let run = |d: &Daemon| {
        let r = d.call(json!({"op": "run", "session": "g", "process": "escape",
            "inputs": {"spawn_grandchild": true}}));
        assert_eq!(r["ok"], json!(true), "{r}\n{}", d.log());
        let worker = r["result"]["pid"].as_u64().unwrap() as u32;
        let grandchild = r["result"]["grandchild_pid"].as_u64().unwrap() as u32;
        assert!(alive(grandchild), "the grandchild did not start");
        (worker, grandchild)
    };

    // The worker dies: its replacement's start must not leave the grandchild running.
    let (first_worker, first_grandchild) = run(&d);
    kill(first_worker);
    let reaped = wait_until(Duration::from_secs(5), || !alive(first_grandchild));
    if !reaped {
        kill(first_grandchild);
    }
    assert!(
        reaped,
        "grandchild {first_grandchild} outlived its worker:\n{}",
        d.log()
    );

    // The daemon stops: the grandchild of a live worker goes too.
    let (_, second_grandchild) = run(&d);
    assert!(d.stop(), "precogd did not stop cleanly");
    let reaped = wait_until(Duration::from_secs(5), || !alive(second_grandchild));
    if !reaped {
        kill(second_grandchild);
    }
    assert!(reaped, "grandchild {second_grandchild} outlived the daemon");
}

#[test]
fn garbage_and_a_100_mib_line_are_errors_memory_stays_bounded_and_the_next_run_works() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let config = format!(
        "{NO_SHOP}{}{}{}{}{}{}",
        pool("junk", &python("garbage.py"), ""),
        pool("big", &python("huge_line.py"), ""),
        pool("t", &python("echo.py"), ""),
        process("garbage", "junk", "x"),
        process("huge", "big", "x"),
        process("echo", "t", "x"),
    );
    let d = Daemon::start(&config);
    let before = common::rss_kib(d.pid());

    for round in 0..2 {
        let r = d.call(json!({"op": "run", "session": "j", "process": "garbage",
            "inputs": {"x": round}}));
        assert_eq!(r["error"]["code"], json!("worker_failed"), "{r}");
        assert_eq!(r["error"]["reason"], json!("protocol"), "{r}");
        // The message quotes the stray line and says where such output belongs.
        let message = r["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("\"this is not json: ")
                && message.contains("write diagnostics to stderr"),
            "{r}"
        );

        let started = Instant::now();
        let r = d.call(json!({"op": "run", "session": "j", "process": "huge",
            "inputs": {"x": round}}));
        assert_eq!(r["error"]["code"], json!("worker_failed"), "{r}");
        println!("100 MiB line refused in {:?}", started.elapsed());

        let r = d.call(json!({"op": "run", "session": "j", "process": "echo",
            "inputs": {"x": round}}));
        assert_eq!(r["ok"], json!(true), "{r}");
    }
    let after = common::rss_kib(d.pid());
    println!("precogd RSS {before} KiB before, {after} KiB after two 100 MiB lines");
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    // Each worker lost to a bad line shows as a protocol error of its pool, within its crashes.
    let stats = d.call(json!({"op": "stats"}));
    for name in ["junk", "big"] {
        let p = &stats["pools"][name];
        assert_eq!(p["protocol_errors"], json!(2), "{name}: {p}");
        assert_eq!(p["crashes"], json!(2), "{name}: {p}");
    }
    assert_eq!(stats["pools"]["t"]["protocol_errors"], json!(0), "{stats}");
}

#[test]
fn a_worker_crashing_at_start_fails_requests_fast_with_growing_backoff_and_low_cpu() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let config = format!(
        "{NO_SHOP}{}{}",
        pool("broken", &python("crash_at_start.py"), ""),
        process("doomed", "broken", "x")
    );
    let d = Daemon::start(&config);
    let mut c = d.connect();
    for x in 0..5 {
        let started = Instant::now();
        let r = c.call(&json!({"op": "run", "session": "c", "process": "doomed",
            "inputs": {"x": x}}));
        let took = started.elapsed();
        assert_eq!(r["error"]["code"], json!("worker_failed"), "{r}");
        assert!(took < Duration::from_secs(3), "took {took:?}: {r}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let ticks = cpu_ticks(d.pid());
    std::thread::sleep(Duration::from_secs(5));
    let used = (cpu_ticks(d.pid()) - ticks) as f64 / ticks_per_second() as f64;
    println!("precogd used {used:.2} s of CPU in 5 s with a pool that never starts");
    assert!(used < 0.5, "precogd used {used:.2} s of CPU in 5 s");

    let backoffs: Vec<u64> = d
        .log()
        .lines()
        .filter(|l| l.contains("worker failed at start"))
        .filter_map(|l| l.split("backoff_ms=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .collect();
    println!("backoff after logged failures: {backoffs:?} ms");
    assert!(
        backoffs.len() >= 3 && backoffs.windows(2).all(|w| w[1] > w[0]),
        "backoff does not grow: {backoffs:?}"
    );
    let stats = d.call(json!({"op": "stats"}));
    let spawned = find_key(&stats, "spawned").unwrap_or(0);
    assert!(spawned < 20, "{spawned} workers started in ~6 s: {stats}");
}

#[test]
fn a_worker_that_cannot_be_executed_is_counted_and_named_in_stats_and_metrics() {
    // The file is there and executable, so the configuration passes; its `#!` interpreter is not.
    let script = worker("bad_interpreter.py");
    let config = format!(
        "{NO_SHOP}{}{}",
        pool("missing", &format!("[\"{script}\"]"), ""),
        process("lost", "missing", "x")
    );
    let d = Daemon::start(&config);
    let r = d.call(json!({"op": "run", "session": "m", "process": "lost", "inputs": {"x": 1}}));
    assert_eq!(r["error"]["code"], json!("worker_failed"), "{r}");
    let mut stats = Value::Null;
    let counted = wait_until(Duration::from_secs(10), || {
        stats = d.call(json!({"op": "stats"}));
        stats["pools"]["missing"]["start_failures"].as_u64() >= Some(1)
    });
    assert!(counted, "no failed start counted: {stats}");
    let p = &stats["pools"]["missing"];
    assert_eq!(p["spawned"], json!(0), "{p}");
    let why = p["last_failure"].as_str().unwrap_or_default();
    assert!(why.contains(&script), "{p}");
    assert!(why.contains("interpreter named on its `#!` line"), "{p}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_precogctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["stats", "--prometheus"])
        .output()
        .expect("run precogctl");
    let text = String::from_utf8_lossy(&out.stdout);
    let metric = "precog_pool_worker_start_failures_total{pool=\"missing\"} ";
    let line = text.lines().find(|l| l.starts_with(metric));
    assert!(line.is_some_and(|l| !l.ends_with(" 0")), "{text}");
}

fn find_key(v: &Value, key: &str) -> Option<u64> {
    match v {
        Value::Object(m) => m
            .get(key)
            .and_then(Value::as_u64)
            .or_else(|| m.values().find_map(|v| find_key(v, key))),
        Value::Array(a) => a.iter().find_map(|v| find_key(v, key)),
        _ => None,
    }
}

#[test]
fn a_client_leaving_mid_request_does_not_lose_the_work_or_the_worker() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    // Only an idempotent process's job is joined by another request.
    let config = format!(
        "{NO_SHOP}{}{}idempotent = true\n{}",
        pool("t", &python("echo.py"), ""),
        process("sleep", "t", "sleep_ms"),
        process("echo", "t", "x")
    );
    let d = Daemon::start(&config);
    let job = json!({"op": "run", "session": "l", "process": "sleep", "inputs": {"sleep_ms": 800}});
    {
        let mut leaver = d.connect();
        leaver.send(&job);
        std::thread::sleep(Duration::from_millis(200));
    }

    // The same job, asked again while it still runs, joins it.
    let r = d.call(job.clone());
    assert_eq!(r["ok"], json!(true), "{r}");
    assert!(
        r["served"] == json!("inflight") || r["served"] == json!("cache"),
        "the abandoned job's work was lost: {r}"
    );

    // Both workers are free again: two jobs at once are served without queueing.
    let sock = d.socket.clone();
    let other = std::thread::spawn(move || {
        common::Conn::open(&sock)
            .unwrap()
            .call(&json!({"op": "run", "session": "l", "process": "sleep",
                "inputs": {"sleep_ms": 300}}))
    });
    let r = d.call(json!({"op": "run", "session": "l", "process": "sleep",
        "inputs": {"sleep_ms": 301}}));
    let o = other.join().unwrap();
    for reply in [&r, &o] {
        assert_eq!(reply["ok"], json!(true), "{reply}");
        assert!(
            reply["wait_us"].as_u64().unwrap_or(u64::MAX) < 200_000,
            "a job waited for a worker: {reply}"
        );
    }
}

#[test]
fn a_request_waiting_on_a_pool_that_a_reload_removed_is_told_so() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let pool = format!(
        r#"
[[pool]]
name = "gone"
command = ["python3", "{echo}"]
warm_min = 1
timeout = "30s"

[[process]]
name = "nap"
pool = "gone"
inputs = ["sleep_ms"]
"#,
        echo = worker("echo.py")
    );
    let d = Daemon::start(&pool);
    let mut c = d.connect();
    let nap = |id: u32| {
        json!({"id": id, "op": "run", "session": "s", "process": "nap",
            "inputs": {"sleep_ms": 20_000 + id}})
    };
    // One job running, one queued behind it on the pool's single worker.
    c.send(&nap(1));
    c.send(&nap(2));
    std::thread::sleep(Duration::from_millis(500));
    let text = std::fs::read_to_string(&d.config).unwrap();
    d.reload(&text.replace(pool.trim(), ""));
    for id in [1, 2] {
        let r = c.recv();
        assert_eq!(r["id"], json!(id), "{r}");
        assert_eq!(r["error"]["code"], json!("unknown_process"), "{r}");
    }
    // The daemon goes on serving.
    assert_eq!(d.call(json!({"op": "ping"}))["ok"], json!(true));
}

/// A pool `owner` of one echo worker, and `process` (not idempotent) on it with `inputs`.
fn one_worker_pool(owner: &str, process: &str, inputs: &str) -> String {
    format!(
        r#"
[[pool]]
name = "{owner}"
command = ["python3", "{echo}"]
warm_min = 1
workers_max = 1
timeout = "30s"

[[process]]
name = "{process}"
pool = "{owner}"
inputs = {inputs}
"#,
        echo = worker("echo.py")
    )
}

#[test]
fn requests_waiting_on_a_removed_pool_run_on_the_pool_their_process_moved_to() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let pools = |owner: &str| one_worker_pool(owner, "nap", r#"["sleep_ms", "n"]"#);
    let d = Daemon::start(&pools("old"));
    let mut c = d.connect();
    // One job running on the pool's single worker, three queued behind it.
    for id in 1..=4 {
        c.send(
            &json!({"id": id, "op": "run", "session": "s", "process": "nap",
            "inputs": {"sleep_ms": 400, "n": id}}),
        );
    }
    std::thread::sleep(Duration::from_millis(150));
    let text = std::fs::read_to_string(&d.config).unwrap();
    d.reload(&text.replace(&pools("old"), &pools("new")));
    for id in 1..=4 {
        let r = c.recv();
        assert_eq!(r["id"], json!(id), "{r}");
        assert_eq!(
            r["ok"],
            json!(true),
            "run {id} was not served after the move: {r}"
        );
        assert_eq!(r["result"]["echo"]["n"], json!(id), "{r}");
    }
}

#[test]
fn a_running_job_whose_pool_a_reload_removed_is_not_run_twice_unless_idempotent() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let pools = |owner: &str| one_worker_pool(owner, "charge", r#"["sleep_ms"]"#);
    let d = Daemon::start(&pools("old"));
    let mut c = d.connect();
    // Runs past the grace a removed pool gives its running jobs.
    c.send(
        &json!({"id": 1, "op": "run", "session": "s", "process": "charge",
        "inputs": {"sleep_ms": 8000}}),
    );
    std::thread::sleep(Duration::from_millis(300));
    let text = std::fs::read_to_string(&d.config).unwrap();
    d.reload(&text.replace(&pools("old"), &pools("new")));
    let t = std::time::Instant::now();
    let r = c.recv();
    assert_eq!(r["error"]["code"], json!("worker_failed"), "{r}");
    assert_eq!(r["error"]["reason"], json!("pool_removed"), "{r}");
    assert!(t.elapsed() < Duration::from_secs(7), "it ran again: {r}");
}

#[test]
fn a_pool_a_reload_removed_gives_its_running_job_the_configured_shutdown_grace() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let pools = |owner: &str| one_worker_pool(owner, "charge", r#"["sleep_ms"]"#);
    let d = Daemon::start_with("shutdown_grace = \"1s\"", &pools("old"));
    let mut c = d.connect();
    // Longer than the grace, well within the job's timeout.
    c.send(
        &json!({"id": 1, "op": "run", "session": "s", "process": "charge",
        "inputs": {"sleep_ms": 4000}}),
    );
    std::thread::sleep(Duration::from_millis(300));
    let text = std::fs::read_to_string(&d.config).unwrap();
    d.reload(&text.replace(&pools("old"), &pools("new")));
    let r = c.recv();
    assert_eq!(r["error"]["reason"], json!("pool_removed"), "{r}");
}

#[test]
fn identical_runs_of_a_process_that_is_not_idempotent_each_run_on_a_worker() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    // `sleep` changes the world (it is not declared idempotent): four shoppers asking at once
    // with the same inputs are four jobs, never one job shared.
    let config = format!(
        "{NO_SHOP}{}{}",
        pool("t", &python("echo.py"), ""),
        process("sleep", "t", "sleep_ms"),
    );
    let d = Daemon::start(&config);
    let job = json!({"op": "run", "session": "s", "process": "sleep",
        "inputs": {"sleep_ms": 400}});
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let sock = d.socket.clone();
            let job = job.clone();
            std::thread::spawn(move || common::Conn::open(&sock).unwrap().call(&job))
        })
        .collect();
    for r in runs {
        let r = r.join().unwrap();
        assert_eq!(r["ok"], json!(true), "{r}\n{}", d.log());
        assert!(
            r["served"] == json!("warm") || r["served"] == json!("cold"),
            "a run of a process that is not idempotent shared another's job: {r}"
        );
    }
    let stats = d.call(json!({"op": "stats"}));
    assert_eq!(
        find_key(&stats["pools"]["t"], "jobs_ok"),
        Some(4),
        "{stats}"
    );
}
