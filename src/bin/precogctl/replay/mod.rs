//! `precogctl replay`: real shop sessions through precog, measured as the app server sees them.
//!
//! The replay plays a shop's app server: it reads recorded sessions, sends each visitor's events
//! at the real gaps divided by the speed, and issues the `run`s the mapping file says each action
//! needs. Modes: `precog` (a daemon that speculates), `no-predict` (the same daemon with
//! speculation off), `spawn` (no daemon: a fresh `precog-shop-worker` per run), and `ceiling`
//! (the speculating daemon once a first, unmeasured pass of the same sessions has left every
//! answer in its cache: what a prediction that never misses would give). Without `--socket`,
//! each daemon mode starts its own precogd on a temporary directory, with a shop catalogue built
//! from the replayed file.

mod backend;
mod drive;
mod mapping;
mod report;
mod svg;
mod timeline;
mod visitor;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::ValueEnum;
use precog::config::Config;
use precog::eval::{Format, SessionRecord, read_sessions};
use serde_json::{Value, json};

use crate::client::Client;
use crate::local::{LocalDaemon, sibling};
use backend::{Backend, Daemon, Spawn};
use mapping::Mapping;
use report::ModeReport;
pub use report::Report;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeChoice {
    /// precogd, predicting and speculating.
    Precog,
    /// precogd with speculation off: every run on demand, on warm workers.
    NoPredict,
    /// No daemon: a shop worker process spawned for each run.
    Spawn,
    /// precogd after an unmeasured first pass left every answer in its cache: the best any
    /// prediction could do.
    Ceiling,
    /// precog, no-predict and spawn.
    All,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// A session file of the data set, or a directory of them.
    pub file: PathBuf,
    /// The data set's layout: jd, rees46, otto or events (precog's NDJSON events; see
    /// docs/session-formats.md).
    #[arg(long, value_parser = parse_format)]
    pub format: Format,
    /// How much faster than real time to play: the recorded gaps are divided by this.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub speed: f64,
    /// Which runs each action needs (default: the built-in config/replay/shop.toml).
    #[arg(long, value_name = "FILE")]
    pub mapping: Option<PathBuf>,
    /// One mode or several, comma-separated; `all` is precog, no-predict and spawn.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "precog")]
    pub mode: Vec<ModeChoice>,
    /// Also draw the latency distributions of the modes into this SVG file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Replay only the first N sessions (by start time).
    #[arg(long, value_name = "N")]
    pub sessions: Option<usize>,
    /// Shop-time seconds with no visitor active kept at most; longer dead stretches are cut.
    #[arg(
        long,
        default_value_t = 60.0,
        value_name = "SECONDS",
        allow_negative_numbers = true
    )]
    pub max_idle: f64,
    /// Build the shop catalogue from this data file (or use this .sqlite catalogue) instead of
    /// the replayed file.
    #[arg(long, value_name = "FILE")]
    pub catalog_from: Option<PathBuf>,
    /// Connections (threads) of the replayed app server.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse()
        .map_err(|e: precog::eval::EvalError| e.to_string())
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::Jd => "jd",
        Format::Rees46 => "rees46",
        Format::Otto => "otto",
        Format::Events => "events",
    }
}

/// Replays, then prints the report (a table or JSON) and writes the chart. With `announce`, says
/// on stderr first how long the replay will take.
pub fn run(
    args: &ReplayArgs,
    socket: Option<&Path>,
    json: bool,
    announce: bool,
) -> anyhow::Result<Report> {
    let report = replay(args, socket, announce)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
        for m in report.modes.iter().filter(|m| m.mode != "spawn") {
            println!("{} runs by process:", m.mode);
            for (process, served) in &m.per_process {
                let counts: Vec<String> = served
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(s, n)| format!("{s} {n}"))
                    .collect();
                println!("  {process:<22} {}", counts.join("  "));
            }
        }
        print!("{}", report.reading());
    }
    if let Some(path) = &args.svg {
        let title = format!("run latency, {} ({})", report.file, report.format);
        std::fs::write(path, svg::chart(&title, &report.modes))
            .with_context(|| format!("cannot write the chart to {}", path.display()))?;
    }
    // Runs that all failed measured nothing: the replay fails, whatever the table says.
    if let Some(m) = report
        .modes
        .iter()
        .find(|m| m.runs > 0 && m.run_errors.values().sum::<u64>() >= m.runs)
    {
        let errors: Vec<String> = m
            .run_errors
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let all = if m.runs == 1 {
            "the one run".to_string()
        } else {
            format!("every one of the {} runs", m.runs)
        };
        bail!(
            "{all} of mode `{}` failed ({}); nothing was measured. Workers that cannot serve \
             the data (a shop catalogue built from another data set, say) fail this way: the \
             daemon's log says why",
            m.mode,
            errors.join(", ")
        );
    }
    Ok(report)
}

