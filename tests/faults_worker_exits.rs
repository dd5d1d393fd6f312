//! Black-box tests of workers that end, start or answer in ways the daemon must tell apart: a
//! worker that recycles itself with status 0, one slow to start, one that follows its replies
//! with blank lines, one whose replies carry the wrong job id, one that exits while a child it
//! left holds its pipes, one that closes its output but lives on, one that dies of a
//! traceback longer than the log takes in a second, one that leaves its process group, and one
//! that does not read a job longer than a pipe holds, and one that floods blank lines.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, have_python, skip_unless, wait_until, worker};
use serde_json::{Value, json};

fn pool(name: &str, command: &str, extra: &str) -> String {
    format!(
        "[[pool]]\nname = \"{name}\"\ncommand = {command}\nwarm_min = 1\nworkers_max = 1\n\
         {extra}\n"
    )
}

fn python(script: &str, args: &[&str]) -> String {
    let mut words = vec![format!("\"python3\", \"{}\"", worker(script))];
    words.extend(args.iter().map(|a| format!("\"{a}\"")));
    format!("[{}]", words.join(", "))
}

fn process(name: &str, pool: &str) -> String {
    format!("[[process]]\nname = \"{name}\"\npool = \"{pool}\"\ninputs = [\"x\"]\n")
}

const NO_SHOP: &str = "[[pool]]\nname = \"shop\"\nwarm_min = 0\n";

fn run(d: &Daemon, process: &str, x: Value) -> Value {
    d.call(json!({"op": "run", "session": "w", "process": process, "inputs": {"x": x}}))
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn pool_stats(d: &Daemon, pool: &str) -> Value {
    d.call(json!({"op": "stats"}))["pools"][pool].clone()
}

#[test]
fn a_job_that_changes_the_world_is_not_run_again_when_its_worker_exits_before_answering() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    // The same recycling worker, for a process not declared idempotent: the job written to a
    // worker that then exits may have been read, so it is not given to another worker.
    let config = format!(
        "{NO_SHOP}{}{}",
        pool(
            "recycling",
            &python("recycle.py", &["2000"]),
            "timeout = \"20s\""
        ),
        process("reserve", "recycling")
    );
    let d = Daemon::start(&config);
    let first = run(&d, "reserve", json!(1));
    assert_eq!(first["ok"], json!(true), "{first}\n{}", d.log());
    let second = run(&d, "reserve", json!(2));
    assert_eq!(second["error"]["code"], json!("worker_failed"), "{second}");
    assert_eq!(second["error"]["reason"], json!("crashed"), "{second}");
    let message = second["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("not idempotent"), "{second}");
    let third = run(&d, "reserve", json!(3));
    assert_eq!(third["ok"], json!(true), "{third}\n{}", d.log());
}

#[test]
fn a_worker_that_exits_0_after_its_reply_is_no_crash_and_the_next_job_goes_to_a_new_one() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    // Each worker answers one job, then exits 0 two seconds later, never reading the job that the
    // daemon has meanwhile written to it.
    let config = format!(
        "{NO_SHOP}{}{}",
        pool(
            "recycling",
            &python("recycle.py", &["2000"]),
            "timeout = \"20s\""
        ),
        process("echo", "recycling") + "idempotent = true\n"
    );
    let d = Daemon::start(&config);
    let mut pids = Vec::new();
    for x in 0..4 {
        let r = run(&d, "echo", json!(x));
        assert_eq!(r["ok"], json!(true), "run {x}: {r}\n{}", d.log());
        assert_eq!(r["result"]["echo"]["x"], json!(x), "{r}");
        pids.push(r["result"]["pid"].clone());
    }
    pids.dedup();
    assert_eq!(pids.len(), 4, "each job on a new worker: {pids:?}");
    assert!(
        d.log()
            .lines()
            .any(|l| l.contains("the job goes to another worker") && l.contains("process=echo")),
        "no job reached a worker that was exiting, or its process is not named:\n{}",
        d.log()
    );
    let stats = pool_stats(&d, "recycling");
    assert_eq!(stats["crashes"], json!(0), "{stats}");
    assert_eq!(stats["jobs_failed"], json!(0), "{stats}");
    assert_eq!(stats["start_failures"], json!(0), "{stats}");

    // A job that makes every worker exit 0 without answering goes to a second worker, then
    // fails as a crash.
    let r = run(&d, "echo", json!("exit_now"));
    assert_eq!(r["error"]["code"], json!("worker_failed"), "{r}");
    assert_eq!(r["error"]["reason"], json!("crashed"), "{r}");
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("twice"), "{r}");
}

