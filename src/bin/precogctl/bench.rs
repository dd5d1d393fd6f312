//! `precogctl bench`: the round trip of a warm `run` against a plain Unix-socket echo measured in
//! the same run, so the ratio means something on a shared, noisy machine. Beside the echo it
//! measures a relay floor: the line goes through a relay process and a child of it on pipes, the
//! shape of a warm run (client, precogd, worker) with nothing precogd does, so what precogd adds
//! can be told from what any design with a separate worker process pays.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;

use anyhow::Context;
use precog::config::CpuList;
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
    relay: Vec<f64>,
    run: Vec<f64>,
}

/// The goal: a warm run's median within this many echo medians.
const GOAL: f64 = 3.0;

/// Round trips per block; the three series take turns block by block, so a slow spell of a
/// shared machine falls on all three alike.
const BLOCK: usize = 100;

pub fn run(rounds: usize, as_json: bool) -> anyhow::Result<()> {
    let load = load_average();
    let allowed = allowed_cpus()?;
    let mut placements = vec![Placement::Scheduled];
    if allowed.len() >= 2 {
        placements.push(Placement::TwoCpus(allowed[0], allowed[1]));
    }
    placements.push(Placement::OneCpu(allowed[0]));

    let mut measured = Vec::new();
    for placement in placements {
        let result = measure(placement, rounds, &allowed);
        // Whatever happened, the rest of precogctl runs where it may.
        pin(&allowed)?;
        measured.push(result?);
    }

    if as_json {
        let by_placement: serde_json::Map<String, serde_json::Value> = measured
            .iter()
            .map(|m| {
                let (e50, l50, r50) = (median(&m.echo), median(&m.relay), median(&m.run));
                let v = json!({
                    "echo_us": {"p50": e50, "p99": quantile(&m.echo, 0.99)},
                    "relay_us": {"p50": l50, "p99": quantile(&m.relay, 0.99)},
                    "warm_run_us": {"p50": r50, "p99": quantile(&m.run, 0.99)},
                    "ratio_p50": r50 / e50,
                    "relay_ratio_p50": l50 / e50,
                    "within_goal": r50 <= GOAL * e50,
                });
                (m.placement.key().to_string(), v)
            })
            .collect();
        let machine = json!({"load_average_1m": load, "guest_halt_poll_ns": guest_halt_poll_ns()});
        println!(
            "{}",
            json!({"rounds": rounds, "goal_ratio": GOAL, "placements": by_placement,
                "machine": machine})
        );
        return Ok(());
    }
    println!(
        "{rounds} round trips each, taking turns in blocks of {}; median (p99) in microseconds",
        BLOCK.min(rounds)
    );
    println!(
        "{:<28} {:>16} {:>16} {:>16} {:>8} {:>8}",
        "placement", "echo", "relay floor", "warm run", "relay", "run"
    );
    for m in &measured {
        let (e50, l50, r50) = (median(&m.echo), median(&m.relay), median(&m.run));
        let cell = |v: &[f64]| format!("{:.1} ({:.1})", median(v), quantile(v, 0.99));
        println!(
            "{:<28} {:>16} {:>16} {:>16} {:>7.2}x {:>7.2}x",
            m.placement.name(),
            cell(&m.echo),
            cell(&m.relay),
            cell(&m.run),
            l50 / e50,
            r50 / e50,
        );
    }
    println!(
        "ratios are to the echo. echo: a line through one other process and back. relay floor: \
         through a relay process and a child of it (cat) and back, the shape of a warm run with \
         nothing precogd does. goal: warm run within 3x of the echo"
    );
    let (within, beyond): (Vec<&Measured>, Vec<&Measured>) = measured
        .iter()
        .partition(|m| median(&m.run) <= GOAL * median(&m.echo));
    let names = |ms: &[&Measured]| {
        let v: Vec<&str> = ms.iter().map(|m| m.placement.name()).collect();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join("; ")
        }
    };
    println!(
        "within {GOAL}x: {}. beyond: {}",
        names(&within),
        names(&beyond)
    );
    for note in machine_notes(load, allowed.len(), guest_halt_poll_ns()) {
        println!("{note}");
    }
    Ok(())
}

/// The 1-minute load average when the benchmark starts.
fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// How long an idle virtual CPU polls before it halts, where the guest's idle driver is
/// `haltpoll`; `None` elsewhere (bare metal, other idle drivers).
fn guest_halt_poll_ns() -> Option<u64> {
    let driver = std::fs::read_to_string("/sys/devices/system/cpu/cpuidle/current_driver").ok()?;
    if driver.trim() != "haltpoll" {
        return None;
    }
    let ns = std::fs::read_to_string("/sys/module/haltpoll/parameters/guest_halt_poll_ns").ok()?;
    ns.trim().parse().ok()
}

