//! Worker pools: warm worker processes that run jobs, one at a time each.
//!
//! A [`Pool`] owns the workers of one configured pool. Jobs wait in two queues, on-demand before
//! speculative, so speculation never delays a real request; when a real request finds every worker
//! busy and the pool at its size limit, a worker running a speculative job is taken back.
//!
//! Each worker is a tokio task that owns one child process and speaks the worker protocol with it
//! (see `worker.rs`). A small supervisor task per pool keeps the number of workers at the target
//! (`warm_min`, or what the allocator asks for), adds workers while jobs queue up, and backs off
//! exponentially when workers die at start, so a broken executable cannot cause a respawn storm;
//! while it backs off with no live worker, requests fail at once with `worker_failed`.
//!
//! Where workers sit (cgroups) is behind [`Placement`], so the pool runs the same with or without
//! cgroups and tests need no root.

mod backoff;
mod code;
mod forker;
mod job;
mod observe;
mod placement;
mod priority;
mod slack;
mod spawn;
mod supervise;
mod worker;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cgroup::{JoinHandle, Usage};
use serde_json::{Map, Value};
use tokio::sync::Notify;

pub use code::look;
pub use job::{Joins, later};
pub use placement::CgroupPlacement;
pub use spawn::{WorkerIdentity, lookup_user, resolve_command, usable_cpus};

/// Where workers are placed and how their end is explained; implemented over cgroups.
pub trait Placement: Send + Sync {
    /// Prepares the cgroup of a new worker; the handle moves the child in before exec.
    fn prepare_worker(&self, worker: u64) -> std::io::Result<Option<JoinHandle>>;
    /// The worker is gone: kill whatever it left behind, tidy up, and say whether the kernel's
    /// OOM killer ended it.
    fn worker_gone(&self, worker: u64) -> bool;
    /// CPU time the worker's cgroup has used so far, in nanoseconds, if known.
    fn worker_cpu_ns(&self, worker: u64) -> Option<u64>;
    /// Gives the worker's cgroup the lowest CPU weight or the default back; `Ok(false)` when the
    /// cgroups cannot (then the worker's own threads are niced instead, where allowed).
    fn set_worker_background(&self, worker: u64, background: bool) -> std::io::Result<bool>;
    /// What the whole pool uses now.
    fn usage(&self) -> Option<Usage>;
    /// Where the pool sits and its limits in force, for `stats`.
    fn describe(&self) -> Value;
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("worker executable `{0}` was not found beside precogd, in /usr/lib/precog or in PATH")]
    NoExecutable(String),
    #[error("worker command `{path}` {why}")]
    NotExecutable { path: String, why: String },
    #[error("cannot start worker {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("worker user `{0}` does not exist; create it or unset daemon.worker_user")]
    UnknownUser(String),
    #[error("cannot place worker in its cgroup")]
    Placement(#[source] std::io::Error),
    #[error("cannot change the CPU priority of worker process {pid}")]
    CpuClass {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
}

/// How urgently a job must run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    OnDemand,
    Speculative,
}

/// Where a job's outcome goes, once, from whichever task ends the job. A job dropped without an
/// outcome (its pool torn down under it) reports that the pool stopped, so no one waits forever.
pub struct Deliver(Option<Box<dyn FnOnce(JobOutcome) + Send + Sync>>);

impl Deliver {
    pub fn new(to: impl FnOnce(JobOutcome) + Send + Sync + 'static) -> Deliver {
        Deliver(Some(Box::new(to)))
    }

    fn send(mut self, outcome: JobOutcome) {
        if let Some(to) = self.0.take() {
            to(outcome);
        }
    }
}

impl Drop for Deliver {
    fn drop(&mut self) {
        if let Some(to) = self.0.take() {
            to(JobOutcome::failed(
                FailureKind::ShuttingDown,
                "the pool stopped",
            ));
        }
    }
}

/// Called with each checkpoint as the worker emits it.
pub type Checkpoints = Arc<dyn Fn(Value) + Send + Sync>;

/// One job to run on a worker.
pub struct Job {
    pub process: String,
    pub inputs: Map<String, Value>,
    /// A checkpoint to resume from.
    pub state: Option<Value>,
    /// `Some("prepare")` for a prepare run.
    pub phase: Option<&'static str>,
    pub priority: Priority,
    /// Told of each checkpoint as the worker emits it.
    pub checkpoints: Option<Checkpoints>,
    /// Set to drop a queued speculative job before it starts.
    pub cancelled: Arc<AtomicBool>,
    /// Set by the worker that takes the job.
    pub started: Arc<AtomicBool>,
    /// Real requests waiting for this speculative job: from the first on it is on-demand work.
    pub joins: Arc<Joins>,
    /// The job may run again after its worker was lost during it. A job that changes the world
    /// runs at most once: if its worker is lost, the client is told and decides.
    pub may_repeat: bool,
}

