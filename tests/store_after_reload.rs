//! Black-box tests of results and partial states kept across a change of what computes them:
//! a reload or a restart that gives a process another worker command or another pool must not
//! serve what the old one computed, while a restart on the same configuration still does.

mod common;

use std::time::Duration;

use common::{Daemon, have_python, skip_unless, worker};
use serde_json::{Value, json};

/// A pool `t` whose worker answers with `tag`, and an idempotent process `q` in `pool`.
fn config(d: &Daemon, tag_t: &str, tag_u: &str, pool: &str) -> String {
    let base = std::fs::read_to_string(&d.config).unwrap();
    let base = base.split("[[pool]]").next().unwrap().to_string();
    format!(
        "{base}[[pool]]\nname = \"t\"\ncommand = [\"python3\", \"{w}\", \"{tag_t}\"]\n\
         [[pool]]\nname = \"u\"\ncommand = [\"python3\", \"{w}\", \"{tag_u}\"]\n\
         [[process]]\nname = \"q\"\npool = \"{pool}\"\ninputs = [\"x\"]\n\
         optional_inputs = [\"sleep_ms\"]\nidempotent = true\n",
        w = worker("tagged.py")
    )
}

fn run(d: &Daemon, inputs: Value) -> Value {
    d.call(json!({"op": "run", "session": "s", "process": "q", "inputs": inputs}))
}

fn start() -> Option<Daemon> {
    if skip_unless(have_python(), "python3 is not installed") {
        return None;
    }
    let mut d = Daemon::prepare("", "");
    std::fs::write(&d.config, config(&d, "v1", "other", "t")).unwrap();
    d.spawn();
    Some(d)
}

#[test]
fn a_reload_that_changes_the_workers_command_does_not_serve_the_old_commands_results() {
    let Some(d) = start() else { return };
    let first = run(&d, json!({"x": 1}));
    assert_eq!(first["result"]["tag"], json!("v1"), "{first}");
    assert_eq!(run(&d, json!({"x": 1}))["served"], json!("cache"));

    d.reload_applied(&config(&d, "v2", "other", "t"));
    let after = run(&d, json!({"x": 1}));
    assert_eq!(after["ok"], json!(true), "{after}\n{}", d.log());
    assert_eq!(after["result"]["tag"], json!("v2"), "{after}");
    // The new command's result is cached in turn.
    let again = run(&d, json!({"x": 1}));
    assert_eq!(again["served"], json!("cache"), "{again}");
    assert_eq!(again["result"]["tag"], json!("v2"), "{again}");
}

#[test]
fn a_reload_that_moves_a_process_to_another_pool_does_not_serve_the_old_pools_results() {
    let Some(d) = start() else { return };
    assert_eq!(run(&d, json!({"x": 2}))["result"]["tag"], json!("v1"));

    d.reload_applied(&config(&d, "v1", "other", "u"));
    let after = run(&d, json!({"x": 2}));
    assert_eq!(
        after["result"]["tag"],
        json!("other"),
        "{after}\n{}",
        d.log()
    );

    // Back where it was: the first pool's result, kept all along, is right again.
    d.reload_applied(&config(&d, "v1", "other", "t"));
    let back = run(&d, json!({"x": 2}));
    assert_eq!(back["result"]["tag"], json!("v1"), "{back}");
    assert_eq!(back["served"], json!("cache"), "{back}");
}

#[test]
fn a_run_after_a_reload_does_not_join_a_job_the_old_command_is_running() {
    let Some(d) = start() else { return };
    let sock = d.socket.clone();
    let slow = json!({"x": 3, "sleep_ms": 1500});
    let req = json!({"op": "run", "session": "s", "process": "q", "inputs": slow});
    let client = std::thread::spawn(move || common::Conn::open(&sock).unwrap().call(&req));
    std::thread::sleep(Duration::from_millis(300));
    d.reload_applied(&config(&d, "v2", "other", "t"));
    let after = run(&d, slow.clone());
    assert_eq!(after["result"]["tag"], json!("v2"), "{after}\n{}", d.log());
    // The request sent before the reload gets the answer of the job it started.
    let before = client.join().unwrap();
    assert_eq!(before["result"]["tag"], json!("v1"), "{before}");
    // And the old job's result, stored after the reload, is not served for the new command.
    let cached = run(&d, slow);
    assert_eq!(cached["result"]["tag"], json!("v2"), "{cached}");
}

#[test]
fn a_restart_serves_the_cache_only_for_the_command_that_computed_it() {
    let Some(mut d) = start() else { return };
    assert_eq!(run(&d, json!({"x": 4}))["result"]["tag"], json!("v1"));
    assert!(d.stop(), "{}", d.log());

    // The same configuration: the result kept is served.
    d.spawn();
    let same = run(&d, json!({"x": 4}));
    assert_eq!(same["served"], json!("cache"), "{same}\n{}", d.log());
    assert_eq!(same["result"]["tag"], json!("v1"), "{same}");
    assert!(d.stop(), "{}", d.log());

    // Another command: computed again.
    std::fs::write(&d.config, config(&d, "v2", "other", "t")).unwrap();
    d.spawn();
    let changed = run(&d, json!({"x": 4}));
    assert_eq!(
        changed["result"]["tag"],
        json!("v2"),
        "{changed}\n{}",
        d.log()
    );
}

#[test]
fn a_job_run_again_on_the_pool_its_process_moved_to_is_not_kept_as_the_old_pools_result() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let mut d = Daemon::prepare("shutdown_grace = \"1s\"", "");
    let both = config(&d, "v1", "other", "t");
    std::fs::write(&d.config, &both).unwrap();
    d.spawn();
    // Pool `t` removed, `q` moved to `u`.
    let moved = both
        .replacen("[[pool]]\nname = \"t\"", "[[pool]]\nname = \"gone\"", 1)
        .replace("pool = \"t\"", "pool = \"u\"");
    let sock = d.socket.clone();
    let slow = json!({"x": 6, "sleep_ms": 2000});
    let req = json!({"op": "run", "session": "s", "process": "q", "inputs": slow});
    let client = std::thread::spawn(move || common::Conn::open(&sock).unwrap().call(&req));
    std::thread::sleep(Duration::from_millis(300));
    d.reload_applied(&moved);
    // Past the removed pool's grace, the idempotent job runs again where `q` lives now.
    let answer = client.join().unwrap();
    assert_eq!(
        answer["result"]["tag"],
        json!("other"),
        "{answer}\n{}",
        d.log()
    );

    // `q` back on `t`: what `u` computed is not served as `t`'s result.
    d.reload_applied(&both);
    let back = run(&d, slow);
    assert_eq!(back["result"]["tag"], json!("v1"), "{back}\n{}", d.log());
}
