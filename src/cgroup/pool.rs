//! A pool's cgroup and its workers' leaves, as the pool code holds them.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::node::{self, CpuCounter, Node};
use super::{CgroupError, Controller, JoinHandle, PoolLimits, Usage, Version};

/// A pool's cgroup: the limits sit here; workers run in leaves below it.
#[derive(Debug)]
pub struct PoolCgroup {
    node: Node,
    name: String,
    in_use: Arc<Mutex<HashMap<String, usize>>>,
    /// [`PoolCgroup::release`] was called.
    released: AtomicBool,
}

impl PoolCgroup {
    /// The cgroup of pool `name`, made and counted in `in_use` by the caller.
    pub(super) fn new(
        node: Node,
        name: &str,
        in_use: Arc<Mutex<HashMap<String, usize>>>,
    ) -> PoolCgroup {
        PoolCgroup {
            node,
            name: name.to_string(),
            in_use,
            released: AtomicBool::new(false),
        }
    }
}

impl PoolCgroup {
    /// Puts new limits in force (the tuner moves the quota this way); each value is read back.
    /// On an error the values written before the refused one stay in force: [`Self::limits`]
    /// says which.
    pub fn set_limits(&self, l: &PoolLimits) -> Result<(), CgroupError> {
        self.node.set_limits(l)
    }

    /// The limits in force now, read back from the kernel. A value at the kernel's default
    /// (no quota, weight 100, no memory or task limit) reads as `None`; `cpus` always reads as
    /// the CPUs in force.
    pub fn limits(&self) -> PoolLimits {
        self.node.limits()
    }

    /// Makes the leaf for worker `id`; the worker joins it through its [`JoinHandle`].
    pub fn worker(&self, id: u64) -> Result<WorkerCgroup, CgroupError> {
        let node = self.node.child(&format!("w{id}"));
        node.create()?;
        for d in node.dirs.iter().filter(|d| d.version == Version::V2) {
            // A worker OOM-killed dies whole, with whatever it forked.
            let group = d.dir.join("memory.oom.group");
            if d.controllers.contains(&Controller::Memory) && group.exists() {
                node::write_file(&group, "1")?;
            }
        }
        Ok(WorkerCgroup {
            id,
            node,
            cpu: std::sync::OnceLock::new(),
            weight: std::sync::OnceLock::new(),
        })
    }

    /// A handle that moves a process straight into the pool's cgroup (without a worker leaf).
    pub fn join_handle(&self) -> Result<JoinHandle, CgroupError> {
        JoinHandle::open(&self.node)
    }

    /// Usage of the whole pool, all workers included.
    pub fn usage(&self) -> Usage {
        self.node.usage()
    }

    /// The pool's directory in each hierarchy.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.node.paths()
    }

    /// Process ids in the pool and its workers' leaves.
    pub fn tasks(&self) -> Vec<i32> {
        self.node.tasks().into_iter().collect()
    }

    /// Kills every task in the pool, including those its workers forked.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        self.node.kill_all()
    }

    /// Kills what runs in the pool and removes its cgroups, workers' leaves included.
    pub fn remove(&self) -> Result<(), CgroupError> {
        self.node.remove()
    }

    /// The pool is done with its cgroup: kills what is left in it and removes it, unless
    /// another pool of the same name uses the same directory, whose last release removes it.
    /// Only the first call counts. It waits for the kernel (and a pool of the same name being
    /// made waits for it), so call it off the async runtime.
    pub fn release(&self) -> Result<(), CgroupError> {
        if self.released.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let mut in_use = self.in_use.lock().expect("pool cgroups");
        let users = in_use.get(&self.name).copied().unwrap_or(0);
        if users > 1 {
            in_use.insert(self.name.clone(), users - 1);
            return Ok(());
        }
        in_use.remove(&self.name);
        self.node.remove()
    }
}

/// The lowest CPU weight a cgroup can have: v1 `cpu.shares` and v2 `cpu.weight`.
const BACKGROUND_SHARES: u64 = 2;
const BACKGROUND_WEIGHT: u64 = 1;

/// One worker's leaf under its pool.
#[derive(Debug)]
pub struct WorkerCgroup {
    id: u64,
    node: Node,
    /// Opened on first use (the kernel makes the file with the directory).
    cpu: std::sync::OnceLock<CpuCounter>,
    /// The leaf's CPU weight file (`cpu.shares` on v1, `cpu.weight` on v2) and its version,
    /// opened on first use; `None` where no hierarchy carries the cpu controller.
    weight: std::sync::OnceLock<Option<(PathBuf, std::fs::File, Version)>>,
}

impl WorkerCgroup {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// A handle for the worker's `pre_exec` that moves it into this leaf.
    pub fn join_handle(&self) -> Result<JoinHandle, CgroupError> {
        JoinHandle::open(&self.node)
    }

    /// What this worker and everything it forked used.
    pub fn usage(&self) -> Usage {
        self.node.usage()
    }

    /// CPU time of the worker and what it forked, read cheaply enough to do after every job.
    pub fn cpu_ns(&self) -> Option<u64> {
        if self.cpu.get().is_none()
            && let Some(counter) = self.node.cpu_counter()
        {
            let _ = self.cpu.set(counter);
        }
        self.cpu.get().and_then(CpuCounter::read_ns)
    }

    /// Gives the worker's leaf the lowest CPU weight the kernel takes (`cpu.shares` 2 on v1,
    /// `cpu.weight` 1 on v2), or back to the default. Only a cgroup-wide setting works here: a
    /// task's own nice value counts only against tasks of the same cgroup, and every worker has a
    /// leaf of its own. `Ok(false)` when no hierarchy carries the cpu controller.
    pub fn set_background(&self, background: bool) -> Result<bool, CgroupError> {
        use std::os::unix::fs::FileExt;
        // Opened once: a worker switches whenever guesses and real jobs alternate.
        let file = self.weight.get_or_init(|| {
            let dir = self.node.dir_for(Controller::Cpu)?;
            let name = match dir.version {
                Version::V1 => "cpu.shares",
                Version::V2 => "cpu.weight",
            };
            let path = dir.dir.join(name);
            let file = OpenOptions::new().write(true).open(&path).ok()?;
            Some((path, file, dir.version))
        });
        let Some((path, file, version)) = file else {
            return Ok(false);
        };
        let value = match (version, background) {
            (Version::V1, true) => BACKGROUND_SHARES,
            (Version::V1, false) => super::limits::SHARES_DEFAULT,
            (Version::V2, true) => BACKGROUND_WEIGHT,
            (Version::V2, false) => super::limits::WEIGHT_DEFAULT,
        }
        .to_string();
        file.write_at(value.as_bytes(), 0)
            .map_err(|source| CgroupError::Write {
                path: path.clone(),
                value,
                source,
            })?;
        Ok(true)
    }

    /// Whether the kernel's OOM killer killed a task of this worker: a worker that died with
    /// this set failed for lack of memory (`worker_failed`, reason `oom`), not by crashing.
    pub fn oom_killed(&self) -> bool {
        self.node.usage().oom_kills > 0
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        self.node.paths()
    }

    pub fn tasks(&self) -> Vec<i32> {
        self.node.tasks().into_iter().collect()
    }

    /// Kills the worker and everything it forked.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        self.node.kill_all()
    }

    /// Kills what is left of the worker and removes its leaf.
    pub fn remove(self) -> Result<(), CgroupError> {
        self.node.remove()
    }
}
