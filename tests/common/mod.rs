//! Shared harness for the black-box tests: starts the real `precogd` on a temporary directory
//! and socket, and speaks the socket protocol to it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub fn precogd() -> &'static str {
    env!("CARGO_BIN_EXE_precogd")
}

/// `precogd --check-config` on the file at `path`.
pub fn check_config(path: &std::path::Path) -> std::process::Output {
    std::process::Command::new(precogd())
        .arg("--config")
        .arg(path)
        .arg("--check-config")
        .output()
        .expect("run precogd --check-config")
}

/// Path of a test worker in `tests/workers/`.
pub fn worker(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workers")
        .join(name)
        .display()
        .to_string()
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn have_python() -> bool {
    Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .is_ok_and(|s| s.success())
}

/// Prints the skip line and returns true when `cond` is false.
pub fn skip_unless(cond: bool, reason: &str) -> bool {
    if !cond {
        println!("SKIPPED: {reason}");
    }
    !cond
}

/// Polls `cond` every 5 ms until it holds or `limit` has passed; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A unique cgroup parent name for one daemon of one test run. `PRECOG_TEST_CGROUP_PREFIX`
/// replaces the `precog-test` prefix, to keep one run's cgroups apart from another's.
pub fn cgroup_parent() -> String {
    let prefix =
        std::env::var("PRECOG_TEST_CGROUP_PREFIX").unwrap_or_else(|_| "precog-test".into());
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub cgroup_parent: String,
    /// The file-size limit (`RLIMIT_FSIZE`, bytes) precogd is started under, if any.
    pub file_size_limit: Option<u64>,
    child: Option<Child>,
}

impl Daemon {
    /// Starts precogd with the built-in configuration plus `extra` TOML, on a private socket,
    /// cache and state directory. Waits until the socket answers.
    pub fn start(extra: &str) -> Daemon {
        Daemon::start_with("", extra)
    }

    /// Like [`Daemon::start`], with `daemon_keys` added to the `[daemon]` table. The daemon's
    /// directory (socket, stores, log) is made under `PRECOG_TEST_DIR` when that is set.
    pub fn start_with(daemon_keys: &str, extra: &str) -> Daemon {
        let mut d = Daemon::prepare(daemon_keys, extra);
        d.spawn();
        d
    }

    /// Writes the configuration [`Daemon::start_with`] would, without starting the daemon.
    pub fn prepare(daemon_keys: &str, extra: &str) -> Daemon {
        let dir = match std::env::var_os("PRECOG_TEST_DIR") {
            Some(root) => {
                std::fs::create_dir_all(&root).expect("create PRECOG_TEST_DIR");
                tempfile::tempdir_in(root).expect("temp dir")
            }
            None => tempfile::tempdir().expect("temp dir"),
        };
        let socket = dir.path().join("precogd.sock");
        let config = dir.path().join("precogd.toml");
        let parent = cgroup_parent();
        let cache_dir = if daemon_keys.contains("cache_dir") {
            String::new()
        } else {
            format!("cache_dir = \"{}\"\n", dir.path().join("cache").display())
        };
        let text = format!(
            "[daemon]\n{cache_dir}state_dir = \"{}\"\ncgroup_parent = \"{parent}\"\n\
             socket_group = \"root\"\nallowed_groups = []\n{daemon_keys}\n{extra}\n",
            dir.path().join("state").display(),
        );
        std::fs::write(&config, text).expect("write config");
        Daemon {
            dir,
            socket,
            config,
            cgroup_parent: parent,
            file_size_limit: None,
            child: None,
        }
    }

    /// Starts (again) the daemon process on this directory.
    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("precogd.log")).expect("log");
        let mut cmd = Command::new(precogd());
        if let Some(limit) = self.file_size_limit {
            use nix::sys::resource::{Resource, setrlimit};
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is one system call, safe between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    setrlimit(Resource::RLIMIT_FSIZE, limit, limit).map_err(std::io::Error::from)
                });
            }
        }
        let child = cmd
            .arg("--config")
            .arg(&self.config)
            .arg("--bus")
            .arg("none")
            .arg("--socket")
            .arg(&self.socket)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start precogd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut c) = self.try_connect()
                && c.try_call(&json!({"op":"ping"}))
                    .is_some_and(|r| r["ok"] == json!(true))
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("precogd exited at start ({status}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("precogd did not answer within 20 s:\n{}", self.log());
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("precogd.log")).unwrap_or_default()
    }

    pub fn try_connect(&self) -> std::io::Result<Conn> {
        Conn::open(&self.socket)
    }

    pub fn connect(&self) -> Conn {
        self.try_connect().expect("connect to precogd")
    }

    /// One request on a new connection.
    pub fn call(&self, req: Value) -> Value {
        self.connect().call(&req)
    }

    /// Writes `text` as the daemon's configuration file and tells it to reload (SIGHUP).
    pub fn reload(&self, text: &str) {
        std::fs::write(&self.config, text).expect("write config");
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    }

    /// [`Daemon::reload`], then waits until the daemon says the reload was applied.
    pub fn reload_applied(&self, text: &str) {
        let applied = |d: &Daemon| d.log().matches("configuration reloaded").count();
        let before = applied(self);
        self.reload(text);
        assert!(
            wait_until(Duration::from_secs(10), || applied(self) > before),
            "the reload was not applied:\n{}",
            self.log()
        );
    }

    /// The worker processes precogd started (its direct children).
    pub fn workers(&self) -> Vec<u32> {
        children_of(self.pid())
    }

    /// SIGTERM and wait; returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        remove_cgroup_parent(&self.cgroup_parent);
    }
}

/// Removes what a daemon that did not stop cleanly (killed, or failed at start) left of its
/// test's own cgroup parent; empty directories only, deepest first.
fn remove_cgroup_parent(parent: &str) {
    fn remove_tree(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_tree(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hierarchies.flatten() {
        let dir = h.path().join(parent);
        let deadline = Instant::now() + Duration::from_secs(2);
        while dir.exists() && Instant::now() < deadline {
            remove_tree(&dir);
            if dir.exists() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub struct Conn {
    pub reader: BufReader<UnixStream>,
    pub writer: UnixStream,
}

impl Conn {
    pub fn open(path: &Path) -> std::io::Result<Conn> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    pub fn send(&mut self, req: &Value) {
        let mut line = serde_json::to_vec(req).expect("json");
        line.push(b'\n');
        self.writer.write_all(&line).expect("send");
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    pub fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read reply");
        assert!(n > 0, "precogd closed the connection");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {line}"))
    }

    /// Like `call`, but `None` when the connection fails. A reply the daemon sent before it
    /// closed the connection (a refusal at accept) is read even when the request could not be
    /// sent any more.
    pub fn try_call(&mut self, req: &Value) -> Option<Value> {
        let mut line = serde_json::to_vec(req).ok()?;
        line.push(b'\n');
        let _ = self.writer.write_all(&line);
        let mut reply = String::new();
        self.reader.read_line(&mut reply).ok().filter(|n| *n > 0)?;
        serde_json::from_str(&reply).ok()
    }

    pub fn call(&mut self, req: &Value) -> Value {
        self.send(req);
        self.recv()
    }

    /// True when the daemon has closed this connection.
    /// Whether the daemon closed the connection: end of stream, or a reset when the daemon
    /// closed with bytes of ours still unread (the kernel then resets the connection).
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        match self.reader.read(&mut buf) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    }
}
