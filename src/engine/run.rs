//! Answering `run`: from the cache, by joining a job already in flight, or on a worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use super::{Client, Command, Engine, Reply, json_map};
use crate::pool::{FailureKind, Job, JobOutcome, Priority};
use crate::protocol::{ErrorCode, ErrorReply};
use crate::store::canonical_json;

/// A job's identity: whose it is, which process, which inputs (canonical JSON). Results are
/// never shared between client users.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobKey {
    pub owner: u32,
    pub process: String,
    pub inputs: String,
    /// What computes the result, as the configuration stood when the job was asked for (see
    /// `Engine::process_version`): a result or a running job of another worker command or
    /// pool is not this job's.
    pub version: u64,
    /// 0 for a job that every request with the same inputs may share; a number of its own for
    /// a run of a process that is not idempotent, which no other request joins: four shoppers
    /// reserving the same SKU at once are four reservations.
    pub run: u64,
}

/// A job on its way, and the requests waiting for it.
pub(super) struct Inflight {
    seq: u64,
    waiters: Vec<Waiter>,
    pub(super) speculative: bool,
    /// Where its checkpoints are stored.
    state_key: Vec<u8>,
    /// A prepare run: its checkpoint is what counts, its result is not kept.
    prepare: bool,
    pub(super) cancelled: Arc<AtomicBool>,
    pub(super) started: Arc<AtomicBool>,
    joins: Arc<crate::pool::Joins>,
}

pub(super) struct Waiter {
    reply: oneshot::Sender<Reply>,
    received: Instant,
    /// Joined a job that was already running.
    joined: bool,
}

/// Largest inputs object a request may carry once encoded.
const MAX_INPUTS: usize = 64 * 1024;

