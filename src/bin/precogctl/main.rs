//! precogctl: the operator's and app developer's command line for precog.
//!
//! Speaks the precogd socket protocol (checks the daemon, runs micro-processes, shows counters)
//! and its D-Bus interface (status, pools, limits, policy, reload, flush, a live `top`).

mod bench;
mod cleanup;
mod client;
mod dbus_client;
mod demo;
mod eval;
mod generate;
mod load;
mod local;
mod metrics;
mod ops;
mod pool_table;
mod replay;
mod top;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::{Map, Value, json};

use client::{Client, default_socket};
use precog::control::Bus;

#[derive(Parser, Debug)]
#[command(
    name = "precogctl",
    version,
    about = "Control and try out the precog daemon"
)]
struct Cli {
    /// precogd's socket (default: $PRECOG_SOCKET, else /run/precog/precogd.sock when it exists
    /// or for root, else the per-user socket). `demo`, `bench` and `replay` start daemons of
    /// their own unless `replay --mode precog` is given one.
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Print the daemon's JSON replies instead of readable text.
    #[arg(long, global = true)]
    json: bool,

    /// D-Bus bus where precogd publishes org.precog.Precog1, for the commands that use it:
    /// system, session, none (use the socket) or a D-Bus address. Default: system; with
    /// --socket or $PRECOG_SOCKET, none, so that status, pools and top ask the daemon on that
    /// socket (and set-pool, policy, reload and flush want --bus said).
    #[arg(long, global = true, value_name = "BUS", env = "PRECOG_BUS")]
    bus: Option<Bus>,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Check that precogd answers, and which version it is.
    Ping,
    /// Run a micro-process, e.g. `precogctl run calc_shipping --session s1 country=DE
    /// postal_code='"10115"' cart_weight_g=900`.
    Run {
        /// The micro-process, as a `[[process]]` of precogd's configuration names it.
        process: String,
        /// The visitor session the run counts for: precog learns from it what a session needs
        /// next.
        #[arg(long, default_value = "precogctl")]
        session: String,
        /// Inputs as key=value; a value that parses as JSON (numbers, true, [..], {..}) is used as
        /// such, anything else as a string.
        #[arg(value_name = "KEY=VALUE")]
        inputs: Vec<String>,
    },
    /// Show the daemon's counters.
    Stats {
        /// Print them in the Prometheus text format.
        #[arg(long)]
        prometheus: bool,
    },
    /// Measure a warm `run` round trip against a Unix-socket echo and a relay floor, in one run.
    Bench {
        /// Round trips of each series in each placement (10 to 1,000,000).
        #[arg(long, default_value_t = 5000, value_parser = bench_rounds())]
        rounds: usize,
    },
    /// Score the prediction model on recorded sessions against two baselines.
    Eval {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// jd, rees46, otto or events (NDJSON, one event a line; see docs/session-formats.md).
        #[arg(long)]
        format: String,
    },
    /// The other end of `bench`'s echo floors.
    #[command(hide = true)]
    EchoServer {
        /// Pass each line through a child process (`cat`) and back, as precogd does through
        /// a worker.
        #[arg(long)]
        relay: bool,
        /// CPUs the relay's child may run on, as precogd's worker may (`0-3,6`).
        #[arg(long, requires = "relay")]
        child_cpus: Option<precog::config::CpuList>,
    },
    /// Drive the socket with many clients and report latency, errors and memory.
    #[command(hide = true)]
    Load(load::LoadArgs),
    /// Summarise precogd's health (D-Bus, or the socket when the bus is out of reach).
    Status,
    /// Show the worker pools with their limits (D-Bus, or the socket's figures).
    ///
    /// CPU and MEMORY are the limits in force, with the configured value in brackets where the
    /// tuner moved them. FAILED counts jobs that ended in an error, workers' own error answers
    /// (an unknown SKU, say) included; LOST counts workers that crashed, ran past the timeout or
    /// ran out of memory.
    Pools,
    /// Change a pool's limits (root, over D-Bus).
    SetPool(ops::SetPoolArgs),
    /// Change the prediction policy (root, over D-Bus).
    Policy(ops::PolicyArgs),
    /// Reload precogd's configuration, as SIGHUP does (root, over D-Bus).
    Reload,
    /// Drop every cached result (root, over D-Bus).
    Flush,
    /// Live view of pools, hit ratio and speculation; `q` or Ctrl-C quits.
    Top(top::TopArgs),
    /// Replay real shop sessions through precog and measure what the app sees.
    Replay(replay::ReplayArgs),
    /// Replay the shipped OTTO sessions in all three modes on private daemons and compare.
    Demo(demo::DemoArgs),
    /// Write man pages and shell completions (for packaging).
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
}

