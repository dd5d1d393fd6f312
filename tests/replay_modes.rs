//! Black-box tests of `precogctl replay` and `precogctl demo`: a small session file made here is
//! replayed against real daemons (and against a worker spawned per run), and the reports are
//! checked the way a user would read them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

fn precogctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_precogctl"))
}

/// The OTTO rows shipped in the repository, the catalogue's source for the test sessions.
fn otto_rows() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/otto/otto_train_sample.jsonl")
}

/// Six overlapping visits over OTTO items: views, a detail read, carts and two orders.
/// Returns the file and how many view, cart and order events it holds.
fn session_file(dir: &Path) -> (PathBuf, usize, usize, usize) {
    let items = [
        "1517085", "1563459", "1309446", "16246", "1781822", "1152674",
    ];
    let mut lines = Vec::new();
    let (mut views, mut carts, mut orders) = (0, 0, 0);
    for v in 0..6u64 {
        let start = 1_700_000_000_000 + v * 700;
        let a = items[v as usize];
        let b = items[(v as usize + 1) % items.len()];
        let mut steps = vec![("page_view", a), ("detail", a), ("page_view", b)];
        steps.push(("add_to_cart", b));
        if v % 3 == 0 {
            steps.push(("order", b));
        }
        for (k, (kind, sku)) in steps.into_iter().enumerate() {
            match kind {
                "page_view" => views += 1,
                "add_to_cart" => carts += 1,
                "order" => orders += 1,
                _ => {}
            }
            lines.push(
                json!({"session": format!("visit-{v}"), "ts": start + k as u64 * 1000,
                       "type": kind, "attrs": {"sku": sku}, "dwell_ms": 800})
                .to_string(),
            );
        }
    }
    let path = dir.join("sessions.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    (path, views, carts, orders)
}

fn replay(file: &Path, mode: &str, extra: &[&str]) -> Output {
    let out = precogctl()
        .arg("replay")
        .arg(file)
        .args(["--format", "events", "--speed", "10", "--connections", "3"])
        .arg("--catalog-from")
        .arg(otto_rows())
        .args(["--mode", mode])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replay --mode {mode} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every run is counted once under one way of being served, and the right runs were asked for.
fn check_mode(m: &Value, views: usize, carts: usize, orders: usize) {
    let runs = m["runs"].as_u64().unwrap();
    let served: u64 = ["cache", "inflight", "warm", "cold", "failed"]
        .iter()
        .map(|k| m["served"][k].as_u64().unwrap())
        .sum();
    assert_eq!(served, runs, "{m}");
    assert_eq!(m["served"]["failed"], 0, "{m}");
    let per = &m["per_process"];
    let count = |p: &str| -> u64 {
        per[p]
            .as_object()
            .map_or(0, |s| s.values().map(|v| v.as_u64().unwrap()).sum())
    };
    assert_eq!(count("check_inventory"), views as u64, "{m}");
    assert_eq!(count("price_quote"), views as u64, "{m}");
    assert_eq!(count("cart_total"), (carts + orders) as u64, "{m}");
    assert_eq!(count("reserve_stock"), orders as u64, "{m}");
    let by_process: u64 = per.as_object().unwrap().keys().map(|p| count(p)).sum();
    assert_eq!(by_process, runs);
    for q in ["p50", "p90", "p99"] {
        assert!(m["latency_us"][q].as_u64().unwrap() > 0, "{m}");
    }
    assert!(m["latency_us"]["p50"].as_u64() <= m["latency_us"]["p99"].as_u64());
    assert!(m["latency_us"]["mean"].as_f64().unwrap() > 0.0);
    for key in ["used", "wasted", "cpu_s_wasted"] {
        assert!(m["speculation"].get(key).is_some(), "{m}");
    }
    assert!(m.get("cold_starts").is_some(), "{m}");
}

#[test]
fn no_predict_and_spawn_account_for_every_run() {
    let dir = tempfile::tempdir().unwrap();
    let (file, views, carts, orders) = session_file(dir.path());

    let out = replay(&file, "no-predict", &["--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sessions"], 6);
    let m = &report["modes"][0];
    assert_eq!(m["mode"], "no-predict");
    check_mode(m, views, carts, orders);
    assert_eq!(m["speculation"]["used"], 0, "speculation is off: {m}");
    assert!(m["cold_starts"].is_u64(), "{m}");
    assert_eq!(
        m["event_errors"],
        json!({}),
        "the daemon refused events: {m}"
    );

    let out = replay(&file, "spawn", &["--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &report["modes"][0];
    check_mode(m, views, carts, orders);
    assert_eq!(
        m["served"]["cold"], m["runs"],
        "every spawned run is cold: {m}"
    );
    assert!(m["cold_starts"].is_null() && m["speculation"]["used"].is_null());
}

#[test]
fn precog_mode_reports_speculation() {
    let dir = tempfile::tempdir().unwrap();
    let (file, views, carts, orders) = session_file(dir.path());
    let out = replay(&file, "precog", &["--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &report["modes"][0];
    check_mode(m, views, carts, orders);
    assert!(m["speculation"]["used"].is_u64(), "{m}");
    assert!(m["speculation"]["cpu_s_wasted"].is_f64(), "{m}");
}

/// A second pass of the same visits finds every answer the first pass computed, so the ceiling
/// serves from the cache all that can be cached, and counts only its measured pass.
#[test]
fn the_ceiling_answers_every_cacheable_run_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (file, views, carts, orders) = session_file(dir.path());
    let out = replay(&file, "ceiling,no-predict", &["--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let modes: Vec<&str> = report["modes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["ceiling", "no-predict"]);
    let m = &report["modes"][0];
    check_mode(m, views, carts, orders);
    // Only the stock reservations change the world and are never cached.
    let runs = m["runs"].as_u64().unwrap();
    assert_eq!(
        m["served"]["cache"].as_u64().unwrap(),
        runs - orders as u64,
        "{m}"
    );
    assert_eq!(
        m["per_process"]["reserve_stock"]["cache"]
            .as_u64()
            .unwrap_or(0),
        0
    );
    assert_eq!(m["cold_starts"], 0, "the first pass warmed the pool: {m}");
    assert!(report["mean_latency_ratio"]["no-predict/ceiling"].is_f64());
}

/// Checks that tags nest and close, attributes are quoted, and returns the start tags.
fn xml_elements(text: &str) -> Vec<String> {
    let mut stack: Vec<String> = Vec::new();
    let mut seen = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        let close = rest[open..].find('>').expect("unclosed tag") + open;
        let tag = &rest[open + 1..close];
        assert_eq!(
            tag.matches('"').count() % 2,
            0,
            "unbalanced quotes in <{tag}>"
        );
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.trim()),
                "mismatched </{name}>"
            );
        } else if !tag.starts_with('?') && !tag.starts_with('!') {
            let name = tag.split_whitespace().next().unwrap().trim_end_matches('/');
            seen.push(tag.to_string());
            if !tag.ends_with('/') {
                stack.push(name.to_string());
            }
        }
        rest = &rest[close + 1..];
    }
    assert!(stack.is_empty(), "unclosed elements: {stack:?}");
    seen
}

#[test]
fn all_modes_side_by_side_with_a_chart() {
    let dir = tempfile::tempdir().unwrap();
    let (file, ..) = session_file(dir.path());
    let svg = dir.path().join("latency.svg");
    let out = replay(&file, "all", &["--svg", svg.to_str().unwrap()]);
    let table = String::from_utf8_lossy(&out.stdout);
    let header = table.lines().nth(1).unwrap();
    for mode in ["precog", "no-predict", "spawn"] {
        assert!(header.contains(mode), "{table}");
    }
    assert!(table.contains("mean latency / precog"), "{table}");

    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"));
    let elements = xml_elements(&text);
    assert_eq!(elements[0].split_whitespace().next(), Some("svg"));
    let series: Vec<&String> = elements
        .iter()
        .filter(|e| e.contains("class=\"series\""))
        .collect();
    assert_eq!(series.len(), 3, "one line per mode");
    for mode in ["precog", "no-predict", "spawn"] {
        let attr = format!("data-mode=\"{mode}\"");
        assert!(series.iter().any(|s| s.contains(&attr)), "no {mode} line");
    }
    assert!(text.contains("log scale"), "the latency axis has a label");
}

/// The README's main command, on the shipped OTTO rows; slower than the others (~30 s).
#[test]
fn demo_runs_all_three_modes_and_cleans_up() {
    let out = precogctl()
        .args(["demo", "--seconds-per-mode", "5"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for mode in ["precog", "no-predict", "spawn"] {
        assert!(stdout.lines().nth(1).unwrap().contains(mode), "{stdout}");
    }
    assert!(stdout.contains("served cache"), "{stdout}");
}

/// Arguments that cannot make a meaningful replay are refused before anything starts, each with
/// a message that names the option.
#[test]
fn arguments_that_cannot_replay_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (file, ..) = session_file(dir.path());
    let cases: &[(&[&str], &str)] = &[
        (&["--max-idle", "inf"], "--max-idle"),
        (&["--max-idle", "-1"], "--max-idle"),
        (&["--sessions", "0"], "--sessions 0"),
        (
            &["--mode", "no-predict", "--socket", "/nonexistent.sock"],
            "only --mode precog replays against the daemon at --socket",
        ),
        (
            &["--mode", "spawn", "--socket", "/nonexistent.sock"],
            "only --mode precog replays against the daemon at --socket",
        ),
        (
            &["--mode", "ceiling", "--socket", "/nonexistent.sock"],
            "only --mode precog replays against the daemon at --socket",
        ),
        (&["--svg", "/nonexistent-dir/x.svg"], "no such directory"),
        (
            &["--speed", "20"],
            "an events file names products but holds no catalogue",
        ),
    ];
    for (extra, expected) in cases {
        let mut cmd = precogctl();
        if let Some(i) = extra.iter().position(|a| *a == "--socket") {
            // --socket is precogctl's own option, given before the command.
            cmd.args(["--socket", extra[i + 1]]);
        }
        let rest: Vec<&str> = extra
            .iter()
            .enumerate()
            .filter(|(i, a)| **a != "--socket" && (*i == 0 || extra[i - 1] != "--socket"))
            .map(|(_, a)| *a)
            .collect();
        let out = cmd
            .arg("replay")
            .arg(&file)
            .args(["--format", "events"])
            .args(&rest)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
    }
}

/// A replay stopped by SIGTERM or SIGINT stops its private daemon (which removes its cgroups)
/// and removes its temporary directories.
#[test]
fn an_interrupted_replay_leaves_nothing_behind() {
    for signal in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = precogctl()
            .env("TMPDIR", tmp.path())
            .arg("replay")
            .arg(otto_rows())
            .args(["--format", "otto", "--speed", "2", "--mode", "precog"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait until its daemon answers, then interrupt precogctl alone.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let socket = loop {
            let found = std::fs::read_dir(tmp.path())
                .unwrap()
                .flatten()
                .map(|e| e.path().join("precogd.sock"))
                .find(|s| std::os::unix::net::UnixStream::connect(s).is_ok());
            if let Some(s) = found {
                break s;
            }
            assert!(std::time::Instant::now() < deadline, "no daemon came up");
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(128 + signal as i32), "{signal}");
        assert!(
            std::os::unix::net::UnixStream::connect(&socket).is_err(),
            "{signal}: the daemon still answers"
        );
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
        assert!(left.is_empty(), "{signal}: left behind {left:?}");
        // As root the daemon had cgroups of its own; stopped by SIGTERM, it removed them.
        let ours = format!("precog-local-{}-", child.id());
        let cgroups: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|h| std::fs::read_dir(h.path()).into_iter().flatten().flatten())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&ours))
            })
            .collect();
        assert!(cgroups.is_empty(), "{signal}: cgroups left {cgroups:?}");
    }
}

