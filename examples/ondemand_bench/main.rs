//! On-demand first, measured: the p99 latency of real `run` requests with speculation on and
//! off under the same load, and their ratio. Speculation must not slow real requests.
//!
//! Build the daemon first, then run: `cargo build --release --bins --example ondemand_bench &&
//! target/release/examples/ondemand_bench [sessions] [clients] [rounds] [elastic|fixed]
//! [guess_cpu_ms] [idle-loop|nice-loop]`. Each client walks through sessions: an event that makes
//! inputs known, a hint that makes a CPU-heavy idempotent process hot (speculated when
//! speculation is on, never asked for; its chance is above any threshold that feedback can set,
//! so it is issued in every round), a short think time, then a timed `run` of a light process
//! that is never speculated. Each round says how many guesses it issued and how much CPU time
//! precogd used; the summary says how many guesses ran (each one wasted) and how many were
//! cancelled before they started.
//!
//! Both daemons run side by side and the rounds alternate between them (off, on, on, off, ...),
//! so slow phases of a noisy machine hit both modes alike; between rounds the benchmark waits
//! until both pools are idle, so no guess of one round runs into the next. It prints the p99 of
//! each mode over all rounds, the ratio of each pair of rounds, the pooled ratio with the range
//! it takes when the pairs of rounds are drawn again at random (how much of it is luck), and
//! where the slowest runs of each mode spent their time: queued for a worker, on the worker, or
//! elsewhere (socket, engine, scheduling).
//!
//! The test pool is elastic by default (two warm workers, up to three): between rounds the
//! allocator retires the third and starts it again when load returns, and a start's CPU shows in
//! the slowest runs of both modes. `fixed` keeps three workers throughout, so what is left of the
//! difference is speculation's own.
//!
//! Each guess burns `guess_cpu_ms` of CPU time (40 unless given). With 0, guesses cost their
//! bookkeeping, the worker round trip and nothing else, which tells what precog's own handling
//! of speculation costs real requests apart from the CPU time the guesses take.
//!
//! A sixth argument measures what background CPU work costs real requests apart from precog:
//! both daemons run without speculation, and the rounds marked `on` run one busy loop instead,
//! in the benchmark's own cgroup beside precogd and its clients: `idle-loop` in the kernel's idle
//! scheduling class, `nice-loop` in the batch class at nice 19. The first yields to every other
//! task at once, but its CPU counts as idle when the kernel places a waking task; the second only
//! has the lowest weight. (On the VM this was written on, the first cost on-demand p99 over four
//! times, the second nothing; see `src/pool/priority.rs`.) `leaf-loop` runs the loop where a
//! guess runs: in a cgroup leaf at the lowest weight, two levels down (cgroup v1, as root). What
//! it costs is what speculation's CPU time costs real requests with nothing of precog in it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::collections::BTreeMap;

mod busy_loop;
use busy_loop::{BusyLoop, LoopClass};

/// The Python interpreter's own path. A version manager's `python3` in `$PATH` may be a shell
/// script that costs more CPU time per start than the interpreter itself (about 90 ms against
/// 10 ms on the VM this was written on); an installed service names the interpreter.
fn python() -> anyhow::Result<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .context("python3 is needed for the test worker")?;
    let path = String::from_utf8(out.stdout)?.trim().to_string();
    if !out.status.success() || path.is_empty() {
        bail!("python3 did not say where its interpreter is");
    }
    Ok(PathBuf::from(path))
}

fn config(dir: &Path, python: &Path, speculation: bool, fixed: bool) -> String {
    let echo = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workers/echo.py");
    format!(
        r#"[daemon]
cache_dir = "{d}/cache"
state_dir = "{d}/state"
cgroup_parent = "precog-bench-{pid}-{tag}"
socket_group = "root"
allowed_groups = []

[predict]
speculation = {speculation}
per_session = 2

[[pool]]
name = "shop"
warm_min = 0

[[pool]]
name = "t"
command = ["{python}", "{echo}"]
warm_min = {warm}
workers_max = 3
timeout = "10s"

[[process]]
name = "guess"
pool = "t"
inputs = ["n", "cpu_ms"]
idempotent = true

[[process]]
name = "real"
pool = "t"
inputs = ["n", "work_ms"]
"#,
        d = dir.display(),
        pid = std::process::id(),
        // Each daemon needs a cgroup parent of its own, whatever its settings.
        tag = dir
            .file_name()
            .map(|n| n.to_string_lossy().trim_start_matches('.').to_string())
            .unwrap_or_default(),
        echo = echo.display(),
        python = python.display(),
        warm = if fixed { 3 } else { 2 },
    )
}

