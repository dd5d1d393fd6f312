//! One job's exchange with its worker: the job line goes out, reply lines come back until a
//! result, an error, a timeout, a take-back or the loss of the worker.

use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::Notify;

use super::observe::LogLimit;
use super::{FailureKind, JobOutcome, Priority, Queued};
use crate::protocol::{Framer, WorkerReplyKind, decode_worker_reply, encode_job};

/// Largest line a worker may write; a longer one breaks the protocol.
const MAX_REPLY: usize = 8 << 20;
/// Bytes of blank lines and replies naming another job a worker may write during one job: past
/// this, reading them would keep precogd busy until the job's timeout, slowing every request.
const MAX_IGNORED: usize = 8 << 20;

/// How long a worker whose output ended has to be seen exiting before it counts as one that
/// closed its output and lives on: a process's pipes close a moment before it can be reaped.
const EXIT_GRACE: Duration = Duration::from_millis(500);

/// How long the output of a worker that exited is still read for lines it wrote before it
/// exited. Those are in the pipe already; only a process it left holding the pipe makes this
/// wait at all.
const DRAIN: Duration = Duration::from_millis(200);

/// Most of a discarded reply shown in the log.
const SHOWN: usize = 200;
/// Bytes of a line that is not a reply quoted in the job's error, so its author knows it.
const SHOWN_IN_ERROR: usize = 80;

/// How a job on this worker ended.
pub(super) enum Ran {
    Answered(JobOutcome),
    /// The worker exited with status 0 before answering: it ended itself between jobs, as a
    /// worker that recycles itself does, most likely before it read this one. The job may go to
    /// another worker.
    Exited {
        checkpoint: Option<Value>,
        exec_us: u64,
    },
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
    /// The worker's pool and process, as the log names them.
    pool: String,
    pid: u32,
    /// Replies discarded for naming another job are logged within this limit.
    discards: LogLimit,
}

impl Pipes {
    pub(super) fn new(stdin: ChildStdin, stdout: ChildStdout, pool: &str, pid: u32) -> Self {
        Pipes {
            stdin,
            stdout: BufReader::new(stdout),
            framer: Framer::new(MAX_REPLY),
            buf: vec![0u8; 8 * 1024],
            pool: pool.to_string(),
            pid,
            discards: LogLimit::new(Instant::now()),
        }
    }
}

/// A worker's process and its pipes.
pub(super) struct Proc<'a> {
    pub(super) pipes: &'a mut Pipes,
    pub(super) child: &'a mut Child,
}

/// When a job's time is up.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadline {
    timeout: Duration,
    start_timeout: Duration,
    /// For a new worker's first job: no deadline before this.
    floor: Option<Instant>,
}

impl Deadline {
    /// The limits of a job on a worker started at `started` that has taken `served` jobs.
    ///
    /// A job written to a worker that is still starting (loading a model, opening a catalogue)
    /// waits in the pipe until the worker reads it, and when that happens cannot be seen from
    /// here. So a worker's first job ends at the later of `timeout` after it was written and
    /// `start_timeout + timeout` after the worker started: a worker that starts within
    /// `start_timeout` still has a whole `timeout` for the job, and one that hangs is killed
    /// `start_timeout + timeout` after its start at the latest (or `timeout` after the write, if
    /// that is later). The price: a fresh worker's first job that hangs is noticed up to
    /// `start_timeout` later than another job would be. Later jobs find the worker running.
    pub(super) fn new(
        timeout: Duration,
        start_timeout: Duration,
        started: Instant,
        served: u64,
    ) -> Deadline {
        let floor = (served == 0).then(|| later(later(started, start_timeout), timeout));
        Deadline {
            timeout,
            start_timeout,
            floor,
        }
    }

    /// The deadline of a job (re)started at `now`, and whether the worker's start-up set it.
    fn at(&self, now: Instant) -> (Instant, bool) {
        let plain = later(now, self.timeout);
        match self.floor {
            Some(floor) if floor > plain => (floor, true),
            _ => (plain, false),
        }
    }

    /// Why a job whose deadline came was lost.
    fn missed(&self, by_start: bool) -> String {
        let ms = self.timeout.as_millis();
        if by_start {
            let start_ms = self.start_timeout.as_millis();
            format!(
                "worker did not answer its first job within start_timeout + timeout \
                 ({start_ms} + {ms} ms) of its start (does it flush stdout after each reply?)"
            )
        } else {
            format!("job ran past its {ms} ms timeout")
        }
    }
}

