//! Readers of real session data sets into one shape, [`SessionRecord`], for `eval` and replay.
//!
//! - `jd`: JD.com micro-behaviours, one session a line of `sku+type+category+gap_s+dwell_s`
//!   actions. There are no absolute times: session *k* (counting over the files in name order)
//!   starts at a fixed epoch plus *k* × [`JD_SESSION_SPACING_MS`] and its events follow the
//!   recorded gaps, so the result is the same on every run.
//! - `rees46`: the REES46 CSV (`event_time,event_type,product_id,…,user_session`). Events in
//!   the last [`REES46_TAIL_MS`] of the file are left out, because the slice cuts sessions off.
//! - `otto`: OTTO JSON lines; a user's history is split into visits at 30-minute gaps.
//! - `events`: precog's generic NDJSON, one event a line:
//!   `{"session":…,"ts":<unix ms>,"type":…,"target":…,"attrs":{…},"dwell_ms":…}`.
//!
//! A path may be a file or a directory (its files with the format's extension, in name order).

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{EvalError, Format};

/// Deterministic start spacing of synthesised JD sessions.
pub const JD_SESSION_SPACING_MS: u64 = 30_000;
/// 2020-01-01T00:00:00Z, the synthetic epoch of the JD sessions.
pub const JD_EPOCH_MS: u64 = 1_577_836_800_000;
/// The tail of the REES46 slice left out of evaluation.
pub const REES46_TAIL_MS: u64 = 10 * 60 * 1000;
/// Inactivity that splits an OTTO user history into visits.
pub const OTTO_VISIT_GAP_MS: u64 = 30 * 60 * 1000;

/// One event of a recorded session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordEvent {
    pub ts_ms: u64,
    pub kind: String,
    /// The product the event concerns (sent as the `sku` attribute).
    pub item: Option<String>,
    pub target: Option<String>,
    pub dwell_ms: Option<u64>,
    /// Time to the session's next event (None for the last).
    pub gap_ms: Option<u64>,
    pub attrs: Map<String, Value>,
}

/// One recorded visit, events in time order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionRecord {
    pub id: String,
    pub events: Vec<RecordEvent>,
}

const JD_KINDS: [&str; 10] = [
    "home_to_product",
    "shop_list_to_product",
    "sale_to_product",
    "cart_to_product",
    "search_to_product",
    "detail_comments",
    "detail_specification",
    "detail_bottom",
    "cart",
    "order",
];

/// Reads every session of a data set, each session's events in time order.
pub fn read_sessions(path: &Path, format: Format) -> Result<Vec<SessionRecord>, EvalError> {
    let mut sessions = Vec::new();
    for file in session_files(path, format)? {
        let text = fs::read_to_string(&file).map_err(|e| EvalError::Read {
            path: file.clone(),
            source: e,
        })?;
        match format {
            Format::Jd => read_jd(&file, &text, &mut sessions)?,
            Format::Rees46 => read_rees46(&file, &text, &mut sessions)?,
            Format::Otto => read_otto(&file, &text, &mut sessions)?,
            Format::Events => read_events(&file, &text, &mut sessions)?,
        }
    }
    for s in &mut sessions {
        s.events.sort_by_key(|e| e.ts_ms);
        let next: Vec<Option<u64>> = (0..s.events.len())
            .map(|i| s.events.get(i + 1).map(|n| n.ts_ms - s.events[i].ts_ms))
            .collect();
        for (e, gap) in s.events.iter_mut().zip(next) {
            e.gap_ms = gap;
        }
    }
    sessions.retain(|s| !s.events.is_empty());
    Ok(sessions)
}

