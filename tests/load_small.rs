//! The CI-sized load runs: 64 clients, 2,000 requests each, against the real daemon through
//! `precogctl load`. No errors, memory flat after warm-up; p50 and p99 are printed. The full
//! million-request runs and their figures are in docs/reliability.md.

mod common;

use std::process::Command;

use common::Daemon;
use serde_json::Value;

/// Runs `precogctl load` with `mix` against a fresh daemon and checks the report.
fn load_run(mix: &str) {
    let d = Daemon::start("");
    let out = Command::new(env!("CARGO_BIN_EXE_precogctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["load", "--clients", "64", "--requests", "128000"])
        .args(["--max-seconds", "300", "--mix", mix])
        .arg("--pid")
        .arg(d.pid().to_string())
        .output()
        .expect("run precogctl load");
    assert!(
        out.status.success(),
        "load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    println!("{report}");
    assert_eq!(report["requests"], 128_000, "{report}");
    assert!(
        report["errors"].as_object().is_some_and(|e| e.is_empty()),
        "errors under load: {report}"
    );
    let rss = &report["rss_kib"];
    let (warm, end) = (rss["warm"].as_u64().unwrap(), rss["end"].as_u64().unwrap());
    assert!(
        end <= warm + warm / 5 + 4096,
        "memory grew after warm-up from {warm} to {end} KiB: {report}"
    );
}

#[test]
fn sixty_four_clients_running_and_pinging_get_no_errors_and_memory_stays_flat() {
    load_run("basic");
}

/// With events, speculation runs, and `run`s displace speculative jobs that have not started:
/// the displaced job's late report must not answer the run that replaced it.
#[test]
fn sixty_four_clients_with_events_and_predictions_get_no_errors_and_memory_stays_flat() {
    load_run("full");
}
