//! `precogctl bench`: the round trip of a warm `run` against a plain Unix-socket echo measured in
//! the same run, so the ratio means something on a shared, noisy machine.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use crate::client::Client;
use crate::local::LocalDaemon;

/// Where the benchmark's processes run. The echo floor on a VM differs some fifteen-fold between
/// two processes on one CPU (a wake-up is a context switch) and on two (an inter-processor
/// interrupt), and left to the scheduler either happens; so each placement is measured on its
/// own, the echo and the warm run alike.
#[derive(Debug, Clone, Copy)]
enum Placement {
    /// Nothing pinned.
    Scheduled,
    /// The client on one CPU; the echo server and precogd on another (the worker where the
    /// pool's CPUs let the scheduler put it).
    TwoCpus(usize, usize),
    /// The client, the echo server, precogd and its worker all on one CPU.
    OneCpu(usize),
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Placement::Scheduled => "as scheduled",
            Placement::TwoCpus(..) => "client | server on two CPUs",
            Placement::OneCpu(_) => "all on one CPU",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Placement::Scheduled => "scheduled",
            Placement::TwoCpus(..) => "two_cpus",
            Placement::OneCpu(_) => "one_cpu",
        }
    }

    /// CPUs of the client, and of the servers (precogd, the echo server) it starts.
    fn cpus(self) -> Option<(usize, usize)> {
        match self {
            Placement::Scheduled => None,
            Placement::TwoCpus(client, server) => Some((client, server)),
            Placement::OneCpu(cpu) => Some((cpu, cpu)),
        }
    }
}

struct Measured {
    placement: Placement,
    echo: Vec<f64>,
    run: Vec<f64>,
}

pub fn run(rounds: usize, as_json: bool) -> anyhow::Result<()> {
    let allowed = allowed_cpus()?;
    let mut placements = vec![Placement::Scheduled];
    if allowed.len() >= 2 {
        placements.push(Placement::TwoCpus(allowed[0], allowed[1]));
    }
    placements.push(Placement::OneCpu(allowed[0]));

    let mut measured = Vec::new();
    for placement in placements {
        let result = measure(placement, rounds);
        // Whatever happened, the rest of precogctl runs where it may.
        pin(&allowed)?;
        let (echo, run) = result?;
        measured.push(Measured {
            placement,
            echo,
            run,
        });
    }

    if as_json {
        let by_placement: serde_json::Map<String, serde_json::Value> = measured
            .iter()
            .map(|m| {
                let (e50, r50) = (quantile(&m.echo, 0.5), quantile(&m.run, 0.5));
                let v = json!({
                    "echo_us": {"p50": e50, "p99": quantile(&m.echo, 0.99)},
                    "warm_run_us": {"p50": r50, "p99": quantile(&m.run, 0.99)},
                    "ratio_p50": r50 / e50,
                });
                (m.placement.key().to_string(), v)
            })
            .collect();
        println!("{}", json!({"rounds": rounds, "placements": by_placement}));
        return Ok(());
    }
    println!("{rounds} round trips each, same machine, same run; median (p99) in microseconds");
    println!(
        "{:<28} {:>20} {:>20} {:>8}",
        "placement", "unix-socket echo", "warm run (precogd)", "ratio"
    );
    for m in &measured {
        let (e50, r50) = (quantile(&m.echo, 0.5), quantile(&m.run, 0.5));
        println!(
            "{:<28} {:>20} {:>20} {:>7.2}x",
            m.placement.name(),
            format!("{e50:.1} ({:.1})", quantile(&m.echo, 0.99)),
            format!("{r50:.1} ({:.1})", quantile(&m.run, 0.99)),
            r50 / e50,
        );
    }
    println!(
        "goal: warm run within 3x of the echo; a warm run crosses two processes (precogd, then \
         the worker) where the echo crosses one"
    );
    Ok(())
}

/// The echo floor and the warm runs with the processes placed as `placement` says.
fn measure(placement: Placement, rounds: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut pool = String::from("[[pool]]\nname = \"shop\"\nwarm_min = 1\n");
    if let Placement::OneCpu(cpu) = placement {
        pool.push_str(&format!("cpus = \"{cpu}\"\n"));
    }
    // Children inherit the CPUs of the process that starts them.
    if let Some((_, server)) = placement.cpus() {
        pin(&[server])?;
    }
    let daemon = LocalDaemon::start("", &pool)?;
    let echo_server = start_echo_server(&daemon)?;
    if let Some((client, _)) = placement.cpus() {
        pin(&[client])?;
    }
    let echo = echo_floor(echo_server, rounds)?;
    let run = warm_runs(&daemon, rounds)?;
    Ok((echo, run))
}

/// The CPUs this process may run on.
fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set, filled in by the kernel.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer and size describe `set`, which outlives the call.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    anyhow::ensure!(
        rc == 0,
        "cannot read this process's CPUs: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: CPU_ISSET reads within `set` for any index below CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Runs this process (its calling thread, which is the only one) on `cpus` only.
fn pin(cpus: &[usize]) -> anyhow::Result<()> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: `c` came from the kernel's own set, so it is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: the pointer and size describe `set`, which outlives the call.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    anyhow::ensure!(
        rc == 0,
        "cannot pin to CPUs {cpus:?}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

struct EchoServer {
    child: std::process::Child,
    path: std::path::PathBuf,
}

fn start_echo_server(daemon: &LocalDaemon) -> anyhow::Result<EchoServer> {
    let path = daemon.path().join("echo.sock");
    let listener = UnixListener::bind(&path)?;
    let exe = std::env::current_exe()?;
    let child = crate::cleanup::unblocked(std::process::Command::new(exe))
        .arg("echo-server")
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            listener,
        )))
        .spawn()
        .context("cannot start the echo server")?;
    crate::cleanup::track_daemon(child.id());
    Ok(EchoServer { child, path })
}

/// Round trips of one line through an echo server in another process on a Unix socket — the
/// same shape as a client talking to precogd, minus everything precogd does.
fn echo_floor(mut server: EchoServer, rounds: usize) -> anyhow::Result<Vec<f64>> {
    let stream = UnixStream::connect(&server.path)?;
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
    // The connection is closed, so the server ends by itself from here.
    crate::cleanup::untrack_daemon(server.child.id());
    let _ = server.child.wait();
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
