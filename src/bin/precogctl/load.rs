//! `precogctl load` (hidden): a bounded load generator for precogd's socket.
//!
//! Many clients, each on its own connection, send a fixed number of mixed requests one after
//! another and time each round trip, while a sampler reads the daemon's resident memory. The
//! report gives latency percentiles, errors by code and the memory curve, so a run shows both
//! speed and whether memory stays flat after warm-up. Only a local Unix socket is ever used.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Concurrent clients, one connection each.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Requests in total, shared evenly among the clients.
    #[arg(long, default_value_t = 1_000_000)]
    requests: usize,
    /// Requests per 100 that are `run` (the rest are split between `event`/`predict` with
    /// `--mix full`, or are `ping`).
    #[arg(long, default_value_t = 10)]
    run_percent: u32,
    /// `basic`: run and ping; `full`: run, event, predict and ping.
    #[arg(long, default_value = "basic")]
    mix: String,
    /// precogd's pid, to sample its resident memory.
    #[arg(long)]
    pid: Option<u32>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 1800)]
    max_seconds: u64,
}

/// What one client saw.
#[derive(Default)]
struct ClientTally {
    latencies_us: Vec<u32>,
    errors: BTreeMap<String, u64>,
    /// The first message seen for each error code, to say what went wrong.
    examples: BTreeMap<String, String>,
}

pub fn run(socket: &Path, args: &LoadArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.requests < args.clients {
        bail!("--requests must be at least --clients, and --clients at least 1");
    }
    let per_client = args.requests / args.clients;
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let done = Arc::new(AtomicBool::new(false));
    let sampler = args.pid.map(|pid| {
        let done = done.clone();
        std::thread::spawn(move || sample_rss(pid, &done))
    });

    let started = Instant::now();
    let handles: Vec<_> = (0..args.clients)
        .map(|client| {
            let socket = socket.to_path_buf();
            let mix = args.mix.clone();
            let run_percent = args.run_percent;
            std::thread::spawn(move || {
                drive_client(&socket, client, per_client, run_percent, &mix, deadline)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(per_client * args.clients);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut examples: BTreeMap<String, String> = BTreeMap::new();
    for h in handles {
        let tally = h
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        latencies.extend(tally.latencies_us);
        for (code, n) in tally.errors {
            *errors.entry(code).or_default() += n;
        }
        for (code, message) in tally.examples {
            examples.entry(code).or_insert(message);
        }
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let rss = sampler.map(|s| s.join().unwrap_or_default());

    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    let mut report = json!({
        "clients": args.clients,
        "requests": latencies.len(),
        "seconds": elapsed.as_secs_f64(),
        "per_second": latencies.len() as f64 / elapsed.as_secs_f64(),
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "max_us": latencies.last().copied().unwrap_or(0),
        "errors": errors,
        "error_examples": examples,
    });
    if let Some(samples) = rss {
        report["rss_kib"] = rss_summary(&samples);
    }
    println!("{report}");
    Ok(())
}

fn drive_client(
    socket: &PathBuf,
    client: usize,
    count: usize,
    run_percent: u32,
    mix: &str,
    deadline: Instant,
) -> anyhow::Result<ClientTally> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut tally = ClientTally {
        latencies_us: Vec::with_capacity(count),
        ..ClientTally::default()
    };
    let session = format!("load-{client}");
    let mut line = String::new();
    for i in 0..count {
        if Instant::now() > deadline {
            bail!("the run passed --max-seconds");
        }
        let mut req = request(&session, client, i, run_percent, mix).to_string();
        req.push('\n');
        let sent = Instant::now();
        writer.write_all(req.as_bytes())?;
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("precogd closed client {client}'s connection");
        }
        tally
            .latencies_us
            .push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
        let reply: Value = serde_json::from_str(&line).context("a reply is not JSON")?;
        if reply["ok"] != json!(true) {
            let code = reply["error"]["code"].as_str().unwrap_or("?").to_string();
            *tally.errors.entry(code.clone()).or_default() += 1;
            tally
                .examples
                .entry(code)
                .or_insert_with(|| reply["error"].to_string());
        }
    }
    Ok(tally)
}

/// The `i`th request of a client: deterministic, so runs are comparable.
fn request(session: &str, client: usize, i: usize, run_percent: u32, mix: &str) -> Value {
    let slot = ((i * 37 + client * 11) % 100) as u32;
    // Few distinct inputs, so identical jobs meet in flight (and in the cache, once there).
    let postal = format!("{:05}", 10115 + (i + client) % 50);
    if slot < run_percent {
        return json!({"id": i, "op": "run", "session": session,
            "process": "validate_postal_code",
            "inputs": {"country": "DE", "postal_code": postal}});
    }
    if mix == "full" {
        let rest = slot - run_percent;
        if rest.is_multiple_of(3) {
            return json!({"id": i, "op": "event", "session": session, "type": "input",
                "target": "postal_code", "attrs": {"country": "DE", "postal_code": postal}});
        }
        if rest % 3 == 1 {
            return json!({"id": i, "op": "predict", "session": session, "n": 5});
        }
    }
    json!({"id": i, "op": "ping"})
}

/// Samples the daemon's resident memory every 100 ms until `done`.
fn sample_rss(pid: u32, done: &AtomicBool) -> Vec<u64> {
    let mut samples = Vec::new();
    while !done.load(Ordering::Relaxed) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
        {
            samples.push(kib);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    samples
}

/// Memory at the start, after warm-up (the end of the first quarter), at the end, and the peak.
fn rss_summary(samples: &[u64]) -> Value {
    let at = |i: usize| samples.get(i).copied().unwrap_or(0);
    json!({
        "samples": samples.len(),
        "start": at(0),
        "warm": at(samples.len() / 4),
        "end": at(samples.len().saturating_sub(1)),
        "peak": samples.iter().copied().max().unwrap_or(0),
    })
}
