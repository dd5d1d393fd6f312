//! Black-box tests of the daemon's result cache and partial states: served from the cache after
//! a crash, damaged files set aside at start, a full cache disk, a cache that cannot be opened
//! at all, stores past a file-size limit, resuming from checkpoints, stores that a reload does
//! not move.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Daemon, have_python, is_root, skip_unless, worker};
use serde_json::json;

fn postal(d: &Daemon, code: &str) -> serde_json::Value {
    d.call(
        json!({"op": "run", "session": "s", "process": "validate_postal_code",
        "inputs": {"country": "NL", "postal_code": code}}),
    )
}

#[test]
fn after_kill_9_and_restart_the_same_run_is_served_from_the_cache() {
    let mut d = Daemon::start("");
    let first = postal(&d, "1012 AB");
    assert_eq!(first["served"], json!("warm"), "{first}");
    assert_eq!(postal(&d, "1012 AB")["served"], json!("cache"));

    d.kill9();
    d.spawn();
    let again = postal(&d, "1012 AB");
    assert_eq!(again["served"], json!("cache"), "{again}\n{}", d.log());
    assert_eq!(again["result"], first["result"]);
}

#[test]
fn results_of_processes_not_declared_idempotent_are_never_cached() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let d = Daemon::start(&format!(
        "[[pool]]\nname = \"t\"\ncommand = [\"python3\", \"{}\"]\n\
         [[process]]\nname = \"once\"\npool = \"t\"\ninputs = [\"x\"]\nidempotent = false\n",
        worker("echo.py")
    ));
    for _ in 0..3 {
        let r = d.call(json!({"op": "run", "session": "s", "process": "once",
            "inputs": {"x": 1}}));
        assert_eq!(r["ok"], json!(true), "{r}");
        assert_ne!(r["served"], json!("cache"), "{r}");
    }
}

#[test]
fn each_kind_of_bad_store_file_is_set_aside_at_start() {
    type Damage = fn(&Path);
    let kinds: [(&str, Damage); 5] = [
        ("empty", |p| std::fs::write(p, b"").unwrap()),
        ("zeros", |p| std::fs::write(p, vec![0u8; 1 << 20]).unwrap()),
        ("truncated", |p| {
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            f.set_len(4096).unwrap();
        }),
        ("foreign", |p| {
            std::fs::write(p, b"SQLite format 3\0 not ours at all").unwrap()
        }),
        ("flipped", |p| {
            let mut bytes = std::fs::read(p).unwrap();
            for b in bytes.iter_mut().take(64).skip(8) {
                *b ^= 0xA5;
            }
            std::fs::write(p, bytes).unwrap();
        }),
    ];
    for (kind, damage) in kinds {
        let mut d = Daemon::start("");
        assert_eq!(postal(&d, "3511 LN")["ok"], json!(true));
        assert!(d.stop());
        let file = d.dir.path().join("cache/results.db");
        assert!(file.exists(), "no cache file at {}", file.display());
        damage(&file);

        d.spawn();
        let r = postal(&d, "3511 LN");
        assert_eq!(r["ok"], json!(true), "{kind}: {r}");
        assert_ne!(
            r["served"],
            json!("cache"),
            "{kind}: a damaged file served a result"
        );
        let aside = std::fs::read_dir(d.dir.path().join("cache"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains(".bad-"));
        assert!(aside, "{kind}: the bad file was not set aside");
        assert!(
            d.log().contains("set aside"),
            "{kind}: no warning in the log"
        );
    }
}

#[test]
fn a_full_cache_disk_does_not_stop_the_daemon() {
    if skip_unless(is_root(), "needs root to mount a small tmpfs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=2m",
            "precog-test",
            mnt.to_str().unwrap(),
        ])
        .status()
        .is_ok_and(|s| s.success());
    if skip_unless(ok, "cannot mount a tmpfs here") {
        return;
    }
    // A cache larger than the disk: the reservation fails at start, and the daemon serves
    // without a cache.
    let keys = format!("cache_size = \"64M\"\ncache_dir = \"{}\"", mnt.display());
    let d = Daemon::start_with(&keys, "");
    let r = postal(&d, "2511 CV");
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(postal(&d, "2511 CV")["ok"], json!(true));
    assert!(d.log().contains("without a result cache"), "{}", d.log());
    drop(d);
    let _ = std::process::Command::new("umount").arg(&mnt).status();
}

