//! Black-box tests of the daemon's socket, protocol errors and worker handling, on the real
//! `precogd` with real worker processes.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, check_config, have_python, skip_unless, worker};
use serde_json::json;

/// A pool of Python echo workers with a 1 s timeout, and processes on it.
fn echo_pool() -> String {
    format!(
        r#"
[[pool]]
name = "shop"
warm_min = 1

[[pool]]
name = "t"
command = ["python3", "{echo}"]
warm_min = 1
workers_max = 2
timeout = "1s"
# A worker's first job has its 1 s too, not start-up on top.
start_timeout = "0s"

[[process]]
name = "echo"
pool = "t"
inputs = ["x"]

[[process]]
name = "sleep"
pool = "t"
inputs = ["sleep_ms"]

[[process]]
name = "noisy"
pool = "t"
inputs = ["stderr_kb"]
"#,
        echo = worker("echo.py")
    )
}

#[test]
fn run_is_served_warm_by_the_shop_worker() {
    let d = Daemon::start("");
    let mut c = d.connect();
    let r = c.call(&json!({"id": 1, "op": "run", "session": "s1",
        "process": "validate_postal_code",
        "inputs": {"country": "DE", "postal_code": "10115"}}));
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(r["id"], json!(1));
    assert_eq!(r["served"], json!("warm"), "{r}");
    assert!(r["result"].is_object(), "{r}");

    let r = c.call(&json!({"id": 2, "op": "run", "session": "s1", "process": "teleport"}));
    assert_eq!(r["error"]["code"], json!("unknown_process"), "{r}");
    // The message names the processes that are configured, a misspelt name's right spelling.
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("those configured: ") && message.contains("validate_postal_code"),
        "{r}"
    );

    let r = c.call(
        &json!({"op": "run", "session": "s1", "process": "calc_shipping",
        "inputs": {"country": "DE"}}),
    );
    assert_eq!(r["error"]["code"], json!("missing_input"), "{r}");

    // An input sent as null is not given, and the message says so.
    let r = c.call(
        &json!({"op": "run", "session": "s1", "process": "validate_postal_code",
        "inputs": {"country": "DE", "postal_code": null}}),
    );
    assert_eq!(r["error"]["code"], json!("missing_input"), "{r}");
    assert_eq!(
        r["error"]["message"],
        json!(
            "`validate_postal_code` needs input(s) postal_code; null counts as not given \
               (sent for postal_code)"
        ),
        "{r}"
    );
    // As for an input not sent at all, the session's value then stands in.
    let r = c.call(&json!({"op": "event", "session": "s1", "type": "input",
        "attrs": {"postal_code": "10115"}}));
    assert_eq!(r["ok"], json!(true), "{r}");
    let r = c.call(
        &json!({"op": "run", "session": "s1", "process": "validate_postal_code",
        "inputs": {"country": "DE", "postal_code": null}}),
    );
    assert_eq!(r["result"]["postal_code"], json!("10115"), "{r}");
}

#[test]
fn bad_json_is_answered_and_the_connection_stays_open() {
    let d = Daemon::start("");
    let mut c = d.connect();
    c.send_raw(b"{this is not json\n").unwrap();
    let r = c.recv();
    assert_eq!(r["ok"], json!(false));
    assert_eq!(r["error"]["code"], json!("bad_json"));

    c.send_raw(b"{\"id\":\"u\",\"op\":\"dance\"}\n").unwrap();
    assert_eq!(c.recv()["error"]["code"], json!("unknown_op"));

    let r = c.call(&json!({"id": 9, "op": "ping"}));
    assert_eq!(r["ok"], json!(true));
    assert_eq!(r["protocol"], json!(1));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let d = Daemon::start("");
    let mut c = d.connect();
    let mut batch = Vec::new();
    for i in 0..50 {
        let req = if i % 3 == 0 {
            json!({"id": i, "op": "run", "session": "p", "process": "validate_postal_code",
                "inputs": {"country": "FR", "postal_code": format!("750{:02}", i % 20 + 1)}})
        } else {
            json!({"id": i, "op": "ping"})
        };
        batch.extend(serde_json::to_vec(&req).unwrap());
        batch.push(b'\n');
    }
    c.send_raw(&batch).unwrap();
    for i in 0..50 {
        let r = c.recv();
        assert_eq!(r["id"], json!(i), "reply out of order: {r}");
        assert_eq!(r["ok"], json!(true), "{r}");
    }
}