struct Daemon {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(
        precogd: &Path,
        python: &Path,
        speculation: bool,
        fixed: bool,
    ) -> anyhow::Result<Daemon> {
        let dir = tempfile::tempdir()?;
        let cfg = dir.path().join("precogd.toml");
        std::fs::write(&cfg, config(dir.path(), python, speculation, fixed))?;
        let socket = dir.path().join("precogd.sock");
        let child = Command::new(precogd)
            .arg("--config")
            .arg(&cfg)
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", precogd.display()))?;
        let d = Daemon {
            child,
            socket,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut c) = Conn::open(&d.socket)
                && c.call(&json!({"op": "ping"}))
                    .is_ok_and(|r| r["ok"] == json!(true))
            {
                return Ok(d);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("precogd did not answer within 20 s")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    fn open(path: &Path) -> std::io::Result<Conn> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    fn call(&mut self, req: &Value) -> anyhow::Result<Value> {
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        let mut reply = String::new();
        self.reader.read_line(&mut reply)?;
        Ok(serde_json::from_str(&reply)?)
    }
}

/// One timed `run`: its latency as the client saw it and the daemon's breakdown.
#[derive(Debug, Clone)]
struct Sample {
    total_us: u64,
    wait_us: u64,
    exec_us: u64,
    served: String,
}

impl Sample {
    /// Time neither queued nor on the worker: socket, engine, reply, scheduling of either.
    fn other_us(&self) -> u64 {
        self.total_us.saturating_sub(self.wait_us + self.exec_us)
    }
}

/// Runs the load; returns the samples of the real runs, sorted by latency.
fn load(
    socket: &Path,
    sessions: usize,
    clients: usize,
    tag: &str,
    first_n: usize,
    guess_cpu_ms: u64,
) -> anyhow::Result<Vec<Sample>> {
    let mut threads = Vec::new();
    for c in 0..clients {
        let socket = socket.to_path_buf();
        let tag = tag.to_string();
        threads.push(std::thread::spawn(
            move || -> anyhow::Result<Vec<Sample>> {
                let mut conn = Conn::open(&socket)?;
                let mut out = Vec::new();
                for i in (c..sessions).step_by(clients) {
                    let s = format!("{tag}-{i}");
                    // Inputs unique per round: a guess cached in an earlier round would not run.
                    let n = first_n + i;
                    conn.call(&json!({"op": "event", "session": s, "type": "page_view",
                    "attrs": {"n": n, "cpu_ms": guess_cpu_ms}}))?;
                    // Above any threshold feedback can reach: the guess is never used, and at a
                    // lower chance precog would stop issuing it after the first rounds.
                    conn.call(&json!({"op": "hint", "session": s,
                    "predictions": [{"process": "guess", "p": 0.99}]}))?;
                    std::thread::sleep(Duration::from_millis(5));
                    let t = Instant::now();
                    let r = conn.call(&json!({"op": "run", "session": s, "process": "real",
                    "inputs": {"n": n, "work_ms": 0}}))?;
                    let total_us = t.elapsed().as_micros() as u64;
                    if r["ok"] != json!(true) {
                        bail!("run failed: {r}");
                    }
                    out.push(Sample {
                        total_us,
                        wait_us: r["wait_us"].as_u64().unwrap_or(0),
                        exec_us: r["exec_us"].as_u64().unwrap_or(0),
                        served: r["served"].as_str().unwrap_or("?").to_string(),
                    });
                    conn.call(&json!({"op": "end", "session": s}))?;
                }
                Ok(out)
            },
        ));
    }
    let mut all = Vec::new();
    for t in threads {
        all.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("a client panicked"))??,
        );
    }
    all.sort_unstable_by_key(|s| s.total_us);
    Ok(all)
}