/// `bench --rounds`: enough for a median, few enough to hold in memory.
fn bench_rounds() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(10..=1_000_000)
}

/// Set when a write to stdout failed because its reader went away.
static STDOUT_GONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A reader that goes away (`precogctl … | head`) ends precogctl quietly, as it would end
    // `cat`, once the unwinding has stopped any private daemon; the standard library turns
    // that write into a panic, since it ignores SIGPIPE.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            STDOUT_GONE.store(true, std::sync::atomic::Ordering::SeqCst);
        } else {
            report(info);
        }
    }));
    let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli))) {
        Ok(result) => result,
        Err(_) if STDOUT_GONE.load(std::sync::atomic::Ordering::SeqCst) => {
            return ExitCode::from(128 + libc::SIGPIPE as u8);
        }
        Err(panic) => std::panic::resume_unwind(panic),
    };
    cleanup::wait_if_stopping();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("precogctl: {}", causes(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let socket = cli.socket.clone().unwrap_or_else(default_socket);
    let bus = bus_of(&cli);
    match cli.command {
        Cmd::Ping => {
            let reply = Client::connect(&socket)?.call_ok(&json!({"op": "ping"}))?;
            if cli.json {
                println!("{reply}");
            } else {
                println!(
                    "precogd {} (protocol {}) at {}",
                    reply["version"].as_str().unwrap_or("?"),
                    reply["protocol"],
                    socket.display()
                );
            }
        }
        Cmd::Run {
            process,
            session,
            inputs,
        } => {
            let inputs = parse_inputs(&inputs)?;
            let req =
                json!({"op": "run", "session": session, "process": process, "inputs": inputs});
            let reply = Client::connect(&socket)?.call(&req)?;
            if cli.json {
                println!("{reply}");
                if reply["ok"] != Value::Bool(true) {
                    bail!("the run failed");
                }
            } else if reply["ok"] == Value::Bool(true) {
                println!("{}", serde_json::to_string_pretty(&reply["result"])?);
                eprintln!(
                    "served: {}  wait: {} us  exec: {} us",
                    reply["served"].as_str().unwrap_or("?"),
                    reply["wait_us"],
                    reply["exec_us"]
                );
            } else {
                // `worker_failed (job_error, unknown_sku): …`: the reason and the worker's own
                // code, where the reply has them.
                let error = &reply["error"];
                let detail: Vec<&str> = [&error["reason"], &error["worker_code"]]
                    .into_iter()
                    .filter_map(Value::as_str)
                    .collect();
                let detail = if detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", detail.join(", "))
                };
                bail!(
                    "{}{detail}: {}",
                    error["code"].as_str().unwrap_or("error"),
                    error["message"].as_str().unwrap_or("")
                );
            }
        }
        Cmd::Bench { rounds } => {
            anyhow::ensure!(
                cli.socket.is_none(),
                "bench measures a daemon of its own; drop --socket"
            );
            cleanup::install()?;
            bench::run(rounds, cli.json)?
        }
        Cmd::EchoServer { relay, child_cpus } => {
            bench::echo_server(relay, &child_cpus.unwrap_or_default().0)?
        }
        Cmd::Load(args) => load::run(&socket, &args)?,
        Cmd::Eval { files, format } => eval::run(&files, &format, cli.json)?,
        Cmd::Stats { prometheus } => {
            let reply = Client::connect(&socket)?.call_ok(&json!({"op": "stats"}))?;
            if prometheus {
                metrics::print(&reply);
            } else if cli.json {
                println!("{reply}");
            } else {
                print_stats(&reply);
            }
        }
        Cmd::Status => ops::status(&bus, &socket, cli.json)?,
        Cmd::Pools => ops::pools(&bus, &socket, cli.json)?,
        Cmd::SetPool(args) => ops::set_pool(&args, &bus, cli.json)?,
        Cmd::Policy(args) => ops::policy(&args, &bus)?,
        Cmd::Reload => ops::reload(&bus, &socket)?,
        Cmd::Flush => ops::flush(&bus)?,
        Cmd::Top(args) => top::run(&args, &bus, &socket)?,
        Cmd::Generate(args) => generate::run(&args)?,
        Cmd::Replay(args) => {
            cleanup::install()?;
            replay::run(&args, cli.socket.as_deref(), cli.json, !cli.json)?;
        }
        Cmd::Demo(args) => {
            anyhow::ensure!(
                cli.socket.is_none(),
                "demo plays against daemons of its own; drop --socket"
            );
            cleanup::install()?;
            demo::run(&args, cli.json)?
        }
    }
    Ok(())
}

