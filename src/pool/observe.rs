//! What precogd reads of a worker from outside its protocol: its CPU time where no cgroup counts
//! it, and its stderr, logged with a rate limit so a chatty worker cannot flood the journal.

use std::collections::VecDeque;
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

/// Lines of a worker's stderr held back by the rate limit that are kept, the latest ones: when
/// the stream ends they are logged, so a worker that dies of a long traceback still leaves the
/// line naming its error in the log.
const HELD_LINES: usize = 5;

/// The rate limit on one worker's stderr, with the latest lines it held back.
#[derive(Debug)]
struct StderrLimit {
    limit: LogLimit,
    held: VecDeque<Vec<u8>>,
}

impl StderrLimit {
    fn new(now: Instant) -> StderrLimit {
        StderrLimit {
            limit: LogLimit::new(now),
            held: VecDeque::with_capacity(HELD_LINES),
        }
    }

    /// Takes `line`, read at `now`: returns how many lines the last second dropped (when a new
    /// second begins) and the line if it is to be logged now; otherwise it is held back.
    fn line(&mut self, now: Instant, line: Vec<u8>) -> (u64, Option<Vec<u8>>) {
        let (log, dropped_before) = self.limit.admit(now);
        if dropped_before > 0 {
            // Those were counted; what follows is newer than anything held.
            self.held.clear();
        }
        if log {
            return (dropped_before, Some(line));
        }
        if self.held.len() == HELD_LINES {
            self.held.pop_front();
        }
        self.held.push_back(line);
        (dropped_before, None)
    }

    /// At the end of the stream: how many lines were dropped for good, and the latest lines
    /// held back, to be logged now.
    fn finish(self) -> (u64, Vec<Vec<u8>>) {
        let held: Vec<Vec<u8>> = self.held.into();
        let lost = self.limit.dropped.saturating_sub(held.len() as u64);
        (lost, held)
    }
}

/// Logs what a worker writes on stderr, at most a few lines a second per worker. When the
/// stream ends (the worker exited), the count of lines not logged and the last few held back
/// are logged too.
pub(super) async fn log_stderr(pool: String, pid: u32, stderr: tokio::process::ChildStderr) {
    let mut reader = BufReader::new(stderr);
    let mut buf = vec![0u8; 16 * 1024];
    let mut framer = Framer::new(4096);
    let mut limit = StderrLimit::new(Instant::now());
    let log = |line: &[u8]| {
        tracing::warn!(pool = %pool, pid, "worker: {}", String::from_utf8_lossy(line));
    };
    let mut ended = false;
    while !ended {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => {
                // A last line without its newline is a line too.
                if framer.pending() > 0 {
                    framer.push(b"\n");
                }
                ended = true;
            }
            Ok(n) => framer.push(&buf[..n]),
        }
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
            let (dropped, line) = limit.line(Instant::now(), line);
            if dropped > 0 {
                tracing::warn!(pool = %pool, pid, dropped, "worker stderr lines not logged");
            }
            if let Some(line) = line {
                log(&line);
            }
        }
    }
    let (dropped, held) = limit.finish();
    if dropped > 0 {
        tracing::warn!(pool = %pool, pid, dropped,
            "worker stderr lines not logged; its last {} follow", held.len());
    }
    for line in &held {
        log(line);
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

    fn lines(range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
        range.map(|i| format!("line {i}").into_bytes()).collect()
    }

    #[test]
    fn the_last_lines_held_back_are_given_at_the_end_with_the_count_of_the_rest() {
        let t0 = Instant::now();
        let mut limit = StderrLimit::new(t0);
        let logged: Vec<Vec<u8>> = lines(0..20)
            .into_iter()
            .filter_map(|l| limit.line(t0, l).1)
            .collect();
        assert_eq!(logged, lines(0..LINES_PER_SECOND as usize));
        let (dropped, held) = limit.finish();
        assert_eq!(held, lines(20 - HELD_LINES..20));
        assert_eq!(dropped, 20 - LINES_PER_SECOND as u64 - HELD_LINES as u64);
    }

    #[test]
    fn lines_held_back_in_an_earlier_second_are_counted_then_and_not_given_at_the_end() {
        let t0 = Instant::now();
        let mut limit = StderrLimit::new(t0);
        for l in lines(0..10) {
            limit.line(t0, l);
        }
        let later = t0 + Duration::from_millis(1500);
        let (dropped, line) = limit.line(later, b"after".to_vec());
        assert_eq!(
            (dropped, line),
            (10 - u64::from(LINES_PER_SECOND), Some(b"after".to_vec()))
        );
        assert_eq!(limit.finish(), (0, Vec::new()));
    }
}
