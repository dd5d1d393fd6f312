//! Where a replayed app server sends its requests: a precogd socket, or no daemon at all, where
//! every run spawns `precog-shop-worker` for one job (what an app does without a pool).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context;
use serde_json::{Map, Value, json};

use crate::client::Client;

/// How a run was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    Cache,
    Inflight,
    Warm,
    Cold,
    Failed,
}

impl Served {
    pub const ALL: [Served; 5] = [
        Served::Cache,
        Served::Inflight,
        Served::Warm,
        Served::Cold,
        Served::Failed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Served::Cache => "cache",
            Served::Inflight => "inflight",
            Served::Warm => "warm",
            Served::Cold => "cold",
            Served::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Served {
        match s {
            "cache" => Served::Cache,
            "inflight" => Served::Inflight,
            "warm" => Served::Warm,
            _ => Served::Cold,
        }
    }
}

/// One run as the app saw it.
#[derive(Debug, Clone)]
pub struct RunAnswer {
    pub served: Served,
    pub latency_us: u64,
    pub result: Option<Value>,
    /// The error code of a failed run.
    pub error: Option<String>,
    /// What the error said.
    pub message: Option<String>,
}

pub trait Backend: Send {
    /// Sends an `event` or `end`; returns the error code of a refused one. Err only when the
    /// daemon cannot be reached.
    fn notify(&mut self, request: &Value) -> anyhow::Result<Option<String>>;

    fn run(
        &mut self,
        session: &str,
        process: &str,
        inputs: Map<String, Value>,
    ) -> anyhow::Result<RunAnswer>;
}

fn error_code(reply: &Value) -> Option<String> {
    (reply["ok"] != Value::Bool(true)).then(|| {
        reply["error"]["code"]
            .as_str()
            .unwrap_or("unknown")
            .to_string()
    })
}

pub struct Daemon {
    client: Client,
}

impl Daemon {
    pub fn connect(socket: &Path) -> anyhow::Result<Daemon> {
        Ok(Daemon {
            client: Client::connect(socket)?,
        })
    }
}

impl Backend for Daemon {
    fn notify(&mut self, request: &Value) -> anyhow::Result<Option<String>> {
        Ok(error_code(&self.client.call(request)?))
    }

    fn run(
        &mut self,
        session: &str,
        process: &str,
        inputs: Map<String, Value>,
    ) -> anyhow::Result<RunAnswer> {
        let request =
            json!({"op": "run", "session": session, "process": process, "inputs": inputs});
        let sent = Instant::now();
        let mut reply = self.client.call(&request)?;
        let latency_us = sent.elapsed().as_micros() as u64;
        let error = error_code(&reply);
        Ok(RunAnswer {
            served: match error {
                Some(_) => Served::Failed,
                None => Served::parse(reply["served"].as_str().unwrap_or("")),
            },
            latency_us,
            result: error.is_none().then(|| reply["result"].take()),
            message: error
                .as_ref()
                .and_then(|_| reply["error"]["message"].as_str().map(Into::into)),
            error,
        })
    }
}

/// Runs every job in a fresh `precog-shop-worker`.
pub struct Spawn {
    pub worker: PathBuf,
    pub catalog: PathBuf,
}

impl Backend for Spawn {
    fn notify(&mut self, _request: &Value) -> anyhow::Result<Option<String>> {
        Ok(None)
    }

    fn run(
        &mut self,
        _session: &str,
        process: &str,
        inputs: Map<String, Value>,
    ) -> anyhow::Result<RunAnswer> {
        let mut job = serde_json::to_vec(&json!({
            "job": 1, "process": process, "inputs": inputs, "state": null
        }))?;
        job.push(b'\n');
        let started = Instant::now();
        let mut child = crate::cleanup::unblocked(Command::new(&self.worker))
            .arg("--catalog")
            .arg(&self.catalog)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", self.worker.display()))?;
        let mut stdin = child.stdin.take().context("the worker has no stdin")?;
        stdin.write_all(&job).context("cannot send the job")?;
        drop(stdin);
        let mut line = String::new();
        let stdout = child.stdout.take().context("the worker has no stdout")?;
        BufReader::new(stdout).read_line(&mut line)?;
        let latency_us = started.elapsed().as_micros() as u64;
        child.wait()?;

        let mut reply: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        let ok = reply.get("result").is_some();
        Ok(RunAnswer {
            served: if ok { Served::Cold } else { Served::Failed },
            latency_us,
            result: ok.then(|| reply["result"].take()),
            error: (!ok).then(|| "worker_failed".to_string()),
            message: match &reply["error"] {
                Value::String(e) if !ok => Some(e.clone()),
                _ if !ok => Some(format!("the worker answered {:?}", line.trim_end())),
                _ => None,
            },
        })
    }
}
