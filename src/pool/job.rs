//! One job's exchange with its worker: the job line goes out, reply lines come back until a
//! result, an error, a timeout, a take-back or the loss of the worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::Notify;

use super::{FailureKind, JobOutcome, Priority, Queued};
use crate::protocol::{Framer, WorkerReplyKind, decode_worker_reply, encode_job};

/// Largest line a worker may write; a longer one breaks the protocol.
const MAX_REPLY: usize = 8 << 20;

/// How a job on this worker ended.
pub(super) enum Ran {
    Answered(JobOutcome),
    /// The worker cannot be used again; the job may be retried.
    Lost {
        kind: FailureKind,
        message: String,
        checkpoint: Option<Value>,
        exec_us: u64,
    },
}

/// A worker's pipes: jobs go in on stdin, replies come back on stdout, cut into lines.
pub(super) struct Pipes {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    framer: Framer,
    /// Replies are mostly small and the framer gathers long ones, so a small buffer does.
    buf: Vec<u8>,
}

impl Pipes {
    pub(super) fn new(stdin: ChildStdin, stdout: ChildStdout) -> Self {
        Pipes {
            stdin,
            stdout: BufReader::new(stdout),
            framer: Framer::new(MAX_REPLY),
            buf: vec![0u8; 8 * 1024],
        }
    }
}

/// Real requests joining a job that started as a guess. The engine tells of each join; the
/// worker running the job restarts its deadline for each, and the pool retries a joined job
/// that lost its worker as on-demand work.
#[derive(Debug, Default)]
pub struct Joins {
    any: AtomicBool,
    signal: Notify,
}

impl Joins {
    /// A real request now waits for the job.
    pub fn join(&self) {
        self.any.store(true, Ordering::Relaxed);
        self.signal.notify_one();
    }

    /// Whether a real request waits for the job.
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }
}

/// A job that real requests may join while it runs.
pub(super) struct Joinable<'a> {
    pub(super) joins: &'a Joins,
    /// Makes a guess real on its worker, at the first join: its CPU class, and no more taking
    /// the worker back.
    pub(super) promote: &'a mut (dyn FnMut() + Send),
}

/// Runs one job. Each real request that joins a guess gets a full timeout from that moment: it
/// must not inherit the time the guess spent waiting for spare CPU in the idle class, nor the
/// time since an earlier request joined.
pub(super) async fn run_job(
    queued: &Queued,
    job_id: u64,
    timeout: Duration,
    pipes: &mut Pipes,
    take_back: &Notify,
    shutting_down: &AtomicBool,
    joinable: Joinable<'_>,
) -> Ran {
    let Pipes {
        stdin,
        stdout,
        framer,
        buf,
    } = pipes;
    let job = &queued.job;
    let line = encode_job(
        job_id,
        &job.process,
        &job.inputs,
        job.state.as_ref(),
        job.phase,
    );
    let start = Instant::now();
    let mut checkpoint: Option<Value> = None;
    let lost = |kind, message: String, checkpoint: Option<Value>| Ran::Lost {
        kind,
        message,
        checkpoint,
        exec_us: start.elapsed().as_micros() as u64,
    };

    if let Err(e) = stdin.write_all(&line).await {
        return lost(
            FailureKind::Crashed,
            format!("worker closed its input: {e}"),
            None,
        );
    }
    let mut deadline = tokio::time::Instant::now() + timeout;
    let mut real = job.priority == Priority::OnDemand;
    loop {
        while let Some(next) = framer.next_line() {
            let Ok(line) = next else {
                return lost(
                    FailureKind::Protocol,
                    format!("worker wrote a line over {MAX_REPLY} bytes"),
                    checkpoint,
                );
            };
            match decode_worker_reply(&line) {
                Err(e) => return lost(FailureKind::Protocol, e.to_string(), checkpoint),
                Ok(reply) if reply.job != Some(job_id) => {
                    tracing::debug!(job = job_id, got = ?reply.job,
                        "discarded a reply for another job");
                }
                Ok(reply) => match reply.kind {
                    WorkerReplyKind::Checkpoint(state) => {
                        if let Some(tell) = &job.checkpoints {
                            tell(state.clone());
                        }
                        checkpoint = Some(state);
                    }
                    WorkerReplyKind::Result(value) => {
                        return Ran::Answered(answered(Ok(value), start, checkpoint));
                    }
                    WorkerReplyKind::Error(message) => {
                        let failure = super::JobFailure {
                            kind: FailureKind::WorkerError,
                            message,
                        };
                        return Ran::Answered(answered(Err(failure), start, checkpoint));
                    }
                },
            }
        }

        let read = tokio::select! {
            r = stdout.read(buf) => r,
            _ = tokio::time::sleep_until(deadline) => {
                let ms = timeout.as_millis();
                return lost(FailureKind::Timeout, format!("job ran past its {ms} ms timeout"),
                    checkpoint);
            }
            _ = take_back.notified() => {
                if shutting_down.load(Ordering::Relaxed) {
                    return lost(FailureKind::ShuttingDown, "the pool stopped".into(),
                        checkpoint);
                }
                if real {
                    // Sent just before a real request joined this guess.
                    continue;
                }
                return lost(FailureKind::Cancelled,
                    "worker taken back for an on-demand request".into(), checkpoint);
            }
            _ = joinable.joins.signal.notified() => {
                if !real {
                    (joinable.promote)();
                }
                real = true;
                deadline = tokio::time::Instant::now() + timeout;
                tracing::debug!(job = job_id, "a request joined; the job's deadline restarts");
                continue;
            }
        };
        match read {
            Ok(0) => {
                return lost(
                    FailureKind::Crashed,
                    "worker exited during the job".into(),
                    checkpoint,
                );
            }
            Ok(n) => framer.push(&buf[..n]),
            Err(e) => {
                return lost(
                    FailureKind::Crashed,
                    format!("cannot read from worker: {e}"),
                    checkpoint,
                );
            }
        }
    }
}

fn answered(
    result: Result<Value, super::JobFailure>,
    start: Instant,
    last_checkpoint: Option<Value>,
) -> JobOutcome {
    JobOutcome {
        result,
        wait_us: 0,
        exec_us: start.elapsed().as_micros() as u64,
        cold: false,
        cpu_ns: 0,
        last_checkpoint,
    }
}