/// `t + d`, or a century on when that is past what an `Instant` holds. Deadlines made from
/// configured durations go through here, so no value can make the daemon panic.
pub fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(crate::config::Span::MAX))
        .unwrap_or(t)
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
/// must not inherit the time the guess spent waiting for spare CPU at the lowest weight, nor the
/// time since an earlier request joined.
///
/// The worker's own exit is watched too: a worker that exits, even one whose pipes a process
/// it left behind keeps open, is reported at once with its exit status.
pub(super) async fn run_job(
    queued: &Queued,
    job_id: u64,
    limits: Deadline,
    worker: Proc<'_>,
    take_back: &Notify,
    shutting_down: &AtomicBool,
    joinable: Joinable<'_>,
) -> Ran {
    let Proc { pipes, child } = worker;
    let Pipes {
        stdin,
        stdout,
        framer,
        buf,
        pool,
        pid,
        discards,
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
    // Bytes of lines that are no reply to this job (blank, or naming another job).
    let mut ignored = 0usize;
    let lost = |kind, message: String, checkpoint: Option<Value>| Ran::Lost {
        kind,
        message,
        checkpoint,
        exec_us: start.elapsed().as_micros() as u64,
    };

    let deadline_at = |now: Instant| {
        let (at, by_start) = limits.at(now);
        (tokio::time::Instant::from_std(at), by_start)
    };
    let (mut deadline, mut by_start) = deadline_at(Instant::now());
    let mut real = job.priority == Priority::OnDemand;
    // A job line longer than the pipe holds waits for the worker to read it: the deadline, a
    // stop and a take-back hold meanwhile too.
    let write = stdin.write_all(&line);
    tokio::pin!(write);
    loop {
        let written = tokio::select! {
            r = &mut write => r,
            _ = tokio::time::sleep_until(deadline) => {
                return lost(FailureKind::Timeout, limits.missed(by_start), None);
            }
            _ = take_back.notified() => {
                if shutting_down.load(Ordering::Relaxed) {
                    return lost(FailureKind::ShuttingDown, "the pool stopped".into(), None);
                }
                if real || joinable.joins.any() {
                    continue;
                }
                return lost(FailureKind::Cancelled,
                    "worker taken back for an on-demand request".into(), None);
            }
        };
        if let Err(e) = written {
            // Most likely the worker has exited since its last reply.
            return match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
                Ok(status) => ended(status, None, start),
                Err(_) => lost(
                    FailureKind::Crashed,
                    format!("worker closed its input: {e}"),
                    None,
                ),
            };
        }
        break;
    }
    // Set once the worker process has exited: its exit status, and until when lines it wrote
    // before are still read.
    let mut exited: Option<std::io::Result<ExitStatus>> = None;
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        while let Some(next) = framer.next_line() {
            let Ok(line) = next else {
                return lost(
                    FailureKind::Protocol,
                    format!("worker wrote a line over {MAX_REPLY} bytes"),
                    checkpoint,
                );
            };
            // A blank line (print's own newline after a reply's) is no reply, as from clients.
            if line.iter().all(u8::is_ascii_whitespace) {
                ignored += line.len() + 1;
                if ignored > MAX_IGNORED {
                    return lost(FailureKind::Protocol, flooded(), checkpoint);
                }
                continue;
            }
            match decode_worker_reply(&line) {
                Err(e) => {
                    let mut start = &line[..line.len().min(SHOWN_IN_ERROR)];
                    // Not into the middle of a character the cut would split.
                    if let Err(e) = std::str::from_utf8(start)
                        && e.error_len().is_none()
                    {
                        start = &start[..e.valid_up_to()];
                    }
                    let shown = String::from_utf8_lossy(start);
                    let message = format!("{e}: {shown:?}");
                    return lost(FailureKind::Protocol, message, checkpoint);
                }
                Ok(reply) if reply.job != Some(job_id) => {
                    log_discard(pool, *pid, discards, job_id, &line);
                    ignored += line.len() + 1;
                    if ignored > MAX_IGNORED {
                        return lost(FailureKind::Protocol, flooded(), checkpoint);
                    }
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
                    WorkerReplyKind::Error { message, code } => {
                        let failure = super::JobFailure {
                            kind: FailureKind::WorkerError,
                            message,
                            worker_code: code,
                        };
                        return Ran::Answered(answered(Err(failure), start, checkpoint));
                    }
                },
            }
        }

        let read = tokio::select! {
            r = stdout.read(buf) => r,
            status = child.wait(), if exited.is_none() => {
                exited = Some(status);
                drain_until = Some(tokio::time::Instant::now() + DRAIN);
                continue;
            }
            _ = tokio::time::sleep_until(drain_until.unwrap_or(deadline)),
                if drain_until.is_some() =>
            {
                let status = exited.take().expect("set with drain_until");
                return ended(status, checkpoint, start);
            }
            _ = tokio::time::sleep_until(deadline) => {
                return lost(FailureKind::Timeout, limits.missed(by_start), checkpoint);
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
                (deadline, by_start) = deadline_at(Instant::now());
                tracing::debug!(job = job_id, "a request joined; the job's deadline restarts");
                continue;
            }
        };
        match read {
            Ok(0) => {
                let status = match exited.take() {
                    Some(status) => Some(status),
                    None => tokio::time::timeout(EXIT_GRACE, child.wait()).await.ok(),
                };
                return match status {
                    Some(status) => ended(status, checkpoint, start),
                    None => lost(
                        FailureKind::Crashed,
                        "worker closed its output".into(),
                        checkpoint,
                    ),
                };
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

/// Why a job failed whose worker wrote more than [`MAX_IGNORED`] bytes of lines that are no
/// reply to it.
fn flooded() -> String {
    format!(
        "worker wrote over {} MiB of blank lines or replies naming another job during the job",
        MAX_IGNORED >> 20
    )
}

/// A job whose worker exited before answering it.
fn ended(status: std::io::Result<ExitStatus>, checkpoint: Option<Value>, start: Instant) -> Ran {
    let exec_us = start.elapsed().as_micros() as u64;
    let message = match status {
        Ok(status) if status.success() => {
            return Ran::Exited {
                checkpoint,
                exec_us,
            };
        }
        Ok(status) => format!("worker exited during the job ({status})"),
        Err(e) => format!("worker exited during the job (its status is unknown: {e})"),
    };
    Ran::Lost {
        kind: FailureKind::Crashed,
        message,
        checkpoint,
        exec_us,
    }
}

/// Logs a reply that names another job than the one in progress (within the worker's limit):
/// the job then looks to its client like a timeout, and the log says why.
fn log_discard(pool: &str, pid: u32, limit: &mut LogLimit, job: u64, line: &[u8]) {
    let (log, dropped) = limit.admit(Instant::now());
    if dropped > 0 {
        tracing::warn!(pool = %pool, pid, dropped, "discarded worker replies not logged");
    }
    if log {
        let shown = String::from_utf8_lossy(&line[..line.len().min(SHOWN)]);
        tracing::warn!(pool = %pool, pid, job,
            "discarded a worker reply whose `job` is not {job}, the number of the job in \
             progress: {shown}");
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
        stale_code: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_first_job_sent_while_its_worker_starts_has_start_timeout_on_top_of_timeout() {
        let started = Instant::now();
        let d = Deadline::new(2 * S, 10 * S, started, 0);
        // Written at once: the worker may take 10 s to start, then has its 2 s.
        assert_eq!(d.at(started), (started + 12 * S, true));
        // Joined (or written) late, when the allowance is spent: the plain timeout.
        assert_eq!(d.at(started + 11 * S), (started + 13 * S, false));
        assert!(
            d.missed(true)
                .contains("start_timeout + timeout (10000 + 2000 ms)")
        );
        // The first job is where a worker that buffers its replies shows.
        assert!(
            d.missed(true)
                .ends_with("(does it flush stdout after each reply?)")
        );
        assert_eq!(d.missed(false), "job ran past its 2000 ms timeout");
    }

    #[test]
    fn later_jobs_and_a_zero_start_timeout_have_the_plain_timeout() {
        let started = Instant::now();
        let second = Deadline::new(2 * S, 10 * S, started, 1);
        assert_eq!(second.at(started + S), (started + 3 * S, false));
        let none = Deadline::new(2 * S, Duration::ZERO, started, 0);
        assert_eq!(none.at(started + S), (started + 3 * S, false));
    }

    #[test]
    fn an_enormous_start_timeout_does_not_overflow() {
        let started = Instant::now();
        let d = Deadline::new(2 * S, Duration::from_secs(u64::MAX), started, 0);
        let (at, by_start) = d.at(started);
        assert!(by_start && at > started + 1_000_000 * S);
    }
}
