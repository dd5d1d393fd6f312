//! The online prediction engine: session profiles in, a ranked hot path of processes out.
//!
//! [`Predictor`] is the facade the engine calls. It owns the session profiles, the next-step
//! model ([`steps`]), the run model ([`runs`]), the dependency graph ([`graph`]) and the
//! partitioner (`crate::partition`). Every event updates the session's profile, teaches the step
//! model which step followed the previous context and the run model which processes followed
//! the last few contexts, and the hot path is recomputed: a process's chance is that of being
//! asked for within the next few events (run model, over the step model's own contexts), blended
//! with the app's hints (noisy-or) and lifted onto its prerequisites (graph).
//!
//! What was tried for the step model, scored online over both JD files replayed together
//! (98,346 predicted steps; hit@1 / hit@3 against the first-order Markov chain at 52.4 / 79.8,
//! `tests/predict_tuning.rs` reruns the comparison):
//!
//! | variant | hit@1 | hit@3 |
//! |---|---:|---:|
//! | first-order context alone (fading memory) | 51.7 | 78.9 |
//! | order-3 + dwell bucket context alone, backing off to order 1 | 57.9 | 83.6 |
//! | all contexts, one weight set, learning rate 0.02 | 57.8 | 83.8 |
//! | the same, learning rate 0.005 / 0.05 | 60.1 / 54.2 | 86.1 / 80.1 |
//! | learning rate 0.002, a weight set per last step | 60.9 | 86.5 |
//! | PPM chain (each context backs off to its parent, not order 1) | -0.1..-0.3 | -0.3 |
//! | a second mixer selected by dwell and item events, averaged in | -0.1 | 0.0 |
//! | one mixer; entry step, pace, fine dwell; first-order start, learned trust | 60.7 | 86.4 |
//! | the same, without the visitor's own habit expert | 59.3 | 85.3 |
//! | kept: the trust replaced by a Bayesian final stage (below) | 60.9 | 86.5 |
//!
//! Each single context can be left out for less than 0.2 points; the visitor's habit is worth
//! 1.2, a second habit expert over the last two steps added nothing (+0.0 / +0.0). Learning the
//! session end in the mixer, and fading a quiet context to nothing, cost REES46 and OTTO (visits
//! of a few events; a visit an hour) their place above the chain.
//!
//! The floor: precog must not fall below the chain on any data set. On OTTO (718 predicted
//! steps) the gradient-learned trust had barely moved from its start and precog was one step
//! below the chain in hit@3. What was tried for the final stage over {mixers, first-order
//! expert}, as steps above (+) or below (-) the chain in hit@1 / hit@3, and JD both files:
//!
//! | final stage | OTTO | REES46 | JD hit@1 / hit@3 |
//! |---|---:|---:|---:|
//! | gradient-learned trust (before) | +0 / -1 | +128 / +5 | 60.6 / 86.3 |
//! | none: the mixer alone | -2 / -2 | +129 / +5 | 61.0 / 86.5 |
//! | none: the fading first-order expert alone | +0 / +1 | +0 / +0 | 51.6 / 78.9 |
//! | mixer weights started as the first-order expert (1 / 0) | +0 / -2 | +133 / +5 | 60.6 / 86.3 |
//! | mixer rate x(1 + 3 * 1000/(n + 1000)) after n steps | -1 / -1 | +113 / +4 | 61.0 / 86.5 |
//! | the same, x(1 + 10 * 1000/(n + 1000)) | +0 / +1 | +56 / -8 | 60.8 / 86.4 |
//! | Bayes over the two, no sharing (can lock in for good) | +0 / +1 | +129 / +5 | 60.9 / 86.5 |
//! | kept: Bayes, Fixed-Share 1e-4 | +0 / +0 | +136 / +5 | 60.9 / 86.5 |
//! | Bayes, Fixed-Share 1e-5 | +0 / +0 | +136 / +5 | 60.9 / 86.5 |
//! | Bayes, Fixed-Share 1e-3 | +0 / -1 | +133 / +5 | 60.9 / 86.4 |
//!
//! The Bayesian stage follows each side's cumulative log loss: on OTTO the chain's is lower (536
//! against the mixer's 583 nats) and its ranking shows through; on JD and REES46 the mixer's is
//! far lower within a few hundred steps. Fixed-Share keeps the belief from locking in.