/// Parses `key=value` arguments into a JSON object.
fn parse_inputs(args: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut out = Map::new();
    for a in args {
        let (k, v) = a
            .split_once('=')
            .with_context(|| format!("`{a}` is not KEY=VALUE"))?;
        if k.is_empty() {
            bail!("`{a}` has an empty key");
        }
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        out.insert(k.to_string(), value);
    }
    Ok(out)
}

fn print_stats(s: &Value) {
    println!(
        "precogd {}  up {} s  requests {}",
        s["version"].as_str().unwrap_or("?"),
        s["uptime_s"],
        s["requests"]
    );
    let served = &s["served"];
    println!(
        "runs served: cache {}  inflight {}  warm {}  cold {}   latency p50 <= {} us  p99 <= {} us",
        served["cache"],
        served["inflight"],
        served["warm"],
        served["cold"],
        s["run_latency_us"]["p50"],
        s["run_latency_us"]["p99"]
    );
    println!("{}", cache_line(&s["cache"]));
    if let Some(errors) = s["errors"].as_object().filter(|e| !e.is_empty()) {
        let list: Vec<String> = errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("errors: {}", list.join("  "));
    }
    if let Some(pools) = s["pools"].as_object() {
        for (name, p) in pools {
            println!(
                "pool {name}: workers {} (busy {}, warm target {}, max {})  jobs ok {} failed {}  \
                 cold starts {}  timeouts {}  crashes {}  failed starts {}  oom {}",
                p["workers"],
                p["busy"],
                p["target_warm"],
                p["workers_max"],
                p["jobs_ok"],
                p["jobs_failed"],
                p["cold_starts"],
                p["timeouts"],
                p["crashes"],
                p["start_failures"],
                p["oom_kills"]
            );
        }
    }
}

/// `n` and its noun, in the singular for one: `1 session`, `2 sessions`.
pub fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A count from a reply, with its noun; `?` with the plural when the reply has none.
pub fn counted_value(n: &Value, one: &str, many: &str) -> String {
    match n.as_u64() {
        Some(n) => counted(n, one, many),
        None => format!("? {many}"),
    }
}

