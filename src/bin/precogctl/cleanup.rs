//! What `demo`, `replay` and `bench` start must not outlive an interrupted precogctl. Their private
//! daemons and temporary directories are tracked here. On SIGINT, SIGTERM or SIGHUP a waiting
//! thread stops each daemon with SIGTERM (so it removes its own cgroups), removes the
//! directories, and exits with 128 + the signal's number, as the shell would report it.
//!
//! The signals are blocked in every thread of precogctl and taken by `sigwait`, so nothing runs
//! in a signal handler. Children start with an empty signal mask, so the daemons still stop on
//! SIGTERM. A daemon is started and tracked under the same lock that the signal thread takes to
//! mark precogctl as stopping, so once it is stopping no daemon starts: the work in progress
//! goes on meanwhile (into the next placement of `bench`, say) and would otherwise start one
//! that nothing stops.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

#[derive(Default)]
struct Tracked {
    daemons: Vec<i32>,
    dirs: Vec<PathBuf>,
}

/// Set once a stopping signal came: the signal thread owns the exit from then on.
static STOPPING: AtomicBool = AtomicBool::new(false);

static TRACKED: Mutex<Tracked> = Mutex::new(Tracked {
    daemons: Vec::new(),
    dirs: Vec::new(),
});

fn tracked() -> std::sync::MutexGuard<'static, Tracked> {
    TRACKED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Blocks the stopping signals and starts the thread that waits for them. Call before any other
/// thread starts, so that every thread inherits the mask.
pub fn install() -> anyhow::Result<()> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(signal) = set.wait() {
                {
                    let _t = tracked();
                    STOPPING.store(true, Ordering::SeqCst);
                }
                clean_up();
                std::process::exit(128 + signal as i32);
            }
        })?;
    Ok(())
}

/// Once interrupted, the work in progress fails as its daemons stop; the signal thread then
/// exits with the signal's status, and the caller waits for that instead of reporting the
/// failure.
pub fn wait_if_stopping() {
    while STOPPING.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Starts a private daemon that is stopped if precogctl is interrupted; refuses once
/// precogctl is stopping.
pub fn spawn_tracked(cmd: &mut std::process::Command) -> anyhow::Result<std::process::Child> {
    let mut t = tracked();
    anyhow::ensure!(
        !STOPPING.load(Ordering::SeqCst),
        "precogctl is stopping: not starting {:?}",
        cmd.get_program()
    );
    let child = unblocked_in_place(cmd).spawn()?;
    t.daemons.push(child.id() as i32);
    Ok(child)
}

/// The daemon was stopped and reaped.
pub fn untrack_daemon(pid: u32) {
    tracked().daemons.retain(|p| *p != pid as i32);
}

/// A temporary directory to remove if precogctl is interrupted; untracked when the guard drops
/// (the owner removes it then).
pub fn track_dir(path: &Path) -> DirGuard {
    let mut t = tracked();
    if STOPPING.load(Ordering::SeqCst) {
        // Made after the signal thread took its list: nothing else would remove it.
        let _ = std::fs::remove_dir_all(path);
    } else {
        t.dirs.push(path.to_path_buf());
    }
    DirGuard(path.to_path_buf())
}

pub struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        tracked().dirs.retain(|d| *d != self.0);
    }
}

fn clean_up() {
    let (daemons, dirs) = {
        let t = tracked();
        (t.daemons.clone(), t.dirs.clone())
    };
    for &pid in &daemons {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for &pid in &daemons {
        let pid = Pid::from_raw(pid);
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(WaitStatus::StillAlive) => {
                    let _ = kill(pid, Signal::SIGKILL);
                    let _ = waitpid(pid, None);
                    break;
                }
                // Exited, or already reaped by its owner.
                _ => break,
            }
        }
    }
    for dir in &dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A command whose process starts with no signal blocked: children inherit precogctl's mask, and
/// a daemon that cannot receive SIGTERM cannot be stopped cleanly.
pub fn unblocked(mut cmd: std::process::Command) -> std::process::Command {
    unblocked_in_place(&mut cmd);
    cmd
}

fn unblocked_in_place(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls pthread_sigmask, which is async-signal-safe, as code
    // between fork and exec must be.
    unsafe { cmd.pre_exec(|| SigSet::all().thread_unblock().map_err(std::io::Error::from)) }
}
