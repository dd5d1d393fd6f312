//! One worker: a task that owns one child process and runs jobs on it, one at a time.
//!
//! A worker that times out, breaks the protocol or exits is killed together with its process
//! group (and its cgroup, through the placement) and not reused; the supervisor replaces it. A job
//! lost that way is queued again once, from its last checkpoint; a second loss fails it.
//!
//! A worker may end itself with status 0 between jobs (to recycle itself every so many jobs): that
//! is no crash. A job sent to it just before it exited goes to another worker, once.

use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::Child;
use tokio::sync::Notify;

use super::backoff::{remove_slot, started_failed};
use super::job::{Deadline, Joinable, Pipes, Proc, Ran, run_job};
use super::observe::{log_stderr, worker_cpu_ns};
use super::priority::{CpuClass, apply_cpu_class};
use super::spawn::{SpawnPlan, spawn};
use super::{Busy, FailureKind, JobOutcome, Priority, Queued, Shared, State, WorkerSlot};

/// A worker idle this long above the warm target retires, until the allocator learns better.
pub(super) const IDLE_RETIRE: Duration = Duration::from_secs(30);

/// Starts worker `id` and runs jobs on it until it retires or is lost.
pub(super) async fn run(shared: Arc<Shared>, id: u64) {
    let (settings, generation) = {
        let s = shared.settings.lock().expect("pool settings").clone();
        (s, shared.state.lock().expect("pool state").generation)
    };

    let stopping = || shared.shutting_down.load(Ordering::Relaxed);
    if stopping() {
        start_dropped(&shared);
        return;
    }
    let join = match shared.placement.clone() {
        Some(p) => match off_runtime(move || p.prepare_worker(id)).await {
            Ok(handle) => handle,
            Err(e) => {
                started_failed(
                    &shared,
                    format!("cannot prepare the worker's cgroup: {}", error_chain(&e)),
                );
                return;
            }
        },
        None => None,
    };
    let plan = SpawnPlan {
        program: settings.program.clone(),
        args: settings.args.clone(),
        cpus: settings.cpus.clone(),
        identity: settings.identity,
        cgroup_join: join,
    };
    let mut cpu_class = CpuClass::Normal;
    // Files other than the pool's version was stamped from (a file gone included): the worker
    // may run code the version does not name, so what it computes is not kept. They are looked
    // at before the start and at the first answer: an interpreter reads its script later.
    let files = {
        let settings = settings.clone();
        off_runtime(move || settings.code_files()).await
    };
    let mut stale_code = look_differs(&files, &settings.code_parts).await;
    let mut looked_after_start = false;
    // A start still queued when the pool stops, or when a reload changed the command it would
    // run, is not made.
    let outdated = {
        let shared = shared.clone();
        move || {
            shared.shutting_down.load(Ordering::Relaxed)
                || shared.state.lock().expect("pool state").generation != generation
        }
    };
    let mut child = match spawn(&settings.name, plan, outdated.clone()).await {
        Ok(c) => c,
        Err(_) if outdated() => {
            placement_gone(&shared, id).await;
            start_dropped(&shared);
            return;
        }
        Err(e) => {
            placement_gone(&shared, id).await;
            started_failed(&shared, error_chain(&e));
            return;
        }
    };

    let pid = child.id().unwrap_or(0);
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(log_stderr(settings.name.clone(), pid, stderr));
    }

    let started = Instant::now();
    {
        let mut st = shared.state.lock().expect("pool state");
        st.starting -= 1;
        st.stats.spawned += 1;
        st.workers.insert(id, WorkerSlot::default());
    }
    tracing::debug!(pool = %settings.name, worker = id, pid, "worker started");

    let mut pipes = Pipes::new(stdin, stdout, &settings.name, pid);
    let mut served = 0u64;
    let mut last_cpu = 0u64;
    let mut death: Option<String> = None;

    loop {
        let Some((queued, take_back)) = next_job(&shared, id, generation, &mut child).await else {
            break;
        };
        // A guess runs at the lowest CPU weight so real work on the same CPUs goes first; the
        // worker gets its normal weight back before its next real job, not after the guess,
        // which saves the switch when guesses follow each other.
        let wanted = match queued.job.priority {
            Priority::Speculative => CpuClass::Background,
            Priority::OnDemand => CpuClass::Normal,
        };
        if wanted != cpu_class {
            match apply_cpu_class(shared.placement.as_deref(), id, pid, wanted) {
                Ok(true) => cpu_class = wanted,
                Ok(false) => {}
                Err(e) => tracing::warn!(pool = %settings.name, worker = id, pid,
                    "{}", error_chain(&e)),
            }
        }
        if served == 0 {
            // The first job's CPU time starts here, not with the worker's own start-up.
            last_cpu = worker_cpu_ns(&shared, id, pid).unwrap_or(0);
        }
        let cold = started > queued.enqueued && served == 0;
        let wait_us = queued.enqueued.elapsed().as_micros() as u64;
        let limits = {
            let s = shared.settings.lock().expect("pool settings");
            Deadline::new(s.timeout, s.start_timeout, started, served)
        };
        let job_id = super::NEXT_JOB.fetch_add(1, Ordering::Relaxed);

        // A real request that joins a guess while it runs makes the job real from then on (and
        // each one that joins gets a whole timeout, see `run_job`).
        let mut back_to_normal = false;
        let mut promote = || {
            if cpu_class == CpuClass::Background {
                let placement = shared.placement.as_deref();
                match apply_cpu_class(placement, id, pid, CpuClass::Normal) {
                    Ok(changed) => back_to_normal = changed,
                    Err(e) => tracing::warn!(pool = %settings.name, worker = id, pid,
                        "{}", error_chain(&e)),
                }
            }
            let mut st = shared.state.lock().expect("pool state");
            if let Some(busy) = st.workers.get_mut(&id).and_then(|w| w.busy.as_mut()) {
                busy.priority = Priority::OnDemand;
            }
            st.note_real_demand();
        };
        let joinable = Joinable {
            joins: &queued.job.joins,
            promote: &mut promote,
        };
        let worker = Proc {
            pipes: &mut pipes,
            child: &mut child,
        };
        let ran = run_job(
            &queued,
            job_id,
            limits,
            worker,
            &take_back,
            &shared.shutting_down,
            joinable,
        )
        .await;
        served += 1;
        if back_to_normal {
            cpu_class = CpuClass::Normal;
        }
        let cpu_now = worker_cpu_ns(&shared, id, pid).unwrap_or(last_cpu);
        let cpu_ns = cpu_now.saturating_sub(last_cpu);
        last_cpu = cpu_now;

        match ran {
            Ran::Answered(mut outcome) => {
                outcome.wait_us = wait_us;
                outcome.cold = cold;
                outcome.cpu_ns = cpu_ns;
                if !std::mem::replace(&mut looked_after_start, true) {
                    stale_code |= look_differs(&files, &settings.code_parts).await;
                }
                outcome.stale_code = stale_code;
                let mut st = shared.state.lock().expect("pool state");
                if let Some(w) = st.workers.get_mut(&id) {
                    w.busy = None;
                }
                st.note_real_demand();
                if outcome.result.is_ok() {
                    st.stats.jobs_ok += 1;
                } else {
                    // The worker answered with an error of the job's own (an unknown SKU, say).
                    st.stats.jobs_failed += 1;
                    st.stats.job_errors += 1;
                }
                if cold {
                    st.stats.cold_starts += 1;
                }
                st.failures = 0;
                drop(st);
                queued.reply.send(outcome);
            }
            Ran::Lost {
                kind,
                message,
                checkpoint,
                exec_us,
            } => {
                kill_worker(pid, &mut child);
                let _ = child.wait().await;
                let oom = placement_gone(&shared, id).await;
                let (kind, message) = if oom {
                    (
                        FailureKind::Oom,
                        "worker was killed by the OOM killer".to_string(),
                    )
                } else {
                    (kind, message)
                };
                tracing::warn!(pool = %settings.name, process = %queued.job.process,
                    worker = id, pid, reason = ?kind, "{message}; replacing the worker");
                let mut queued = queued;
                if queued.job.joins.any() {
                    // A guess that real requests joined is retried as the real thing, also
                    // when they joined after the worker was lost.
                    queued.job.priority = Priority::OnDemand;
                }
                if !looked_after_start {
                    stale_code |= look_differs(&files, &settings.code_parts).await;
                }
                let cost = Cost {
                    wait_us,
                    exec_us,
                    cold,
                    cpu_ns,
                    stale_code,
                };
                finish_lost(&shared, queued, kind, message, checkpoint, cost);
                remove_slot(&shared, id, started, served, None);
                return;
            }
            Ran::Exited {
                checkpoint,
                exec_us,
            } => {
                tracing::info!(pool = %settings.name, process = %queued.job.process,
                    worker = id, pid,
                    "worker exited (status 0) before answering its job; the job goes to \
                     another worker");
                // Whatever it left behind goes with it.
                kill_group(pid);
                placement_gone(&shared, id).await;
                if !looked_after_start {
                    stale_code |= look_differs(&files, &settings.code_parts).await;
                }
                let cost = Cost {
                    wait_us,
                    exec_us,
                    cold,
                    cpu_ns,
                    stale_code,
                };
                resend(&shared, queued, checkpoint, cost);
                // It served none of its jobs: a worker that exits at once fails at start.
                let death = (served == 1).then(|| {
                    "worker exited (exit status: 0) before answering its first job".to_string()
                });
                remove_slot(&shared, id, started, served - 1, death);
                return;
            }
        }
        if let Some(status) = child.try_wait().ok().flatten() {
            death = death_of(status, served);
            break;
        }
    }

    if death.is_none()
        && let Ok(Some(status)) = child.try_wait()
    {
        death = death_of(status, served);
    }

    // Orderly end: close stdin so a well-behaved worker exits, then make sure it did.
    drop(pipes);
    let graceful = tokio::time::timeout(Duration::from_millis(500), child.wait()).await;
    if graceful.is_err() {
        terminate(pid, &mut child).await;
    } else {
        kill_group(pid);
    }
    placement_gone(&shared, id).await;
    remove_slot(&shared, id, started, served, death);
}