#[test]
fn a_worker_slower_to_start_than_the_timeout_serves_its_first_job() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    // Both workers take 4 s to start and have 2 s per job; the first may start for 10 s (the
    // default start_timeout), the second for 1 s only.
    let config = format!(
        "{NO_SHOP}{}{}{}{}",
        pool(
            "slow",
            &python("slow_start.py", &["4000"]),
            "timeout = \"2s\""
        ),
        pool(
            "hasty",
            &python("slow_start.py", &["4000"]),
            "timeout = \"2s\"\nstart_timeout = \"1s\""
        ),
        process("slow_echo", "slow"),
        process("hasty_echo", "hasty"),
    );
    let d = Daemon::start(&config);
    let hasty = {
        let socket = d.socket.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut c = common::Conn::open(&socket).expect("connect");
            let r = c.call(
                &json!({"op": "run", "session": "h", "process": "hasty_echo",
                "inputs": {"x": 1}}),
            );
            (r, started.elapsed())
        })
    };
    let r = run(&d, "slow_echo", json!(1));
    assert_eq!(r["ok"], json!(true), "{r}\n{}", d.log());
    let r = run(&d, "slow_echo", json!(2));
    assert_eq!(r["ok"], json!(true), "{r}");
    let stats = pool_stats(&d, "slow");
    assert_eq!(stats["timeouts"], json!(0), "{stats}");

    // Past start_timeout + timeout (3 s after its start, before it is ready) the worker is
    // killed as before.
    let (r, took) = hasty.join().unwrap();
    assert_eq!(r["error"]["code"], json!("timeout"), "{r}");
    assert!(
        took < Duration::from_secs(10),
        "answered after {took:?}: {r}"
    );
}

#[test]
fn blank_lines_after_replies_are_skipped() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let config = format!(
        "{NO_SHOP}{}{}",
        pool("blank", &python("blank_line.py", &[]), "timeout = \"20s\""),
        process("echo", "blank")
    );
    let d = Daemon::start(&config);
    for x in 0..5 {
        let r = run(&d, "echo", json!(x));
        assert_eq!(r["ok"], json!(true), "run {x}: {r}");
    }
    assert_eq!(pool_stats(&d, "blank")["spawned"], json!(1));
}

#[test]
fn replies_with_a_wrong_job_id_are_logged_as_warnings_within_a_limit() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let config = format!(
        "{NO_SHOP}{}{}{}{}",
        pool(
            "strings",
            &python("wrong_id.py", &["string"]),
            "timeout = \"1s\""
        ),
        pool(
            "previous",
            &python("wrong_id.py", &["previous"]),
            "timeout = \"1s\""
        ),
        process("as_string", "strings"),
        process("off_by_one", "previous"),
    );
    let d = Daemon::start(&config);
    for process in ["as_string", "off_by_one"] {
        let r = run(&d, process, json!(1));
        assert_eq!(r["error"]["code"], json!("timeout"), "{process}: {r}");
    }
    let log = d.log();
    let warned = |needle: &str| {
        log.lines()
            .filter(|l| l.contains("WARN") && l.contains("discarded a worker reply"))
            .filter(|l| l.contains(needle))
            .count()
    };
    // Each worker wrote 20 wrong replies at once; a few are logged, with what they said.
    for (pool, needle) in [("strings", "\"job\": \""), ("previous", "\"job\": ")] {
        let n = warned(&format!("pool={pool}"));
        assert!((1..=10).contains(&n), "{n} warnings for {pool}:\n{log}");
        assert!(warned(needle) > 0, "the reply is not shown:\n{log}");
    }
}

#[test]
fn a_worker_that_exits_while_its_child_holds_the_pipes_is_reported_at_once() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let config = format!(
        "{NO_SHOP}{}{}",
        pool(
            "leaver",
            &python("exit_leaving_child.py", &[]),
            "timeout = \"20s\""
        ),
        process("leave", "leaver")
    );
    let d = Daemon::start(&config);
    let started = Instant::now();
    let r = run(&d, "leave", json!(1));
    let took = started.elapsed();
    let mut left = None;
    wait_until(Duration::from_secs(5), || {
        left = d
            .log()
            .lines()
            .find_map(|l| l.split("left child ").nth(1)?.trim().parse::<i32>().ok());
        left.is_some()
    });
    // Without cgroups nothing else ends it.
    if let Some(pid) = left.filter(|p| cmdline(*p as u32).contains("exit_leaving_child.py")) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert_eq!(r["error"]["code"], json!("worker_failed"), "{r}");
    assert_eq!(r["error"]["reason"], json!("crashed"), "{r}");
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("exit status: 7"), "{r}");
    assert!(took < Duration::from_secs(10), "reported after {took:?}");
    let log = d.log();
    let lost = log.lines().find(|l| l.contains("replacing the worker"));
    assert!(
        lost.is_some_and(|l| l.contains("pool=leaver") && l.contains("process=leave")),
        "the lost job's pool and process are not named:\n{log}"
    );
}

