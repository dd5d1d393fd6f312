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

/// Logs what a worker writes on stderr, at most a few lines a second per worker.
pub(super) async fn log_stderr(pool: String, pid: u32, stderr: tokio::process::ChildStderr) {
    let mut reader = BufReader::new(stderr);
    let mut buf = vec![0u8; 16 * 1024];
    let mut framer = Framer::new(4096);
    let mut window = Instant::now();
    let (mut logged, mut dropped) = (0u32, 0u64);
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
            if window.elapsed() >= Duration::from_secs(1) {
                if dropped > 0 {
                    tracing::warn!(pool = %pool, pid, dropped, "worker stderr lines not logged");
                }
                window = Instant::now();
                logged = 0;
                dropped = 0;
            }
            if logged < 5 {
                logged += 1;
                tracing::warn!(pool = %pool, pid, "worker: {}", String::from_utf8_lossy(&line));
            } else {
                dropped += 1;
            }
        }
    }
}
