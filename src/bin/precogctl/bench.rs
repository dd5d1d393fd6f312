//! `precogctl bench`: the round trip of a warm `run` against a plain Unix-socket echo measured in
//! the same run, so the ratio means something on a shared, noisy machine.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use crate::client::Client;
use crate::local::LocalDaemon;

pub struct BenchReport {
    pub echo_median_us: f64,
    pub run_median_us: f64,
    pub run_p99_us: f64,
    pub echo_p99_us: f64,
}

pub fn run(rounds: usize, as_json: bool) -> anyhow::Result<()> {
    let daemon = LocalDaemon::start("", "[[pool]]\nname = \"shop\"\nwarm_min = 1\n")?;
    let echo = echo_floor(&daemon, rounds)?;
    let run = warm_runs(&daemon, rounds)?;
    let report = BenchReport {
        echo_median_us: quantile(&echo, 0.5),
        echo_p99_us: quantile(&echo, 0.99),
        run_median_us: quantile(&run, 0.5),
        run_p99_us: quantile(&run, 0.99),
    };
    let ratio = report.run_median_us / report.echo_median_us;
    if as_json {
        println!(
            "{}",
            json!({
                "rounds": rounds,
                "echo_us": {"p50": report.echo_median_us, "p99": report.echo_p99_us},
                "warm_run_us": {"p50": report.run_median_us, "p99": report.run_p99_us},
                "ratio_p50": ratio,
            })
        );
    } else {
        println!("{rounds} round trips each, same machine, same run:");
        println!(
            "  unix-socket echo (floor)   p50 {:8.1} us   p99 {:8.1} us",
            report.echo_median_us, report.echo_p99_us
        );
        println!(
            "  warm run via precogd       p50 {:8.1} us   p99 {:8.1} us",
            report.run_median_us, report.run_p99_us
        );
        println!("  ratio of medians: {ratio:.2}x (goal: within 3x)");
    }
    Ok(())
}

/// Round trips of one line through an echo server in another process on a Unix socket — the
/// same shape as a client talking to precogd, minus everything precogd does.
fn echo_floor(daemon: &LocalDaemon, rounds: usize) -> anyhow::Result<Vec<f64>> {
    let path = daemon.path().join("echo.sock");
    let listener = UnixListener::bind(&path)?;
    let exe = std::env::current_exe()?;
    let mut server = std::process::Command::new(exe)
        .arg("echo-server")
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            listener,
        )))
        .spawn()
        .context("cannot start the echo server")?;
    let stream = UnixStream::connect(&path)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let request = json!({"op": "run", "session": "bench", "process": "validate_postal_code",
        "inputs": {"country": "DE", "postal_code": "10115"}})
    .to_string()
        + "\n";
    let mut times = Vec::with_capacity(rounds);
    let mut line = String::new();
    for i in 0..rounds + 100 {
        let t = Instant::now();
        writer.write_all(request.as_bytes())?;
        line.clear();
        reader.read_line(&mut line)?;
        if i >= 100 {
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    drop(writer);
    drop(reader);
    let _ = server.wait();
    Ok(times)
}

/// The echo server's side: serves one connection on the listening socket given as stdin.
pub fn echo_server() -> anyhow::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let stdin = std::io::stdin();
    // SAFETY: `echo_floor` passes a listening Unix socket as this process's stdin, which nothing
    // else here uses.
    let listener = unsafe { UnixListener::from_raw_fd(stdin.as_raw_fd()) };
    let (stream, _) = listener.accept()?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 {
        writer.write_all(line.as_bytes())?;
        line.clear();
    }
    Ok(())
}

/// Round trips of `run` for a trivial micro-process on a warm worker, with inputs that differ
/// every time so that no answer comes from the cache.
fn warm_runs(daemon: &LocalDaemon, rounds: usize) -> anyhow::Result<Vec<f64>> {
    let mut client = Client::connect(&daemon.socket)?;
    let mut times = Vec::with_capacity(rounds);
    for i in 0..rounds + 100 {
        let code = format!("{:05}", 10000 + (i % 89999));
        let req = json!({"op": "run", "session": "bench", "process": "validate_postal_code",
            "inputs": {"country": "DE", "postal_code": code, "nonce": i}});
        let t = Instant::now();
        let reply = client.call_ok(&req).context("a benchmark run failed")?;
        let us = t.elapsed().as_secs_f64() * 1e6;
        // The first runs warm the worker and the caches of both processes.
        if i >= 100 {
            anyhow::ensure!(
                reply["served"] == "warm",
                "expected a warm run, got {}",
                reply["served"]
            );
            times.push(us);
        }
    }
    Ok(times)
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() - 1) as f64 * q).round() as usize]
}
