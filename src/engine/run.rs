//! Answering `run`: from the cache, by joining a job already in flight, or on a worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use super::{Client, Command, Engine, Reply, json_map};
use crate::pool::{FailureKind, Job, JobOutcome, Priority};
use crate::protocol::{ErrorCode, ErrorReply};

/// A job's identity: whose it is, which process, which inputs (canonical JSON). Results are
/// never shared between client users.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobKey {
    pub owner: u32,
    pub process: String,
    pub inputs: String,
}

/// A job on its way, and the requests waiting for it.
pub(super) struct Inflight {
    waiters: Vec<Waiter>,
    speculative: bool,
    cancelled: Arc<AtomicBool>,
    started: Arc<AtomicBool>,
}

struct Waiter {
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
        _session: String,
        process: String,
        inputs: Option<Map<String, Value>>,
        received: Instant,
        reply: oneshot::Sender<Reply>,
    ) {
        let prepared = self.prepare_run(client, &process, inputs.unwrap_or_default());
        let (key, inputs, pool) = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.counters.count_error(e.code);
                let _ = reply.send(Err(e));
                return;
            }
        };

        if let Some(inflight) = self.inflight.get_mut(&key) {
            if !inflight.speculative || inflight.started.load(Ordering::Relaxed) {
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
            let waiters = std::mem::take(&mut old.waiters);
            self.submit(
                key,
                inputs,
                &pool,
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
            &pool,
            Priority::OnDemand,
            Vec::new(),
            reply,
            received,
        );
    }

    /// Checks the process and its inputs; returns the job key, the inputs and the pool name.
    fn prepare_run(
        &self,
        client: Client,
        process: &str,
        given: Map<String, Value>,
    ) -> Result<(JobKey, Map<String, Value>, String), ErrorReply> {
        let Some(proc_cfg) = self.config.process(process) else {
            let shown: String = process.chars().take(64).collect();
            return Err(ErrorReply::new(
                ErrorCode::UnknownProcess,
                format!("no process named `{shown}` is configured"),
            ));
        };
        let mut inputs = Map::new();
        let mut missing = Vec::new();
        for name in &proc_cfg.inputs {
            match given.get(name) {
                Some(v) if !v.is_null() => {
                    inputs.insert(name.clone(), v.clone());
                }
                _ => missing.push(name.as_str()),
            }
        }
        if !missing.is_empty() {
            return Err(ErrorReply::new(
                ErrorCode::MissingInput,
                format!("`{process}` needs input(s) {}", missing.join(", ")),
            )
            .with("missing", json!(missing)));
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
        let key = JobKey {
            owner: client.uid,
            process: process.to_string(),
            inputs: canonical,
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
        let Some(pool) = self.pools.get(pool_name) else {
            let e = ErrorReply::new(ErrorCode::Internal, format!("pool `{pool_name}` is gone"));
            let _ = reply.send(Err(e));
            return;
        };
        let cancelled = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicBool::new(false));
        let rx = pool.submit(Job {
            process: key.process.clone(),
            inputs,
            state: None,
            phase: None,
            priority,
            checkpoints: None,
            cancelled: cancelled.clone(),
            started: started.clone(),
        });
        waiters.push(Waiter {
            reply,
            received,
            joined: false,
        });
        self.inflight.insert(
            key.clone(),
            Inflight {
                waiters,
                speculative: priority == Priority::Speculative,
                cancelled,
                started,
            },
        );
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let outcome = rx.await.unwrap_or_else(|_| JobOutcome {
                result: Err(crate::pool::JobFailure {
                    kind: FailureKind::ShuttingDown,
                    message: "the pool stopped".into(),
                }),
                wait_us: 0,
                exec_us: 0,
                cold: false,
                cpu_ns: 0,
                last_checkpoint: None,
            });
            let _ = tx.send(Command::JobDone { key, outcome }).await;
        });
    }

    pub(super) fn job_done(&mut self, key: JobKey, outcome: JobOutcome) {
        let Some(inflight) = self.inflight.remove(&key) else {
            return;
        };
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
                Err(f) => {
                    let e = failure_reply(&key.process, f);
                    self.counters.count_error(e.code);
                    Err(e)
                }
            };
            let _ = w.reply.send(answer);
        }
    }
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
    ErrorReply::new(code, format!("`{process}`: {}", f.message)).with("reason", reason)
}

/// JSON with object keys sorted and no whitespace, so equal inputs give equal keys.
pub fn canonical_json(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&m[k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let a: Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":[2,{"d":1,"c":2}],"x":null}}"#).unwrap();
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"x":null,"y":[2,{"c":2,"d":1}]},"b":1}"#
        );
    }
}
