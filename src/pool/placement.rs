//! Workers placed in cgroups: each worker in its own leaf under its pool's cgroup, where the
//! pool's limits apply. The leaf tells a worker's CPU time and whether the OOM killer took it, and
//! lets the worker and everything it forked be killed at once.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::cgroup::{JoinHandle, PoolCgroup, Usage, WorkerCgroup};

use super::Placement;

pub struct CgroupPlacement {
    pool: PoolCgroup,
    workers: Mutex<HashMap<u64, WorkerCgroup>>,
}

impl CgroupPlacement {
    pub fn new(pool: PoolCgroup) -> CgroupPlacement {
        CgroupPlacement {
            pool,
            workers: Mutex::new(HashMap::new()),
        }
    }

    pub fn pool(&self) -> &PoolCgroup {
        &self.pool
    }

    /// What each live worker's own cgroup has used (its memory peak, above all).
    pub fn worker_usage(&self) -> Vec<Usage> {
        let workers = self.workers.lock().expect("placement");
        workers.values().map(|cg| cg.usage()).collect()
    }
}

impl Placement for CgroupPlacement {
    fn prepare_worker(&self, worker: u64) -> std::io::Result<Option<JoinHandle>> {
        let cg = self.pool.worker(worker).map_err(std::io::Error::other)?;
        let join = cg.join_handle().map_err(std::io::Error::other)?;
        self.workers.lock().expect("placement").insert(worker, cg);
        Ok(Some(join))
    }

    fn worker_gone(&self, worker: u64) -> bool {
        let Some(cg) = self.workers.lock().expect("placement").remove(&worker) else {
            return false;
        };
        let oom = cg.oom_killed();
        if let Err(e) = cg.kill_all() {
            tracing::warn!(worker, error = %e, "cannot empty a worker's cgroup");
        }
        if let Err(e) = cg.remove() {
            tracing::warn!(worker, error = %e, "cannot remove a worker's cgroup");
        }
        oom
    }

    fn worker_cpu_ns(&self, worker: u64) -> Option<u64> {
        let workers = self.workers.lock().expect("placement");
        workers.get(&worker).and_then(|cg| cg.cpu_ns())
    }

    fn set_worker_background(&self, worker: u64, background: bool) -> std::io::Result<bool> {
        let workers = self.workers.lock().expect("placement");
        match workers.get(&worker) {
            Some(cg) => cg.set_background(background).map_err(std::io::Error::other),
            None => Ok(false),
        }
    }

    fn usage(&self) -> Option<Usage> {
        Some(self.pool.usage())
    }

    fn describe(&self) -> serde_json::Value {
        let l = self.pool.limits();
        serde_json::json!({
            "paths": self.pool.paths(),
            "limits": {
                "cpu_quota_pct": l.cpu_quota_pct,
                "cpu_period_us": l.cpu_period_us,
                "cpu_weight": l.cpu_weight,
                "cpus": l.cpus,
                "memory_max": l.memory_max,
                "memory_reserve": l.memory_reserve,
                "pids_max": l.pids_max,
            },
        })
    }
}