/// Why a job produced no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    Timeout,
    Crashed,
    Oom,
    Protocol,
    WorkerError,
    Unavailable,
    Overloaded,
    Cancelled,
    ShuttingDown,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobFailure {
    pub kind: FailureKind,
    pub message: String,
    /// The worker's own code for a job it answered with an error (`WorkerError`).
    pub worker_code: Option<String>,
}

/// What became of a job.
#[derive(Debug)]
pub struct JobOutcome {
    pub result: Result<Value, JobFailure>,
    /// From submission until a worker took the job.
    pub wait_us: u64,
    /// From the job reaching the worker until its answer.
    pub exec_us: u64,
    /// A worker had to be started for this job.
    pub cold: bool,
    pub cpu_ns: u64,
    pub last_checkpoint: Option<Value>,
    /// The worker started on files other than those its pool's version was stamped from (they
    /// changed on disk before precogd took the change), so its result must not be kept.
    pub stale_code: bool,
}

impl JobOutcome {
    fn failed(kind: FailureKind, message: impl Into<String>) -> JobOutcome {
        JobOutcome {
            result: Err(JobFailure {
                kind,
                message: message.into(),
                worker_code: None,
            }),
            wait_us: 0,
            exec_us: 0,
            cold: false,
            cpu_ns: 0,
            last_checkpoint: None,
            stale_code: false,
        }
    }
}

/// A pool's settings, from its configuration.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cpus: Option<Vec<usize>>,
    pub timeout: Duration,
    /// Start-up a new worker may take on top of its first job's `timeout`.
    pub start_timeout: Duration,
    pub warm_min: usize,
    pub workers_max: usize,
    pub queue_max: usize,
    pub identity: Option<WorkerIdentity>,
    /// Files whose change on disk gives the pool new workers, besides the program; `None`: the
    /// first argument, when it is an absolute path (see `code.rs`).
    pub watch: Option<Vec<PathBuf>>,
    /// The stamp of each of [`PoolSettings::code_files`] the workers are configured under
    /// (`None`: not there), and one stamp of them all; see `code.rs` and `set_code`.
    pub code_parts: Vec<Option<u64>>,
    pub code: u64,
}

/// Counters and sizes of one pool, for `stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PoolStats {
    pub workers: usize,
    pub busy: usize,
    pub starting: usize,
    pub target_warm: usize,
    pub workers_max: usize,
    /// The pool's job timeout in force.
    pub timeout_ms: u64,
    pub queued_on_demand: usize,
    pub queued_speculative: usize,
    /// The most real jobs (running or waiting) the pool held at once for 1% of the last 5 to
    /// 10 s or more: guesses run only on the workers above it.
    pub real_load: usize,
    pub spawned: u64,
    /// Workers that could not start, or died before serving a job soon after starting.
    pub start_failures: u64,
    pub cold_starts: u64,
    pub jobs_ok: u64,
    pub jobs_failed: u64,
    /// Failed jobs the worker answered with an error of the job's own (`job_error`), counted in
    /// `jobs_failed` too: the rest of `jobs_failed` are jobs whose worker was lost.
    pub job_errors: u64,
    pub timeouts: u64,
    pub crashes: u64,
    /// Workers killed for breaking the worker protocol (a line that is not a reply, a flood of
    /// output), counted in `crashes` too.
    pub protocol_errors: u64,
    pub oom_kills: u64,
    pub preempted: u64,
    pub backoff_ms: u64,
    pub last_failure: Option<String>,
    /// The pool's cgroup: paths, limits in force, usage; absent without cgroups.
    pub cgroup: Option<Value>,
}

struct Queued {
    job: Job,
    enqueued: Instant,
    /// Queued again from a checkpoint after its worker was lost.
    retried: bool,
    /// Queued again because its worker exited with status 0 before answering it.
    resent: bool,
    reply: Deliver,
}

#[derive(Default)]
struct WorkerSlot {
    /// The job the worker runs, if any.
    busy: Option<Busy>,
    /// The worker is on its way out and takes no more jobs.
    retiring: bool,
}

impl WorkerSlot {
    /// Free to take a job now.
    fn idle(&self) -> bool {
        self.busy.is_none() && !self.retiring
    }
}

/// What a busy worker is doing.
struct Busy {
    priority: Priority,
    since: Instant,
    /// Real requests that joined the job: a guess with any is real work.
    joins: Arc<Joins>,
    /// Ends the job early (taken back for a real request, or the pool stopping). One per job,
    /// so a signal meant for a job that has just ended never reaches the worker's next one.
    take_back: Arc<Notify>,
    /// The take-back signal went out: the worker is on its way to being replaced.
    taken_back: bool,
}