#[test]
fn a_worker_that_closed_its_output_is_not_said_to_have_exited() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let config = format!(
        "{NO_SHOP}{}{}",
        pool("mute", &python("close_output.py", &[]), "timeout = \"20s\""),
        process("ask", "mute")
    );
    let d = Daemon::start(&config);
    let r = run(&d, "ask", json!(1));
    assert_eq!(r["error"]["code"], json!("worker_failed"), "{r}");
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("worker closed its output"), "{r}");
}

#[test]
fn a_worker_dying_of_a_long_traceback_leaves_its_last_line_in_the_log() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    // 20 lines at once, past the 5 a second logged: the end of the traceback, which names the
    // error, comes when the worker's stderr ends, with the count of the lines left out.
    let config = format!(
        "{NO_SHOP}{}{}",
        pool("tracer", &python("traceback_at_start.py", &[]), ""),
        process("look_up", "tracer")
    );
    let d = Daemon::start(&config);
    let logged = wait_until(Duration::from_secs(20), || {
        let log = d.log();
        log.contains("KeyError: 'nope'") && log.contains("worker failed at start")
    });
    let log = d.log();
    assert!(
        logged,
        "the traceback's last line is not in the log:\n{log}"
    );
    let line = |needle: &str| log.lines().find(|l| l.contains(needle)).unwrap_or_default();
    assert!(line("KeyError: 'nope'").contains("pool=tracer"), "{log}");
    assert!(
        line("Traceback (most recent call last)").contains("pool=tracer"),
        "{log}"
    );
    assert!(
        line("worker stderr lines not logged").contains("pool=tracer"),
        "the lines left out are not counted:\n{log}"
    );
    // With several pools, the failure says whose it is.
    assert!(
        line("worker failed at start").contains("pool=tracer"),
        "{log}"
    );
}

#[test]
fn a_worker_that_left_its_process_group_is_still_ended_at_its_timeout_and_when_replaced() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let config = |arg: &str| {
        format!(
            "{NO_SHOP}{}{}",
            pool(
                "wanderer",
                &python("leave_group.py", &[arg]),
                "timeout = \"1s\""
            ),
            process("go", "wanderer")
        )
    };
    let d = Daemon::start(&config("first"));
    let r = run(&d, "go", json!("hang"));
    assert_eq!(r["error"]["code"], json!("timeout"), "{r}\n{}", d.log());
    let r = run(&d, "go", json!(1));
    assert_eq!(r["ok"], json!(true), "{r}\n{}", d.log());

    // A new command retires the worker, which stays alive after its input ends: the pool's
    // one slot must come free for the new command's worker.
    let text = std::fs::read_to_string(&d.config).expect("config");
    d.reload_applied(&text.replace(&config("first"), &config("second")));
    let r = run(&d, "go", json!(2));
    assert_eq!(r["ok"], json!(true), "{r}\n{}", d.log());
}

#[test]
fn a_job_longer_than_a_pipe_holds_times_out_on_a_worker_that_reads_nothing() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    // The worker sleeps for a minute before it reads its input, and the job line is longer
    // than a pipe holds (64 KiB), so writing it waits on the worker: the deadline must hold
    // all the same.
    let config = format!(
        "{NO_SHOP}{}{}",
        pool(
            "sleeper",
            &python("slow_start.py", &["60000"]),
            "timeout = \"1s\"\nstart_timeout = \"1s\""
        ),
        process("big", "sleeper")
    );
    let d = Daemon::start(&config);
    let r = run(&d, "big", json!("a".repeat(65_500)));
    assert_eq!(r["error"]["code"], json!("timeout"), "{r}\n{}", d.log());
}

#[test]
fn a_worker_flooding_blank_lines_breaks_the_protocol_rather_than_running_out_its_timeout() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    // Blank lines are skipped, but reading them without end would keep precogd busy for the
    // whole timeout, slowing every other request.
    let config = format!(
        "{NO_SHOP}{}{}",
        pool(
            "flood",
            &python("blank_flood.py", &[]),
            "timeout = \"20s\"\nstart_timeout = \"0s\""
        ),
        process("blank", "flood")
    );
    let d = Daemon::start(&config);
    let r = run(&d, "blank", json!(1));
    assert_eq!(
        r["error"]["code"],
        json!("worker_failed"),
        "{r}\n{}",
        d.log()
    );
    assert_eq!(r["error"]["reason"], json!("protocol"), "{r}");
}