/// Refuses, before anything starts, the arguments that cannot make a meaningful replay.
fn check(args: &ReplayArgs) -> anyhow::Result<()> {
    if !(args.speed.is_finite() && args.speed > 0.0) {
        bail!("--speed must be a positive number");
    }
    if !(args.max_idle.is_finite() && args.max_idle >= 0.0) {
        bail!("--max-idle must be a number of seconds, 0 or more");
    }
    if args.sessions == Some(0) {
        bail!("--sessions 0 leaves nothing to replay");
    }
    if let Some(svg) = &args.svg {
        let dir = svg.parent().filter(|d| !d.as_os_str().is_empty());
        if dir.is_some_and(|d| !d.is_dir()) {
            bail!(
                "cannot write the chart to {}: no such directory",
                svg.display()
            );
        }
    }
    Ok(())
}

/// The real span of the sessions `args` would replay, once dead time is cut.
pub fn shop_span_ms(args: &ReplayArgs) -> anyhow::Result<u64> {
    let sessions = chosen_sessions(args)?;
    Ok(timeline::plan(&sessions, (args.max_idle * 1000.0) as u64).span_ms)
}

fn chosen_sessions(args: &ReplayArgs) -> anyhow::Result<Vec<SessionRecord>> {
    let mut sessions = read_sessions(&args.file, args.format)?;
    sessions.sort_by_key(|s| s.events[0].ts_ms);
    if let Some(n) = args.sessions {
        sessions.truncate(n);
    }
    if sessions.is_empty() {
        bail!("{} holds no sessions", args.file.display());
    }
    Ok(sessions)
}

/// Replays every chosen mode and returns the report.
pub fn replay(args: &ReplayArgs, socket: Option<&Path>, announce: bool) -> anyhow::Result<Report> {
    check(args)?;
    let sessions = chosen_sessions(args)?;
    let timeline = timeline::plan(&sessions, (args.max_idle * 1000.0) as u64);
    let mapping = Mapping::load(args.mapping.as_deref())?;
    let config = Config::builtin();
    for process in mapping.processes() {
        if config.process(process).is_none() {
            bail!("the mapping asks for `{process}`, which precogd does not define");
        }
    }
    let script = drive::Script {
        sessions: &sessions,
        offsets: &timeline.offsets,
        format: args.format,
        mapping: &mapping,
        config: &config,
        speed: args.speed,
        cache_fill: false,
    };
    let mut modes: Vec<&str> = Vec::new();
    for choice in &args.mode {
        let names: &[&str] = match choice {
            ModeChoice::Precog => &["precog"],
            ModeChoice::NoPredict => &["no-predict"],
            ModeChoice::Spawn => &["spawn"],
            ModeChoice::Ceiling => &["ceiling"],
            ModeChoice::All => &["precog", "no-predict", "spawn"],
        };
        for name in names {
            if !modes.contains(name) {
                modes.push(name);
            }
        }
    }
    if modes.is_empty() {
        bail!("--mode needs at least one mode");
    }
    // The daemon at --socket speculates as it is configured: only precog mode can use it.
    if socket.is_some() && modes != ["precog"] {
        bail!(
            "--mode {} starts daemons of its own (or, for spawn, none); only --mode precog \
             replays against the daemon at --socket",
            modes.join(",")
        );
    }
    if announce {
        // The report comes at the end; the ceiling plays the sessions twice.
        let passes = modes.len() + modes.contains(&"ceiling") as usize;
        let span_s = timeline.span_ms as f64 / 1000.0;
        let total_s = span_s / args.speed * passes as f64;
        let total = if total_s < 1.0 {
            "under a second".to_string()
        } else {
            format!("about {total_s:.0} s")
        };
        eprintln!(
            "replaying {}: {:.0} min of shop time at {}x, {total} in all",
            args.file.display(),
            span_s / 60.0,
            args.speed,
        );
    }

    let work = tempfile::Builder::new()
        .prefix("precog-replay-")
        .tempdir()?;
    let _tracked = crate::cleanup::track_dir(work.path());
    let needs_catalog = modes.iter().any(|m| *m == "spawn" || socket.is_none());
    let catalog = if needs_catalog {
        Some(build_catalog(args, work.path())?)
    } else {
        None
    };
    let mut reports = Vec::new();
    for mode in &modes {
        let catalog = match &catalog {
            Some(c) => {
                // reserve_stock writes to the catalogue: each mode starts from the same stock.
                let own = work.path().join(format!("{mode}.sqlite"));
                std::fs::copy(c, &own)
                    .with_context(|| format!("cannot copy the shop catalogue {}", c.display()))?;
                Some(own)
            }
            None => None,
        };
        reports.push(play_mode(&script, mode, socket, catalog, args.connections)?);
    }

    Ok(Report::new(Report {
        file: args.file.display().to_string(),
        format: format_name(args.format).into(),
        speed: args.speed,
        sessions: sessions.len(),
        recorded_events: sessions.iter().map(|s| s.events.len()).sum(),
        span_s: timeline.span_ms as f64 / 1000.0,
        modes: reports,
        mean_latency_ratio: Default::default(),
    }))
}

