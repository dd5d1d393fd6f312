//! `precogctl top`: a live view of precogd, refreshed every second.
//!
//! On a terminal it redraws the screen and reads keys without waiting for Enter (`q` or Ctrl-C
//! quits); the terminal's settings are put back on every way out — a key, an error, SIGTERM,
//! SIGHUP or a panic. When stdout is not a terminal it prints one plain line per refresh, which
//! is what scripts and tests read. Figures come over D-Bus, or the socket when the bus is out
//! of reach.

use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::sys::termios::{LocalFlags, SetArg, Termios, tcgetattr, tcsetattr};
use precog::control::{Bus, view};
use serde_json::Value;

use crate::dbus_client::{Source, runtime};

const REFRESH: Duration = Duration::from_secs(1);
/// Hot processes shown when the stats carry per-process figures.
const HOT_SHOWN: usize = 5;

#[derive(clap::Args, Debug)]
pub struct TopArgs {
    /// Stop after this many refreshes.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

/// Set by SIGTERM or SIGHUP so that the loop ends and the terminal is restored.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn run(args: &TopArgs, bus: &Bus, socket: &Path) -> anyhow::Result<()> {
    let rt = runtime()?;
    let mut source = rt.block_on(Source::open(bus, socket))?;
    let interactive = std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    let _terminal = if interactive {
        Some(RawTerminal::enter()?)
    } else {
        None
    };

    let mut refreshes = 0u64;
    let mut before: Option<(Instant, Value)> = None;
    loop {
        let stats = rt.block_on(source.stats())?;
        let now = Instant::now();
        let rate = before.as_ref().map(|(t, prev)| {
            let runs = served_total(&stats).saturating_sub(served_total(prev));
            runs as f64 / now.duration_since(*t).as_secs_f64().max(0.001)
        });
        let mut out = std::io::stdout().lock();
        if interactive {
            // Home, clear, then the screen; `\r\n` keeps columns right whatever the tty does.
            let screen = render_screen(&stats, rate).join("\r\n");
            write!(out, "\x1b[H\x1b[2J{screen}\r\n(q to quit)")?;
        } else {
            writeln!(out, "{}", render_line(&stats))?;
        }
        out.flush()?;
        drop(out);
        before = Some((now, stats));

        refreshes += 1;
        if args.count.is_some_and(|n| refreshes >= n) {
            return Ok(());
        }
        let quit = if interactive {
            wait_for_key(REFRESH)?
        } else {
            std::thread::sleep(REFRESH);
            false
        };
        if quit || STOP.load(Ordering::SeqCst) {
            return Ok(());
        }
    }
}

/// Waits up to `timeout` for a key; true when the key asks to quit (or a stop signal came).
fn wait_for_key(timeout: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    let stdin = std::io::stdin();
    loop {
        if STOP.load(Ordering::SeqCst) {
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e).context("cannot wait for keys on stdin"),
        }
        let mut key = [0u8; 1];
        match nix::unistd::read(stdin.as_fd(), &mut key) {
            // End of input, `q`, Ctrl-C or Ctrl-D.
            Ok(0) => return Ok(true),
            Ok(_) if matches!(key[0], b'q' | b'Q' | 3 | 4) => return Ok(true),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("cannot read keys from stdin"),
        }
    }
}

/// The terminal in key-at-a-time mode; dropping it restores the saved settings and the cursor.
struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    fn enter() -> anyhow::Result<RawTerminal> {
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).context("cannot read the terminal settings")?;
        let mut raw = saved.clone();
        // No line editing, no echo, and Ctrl-C as a key rather than a signal, so that quitting
        // always passes through the restore below. Output processing stays on.
        raw.local_flags
            .remove(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).context("cannot set the terminal")?;
        let action = SigAction::new(
            SigHandler::Handler(on_stop_signal),
            SaFlags::empty(),
            SigSet::empty(),
        );
        for signal in [Signal::SIGTERM, Signal::SIGHUP] {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            unsafe { sigaction(signal, &action) }.context("cannot handle stop signals")?;
        }
        print!("\x1b[?25l");
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        print!("\x1b[?25h\r\n");
        let _ = std::io::stdout().flush();
        let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn served_total(stats: &Value) -> u64 {
    ["cache", "inflight", "warm", "cold"]
        .iter()
        .map(|k| num(&stats["served"][*k]))
        .sum()
}

/// One line per refresh, for pipes and logs.
pub fn render_line(stats: &Value) -> String {
    let served = &stats["served"];
    let pools = stats["pools"].as_object();
    let sum = |f: &str| -> u64 {
        pools
            .map(|m| m.values().map(|p| num(&p[f])).sum())
            .unwrap_or(0)
    };
    format!(
        "up={}s requests={} served cache={} inflight={} warm={} cold={} hit={:.1}% \
         workers={} busy={} max={} spec used={} wasted={}",
        num(&stats["uptime_s"]),
        num(&stats["requests"]),
        num(&served["cache"]),
        num(&served["inflight"]),
        num(&served["warm"]),
        num(&served["cold"]),
        view::hit_ratio(stats) * 100.0,
        sum("workers"),
        sum("busy"),
        sum("workers_max"),
        num(&stats["speculation"]["used"]),
        num(&stats["speculation"]["wasted"]),
    )
}

