//! The socket protocol (version 1) and the worker protocol, as pure functions over bytes.
//!
//! Both are newline-delimited JSON. Nothing here touches a socket or a process: the server and
//! the pool feed bytes in and write the bytes that come out, so framing, limits and every error
//! code are tested without I/O. [`Framer`] splits a byte stream into lines under a size limit.

use serde_json::{Map, Value, json};

/// Version of the socket protocol this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest session name a client may use.
pub const MAX_SESSION_LEN: usize = 256;

/// Longest name the daemon keeps from a request, in bytes: an event's `type` and `target`, an
/// `end`'s `outcome`, and the keys of an event's `attrs`. The learned model and the sessions keep
/// these names, so a longer one is refused (`bad_request`) before anything is changed.
pub const MAX_NAME_LEN: usize = 128;

/// Stable error codes of the socket protocol; clients match on these strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadJson,
    BadRequest,
    TooLarge,
    UnknownOp,
    UnknownProcess,
    MissingInput,
    Timeout,
    WorkerFailed,
    Overloaded,
    Forbidden,
    ShuttingDown,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::UnknownProcess => "unknown_process",
            ErrorCode::MissingInput => "missing_input",
            ErrorCode::Timeout => "timeout",
            ErrorCode::WorkerFailed => "worker_failed",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
        }
    }
}

/// An error reply: a code, a message for people, and optional extra fields (such as `reason`).
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
    pub extra: Map<String, Value>,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
        ErrorReply {
            code,
            message: message.into(),
            extra: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> ErrorReply {
        self.extra.insert(key.to_string(), value.into());
        self
    }
}

/// One decoded request: the client's `id` (echoed in the reply) and the operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Value,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Ping,
    Stats,
    Event(EventRequest),
    Hint {
        session: String,
        predictions: Vec<(String, f64)>,
    },
    Predict {
        session: String,
        n: Option<usize>,
    },
    Run {
        session: String,
        process: String,
        inputs: Option<Map<String, Value>>,
    },
    End {
        session: String,
        outcome: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventRequest {
    pub session: String,
    pub kind: String,
    pub target: Option<String>,
    pub ms: Option<u64>,
    pub depth: Option<f64>,
    pub attrs: Map<String, Value>,
    pub ts: Option<u64>,
}

/// Decodes one request line (without its newline). On error, returns the request's `id` when it
/// could be read, so the error reply still echoes it.
pub fn decode_request(line: &[u8]) -> Result<Request, (Value, ErrorReply)> {
    let v: Value = serde_json::from_slice(line).map_err(|e| {
        (
            Value::Null,
            ErrorReply::new(ErrorCode::BadJson, format!("line is not valid JSON: {e}")),
        )
    })?;
    let Value::Object(mut obj) = v else {
        return Err((
            Value::Null,
            ErrorReply::new(ErrorCode::BadRequest, "a request must be a JSON object"),
        ));
    };

    let id = obj.remove("id").unwrap_or(Value::Null);
    if id.is_array() || id.is_object() {
        return Err((
            Value::Null,
            ErrorReply::new(
                ErrorCode::BadRequest,
                "`id` must be a string, number, bool or null",
            ),
        ));
    }
    let op = decode_op(&mut obj).map_err(|e| (id.clone(), e))?;
    Ok(Request { id, op })
}

fn decode_op(obj: &mut Map<String, Value>) -> Result<Op, ErrorReply> {
    let op = match obj.get("op") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(bad("`op` must be a string")),
        None => return Err(bad("the request has no `op`")),
    };
    let op = match op.as_str() {
        "ping" => Op::Ping,
        "stats" => Op::Stats,
        "event" => Op::Event(EventRequest {
            session: session(obj)?,
            kind: name_field(obj, "type")?
                .filter(|kind| !kind.is_empty())
                .ok_or_else(|| bad("`event` needs a `type`"))?,
            target: name_field(obj, "target")?,
            ms: u64_field(obj, "ms")?,
            depth: match obj.get("depth") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_f64()
                        .filter(|d| d.is_finite())
                        .ok_or_else(|| bad("`depth` must be a number"))?,
                ),
            },
            attrs: attrs_field(obj)?,
            ts: u64_field(obj, "ts")?,
        }),
        "hint" => {
            let session = session(obj)?;
            let Some(Value::Array(items)) = obj.remove("predictions") else {
                return Err(bad("`hint` needs `predictions`, an array"));
            };
            let mut predictions = Vec::with_capacity(items.len());
            for item in items {
                let process = item.get("process").and_then(Value::as_str);
                let p = item.get("p").and_then(Value::as_f64);
                match (process, p) {
                    (Some(process), Some(p)) if (0.0..=1.0).contains(&p) => {
                        predictions.push((process.to_string(), p))
                    }
                    _ => {
                        return Err(bad(
                            "each prediction needs `process` (a string) and `p` (0 to 1)",
                        ));
                    }
                }
            }
            Op::Hint {
                session,
                predictions,
            }
        }
        "predict" => Op::Predict {
            session: session(obj)?,
            n: u64_field(obj, "n")?.map(|n| n.min(1000) as usize),
        },
        "run" => Op::Run {
            session: session(obj)?,
            process: string_field(obj, "process")?.ok_or_else(|| bad("`run` needs a `process`"))?,
            inputs: object_field(obj, "inputs")?,
        },
        "end" => Op::End {
            session: session(obj)?,
            outcome: name_field(obj, "outcome")?,
        },
        other => {
            let shown: String = other.chars().take(64).collect();
            return Err(ErrorReply::new(
                ErrorCode::UnknownOp,
                format!(
                    "unknown op `{shown}`; protocol {PROTOCOL_VERSION} has ping, event, hint, \
                     predict, run, end and stats"
                ),
            ));
        }
    };
    if let Op::Event(e) = &op
        && e.kind == "run"
        && e.target.is_none()
    {
        return Err(bad(
            "an event of type `run` needs a `target`: the process that ran",
        ));
    }
    Ok(op)
}