mod belief;
mod codec;
mod graph;
mod runs;
mod steps;
mod tables;

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{Config, ProcessConfig};
pub use crate::partition::{HotEntry, ProcessFeedback, SpeculativeJob};
use crate::partition::{Partitioner, declared_inputs};
use crate::profile::{Event, MAX_INPUT_BYTES, MAX_INPUTS, Profile, Profiles};
pub use codec::{Mended, ModelSave, Unsealed};
pub use graph::DepGraph;
pub use runs::{HORIZON, RunModel};
pub use steps::{CONTEXTS, Context, StepModel, StepTuning, context_of};

/// Events a hint stays in force for, unless the app sends a new one.
const HINT_EVENTS: u8 = 3;

/// Why a saved model could not be loaded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PredictError {
    #[error("saved model is damaged ({0}); delete it and precog starts learning afresh")]
    Damaged(String),
    #[error("saved model has format version {0}, precog reads {1}; delete it to start afresh")]
    Version(u32, u32),
}

/// Counters for `stats` and D-Bus.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PredictStats {
    pub sessions: usize,
    pub threshold: f64,
    pub precision: f64,
    pub speculative_used: u64,
    pub speculative_wasted: u64,
    pub steps_known: usize,
    pub contexts: usize,
    pub per_process: BTreeMap<String, ProcessFeedback>,
}

/// The step an event is: its kind, marked `=` when it concerns the same item as the event
/// before it, or `run:<process>` for a process the app asked for.
pub fn step_name(ev: &Event, same_item: bool) -> String {
    if ev.kind == "run" {
        return format!("run:{}", ev.target.as_deref().unwrap_or(""));
    }
    if same_item {
        format!("{}=", ev.kind)
    } else {
        ev.kind.clone()
    }
}

pub struct Predictor {
    processes: Vec<ProcessConfig>,
    /// Run-model id of each configured process.
    process_ids: Vec<Option<u16>>,
    graph: DepGraph,
    profiles: Profiles,
    steps: StepModel,
    runs: RunModel,
    partition: Partitioner,
    hot_path_len: usize,
    /// Sessions pushed out to make room for new ones, until the caller collects them.
    evicted: Vec<String>,
}

fn half_life_ms(cfg: &Config) -> f64 {
    cfg.predict.half_life.0.as_secs_f64() * 1000.0
}

impl Predictor {
    pub fn new(cfg: &Config) -> Predictor {
        let hl = half_life_ms(cfg);
        let mut predictor = Predictor {
            processes: Vec::new(),
            process_ids: Vec::new(),
            graph: DepGraph::default(),
            profiles: Profiles::new(cfg.sessions.max, 0),
            steps: StepModel::new(hl),
            runs: RunModel::new(hl),
            partition: Partitioner::new(
                cfg.predict.precision_target,
                cfg.predict.per_session,
                cfg.predict.speculation,
            ),
            hot_path_len: cfg.predict.hot_path,
            evicted: Vec::new(),
        };
        predictor.reconfigure(cfg);
        predictor
    }

    /// Takes a new configuration, keeping what was learned and the live sessions.
    pub fn reconfigure(&mut self, cfg: &Config) {
        let hl = half_life_ms(cfg);
        self.processes = cfg.processes.clone();
        self.graph = DepGraph::new(&self.processes);
        self.map_processes();
        let idle_ms = cfg.sessions.idle.0.as_millis() as u64;
        // Sessions a lowered `max` pushes out are gone as if they had ended, as when a new
        // session pushes one out.
        let inputs_budget = usize::try_from(cfg.sessions.memory.0).unwrap_or(usize::MAX);
        for gone in self
            .profiles
            .set_limits(cfg.sessions.max, idle_ms, inputs_budget)
        {
            self.partition.end_session(&gone);
            self.evicted.push(gone);
        }
        self.steps.half_life_ms = hl;
        self.runs.half_life_ms = hl;
        self.partition.precision_target = cfg.predict.precision_target;
        self.partition.per_session = cfg.predict.per_session;
        self.partition.speculation = cfg.predict.speculation;
        self.partition.threshold_pinned = false;
        self.hot_path_len = cfg.predict.hot_path;
    }