/// Waits until the daemon's test pool runs and queues nothing, so a round starts clean.
fn wait_quiet(socket: &Path) -> anyhow::Result<()> {
    let mut conn = Conn::open(socket)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let stats = conn.call(&json!({"op": "stats"}))?;
        let pool = &stats["pools"]["t"];
        let busy = pool["busy"].as_u64().unwrap_or(0)
            + pool["queued_on_demand"].as_u64().unwrap_or(0)
            + pool["queued_speculative"].as_u64().unwrap_or(0);
        if busy == 0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("the pool did not become idle within 30 s")
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn p99(samples: &[Sample]) -> u64 {
    let mut lat: Vec<u64> = samples.iter().map(|s| s.total_us).collect();
    lat.sort_unstable();
    quantile(&lat, 0.99)
}

/// Where the slowest 2% of runs spent their time, on average, and how they were served.
fn tail_breakdown(samples: &[Sample]) -> String {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable_by_key(|s| s.total_us);
    let tail = &sorted[sorted.len() - (sorted.len() / 50).max(1)..];
    let n = tail.len() as u64;
    let mean = |f: &dyn Fn(&Sample) -> u64| tail.iter().map(f).sum::<u64>() / n;
    let mut served: BTreeMap<&str, usize> = BTreeMap::new();
    for s in tail {
        *served.entry(s.served.as_str()).or_default() += 1;
    }
    format!(
        "slowest {n}: mean {} us = queued {} + worker {} + other {}; served {served:?}",
        mean(&|s| s.total_us),
        mean(&|s| s.wait_us),
        mean(&|s| s.exec_us),
        mean(&|s| s.other_us()),
    )
}

fn pool_counter(socket: &Path, field: &str) -> anyhow::Result<u64> {
    let stats = Conn::open(socket)?.call(&json!({"op": "stats"}))?;
    let v = match field {
        "issued" | "wasted" | "cancelled" | "pending" => &stats["speculation"][field],
        "cpu_s_wasted" => {
            return Ok(
                (stats["speculation"]["cpu_s_wasted"].as_f64().unwrap_or(0.0) * 1000.0) as u64,
            );
        }
        f => &stats["pools"]["t"][f],
    };
    Ok(v.as_u64().unwrap_or(0))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut count = |name: &str, default: usize| -> anyhow::Result<usize> {
        match args.next() {
            None => Ok(default),
            Some(a) => match a.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => bail!("[{name}] must be a whole number above 0, not `{a}`"),
            },
        }
    };
    let sessions = count("sessions", 400)?;
    let clients = count("clients", 3)?;
    let rounds = count("rounds", 8)?;
    if rounds % 2 != 0 || sessions < clients {
        bail!("[rounds] must be even (rounds come in pairs) and [sessions] at least [clients]");
    }
    let fixed = match args.next().as_deref() {
        None | Some("elastic") => false,
        Some("fixed") => true,
        Some(other) => bail!("the pool is `elastic` or `fixed`, not `{other}`"),
    };
    let guess_cpu_ms = match args.next() {
        None => 40,
        Some(a) => a
            .parse::<u64>()
            .ok()
            .filter(|&ms| ms <= 10_000)
            .with_context(|| format!("[guess_cpu_ms] must be 0 to 10000, not `{a}`"))?,
    };
    let idle_loop = match args.next().as_deref() {
        None => None,
        Some("idle-loop") => Some(LoopClass::Idle),
        Some("nice-loop") => Some(LoopClass::Nice),
        Some("leaf-loop") => Some(LoopClass::Leaf),
        Some(other) => {
            bail!(
                "the sixth argument is `idle-loop`, `nice-loop`, `leaf-loop` or nothing: `{other}`"
            )
        }
    };
    if let Some(extra) = args.next() {
        bail!(
            "unexpected argument `{extra}`: [sessions] [clients] [rounds] [elastic|fixed] \
             [guess_cpu_ms] [idle-loop|nice-loop|leaf-loop]"
        );
    }
    let exe = std::env::current_exe()?;
    let precogd = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("precogd"))
        .context("cannot locate precogd beside the example")?;
    if !precogd.exists() {
        bail!(
            "{} is missing; run `cargo build --bins` first",
            precogd.display()
        );
    }

    let python = python()?;
    if let Some(class) = idle_loop {
        busy_loop::prepare(class)?;
    }
    let daemons = [
        Daemon::start(&precogd, &python, false, fixed)?,
        Daemon::start(&precogd, &python, idle_loop.is_none(), fixed)?,
    ];
    for d in &daemons {
        load(&d.socket, 30, clients, "warmup", 0, guess_cpu_ms)?;
    }
    for d in &daemons {
        wait_quiet(&d.socket)?;
    }

    let on_means = if idle_loop.is_some() {
        println!(
            "control: no speculation; `on` rounds run a busy loop ({})",
            match idle_loop {
                Some(LoopClass::Idle) => "idle class",
                Some(LoopClass::Leaf) => "cgroup leaf at the lowest weight",
                _ => "batch class, nice 19",
            }
        );
        "busy loop"
    } else {
        "speculation"
    };
    let mut all: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
    let mut round_p99 = Vec::new();
    // Latencies of each round, by mode, for the interval below.
    let mut round_latencies: Vec<(usize, Vec<u64>)> = Vec::new();
    for round in 0..rounds {
        // off, on, on, off, off, on, ...: each mode goes first as often as the other.
        let speculation = (round % 4 == 1) || (round % 4 == 2);
        let mode = usize::from(speculation);
        let d = &daemons[mode];
        let first_n = 1_000_000 * (round + 1);
        let issued_before = pool_counter(&d.socket, "issued")?;
        let cpu_before = cpu_ms(d.child.id());
        let busy = idle_loop.filter(|_| speculation).map(BusyLoop::start);
        let samples = load(
            &d.socket,
            sessions,
            clients,
            &format!("r{round}"),
            first_n,
            guess_cpu_ms,
        )?;
        drop(busy);
        wait_quiet(&d.socket)?;
        let issued = pool_counter(&d.socket, "issued")? - issued_before;
        let daemon_ms = cpu_ms(d.child.id()).saturating_sub(cpu_before);
        let p = p99(&samples);
        println!(
            "round {round} {on_means} {:<3}: {} runs, {issued} guesses, precogd CPU {daemon_ms} \
             ms, p50 {} us, p99 {p} us; {}",
            if speculation { "on" } else { "off" },
            samples.len(),
            samples[samples.len() / 2].total_us,
            tail_breakdown(&samples),
        );
        round_p99.push((mode, p));
        round_latencies.push((mode, samples.iter().map(|s| s.total_us).collect()));
        all[mode].extend(samples);
    }

    for (mode, samples) in all.iter().enumerate() {
        if samples.is_empty() {
            continue;
        }
        let socket = &daemons[mode].socket;
        println!(
            "{on_means} {:<3}: {} runs, p50 {} us, p99 {} us; speculative issued {} (ran and \
             wasted {}, using {} ms of CPU; cancelled {}; pending {}), taken back {}, workers \
             started {}; {}",
            if mode == 1 { "on" } else { "off" },
            samples.len(),
            {
                let mut lat: Vec<u64> = samples.iter().map(|s| s.total_us).collect();
                lat.sort_unstable();
                quantile(&lat, 0.5)
            },
            p99(samples),
            pool_counter(socket, "issued")?,
            pool_counter(socket, "wasted")?,
            pool_counter(socket, "cpu_s_wasted")?,
            pool_counter(socket, "cancelled")?,
            pool_counter(socket, "pending")?,
            pool_counter(socket, "preempted")?,
            pool_counter(socket, "spawned")?,
            tail_breakdown(samples),
        );
    }
    // Pair each on round with the off round next to it in the ABBA order.
    let ratios: Vec<String> = round_p99
        .chunks(2)
        .filter(|pair| pair.len() == 2)
        .map(|pair| {
            let (on, off) = if pair[0].0 == 1 {
                (pair[0].1, pair[1].1)
            } else {
                (pair[1].1, pair[0].1)
            };
            format!("{:.2}", on as f64 / off.max(1) as f64)
        })
        .collect();
    println!("per-round p99 ratios (on / off): {}", ratios.join(", "));
    if !all[0].is_empty() && !all[1].is_empty() {
        println!(
            "on-demand p99 ratio ({on_means} on / off): {:.2}",
            p99(&all[1]) as f64 / p99(&all[0]).max(1) as f64
        );
        if let Some((low, high)) = ratio_interval(&round_latencies) {
            println!(
                "90% interval of that ratio, resampling pairs of rounds: {low:.2} to {high:.2}"
            );
        }
    }
    Ok(())
}

