//! A store file truncated while it is mapped: the store turns itself off instead of the process
//! dying of SIGBUS, precogd keeps serving without that store, says so in `stats`, and stops
//! cleanly; the next open sets the file aside.

mod common;

use std::fs::OpenOptions;
use std::path::Path;

use common::{Daemon, have_python, skip_unless, worker};
use precog::store::{CacheKey, ResultCache, StateStore};
use serde_json::{Value, json};

fn postal(d: &Daemon, code: &str) -> Value {
    d.call(
        json!({"op": "run", "session": "s", "process": "validate_postal_code",
        "inputs": {"country": "NL", "postal_code": code}}),
    )
}

fn truncate(path: &Path) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(0).unwrap();
}

fn stats(d: &Daemon) -> Value {
    let r = d.call(json!({"op": "stats"}));
    assert_eq!(r["ok"], json!(true), "{r}");
    r
}

/// The store's section of `stats`, wherever the reply puts it.
fn section<'a>(stats: &'a Value, name: &str) -> &'a Value {
    if stats[name].is_object() {
        &stats[name]
    } else {
        &stats["stats"][name]
    }
}

#[test]
fn a_cache_whose_file_shrinks_serves_nothing_more_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cache, _) = ResultCache::open(dir.path(), 4 << 20).unwrap();
    let key = |inputs| CacheKey {
        owner: 7,
        process: "p",
        version: 0,
        inputs,
    };
    cache.put(&key("old"), b"result", 0, 60_000).unwrap();
    truncate(cache.path());

    assert_eq!(cache.get(&key("old"), 1), None);
    cache.put(&key("new"), b"result", 1, 60_000).unwrap();
    assert_eq!(cache.get(&key("new"), 2), None);
    cache.sync().unwrap();
    cache.clear().unwrap();
    let stats = cache.stats();
    assert!(stats.file_changed && stats.disabled, "{stats:?}");
    assert_eq!(std::fs::metadata(cache.path()).unwrap().len(), 0);

    drop(cache);
    let (mut cache, set_aside) = ResultCache::open(dir.path(), 4 << 20).unwrap();
    assert_eq!(set_aside.len(), 1, "{set_aside:?}");
    assert!(!cache.stats().file_changed);
    cache.put(&key("new"), b"result", 3, 60_000).unwrap();
    assert_eq!(cache.get(&key("new"), 4).as_deref(), Some(&b"result"[..]));
}

#[test]
fn a_state_store_whose_file_shrinks_to_a_page_keeps_no_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (mut states, _) = StateStore::open(dir.path(), 4 << 20, 1024).unwrap();
    states.put(b"job", b"step 1", 0, 60_000).unwrap();
    let file = OpenOptions::new().write(true).open(states.path()).unwrap();
    file.set_len(4096).unwrap();

    states.put(b"job", b"step 2", 1, 60_000).unwrap();
    assert_eq!(states.get(b"job", 2), None);
    states.remove(b"job");
    assert!(states.stats().file_changed);
}

#[test]
fn a_result_cache_truncated_under_precogd_is_dropped_and_runs_go_on() {
    let mut d = Daemon::start("");
    let codes = ["1012 AB", "3511 LN", "9999 ZZ"];
    let before: Vec<Value> = codes.iter().map(|c| postal(&d, c)).collect();
    for r in &before {
        assert_eq!(r["ok"], json!(true), "{r}");
    }
    assert_eq!(postal(&d, codes[0])["served"], json!("cache"));

    truncate(&d.dir.path().join("cache/results.db"));

    for round in 0..3 {
        for (code, first) in codes.iter().zip(&before) {
            let r = postal(&d, code);
            assert_eq!(r["ok"], json!(true), "round {round}: {r}\n{}", d.log());
            assert_eq!(r["result"], first["result"], "round {round}: {r}");
        }
        let fresh = postal(&d, &format!("10{round}0 AA"));
        assert_eq!(fresh["ok"], json!(true), "{fresh}\n{}", d.log());
        assert!(fresh["result"].is_object(), "{fresh}");
    }

    let s = stats(&d);
    let cache = section(&s, "cache");
    assert_eq!(cache["disabled"], json!(true), "{s}");
    assert_eq!(
        cache["disabled_reason"],
        json!("file changed under precogd"),
        "{s}"
    );
    let log = d.log();
    assert_eq!(log.matches("changed under precogd").count(), 1, "{log}");
    assert!(d.stop(), "precogd did not exit cleanly:\n{}", d.log());
}

#[test]
fn a_state_store_truncated_under_precogd_is_dropped_and_jobs_go_on() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let extra = format!(
        "[[pool]]\nname = \"t\"\ncommand = [\"python3\", \"{}\"]\ntimeout = \"20s\"\n\
         [[process]]\nname = \"long\"\npool = \"t\"\ninputs = [\"steps\", \"step_ms\"]\n",
        worker("checkpointer.py")
    );
    let mut d = Daemon::start(&extra);
    let run = |steps: u64| {
        d.call(json!({"op": "run", "session": "s", "process": "long",
            "inputs": {"steps": steps, "step_ms": 10}}))
    };
    assert_eq!(run(4)["result"]["done"], json!(4));

    truncate(&d.dir.path().join("state/states.db"));

    for steps in [4, 5, 6, 4] {
        let r = run(steps);
        assert_eq!(r["ok"], json!(true), "{r}\n{}", d.log());
        assert_eq!(r["result"]["done"], json!(steps), "{r}");
        assert_eq!(r["result"]["resumed_from"], json!(0), "{r}");
    }

    let s = stats(&d);
    let states = section(&s, "states");
    assert_eq!(states["disabled"], json!(true), "{s}");
    assert_eq!(
        states["disabled_reason"],
        json!("file changed under precogd"),
        "{s}"
    );
    assert!(d.stop(), "precogd did not exit cleanly:\n{}", d.log());
}
