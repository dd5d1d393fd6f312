//! On-demand first, measured: the p99 latency of real `run` requests with speculation on and
//! off under the same load, and their ratio. Speculation must not slow real requests: the pool
//! serves its on-demand queue first and takes back a worker running a speculative job when it
//! is full.
//!
//! Build the daemon first, then run: `cargo build --bins && cargo run --example ondemand_bench
//! -- [sessions] [clients]`. Each client walks through sessions: an event that makes inputs
//! known, a hint that makes a CPU-heavy idempotent process hot (speculated when speculation is
//! on, never asked for), a short think time, then a timed `run` of a light process that is never
//! speculated.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

fn config(dir: &Path, speculation: bool) -> String {
    let echo = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workers/echo.py");
    format!(
        r#"[daemon]
cache_dir = "{d}/cache"
state_dir = "{d}/state"
cgroup_parent = "precog-bench-{pid}-{speculation}"
socket_group = "root"
allowed_groups = []

[predict]
speculation = {speculation}
per_session = 2

[[pool]]
name = "shop"
warm_min = 0

[[pool]]
name = "t"
command = ["python3", "{echo}"]
warm_min = 2
workers_max = 3
timeout = "10s"

[[process]]
name = "guess"
pool = "t"
inputs = ["n", "cpu_ms"]
idempotent = true

[[process]]
name = "real"
pool = "t"
inputs = ["n", "work_ms"]
"#,
        d = dir.display(),
        pid = std::process::id(),
        echo = echo.display(),
    )
}

struct Daemon {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(precogd: &Path, speculation: bool) -> anyhow::Result<Daemon> {
        let dir = tempfile::tempdir()?;
        let cfg = dir.path().join("precogd.toml");
        std::fs::write(&cfg, config(dir.path(), speculation))?;
        let socket = dir.path().join("precogd.sock");
        let child = Command::new(precogd)
            .arg("--config")
            .arg(&cfg)
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", precogd.display()))?;
        let d = Daemon {
            child,
            socket,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut c) = Conn::open(&d.socket)
                && c.call(&json!({"op": "ping"}))
                    .is_ok_and(|r| r["ok"] == json!(true))
            {
                return Ok(d);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("precogd did not answer within 20 s")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    fn open(path: &Path) -> std::io::Result<Conn> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    fn call(&mut self, req: &Value) -> anyhow::Result<Value> {
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        let mut reply = String::new();
        self.reader.read_line(&mut reply)?;
        Ok(serde_json::from_str(&reply)?)
    }
}

/// Runs the load; returns the latencies of the real runs, in microseconds, sorted.
fn load(socket: &Path, sessions: usize, clients: usize, tag: &str) -> anyhow::Result<Vec<u64>> {
    let mut threads = Vec::new();
    for c in 0..clients {
        let socket = socket.to_path_buf();
        let tag = tag.to_string();
        threads.push(std::thread::spawn(move || -> anyhow::Result<Vec<u64>> {
            let mut conn = Conn::open(&socket)?;
            let mut out = Vec::new();
            for i in (c..sessions).step_by(clients) {
                let s = format!("{tag}-{i}");
                conn.call(&json!({"op": "event", "session": s, "type": "page_view",
                    "attrs": {"n": i, "cpu_ms": 40}}))?;
                conn.call(&json!({"op": "hint", "session": s,
                    "predictions": [{"process": "guess", "p": 0.9}]}))?;
                std::thread::sleep(Duration::from_millis(5));
                let t = Instant::now();
                let r = conn.call(&json!({"op": "run", "session": s, "process": "real",
                    "inputs": {"n": i, "work_ms": 0}}))?;
                let us = t.elapsed().as_micros() as u64;
                if r["ok"] != json!(true) {
                    bail!("run failed: {r}");
                }
                out.push(us);
                conn.call(&json!({"op": "end", "session": s}))?;
            }
            Ok(out)
        }));
    }
    let mut all = Vec::new();
    for t in threads {
        all.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("a client panicked"))??,
        );
    }
    all.sort_unstable();
    Ok(all)
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let sessions: usize = args.next().map_or(Ok(400), |a| a.parse())?;
    let clients: usize = args.next().map_or(Ok(3), |a| a.parse())?;
    let exe = std::env::current_exe()?;
    let precogd = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("precogd"))
        .context("cannot locate precogd beside the example")?;
    if !precogd.exists() {
        bail!(
            "{} is missing; run `cargo build --bins` first",
            precogd.display()
        );
    }

    let mut p99 = Vec::new();
    for speculation in [false, true] {
        let d = Daemon::start(&precogd, speculation)?;
        load(&d.socket, 30, clients, "warmup")?;
        let lat = load(&d.socket, sessions, clients, "run")?;
        let stats = Conn::open(&d.socket)?.call(&json!({"op": "stats"}))?;
        let sp = &stats["speculation"];
        let pool = &stats["pools"]["t"];
        println!(
            "speculation {:<3}: {} runs, p50 {} us, p99 {} us; speculative issued {}, \
             taken back {}",
            if speculation { "on" } else { "off" },
            lat.len(),
            quantile(&lat, 0.5),
            quantile(&lat, 0.99),
            sp["issued"],
            pool["preempted"],
        );
        p99.push(quantile(&lat, 0.99) as f64);
    }
    println!(
        "on-demand p99 ratio (speculation on / off): {:.2}",
        p99[1] / p99[0]
    );
    Ok(())
}
