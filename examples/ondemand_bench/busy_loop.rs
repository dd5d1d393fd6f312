//! The benchmark's control: a busy loop at the lowest priority of a scheduling class, or at the
//! lowest weight in a cgroup leaf where a guess would run, in place of speculation, to tell what
//! CPU time spent beside real requests costs them whoever spends it.

use std::path::PathBuf;

/// The scheduling class of the benchmark's busy loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopClass {
    /// `SCHED_IDLE`.
    Idle,
    /// `SCHED_BATCH` at nice 19.
    Nice,
    /// The normal class, in a cgroup leaf at the lowest weight (`cpu.shares` 2) two levels below
    /// the root of the cgroup-v1 `cpu` hierarchy, as a guessing worker is below precog's parent
    /// cgroup and its pool's.
    Leaf,
}

/// Where the `Leaf` loop's cgroups go: the parent, the pool-like cgroup in it, the leaf in that.
fn leaf_cgroups() -> [PathBuf; 3] {
    let top = PathBuf::from(format!(
        "/sys/fs/cgroup/cpu/precog-bench-{}-loop",
        std::process::id()
    ));
    let pool = top.join("pool");
    let leaf = pool.join("leaf");
    [top, pool, leaf]
}

/// Makes the `Leaf` loop's cgroups; an error when there is no cgroup-v1 `cpu` hierarchy.
pub fn prepare(class: LoopClass) -> anyhow::Result<()> {
    use anyhow::Context;
    if class != LoopClass::Leaf {
        return Ok(());
    }
    let [_, _, leaf] = leaf_cgroups();
    std::fs::create_dir_all(&leaf).with_context(|| {
        format!(
            "`leaf-loop` needs root and the cgroup-v1 cpu hierarchy: cannot make {}",
            leaf.display()
        )
    })?;
    std::fs::write(leaf.join("cpu.shares"), "2").context("cpu.shares of the loop's leaf")?;
    Ok(())
}

/// Removes the `Leaf` loop's cgroups (they are empty once its thread has ended).
fn clean_up() {
    for dir in leaf_cgroups().iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// A thread that spins at the lowest priority of its class until dropped.
pub struct BusyLoop {
    class: LoopClass,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BusyLoop {
    pub fn start(class: LoopClass) -> BusyLoop {
        use std::sync::atomic::Ordering;
        prepare(class).expect("the loop's cgroups");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let param = libc::sched_param { sched_priority: 0 };
            let policy = match class {
                LoopClass::Idle => libc::SCHED_IDLE,
                LoopClass::Nice => libc::SCHED_BATCH,
                LoopClass::Leaf => libc::SCHED_OTHER,
            };
            if class == LoopClass::Leaf {
                // In cgroup v1 a thread moves alone: only the loop goes to the leaf.
                let [_, _, leaf] = leaf_cgroups();
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() };
                std::fs::write(leaf.join("tasks"), tid.to_string()).expect("join the loop's leaf");
            }
            // SAFETY: pid 0 is the calling thread; `param` outlives the call.
            let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
            assert_eq!(
                rc,
                0,
                "sched_setscheduler: {}",
                std::io::Error::last_os_error()
            );
            if class == LoopClass::Nice {
                // SAFETY: who 0 is the calling thread.
                let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
                assert_eq!(rc, 0, "nice 19: {}", std::io::Error::last_os_error());
            }
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        });
        BusyLoop {
            class,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for BusyLoop {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.class == LoopClass::Leaf {
            clean_up();
        }
    }
}