#[test]
fn an_overlong_line_is_refused_and_memory_stays_bounded() {
    let d = Daemon::start("");
    let before = common::rss_kib(d.pid());
    let mut c = d.connect();
    let chunk = vec![b'x'; 64 * 1024];
    // 2 MiB with no newline; the daemon may close the connection before all of it is sent.
    for _ in 0..32 {
        if c.send_raw(&chunk).is_err() {
            break;
        }
    }
    let r = c.recv();
    assert_eq!(r["error"]["code"], json!("too_large"), "{r}");
    assert!(
        c.closed(),
        "the connection should be closed after too_large"
    );
    let after = common::rss_kib(d.pid());
    println!("precogd RSS before {before} KiB, after a 2 MiB line {after} KiB");
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} to {after} KiB"
    );

    // The daemon still serves others.
    assert_eq!(d.call(json!({"op": "ping"}))["ok"], json!(true));
}

#[test]
fn a_worker_killed_mid_job_gives_an_error_and_the_next_run_works() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let d = Daemon::start(&echo_pool());
    let before = d.workers();
    let sock = d.socket.clone();
    let waiter = std::thread::spawn(move || {
        let mut c = common::Conn::open(&sock).unwrap();
        c.call(&json!({"op": "run", "session": "k", "process": "sleep",
            "inputs": {"sleep_ms": 800}}))
    });
    // Find the worker that took the job: a child whose stat shows it sleeping in Python.
    std::thread::sleep(Duration::from_millis(300));
    let busy = d
        .workers()
        .into_iter()
        .filter(|p| cmdline(*p).contains("echo.py"))
        .collect::<Vec<_>>();
    assert!(!busy.is_empty(), "no echo worker found among {before:?}");
    for pid in &busy {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let r = waiter.join().unwrap();
    assert_eq!(r["ok"], json!(false), "{r}");
    assert_eq!(r["error"]["code"], json!("worker_failed"), "{r}");
    assert_eq!(r["error"]["reason"], json!("crashed"), "{r}");

    let r = d.call(json!({"op": "run", "session": "k", "process": "echo", "inputs": {"x": 5}}));
    assert_eq!(r["ok"], json!(true), "{r}\n{}", d.log());
}

#[test]
fn a_worker_writing_a_mebibyte_to_stderr_still_replies() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let d = Daemon::start(&echo_pool());
    let r = d.call(json!({"op": "run", "session": "n", "process": "noisy",
        "inputs": {"stderr_kb": 1024}}));
    assert_eq!(r["ok"], json!(true), "{r}\n{}", d.log());
}

