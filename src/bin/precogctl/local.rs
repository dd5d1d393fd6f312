//! A precogd started by precogctl itself on a temporary directory, for `demo`, `bench` and
//! `replay --mode all`: found beside precogctl, configured with the built-in defaults plus what
//! the caller adds, and stopped (with its workers and cgroups) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::client::Client;

pub struct LocalDaemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Child,
    _tracked: crate::cleanup::DirGuard,
}

/// A binary installed or built beside precogctl.
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find precogctl's own path")?;
    let dir = exe.parent().context("precogctl has no directory")?;
    for candidate in [dir.join(name), PathBuf::from("/usr/sbin").join(name)] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "cannot find {name} beside {}; build it with `cargo build`",
        exe.display()
    )
}

/// Local daemons this process has started.
static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl LocalDaemon {
    /// Starts precogd with `extra` TOML laid over the built-in configuration.
    pub fn start(daemon_keys: &str, extra: &str) -> anyhow::Result<LocalDaemon> {
        let dir = tempfile::Builder::new().prefix("precog-").tempdir()?;
        let tracked = crate::cleanup::track_dir(dir.path());
        let socket = dir.path().join("precogd.sock");
        let config = dir.path().join("precogd.toml");
        let text = format!(
            "[daemon]\ncache_dir = \"{}\"\nstate_dir = \"{}\"\n\
             cgroup_parent = \"precog-local-{}-{}\"\n\
             socket_group = \"root\"\nallowed_groups = []\n{daemon_keys}\n{extra}\n",
            dir.path().join("cache").display(),
            dir.path().join("state").display(),
            std::process::id(),
            // Each daemon its own cgroup parent, even while an earlier one is still stopping.
            STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        std::fs::write(&config, text)?;
        let log = std::fs::File::create(dir.path().join("precogd.log"))?;
        let child = crate::cleanup::spawn_tracked(
            Command::new(sibling("precogd")?)
                .arg("--config")
                .arg(&config)
                .arg("--bus")
                .arg("none")
                .arg("--socket")
                .arg(&socket)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        )
        .context("cannot start precogd")?;
        let mut d = LocalDaemon {
            dir,
            socket,
            child,
            _tracked: tracked,
        };
        d.wait_ready()?;
        Ok(d)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(mut c) = Client::connect(&self.socket)
                && c.call_ok(&json!({"op": "ping"})).is_ok()
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("precogd exited at start ({status}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("precogd did not answer within 30 s:\n{}", self.log())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("precogd.log")).unwrap_or_default()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for LocalDaemon {
    /// SIGTERM, so the daemon stops its workers and removes its cgroups; SIGKILL after 15 s.
    fn drop(&mut self) {
        use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
        let pid = self.child.id();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        // Waited for without reaping: until it is untracked, its pid cannot be reused.
        let exited = |flags: WaitPidFlag| {
            !matches!(
                waitid(Id::Pid(nix::unistd::Pid::from_raw(pid as i32)), flags),
                Ok(WaitStatus::StillAlive)
            )
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        let nohang = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
        while !exited(nohang) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !exited(nohang) {
            let _ = self.child.kill();
            exited(WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT);
        }
        crate::cleanup::untrack_daemon(pid);
        let _ = self.child.wait();
    }
}