/// CPU time process `pid` has used so far (user and system), in milliseconds; 0 when unknown.
fn cpu_ms(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command, which is in parentheses and may hold spaces: utime and stime
    // are the 12th and 13th, in clock ticks.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11..13]
        .iter()
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1000 / hz
}

/// How far the pooled p99 ratio moves with the luck of the rounds: pairs of adjacent rounds (one
/// of each mode) are drawn with replacement, and the ratio is taken over the pooled draws; the
/// 5th and 95th percentiles of 200 such draws. `None` with fewer than two pairs.
fn ratio_interval(rounds: &[(usize, Vec<u64>)]) -> Option<(f64, f64)> {
    let pairs: Vec<[&Vec<u64>; 2]> = rounds
        .chunks(2)
        .filter(|pair| pair.len() == 2 && pair[0].0 != pair[1].0)
        .map(|pair| {
            let (off, on) = if pair[0].0 == 0 {
                (&pair[0].1, &pair[1].1)
            } else {
                (&pair[1].1, &pair[0].1)
            };
            [off, on]
        })
        .collect();
    if pairs.len() < 2 {
        return None;
    }
    // A fixed xorshift stream: the same rounds give the same interval.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut ratios: Vec<f64> = (0..200)
        .map(|_| {
            let mut pooled: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
            for _ in 0..pairs.len() {
                let pair = pairs[next(pairs.len())];
                for mode in 0..2 {
                    pooled[mode].extend_from_slice(pair[mode]);
                }
            }
            let [off, on] = pooled.map(|mut v| {
                v.sort_unstable();
                quantile(&v, 0.99).max(1) as f64
            });
            on / off
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    Some((ratios[10], ratios[189]))
}
