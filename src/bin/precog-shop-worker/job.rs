//! The worker side of the worker protocol: decoding one job line, encoding reply lines.
//!
//! Pure code over byte slices and JSON values, so the framing is tested without a process. The
//! daemon sends `{"job":17,"process":"...","inputs":{...},"state":...,"phase":"prepare"}`;
//! the worker
//! answers with zero or more `{"job":17,"checkpoint":…}` lines and one `result` or `error` line.

use serde_json::{Map, Value, json};

/// Why a job line could not be turned into a job.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("job line is not valid JSON ({0}); send one JSON object per line")]
    BadJson(String),
    #[error("job line is not a JSON object; send {{\"job\":N,\"process\":…,\"inputs\":{{…}}}}")]
    NotAnObject,
    #[error("job line has no \"job\" id")]
    MissingJob,
    #[error("job line has no \"process\" name (a string)")]
    MissingProcess,
    #[error("\"inputs\" must be a JSON object of input values")]
    BadInputs,
    #[error("unknown phase {0:?}; the only phase is \"prepare\"")]
    BadPhase(String),
}

/// What the daemon asks for: the full computation or only its `prepare` part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Full,
    Prepare,
}

/// One decoded job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: Value,
    pub process: String,
    pub inputs: Map<String, Value>,
    /// The partial state to resume from; `None` when absent or `null`.
    pub state: Option<Value>,
    pub phase: Phase,
}

/// A line that could not be decoded, with the job id when it could be recovered so the daemon
/// can match the error to the job it sent.
#[derive(Debug, PartialEq)]
pub struct Rejected {
    pub id: Value,
    pub error: FrameError,
}

/// Decodes one job line (without its trailing newline).
pub fn decode(line: &[u8]) -> Result<Job, Rejected> {
    let value: Value = serde_json::from_slice(line).map_err(|e| Rejected {
        id: salvage_job_id(line),
        error: FrameError::BadJson(e.to_string()),
    })?;
    let Value::Object(mut fields) = value else {
        return Err(Rejected {
            id: Value::Null,
            error: FrameError::NotAnObject,
        });
    };
    let id = match fields.remove("job") {
        Some(id) if !id.is_null() => id,
        _ => return Err(reject(Value::Null, FrameError::MissingJob)),
    };
    let process = match fields.remove("process") {
        Some(Value::String(process)) => process,
        _ => return Err(reject(id, FrameError::MissingProcess)),
    };
    let inputs = match fields.remove("inputs") {
        Some(Value::Object(inputs)) => inputs,
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err(reject(id, FrameError::BadInputs)),
    };
    let state = fields.remove("state").filter(|state| !state.is_null());
    let phase = match fields.remove("phase") {
        None | Some(Value::Null) => Phase::Full,
        Some(Value::String(phase)) if phase == "prepare" => Phase::Prepare,
        Some(Value::String(phase)) if phase == "full" => Phase::Full,
        Some(other) => {
            let name = other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_owned);
            return Err(reject(id, FrameError::BadPhase(name)));
        }
    };

    Ok(Job {
        id,
        process,
        inputs,
        state,
        phase,
    })
}

fn reject(id: Value, error: FrameError) -> Rejected {
    Rejected { id, error }
}

/// Finds `"job": <digits>` in a line that is not valid JSON, so a truncated or corrupted job still
/// gets its error matched to the right id. Returns `null` when no id can be read.
pub fn salvage_job_id(line: &[u8]) -> Value {
    let key = b"\"job\"";
    let Some(start) = line.windows(key.len()).position(|w| w == key) else {
        return Value::Null;
    };
    let rest = &line[start + key.len()..];
    let rest = trim_start(rest);
    let Some(rest) = rest.strip_prefix(b":") else {
        return Value::Null;
    };
    let rest = trim_start(rest);
    let digits: Vec<u8> = rest
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    // The number must end where the digits do: `1e400` or `1.5` is no job id 1.
    let after = rest.get(digits.len()).copied();
    if after.is_some_and(|b| !(b.is_ascii_whitespace() || b == b',' || b == b'}')) {
        return Value::Null;
    }
    std::str::from_utf8(&digits)
        .ok()
        .and_then(|d| d.parse::<u64>().ok())
        .map_or(Value::Null, Value::from)
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let skip = bytes.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &bytes[skip..]
}