    /// Gives each configured process its run-model id. An id taken over from a name no longer
    /// configured loses its marks in the live sessions, and the app's hints for that name.
    fn map_processes(&mut self) {
        let names: Vec<&str> = self.processes.iter().map(|p| p.name.as_str()).collect();
        let (ids, taken_over) = self.runs.assign(&names);
        self.process_ids = ids;
        let mask = taken_over.iter().fold(0u64, |m, id| m | 1 << id);
        if mask != 0 {
            for profile in self.profiles.profiles_mut() {
                profile.runs_done &= !mask;
                for (_, credited) in &mut profile.pending {
                    *credited &= !mask;
                }
                profile.hints.retain(|h| mask & (1 << h.0) == 0);
            }
        }
    }

    /// The run-model id of a configured process.
    fn process_id(&self, name: &str) -> Option<u16> {
        let i = self.processes.iter().position(|c| c.name == name)?;
        self.process_ids[i]
    }

    /// Applies one event at its own time: profile, model, and the session's new hot path.
    pub fn event(&mut self, ev: Event) -> Vec<HotEntry> {
        let now = ev.ts_ms;
        self.event_at(ev, now)
    }

    /// Why an event would be refused: its attributes would take the session past
    /// [`MAX_INPUTS`] known inputs, or past [`MAX_INPUT_BYTES`].
    pub fn check_inputs(&self, session: &str, attrs: &Map<String, Value>) -> Result<(), String> {
        let (known, new, bytes) = match self.profiles.get(session) {
            Some(p) => (
                p.known_inputs.len(),
                p.new_input_keys(attrs),
                p.input_bytes_with(attrs),
            ),
            None => (0, attrs.len(), Profile::default().input_bytes_with(attrs)),
        };
        if bytes > MAX_INPUT_BYTES {
            return Err(format!(
                "a session's inputs may take at most {MAX_INPUT_BYTES} bytes (keys and JSON \
                 values); with this event they would take {bytes}"
            ));
        }
        if known + new > MAX_INPUTS {
            return Err(format!(
                "a session keeps at most {MAX_INPUTS} inputs; this one knows {known} and the \
                 event adds {new} new ones (known inputs may still change)"
            ));
        }
        Ok(())
    }

    /// Applies one event with `now_ms` as the clock for the session's activity and the shared
    /// model's fading; the event's own `ts_ms` only sets the visit's signals (gaps, time on the
    /// item). The daemon passes its own clock, so a client's clock cannot move the model's or
    /// make sessions expire early or never. A `run` of a process that is not configured
    /// teaches no run counts.
    pub fn event_at(&mut self, ev: Event, now_ms: u64) -> Vec<HotEntry> {
        let now = now_ms;
        let run_id = match (ev.kind.as_str(), ev.target.as_deref()) {
            ("run", Some(process)) => self.process_id(process),
            _ => None,
        };
        let (profile, evicted) = self.profiles.touch(&ev.session, now);
        let inputs_before = profile.known_input_bytes();
        let observed = profile.observe(&ev);
        let step = self.steps.intern(&step_name(&ev, observed.same_item));

        if let Some(ctx) = profile.context {
            self.steps.learn(&ctx, &profile.habit, step, now);
            if let Some(last) = ctx.last_step {
                profile.learn_habit(last, step);
            }
        }
        if ev.kind == "run"
            && let Some(process) = ev.target.as_deref()
        {
            if let Some(id) = run_id {
                self.runs.credit(profile, id, now);
                profile.runs_done |= 1 << id;
            }
            self.partition.consumed(&ev.session, process);
        }

        profile.push_step(step, !observed.same_item);
        let ctx = context_of(profile);
        self.runs.open(profile, &ctx, now);
        profile.context = Some(ctx);
        for hint in &mut profile.hints {
            hint.2 = hint.2.saturating_sub(1);
        }
        profile.hints.retain(|h| h.2 > 0);

        // Sessions pushed out to make room, for this one or for its inputs, end as if they had.
        let over_budget = self.profiles.inputs_changed(&ev.session, inputs_before);
        for gone in evicted.into_iter().chain(over_budget) {
            self.partition.end_session(&gone);
            self.evicted.push(gone);
        }
        self.hot_path(&ev.session, self.hot_path_len)
    }