/// The full-screen view: header, served counts, speculation, pools, hot processes.
pub fn render_screen(stats: &Value, runs_per_s: Option<f64>) -> Vec<String> {
    let served = &stats["served"];
    let spec = &stats["speculation"];
    let mut lines = vec![
        format!(
            "precogd {}  up {} s  requests {}  runs/s {}",
            stats["version"].as_str().unwrap_or("?"),
            num(&stats["uptime_s"]),
            num(&stats["requests"]),
            runs_per_s.map_or("-".to_string(), |r| format!("{r:.1}")),
        ),
        format!(
            "served  cache {}  inflight {}  warm {}  cold {}   hit ratio {:.1}%   p50 {} us  \
             p99 {} us",
            num(&served["cache"]),
            num(&served["inflight"]),
            num(&served["warm"]),
            num(&served["cold"]),
            view::hit_ratio(stats) * 100.0,
            num(&stats["run_latency_us"]["p50"]),
            num(&stats["run_latency_us"]["p99"]),
        ),
        format!(
            "speculation  used {}  wasted {}  precision {}   sessions {}  cache {}",
            num(&spec["used"]),
            num(&spec["wasted"]),
            match spec["used"].as_u64().unwrap_or(0) + spec["wasted"].as_u64().unwrap_or(0) {
                0 => "-".to_string(),
                _ => format!("{:.1}%", spec["precision"].as_f64().unwrap_or(0.0) * 100.0),
            },
            num(&stats["sessions"]["active"]),
            crate::counted(
                stats["cache"]["entries"].as_u64().unwrap_or(0),
                "entry",
                "entries"
            ),
        ),
        String::new(),
        format!(
            "{:<12} {:>7} {:>5} {:>8} {:>5} {:>8} {:>7} {:>8} {:>6}",
            "POOL", "WORKERS", "BUSY", "STARTING", "MAX", "QUEUED", "JOBS", "FAILED", "OOM"
        ),
    ];
    for (name, p) in stats["pools"].as_object().into_iter().flatten() {
        lines.push(format!(
            "{:<12} {:>7} {:>5} {:>8} {:>5} {:>8} {:>7} {:>8} {:>6}",
            name,
            num(&p["workers"]),
            num(&p["busy"]),
            num(&p["starting"]),
            num(&p["workers_max"]),
            num(&p["queued_on_demand"]) + num(&p["queued_speculative"]),
            num(&p["jobs_ok"]),
            num(&p["jobs_failed"]),
            num(&p["oom_kills"]),
        ));
    }
    let hot = hot_processes(stats);
    if !hot.is_empty() {
        lines.push(String::new());
        lines.push(format!("{:<28} {:>8}", "HOT PROCESS", "RUNS"));
        for (name, runs) in hot {
            lines.push(format!("{name:<28} {runs:>8}"));
        }
    }
    lines
}

/// The most-run processes, when the stats carry a `processes` object of per-process figures.
fn hot_processes(stats: &Value) -> Vec<(String, u64)> {
    let mut hot: Vec<(String, u64)> = stats["processes"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, p)| {
            let runs = p["runs"].as_u64().or_else(|| p.as_u64()).unwrap_or(0);
            (name.clone(), runs)
        })
        .collect();
    hot.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    hot.truncate(HOT_SHOWN);
    hot
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stats() -> Value {
        json!({
            "version": "0.1.0", "uptime_s": 9, "requests": 4,
            "served": {"cache": 1, "inflight": 0, "warm": 3, "cold": 0},
            "pools": {"shop": {"workers": 2, "busy": 1, "workers_max": 8, "jobs_ok": 3}},
        })
    }

    #[test]
    fn plain_line_carries_the_counts() {
        let line = render_line(&stats());
        assert!(line.contains("hit=25.0%"), "{line}");
        assert!(line.contains("workers=2 busy=1 max=8"), "{line}");
        assert!(line.contains("spec used=0 wasted=0"), "{line}");
    }

    #[test]
    fn screen_lists_pools_and_hot_processes_when_present() {
        let plain = render_screen(&stats(), None);
        assert!(plain.iter().any(|l| l.starts_with("shop ")));
        assert!(!plain.iter().any(|l| l.starts_with("HOT PROCESS")));

        let mut s = stats();
        s["processes"] = json!({"calc_shipping": {"runs": 7}, "apply_coupon": {"runs": 9}});
        let screen = render_screen(&s, Some(2.0));
        let hot = screen.iter().position(|l| l.starts_with("HOT")).unwrap();
        assert!(screen[hot + 1].starts_with("apply_coupon"));
        assert!(screen[0].contains("runs/s 2.0"));
    }
}