/// `{"job":id,"checkpoint":state}` as one line with its newline.
pub fn checkpoint_line(id: &Value, state: &Value) -> String {
    line(json!({"job": id, "checkpoint": state}))
}

/// `{"job":id,"result":value}` as one line with its newline.
pub fn result_line(id: &Value, result: &Value) -> String {
    line(json!({"job": id, "result": result}))
}

/// The code of an error line for a job line that could not be read.
pub const BAD_JOB: &str = "bad_job";

/// `{"job":id,"error":message,"code":code}` as one line with its newline.
pub fn error_line(id: &Value, message: &str, code: &str) -> String {
    line(json!({"job": id, "error": message, "code": code}))
}

fn line(value: Value) -> String {
    // serde_json escapes control characters, so the encoded value never contains a raw newline.
    let mut text = value.to_string();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_full_job() {
        let job = decode(br#"{"job":17,"process":"calc_shipping","inputs":{"a":1},"state":null}"#)
            .unwrap();
        assert_eq!(job.id, json!(17));
        assert_eq!(job.process, "calc_shipping");
        assert_eq!(job.inputs.get("a"), Some(&json!(1)));
        assert_eq!(job.state, None);
        assert_eq!(job.phase, Phase::Full);
    }

    #[test]
    fn decodes_prepare_phase_and_state() {
        let job =
            decode(br#"{"job":3,"process":"q","inputs":{},"state":{"k":1},"phase":"prepare"}"#)
                .unwrap();
        assert_eq!(job.phase, Phase::Prepare);
        assert_eq!(job.state, Some(json!({"k":1})));
    }

    #[test]
    fn rejects_with_the_id_when_it_is_known() {
        let rejected = decode(br#"{"job":5,"inputs":{}}"#).unwrap_err();
        assert_eq!(rejected.id, json!(5));
        assert_eq!(rejected.error, FrameError::MissingProcess);

        let rejected = decode(br#"{"job":6,"process":"x","inputs":[1]}"#).unwrap_err();
        assert_eq!(rejected.error, FrameError::BadInputs);

        let rejected = decode(br#"{"job":7,"process":"x","phase":"later"}"#).unwrap_err();
        assert_eq!(rejected.error, FrameError::BadPhase("later".into()));
    }

    #[test]
    fn salvages_the_id_of_broken_json() {
        let rejected = decode(br#"{"job": 42, "process":"x", "inputs":{"#).unwrap_err();
        assert_eq!(rejected.id, json!(42));
        assert!(matches!(rejected.error, FrameError::BadJson(_)));

        assert_eq!(salvage_job_id(b"hello"), Value::Null);
        assert_eq!(salvage_job_id(b"{\"job\":\"x\""), Value::Null);
        // Numbers that are no job id, however they start.
        let rejected = decode(br#"{"job":1e400,"process":"x"}"#).unwrap_err();
        assert!(matches!(rejected.error, FrameError::BadJson(_)));
        assert_eq!(rejected.id, Value::Null);
        assert_eq!(salvage_job_id(b"{\"job\":1.5,"), Value::Null);
        assert_eq!(salvage_job_id(b"{\"job\": 7 , \"x\":}"), json!(7));
        assert_eq!(salvage_job_id(b"{\"job\":8}x"), json!(8));
    }

    #[test]
    fn non_objects_and_missing_ids_are_rejected_with_null() {
        assert_eq!(decode(b"[1,2]").unwrap_err().id, Value::Null);
        let rejected = decode(br#"{"process":"x"}"#).unwrap_err();
        assert_eq!(rejected.error, FrameError::MissingJob);
    }

    #[test]
    fn reply_lines_are_single_lines() {
        let line = error_line(&json!(1), "bad\ninput", BAD_JOB);
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
        let back: Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(back["error"], "bad\ninput");
        assert_eq!(
            result_line(&json!(2), &json!({"ok":true})),
            "{\"job\":2,\"result\":{\"ok\":true}}\n"
        );
        assert!(checkpoint_line(&json!(2), &json!([1])).contains("\"checkpoint\":[1]"));
    }
}