    /// Blends the app's own predictions into the session's hot path.
    pub fn hint(&mut self, session: &str, preds: &[(String, f64)], now_ms: u64) -> Vec<HotEntry> {
        let (profile, evicted) = self.profiles.touch(session, now_ms);
        for (name, p) in preds {
            let Some(i) = self.processes.iter().position(|c| &c.name == name) else {
                continue;
            };
            let Some(id) = self.process_ids[i] else {
                continue;
            };
            let p = if p.is_finite() {
                p.clamp(0.0, 1.0)
            } else {
                0.0
            };
            profile.hints.retain(|h| h.0 != id);
            profile.hints.push((id, p, HINT_EVENTS));
        }
        if let Some(gone) = evicted {
            self.partition.end_session(&gone);
            self.evicted.push(gone);
        }
        self.hot_path(session, self.hot_path_len)
    }

    /// The `n` processes most likely to be asked for soon in this session, prerequisites first.
    pub fn hot_path(&self, session: &str, n: usize) -> Vec<HotEntry> {
        let Some(profile) = self.profiles.get(session) else {
            return Vec::new();
        };
        let ctx = profile.context.unwrap_or_else(|| context_of(profile));
        // The run model alone ranks processes: "asked for within the next few events" already
        // covers "asked for next", it shares the step model's contexts, and it spares the hot
        // path a second pass of the mixer.
        let soon = self.runs.estimate(&ctx);

        let mut p: Vec<f64> = self
            .process_ids
            .iter()
            .map(|id| {
                let Some(id) = *id else { return 0.0 };
                let model = soon.get(id as usize).copied().unwrap_or(0.0) as f64;
                let hint = profile
                    .hints
                    .iter()
                    .find(|h| h.0 == id)
                    .map_or(0.0, |h| h.1);
                1.0 - (1.0 - model) * (1.0 - hint)
            })
            .collect();
        let done = |i: usize| self.has_run(profile, i);
        let order = self.graph.rank(&mut p, &done);

        order
            .into_iter()
            .filter(|&i| p[i] > 1e-4)
            .take(n)
            .map(|i| HotEntry {
                process: self.processes[i].name.clone(),
                p: p[i],
                inputs_known: declared_inputs(&self.processes[i], &profile.known_inputs).is_some(),
            })
            .collect()
    }

    fn has_run(&self, profile: &Profile, process: usize) -> bool {
        self.process_ids
            .get(process)
            .and_then(|id| *id)
            .is_some_and(|id| profile.runs_done & (1 << id) != 0)
    }

    pub fn known_inputs(&self, session: &str) -> Option<&Map<String, Value>> {
        self.profiles.get(session).map(|p| &p.known_inputs)
    }

    /// New speculative jobs for the session: hot, idempotent, inputs known, above threshold.
    pub fn speculate(&mut self, session: &str) -> Vec<SpeculativeJob> {
        let hot = self.hot_path(session, self.hot_path_len);
        self.speculate_from(session, &hot)
    }

    /// As `speculate`, from the hot path the last event or hint of the session returned, which
    /// nothing has changed since.
    pub fn speculate_from(&mut self, session: &str, hot: &[HotEntry]) -> Vec<SpeculativeJob> {
        let Some(profile) = self.profiles.get(session) else {
            return Vec::new();
        };
        let (processes, ids) = (&self.processes, &self.process_ids);
        let has_run = |name: &str| {
            processes
                .iter()
                .position(|p| p.name == name)
                .and_then(|i| ids[i])
                .is_some_and(|id| profile.runs_done & (1 << id) != 0)
        };
        self.partition.select(
            session,
            hot,
            &profile.known_inputs,
            &self.processes,
            &has_run,
        )
    }

    /// A job [`Predictor::speculate_from`] chose that was not issued: it may be chosen again.
    pub fn withdraw(&mut self, session: &str, job: &SpeculativeJob) {
        self.partition.withdraw(session, job);
    }

    /// Issued speculative jobs that are no longer worth finishing.
    pub fn cancellable(&mut self, session: &str) -> Vec<SpeculativeJob> {
        let hot = self.hot_path(session, self.hot_path_len);
        self.cancellable_from(session, &hot)
    }

    /// As `cancellable`, from the session's current hot path.
    pub fn cancellable_from(&mut self, session: &str, hot: &[HotEntry]) -> Vec<SpeculativeJob> {
        self.partition.cancellable(session, hot)
    }

