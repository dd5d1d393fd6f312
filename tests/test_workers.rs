//! Black-box checks of the Python test workers in `tests/workers/` that the daemon's fault tests
//! use: each starts and answers, or misbehaves, as its name says.

mod worker_harness;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use worker_harness::*;

fn python_worker(name: &str) -> Option<Command> {
    let has_python = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_python {
        println!("SKIPPED: python3 is not installed");
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workers")
        .join(name);
    // Run the script itself, as a pool command would, through its shebang.
    Some(Command::new(script))
}

#[test]
fn echo_worker_answers_with_its_inputs_and_does_real_work() {
    let Some(command) = python_worker("echo.py") else {
        return;
    };
    let mut worker = Worker::start(command);
    let inputs =
        json!({"sku": "1", "sleep_ms": 150, "cpu_ms": 100, "alloc_mb": 16, "stderr_kb": 4});
    let start = Instant::now();
    let (_, reply) = worker.ask(json!({"job": 1, "process": "x", "inputs": inputs}));
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "slept and burned CPU"
    );
    assert_eq!(reply["result"]["echo"], inputs);
    assert_eq!(reply["result"]["allocated_mb"], 16);

    // A small bomb: the daemon's tests fork without a limit under their pids_max.
    let (_, reply) = worker.ask(json!({"job": 3, "process": "x", "inputs": {"fork_bomb": 5}}));
    let children: Vec<i32> = reply["result"]["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pid| pid.as_i64().unwrap() as i32)
        .collect();
    for pid in &children {
        // SAFETY: kill(2) on a pid the test's own worker forked and reported; no memory involved.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    assert_eq!(children.len(), 5, "{reply}");
    assert_eq!(reply["result"]["forked"], 5);

    let (_, reply) =
        worker.ask(json!({"job": 2, "process": "x", "inputs": {"spawn_grandchild": true}}));
    let grandchild = reply["result"]["grandchild_pid"].as_i64().unwrap() as i32;
    assert!(worker.finish().success());
    let alive = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).is_ok();
    // SAFETY: kill(2) with a pid this test's worker started and reported; no memory involved.
    unsafe { libc::kill(grandchild, libc::SIGKILL) };
    assert!(alive, "the grandchild outlives the worker");
}

#[test]
fn crash_at_start_worker_exits_at_once() {
    let Some(mut command) = python_worker("crash_at_start.py") else {
        return;
    };
    let mut child = command
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_for(&mut child, REPLY_WAIT).expect("exits without input");
    assert_eq!(status.code(), Some(1));
}

#[test]
fn garbage_worker_answers_non_json() {
    let Some(command) = python_worker("garbage.py") else {
        return;
    };
    let mut worker = Worker::start(command);
    worker.send_raw(&json!({"job": 1, "process": "x", "inputs": {}}).to_string());
    let line = worker.next_line();
    assert!(serde_json::from_str::<Value>(&line).is_err(), "{line}");
}

#[test]
fn huge_line_worker_writes_100_mib_without_a_newline() {
    let Some(mut command) = python_worker("huge_line.py") else {
        return;
    };
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}", json!({"job": 1, "process": "x", "inputs": {}})).unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut buffer = vec![0u8; 1 << 20];
    let (mut total, mut newlines) = (0usize, 0usize);
    while total < 100 << 20 {
        let read = stdout.read(&mut buffer).unwrap();
        assert!(read > 0, "stopped after {total} bytes");
        newlines += buffer[..read].iter().filter(|b| **b == b'\n').count();
        total += read;
    }
    assert_eq!(newlines, 0);
    drop(stdin);
    assert!(wait_for(&mut child, REPLY_WAIT).is_some());
}

#[test]
fn ignore_term_worker_survives_sigterm() {
    let Some(command) = python_worker("ignore_term.py") else {
        return;
    };
    let mut worker = Worker::start(command);
    // Its stderr line says the handler is in place.
    let mut stderr = BufReader::new(worker.child.stderr.take().unwrap());
    let mut said = String::new();
    stderr.read_line(&mut said).unwrap();
    assert!(said.contains("SIGTERM ignored"));
    worker.send_raw(&json!({"job": 1, "process": "x", "inputs": {}}).to_string());

    let pid = worker.child.id() as i32;
    // SAFETY: kill(2) on the pid of the child this test started; no memory involved.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(300));
    assert!(worker.child.try_wait().unwrap().is_none(), "still running");
    assert!(worker.lines.try_recv().is_err(), "no answer to the job");
}

#[test]
fn late_reply_worker_answers_after_its_sleep() {
    let Some(command) = python_worker("late_reply.py") else {
        return;
    };
    let mut worker = Worker::start(command);
    let start = Instant::now();
    let (_, reply) = worker.ask(json!({"job": 9, "process": "x", "inputs": {"sleep_ms": 300}}));
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(reply["result"]["late"], true);
}

#[test]
fn die_mid_job_worker_checkpoints_then_exits() {
    let Some(command) = python_worker("die_mid_job.py") else {
        return;
    };
    let mut worker = Worker::start(command);
    worker.send_raw(&json!({"job": 4, "process": "x", "inputs": {}}).to_string());
    let checkpoint = worker.next();
    assert_eq!(checkpoint["checkpoint"]["step"], 1);
    let status = wait_for(&mut worker.child, REPLY_WAIT).expect("exits mid-job");
    assert_eq!(status.code(), Some(3));
    assert!(
        worker
            .lines
            .recv_timeout(Duration::from_millis(200))
            .is_err()
    );

    let Some(command) = python_worker("die_mid_job.py") else {
        return;
    };
    let mut retry = Worker::start(command);
    let (_, reply) = retry.ask(json!({"job": 5, "process": "x", "inputs": {},
                                      "state": checkpoint["checkpoint"]}));
    assert_eq!(reply["result"]["resumed"], true);
}

#[test]
fn checkpointer_worker_checkpoints_and_resumes() {
    let Some(command) = python_worker("checkpointer.py") else {
        return;
    };
    let mut worker = Worker::start(command);
    let (checkpoints, reply) =
        worker.ask(json!({"job": 1, "process": "x", "inputs": {"steps": 4}, "state": null}));
    assert_eq!(
        checkpoints,
        vec![json!({"done": 1}), json!({"done": 2}), json!({"done": 3})]
    );
    assert_eq!(reply["result"]["resumed_from"], 0);

    let (checkpoints, reply) =
        worker.ask(json!({"job": 2, "process": "x", "inputs": {"steps": 4}, "state": {"done": 2}}));
    assert_eq!(checkpoints, vec![json!({"done": 3})]);
    assert_eq!(reply["result"]["resumed_from"], 2);
    assert!(worker.finish().success());
}