#[derive(Default)]
struct State {
    on_demand: VecDeque<Queued>,
    speculative: VecDeque<Queued>,
    workers: BTreeMap<u64, WorkerSlot>,
    starting: usize,
    target_warm: usize,
    failures: u32,
    backoff_until: Option<Instant>,
    generation: u64,
    stats: PoolStats,
    real_load: slack::RecentLoad,
}

struct Shared {
    settings: Mutex<PoolSettings>,
    state: Mutex<State>,
    job_ready: Notify,
    supervisor_wake: Notify,
    placement: Option<Arc<dyn Placement>>,
    shutting_down: AtomicBool,
    /// How long a worker above the warm target may idle before it retires, in milliseconds.
    keep_alive_ms: AtomicU64,
}

/// Job numbers are unique across all pools for the daemon's lifetime.
static NEXT_JOB: AtomicU64 = AtomicU64::new(1);

/// So are worker numbers, which name the workers' cgroups: a pool removed by a reload and added
/// again under its name while its old workers still stop never gives a new worker an old one's
/// cgroup.
static NEXT_WORKER: AtomicU64 = AtomicU64::new(1);

/// A pool of worker processes. Cloning gives another handle to the same pool.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

impl Pool {
    /// Creates the pool and starts its supervisor, which brings up `warm_min` workers.
    pub fn start(settings: PoolSettings, placement: Option<Arc<dyn Placement>>) -> Pool {
        let state = State {
            target_warm: settings.warm_min,
            ..State::default()
        };
        let shared = Arc::new(Shared {
            settings: Mutex::new(settings),
            state: Mutex::new(state),
            job_ready: Notify::new(),
            supervisor_wake: Notify::new(),
            placement,
            shutting_down: AtomicBool::new(false),
            keep_alive_ms: AtomicU64::new(worker::IDLE_RETIRE.as_millis() as u64),
        });
        tokio::spawn(supervise::supervise(shared.clone()));
        tokio::spawn(code::watch(shared.clone()));
        Pool { shared }
    }

    pub fn name(&self) -> String {
        self.shared
            .settings
            .lock()
            .expect("pool settings")
            .name
            .clone()
    }

    /// The settings in force.
    pub fn settings(&self) -> PoolSettings {
        self.shared.settings.lock().expect("pool settings").clone()
    }

    /// One stamp of the files the workers run, as of their configuration.
    pub fn code(&self) -> u64 {
        self.shared.settings.lock().expect("pool settings").code
    }

    /// Whether the pool is stopping (the daemon stops, or a reload removed it).
    pub fn is_stopping(&self) -> bool {
        self.shared.shutting_down.load(Ordering::Relaxed)
    }

    /// Whether guesses may run on this pool: it has workers that real requests have not needed
    /// lately. A guess issued when it has none would only wait in the queue until its session
    /// moves on; one issued while other guesses hold those workers waits its turn.
    pub fn takes_guesses(&self) -> bool {
        let settings = self.shared.settings.lock().expect("pool settings");
        let workers_max = settings.workers_max;
        drop(settings);
        let mut st = self.shared.state.lock().expect("pool state");
        st.guess_slots(workers_max) > 0
    }

    /// Queues a job; `deliver` gets its outcome. Never blocks.
    pub fn submit(&self, job: Job, deliver: Deliver) {
        let (queue_max, workers_max) = {
            let s = self.shared.settings.lock().expect("pool settings");
            (s.queue_max, s.workers_max)
        };
        let mut st = self.shared.state.lock().expect("pool state");

        if self.shared.shutting_down.load(Ordering::Relaxed) {
            deliver.send(JobOutcome::failed(
                FailureKind::ShuttingDown,
                "precogd is stopping",
            ));
            return;
        }
        if st.workers.is_empty()
            && st.starting == 0
            && let Some(until) = st.backoff_until
            && until > Instant::now()
        {
            let why = st.stats.last_failure.clone().unwrap_or_default();
            let wait = until.saturating_duration_since(Instant::now()).as_millis();
            deliver.send(JobOutcome::failed(
                FailureKind::Unavailable,
                format!("pool has no live worker ({why}); next start in {wait} ms"),
            ));
            return;
        }

        let priority = job.priority;
        let queued = Queued {
            job,
            enqueued: Instant::now(),
            retried: false,
            resent: false,
            reply: deliver,
        };
        match priority {
            Priority::OnDemand => {
                if st.on_demand.len() >= queue_max {
                    queued.reply.send(JobOutcome::failed(
                        FailureKind::Overloaded,
                        format!("{} requests are already waiting for this pool", queue_max),
                    ));
                    return;
                }
                st.on_demand.push_back(queued);
                st.note_real_demand();
                if supervise::take_back_guess(&mut st, workers_max).is_some() {
                    // Only young guesses hold the workers: the supervisor looks again.
                    self.shared.supervisor_wake.notify_one();
                }
            }
            Priority::Speculative => {
                if st.speculative.len() >= queue_max {
                    // Speculation is optional: drop the oldest guess rather than refuse.
                    if let Some(old) = st.speculative.pop_front() {
                        old.reply
                            .send(JobOutcome::failed(FailureKind::Cancelled, "displaced"));
                    }
                }
                st.speculative.push_back(queued);
            }
        }
        let idle = st.workers.values().filter(|w| w.idle()).count();
        drop(st);
        self.shared.job_ready.notify_one();
        if idle == 0 {
            self.shared.supervisor_wake.notify_one();
        }
    }

