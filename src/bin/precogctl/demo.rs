//! `precogctl demo`: the one command that shows what precog does. It replays the OTTO shop rows
//! shipped with precog (CC BY 4.0, OTTO) in all three modes — precog, the same daemon without
//! prediction, and a process spawned per run — on private daemons in a temporary directory, at
//! a speed that keeps each mode to a few seconds, prints the report and stops what it started.

use std::path::PathBuf;

use anyhow::bail;
use precog::eval::Format;

use crate::local::sibling;
use crate::replay::{self, ModeChoice, ReplayArgs};

/// The shipped OTTO rows (see data/otto/ATTRIBUTION).
const OTTO_ROWS: &str = include_str!("../../../data/otto/otto_train_sample.jsonl");

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Also draw the latency distributions into this SVG file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Wall-clock seconds each mode's replay should take; sets the speed.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub seconds_per_mode: f64,
}

/// The build command that puts the daemon and the worker beside this precogctl.
fn build_hint() -> &'static str {
    let release = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.ends_with("release")))
        .unwrap_or(false);
    if release {
        "cargo build --release"
    } else {
        "cargo build"
    }
}

pub fn run(args: &DemoArgs, json: bool) -> anyhow::Result<()> {
    for binary in ["precogd", "precog-shop-worker"] {
        if sibling(binary).is_err() {
            bail!(
                "the demo needs {binary} beside precogctl; build every binary with `{}` and run \
                 the demo again",
                build_hint()
            );
        }
    }
    let dir = tempfile::Builder::new().prefix("precog-demo-").tempdir()?;
    let _tracked = crate::cleanup::track_dir(dir.path());
    let rows = dir.path().join("otto_train_sample.jsonl");
    std::fs::write(&rows, OTTO_ROWS)?;

    let mut replay_args = ReplayArgs {
        file: rows,
        format: Format::Otto,
        speed: 1.0,
        mapping: None,
        mode: vec![ModeChoice::All],
        svg: args.svg.clone(),
        sessions: None,
        max_idle: 60.0,
        catalog_from: None,
        connections: 8,
    };
    let span_ms = replay::shop_span_ms(&replay_args)?;
    let seconds = args.seconds_per_mode.max(1.0);
    replay_args.speed = (span_ms as f64 / 1000.0 / seconds).ceil().max(1.0);
    if !json {
        eprintln!(
            "precog demo: the OTTO shop rows shipped with precog (CC BY 4.0, OTTO), {:.0} min of \
             shop time at {}x, in three modes: precog, no-predict and spawn",
            span_ms as f64 / 60_000.0,
            replay_args.speed
        );
    }
    // The demo has said how long it takes.
    replay::run(&replay_args, None, json, false)?;
    Ok(())
}
