//! Saving what was learned to bytes and reading it back.
//!
//! Layout: an 8-byte magic, a little-endian u32 format version, a u64 payload length, the
//! payload's CRC-32, then the payload (JSON of the step and run models and the partitioner's
//! thresholds and feedback counters). Anything that does not check out — magic, length, CRC,
//! JSON, ids out of range, non-finite numbers — is refused with an error and leaves the running
//! model untouched. Sessions are not saved: they are short-lived and end with the daemon.
//!
//! A large model takes a while to encode (some 0.5 µs a context; a full step model holds a
//! million), too long to hold up requests. So it is encoded a slice of contexts at a time
//! ([`ModelSave`]), between which the model goes on learning: like a fuzzy checkpoint, the saved
//! model is every context as it was when its slice was written, not the whole model at one
//! instant. Contexts that appear meanwhile wait for the next save; those pruned meanwhile are
//! left out. Each context's own counts are always whole, which is all the model needs.
//!
//! Two kinds of damage an older build could save are mended rather than refused, so the model
//! is kept: names longer than any name is now allowed to be are emptied (see
//! `StepModel::restore`, `RunModel::restore`), and times ahead of the clock are brought back to
//! it, so the counts fade again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::steps::{CONFIDENCE, Counts, StepTuning};
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

/// A save in progress: the payload so far, and the contexts still to write. The JSON is the
/// same as [`Saved`]'s, written piece by piece: each model's contexts first, then the rest of it
/// as it is by then, so every id a written context uses has its name (names are only added).
pub struct ModelSave {
    payload: Vec<u8>,
    step_keys: Vec<u64>,
    run_keys: Vec<u64>,
    /// Contexts written so far, step contexts first.
    done: usize,
    /// Whether the step model is complete and the run model's contexts have begun.
    runs_begun: bool,
}

/// The step model apart from its contexts.
#[derive(Serialize)]
struct StepHead<'a> {
    names: &'a [String],
    order0: &'a Counts,
    weights: &'a [[f32; CONFIDENCE]],
    tuning: &'a StepTuning,
    mixer_belief: f32,
}

/// The run model apart from its contexts.
#[derive(Serialize)]
struct RunHead<'a> {
    processes: &'a [String],
}

/// The partitioner's part.
#[derive(Serialize)]
struct Tail<'a> {
    threshold: f64,
    used: u64,
    wasted: u64,
    per_process: &'a BTreeMap<String, ProcessFeedback>,
}

/// Appends the fields of `value`, a struct, without the braces around them.
fn write_fields(out: &mut Vec<u8>, value: &impl Serialize) {
    let json = serde_json::to_vec(value).expect("the model serialises to JSON");
    debug_assert!(json.len() >= 2 && json[0] == b'{' && json[json.len() - 1] == b'}');
    out.extend_from_slice(&json[1..json.len() - 1]);
}

/// Writes `"key":value`, preceded by a comma unless it is the table's first.
fn write_entry(out: &mut Vec<u8>, key: u64, value: &impl Serialize) {
    use std::io::Write;
    if out.last() != Some(&b'{') {
        out.push(b',');
    }
    // Map keys are strings in JSON; serde reads them back as the u64 they were.
    let _ = write!(out, "\"{key}\":");
    serde_json::to_writer(&mut *out, value).expect("the model serialises to JSON");
}

/// A saved model whose header (length, checksum) is still to be written: the checksum of a
/// large model takes some milliseconds, which a thread of its own can spend.
pub struct Unsealed(Vec<u8>);

impl Unsealed {
    /// The bytes for `state_dir`.
    pub fn seal(self) -> Vec<u8> {
        let mut bytes = self.0;
        let (header, payload) = bytes.split_at_mut(HEADER);
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[12..20].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        header[20..24].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
        bytes
    }
}

impl ModelSave {
    /// Whether every context has been written.
    pub fn is_done(&self) -> bool {
        self.runs_begun && self.done == self.step_keys.len() + self.run_keys.len()
    }
}

impl Predictor {
    /// What the model has learned, as bytes for `state_dir`, at once.
    pub fn save(&self) -> Vec<u8> {
        let mut save = self.save_begin();
        self.save_some(&mut save, usize::MAX);
        self.save_finish(save).seal()
    }

    /// Starts a save that [`Predictor::save_some`] carries on, a slice at a time.
    pub fn save_begin(&self) -> ModelSave {
        // Room for the header, filled in by `Unsealed::seal`, so the payload is never copied.
        let mut payload = vec![0u8; HEADER];
        payload.extend_from_slice(b"{\"steps\":{\"tables\":{");
        ModelSave {
            payload,
            step_keys: self.steps.tables.keys().copied().collect(),
            run_keys: self.runs.tables.keys().copied().collect(),
            done: 0,
            runs_begun: false,
        }
    }

    /// Writes up to `contexts` more contexts of `save`, as they are now (those gone meanwhile
    /// are left out); returns whether the save has written them all.
    pub fn save_some(&self, save: &mut ModelSave, contexts: usize) -> bool {
        let steps = save.step_keys.len();
        let end = save
            .done
            .saturating_add(contexts)
            .min(steps + save.run_keys.len());
        loop {
            if save.done >= steps && !save.runs_begun {
                // The step contexts end; the rest of the step model as it is now.
                save.payload.extend_from_slice(b"},");
                let s = &self.steps;
                write_fields(
                    &mut save.payload,
                    &StepHead {
                        names: &s.names,
                        order0: &s.order0,
                        weights: &s.weights,
                        tuning: &s.tuning,
                        mixer_belief: s.mixer_belief,
                    },
                );
                save.payload.extend_from_slice(b"},\"runs\":{\"tables\":{");
                save.runs_begun = true;
            }
            if save.done >= end {
                break;
            }
            let i = save.done;
            if i < steps {
                let key = save.step_keys[i];
                if let Some(c) = self.steps.tables.get(&key) {
                    write_entry(&mut save.payload, key, c);
                }
            } else {
                let key = save.run_keys[i - steps];
                if let Some(c) = self.runs.tables.get(&key) {
                    write_entry(&mut save.payload, key, c);
                }
            }
            save.done += 1;
        }
        save.is_done()
    }

    /// A save that [`Predictor::save_some`] has finished, given the rest of the run model and
    /// the partitioner's part as they are now; [`Unsealed::seal`] makes the bytes.
    pub fn save_finish(&self, save: ModelSave) -> Unsealed {
        assert!(save.is_done(), "the save is not finished");
        let mut payload = save.payload;
        payload.extend_from_slice(b"},");
        write_fields(
            &mut payload,
            &RunHead {
                processes: &self.runs.processes,
            },
        );
        payload.extend_from_slice(b"},");
        write_fields(
            &mut payload,
            &Tail {
                threshold: self.partition.threshold,
                used: self.partition.used,
                wasted: self.partition.wasted,
                per_process: &self.partition.per_process,
            },
        );
        payload.push(b'}');
        Unsealed(payload)
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