/// The files `read_sessions` reads: `path` itself, or the files of the directory `path` with the
/// format's extension, by name.
pub fn session_files(path: &Path, format: Format) -> Result<Vec<PathBuf>, EvalError> {
    let ext = match format {
        Format::Jd => "txt",
        Format::Rees46 => "csv",
        Format::Otto | Format::Events => "jsonl",
    };
    let meta = fs::metadata(path).map_err(|e| EvalError::Read {
        path: path.to_path_buf(),
        source: e,
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = fs::read_dir(path).map_err(|e| EvalError::Read {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    Ok(files)
}

/// A format error at `file:line`. The message quotes the data it could not read, cut short: a
/// file of another format may have lines of many kilobytes.
fn bad(file: &Path, line: usize, message: impl Into<String>) -> EvalError {
    const SHOWN: usize = 160;
    let mut message: String = message.into();
    if let Some((cut, _)) = message.char_indices().nth(SHOWN) {
        message.truncate(cut);
        message.push('…');
    }
    EvalError::Format {
        path: file.to_path_buf(),
        line,
        message,
    }
}

fn read_jd(file: &Path, text: &str, out: &mut Vec<SessionRecord>) -> Result<(), EvalError> {
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("jd");
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut ts = JD_EPOCH_MS + out.len() as u64 * JD_SESSION_SPACING_MS;
        let mut events = Vec::new();
        for action in line.split_whitespace() {
            let f: Vec<&str> = action.split('+').collect();
            let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok());
            let (Some(kind), Some(gap), Some(dwell)) = (num(1), num(3), num(4)) else {
                return Err(bad(
                    file,
                    n + 1,
                    format!("`{action}` is not sku+type+cat+gap+dwell"),
                ));
            };
            let Some(kind) = JD_KINDS.get((kind as usize).wrapping_sub(1)) else {
                return Err(bad(
                    file,
                    n + 1,
                    format!("behaviour type {kind} is not 1..10"),
                ));
            };
            events.push(RecordEvent {
                ts_ms: ts,
                kind: kind.to_string(),
                item: Some(f[0].to_string()),
                dwell_ms: Some(dwell * 1000),
                ..RecordEvent::default()
            });
            ts += gap * 1000;
        }
        out.push(SessionRecord {
            id: format!("{stem}:{}", n + 1),
            events,
        });
    }
    Ok(())
}

/// Unix ms of a `YYYY-MM-DD HH:MM:SS UTC` time.
fn parse_utc(s: &str) -> Option<u64> {
    let s = s.trim().trim_end_matches(" UTC");
    let (date, time) = s.split_once(' ')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let t: Vec<i64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if d.len() != 3 || t.len() != 3 {
        return None;
    }
    let leap = d[0] % 4 == 0 && (d[0] % 100 != 0 || d[0] % 400 == 0);
    let month_days = match d[1] {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    let in_range = (1970..=9999).contains(&d[0])
        && (1..=12).contains(&d[1])
        && (1..=month_days).contains(&d[2])
        && (0..24).contains(&t[0])
        && (0..60).contains(&t[1])
        && (0..60).contains(&t[2]);
    if !in_range {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m, day) = (if d[1] <= 2 { d[0] - 1 } else { d[0] }, d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    u64::try_from(secs).ok().map(|s| s * 1000)
}

fn read_rees46(file: &Path, text: &str, out: &mut Vec<SessionRecord>) -> Result<(), EvalError> {
    let mut index = std::collections::HashMap::new();
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if n == 0 && line.starts_with("event_time") || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 9 {
            return Err(bad(file, n + 1, "expected 9 comma-separated columns"));
        }
        let ts = parse_utc(f[0]).ok_or_else(|| bad(file, n + 1, "bad event_time"))?;
        rows.push((ts, f[1].to_string(), f[2].to_string(), f[8].to_string()));
    }
    let end = rows.iter().map(|r| r.0).max().unwrap_or(0);
    for (ts, kind, item, session) in rows {
        if ts + REES46_TAIL_MS > end {
            continue;
        }
        let i = *index.entry(session.clone()).or_insert_with(|| {
            out.push(SessionRecord {
                id: session,
                events: Vec::new(),
            });
            out.len() - 1
        });
        out[i].events.push(RecordEvent {
            ts_ms: ts,
            kind,
            item: Some(item),
            ..RecordEvent::default()
        });
    }
    Ok(())
}

fn read_otto(file: &Path, text: &str, out: &mut Vec<SessionRecord>) -> Result<(), EvalError> {
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| bad(file, n + 1, e.to_string()))?;
        let user = v.get("session").map(|s| s.to_string()).unwrap_or_default();
        let Some(events) = v.get("events").and_then(Value::as_array) else {
            return Err(bad(file, n + 1, "no `events` array"));
        };
        let mut visit = SessionRecord::default();
        let mut last = None;
        for e in events {
            let (Some(ts), Some(kind)) = (e["ts"].as_u64(), e["type"].as_str()) else {
                return Err(bad(file, n + 1, "an event lacks `ts` or `type`"));
            };
            if last.is_some_and(|l: u64| ts.saturating_sub(l) > OTTO_VISIT_GAP_MS) {
                out.push(std::mem::take(&mut visit));
            }
            if visit.events.is_empty() {
                visit.id = format!("{user}-{ts}");
            }
            last = Some(ts);
            visit.events.push(RecordEvent {
                ts_ms: ts,
                kind: kind.to_string(),
                item: e.get("aid").map(|a| a.to_string()),
                ..RecordEvent::default()
            });
        }
        out.push(visit);
    }
    Ok(())
}

fn read_events(file: &Path, text: &str, out: &mut Vec<SessionRecord>) -> Result<(), EvalError> {
    let mut index = std::collections::HashMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| bad(file, n + 1, e.to_string()))?;
        let session = match &v["session"] {
            Value::String(s) => s.clone(),
            Value::Number(x) => x.to_string(),
            _ => return Err(bad(file, n + 1, "`session` must be a string")),
        };
        let (Some(ts), Some(kind)) = (v["ts"].as_u64(), v["type"].as_str()) else {
            return Err(bad(file, n + 1, "`ts` (unix ms) and `type` are required"));
        };
        let attrs = v["attrs"].as_object().cloned().unwrap_or_default();
        let item = match attrs.get("sku") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(x)) => Some(x.to_string()),
            _ => None,
        };
        let i = *index.entry(session.clone()).or_insert_with(|| {
            out.push(SessionRecord {
                id: session,
                events: Vec::new(),
            });
            out.len() - 1
        });
        out[i].events.push(RecordEvent {
            ts_ms: ts,
            kind: kind.to_string(),
            item,
            target: v["target"].as_str().map(String::from),
            dwell_ms: v["dwell_ms"].as_u64(),
            gap_ms: None,
            attrs,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{bad, parse_utc};

    #[test]
    fn a_format_error_quotes_a_long_line_cut_short() {
        let line = format!(
            "`{{\"session\":1,\"events\":[{}]}}` is not sku",
            "x".repeat(10_000)
        );
        let shown = bad(std::path::Path::new("f.jsonl"), 1, line).to_string();
        assert!(shown.len() < 300, "{} bytes: {shown}", shown.len());
        assert!(shown.starts_with("f.jsonl:1: `{\"session\":1"), "{shown}");
        assert!(shown.ends_with("…; is this the right --format?"), "{shown}");
        let short = bad(std::path::Path::new("f"), 2, "type 11 is not 1..10").to_string();
        assert_eq!(
            short,
            "f:2: type 11 is not 1..10; is this the right --format?"
        );
    }

    #[test]
    fn utc_times_parse() {
        assert_eq!(parse_utc("1970-01-01 00:00:01 UTC"), Some(1000));
        assert_eq!(
            parse_utc("2019-10-01 00:00:00 UTC"),
            Some(1_569_888_000_000)
        );
        assert_eq!(parse_utc("yesterday"), None);
        assert_eq!(
            parse_utc("2020-02-29 23:59:59 UTC"),
            Some(1_583_020_799_000)
        );
        for bad in [
            "2019-13-01 00:00:00 UTC",
            "2019-02-29 00:00:00 UTC",
            "2019-04-31 00:00:00 UTC",
            "2019-10-00 00:00:00 UTC",
            "2019-10-01 24:00:00 UTC",
            "2019-10-01 00:60:00 UTC",
            "2019-10-01 00:00:-1 UTC",
            "1969-12-31 23:59:59 UTC",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }
}