/// What about this machine sets the figures across CPUs: a process woken on an idle CPU waits
/// for that CPU to wake, which on a virtual machine whose idle CPUs halt at once is a round trip
/// through the hypervisor; and on a busy machine (a load average of the CPUs allowed, or more)
/// the scheduler keeps the processes together.
fn machine_notes(load: Option<f64>, cpus: usize, halt_poll_ns: Option<u64>) -> Vec<String> {
    let mut notes = Vec::new();
    match halt_poll_ns {
        Some(0) => notes.push(
            "this virtual machine's idle CPUs halt at once (guest_halt_poll_ns is 0): a process \
             woken on an idle CPU waits for the hypervisor to wake that CPU"
                .to_string(),
        ),
        Some(ns) => notes.push(format!(
            "this virtual machine's idle CPUs poll up to {} us before they halt",
            ns / 1000
        )),
        None => {}
    }
    // As many runnable tasks as CPUs, on average: few of them fall idle.
    if let Some(load) = load.filter(|l| *l >= cpus as f64) {
        notes.push(format!(
            "load average {load:.2} at the start: on a busy machine the scheduler keeps these \
             processes on fewer CPUs, and the figures as scheduled come near those on one CPU"
        ));
    }
    notes
}

/// The three series with the processes placed as `placement` says; `allowed` are the CPUs
/// precogctl may use.
fn measure(placement: Placement, rounds: usize, allowed: &[usize]) -> anyhow::Result<Measured> {
    // precogd's worker and the relay's child get the same CPUs: the one CPU, else all allowed.
    let worker_cpus = match placement {
        Placement::OneCpu(cpu) => vec![cpu],
        _ => allowed.to_vec(),
    };
    let list = CpuList(worker_cpus.clone());
    let pool = format!(
        "[budget]\ncpus = \"{list}\"\n[[pool]]\nname = \"shop\"\nwarm_min = 1\ncpus = \"{list}\"\n"
    );
    // Children inherit the CPUs of the process that starts them.
    if let Some((_, server)) = placement.cpus() {
        pin(&[server])?;
    }
    let daemon = LocalDaemon::start("", &pool)?;
    let mut echo = EchoServer::start(&daemon, None)?;
    let mut relay = EchoServer::start(&daemon, Some(&worker_cpus))?;
    if let Some((client, _)) = placement.cpus() {
        pin(&[client])?;
    }
    let mut warm = WarmRuns::connect(&daemon)?;
    // The first round trips warm the caches of every process, and precogd's worker.
    echo.round_trips(BLOCK)?;
    relay.round_trips(BLOCK)?;
    warm.round_trips(BLOCK)?;
    let mut m = Measured {
        placement,
        echo: Vec::with_capacity(rounds),
        relay: Vec::with_capacity(rounds),
        run: Vec::with_capacity(rounds),
    };
    let mut left = rounds;
    while left > 0 {
        let n = left.min(BLOCK);
        m.echo.extend(echo.round_trips(n)?);
        m.relay.extend(relay.round_trips(n)?);
        m.run.extend(warm.round_trips(n)?);
        left -= n;
    }
    echo.stop();
    relay.stop();
    Ok(m)
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

/// The set of `cpus`, which must be below CPU_SETSIZE.
fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        // SAFETY: `c` is below CPU_SETSIZE, so CPU_SET writes within `set`.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    set
}

/// Runs this process (its calling thread, which is the only one) on `cpus` only.
fn pin(cpus: &[usize]) -> anyhow::Result<()> {
    let set = cpu_set(cpus);
    // SAFETY: the pointer and size describe `set`, which outlives the call.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    anyhow::ensure!(
        rc == 0,
        "cannot pin to CPUs {cpus:?}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// An echo server in another process, and this process's connection to it.
struct EchoServer {
    child: std::process::Child,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    line: String,
}

/// The request line the echo servers carry: as long as a warm run's.
fn echo_line() -> String {
    json!({"op": "run", "session": "bench", "process": "validate_postal_code",
        "inputs": {"country": "DE", "postal_code": "10115"}})
    .to_string()
        + "\n"
}

impl EchoServer {
    /// A plain echo server, or with `relay_cpus` a relay whose child runs on those CPUs.
    fn start(daemon: &LocalDaemon, relay_cpus: Option<&[usize]>) -> anyhow::Result<EchoServer> {
        let path = daemon.path().join(match relay_cpus {
            Some(_) => "relay.sock",
            None => "echo.sock",
        });
        let listener = UnixListener::bind(&path)?;
        let exe = std::env::current_exe()?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("echo-server");
        if let Some(cpus) = relay_cpus {
            let list = CpuList(cpus.to_vec());
            cmd.arg("--relay").arg("--child-cpus").arg(list.to_string());
        }
        cmd.stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            listener,
        )));
        let child =
            crate::cleanup::spawn_tracked(&mut cmd).context("cannot start the echo server")?;
        let stream = UnixStream::connect(&path)?;
        Ok(EchoServer {
            child,
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            line: echo_line(),
        })
    }

    /// Round trips of one line through the server: the same shape as a client talking to
    /// precogd, minus everything precogd does.
    fn round_trips(&mut self, n: usize) -> anyhow::Result<Vec<f64>> {
        let mut times = Vec::with_capacity(n);
        let mut back = String::new();
        for _ in 0..n {
            let t = Instant::now();
            self.writer.write_all(self.line.as_bytes())?;
            back.clear();
            self.reader.read_line(&mut back)?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
            anyhow::ensure!(back == self.line, "the echo server answered {back:?}");
        }
        Ok(times)
    }

    /// Closes the connection, after which the server ends by itself.
    fn stop(self) {
        let EchoServer {
            mut child,
            reader,
            writer,
            ..
        } = self;
        drop(writer);
        drop(reader);
        crate::cleanup::untrack_daemon(child.id());
        let _ = child.wait();
    }
}