fn bad(msg: &str) -> ErrorReply {
    ErrorReply::new(ErrorCode::BadRequest, msg)
}

fn session(obj: &mut Map<String, Value>) -> Result<String, ErrorReply> {
    let s = string_field(obj, "session")?.ok_or_else(|| bad("the request needs a `session`"))?;
    if s.is_empty() || s.len() > MAX_SESSION_LEN {
        return Err(bad("`session` must be 1 to 256 bytes long"));
    }
    Ok(s)
}

fn string_field(obj: &mut Map<String, Value>, key: &str) -> Result<Option<String>, ErrorReply> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(&format!("`{key}` must be a string"))),
    }
}

/// A string field the daemon keeps as a name: at most [`MAX_NAME_LEN`] bytes.
fn name_field(obj: &mut Map<String, Value>, key: &str) -> Result<Option<String>, ErrorReply> {
    let name = string_field(obj, key)?;
    if name.as_ref().is_some_and(|n| n.len() > MAX_NAME_LEN) {
        return Err(bad(&format!(
            "`{key}` must be at most {MAX_NAME_LEN} bytes long"
        )));
    }
    Ok(name)
}

/// An event's `attrs`: their keys become the session's input names, at most [`MAX_NAME_LEN`]
/// bytes each.
fn attrs_field(obj: &mut Map<String, Value>) -> Result<Map<String, Value>, ErrorReply> {
    let attrs = object_field(obj, "attrs")?.unwrap_or_default();
    if let Some(long) = attrs.keys().find(|k| k.len() > MAX_NAME_LEN) {
        let shown: String = long.chars().take(32).collect();
        return Err(bad(&format!(
            "the key `{shown}…` in `attrs` is longer than {MAX_NAME_LEN} bytes"
        )));
    }
    Ok(attrs)
}

fn u64_field(obj: &mut Map<String, Value>, key: &str) -> Result<Option<u64>, ErrorReply> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(&format!("`{key}` must be a whole number, 0 or more"))),
    }
}

fn object_field(
    obj: &mut Map<String, Value>,
    key: &str,
) -> Result<Option<Map<String, Value>>, ErrorReply> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(bad(&format!("`{key}` must be an object"))),
    }
}

/// Encodes a success reply: `{"id":…,"ok":true,…fields}` plus the newline.
pub fn encode_ok(id: &Value, fields: Map<String, Value>) -> Vec<u8> {
    let mut obj = Map::with_capacity(fields.len() + 2);
    obj.insert("id".into(), id.clone());
    obj.insert("ok".into(), Value::Bool(true));
    obj.extend(fields);
    line(&Value::Object(obj))
}

/// Encodes an error reply: `{"id":…,"ok":false,"error":{"code":…,"message":…}}` plus newline.
pub fn encode_error(id: &Value, err: &ErrorReply) -> Vec<u8> {
    let mut error = Map::new();
    error.insert("code".into(), err.code.as_str().into());
    error.insert("message".into(), err.message.clone().into());
    error.extend(err.extra.clone());
    line(&json!({"id": id, "ok": false, "error": error}))
}

