//! Black-box tests of the daemon under connection pressure: ten thousand idle clients, and a
//! daemon out of file descriptors, on its socket and on its `/metrics` listener. New clients get
//! an answer or a clear `overloaded`, the daemon does not spin, and it recovers when the
//! pressure goes.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::json;

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

fn cpu_seconds_over(pid: u32, span: Duration) -> f64 {
    let before = cpu_ticks(pid);
    std::thread::sleep(span);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (cpu_ticks(pid) - before) as f64 / hz
}

/// Raises this process's soft descriptor limit to at least `want`; false if the hard limit is
/// lower and cannot be raised.
fn raise_nofile(want: u64) -> bool {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return false;
    };
    if soft >= want {
        return true;
    }
    let hard = hard.max(want);
    setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_ok()
}

/// Opens `n` connections on a thread; the test fails instead of hanging if that stalls.
fn open_idle(socket: &std::path::Path, n: usize, within: Duration) -> Vec<UnixStream> {
    let (tx, rx) = mpsc::channel();
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        let conns: Vec<UnixStream> = (0..n)
            .filter_map(|_| UnixStream::connect(&socket).ok())
            .collect();
        let _ = tx.send(conns);
    });
    rx.recv_timeout(within)
        .unwrap_or_else(|_| panic!("opening {n} connections took over {within:?}"))
}

/// One ping on a new connection, within `limit`; the reply, or `None` on a hang or close.
fn ping_within(d: &Daemon, limit: Duration) -> Option<serde_json::Value> {
    let (tx, rx) = mpsc::channel();
    let socket = d.socket.clone();
    std::thread::spawn(move || {
        let reply = common::Conn::open(&socket)
            .ok()
            .and_then(|mut c| c.try_call(&json!({"op": "ping"})));
        let _ = tx.send(reply);
    });
    rx.recv_timeout(limit).ok().flatten()
}

#[test]
fn ten_thousand_idle_connections_never_hang_a_new_client() {
    if !raise_nofile(12_000) {
        println!("SKIPPED: cannot raise RLIMIT_NOFILE to 12000");
        return;
    }
    let d = Daemon::start("");
    let started = Instant::now();
    let idle = open_idle(&d.socket, 10_000, Duration::from_secs(60));
    println!(
        "{} idle connections open in {:?}",
        idle.len(),
        started.elapsed()
    );
    assert_eq!(idle.len(), 10_000, "connects failed");

    let started = Instant::now();
    let reply = ping_within(&d, Duration::from_secs(5)).expect("a new client hung or was dropped");
    println!(
        "a new client was answered in {:?}: {reply}",
        started.elapsed()
    );
    assert!(
        reply["ok"] == json!(true) || reply["error"]["code"] == json!("overloaded"),
        "{reply}"
    );
    let cpu = cpu_seconds_over(d.pid(), Duration::from_secs(2));
    println!("precogd used {cpu:.2} s CPU in 2 s holding them");
    assert!(cpu < 0.4, "precogd used {cpu:.2} s CPU in 2 s while idle");

    drop(idle);
    let mut served = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !served && Instant::now() < deadline {
        served = ping_within(&d, Duration::from_secs(2)).is_some_and(|r| r["ok"] == json!(true));
    }
    assert!(served, "not served again after the idle clients left");
}

/// Lowers precogd's descriptor limit to 16 above what it holds; false if prlimit is refused.
fn squeeze_descriptors(pid: u32) -> bool {
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count() as u64)
        .unwrap_or(0);
    let limit = open_fds + 16;
    let rlim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit reads `rlim` and writes nothing (null old limit); pid is our child.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &rlim,
            std::ptr::null_mut(),
        )
    };
    open_fds > 0 && rc == 0
}

#[test]
fn out_of_descriptors_the_daemon_does_not_spin_and_recovers() {
    let d = Daemon::start("");
    let pid = d.pid();
    if !squeeze_descriptors(pid) {
        println!("SKIPPED: cannot lower precogd's RLIMIT_NOFILE with prlimit");
        return;
    }

    let held = open_idle(&d.socket, 200, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let cpu = cpu_seconds_over(pid, Duration::from_secs(3));
    println!(
        "precogd out of descriptors with {} clients: {cpu:.2} s CPU in 3 s",
        held.len()
    );
    assert!(cpu < 0.6, "precogd spun: {cpu:.2} s CPU in 3 s");

    drop(held);
    let started = Instant::now();
    let mut served = false;
    while !served && started.elapsed() < Duration::from_secs(10) {
        served = ping_within(&d, Duration::from_secs(2)).is_some_and(|r| r["ok"] == json!(true));
    }
    println!(
        "served again {:?} after the clients left",
        started.elapsed()
    );
    assert!(served, "precogd did not recover:\n{}", tail(&d.log()));

    // The failing accepts were reported once, not ten times a second.
    let log = d.log();
    let warned = log.matches("cannot accept a connection").count();
    assert!(warned == 1, "{warned} accept warnings:\n{}", tail(&log));
}

/// One `GET /metrics` on a new connection; the status line, or `None` if it failed or took over
/// two seconds.
fn metrics_status(port: u16) -> Option<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    reply.lines().next().map(str::to_string)
}

#[test]
fn out_of_descriptors_the_metrics_listener_does_not_spin_and_recovers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    let d = Daemon::start_with(&format!("metrics_listen = \"127.0.0.1:{port}\""), "");
    assert_eq!(metrics_status(port).as_deref(), Some("HTTP/1.1 200 OK"));
    let pid = d.pid();
    if !squeeze_descriptors(pid) {
        println!("SKIPPED: cannot lower precogd's RLIMIT_NOFILE with prlimit");
        return;
    }

    // Socket clients take the last descriptors; scrapers then wait in the listener's backlog,
    // which keeps it readable while every accept fails.
    let held = open_idle(&d.socket, 200, Duration::from_secs(20));
    let scrapers: Vec<TcpStream> = (0..5)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert!(!scrapers.is_empty(), "no scraper reached the backlog");
    std::thread::sleep(Duration::from_millis(500));
    let cpu = cpu_seconds_over(pid, Duration::from_secs(3));
    println!(
        "precogd out of descriptors with {} scrapers waiting: {cpu:.2} s CPU in 3 s",
        scrapers.len()
    );
    assert!(cpu < 0.6, "precogd spun: {cpu:.2} s CPU in 3 s");

    drop(scrapers);
    drop(held);
    let started = Instant::now();
    let mut served = false;
    while !served && started.elapsed() < Duration::from_secs(10) {
        served = metrics_status(port).as_deref() == Some("HTTP/1.1 200 OK");
    }
    println!(
        "/metrics answered {:?} after the clients left",
        started.elapsed()
    );
    assert!(served, "/metrics did not recover:\n{}", tail(&d.log()));

    let log = d.log();
    let warned = log
        .lines()
        .filter(|l| l.contains("cannot accept a connection") && l.contains("metrics"))
        .count();
    assert!(
        warned == 1,
        "{warned} metrics accept warnings:\n{}",
        tail(&log)
    );
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