/// A directory of OTTO session files replays, with the catalogue built from its first session
/// file (not from a licence note beside it).
#[test]
fn a_directory_of_session_files_replays() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(otto_rows(), dir.path().join("part-1.jsonl")).unwrap();
    std::fs::write(dir.path().join("ATTRIBUTION"), "licence note\n").unwrap();
    let out = precogctl()
        .arg("replay")
        .arg(dir.path())
        .args(["--format", "otto", "--sessions", "3", "--speed", "5000"])
        .args(["--mode", "spawn", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = report["modes"][0]["runs"].as_u64().unwrap();
    assert!(runs > 0, "{report}");
}

/// A reader that goes away (`precogctl replay … | head`) ends precogctl quietly with the status
/// of SIGPIPE, not a panic.
#[test]
fn a_closed_output_pipe_ends_the_replay_quietly() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let (file, ..) = session_file(dir.path());
    let mut child = precogctl()
        .arg("replay")
        .arg(&file)
        .args(["--format", "events", "--speed", "50", "--mode", "spawn"])
        .arg("--catalog-from")
        .arg(otto_rows())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Nobody reads the report.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_replay_whose_runs_all_fail_says_so_and_fails() {
    if common::skip_unless(common::have_python(), "python3 is not installed") {
        return;
    }
    // Every shop worker dies at start: each run is answered `worker_failed`.
    let broken = format!(
        "[[pool]]\nname = \"shop\"\ncommand = [\"python3\", \"{}\"]\nwarm_min = 0\n",
        common::worker("crash_at_start.py")
    );
    let d = common::Daemon::start(&broken);
    let dir = tempfile::tempdir().unwrap();
    let (file, ..) = session_file(dir.path());
    let out = precogctl()
        .arg("--socket")
        .arg(&d.socket)
        .arg("replay")
        .arg(&file)
        .args(["--format", "events", "--speed", "20", "--mode", "precog"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a replay that measured nothing succeeded: {err}"
    );
    assert!(
        err.contains("runs of mode `precog` failed (") && err.contains("worker_failed"),
        "{err}"
    );
}