fn line(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    out.push(b'\n');
    out
}

/// Splits a byte stream into lines no longer than `max` bytes (newline excluded).
///
/// Once a line grows past the limit the framer reports it and stops: the caller answers
/// `too_large` and closes the connection, so no more than `max` bytes are ever buffered.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    scanned: usize,
    max: usize,
}

/// A line longer than the limit arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

impl Framer {
    pub fn new(max: usize) -> Framer {
        Framer {
            buf: Vec::new(),
            scanned: 0,
            max,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Takes the next complete line, if any.
    pub fn next_line(&mut self) -> Option<Result<Vec<u8>, TooLarge>> {
        match self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(pos) => {
                let end = self.scanned + pos;
                if end > self.max {
                    return Some(Err(TooLarge));
                }
                let mut rest = self.buf.split_off(end + 1);
                std::mem::swap(&mut rest, &mut self.buf);
                rest.truncate(end);
                if rest.last() == Some(&b'\r') {
                    rest.pop();
                }
                self.scanned = 0;
                Some(Ok(rest))
            }
            None => {
                self.scanned = self.buf.len();
                (self.buf.len() > self.max).then_some(Err(TooLarge))
            }
        }
    }

    /// Bytes held that are not yet a complete line.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// A message from a worker to the daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerReply {
    pub job: Option<u64>,
    pub kind: WorkerReplyKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WorkerReplyKind {
    Checkpoint(Value),
    Result(Value),
    /// The job failed; `code` is the worker's own stable name for why, when it gave a usable one.
    Error {
        message: String,
        code: Option<String>,
    },
}

/// The longest `code` a worker may give with an error.
pub const WORKER_CODE_MAX: usize = 64;

/// A worker's error `code`, kept when it is a name of lower-case letters, digits and `_`; any
/// other value is dropped, and the error is still passed on with its message.
fn worker_code(v: Option<Value>) -> Option<String> {
    let Some(Value::String(code)) = v else {
        return None;
    };
    let usable = (1..=WORKER_CODE_MAX).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    usable.then_some(code)
}

/// Why a worker's line was not a valid reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerProtocolError {
    #[error(
        "worker wrote a line that is not JSON on stdout, which carries replies only (write \
         diagnostics to stderr)"
    )]
    NotJson,
    #[error("worker wrote a JSON line with none of `result`, `error` or `checkpoint`")]
    NoPayload,
}

/// JSON with object keys sorted and no whitespace, so equal inputs give equal job and cache keys.
pub fn canonical_json(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut fields: Vec<_> = map.iter().collect();
            fields.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (name, field)) in fields.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(name.clone()).to_string());
                out.push(':');
                write_canonical(field, out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Decodes one line a worker wrote on stdout.
pub fn decode_worker_reply(line: &[u8]) -> Result<WorkerReply, WorkerProtocolError> {
    let v: Value = serde_json::from_slice(line).map_err(|_| WorkerProtocolError::NotJson)?;
    let Value::Object(mut obj) = v else {
        return Err(WorkerProtocolError::NoPayload);
    };
    let job = obj.get("job").and_then(Value::as_u64);
    let kind = if let Some(r) = obj.remove("result") {
        WorkerReplyKind::Result(r)
    } else if let Some(e) = obj.remove("error") {
        WorkerReplyKind::Error {
            message: match e {
                Value::String(s) => s,
                other => other.to_string(),
            },
            code: worker_code(obj.remove("code")),
        }
    } else if let Some(c) = obj.remove("checkpoint") {
        WorkerReplyKind::Checkpoint(c)
    } else {
        return Err(WorkerProtocolError::NoPayload);
    };
    Ok(WorkerReply { job, kind })
}

/// Encodes a job for a worker; `phase` is `Some("prepare")` for a prepare run.
pub fn encode_job(
    job: u64,
    process: &str,
    inputs: &Map<String, Value>,
    state: Option<&Value>,
    phase: Option<&str>,
) -> Vec<u8> {
    let mut obj = Map::new();
    obj.insert("job".into(), job.into());
    obj.insert("process".into(), process.into());
    obj.insert("inputs".into(), Value::Object(inputs.clone()));
    obj.insert("state".into(), state.cloned().unwrap_or(Value::Null));
    if let Some(phase) = phase {
        obj.insert("phase".into(), phase.into());
    }
    line(&Value::Object(obj))
}

#[cfg(test)]
mod tests;
