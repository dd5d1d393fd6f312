//! Shared by the worker tests: starts a worker executable and speaks the worker protocol over
//! its stdin and stdout, as precogd does.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const WORKER: &str = env!("CARGO_BIN_EXE_precog-shop-worker");
pub const REPLY_WAIT: Duration = Duration::from_secs(20);

/// A running worker with a thread turning its stdout into lines.
pub struct Worker {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub lines: Receiver<String>,
}

impl Worker {
    pub fn start(mut command: Command) -> Worker {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start worker");
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Worker {
            child,
            stdin,
            lines,
        }
    }

    pub fn shop(catalog: &Path) -> Worker {
        let mut command = Command::new(WORKER);
        command.arg("--catalog").arg(catalog).env_clear();
        Worker::start(command)
    }

    pub fn send_raw(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    pub fn next_line(&self) -> String {
        self.lines
            .recv_timeout(REPLY_WAIT)
            .expect("the worker answers within the wait")
    }

    pub fn next(&self) -> Value {
        let line = self.next_line();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?} is not JSON: {e}"))
    }

    /// Sends a job and returns its checkpoints and its final (result or error) line.
    pub fn ask(&mut self, job: Value) -> (Vec<Value>, Value) {
        self.send_raw(&job.to_string());
        let mut checkpoints = Vec::new();
        loop {
            let reply = self.next();
            assert_eq!(reply["job"], job["job"], "reply for another job: {reply}");
            if reply.get("checkpoint").is_some() {
                checkpoints.push(reply["checkpoint"].clone());
            } else {
                return (checkpoints, reply);
            }
        }
    }

    pub fn result(&mut self, process: &str, inputs: Value) -> Value {
        let (_, reply) = self.ask(json!({"job": 1, "process": process, "inputs": inputs}));
        assert!(reply.get("error").is_none(), "{process} failed: {reply}");
        reply["result"].clone()
    }

    pub fn error(&mut self, process: &str, inputs: Value) -> String {
        let (_, reply) = self.ask(json!({"job": 2, "process": process, "inputs": inputs}));
        reply["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{process} should fail: {reply}"))
            .to_owned()
    }

    /// Closes stdin and waits for the exit status.
    pub fn finish(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        wait_for(&mut self.child, REPLY_WAIT).expect("the worker exits at the end of its input")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_for(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

pub fn shared_data(relative: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(relative);
    path.exists().then_some(path)
}

pub fn no_catalog() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.sqlite");
    (dir, path)
}

pub fn build_catalog(from: &Path, out: &Path) {
    let output = Command::new(WORKER)
        .args(["build-catalog", "--from"])
        .arg(from)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(output.status.success(), "build-catalog failed: {output:?}");
}