impl Engine {
    pub(super) fn run_request(
        &mut self,
        client: Client,
        session: String,
        process: String,
        inputs: Option<Map<String, Value>>,
        received: Instant,
        reply: oneshot::Sender<Reply>,
    ) {
        // The request's own inputs, else what the session made known.
        let prepared = self.prepare_run(client, &session, &process, inputs.unwrap_or_default());
        let (key, inputs, pool) = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.counters.count_error(e.code);
                let _ = reply.send(Err(e));
                return;
            }
        };

        self.claim_speculative(&key);
        self.answer_run(key.clone(), inputs, &pool, received, reply);
        self.later.push(Later::Asked {
            client,
            session,
            key,
        });
    }

    fn answer_run(
        &mut self,
        key: JobKey,
        inputs: Map<String, Value>,
        pool: &str,
        received: Instant,
        reply: oneshot::Sender<Reply>,
    ) {
        if self.is_cacheable(&key.process)
            && let Some(result) = self.cache_get(&key)
        {
            self.counters.count_served("cache");
            self.counters.record_latency(received.elapsed());
            let _ = reply.send(Ok(json_map(json!({
                "result": result,
                "served": "cache",
                "wait_us": received.elapsed().as_micros() as u64,
                "exec_us": 0,
            }))));
            return;
        }

        if let Some(inflight) = self.inflight.get_mut(&key) {
            if !inflight.speculative || inflight.started.load(Ordering::Relaxed) {
                if inflight.speculative {
                    inflight.joins.join();
                }
                inflight.waiters.push(Waiter {
                    reply,
                    received,
                    joined: true,
                });
                return;
            }
            // A guess that has not started yet: drop it and run the real request at once,
            // rather than wait behind the speculative queue.
            inflight.cancelled.store(true, Ordering::Relaxed);
            let mut old = self.inflight.remove(&key).expect("present");
            self.state_released(&old.state_key);
            let waiters = std::mem::take(&mut old.waiters);
            self.submit(
                key,
                inputs,
                pool,
                Priority::OnDemand,
                waiters,
                reply,
                received,
            );
            return;
        }
        self.submit(
            key,
            inputs,
            pool,
            Priority::OnDemand,
            Vec::new(),
            reply,
            received,
        );
    }

    /// Checks the process and its inputs (`given`, else the session's known ones); returns the
    /// job key, the inputs and the pool name.
    fn prepare_run(
        &mut self,
        client: Client,
        session: &str,
        process: &str,
        mut given: Map<String, Value>,
    ) -> Result<(JobKey, Map<String, Value>, String), ErrorReply> {
        let Some(proc_cfg) = self.config.process(process) else {
            return Err(self.unknown_process(process));
        };
        let known = self.predictor.known_inputs(session);
        let mut inputs = Map::new();
        let mut missing = Vec::new();
        let mut null_sent = Vec::new();
        for name in &proc_cfg.inputs {
            // An input sent as null is not given: the session's value stands in, as for one
            // not sent at all (and as for optional inputs).
            let sent = given.remove(name);
            let sent_null = sent.as_ref().is_some_and(Value::is_null);
            let value = sent.filter(|v| !v.is_null()).or_else(|| {
                known
                    .and_then(|k| k.get(name))
                    .filter(|v| !v.is_null())
                    .cloned()
            });
            match value {
                Some(v) => {
                    inputs.insert(name.clone(), v);
                }
                None => {
                    missing.push(name.as_str());
                    if sent_null {
                        null_sent.push(name.as_str());
                    }
                }
            }
        }
        for name in &proc_cfg.optional_inputs {
            let value = given.remove(name).filter(|v| !v.is_null()).or_else(|| {
                known
                    .and_then(|k| k.get(name))
                    .filter(|v| !v.is_null())
                    .cloned()
            });
            if let Some(v) = value {
                inputs.insert(name.clone(), v);
            }
        }
        if !missing.is_empty() {
            let mut message = format!("`{process}` needs input(s) {}", missing.join(", "));
            if !null_sent.is_empty() {
                let null = null_sent.join(", ");
                message.push_str(&format!("; null counts as not given (sent for {null})"));
            }
            return Err(
                ErrorReply::new(ErrorCode::MissingInput, message).with("missing", json!(missing))
            );
        }
        let canonical = canonical_json(&Value::Object(inputs.clone()));
        if canonical.len() > MAX_INPUTS {
            return Err(ErrorReply::new(
                ErrorCode::TooLarge,
                format!(
                    "inputs are {} bytes; the limit is {MAX_INPUTS}",
                    canonical.len()
                ),
            ));
        }
        // A number of its own, from the job sequence, for a run that nothing may share.
        let run = if proc_cfg.idempotent {
            0
        } else {
            self.next_seq += 1;
            self.next_seq
        };
        let key = JobKey {
            owner: client.uid,
            process: process.to_string(),
            inputs: canonical,
            version: self.process_version(process),
            run,
        };
        Ok((key, inputs, proc_cfg.pool.clone()))
    }

    #[allow(clippy::too_many_arguments)]
    fn submit(
        &mut self,
        key: JobKey,
        inputs: Map<String, Value>,
        pool_name: &str,
        priority: Priority,
        mut waiters: Vec<Waiter>,
        reply: oneshot::Sender<Reply>,
        received: Instant,
    ) {
        waiters.push(Waiter {
            reply,
            received,
            joined: false,
        });
        self.start_job(key, inputs, pool_name, priority, None, waiters);
    }

    /// Hands a job to its pool and records it as in flight with the requests waiting for it
    /// (none for a speculative job).
    pub(super) fn start_job(
        &mut self,
        key: JobKey,
        inputs: Map<String, Value>,
        pool_name: &str,
        priority: Priority,
        phase: Option<&'static str>,
        waiters: Vec<Waiter>,
    ) {
        self.note_arrival(pool_name);
        let state_key = self.state_key(&key, &inputs);
        if !self.pools.contains_key(pool_name) {
            for w in waiters {
                let e = ErrorReply::new(ErrorCode::Internal, format!("pool `{pool_name}` is gone"));
                let _ = w.reply.send(Err(e));
            }
            return;
        }
        let state = self.state_taken(&state_key);
        let pool = self.pools.get(pool_name).expect("checked above");
        let cancelled = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicBool::new(false));
        let joins = Arc::new(crate::pool::Joins::default());
        self.next_seq += 1;
        let seq = self.next_seq;
        let to_engine = self.done_tx.clone();
        // Only a job's latest checkpoint matters, so one waits for the engine at a time: a
        // worker that writes them faster than they are stored replaces the one waiting.
        let latest: Arc<Mutex<Option<Value>>> = Arc::default();
        let inflight_state_key = state_key.clone();
        let checkpoints: crate::pool::Checkpoints = Arc::new(move |state| {
            let mut slot = latest.lock().expect("latest checkpoint");
            let queued = slot.replace(state).is_some();
            drop(slot);
            if !queued {
                let _ = to_engine.send(Command::Checkpoint {
                    key: state_key.clone(),
                    latest: latest.clone(),
                });
            }
        });
        let to_engine = self.done_tx.clone();
        let done_key = key.clone();
        let deliver = crate::pool::Deliver::new(move |outcome| {
            let cmd = Command::JobDone {
                key: done_key,
                seq,
                outcome,
            };
            let _ = to_engine.send(cmd);
        });
        pool.submit(
            Job {
                process: key.process.clone(),
                inputs,
                state,
                phase,
                priority,
                checkpoints: Some(checkpoints),
                cancelled: cancelled.clone(),
                started: started.clone(),
                joins: joins.clone(),
                may_repeat: self
                    .config
                    .process(&key.process)
                    .is_some_and(|p| p.idempotent),
            },
            deliver,
        );
        let replaced = self.inflight.insert(
            key.clone(),
            Inflight {
                seq,
                waiters,
                speculative: priority == Priority::Speculative,
                state_key: inflight_state_key,
                prepare: phase.is_some(),
                cancelled,
                started,
                joins,
            },
        );
        if let Some(old) = replaced {
            self.state_released(&old.state_key);
        }
    }

    pub(super) fn job_done(&mut self, key: JobKey, seq: u64, outcome: JobOutcome) {
        if self.inflight.get(&key).is_none_or(|i| i.seq != seq) {
            // A job replaced by a newer submission of the same key (a guess dropped for a real
            // request): its report belongs to no one.
            return;
        }
        let Some(mut inflight) = self.inflight.remove(&key) else {
            return;
        };
        self.state_released(&inflight.state_key);
        // The requests waiting for the job are answered first; what the engine learns from it
        // waits until their replies are on their way (see `Later`).
        let finished = |outcome| Later::Finished {
            key: key.clone(),
            outcome,
            speculative: inflight.speculative,
            prepare: inflight.prepare,
        };
        // A guess taken back to make room for a real request, or dropped with its session,
        // while real requests had joined it: run it for them now, as the real thing. So too a
        // job whose pool a reload removed, when its process now has a pool that serves, if it
        // had not started or may run twice.
        let moved = |p: &crate::config::ProcessConfig| {
            self.pool_serves(p) && (p.idempotent || !inflight.started.load(Ordering::Relaxed))
        };
        if let Err(f) = &outcome.result
            && !inflight.waiters.is_empty()
            && let Some(process) = self.config.process(&key.process)
            && (f.kind == FailureKind::Cancelled
                || (f.kind == FailureKind::ShuttingDown && moved(process)))
        {
            let pool = process.pool.clone();
            let inputs: Map<String, Value> = serde_json::from_str(&key.inputs).unwrap_or_default();
            // They wait for a job of their own now, and are answered as such.
            let mut waiters = std::mem::take(&mut inflight.waiters);
            for w in &mut waiters {
                w.joined = false;
            }
            self.later.push(finished(outcome));
            self.start_job(key, inputs, &pool, Priority::OnDemand, None, waiters);
            return;
        }
        for w in inflight.waiters {
            let answer = match &outcome.result {
                Ok(result) => {
                    let served = if w.joined {
                        "inflight"
                    } else if outcome.cold {
                        "cold"
                    } else {
                        "warm"
                    };
                    self.counters.count_served(served);
                    let (wait_us, exec_us) = if w.joined {
                        (w.received.elapsed().as_micros() as u64, 0)
                    } else {
                        (outcome.wait_us, outcome.exec_us)
                    };
                    self.counters.record_latency(w.received.elapsed());
                    Ok(json_map(json!({
                        "result": result,
                        "served": served,
                        "wait_us": wait_us,
                        "exec_us": exec_us,
                    })))
                }
                Err(f)
                    if matches!(f.kind, FailureKind::Cancelled | FailureKind::ShuttingDown)
                        && self.config.process(&key.process).is_none() =>
                {
                    // Its pool went with a reload while the request waited.
                    let e = ErrorReply::new(
                        ErrorCode::UnknownProcess,
                        format!("`{}` was removed by a configuration reload", key.process),
                    );
                    self.counters.count_error(e.code);
                    Err(e)
                }
                Err(f)
                    if f.kind == FailureKind::ShuttingDown
                        && self
                            .config
                            .process(&key.process)
                            .is_some_and(|p| self.pool_serves(p)) =>
                {
                    // Its pool went with a reload while it ran; run twice it must not be.
                    let e = ErrorReply::new(
                        ErrorCode::WorkerFailed,
                        format!(
                            "`{}`: its pool was removed by a configuration reload while it ran; \
                             it is not run again, since it is not idempotent",
                            key.process
                        ),
                    )
                    .with("reason", "pool_removed");
                    self.counters.count_error(e.code);
                    Err(e)
                }
                Err(f) => {
                    let e = failure_reply(&key.process, f);
                    self.counters.count_error(e.code);
                    Err(e)
                }
            };
            let _ = w.reply.send(answer);
        }
        self.later.push(finished(outcome));
    }

    /// What a finished job teaches: its result goes to the cache, its figures to the tuner and
    /// to the speculation counters. A result is kept only under the version in force as its job
    /// ends: a job run again on the pool its process moved to still carries its old pool's key,
    /// and what an old worker finishes after a change would serve only if the change were undone.
    /// Nor is one from a worker started on files changed on disk before precogd took the change.
    fn learn_from_job(
        &mut self,
        key: JobKey,
        outcome: JobOutcome,
        speculative: bool,
        prepare: bool,
    ) {
        if outcome.stale_code {
            // What a worker on other files saved to resume from is not the version's either.
            self.forget_state(&key);
        }
        if let Ok(result) = &outcome.result
            && !prepare
            && !outcome.stale_code
            && key.version == self.process_version(&key.process)
        {
            self.cache_put(&key, result);
            self.forget_state(&key);
        }
        if speculative {
            self.speculative_done(&key, &outcome);
        }
        self.tuning_job_done(&key, &outcome);
    }

    /// Does the bookkeeping that was put off while replies and jobs went out.
    pub(super) fn run_later(&mut self) {
        for work in std::mem::take(&mut self.later) {
            match work {
                Later::Asked {
                    client,
                    session,
                    key,
                } => self.note_run(client, &session, &key),
                Later::Finished {
                    key,
                    outcome,
                    speculative,
                    prepare,
                } => self.learn_from_job(key, outcome, speculative, prepare),
            }
        }
    }
}