/// The echo server's side: serves one connection on the listening socket given as stdin. With
/// `relay`, each line goes through a child process (`cat`) on pipes and back before the reply.
pub fn echo_server(relay: bool, child_cpus: &[usize]) -> anyhow::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let stdin = std::io::stdin();
    // SAFETY: `EchoServer::start` passes a listening Unix socket as this process's stdin, which
    // nothing else here uses.
    let listener = unsafe { UnixListener::from_raw_fd(stdin.as_raw_fd()) };
    anyhow::ensure!(
        listener.local_addr().is_ok(),
        "echo-server serves `precogctl bench`, which passes it a listening socket as stdin"
    );
    let mut relay = if relay {
        if let Some(c) = child_cpus
            .iter()
            .find(|&&c| c >= libc::CPU_SETSIZE as usize)
        {
            anyhow::bail!("--child-cpus: there is no CPU {c}");
        }
        let set = cpu_set(child_cpus);
        let mut cat = Command::new("cat");
        if !child_cpus.is_empty() {
            // SAFETY: only sched_setaffinity, which is async-signal-safe, runs between fork
            // and exec, on a set built before the fork.
            unsafe {
                cat.pre_exec(move || {
                    let rc = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
                    if rc == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut cat = cat
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start cat on CPUs {child_cpus:?}"))?;
        let to = cat.stdin.take().context("cat's stdin")?;
        let from = BufReader::new(cat.stdout.take().context("cat's stdout")?);
        Some((cat, to, from))
    } else {
        None
    };
    let (stream, _) = listener.accept()?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    let mut back = String::new();
    // A line cut short by the client hanging up is not passed on: `cat` would wait for the rest.
    while reader.read_line(&mut line)? > 0 && line.ends_with('\n') {
        let out = match &mut relay {
            Some((_, to, from)) => {
                to.write_all(line.as_bytes())?;
                back.clear();
                from.read_line(&mut back)?;
                &back
            }
            None => &line,
        };
        writer.write_all(out.as_bytes())?;
        line.clear();
    }
    if let Some((mut cat, to, _)) = relay {
        drop(to);
        let _ = cat.wait();
    }
    Ok(())
}

/// A connection to precogd for round trips of `run` for a trivial micro-process on a warm
/// worker, with inputs that differ every time so that no answer comes from the cache.
struct WarmRuns {
    client: Client,
    sent: usize,
}

impl WarmRuns {
    fn connect(daemon: &LocalDaemon) -> anyhow::Result<WarmRuns> {
        Ok(WarmRuns {
            client: Client::connect(&daemon.socket)?,
            sent: 0,
        })
    }

    fn round_trips(&mut self, n: usize) -> anyhow::Result<Vec<f64>> {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let i = self.sent;
            self.sent += 1;
            let code = format!("{:05}", 10000 + (i % 89999));
            let req = json!({"op": "run", "session": "bench", "process": "validate_postal_code",
                "inputs": {"country": "DE", "postal_code": code, "nonce": i}});
            let t = Instant::now();
            let reply = self
                .client
                .call_ok(&req)
                .context("a benchmark run failed")?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
            anyhow::ensure!(
                reply["served"] == "warm",
                "expected a warm run, got {}",
                reply["served"]
            );
        }
        Ok(times)
    }
}

fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() - 1) as f64 * q).round() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notes_name_what_sets_the_figures_across_cpus() {
        let notes = machine_notes(Some(3.5), 2, Some(0));
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("halt at once"), "{notes:?}");
        assert!(notes[1].starts_with("load average 3.50"), "{notes:?}");
        assert_eq!(
            machine_notes(Some(1.2), 2, Some(200_000)),
            ["this virtual machine's idle CPUs poll up to 200 us before they halt"]
        );
        assert!(machine_notes(Some(0.2), 2, None).is_empty());
    }
}