#[test]
fn a_timed_out_job_does_not_leak_its_answer_into_the_next_job() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let d = Daemon::start(&echo_pool());
    let mut c = d.connect();
    let start = Instant::now();
    let r = c.call(&json!({"op": "run", "session": "t", "process": "sleep",
        "inputs": {"sleep_ms": 1500}}));
    assert_eq!(r["error"]["code"], json!("timeout"), "{r}");
    assert!(
        start.elapsed() < Duration::from_millis(1400),
        "the timeout was not enforced"
    );

    for x in 0..5 {
        let r = c.call(&json!({"op": "run", "session": "t", "process": "echo",
            "inputs": {"x": x}}));
        assert_eq!(r["ok"], json!(true), "{r}");
        let text = r["result"].to_string();
        assert!(
            !text.contains("1500"),
            "got the timed-out job's answer: {text}"
        );
        assert!(
            text.contains(&format!("\"x\":{x}")),
            "answer is not for this job: {text}"
        );
    }
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_is_left_alone() {
    let mut d = Daemon::start("");
    d.kill9();
    assert!(d.socket.exists(), "a killed daemon leaves its socket file");
    d.spawn();
    assert_eq!(d.call(json!({"op": "ping"}))["ok"], json!(true));

    let out = std::process::Command::new(common::precogd())
        .arg("--config")
        .arg(&d.config)
        .arg("--socket")
        .arg(&d.socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already serving"), "{err}");
    assert_eq!(d.call(json!({"op": "ping"}))["ok"], json!(true));

    assert!(d.stop(), "precogd did not stop cleanly");
    assert!(
        !d.socket.exists(),
        "precogd should remove its socket at stop"
    );
}

#[test]
fn a_socket_whose_holder_never_answers_is_treated_as_stale() {
    use std::os::unix::fs::MetadataExt;
    let mut d = Daemon::start("");
    d.kill9();
    std::fs::remove_file(&d.socket).unwrap();
    // Something holds the socket and lets connections in (the kernel's backlog) but never
    // answers, as a process left over from a crash might.
    let holder = std::os::unix::net::UnixListener::bind(&d.socket).unwrap();
    let held = std::fs::metadata(&d.socket).unwrap().ino();
    let mut precogd = std::process::Command::new(common::precogd())
        .args(["--bus", "none", "--config"])
        .arg(&d.config)
        .arg("--socket")
        .arg(&d.socket)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Connect only once precogd has put its own socket there: a client that came during its
    // one-second check would have reached the holder.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&d.socket).map_or(true, |m| m.ino() == held) {
        assert!(
            std::time::Instant::now() < deadline,
            "precogd never replaced the socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = common::Conn::open(&d.socket).unwrap();
    let pong = c.try_call(&json!({"op": "ping"}));
    // A clean stop, so that precogd removes its cgroups.
    let pid = nix::unistd::Pid::from_raw(precogd.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = precogd.wait();
    drop(holder);
    assert_eq!(pong.map(|r| r["ok"].clone()), Some(json!(true)));
}

#[test]
fn an_idle_connection_is_closed_after_idle_close() {
    let d = Daemon::start_with("idle_close = \"1s\"", "");
    let mut idle = d.connect();
    assert_eq!(idle.call(&json!({"op": "ping"}))["ok"], json!(true));
    std::thread::sleep(Duration::from_millis(1600));
    assert!(
        idle.closed(),
        "an idle connection stayed open past idle_close"
    );
    assert_eq!(d.call(json!({"op": "ping"}))["ok"], json!(true));
}

/// A CPU this process may not run on, nor precogd started from it: one past its last.
fn unusable_cpu() -> usize {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    let count = nix::sched::CpuSet::count();
    (0..count)
        .filter(|&c| set.is_set(c).unwrap())
        .max()
        .unwrap()
        + 1
}

#[test]
fn a_pool_on_a_cpu_precogd_may_not_use_is_refused_by_check_config_and_by_a_reload() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let cpu = unusable_cpu();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cpus.toml");
    std::fs::write(
        &path,
        format!("[[pool]]\nname = \"shop\"\ncpus = \"{cpu}\"\n"),
    )
    .unwrap();
    let out = check_config(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cpus.toml:3: pool.shop.cpus"), "{err}");
    assert!(err.contains("names no CPU precogd may use"), "{err}");

    // A pool kept by a reload cannot be moved there either: the running configuration stays.
    let d = Daemon::start(&echo_pool());
    let text = std::fs::read_to_string(&d.config).unwrap();
    let moved = text.replace(
        "workers_max = 2\n",
        &format!("workers_max = 2\ncpus = \"{cpu}\"\n"),
    );
    d.reload(&moved);
    assert!(
        common::wait_until(Duration::from_secs(10), || d
            .log()
            .contains("configuration not reloaded")),
        "the reload was not refused:\n{}",
        d.log()
    );
    // Placed at the line that moved it, as `--check-config` places it.
    assert!(
        d.log().contains("pool.t.cpus: ") && d.log().contains("names no CPU precogd may use"),
        "{}",
        d.log()
    );
    for x in 0..3 {
        let r = d.call(json!({"op": "run", "session": "c", "process": "echo",
            "inputs": {"x": x}}));
        assert_eq!(r["ok"], json!(true), "{r}");
    }
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[test]
fn a_connection_whose_replies_back_up_is_not_closed_as_idle() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    // The first request outlasts `idle_close`, and the requests queued behind it fill the
    // pipeline, so the connection stops reading while the client is anything but idle.
    let extra = format!(
        r#"
[[pool]]
name = "slow"
command = ["python3", "{echo}"]
warm_min = 1
timeout = "5s"

[[process]]
name = "sleep"
pool = "slow"
inputs = ["sleep_ms"]
"#,
        echo = worker("echo.py")
    );
    let d = Daemon::start_with("idle_close = \"1s\"", &extra);
    let stream = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    const PINGS: usize = 3000;
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        let head = json!({"id": "head", "op": "run", "session": "s", "process": "sleep",
            "inputs": {"sleep_ms": 1500}});
        writer.write_all(format!("{head}\n").as_bytes())?;
        // Far more than one read of the daemon's, each line padded to the same length.
        for i in 0..PINGS {
            let line = format!(
                "{}\n",
                json!({"id": i, "op": "ping", "pad": "x".repeat(80)})
            );
            writer.write_all(line.as_bytes())?;
        }
        std::io::Result::Ok(())
    });
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stream));
    let mut next = || -> serde_json::Value {
        let line = lines
            .next()
            .expect("the daemon closed the connection early");
        serde_json::from_str(&line.expect("a reply")).unwrap()
    };
    let head = next();
    assert_eq!(head["id"], json!("head"), "{head}");
    assert_eq!(head["ok"], json!(true), "{head}");
    for i in 0..PINGS {
        let r = next();
        assert_eq!(r["id"], json!(i), "reply out of order or missing: {r}");
    }
    sender.join().unwrap().unwrap();
}

