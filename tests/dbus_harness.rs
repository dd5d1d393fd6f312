//! Shared by the D-Bus tests: a private dbus-daemon, a real precogd on a temporary socket with
//! a tiny Python worker, and a socket client. Everything started here is stopped by pid when
//! its guard drops, so a failing test leaves nothing running.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The worker: answers each job with its inputs after a short pause, so identical requests
/// sent together overlap and the second joins the first.
pub const WORKER: &str = r#"
import json, sys, time
for line in sys.stdin:
    job = json.loads(line)
    time.sleep(0.3)
    out = {"job": job["job"], "result": {"process": job["process"], "inputs": job["inputs"]}}
    print(json.dumps(out), flush=True)
"#;

/// Says why the test cannot run here, or `None` when the tools it needs are present.
pub fn missing_tool() -> Option<String> {
    for tool in ["dbus-daemon", "busctl", "python3"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

fn stop(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A private bus; `config` is a dbus-daemon configuration file, or `None` for a session bus.
pub struct PrivateBus {
    child: Child,
    pub address: String,
}

impl PrivateBus {
    pub fn start(config: Option<&Path>) -> PrivateBus {
        let mut cmd = Command::new("dbus-daemon");
        match config {
            Some(c) => cmd.arg(format!("--config-file={}", c.display())),
            None => cmd.arg("--session"),
        };
        let mut child = cmd
            .args(["--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("dbus-daemon prints its address");
        let address = line.trim().to_string();
        assert!(!address.is_empty(), "dbus-daemon gave no address");
        PrivateBus { child, address }
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A running precogd with its temporary directory.
pub struct Daemon {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts precogd with `--bus bus`; waits until the socket answers.
    pub fn start(bus: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        std::fs::write(root.join("worker.py"), WORKER).expect("worker written");
        let socket = root.join("precogd.sock");
        let config = root.join("precogd.toml");
        write_config(&config, root, 2);
        let log = root.join("precogd.log");
        let child = Command::new(env!("CARGO_BIN_EXE_precogd"))
            .arg("--config")
            .arg(&config)
            .args(["--bus", bus])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("precogd starts");
        let daemon = Daemon {
            child,
            dir,
            socket,
            config,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while UnixStream::connect(&daemon.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "precogd did not start: {}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One request on a fresh connection; returns the reply.
    pub fn call(&self, request: Value) -> Value {
        self.call_many(&[request]).remove(0)
    }

    /// Sends all requests at once on one connection (pipelined) and returns the replies.
    pub fn call_many(&self, requests: &[Value]) -> Vec<Value> {
        let mut stream = UnixStream::connect(&self.socket).expect("socket connects");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout set");
        let mut out = String::new();
        for r in requests {
            out.push_str(&r.to_string());
            out.push('\n');
        }
        stream.write_all(out.as_bytes()).expect("requests sent");
        let mut reader = BufReader::new(stream);
        (0..requests.len())
            .map(|_| {
                let mut line = String::new();
                reader.read_line(&mut line).expect("reply read");
                serde_json::from_str(&line).expect("reply is JSON")
            })
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// The first part of the daemons' cgroup parent names: `PRECOG_TEST_CGROUP_PREFIX` when set (to
/// keep one run's cgroups apart from another's), else `precog-test`.
pub fn cgroup_prefix() -> String {
    std::env::var("PRECOG_TEST_CGROUP_PREFIX").unwrap_or_else(|_| "precog-test".into())
}

/// The test configuration: a `shop` pool running the Python worker, paths in `root`.
pub fn write_config(path: &Path, root: &Path, workers_max: u32) {
    let text = format!(
        r#"
[daemon]
socket = "{root}/precogd.sock"
cache_dir = "{root}/cache"
state_dir = "{root}/state"
cgroup_parent = "{prefix}-{pid}-{leaf}"
allowed_groups = []

[[pool]]
name = "shop"
command = ["python3", "{root}/worker.py"]
warm_min = 1
workers_max = {workers_max}
"#,
        root = root.display(),
        prefix = cgroup_prefix(),
        pid = std::process::id(),
        leaf = root
            .file_name()
            .map(|n| n.to_string_lossy().replace('.', ""))
            .unwrap_or_default()
    );
    std::fs::write(path, text).expect("config written");
}

/// Runs `busctl --address=ADDRESS ARGS…` (optionally through `setpriv` as another user);
/// returns success, stdout and stderr.
pub fn busctl(address: &str, as_user: Option<&[&str]>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = match as_user {
        Some(setpriv_args) => {
            let mut c = Command::new("setpriv");
            c.args(setpriv_args).arg("busctl");
            c
        }
        None => Command::new("busctl"),
    };
    let out = cmd
        .arg(format!("--address={address}"))
        .args(args)
        .output()
        .expect("busctl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until precogd's name is on the bus.
pub fn wait_for_name(address: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, out, _) = busctl(address, None, &["list", "--no-pager", "--no-legend"]);
        if out.contains("org.precog.Precog1") {
            return;
        }
        assert!(Instant::now() < deadline, "precogd never took its bus name");
        std::thread::sleep(Duration::from_millis(50));
    }
}
