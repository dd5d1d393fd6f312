//! Starting one worker process: a clean environment, no inherited descriptors, its cgroup, its
//! CPUs, its user, no new privileges, and a parent-death signal — all set between fork and exec,
//! so the worker's first instruction already runs confined.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

use super::PoolError;
use super::forker::{self, ForkJob};
use crate::cgroup::JoinHandle;

/// Who the worker runs as, resolved once in the parent (no lookups are allowed after fork).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerIdentity {
    pub uid: u32,
    pub gid: u32,
}

/// Resolves a user name to its uid and primary gid.
pub fn lookup_user(name: &str) -> Result<WorkerIdentity, PoolError> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(WorkerIdentity {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        }),
        _ => Err(PoolError::UnknownUser(name.to_string())),
    }
}

/// Finds the worker executable: a path must be absolute and name an executable file (workers
/// start in `/`, so a relative one would name another file there); a bare name is looked up
/// beside the running binary first (so a build tree or `/usr/lib/precog` works without `PATH`),
/// then in precogd's own `PATH` (not the workers' clean one), taking the first executable file.
/// Checked at start, at reload and by `--check-config`, so a command that cannot run is refused
/// there rather than failing every start.
pub fn resolve_command(program: &str) -> Result<PathBuf, PoolError> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        let why = if path.is_absolute() {
            not_executable(&path)
        } else {
            Some("is a relative path, and workers start in `/`: give its full path".into())
        };
        return match why {
            None => Ok(path),
            Some(why) => Err(PoolError::NotExecutable {
                path: program.to_string(),
                why,
            }),
        };
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(program)));
    let lib = Path::new("/usr/lib/precog").join(program);
    let path_dirs = std::env::var_os("PATH").unwrap_or_default();
    beside
        .into_iter()
        .chain(std::iter::once(lib))
        .chain(std::env::split_paths(&path_dirs).map(|d| d.join(program)))
        .find(|p| not_executable(p).is_none())
        .ok_or_else(|| PoolError::NoExecutable(program.to_string()))
}

/// Why `path` cannot be run as a worker, if it cannot: it does not exist, is not a file, or no
/// one may execute it. Whether the worker's user may is left to the start: only the mode bits
/// are checked here, as the daemon's user may differ from the workers'.
fn not_executable(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("does not exist".into()),
        Err(e) => Some(format!("cannot be looked at: {e}")),
        Ok(m) if !m.is_file() => Some("is not a file".into()),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Some(
            "is not executable (chmod +x it, or put its interpreter first in the command)".into(),
        ),
        Ok(_) => None,
    }
}

/// The CPUs precogd may run on, and so pin its workers to: its own affinity, or the CPUs
/// online where the affinity cannot be read; `None` when neither can be read.
pub fn usable_cpus() -> Option<Vec<usize>> {
    use nix::sched::{CpuSet, sched_getaffinity};
    if let Ok(set) = sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        let cpus: Vec<usize> = (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect();
        if !cpus.is_empty() {
            return Some(cpus);
        }
    }
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|t| t.trim().parse::<crate::config::CpuList>().ok())
        .map(|l| l.0)
        .filter(|cpus| !cpus.is_empty())
}

/// Everything the child needs between fork and exec, prepared in the parent.
pub struct SpawnPlan {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cpus: Option<Vec<usize>>,
    pub identity: Option<WorkerIdentity>,
    /// Moves the child into its cgroup; consumed by the spawn.
    pub cgroup_join: Option<JoinHandle>,
}

