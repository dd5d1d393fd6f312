//! CPU priority of a worker by the kind of job it holds: a worker running a speculative job gets
//! the lowest CPU weight the kernel has, so the pool's workers running real jobs on the same CPUs
//! take nearly all of it and the guess runs on what they leave; it gets the normal weight back
//! before it runs an on-demand job, or as soon as a real request joins it. (Above the pool's
//! cgroup the pool still competes with precogd and the app server at its full weight.)
//!
//! A low weight, not the kernel's idle class. A CPU whose only runnable tasks are in the idle
//! class (`SCHED_IDLE`, or a cgroup with `cpu.idle`) counts as idle when the scheduler places a
//! waking task, the same as one that is really idle; so precogd, the app and real jobs woken
//! while a guess runs were put on the guess's CPU and had to interrupt it, where a CPU with
//! nothing to run was free. On a VM that interruption is costly. `ondemand_bench … idle-loop`
//! and `… nice-loop` measure it without speculation: a busy loop beside precogd and its clients
//! made on-demand p99 4.27 times worse in the idle class (4.00–4.55, 24 rounds), and 0.97 times
//! (0.91–1.04, 24 rounds, the same hour) at nice 19 in the batch class, which does not count as
//! idle. With guesses in the idle class, `ondemand_bench 3000 3 24` gave on/off p99 ratios of
//! 1.29 and 1.33; at the lowest weight, in runs taking turns with those, 1.21 and 1.25, and 0.99
//! to 1.13 in six more runs.
//!
//! Tried at the lowest weight and dropped, each over two 24-round runs taking turns with runs
//! without it: precog's whole subtree at the lowest weight while its workers run only guesses, so
//! that they yield to precogd and the app above the pools too (1.11 and 1.22, against 1.05 and
//! 1.08); the guessing worker's threads in the batch class as well (1.14 and 1.13, against 0.99
//! and 1.13); and a 100 ms scheduling slice for them, so that a waking task with the default
//! slice preempts them at once (1.35 and 1.09, against 1.12 and 1.10).
//!
//! What is left is what any CPU-bound work beside real requests costs on the VM this was
//! measured on: `ondemand_bench … leaf-loop`, a busy loop in a leaf at the lowest weight as a
//! guess runs, gave 1.06 to 1.13 over four 24-round runs, and the nice-19 loop outside any
//! cgroup 0.98 to 1.12 over three; speculation gave 1.18 in the same hour. Holding the loop on
//! one CPU, or lowering its parent cgroups too, made no difference that showed.
//!
//! Tried before, in the idle class, and dropped: the pool's cgroup in the idle class too (no
//! difference alone; three times worse with its parent as well, and clearing `cpu.idle` resets
//! the cgroup's weight); a scheduling slice of its own for a guessing worker or for precogd
//! (Linux 6.12's `sched_runtime`; no difference); stopping every running guess with `SIGSTOP`
//! while a real job ran (p99 3.4 to 3.75 times worse: the held guesses all ran when it ended);
//! and guesses kept off one CPU so it would fall idle (no difference).
//!
//! Every worker has a cgroup leaf of its own, and a task's own nice value only counts against
//! tasks of the same cgroup; so the weight is set on the leaf (`cpu.shares` 2 on v1, `cpu.weight`
//! 1 on v2), which needs nothing but the cgroup precogd already owns. Without cgroups the
//! worker's threads are put in the batch class at nice 19 instead. That needs `CAP_SYS_NICE` when
//! the worker runs as another user, and going back to nice 0 needs it in every case (or a raised
//! `RLIMIT_NICE`). A worker that could be lowered but not restored would serve real requests at
//! the lowest priority, so without the capability precog leaves priorities alone: speculation
//! then competes for CPU like on-demand work, and precogd says so once.

use std::sync::OnceLock;

use super::{Placement, PoolError};

/// The scheduling class a worker should be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CpuClass {
    Normal,
    /// The lowest weight, for a guess.
    Background,
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
        match p.set_worker_background(worker, class == CpuClass::Background) {
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

/// Nice value of a thread running a guess: the lowest priority, weight 15 against 1,024.
const BACKGROUND_NICE: i32 = 19;

/// Puts every thread of the worker process in `class`: the batch scheduling class at nice 19
/// for a guess, the normal class at nice 0 otherwise. Threads that exit meanwhile are skipped.
pub(super) fn set_cpu_class(pid: u32, class: CpuClass) -> Result<(), PoolError> {
    let (policy, nice) = match class {
        CpuClass::Normal => (libc::SCHED_OTHER, 0),
        CpuClass::Background => (libc::SCHED_BATCH, BACKGROUND_NICE),
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
        let mut rc = unsafe { libc::sched_setscheduler(tid, policy, &param) };
        if rc == 0 {
            // With PRIO_PROCESS, Linux sets the nice value of the one thread `tid` names.
            // SAFETY: plain integer arguments.
            rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
        }
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(PoolError::CpuClass { pid, source: e });
            }
        }
    }
    Ok(())
}

/// The class a thread is in now, by its scheduling policy and nice value.
#[cfg(test)]
fn current_class(tid: i32) -> Option<CpuClass> {
    // SAFETY: sched_getscheduler only reads the policy of the given thread.
    let policy = unsafe { libc::sched_getscheduler(tid) };
    // SAFETY: plain integer arguments; -1 is also a valid nice value, but not one set here.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
    match (policy, nice) {
        (libc::SCHED_BATCH, BACKGROUND_NICE) => Some(CpuClass::Background),
        (libc::SCHED_OTHER, 0) => Some(CpuClass::Normal),
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
    fn a_worker_goes_to_the_background_and_comes_back() {
        if !may_deprioritize() {
            println!("SKIPPED: this test process lacks CAP_SYS_NICE");
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("start sleep");
        let pid = child.id();
        set_cpu_class(pid, CpuClass::Background).expect("lower");
        assert_eq!(current_class(pid as i32), Some(CpuClass::Background));
        set_cpu_class(pid, CpuClass::Normal).expect("restore");
        assert_eq!(current_class(pid as i32), Some(CpuClass::Normal));
        let _ = child.kill();
        let _ = child.wait();
        // A worker that is gone is not an error.
        set_cpu_class(pid, CpuClass::Background).expect("gone worker");
    }
}
