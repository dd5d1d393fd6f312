//! What precogd reads of a worker from outside its protocol: its CPU time where no cgroup counts
//! it, and its stderr, logged with a rate limit so a chatty worker cannot flood the journal.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, BufReader};

use super::Shared;
use crate::protocol::Framer;

/// CPU time worker `id` (process `pid`) and what it forked have used so far: from its cgroup,
/// else from `/proc` (the worker alone).
pub(super) fn worker_cpu_ns(shared: &Shared, id: u64, pid: u32) -> Option<u64> {
    shared
        .placement
        .as_ref()
        .and_then(|p| p.worker_cpu_ns(id))
        .or_else(|| proc_cpu_ns(pid))
}

/// CPU time of a process from `/proc/<pid>/stat` (user + system), in nanoseconds.
fn proc_cpu_ns(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 2..];
    let mut fields = after.split(' ');
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some((utime + stime) * 1_000_000_000 / hz)
}

/// Lines logged a second, per worker and source, before the rest are only counted.
const LINES_PER_SECOND: u32 = 5;

/// A per-worker rate limit on log lines, so a chatty or broken worker cannot flood the journal.
#[derive(Debug)]
pub(super) struct LogLimit {
    window: Instant,
    logged: u32,
    dropped: u64,
}

impl LogLimit {
    pub(super) fn new(now: Instant) -> LogLimit {
        LogLimit {
            window: now,
            logged: 0,
            dropped: 0,
        }
    }

    /// Whether one more line may be logged at `now`; and, when a new second begins, how many
    /// lines the last one dropped (worth a line of its own).
    pub(super) fn admit(&mut self, now: Instant) -> (bool, u64) {
        let mut dropped_before = 0;
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            dropped_before = self.dropped;
            self.window = now;
            self.logged = 0;
            self.dropped = 0;
        }
        if self.logged < LINES_PER_SECOND {
            self.logged += 1;
            (true, dropped_before)
        } else {
            self.dropped += 1;
            (false, dropped_before)
        }
    }
}

/// Logs what a worker writes on stderr, at most a few lines a second per worker.
pub(super) async fn log_stderr(pool: String, pid: u32, stderr: tokio::process::ChildStderr) {
    let mut reader = BufReader::new(stderr);
    let mut buf = vec![0u8; 16 * 1024];
    let mut framer = Framer::new(4096);
    let mut limit = LogLimit::new(Instant::now());
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        framer.push(&buf[..n]);
        loop {
            let line = match framer.next_line() {
                None => break,
                Some(Ok(l)) => l,
                Some(Err(_)) => {
                    // An endless line: keep its start, drop the rest.
                    framer = Framer::new(4096);
                    b"(a line of over 4 KiB was cut)".to_vec()
                }
            };
            let (log, dropped) = limit.admit(Instant::now());
            if dropped > 0 {
                tracing::warn!(pool = %pool, pid, dropped, "worker stderr lines not logged");
            }
            if log {
                tracing::warn!(pool = %pool, pid, "worker: {}", String::from_utf8_lossy(&line));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_lines_a_second_are_logged_and_the_rest_counted_once_the_second_is_over() {
        let t0 = Instant::now();
        let mut limit = LogLimit::new(t0);
        let admitted = (0..20).filter(|_| limit.admit(t0).0).count();
        assert_eq!(admitted, LINES_PER_SECOND as usize);
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(limit.admit(later), (true, 20 - u64::from(LINES_PER_SECOND)));
        assert_eq!(limit.admit(later), (true, 0));
    }
}
