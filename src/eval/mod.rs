//! `eval`: how well precog predicts the next step of real sessions, against two baselines.
//!
//! The sessions are replayed in time order (all sessions interleaved, as the daemon would see
//! them) through the same [`Predictor`] the daemon runs, built from the built-in configuration:
//! events go in through `Predictor::event`, idle sessions expire, a session's last event is
//! followed by `Predictor::end`. Before each event that has a predecessor in its session, each
//! model ranks the steps it knows and the event's true step is looked up: hit@1, hit@3 and the
//! reciprocal rank (0 when the step was never seen). A step is the event's type plus whether it
//! concerns the same item as the session's previous event. Baselines, learned online too: the
//! most popular step so far, and a first-order Markov chain over steps (falling back to
//! popularity for a step never seen before).

mod readers;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;
use serde_json::Value;

use crate::config::Config;
use crate::predict::{Predictor, StepTuning};
use crate::profile::Event;
pub use readers::{
    JD_EPOCH_MS, JD_SESSION_SPACING_MS, RecordEvent, SessionRecord, read_sessions, session_files,
};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}; is this the right --format?")]
    Format {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("unknown format `{0}`; use jd, rees46, otto or events")]
    UnknownFormat(String),
}

/// The data set layouts `eval` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jd,
    Rees46,
    Otto,
    Events,
}

impl FromStr for Format {
    type Err = EvalError;

    fn from_str(s: &str) -> Result<Format, EvalError> {
        match s.to_ascii_lowercase().as_str() {
            "jd" => Ok(Format::Jd),
            "rees46" => Ok(Format::Rees46),
            "otto" => Ok(Format::Otto),
            "events" => Ok(Format::Events),
            _ => Err(EvalError::UnknownFormat(s.to_string())),
        }
    }
}