/// A worker's parent-death signal fires when the thread that forked it ends, not when the
/// daemon does. Workers must therefore be forked by a thread that lives as long as precogd: a
/// helper thread that retires after idling (about ten seconds) would take them with it.
#[test]
fn workers_outlive_the_thread_that_started_them() {
    let d = Daemon::start("");
    let mut c = d.connect();
    let run = |c: &mut common::Conn, n: u32| {
        c.call(&json!({"op": "run", "session": format!("s{n}"),
            "process": "validate_postal_code",
            "inputs": {"country": "DE", "postal_code": format!("{:05}", 10115 + n)}}))
    };
    let r = run(&mut c, 0);
    assert_eq!(r["ok"], json!(true), "{r}");
    let before = d.workers();
    assert!(!before.is_empty(), "no workers:\n{}", d.log());

    std::thread::sleep(Duration::from_secs(13));
    let r = run(&mut c, 1);
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(r["served"], json!("warm"), "{r}");
    let after = d.workers();
    for pid in &before {
        assert!(
            after.contains(pid),
            "worker {pid} is gone: {after:?}\n{}",
            d.log()
        );
    }
    let stats = c.call(&json!({"op": "stats"}));
    assert_eq!(stats["pools"]["shop"]["crashes"], json!(0), "{stats}");
}

/// In a container precogd may be pid 1 itself; its workers must still start (a worker checks
/// that the daemon that forked it is still its parent, not that its parent is other than 1).
#[test]
fn a_daemon_that_is_pid_1_starts_its_workers() {
    let unshare = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status();
    if skip_unless(
        common::is_root() && unshare.is_ok_and(|s| s.success()),
        "needs root and unshare(1) to start precogd in a pid namespace of its own",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("precogd.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\ncache_dir = \"{d}/cache\"\nstate_dir = \"{d}/state\"\n\
             cgroup_parent = \"{parent}\"\nsocket_group = \"root\"\nallowed_groups = []\n",
            d = dir.path().display(),
            parent = common::cgroup_parent(),
        ),
    )
    .unwrap();
    let socket = dir.path().join("precogd.sock");
    let mut outer = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", common::precogd()])
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&socket)
        .args(["--bus", "none"])
        .stderr(std::fs::File::create(dir.path().join("precogd.log")).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(dir.path().join("precogd.log")).unwrap_or_default();
    let mut answer = None;
    common::wait_until(Duration::from_secs(20), || {
        answer = common::Conn::open(&socket).ok().and_then(|mut c| {
            c.try_call(
                &json!({"op": "run", "session": "s", "process": "validate_postal_code",
                "inputs": {"country": "DE", "postal_code": "10115"}}),
            )
        });
        answer.is_some()
    });
    let stats = common::Conn::open(&socket).map(|mut c| c.call(&json!({"op": "stats"})));
    // precogd is the only child of unshare; SIGTERM stops it as it would any daemon.
    for pid in common::children_of(outer.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let status = outer.wait().unwrap();
    let r = answer.unwrap_or_else(|| panic!("no answer:\n{}", log()));
    assert_eq!(r["ok"], json!(true), "{r}\n{}", log());
    assert_eq!(r["served"], json!("warm"), "{r}");
    let stats = stats.unwrap();
    assert_eq!(stats["pools"]["shop"]["crashes"], json!(0), "{stats}");
    assert!(status.success(), "{status}:\n{}", log());
}