/// An error and its causes on one line, each said once: some libraries' messages already end
/// with their cause's.
pub fn causes(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// The bus the D-Bus commands use. A daemon named by its socket (`--socket` or
/// `$PRECOG_SOCKET`) is asked there: the one on the system bus may be another (an installed
/// daemon beside a trial one).
fn bus_of(cli: &Cli) -> Bus {
    let socket_named = cli.socket.is_some() || client::socket_from_env().is_some();
    default_bus(cli.bus.clone(), socket_named)
}

/// `--bus` when given, else none for a daemon named by its socket, else the system bus.
fn default_bus(given: Option<Bus>, socket_named: bool) -> Bus {
    given.unwrap_or(if socket_named { Bus::None } else { Bus::System })
}

/// The result cache's line of `stats`: its figures, or that it is off and why.
fn cache_line(cache: &Value) -> String {
    if cache["open"] == Value::Bool(false) {
        let reason = cache["disabled_reason"]
            .as_str()
            .unwrap_or("no reason given");
        return format!("cache: off: {reason}");
    }
    if cache.is_null() {
        return "cache: not reported by this precogd".into();
    }
    let size = |v: &Value| v.as_u64().map_or("?".into(), pool_table::bytes);
    format!(
        "cache: {}, {} of {}  hits {}  misses {}  evicted {}{}",
        counted_value(&cache["entries"], "entry", "entries"),
        size(&cache["bytes"]),
        size(&cache["capacity"]),
        cache["hits"],
        cache["misses"],
        cache["evicted"],
        if cache["disabled"] == Value::Bool(true) {
            "  (disabled after a write error)"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bus_socket_and_json_options_go_before_or_after_the_subcommand() {
        let before = [
            "precogctl",
            "--bus",
            "none",
            "--socket",
            "/s",
            "--json",
            "status",
        ];
        let after = [
            "precogctl",
            "status",
            "--bus",
            "none",
            "--socket",
            "/s",
            "--json",
        ];
        for argv in [before, after] {
            let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            assert!(matches!(cli.command, Cmd::Status), "{argv:?}");
            assert_eq!(cli.bus, Some(Bus::None), "{argv:?}");
            assert_eq!(cli.socket.as_deref(), Some(std::path::Path::new("/s")));
            assert!(cli.json, "{argv:?}");
        }

        // An error whose message already ends with its source's, as zbus's do.
        #[derive(Debug)]
        struct Says(std::io::Error);
        impl std::fmt::Display for Says {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "connect: {}", self.0)
            }
        }
        impl std::error::Error for Says {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let io_text = io.to_string();
        let repeated = anyhow::Error::new(Says(io)).context("cannot connect to the system bus");
        assert_eq!(
            causes(&repeated),
            format!("cannot connect to the system bus: connect: {io_text}")
        );

        if std::env::var_os("PRECOG_BUS").is_none() && client::socket_from_env().is_none() {
            let parse = |argv: &[&str]| bus_of(&Cli::try_parse_from(argv).expect("parses"));
            assert_eq!(parse(&["precogctl", "status"]), Bus::System);
            assert_eq!(parse(&["precogctl", "--socket", "/s", "status"]), Bus::None);
            assert_eq!(parse(&["precogctl", "pools", "--socket", "/s"]), Bus::None);
            let both = ["precogctl", "--socket", "/s", "--bus", "session", "status"];
            assert_eq!(parse(&both), Bus::Session);
        }

        let top = Cli::try_parse_from(["precogctl", "--bus", "session", "top", "--count", "1"])
            .expect("top parses with --bus first");
        assert_eq!(top.bus, Some(Bus::Session));
        let set_pool = Cli::try_parse_from([
            "precogctl",
            "set-pool",
            "shop",
            "warm_min=2",
            "--bus",
            "session",
        ])
        .expect("set-pool parses with --bus last");
        assert_eq!(set_pool.bus, Some(Bus::Session));
    }

    #[test]
    fn a_socket_from_the_environment_keeps_commands_off_the_system_bus() {
        assert_eq!(default_bus(None, false), Bus::System);
        assert_eq!(default_bus(None, true), Bus::None);
        assert_eq!(default_bus(Some(Bus::Session), true), Bus::Session);
        assert_eq!(default_bus(Some(Bus::System), false), Bus::System);
    }

    #[test]
    fn counts_take_the_singular_for_one() {
        assert_eq!(counted(1, "session", "sessions"), "1 session");
        assert_eq!(counted(0, "session", "sessions"), "0 sessions");
        assert_eq!(counted_value(&json!(1), "entry", "entries"), "1 entry");
        assert_eq!(counted_value(&Value::Null, "entry", "entries"), "? entries");
        let line = cache_line(
            &json!({"open": true, "entries": 1, "bytes": 2816, "capacity": 268435456u64,
            "hits": 0, "misses": 1, "evicted": 0}),
        );
        assert!(line.starts_with("cache: 1 entry, 3K of 256M"), "{line}");
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