/// Work the engine owes after a command, done once the tasks that command woke (a worker given
/// its job, a connection given its reply) have had their turn: on the path between a request
/// and its answer only the answer's own work is done.
pub(super) enum Later {
    /// A `run` was asked for: the predictor learns it and may start guesses.
    Asked {
        client: Client,
        session: String,
        key: JobKey,
    },
    /// A job finished and its waiters were answered.
    Finished {
        key: JobKey,
        outcome: JobOutcome,
        speculative: bool,
        prepare: bool,
    },
}

/// Maps a job failure to the protocol's error reply.
fn failure_reply(process: &str, f: &crate::pool::JobFailure) -> ErrorReply {
    let (code, reason) = match f.kind {
        FailureKind::Timeout => (ErrorCode::Timeout, "timeout"),
        FailureKind::Oom => (ErrorCode::WorkerFailed, "oom"),
        FailureKind::Crashed => (ErrorCode::WorkerFailed, "crashed"),
        FailureKind::Protocol => (ErrorCode::WorkerFailed, "protocol"),
        FailureKind::WorkerError => (ErrorCode::WorkerFailed, "job_error"),
        FailureKind::Unavailable => (ErrorCode::WorkerFailed, "unavailable"),
        FailureKind::Overloaded => (ErrorCode::Overloaded, "overloaded"),
        FailureKind::Cancelled => (ErrorCode::Internal, "cancelled"),
        FailureKind::ShuttingDown => (ErrorCode::ShuttingDown, "shutting_down"),
    };
    let reply = ErrorReply::new(code, format!("`{process}`: {}", f.message)).with("reason", reason);
    match &f.worker_code {
        Some(worker_code) => reply.with("worker_code", worker_code.as_str()),
        None => reply,
    }
}

impl Engine {
    /// Whether the pool of `process` is up and not stopping: a job its old pool (one a reload
    /// removed) gave up on can be run there.
    fn pool_serves(&self, process: &crate::config::ProcessConfig) -> bool {
        self.pools
            .get(&process.pool)
            .is_some_and(|pool| !pool.is_stopping())
    }
}

/// Wall-clock milliseconds, as stored with cached results.
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