#[test]
fn stats_say_the_cache_is_off_and_why_when_it_cannot_be_opened() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("cache");
    std::fs::write(
        &not_a_dir,
        b"a regular file where the cache directory should be",
    )
    .unwrap();
    let d = Daemon::start_with(&format!("cache_dir = \"{}\"", not_a_dir.display()), "");
    assert_eq!(postal(&d, "3011 AA")["ok"], json!(true));

    let stats = d.call(json!({"op": "stats"}));
    let cache = &stats["cache"];
    assert_eq!(cache["open"], json!(false), "{stats}");
    assert_eq!(cache["disabled"], json!(true), "{stats}");
    // The reason names what failed, as the log does.
    let reason = cache["disabled_reason"].as_str().unwrap_or("");
    assert!(reason.starts_with("not opened at start: "), "{stats}");
    assert!(reason.contains(&not_a_dir.display().to_string()), "{stats}");
    assert_eq!(stats["states"]["open"], json!(true), "{stats}");
    assert!(
        d.log().contains("running without a result cache"),
        "{}",
        d.log()
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_precogctl"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("stats")
        .output()
        .expect("run precogctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("cache: off: not opened at start: "), "{text}");
}

#[test]
fn a_file_size_limit_below_the_stores_leaves_the_daemon_serving_without_them() {
    // A cache of 8M and a partial-state store of 4M, both past a 1 MiB file-size limit (as
    // systemd's LimitFSIZE= or a shell's `ulimit -f` sets): reserving them must fail as a full
    // disk does, not end precogd with SIGXFSZ.
    let mut d = Daemon::prepare("cache_size = \"8M\"", "");
    d.file_size_limit = Some(1 << 20);
    d.spawn();
    let r = postal(&d, "2511 CV");
    assert_eq!(r["ok"], json!(true), "{r}\n{}", d.log());
    let stats = d.call(json!({"op": "stats"}));
    for store in ["cache", "states"] {
        assert_eq!(stats[store]["open"], json!(false), "{stats}");
        let reason = stats[store]["disabled_reason"].as_str().unwrap_or("");
        assert!(reason.contains("File too large"), "{stats}");
    }
    // The workers do not inherit the daemon's way of taking the limit: past it they end as
    // any process would.
    for pid in d.workers() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let ignored = status
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        assert_eq!(
            ignored & (1 << (libc::SIGXFSZ - 1)),
            0,
            "worker {pid}: {status}"
        );
    }
    assert!(d.stop(), "precogd did not stop cleanly:\n{}", d.log());
}

#[test]
fn a_job_interrupted_after_a_checkpoint_resumes_from_it() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let d = Daemon::start(&format!(
        "[[pool]]\nname = \"t\"\ncommand = [\"python3\", \"{}\"]\n\
         [[process]]\nname = \"fragile\"\npool = \"t\"\ninputs = [\"x\"]\nidempotent = true\n",
        worker("die_mid_job.py")
    ));
    let r = d.call(json!({"op": "run", "session": "s", "process": "fragile",
        "inputs": {"x": 1}}));
    assert_eq!(r["ok"], json!(true), "{r}\n{}", d.log());
    assert_eq!(r["result"]["resumed"], json!(true), "{r}");
    assert_eq!(r["result"]["state"]["step"], json!(1), "{r}");
}

#[test]
fn a_checkpoint_survives_a_daemon_restart() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let extra = format!(
        "[[pool]]\nname = \"t\"\ncommand = [\"python3\", \"{}\"]\ntimeout = \"20s\"\n\
         [[process]]\nname = \"long\"\npool = \"t\"\ninputs = [\"steps\", \"step_ms\"]\n",
        worker("checkpointer.py")
    );
    let mut d = Daemon::start(&extra);
    let req = json!({"op": "run", "session": "s", "process": "long",
        "inputs": {"steps": 10, "step_ms": 200}});
    let sock = d.socket.clone();
    let first = req.clone();
    let client = std::thread::spawn(move || {
        common::Conn::open(&sock)
            .ok()
            .and_then(|mut c| c.try_call(&first))
    });
    std::thread::sleep(Duration::from_millis(1100));
    d.kill9();
    let _ = client.join();
    d.spawn();
    let r = d.call(req);
    assert_eq!(r["ok"], json!(true), "{r}\n{}", d.log());
    let resumed = r["result"]["resumed_from"].as_u64().unwrap_or(0);
    assert!(resumed >= 3, "the job restarted from step {resumed}: {r}");
    assert_eq!(r["result"]["done"], json!(10));
}

