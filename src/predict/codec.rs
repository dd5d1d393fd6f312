//! Saving what was learned to bytes and reading it back.
//!
//! Layout: an 8-byte magic, a little-endian u32 format version, a u64 payload length, the
//! payload's CRC-32, then the payload (JSON of the step and run models and the partitioner's
//! thresholds and feedback counters). Anything that does not check out — magic, length, CRC,
//! JSON, ids out of range, non-finite numbers — is refused with an error and leaves the running
//! model untouched. Sessions are not saved: they are short-lived and end with the daemon.
//!
//! Two kinds of damage an older build could save are mended rather than refused, so the model
//! is kept: names longer than any name is now allowed to be are emptied (see
//! `StepModel::restore`, `RunModel::restore`), and times ahead of the clock are brought back to
//! it, so the counts fade again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{PredictError, Predictor, ProcessFeedback, RunModel, StepModel};

/// What loading a saved model mended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mended {
    /// Step and process names over the length limit, emptied.
    pub long_names: usize,
    /// Counts whose time was ahead of the clock, brought back to it.
    pub future_times: usize,
}

const MAGIC: &[u8; 8] = b"PRECOGM\0";

/// How far ahead of the clock a saved count's time may be before it is taken as damage: a time
/// in the future stops the count from fading until the clock gets there.
pub const CLOCK_SLACK_MS: u64 = 60_000;
const VERSION: u32 = 2;
const HEADER: usize = 8 + 4 + 8 + 4;

#[derive(Serialize, Deserialize)]
struct Saved {
    steps: StepModel,
    runs: RunModel,
    threshold: f64,
    used: u64,
    wasted: u64,
    per_process: BTreeMap<String, ProcessFeedback>,
}

/// Brings saved times ahead of `now_ms` back to it, so their counts fade again; returns how
/// many there were.
fn bring_back_times(steps: &mut StepModel, runs: &mut RunModel, now_ms: u64) -> usize {
    let limit = now_ms.saturating_add(CLOCK_SLACK_MS);
    let times = std::iter::once(&mut steps.order0.last_ms)
        .chain(steps.tables.values_mut().map(|c| &mut c.last_ms))
        .chain(runs.tables.values_mut().map(|c| &mut c.last_ms));
    let mut brought_back = 0;
    for t in times.filter(|t| **t > limit) {
        *t = now_ms;
        brought_back += 1;
    }
    brought_back
}

impl Predictor {
    /// What the model has learned, as bytes for `state_dir`.
    pub fn save(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct SavedRef<'a> {
            steps: &'a StepModel,
            runs: &'a RunModel,
            threshold: f64,
            used: u64,
            wasted: u64,
            per_process: &'a BTreeMap<String, ProcessFeedback>,
        }
        let payload = serde_json::to_vec(&SavedRef {
            steps: &self.steps,
            runs: &self.runs,
            threshold: self.partition.threshold,
            used: self.partition.used,
            wasted: self.partition.wasted,
            per_process: &self.partition.per_process,
        })
        .expect("the model serialises to JSON");

        let mut bytes = Vec::with_capacity(HEADER + payload.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        bytes
    }

    /// Replaces the learned model with saved bytes; live sessions stay. `now_ms` is the clock:
    /// saved times ahead of it are brought back to it.
    pub fn load(&mut self, bytes: &[u8], now_ms: u64) -> Result<Mended, PredictError> {
        let damaged = |what: &str| PredictError::Damaged(what.to_string());
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err(damaged("not a precog model"));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(PredictError::Version(version, VERSION));
        }
        let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
        let payload = &bytes[HEADER..];
        if payload.len() as u64 != len {
            return Err(damaged("truncated"));
        }
        if crc32fast::hash(payload) != crc {
            return Err(damaged("checksum mismatch"));
        }
        let mut saved: Saved =
            serde_json::from_slice(payload).map_err(|e| PredictError::Damaged(e.to_string()))?;
        let hl = self.steps.half_life_ms;
        let long_steps = saved.steps.restore(hl).map_err(PredictError::Damaged)?;
        let long_runs = saved.runs.restore(hl).map_err(PredictError::Damaged)?;
        let mended = Mended {
            long_names: long_steps + long_runs,
            future_times: bring_back_times(&mut saved.steps, &mut saved.runs, now_ms),
        };
        if !saved.threshold.is_finite() {
            return Err(damaged("threshold is not a number"));
        }
        for (process, f) in &mut saved.per_process {
            if let Some(t) = &mut f.threshold {
                if !t.is_finite() {
                    return Err(damaged(&format!("threshold of {process} is not a number")));
                }
                *t = t.clamp(0.0, 1.0);
            }
        }

        self.steps = saved.steps;
        self.runs = saved.runs;
        if !self.partition.threshold_pinned {
            self.partition.threshold = saved.threshold.clamp(0.0, 1.0);
        }
        self.partition.used = saved.used;
        self.partition.wasted = saved.wasted;
        self.partition.per_process = saved.per_process;
        // Run-model ids may differ from the ones the running configuration was mapped to.
        self.map_processes();
        Ok(mended)
    }
}
