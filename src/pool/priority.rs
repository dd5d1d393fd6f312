//! CPU priority of a worker by the kind of job it holds: a worker running a speculative job is put
//! in the kernel's idle class, so the pool's workers running real jobs on the same CPUs preempt it
//! at once and it only uses CPU they leave; it is put back in the normal class before it runs an
//! on-demand job, or as soon as a real request joins it. (Above the pool's cgroup the pool still
//! competes with precogd and the app server at its full weight.)
//!
//! Switching the pool's cgroup to the idle class too, while every busy worker below runs a
//! guess, was built and measured with `ondemand_bench` (elastic pool, 48 rounds). The pool alone
//! made no difference that shows through the noise (on/off 1.09, against 1.11–1.14 without it):
//! precogd and the app sit outside precog's cgroup, so they meet the guess at the level of
//! precog's parent cgroup, which stays normal. The pool and its parent together made p99 three
//! times worse (3.28), most likely because a group that idled comes back with the virtual
//! runtime it ran up at idle weight, so the real job that ends the idle spell waits. Clearing
//! `cpu.idle` also resets the cgroup's `cpu.shares` / `cpu.weight` to the default, which would
//! undo the allocator's weights. Only the worker's own leaf switches. A slice of its own for a
//! guessing worker's threads (`sched_setattr`'s `sched_runtime`, Linux 6.12), tried at 0.1 ms
//! and at 100 ms, did not help either (fixed pool, 8 rounds: 1.32 and 1.27, against 1.06 over 16
//! rounds without). A short slice for precogd's own thread (0.1 ms), so that it preempts a
//! guess at once on Linux's EEVDF scheduler, did not change the ratio either (elastic, 48
//! rounds: 1.21 against 1.24 the same hour; on alternating runs the p99 of both modes moved
//! within their noise). Stopping every running guess (`SIGSTOP` to its process group) while a
//! real job ran on a host of two CPUs, and continuing it after, made the median better but p99
//! more than three times worse (elastic, two runs of 16 rounds: 3.75 and 3.43, against 1.27 and
//! 0.97 for runs without it taking turns with them), most of the loss outside the worker: the
//! held guesses ran all at once when the real job ended, and kept their workers busy longer.
//! Running guesses on all of the pool's CPUs but one, so that one CPU always falls idle and
//! pulls waiting real work over at once, made no difference either (elastic, 48 rounds each,
//! one after the other: 1.35 against 1.36 without).
//!
//! `ondemand_bench … idle-loop` measures the floor: a busy loop in the idle class at the top of
//! the hierarchy, beside precogd and its clients, in place of speculation. On the 2-vCPU VM this
//! was measured on it made on-demand p99 3.9 times worse (2.7 with the loop held to one CPU),
//! where precog's guesses cost 1.2 to 1.4: with the scheduler's own class for background work,
//! CPU time spent beside real work costs it more than precog's guesses do.
//!
//! Every worker has a cgroup leaf of its own, and a task's own `SCHED_IDLE` only counts against
//! tasks of the same cgroup; so the class is set on the leaf (`cpu.idle`), which needs nothing but
//! the cgroup precogd already owns. Without cgroups (or on kernels before 5.15) the worker's
//! threads are put in `SCHED_IDLE` instead. That needs `CAP_SYS_NICE` when the worker runs as
//! another user, and leaving `SCHED_IDLE` needs it in every case (or a raised `RLIMIT_NICE`). A
//! worker that could be lowered but not restored would serve real requests at idle priority, so
//! without the capability precog leaves priorities alone: speculation then competes for CPU like
//! on-demand work, and precogd says so once.

use std::sync::OnceLock;

use super::{Placement, PoolError};

/// The scheduling class a worker should be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CpuClass {
    Normal,
    Idle,
}

/// `CAP_SYS_NICE`'s bit in the capability sets of `/proc/<pid>/status`.
const CAP_SYS_NICE: u32 = 23;

