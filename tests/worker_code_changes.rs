//! Black-box tests of a worker's code changing on disk under a running precogd, as a deploy or
//! a package upgrade does it: the pool gets new workers, and what the old code computed is not
//! served for the new, while a change to the worker's data leaves the workers alone.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Daemon, have_python, skip_unless, wait_until};
use serde_json::{Value, json};

/// A worker that answers with the version written into its own file and its pid.
fn write_worker(path: &Path, version: &str) {
    let text = format!(
        "import json, os, sys\n\
         for line in sys.stdin:\n\
         \x20   if not line.strip():\n\
         \x20       continue\n\
         \x20   job = json.loads(line)\n\
         \x20   result = {{\"version\": \"{version}\", \"pid\": os.getpid()}}\n\
         \x20   print(json.dumps({{\"job\": job.get(\"job\"), \"result\": result}}), flush=True)\n"
    );
    deploy(path, &text);
}

/// Puts `text` at `path` as a deploy does: written beside the old file and renamed into place.
fn deploy(path: &Path, text: &str) {
    let next = path.with_extension("new");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// Starts precogd with pool `t` (`pool_keys`, given the daemon's directory) and on it the
/// idempotent process `q` of input `x`, once `setup` has put its files in that directory.
fn start_pool(setup: &dyn Fn(&Path), pool_keys: &dyn Fn(&Path) -> String) -> Option<Daemon> {
    if skip_unless(have_python(), "python3 is not installed") {
        return None;
    }
    let mut d = Daemon::prepare("", "");
    setup(d.dir.path());
    let base = std::fs::read_to_string(&d.config).unwrap();
    let text = format!(
        "{base}[[pool]]\nname = \"t\"\n{}\n\
         [[process]]\nname = \"q\"\npool = \"t\"\ninputs = [\"x\"]\nidempotent = true\n",
        pool_keys(d.dir.path())
    );
    std::fs::write(&d.config, text).unwrap();
    d.spawn();
    Some(d)
}

/// Whether the pool has taken `n` changes of its files, waiting up to 10 s for them.
fn changes_taken(d: &Daemon, n: usize) -> bool {
    wait_until(Duration::from_secs(10), || {
        d.log().matches("changed on disk").count() >= n
    })
}

fn run(d: &Daemon, x: u64) -> Value {
    d.call(json!({"op": "run", "session": "s", "process": "q", "inputs": {"x": x}}))
}

/// A daemon whose pool runs `worker.py` from the test's directory with a data file after it.
fn start() -> Option<(Daemon, std::path::PathBuf, std::path::PathBuf)> {
    start_warm(1, &|script| write_worker(script, "v1"))
}

/// [`start`] with `warm_min` warm workers and the worker's file put in place by `install`.
fn start_warm(
    warm_min: usize,
    install: &dyn Fn(&Path),
) -> Option<(Daemon, std::path::PathBuf, std::path::PathBuf)> {
    let setup = |dir: &Path| {
        install(&dir.join("worker.py"));
        std::fs::write(dir.join("data.txt"), "rows").unwrap();
    };
    let keys = |dir: &Path| {
        format!(
            "warm_min = {warm_min}\ncommand = [\"python3\", \"{}\", \"--data\", \"{}\"]",
            dir.join("worker.py").display(),
            dir.join("data.txt").display()
        )
    };
    let d = start_pool(&setup, &keys)?;
    let (script, data) = (
        d.dir.path().join("worker.py"),
        d.dir.path().join("data.txt"),
    );
    Some((d, script, data))
}

#[test]
fn a_new_worker_script_on_disk_replaces_the_workers_and_the_old_results() {
    let Some((d, script, _)) = start() else {
        return;
    };
    let first = run(&d, 1);
    assert_eq!(first["result"]["version"], json!("v1"), "{first}");
    assert_eq!(run(&d, 1)["served"], json!("cache"));
    let old_pid = first["result"]["pid"].clone();

    write_worker(&script, "v2");
    let written = std::time::Instant::now();
    // Checked once a second, and acted on once the change has held for a check.
    let mut after = Value::Null;
    let replaced = wait_until(Duration::from_secs(10), || {
        after = run(&d, 2);
        after["result"]["version"] == json!("v2")
    });
    assert!(replaced, "still the old code: {after}\n{}", d.log());
    println!(
        "the new code answered {:?} after it was written",
        written.elapsed()
    );
    assert_ne!(after["result"]["pid"], old_pid, "{after}");
    assert!(d.log().contains("changed on disk"), "{}", d.log());

    // The result the old code kept is not served for the new code.
    let again = run(&d, 1);
    assert_eq!(again["result"]["version"], json!("v2"), "{again}");
    assert_ne!(again["served"], json!("cache"), "{again}");
    assert_eq!(run(&d, 1)["served"], json!("cache"));
}

#[test]
fn a_change_to_the_workers_data_leaves_its_workers_and_results_alone() {
    let Some((d, _, data)) = start() else { return };
    let first = run(&d, 1);
    assert_eq!(first["result"]["version"], json!("v1"), "{first}");
    std::fs::write(&data, "more rows").unwrap();
    // Three checks pass.
    std::thread::sleep(Duration::from_millis(3500));
    let again = run(&d, 1);
    assert_eq!(again["served"], json!("cache"), "{again}");
    let other = run(&d, 2);
    assert_eq!(other["result"]["pid"], first["result"]["pid"], "{other}");
    assert!(!d.log().contains("changed on disk"), "{}", d.log());
}

#[test]
fn a_restart_after_a_new_worker_script_does_not_serve_the_old_results() {
    let Some((mut d, script, _)) = start() else {
        return;
    };
    assert_eq!(run(&d, 1)["result"]["version"], json!("v1"));
    assert!(d.stop(), "{}", d.log());

    // Unchanged, the kept result answers after a restart.
    d.spawn();
    assert_eq!(run(&d, 1)["served"], json!("cache"));
    assert!(d.stop(), "{}", d.log());

    write_worker(&script, "v2");
    d.spawn();
    let after = run(&d, 1);
    assert_eq!(after["result"]["version"], json!("v2"), "{after}");
    assert_ne!(after["served"], json!("cache"), "{after}");
}

#[test]
fn a_worker_script_gone_from_disk_leaves_the_running_workers_serving() {
    let Some((d, script, _)) = start() else {
        return;
    };
    let first = run(&d, 1);
    assert_eq!(first["result"]["version"], json!("v1"), "{first}");
    std::fs::remove_file(&script).unwrap();
    // Two checks pass, then a reload of the same configuration.
    std::thread::sleep(Duration::from_millis(2500));
    let during = run(&d, 2);
    assert_eq!(during["result"]["pid"], first["result"]["pid"], "{during}");
    let text = std::fs::read_to_string(&d.config).unwrap();
    d.reload_applied(&text);
    let after = run(&d, 3);
    assert_eq!(after["result"]["pid"], first["result"]["pid"], "{after}");
    assert_eq!(run(&d, 1)["served"], json!("cache"));
    assert!(!d.log().contains("changed on disk"), "{}", d.log());
}

/// Points the symlink `link` at `target`, as a release switch does: a new link renamed over it.
fn switch(link: &Path, target: &Path) {
    let next = link.with_extension("next");
    std::os::unix::fs::symlink(target, &next).unwrap();
    std::fs::rename(&next, link).unwrap();
}

/// Waits until the pool takes the release `script` points at, points it back at `first`, and
/// waits until the pool takes that too.
fn take_then_roll_back(d: &Daemon, script: &Path, first: &Path) {
    assert!(changes_taken(d, 1), "{}", d.log());
    switch(script, first);
    assert!(changes_taken(d, 2), "{}", d.log());
}

#[test]
fn a_worker_started_before_precogd_took_a_change_keeps_no_result_under_the_old_version() {
    // Two releases and a link to the first. The stamp follows the link.
    let install = |script: &Path| {
        write_worker(&script.with_file_name("a.py"), "v1");
        write_worker(&script.with_file_name("b.py"), "v2");
        switch(script, &script.with_file_name("a.py"));
    };
    // No warm worker: the run right after the switch starts one on the new code.
    let Some((d, script, _)) = start_warm(0, &install) else {
        return;
    };
    let (a, b) = (script.with_file_name("a.py"), script.with_file_name("b.py"));
    switch(&script, &b);
    let early = run(&d, 7);
    assert_eq!(early["result"]["version"], json!("v2"), "{early}");
    // Taken, then rolled back: the version is the first release's again.
    take_then_roll_back(&d, &script, &a);
    let after = run(&d, 7);
    assert_eq!(
        after["result"]["version"],
        json!("v1"),
        "{after}\n{}",
        d.log()
    );
    assert_eq!(run(&d, 7)["served"], json!("cache"));
}

#[test]
fn files_a_pool_watches_count_for_a_script_after_an_option_and_its_modules() {
    let setup = |dir: &Path| {
        write_worker(&dir.join("worker.py"), "v1");
        std::fs::write(dir.join("rates.py"), "RATE = 1\n").unwrap();
    };
    let keys = |dir: &Path| {
        let (s, m) = (dir.join("worker.py"), dir.join("rates.py"));
        format!(
            "command = [\"python3\", \"-u\", \"{s}\"]\nwatch = [\"{s}\", \"{m}\"]",
            s = s.display(),
            m = m.display()
        )
    };
    let Some(d) = start_pool(&setup, &keys) else {
        return;
    };
    let module = d.dir.path().join("rates.py");
    let first = run(&d, 1);
    assert_eq!(first["result"]["version"], json!("v1"), "{first}");
    assert_eq!(run(&d, 1)["served"], json!("cache"));

    // Only the module changes: the workers and the results go all the same.
    deploy(&module, "RATE = 2\n");
    assert!(changes_taken(&d, 1), "{}", d.log());
    let after = run(&d, 1);
    assert_ne!(after["served"], json!("cache"), "{after}");
    assert_ne!(after["result"]["pid"], first["result"]["pid"], "{after}");
}

#[test]
fn a_watched_file_not_there_yet_keeps_results_until_it_appears() {
    let setup = |dir: &Path| write_worker(&dir.join("worker.py"), "v1");
    let keys = |dir: &Path| {
        let (s, l) = (dir.join("worker.py"), dir.join("later.py"));
        format!(
            "command = [\"python3\", \"{s}\"]\nwatch = [\"{s}\", \"{l}\"]",
            s = s.display(),
            l = l.display()
        )
    };
    let Some(d) = start_pool(&setup, &keys) else {
        return;
    };
    let (script, later) = (
        d.dir.path().join("worker.py"),
        d.dir.path().join("later.py"),
    );
    assert!(d.log().contains("is not there"), "{}", d.log());
    let first = run(&d, 1);
    assert_eq!(first["result"]["version"], json!("v1"), "{first}");
    assert_eq!(run(&d, 1)["served"], json!("cache"));

    // The file not there hides no change of the others.
    write_worker(&script, "v2");
    assert!(changes_taken(&d, 1), "{}", d.log());
    let after = run(&d, 1);
    assert_eq!(after["result"]["version"], json!("v2"), "{after}");
    assert_ne!(after["served"], json!("cache"), "{after}");

    // And once it is there, it counts.
    std::fs::write(&later, "X = 1\n").unwrap();
    assert!(changes_taken(&d, 2), "{}", d.log());
    assert_ne!(run(&d, 1)["served"], json!("cache"));
}

#[test]
fn a_script_changed_while_its_worker_starts_keeps_no_result() {
    let setup = |dir: &Path| {
        write_worker(&dir.join("a.py"), "v1");
        write_worker(&dir.join("b.py"), "v2");
        switch(&dir.join("worker.py"), &dir.join("a.py"));
    };
    // The worker reads its script half a second after it starts, as a slow wrapper would.
    let keys = |dir: &Path| {
        let s = dir.join("worker.py");
        format!(
            "warm_min = 0\ncommand = [\"/bin/sh\", \"-c\", \"sleep 0.5; exec python3 {s}\"]\n\
             watch = [\"{s}\"]",
            s = s.display()
        )
    };
    let Some(d) = start_pool(&setup, &keys) else {
        return;
    };
    let script = d.dir.path().join("worker.py");
    let (a, b) = (script.with_file_name("a.py"), script.with_file_name("b.py"));
    let sock = d.socket.clone();
    let req = json!({"op": "run", "session": "s", "process": "q", "inputs": {"x": 1}});
    let client = std::thread::spawn(move || common::Conn::open(&sock).unwrap().call(&req));
    std::thread::sleep(Duration::from_millis(200));
    switch(&script, &b);
    let early = client.join().unwrap();
    assert_eq!(early["result"]["version"], json!("v2"), "{early}");

    // Taken, then rolled back: the first release's version again, and its own answer.
    take_then_roll_back(&d, &script, &a);
    let after = run(&d, 1);
    assert_eq!(
        after["result"]["version"],
        json!("v1"),
        "{after}\n{}",
        d.log()
    );
}

/// A worker that reads `rates` as it starts (`none` when it is not there), saves a checkpoint,
/// answers with both and the state it was given, and exits: every job starts a worker.
fn write_once_worker(path: &Path, version: &str, rates: &Path) {
    let text = format!(
        "import json, os, sys\n\
         extra = open('{r}').read() if os.path.exists('{r}') else 'none'\n\
         for line in sys.stdin:\n\
         \x20   if not line.strip():\n\
         \x20       continue\n\
         \x20   job = json.loads(line)\n\
         \x20   saved = {{'job': job['job'], 'checkpoint': {{'by': '{version}'}}}}\n\
         \x20   print(json.dumps(saved), flush=True)\n\
         \x20   result = {{'version': '{version}', 'extra': extra, 'state': job.get('state')}}\n\
         \x20   print(json.dumps({{\"job\": job['job'], \"result\": result}}), flush=True)\n\
         \x20   sys.exit(0)\n",
        r = rates.display()
    );
    deploy(path, &text);
}

/// A daemon whose pool starts a worker for each job, watching its script and a `rates` file.
fn start_once(dir_setup: &dyn Fn(&Path)) -> Option<Daemon> {
    let keys = |dir: &Path| {
        let (s, r) = (dir.join("worker.py"), dir.join("rates"));
        format!(
            "warm_min = 0\ncommand = [\"python3\", \"{s}\"]\nwatch = [\"{s}\", \"{r}\"]",
            s = s.display(),
            r = r.display()
        )
    };
    start_pool(dir_setup, &keys)
}

#[test]
fn a_worker_started_while_a_watched_file_is_gone_keeps_no_result() {
    let setup = |dir: &Path| {
        std::fs::write(dir.join("rates.v1"), "m1").unwrap();
        switch(&dir.join("rates"), &dir.join("rates.v1"));
        write_once_worker(&dir.join("worker.py"), "v1", &dir.join("rates"));
    };
    let Some(d) = start_once(&setup) else { return };
    let rates = d.dir.path().join("rates");
    assert_eq!(run(&d, 1)["result"]["extra"], json!("m1"));

    std::fs::remove_file(&rates).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let without = run(&d, 2);
    assert_eq!(without["result"]["extra"], json!("none"), "{without}");
    // Back as it was: the same stamps, so the version the worker without it ran under.
    switch(&rates, &d.dir.path().join("rates.v1"));
    std::thread::sleep(Duration::from_millis(2500));
    let back = run(&d, 2);
    assert_eq!(back["result"]["extra"], json!("m1"), "{back}\n{}", d.log());
    assert!(!d.log().contains("changed on disk"), "{}", d.log());
}

#[test]
fn a_checkpoint_saved_by_a_worker_on_other_files_is_not_resumed() {
    let setup = |dir: &Path| {
        std::fs::write(dir.join("rates"), "m1").unwrap();
        let (a, b) = (dir.join("a.py"), dir.join("b.py"));
        write_once_worker(&a, "A", &dir.join("rates"));
        write_once_worker(&b, "B", &dir.join("rates"));
        switch(&dir.join("worker.py"), &a);
    };
    let Some(d) = start_once(&setup) else { return };
    let dir = d.dir.path();
    let script = dir.join("worker.py");
    switch(&script, &dir.join("b.py"));
    // Started on B's script before the pool took it: answers, saves a checkpoint, keeps neither.
    let early = run(&d, 7);
    assert_eq!(early["result"]["version"], json!("B"), "{early}");

    take_then_roll_back(&d, &script, &dir.join("a.py"));
    let after = run(&d, 7);
    assert_eq!(after["result"]["version"], json!("A"), "{after}");
    assert_eq!(
        after["result"]["state"],
        Value::Null,
        "{after}\n{}",
        d.log()
    );
}
