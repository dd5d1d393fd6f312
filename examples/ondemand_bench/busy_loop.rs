//! The benchmark's control: a busy loop at the lowest priority of a scheduling class, in place
//! of speculation, to tell what CPU time spent beside real requests costs them whoever spends it.

/// The scheduling class of the benchmark's busy loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopClass {
    /// `SCHED_IDLE`.
    Idle,
    /// `SCHED_BATCH` at nice 19.
    Nice,
}

/// A thread that spins at the lowest priority of its class until dropped.
pub struct BusyLoop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BusyLoop {
    pub fn start(class: LoopClass) -> BusyLoop {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let param = libc::sched_param { sched_priority: 0 };
            let policy = match class {
                LoopClass::Idle => libc::SCHED_IDLE,
                LoopClass::Nice => libc::SCHED_BATCH,
            };
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
    }
}