#[test]
fn a_worker_flooding_checkpoints_keeps_precogd_small_and_only_the_latest_is_stored() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let extra = format!(
        "[[pool]]\nname = \"t\"\ncommand = [\"python3\", \"{}\"]\ntimeout = \"60s\"\n\
         [[process]]\nname = \"long\"\npool = \"t\"\n\
         inputs = [\"steps\", \"step_ms\", \"burst\"]\n",
        worker("checkpointer.py")
    );
    let d = Daemon::start(&extra);
    assert_eq!(d.call(json!({"op": "ping"}))["ok"], json!(true));
    let before = common::rss_kib(d.pid());
    // 300,000 checkpoints written as fast as the pipe takes them: each one kept until the
    // engine stored it would hold some hundreds of MiB.
    let r = d.call(json!({"op": "run", "session": "s", "process": "long",
        "inputs": {"steps": 300_000, "step_ms": 0, "burst": true}}));
    assert_eq!(r["ok"], json!(true), "{r}\n{}", d.log());
    assert_eq!(r["result"]["done"], json!(300_000), "{r}");
    let grown_mib = common::rss_kib(d.pid()).saturating_sub(before) / 1024;
    assert!(
        grown_mib < 64,
        "precogd grew by {grown_mib} MiB while a worker wrote checkpoints"
    );
    assert_eq!(d.call(json!({"op": "ping"}))["ok"], json!(true));
}

#[test]
fn a_reload_that_moves_the_stores_leaves_them_and_the_model_where_they_are_until_a_restart() {
    let mut d = Daemon::start("");
    let state = d.dir.path().join("state");
    let moved = d.dir.path().join("moved");
    assert_eq!(postal(&d, "1012 AB")["served"], json!("warm"));
    let text = std::fs::read_to_string(&d.config).unwrap();
    let new = text.replace(&state.display().to_string(), &moved.display().to_string())
        + "[sessions]\nmax = 500\n";
    assert_ne!(new, text);
    d.reload(&new);
    let warned = common::wait_until(Duration::from_secs(10), || {
        d.log().contains("restart precogd to apply them")
    });
    assert!(
        warned,
        "no word that state_dir needs a restart:\n{}",
        d.log()
    );
    assert!(d.log().contains("state_dir"), "{}", d.log());
    // The daemon goes on with what it opened: the cache still answers.
    assert_eq!(postal(&d, "1012 AB")["served"], json!("cache"));
    // The model saved at the stop goes beside the states it was started with.
    assert!(d.stop(), "precogd did not stop cleanly:\n{}", d.log());
    assert!(state.join("model.bin").exists(), "{}", d.log());
    assert!(!moved.exists(), "a reload wrote to the new state_dir");
    // A restart applies the new directory.
    d.spawn();
    assert!(d.stop());
    assert!(moved.join("model.bin").exists(), "{}", d.log());
}

#[test]
fn a_run_of_a_process_not_idempotent_never_resumes_from_another_runs_checkpoint() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    // Two reservations of the same thing at once are two reservations: the second must not
    // take up where the first one is, nor where one that failed stopped.
    let extra = format!(
        "[[pool]]\nname = \"t\"\ncommand = [\"python3\", \"{}\"]\ntimeout = \"20s\"\n\
         warm_min = 2\n\
         [[process]]\nname = \"reserve\"\npool = \"t\"\ninputs = [\"steps\", \"step_ms\"]\n",
        worker("checkpointer.py")
    );
    let d = Daemon::start(&extra);
    let req = json!({"op": "run", "session": "s", "process": "reserve",
        "inputs": {"steps": 8, "step_ms": 150}});
    let sock = d.socket.clone();
    let first = req.clone();
    let client = std::thread::spawn(move || common::Conn::open(&sock).unwrap().call(&first));
    std::thread::sleep(Duration::from_millis(700));
    let second = d.call(req);
    let first = client.join().unwrap();
    for r in [&first, &second] {
        assert_eq!(r["ok"], json!(true), "{r}\n{}", d.log());
        assert_eq!(r["result"]["resumed_from"], json!(0), "{r}");
    }
}