/// One model's scores over the predicted steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Score {
    #[serde(rename = "hit@1")]
    pub hit1: f64,
    #[serde(rename = "hit@3")]
    pub hit3: f64,
    pub mrr: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Models {
    pub precog: Score,
    pub popularity: Score,
    pub markov1: Score,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EvalReport {
    pub events: usize,
    pub sessions: usize,
    pub models: Models,
    /// Steps predicted (events with a predecessor in their session).
    #[serde(skip)]
    pub scored: usize,
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}, {}, {} predicted",
            counted(self.events, "event", "events"),
            counted(self.sessions, "session", "sessions"),
            counted(self.scored, "next step", "next steps")
        )?;
        writeln!(f, "| model      |  hit@1 |  hit@3 |    mrr |")?;
        writeln!(f, "|------------|-------:|-------:|-------:|")?;
        let m = &self.models;
        for (name, s) in [
            ("precog", m.precog),
            ("markov1", m.markov1),
            ("popularity", m.popularity),
        ] {
            writeln!(
                f,
                "| {name:<10} | {:>5.1}% | {:>5.1}% | {:>6.3} |",
                s.hit1 * 100.0,
                s.hit3 * 100.0,
                s.mrr
            )?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Tally {
    hit1: u64,
    hit3: u64,
    rr: f64,
}

/// `n` and its noun, in the singular for one.
fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl Tally {
    fn add(&mut self, rank: Option<usize>) {
        if let Some(r) = rank {
            self.hit1 += (r == 0) as u64;
            self.hit3 += (r < 3) as u64;
            self.rr += 1.0 / (r + 1) as f64;
        }
    }

    fn score(&self, n: usize) -> Score {
        let n = n.max(1) as f64;
        Score {
            hit1: self.hit1 as f64 / n,
            hit3: self.hit3 as f64 / n,
            mrr: self.rr / n,
        }
    }
}

/// Step counts for the two baselines.
#[derive(Default)]
struct Baselines {
    popularity: HashMap<String, u64>,
    markov: HashMap<String, HashMap<String, u64>>,
}

impl Baselines {
    fn popularity_rank(&self, step: &str) -> Option<usize> {
        let own = *self.popularity.get(step)?;
        Some(
            self.popularity
                .iter()
                .filter(|(s, c)| **c > own || (**c == own && s.as_str() < step))
                .count(),
        )
    }

    fn markov_rank(&self, prev: &str, step: &str) -> Option<usize> {
        let pop = |s: &str| self.popularity.get(s).copied().unwrap_or(0);
        let row = self.markov.get(prev);
        let count = |s: &str| row.and_then(|r| r.get(s)).copied().unwrap_or(0);
        let own = (count(step), pop(step));
        if own.1 == 0 {
            return None;
        }
        Some(
            self.popularity
                .keys()
                .filter(|s| {
                    let other = (count(s), pop(s));
                    other > own || (other == own && s.as_str() < step)
                })
                .count(),
        )
    }

    fn learn(&mut self, prev: Option<&str>, step: &str) {
        *self.popularity.entry(step.to_string()).or_default() += 1;
        if let Some(prev) = prev {
            *self
                .markov
                .entry(prev.to_string())
                .or_default()
                .entry(step.to_string())
                .or_default() += 1;
        }
    }
}

/// The event a recorded event becomes on the socket.
pub fn to_event(session: &str, e: &RecordEvent) -> Event {
    let mut attrs = e.attrs.clone();
    if let Some(item) = &e.item {
        attrs.insert("sku".into(), Value::String(item.clone()));
    }
    Event {
        session: session.to_string(),
        kind: e.kind.clone(),
        target: e.target.clone(),
        ms: e.dwell_ms,
        depth: None,
        attrs,
        ts_ms: e.ts_ms,
    }
}

/// The step of event `i` of a session.
fn step_of(events: &[RecordEvent], i: usize) -> String {
    let e = &events[i];
    if e.kind == "run" {
        return format!("run:{}", e.target.as_deref().unwrap_or(""));
    }
    let same = i > 0 && e.item.is_some() && events[i - 1].item == e.item;
    if same {
        format!("{}=", e.kind)
    } else {
        e.kind.clone()
    }
}

/// Replays a data set through precog and the baselines and scores next-step predictions.
pub fn evaluate(path: &Path, format: Format) -> Result<EvalReport, EvalError> {
    let sessions = read_sessions(path, format)?;
    Ok(evaluate_sessions(&sessions, &Config::builtin()))
}

/// [`evaluate`] over sessions already read, with a given configuration.
pub fn evaluate_sessions(sessions: &[SessionRecord], cfg: &Config) -> EvalReport {
    evaluate_tuned(sessions, cfg, None)
}

/// [`evaluate_sessions`] with the step mixer's knobs set, to compare model variants.
pub fn evaluate_tuned(
    sessions: &[SessionRecord],
    cfg: &Config,
    tuning: Option<StepTuning>,
) -> EvalReport {
    let mut order: Vec<(u64, usize, usize)> = sessions
        .iter()
        .enumerate()
        .flat_map(|(s, r)| {
            r.events
                .iter()
                .enumerate()
                .map(move |(i, e)| (e.ts_ms, s, i))
        })
        .collect();
    order.sort_unstable();

    let mut predictor = Predictor::new(cfg);
    if let Some(t) = tuning {
        predictor.set_step_tuning(t);
    }
    let mut baselines = Baselines::default();
    let (mut precog, mut popularity, mut markov) =
        (Tally::default(), Tally::default(), Tally::default());
    let mut scored = 0;
    let mut last_expiry = 0;

    for &(ts, s, i) in &order {
        if ts >= last_expiry + 60_000 {
            predictor.expire(ts);
            last_expiry = ts;
        }
        let record = &sessions[s];
        let step = step_of(&record.events, i);
        let prev = (i > 0).then(|| step_of(&record.events, i - 1));

        if let Some(prev) = &prev {
            scored += 1;
            let rank = predictor.step_id(&step).and_then(|id| {
                predictor
                    .step_ranking(&record.id)
                    .iter()
                    .position(|(s, _)| *s == id)
            });
            precog.add(rank);
            popularity.add(baselines.popularity_rank(&step));
            markov.add(baselines.markov_rank(prev, &step));
        }
        baselines.learn(prev.as_deref(), &step);

        predictor.event(to_event(&record.id, &record.events[i]));
        if i + 1 == record.events.len() {
            predictor.end(&record.id, None, ts);
        }
    }

    EvalReport {
        events: order.len(),
        sessions: sessions.len(),
        models: Models {
            precog: precog.score(scored),
            popularity: popularity.score(scored),
            markov1: markov.score(scored),
        },
        scored,
    }
}