/// Whether a `CapEff:` line of `/proc/self/status` grants `CAP_SYS_NICE`.
fn grants_sys_nice(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_NICE) != 0)
}

/// Whether precogd may move its workers between scheduling classes; decided once.
pub(super) fn may_deprioritize() -> bool {
    static MAY: OnceLock<bool> = OnceLock::new();
    *MAY.get_or_init(|| {
        let may = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| grants_sys_nice(&s));
        if !may {
            tracing::warn!(
                "speculative jobs run at normal CPU priority: precogd lacks CAP_SYS_NICE; \
                 grant it to keep guesses from slowing real requests"
            );
        }
        may
    })
}

/// Puts worker `worker` (process `pid`) in `class`: its cgroup leaf where the kernel offers that,
/// else its threads. `Ok(false)` when neither is possible.
pub(super) fn apply_cpu_class(
    placement: Option<&dyn Placement>,
    worker: u64,
    pid: u32,
    class: CpuClass,
) -> Result<bool, PoolError> {
    if let Some(p) = placement {
        match p.set_worker_idle(worker, class == CpuClass::Idle) {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(source) => return Err(PoolError::CpuClass { pid, source }),
        }
    }
    if !may_deprioritize() {
        return Ok(false);
    }
    set_cpu_class(pid, class).map(|()| true)
}

/// Puts every thread of the worker process in `class`. Threads that exit meanwhile are skipped.
pub(super) fn set_cpu_class(pid: u32, class: CpuClass) -> Result<(), PoolError> {
    let policy = match class {
        CpuClass::Normal => libc::SCHED_OTHER,
        CpuClass::Idle => libc::SCHED_IDLE,
    };
    let tasks = format!("/proc/{pid}/task");
    let threads: Vec<i32> = match std::fs::read_dir(&tasks) {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        // The worker is gone; whoever waits on it will notice.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(PoolError::CpuClass { pid, source: e });
        }
    };
    let param = libc::sched_param { sched_priority: 0 };
    for tid in threads {
        // SAFETY: `param` is a valid sched_param that outlives the call; a stale tid only makes
        // the call fail with ESRCH.
        let rc = unsafe { libc::sched_setscheduler(tid, policy, &param) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(PoolError::CpuClass { pid, source: e });
            }
        }
    }
    Ok(())
}

/// The scheduling class a thread is in now.
#[cfg(test)]
fn current_class(tid: i32) -> Option<CpuClass> {
    // SAFETY: sched_getscheduler only reads the policy of the given thread.
    match unsafe { libc::sched_getscheduler(tid) } {
        libc::SCHED_IDLE => Some(CpuClass::Idle),
        libc::SCHED_OTHER => Some(CpuClass::Normal),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_nice_is_read_from_the_effective_set() {
        let root = "Name:\tprecogd\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert!(grants_sys_nice(root));
        // CAP_SETUID, CAP_SETGID and CAP_KILL only, as the shipped unit grants.
        let unit = "CapPrm:\t00000000000000e0\nCapEff:\t00000000000000e0\n";
        assert!(!grants_sys_nice(unit));
        assert!(!grants_sys_nice("CapEff:\tnot-hex\n"));
        assert!(!grants_sys_nice(""));
    }

    #[test]
    fn a_worker_goes_idle_and_comes_back() {
        if !may_deprioritize() {
            println!("SKIPPED: this test process lacks CAP_SYS_NICE");
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("start sleep");
        let pid = child.id();
        set_cpu_class(pid, CpuClass::Idle).expect("lower");
        assert_eq!(current_class(pid as i32), Some(CpuClass::Idle));
        set_cpu_class(pid, CpuClass::Normal).expect("restore");
        assert_eq!(current_class(pid as i32), Some(CpuClass::Normal));
        let _ = child.kill();
        let _ = child.wait();
        // A worker that is gone is not an error.
        set_cpu_class(pid, CpuClass::Idle).expect("gone worker");
    }
}