/// Starts the worker with piped stdin, stdout and stderr, on the thread that forks workers
/// (see [`super::forker`]), in `pool`'s turn. A start still queued when `give_up` says so, or
/// when nobody awaits it any more, is dropped with an error.
pub async fn spawn(
    pool: &str,
    plan: SpawnPlan,
    give_up: impl Fn() -> bool + Send + 'static,
) -> Result<Child, PoolError> {
    let program = plan.program.clone();
    let failed = |what: &str| PoolError::Spawn {
        program: program.clone(),
        source: std::io::Error::other(what.to_string()),
    };
    let runtime = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: ForkJob = Box::new(move || {
        if tx.is_closed() || give_up() {
            return;
        }
        // The child's pipes register with the daemon's runtime.
        let _entered = runtime.enter();
        let _ = tx.send(spawn_now(plan));
    });
    if !forker::submit(pool, job) {
        return Err(failed("the thread that starts workers did not start"));
    }
    rx.await.map_err(|_| failed("the start was given up"))?
}

fn spawn_now(plan: SpawnPlan) -> Result<Child, PoolError> {
    let mut cmd = Command::new(&plan.program);
    cmd.args(&plan.args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LANG", "C.UTF-8")
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);

    // SAFETY: a zeroed cpu_set_t is the empty set, the documented starting point for CPU_SET.
    let mut cpu_set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let pin = match plan.cpus.as_deref() {
        Some(cpus) if !cpus.is_empty() => {
            for &c in cpus {
                // SAFETY: `c` is below 4096 (checked when the CPU list was parsed) and
                // cpu_set_t holds 1024 bits; CPU_SET ignores numbers past its size.
                unsafe { libc::CPU_SET(c, &mut cpu_set) };
            }
            true
        }
        _ => false,
    };
    let join = plan.cgroup_join;
    let identity = plan.identity;
    // The child checks its parent against this, not against 1: precogd may be pid 1 itself (in
    // a container), and a subreaper may adopt the orphan.
    let daemon = std::process::id() as libc::pid_t;

    // SAFETY: the closure runs in the child between fork and exec and only makes raw,
    // async-signal-safe system calls on values prepared above; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // precogd ignores SIGXFSZ (a file-size limit fails its writes instead); an ignored
            // signal stays ignored across exec, so the worker gets the default action back.
            if libc::signal(libc::SIGXFSZ, libc::SIG_DFL) == libc::SIG_ERR {
                return Err(std::io::Error::last_os_error());
            }
            // Join the cgroup first, so everything the worker does is charged there.
            if let Some(join) = &join {
                join.join_raw()?;
            }
            if pin && libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &cpu_set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(id) = identity
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(id.gid) != 0
                    || libc::setuid(id.uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            // After the user change, which would clear it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != daemon {
                // The daemon died before the signal was armed.
                libc::_exit(1);
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Mark every descriptor above stdio close-on-exec: sockets passed by systemd, the
            // cgroup files above, anything a library opened without O_CLOEXEC.
            const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
            if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }

    cmd.spawn().map_err(|e| PoolError::Spawn {
        source: explain_not_found(&plan.program, e),
        program: plan.program,
    })
}

/// A start that fails with "No such file or directory" although the file is there failed on
/// its interpreter: the one its `#!` line names (or a binary's loader). Said so, as the plain
/// error points at the file that does exist.
fn explain_not_found(program: &Path, e: std::io::Error) -> std::io::Error {
    if e.kind() != std::io::ErrorKind::NotFound || !program.is_file() {
        return e;
    }
    std::io::Error::new(
        e.kind(),
        format!("{e} (or the interpreter named on its `#!` line)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_interpreter_is_named_as_a_possible_cause_when_the_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("badinterp.py");
        std::fs::write(&script, "#!/nonexistent/python9\n").unwrap();
        let not_found = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let said = explain_not_found(&script, not_found()).to_string();
        assert!(
            said.contains("interpreter named on its `#!` line"),
            "{said}"
        );
        // A file that is really missing, or another error, is left as it is.
        let gone = dir.path().join("gone.py");
        assert!(
            !explain_not_found(&gone, not_found())
                .to_string()
                .contains("#!")
        );
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(
            !explain_not_found(&script, denied)
                .to_string()
                .contains("#!")
        );
    }
}