    pub fn feedback(&mut self, process: &str, used: bool, cpu_ns: u64) {
        self.partition.feedback(process, used, cpu_ns);
    }

    /// CPU time of a wasted speculative job, learned after its waste was counted.
    pub fn wasted_cpu(&mut self, process: &str, cpu_ns: u64) {
        self.partition.wasted_cpu(process, cpu_ns);
    }

    /// The sessions pushed out since the last call, to make room for new ones (at most
    /// `[sessions] max` are kept): they are gone as if they had ended.
    pub fn take_evicted(&mut self) -> Vec<String> {
        std::mem::take(&mut self.evicted)
    }

    /// Ends a session: the model learns how it ended, the profile is freed and its speculative
    /// jobs become cancellable. False when the session was not known.
    pub fn end(&mut self, session: &str, outcome: Option<&str>, now_ms: u64) -> bool {
        let Some(profile) = self.profiles.remove(session) else {
            return false;
        };
        if let Some(ctx) = profile.context {
            let name = match outcome {
                Some(o) => format!("end:{o}"),
                None => "end".to_string(),
            };
            let step = self.steps.intern(&name);
            self.steps.learn_end(&ctx, step, now_ms);
        }
        self.partition.end_session(session);
        true
    }

    /// Frees the sessions idle past `sessions.idle` and names them.
    pub fn expire(&mut self, now_ms: u64) -> Vec<String> {
        let expired = self.profiles.expire(now_ms);
        for session in &expired {
            self.partition.end_session(session);
        }
        expired
    }

    /// Sessions with a profile now.
    pub fn session_count(&self) -> usize {
        self.profiles.len()
    }

    /// What the inputs the live sessions made known take together.
    pub fn session_inputs_bytes(&self) -> usize {
        self.profiles.inputs_bytes()
    }

    /// The probability a process needs to be guessed, as in force now.
    pub fn threshold(&self) -> f64 {
        self.partition.threshold
    }

    /// The threshold an operator pinned with [`Self::set_policy`], while it holds.
    pub fn pinned_threshold(&self) -> Option<f64> {
        self.partition
            .threshold_pinned
            .then_some(self.partition.threshold)
    }

    pub fn stats(&self) -> PredictStats {
        PredictStats {
            sessions: self.profiles.len(),
            threshold: self.partition.threshold,
            precision: self.partition.precision(),
            speculative_used: self.partition.used,
            speculative_wasted: self.partition.wasted,
            steps_known: self.steps.step_count(),
            contexts: self.steps.tables.len() + self.runs.tables.len(),
            per_process: self.partition.per_process.clone(),
        }
    }

    /// An operator's policy: hot-path length, a pinned threshold, speculation on or off.
    pub fn set_policy(
        &mut self,
        hot_path: Option<usize>,
        threshold: Option<f64>,
        speculation: Option<bool>,
    ) {
        if let Some(n) = hot_path {
            self.hot_path_len = n;
        }
        if let Some(t) = threshold.filter(|t| t.is_finite()) {
            self.partition.threshold = t.clamp(0.0, 1.0);
            self.partition.threshold_pinned = true;
        }
        if let Some(on) = speculation {
            self.partition.speculation = on;
        }
    }

    /// Known steps ranked by the chance each comes next in the session (ends left out).
    pub fn step_ranking(&self, session: &str) -> Vec<(u16, f32)> {
        let Some(profile) = self.profiles.get(session) else {
            return Vec::new();
        };
        let ctx = profile.context.unwrap_or_else(|| context_of(profile));
        let q = self
            .steps
            .distribution(&ctx, &profile.habit, profile.last_ts_ms);
        let mut ranked: Vec<(u16, f32)> = q
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !self.steps.name(*i as u16).starts_with("end"))
            .map(|(i, p)| (i as u16, p))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        ranked
    }

    /// Changes the step mixer's knobs (for experiments; the defaults are the measured best).
    pub fn set_step_tuning(&mut self, tuning: StepTuning) {
        self.steps.set_tuning(tuning);
    }

    pub fn step_id(&self, name: &str) -> Option<u16> {
        self.steps.id(name)
    }

    pub fn profile(&self, session: &str) -> Option<&Profile> {
        self.profiles.get(session)
    }
}

#[cfg(test)]
mod tests;