    /// Sets how many warm workers the pool keeps (clamped to `warm_min..=workers_max`).
    pub fn set_target_warm(&self, n: usize) {
        let (lo, hi) = {
            let s = self.shared.settings.lock().expect("pool settings");
            (s.warm_min, s.workers_max)
        };
        self.shared.state.lock().expect("pool state").target_warm = n.clamp(lo, hi);
        self.shared.supervisor_wake.notify_one();
    }

    /// Sets how long a worker above the warm target may idle before it retires.
    pub fn set_keep_alive(&self, keep_alive: Duration) {
        let ms = keep_alive.as_millis().max(1) as u64;
        self.shared.keep_alive_ms.store(ms, Ordering::Relaxed);
    }

    /// Applies new settings. Workers started with an older command, CPUs or user finish their
    /// job and retire: none of these can change in a running process.
    pub fn reconfigure(&self, new: PoolSettings) {
        supervise::reconfigure(&self.shared, new);
    }

    pub fn stats(&self) -> PoolStats {
        let mut st = self.shared.state.lock().expect("pool state");
        let mut s = st.stats.clone();
        s.workers = st.workers.len();
        s.busy = st.workers.values().filter(|w| w.busy.is_some()).count();
        s.starting = st.starting;
        s.target_warm = st.target_warm;
        let settings = self.shared.settings.lock().expect("pool settings");
        s.workers_max = settings.workers_max;
        s.timeout_ms = settings.timeout.as_millis() as u64;
        drop(settings);
        s.queued_on_demand = st.on_demand.len();
        s.queued_speculative = st.speculative.len();
        s.real_load = st.real_load();
        s.cgroup = self.shared.placement.as_ref().map(|p| {
            let mut v = p.describe();
            if let Some(u) = p.usage() {
                v["usage"] = serde_json::json!({
                    "cpu_ns": u.cpu_ns,
                    "memory_now": u.memory_now,
                    "memory_peak": u.memory_peak,
                    "oom_kills": u.oom_kills,
                });
            }
            v
        });
        s.backoff_ms = st
            .backoff_until
            .map(|u| u.saturating_duration_since(Instant::now()).as_millis() as u64)
            .unwrap_or(0);
        s
    }

    /// Stops taking jobs, lets running ones finish within `grace`, then stops every worker.
    pub async fn shutdown(&self, grace: Duration) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let queued: Vec<Queued> = {
            let mut st = self.shared.state.lock().expect("pool state");
            let st = &mut *st;
            st.on_demand
                .drain(..)
                .chain(st.speculative.drain(..))
                .collect()
        };
        for q in queued {
            q.reply.send(JobOutcome::failed(
                FailureKind::ShuttingDown,
                "precogd is stopping",
            ));
        }
        self.shared.job_ready.notify_waiters();
        self.shared.supervisor_wake.notify_one();

        let deadline = later(Instant::now(), grace);
        let given_up = later(deadline, Duration::from_secs(3));
        loop {
            let live = {
                let st = self.shared.state.lock().expect("pool state");
                st.workers.len() + st.starting
            };
            if live == 0 {
                return;
            }
            if Instant::now() >= deadline {
                let st = self.shared.state.lock().expect("pool state");
                for b in st.workers.values().filter_map(|w| w.busy.as_ref()) {
                    b.take_back.notify_one();
                }
            }
            self.shared.job_ready.notify_waiters();
            tokio::time::sleep(Duration::from_millis(20)).await;
            if Instant::now() >= given_up {
                return;
            }
        }
    }
}

/// Whether workers started with `old` must give way to new ones for `new`: what the worker
/// runs, where it runs and who it runs as are fixed when its process starts.
fn needs_new_workers(old: &PoolSettings, new: &PoolSettings) -> bool {
    old.program != new.program
        || old.args != new.args
        || old.cpus != new.cpus
        || old.identity != new.identity
        || old.code != new.code
        || old.watch != new.watch
}

#[cfg(test)]
mod tests;