fn build_catalog(args: &ReplayArgs, dir: &Path) -> anyhow::Result<PathBuf> {
    let source = match &args.catalog_from {
        Some(file) => file.clone(),
        None if matches!(args.format, Format::Events) => bail!(
            "an events file names products but holds no catalogue of them: pass --catalog-from \
             with a JD, REES46 or OTTO file, or a catalogue built with `precog-shop-worker \
             build-catalog`, whose products are the skus of your events"
        ),
        None => first_file(&args.file, &args.format)?,
    };
    let source = &source;
    if source.extension().is_some_and(|e| e == "sqlite") {
        return Ok(source.clone());
    }
    let out = dir.join("catalog.sqlite");
    let output = crate::cleanup::unblocked(Command::new(sibling("precog-shop-worker")?))
        .arg("build-catalog")
        .arg("--from")
        .arg(source)
        .arg("--out")
        .arg(&out)
        .output()
        .context("cannot run precog-shop-worker build-catalog")?;
    if !output.status.success() {
        bail!(
            "cannot build the shop catalogue from {} (pass --catalog-from with a JD, REES46 or \
             OTTO file): {}",
            source.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(out)
}

/// The file the catalogue is built from: `path` itself, or the first session file of the
/// directory `path`, since one file's products make the catalogue.
fn first_file(path: &Path, format: &Format) -> anyhow::Result<PathBuf> {
    precog::eval::session_files(path, *format)?
        .into_iter()
        .next()
        .with_context(|| {
            format!(
                "{} holds no session file to build the catalogue from; pass --catalog-from",
                path.display()
            )
        })
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn play_mode(
    script: &drive::Script,
    mode: &str,
    socket: Option<&Path>,
    catalog: Option<PathBuf>,
    connections: usize,
) -> anyhow::Result<ModeReport> {
    if mode == "spawn" {
        let worker = sibling("precog-shop-worker")?;
        let catalog = catalog.context("spawn mode needs a catalogue")?;
        let played = drive::play(script, connections, || {
            Ok(Box::new(Spawn {
                worker: worker.clone(),
                catalog: catalog.clone(),
            }) as Box<dyn Backend>)
        })?;
        return Ok(ModeReport::new(mode, &played, None));
    }

    let local = match socket {
        Some(_) => None,
        None => {
            let worker = sibling("precog-shop-worker")?;
            let catalog = catalog.context("a local daemon needs a catalogue")?;
            let mut extra = format!(
                "[[pool]]\nname = \"shop\"\ncommand = [{}, \"--catalog\", {}]\n",
                toml_string(&worker.display().to_string()),
                toml_string(&catalog.display().to_string())
            );
            if mode == "no-predict" {
                extra.push_str("[predict]\nspeculation = false\n");
            }
            if mode == "ceiling" {
                // Answers must outlive the first pass to be there in the second.
                for process in script.mapping.processes() {
                    if script.config.process(process).is_some_and(|p| p.idempotent) {
                        extra.push_str(&format!(
                            "[[process]]\nname = {}\nttl = \"7d\"\n",
                            toml_string(process)
                        ));
                    }
                }
            }
            Some(LocalDaemon::start("", &extra)?)
        }
    };
    let path = socket
        .map(Path::to_path_buf)
        .or_else(|| local.as_ref().map(|d| d.socket.clone()))
        .expect("a socket or a local daemon");
    let play = |script: &drive::Script| {
        drive::play(script, connections, || {
            Ok(Box::new(Daemon::connect(&path)?) as Box<dyn Backend>)
        })
    };
    let stats = || -> Option<Value> {
        Client::connect(&path)
            .and_then(|mut c| c.call_ok(&json!({"op": "stats"})))
            .ok()
    };
    // The ceiling's first pass only fills the cache, and runs nothing that changes the shop (the
    // measured pass finds the stock every mode starts from).
    if mode == "ceiling" {
        let fill = drive::Script {
            cache_fill: true,
            ..*script
        };
        let filled = play(&fill);
        if let (Err(e), Some(d)) = (&filled, &local) {
            bail!("{e:#}\nprecogd's log:\n{}", d.log());
        }
        filled?;
    }
    // The daemon's counters before the measured pass are taken off its counters after: a
    // ceiling's first pass, or what a daemon given with --socket did before this replay.
    let before = stats();
    let played = match (play(script), &local) {
        (Ok(p), _) => p,
        (Err(e), Some(d)) => return Err(e.context(format!("precogd's log:\n{}", d.log()))),
        (Err(e), None) => return Err(e),
    };
    let mut report = ModeReport::new(mode, &played, stats().as_ref());
    if let Some(before) = &before {
        report.discount(before);
    }
    Ok(report)
}