/// Why a worker that exited between jobs counts as failed, if it does: not when it exited 0
/// after serving (it recycled itself).
fn death_of(status: ExitStatus, served: u64) -> Option<String> {
    (!status.success() || served == 0).then(|| format!("worker exited ({status})"))
}

/// Tidies a gone worker's cgroup; says whether the OOM killer ended it.
async fn placement_gone(shared: &Shared, id: u64) -> bool {
    match shared.placement.clone() {
        Some(p) => off_runtime(move || p.worker_gone(id)).await,
        None => false,
    }
}

/// Runs cgroup work (mkdir, rmdir, a kill loop that sleeps between sweeps) on a blocking
/// thread: on one of the runtime's threads it would stall every request on a 2-CPU host.
async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Waits for a job for this worker; `None` when the worker should stop.
async fn next_job(
    shared: &Arc<Shared>,
    id: u64,
    generation: u64,
    child: &mut Child,
) -> Option<(Queued, Arc<Notify>)> {
    let mut idle_since = Instant::now();
    loop {
        let ready = shared.job_ready.notified();
        tokio::pin!(ready);
        ready.as_mut().enable();
        {
            let workers_max = shared.settings.lock().expect("pool settings").workers_max;
            let mut st = shared.state.lock().expect("pool state");
            if shared.shutting_down.load(Ordering::Relaxed) || st.generation != generation {
                return None;
            }
            if should_retire(&st, workers_max, false) {
                return retire(&mut st, id);
            }
            // Speculation leaves one idle worker for the next real request: taking a worker
            // back from a speculative job costs that request a cold start. Guesses take only
            // workers that real requests have not needed lately (see `slack`).
            let idle_others = st
                .workers
                .iter()
                .filter(|(w, slot)| **w != id && slot.idle())
                .count();
            let may_speculate = (idle_others > 0 || st.workers.len() <= 1)
                && (st.speculative.is_empty() || st.guess_room(workers_max) > 0);
            if !may_speculate {
                st.drop_cancelled_guesses();
            }
            while let Some(q) = st
                .on_demand
                .pop_front()
                .or_else(|| may_speculate.then(|| st.speculative.pop_front()).flatten())
            {
                if q.job.priority == Priority::Speculative
                    && q.job.cancelled.load(Ordering::Relaxed)
                {
                    q.reply
                        .send(JobOutcome::failed(FailureKind::Cancelled, "cancelled"));
                    continue;
                }
                let take_back = Arc::new(Notify::new());
                if let Some(w) = st.workers.get_mut(&id) {
                    w.busy = Some(Busy {
                        priority: q.job.priority,
                        since: Instant::now(),
                        joins: q.job.joins.clone(),
                        take_back: take_back.clone(),
                        taken_back: false,
                    });
                }
                q.job.started.store(true, Ordering::Relaxed);
                return Some((q, take_back));
            }
            let keep_alive = Duration::from_millis(shared.keep_alive_ms.load(Ordering::Relaxed));
            if should_retire(&st, workers_max, idle_since.elapsed() >= keep_alive) {
                return retire(&mut st, id);
            }
        }
        tokio::select! {
            _ = &mut ready => {}
            _ = child.wait() => return None,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if shared.state.lock().expect("pool state").workers.len() <= 1 {
            idle_since = Instant::now();
        }
    }
}

/// Whether an idle worker retires now: the pool has more workers than `workers_max` (a reload
/// or `set-pool` lowered it: the limit holds as soon as a worker is free, whatever the
/// keep-alive), or more than it keeps warm and this one has idled past the keep-alive
/// (`idled_out`). Workers already retiring are not counted.
pub(super) fn should_retire(st: &State, workers_max: usize, idled_out: bool) -> bool {
    let staying = st.workers.values().filter(|w| !w.retiring).count();
    staying > workers_max || (idled_out && staying > st.target_warm)
}

/// Marks the worker as retiring, so the workers that stay are counted without it.
fn retire(st: &mut State, id: u64) -> Option<(Queued, Arc<Notify>)> {
    if let Some(w) = st.workers.get_mut(&id) {
        w.retiring = true;
    }
    None
}

/// What a lost job cost before its worker was lost.
struct Cost {
    wait_us: u64,
    exec_us: u64,
    cold: bool,
    /// CPU time the worker used on the job, read before it was killed.
    cpu_ns: u64,
    /// The worker ran other files than its pool's version names: its checkpoint is not resumed.
    stale_code: bool,
}

/// Whether `files` now differ from the stamps the pool was configured under, looked at off the
/// runtime.
async fn look_differs(files: &[std::path::PathBuf], configured: &[Option<u64>]) -> bool {
    let files = files.to_vec();
    off_runtime(move || super::code::look(&files)).await != configured
}

/// Answers or re-queues a job whose worker was lost.
fn finish_lost(
    shared: &Shared,
    mut queued: Queued,
    kind: FailureKind,
    message: String,
    checkpoint: Option<Value>,
    cost: Cost,
) {
    let mut st = shared.state.lock().expect("pool state");
    match kind {
        FailureKind::Timeout => st.stats.timeouts += 1,
        FailureKind::Oom => st.stats.oom_kills += 1,
        FailureKind::Cancelled | FailureKind::ShuttingDown => {}
        FailureKind::Protocol => {
            st.stats.crashes += 1;
            st.stats.protocol_errors += 1;
        }
        _ => st.stats.crashes += 1,
    }
    // A job that got as far as a checkpoint is worth one more try from there; one that did
    // not would most likely fail the same way again, so it fails now with the reason.
    let retry = matches!(
        kind,
        FailureKind::Crashed | FailureKind::Protocol | FailureKind::Timeout
    ) && checkpoint.is_some()
        && !cost.stale_code
        && queued.job.may_repeat
        && !queued.retried
        && !shared.shutting_down.load(Ordering::Relaxed);
    if retry {
        queued.retried = true;
        queued.job.state = checkpoint;
        requeue(shared, st, queued);
        return;
    }
    // A guess taken back, or a job the stopping pool ended, did not fail.
    if !matches!(kind, FailureKind::Cancelled | FailureKind::ShuttingDown) {
        st.stats.jobs_failed += 1;
    }
    drop(st);
    queued.reply.send(JobOutcome {
        result: Err(super::JobFailure {
            kind,
            message,
            worker_code: None,
        }),
        wait_us: cost.wait_us,
        exec_us: cost.exec_us,
        cold: cost.cold,
        cpu_ns: cost.cpu_ns,
        last_checkpoint: checkpoint,
        stale_code: cost.stale_code,
    });
}

/// Sends a job whose worker exited with status 0 before answering to another worker, once; a
/// second such exit fails it as a crash.
fn resend(shared: &Shared, mut queued: Queued, checkpoint: Option<Value>, cost: Cost) {
    if queued.job.joins.any() {
        queued.job.priority = Priority::OnDemand;
    }
    if queued.resent || !queued.job.may_repeat || shared.shutting_down.load(Ordering::Relaxed) {
        let (kind, message) = if queued.resent {
            let why = "worker exited (exit status: 0) before answering the job, twice";
            (FailureKind::Crashed, why.to_string())
        } else if !queued.job.may_repeat {
            let why = "worker exited (exit status: 0) before answering the job, which is not run \
                       again since its process is not idempotent";
            (FailureKind::Crashed, why.to_string())
        } else {
            (FailureKind::ShuttingDown, "the pool stopped".to_string())
        };
        finish_lost(shared, queued, kind, message, checkpoint, cost);
        return;
    }
    queued.resent = true;
    if checkpoint.is_some() && !cost.stale_code {
        queued.job.state = checkpoint;
    }
    let st = shared.state.lock().expect("pool state");
    requeue(shared, st, queued);
}

/// Puts a job back at the head of its queue. A guess goes back among the guesses: it must not
/// pass real requests. Until it starts again, a run for it replaces it instead of waiting behind
/// guesses.
fn requeue(shared: &Shared, mut st: std::sync::MutexGuard<'_, super::State>, queued: Queued) {
    match queued.job.priority {
        Priority::OnDemand => st.on_demand.push_front(queued),
        Priority::Speculative => {
            queued.job.started.store(false, Ordering::Relaxed);
            st.speculative.push_front(queued);
        }
    }
    drop(st);
    shared.job_ready.notify_one();
    shared.supervisor_wake.notify_one();
}

/// An error and its causes, as one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A start dropped because the pool is stopping: not a failure.
fn start_dropped(shared: &Shared) {
    shared.state.lock().expect("pool state").starting -= 1;
    shared.supervisor_wake.notify_one();
}

/// SIGKILL to the worker's process group (it leads its own group).
fn kill_group(pid: u32) {
    signal_group(pid, nix::sys::signal::Signal::SIGKILL);
}

/// SIGKILL to the worker's process group and to the worker itself, which may have left its
/// group (`setpgid`): a wait for its exit must not depend on the worker staying there.
fn kill_worker(pid: u32, child: &mut Child) {
    kill_group(pid);
    // Not reaped yet, so the pid is still the worker's.
    let _ = child.start_kill();
}

fn signal_group(pid: u32, signal: nix::sys::signal::Signal) {
    if pid > 0 {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), signal);
    }
}

/// SIGTERM, a grace period, then SIGKILL, to the whole group and to the worker itself.
async fn terminate(pid: u32, child: &mut Child) {
    signal_group(pid, nix::sys::signal::Signal::SIGTERM);
    if pid > 0 && child.try_wait().ok().flatten().is_none() {
        // Not reaped (just checked), so the pid is still the worker's.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(1), child.wait())
        .await
        .is_err()
    {
        kill_worker(pid, child);
        let _ = child.wait().await;
    }
    kill_group(pid);
}
