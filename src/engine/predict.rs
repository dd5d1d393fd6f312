//! The engine's side of prediction: events, hints and `predict` go to the predictor; the hot
//! processes it picks become speculative jobs; what became of them (used, wasted) flows back.
//!
//! A speculative job runs for the client user whose event triggered it, so its result lands in
//! that user's part of the cache. It is *used* when a `run` is answered from it (from the cache
//! or by joining it while in flight), and *wasted* when its session ends, expires or is pushed
//! out first; a wasted result is dropped from the cache, and the CPU time it took is counted. A
//! job that brings no result is *cancelled* (dropped before it started, or its worker taken back
//! for a real request) or *failed*. Each job issued is counted once, in one of these or as
//! pending.
//!
//! Requests are checked before anything changes: a `run` event must name a configured process,
//! and so must every process of a `hint` (`unknown_process`); an event that would take its session
//! past its cap of known inputs is refused (`bad_request`). The daemon's own clock drives session
//! activity and the model's fading; an event's `ts` only sets the visit's signals, and is taken as
//! now when it lies ahead.

use serde_json::{Map, Value, json};

use super::run::now_ms;
use super::speculative::SpeculativeRecord;
use super::stored::cache_key;
use super::{Client, Engine, JobKey, Reply, json_map};
use crate::pool::{FailureKind, JobOutcome, Priority};
use crate::predict::HotEntry;
use crate::profile::Event;
use crate::protocol::{ErrorCode, ErrorReply, EventRequest};
use crate::store::canonical_json;

/// Counters of speculation, for `stats`.
#[derive(Debug, Default)]
pub(super) struct SpeculationCounters {
    pub issued: u64,
    pub prepared: u64,
    pub used: u64,
    pub wasted: u64,
    pub cancelled: u64,
    /// Not issued: their pool had no worker that real requests left spare.
    pub held: u64,
    /// Ended without a result: timed out, crashed, or the worker's own error.
    pub failed: u64,
    pub cpu_ns_wasted: u64,
}

fn hot_json(hot: &[HotEntry]) -> Value {
    Value::Array(
        hot.iter()
            .map(|h| json!({"process": h.process, "p": h.p, "inputs_known": h.inputs_known}))
            .collect(),
    )
}

impl Engine {
    pub(super) fn on_event(&mut self, client: Client, ev: EventRequest) -> Reply {
        if ev.kind == "run"
            && let Some(process) = ev.target.as_deref()
        {
            self.check_process(process)?;
        }
        self.predictor
            .check_inputs(&ev.session, &ev.attrs)
            .map_err(|message| ErrorReply::new(ErrorCode::BadRequest, message))?;
        let session = ev.session.clone();
        let now = now_ms();
        let hot = self.predictor.event_at(
            Event {
                session: ev.session,
                kind: ev.kind,
                target: ev.target,
                ms: ev.ms,
                depth: ev.depth,
                attrs: ev.attrs,
                ts_ms: ev.ts.map_or(now, |ts| ts.min(now)),
            },
            now,
        );
        self.note_hot_path(&session, &hot);
        self.speculate(client, &session, &hot);
        Ok(json_map(json!({"hot_path": hot_json(&hot)})))
    }

    pub(super) fn on_hint(
        &mut self,
        client: Client,
        session: &str,
        predictions: &[(String, f64)],
    ) -> Reply {
        for (process, _) in predictions {
            self.check_process(process)?;
        }
        let hot = self.predictor.hint(session, predictions, now_ms());
        self.note_hot_path(session, &hot);
        self.speculate(client, session, &hot);
        Ok(json_map(json!({"hot_path": hot_json(&hot)})))
    }

    /// `unknown_process` unless a process of this name is configured.
    fn check_process(&self, process: &str) -> Result<(), ErrorReply> {
        match self.config.process(process) {
            Some(_) => Ok(()),
            None => Err(self.unknown_process(process)),
        }
    }

    /// The `unknown_process` error for `process`: it names the processes configured, so a
    /// misspelt name shows beside the right one.
    pub(super) fn unknown_process(&self, process: &str) -> ErrorReply {
        let shown: String = process.chars().take(64).collect();
        let mut names: Vec<&str> = self
            .config
            .processes
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        names.sort_unstable();
        ErrorReply::new(
            ErrorCode::UnknownProcess,
            format!(
                "no process named `{shown}` is configured; those configured: {}",
                names.join(", ")
            ),
        )
    }

    /// The ranked hot path with what state each process is in for this client.
    pub(super) fn on_predict(&mut self, client: Client, session: &str, n: Option<usize>) -> Reply {
        let n = n.unwrap_or(self.config.predict.hot_path);
        let hot = self.predictor.hot_path(session, n);
        // Job keys first, read from the session's inputs in place: only the inputs each hot
        // process declares are copied.
        let empty = Map::new();
        let known = self.predictor.known_inputs(session).unwrap_or(&empty);
        let keys: Vec<Option<JobKey>> = hot
            .iter()
            .map(|h| self.key_for(client.uid, &h.process, known))
            .collect();
        let mut out = Vec::with_capacity(hot.len());
        for (h, key) in hot.into_iter().zip(keys) {
            let state = match key {
                None => "waiting_inputs",
                Some(key) if self.inflight.contains_key(&key) => "running",
                Some(key) if self.is_cached(&key) => "cached",
                Some(_) => "cold",
            };
            out.push(
                json!({"process": h.process, "p": h.p, "inputs_known": h.inputs_known,
                "state": state}),
            );
        }
        Ok(json_map(json!({"predictions": out})))
    }

    pub(super) fn on_end(&mut self, session: &str, outcome: Option<&str>) -> Reply {
        let known = self.predictor.end(session, outcome, now_ms());
        let wasted = self.release_session(session);
        self.session_gone(session);
        Ok(json_map(
            json!({"ended": known, "speculative_wasted": wasted}),
        ))
    }

    /// A `run` for this key arrived. A finished guess was used if its result is still in the
    /// cache, and wasted if not (it expired or was pushed out); a running one is judged when it
    /// finishes, since the run waits for it; one not yet started gives way to the run, and the
    /// prediction counts as used.
    pub(super) fn claim_speculative(&mut self, key: &JobKey) {
        let Some(rec) = self.speculative.get(key) else {
            return;
        };
        let running = self
            .inflight
            .get(key)
            .is_some_and(|i| i.started.load(std::sync::atomic::Ordering::Relaxed));
        // A job whose session went was counted as wasted then; a run of another session with
        // the same inputs may still use its result, which then stays in the cache.
        if rec.released || (running && !rec.finished) {
            self.speculative.join(key);
            return;
        }
        let cached = rec.finished && self.is_cached(key);
        let rec = self.speculative.remove(key).expect("looked up above");
        if rec.finished && !cached {
            self.spec.wasted += 1;
            self.spec.cpu_ns_wasted += rec.cpu_ns;
            self.predictor.feedback(&rec.process, false, rec.cpu_ns);
        } else {
            self.spec.used += 1;
            self.predictor.feedback(&rec.process, true, rec.cpu_ns);
        }
    }

    /// Feeds a `run` to the predictor as a step of its session, then speculates from the new
    /// hot path.
    pub(super) fn note_run(&mut self, client: Client, session: &str, key: &JobKey) {
        let hot = self.predictor.event(Event {
            session: session.to_string(),
            kind: "run".into(),
            target: Some(key.process.clone()),
            ms: None,
            depth: None,
            attrs: Map::new(),
            ts_ms: now_ms(),
        });
        self.speculate(client, session, &hot);
    }

    /// Ends the sessions the predictor pushed out to make room (for a new session, or to fit a
    /// lowered `[sessions] max`): their guesses are released as at an `end`.
    pub(super) fn end_evicted_sessions(&mut self) {
        for gone in self.predictor.take_evicted() {
            self.release_session(&gone);
            self.session_gone(&gone);
        }
    }

    /// Starts the speculative jobs the predictor picks for the session, and drops queued ones
    /// that fell out of its hot path. `hot` is the session's hot path as the predictor just
    /// returned it.
    pub(super) fn speculate(&mut self, client: Client, session: &str, hot: &[HotEntry]) {
        // The event or hint that led here may have pushed out the idlest session to make room:
        // that session is gone as if it had ended.
        self.end_evicted_sessions();
        if !self.config.predict.speculation {
            return;
        }
        for job in self.predictor.cancellable_from(session, hot) {
            // Only this session's own guess, and only once: another session of the same user
            // may have issued the same job.
            if let Some(key) = self.key_for(client.uid, &job.process, &job.inputs)
                && self
                    .speculative
                    .get(&key)
                    .is_some_and(|r| r.session == session && !r.released)
                && let Some(inflight) = self.inflight.get(&key)
                && inflight.speculative
                && !inflight.started.load(std::sync::atomic::Ordering::Relaxed)
            {
                inflight
                    .cancelled
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.speculative.remove(&key);
                self.spec.cancelled += 1;
            }
        }

        for job in self.predictor.speculate_from(session, hot) {
            // The pool first: a guess it cannot take costs no key or cache lookup.
            let Some(pool) = self.config.process(&job.process).map(|p| p.pool.clone()) else {
                continue;
            };
            if !self.pool_takes_guesses(&pool) {
                self.predictor.withdraw(session, &job);
                continue;
            }
            let Some(key) = self.key_for(client.uid, &job.process, &job.inputs) else {
                continue;
            };
            if self.inflight.contains_key(&key) || self.is_cached(&key) {
                continue;
            }
            let rec = SpeculativeRecord {
                session: session.to_string(),
                process: job.process.clone(),
                cpu_ns: 0,
                finished: false,
                released: false,
                joined: false,
            };
            // A finished guess whose result left the cache unused (its time to live ran out)
            // is issued again: the first one was wasted.
            if let Some(old) = self.speculative.insert(key.clone(), rec) {
                self.spec.wasted += 1;
                self.spec.cpu_ns_wasted += old.cpu_ns;
                self.predictor.feedback(&old.process, false, old.cpu_ns);
            }
            self.spec.issued += 1;
            self.start_job(
                key,
                job.inputs,
                &pool,
                Priority::Speculative,
                None,
                Vec::new(),
            );
        }
        self.prepare_hot(client, session, hot);
    }

    /// Whether `pool` has a worker for a guess (see `Pool::takes_guesses`); counts the guess as
    /// held when not.
    fn pool_takes_guesses(&mut self, pool: &str) -> bool {
        let takes = self.pools.get(pool).is_some_and(|p| p.takes_guesses());
        if !takes {
            self.spec.held += 1;
        }
        takes
    }

    /// Hot processes with a `prepare` phase whose prepare inputs are known but not all inputs:
    /// run the prepare phase now, so the full run later resumes from its checkpoint.
    fn prepare_hot(&mut self, client: Client, session: &str, hot: &[HotEntry]) {
        for h in hot.iter().filter(|h| !h.inputs_known) {
            let Some(proc_cfg) = self.config.process(&h.process) else {
                continue;
            };
            if proc_cfg.prepare.is_empty() || !proc_cfg.idempotent {
                continue;
            }
            let proc_cfg = proc_cfg.clone();
            let Some(known) = self.predictor.known_inputs(session) else {
                return;
            };
            let inputs: Option<Map<String, Value>> = proc_cfg
                .prepare
                .iter()
                .map(|k| known.get(k).map(|v| (k.clone(), v.clone())))
                .collect();
            let Some(inputs) = inputs else { continue };
            let key = JobKey {
                owner: client.uid,
                process: proc_cfg.name.clone(),
                inputs: format!("prepare:{}", canonical_json(&Value::Object(inputs.clone()))),
                version: self.process_version(&proc_cfg.name),
                run: 0,
            };
            let state_key = self.state_key(&key, &inputs);
            if self.inflight.contains_key(&key) || self.saved_state(&state_key).is_some() {
                continue;
            }
            let pool = proc_cfg.pool.clone();
            if !self.pool_takes_guesses(&pool) {
                continue;
            }
            self.spec.prepared += 1;
            self.start_job(
                key,
                inputs,
                &pool,
                Priority::Speculative,
                Some("prepare"),
                Vec::new(),
            );
        }
    }

    /// A speculative job finished: remember its cost until it is used or wasted. One that
    /// brought no result is counted now: cancelled (dropped before it started, or its worker
    /// taken back for a real request) or failed, its CPU time wasted either way.
    pub(super) fn speculative_done(&mut self, key: &JobKey, outcome: &JobOutcome) {
        let Some(rec) = self.speculative.get(key) else {
            return;
        };
        if rec.released {
            let rec = self.speculative.remove(key).expect("looked up above");
            self.spec.cpu_ns_wasted += outcome.cpu_ns;
            self.predictor.wasted_cpu(&rec.process, outcome.cpu_ns);
            if !rec.joined {
                self.uncache(key);
            }
            return;
        }
        let Err(failure) = &outcome.result else {
            if rec.joined {
                let rec = self.speculative.remove(key).expect("looked up above");
                self.spec.used += 1;
                self.predictor.feedback(&rec.process, true, outcome.cpu_ns);
            } else {
                self.speculative.finish(key, outcome.cpu_ns);
            }
            return;
        };
        let rec = self.speculative.remove(key).expect("looked up above");
        if failure.kind == FailureKind::Cancelled {
            self.spec.cancelled += 1;
        } else {
            self.spec.failed += 1;
        }
        self.spec.cpu_ns_wasted += outcome.cpu_ns;
        self.predictor.wasted_cpu(&rec.process, outcome.cpu_ns);
    }

    /// The session is gone: its unused speculative results are waste, dropped from the cache.
    fn release_session(&mut self, session: &str) -> u64 {
        let mut wasted = 0;
        for key in self.speculative.of_session(session) {
            // A guess a run waits for is judged when it finishes, whether its session is there
            // or not.
            if self
                .speculative
                .get(&key)
                .is_none_or(|r| r.released || r.joined)
            {
                continue;
            }
            let rec = self.speculative.remove(&key).expect("looked up above");
            if let Some(inflight) = self.inflight.get(&key)
                && !inflight.started.load(std::sync::atomic::Ordering::Relaxed)
            {
                inflight
                    .cancelled
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.spec.cancelled += 1;
                continue;
            }
            wasted += 1;
            self.spec.wasted += 1;
            self.spec.cpu_ns_wasted += rec.cpu_ns;
            self.predictor.feedback(&rec.process, false, rec.cpu_ns);
            if rec.finished {
                self.uncache(&key);
            } else {
                // Still running: its CPU time and its result are dealt with when it finishes.
                self.speculative.insert(
                    key,
                    SpeculativeRecord {
                        released: true,
                        ..rec
                    },
                );
            }
        }
        wasted
    }

    /// Drops a wasted speculative result from the cache.
    fn uncache(&mut self, key: &JobKey) {
        if let Some(cache) = self.cache.as_mut() {
            cache.remove(&cache_key(key));
        }
    }

    /// Once a second: expire idle sessions, and save the model now and then.
    pub(super) fn tick(&mut self) {
        for session in self.predictor.expire(now_ms()) {
            self.release_session(&session);
            self.session_gone(&session);
        }
        if let Some(cache) = self.cache.as_mut() {
            cache.purge_expired(now_ms());
        }
        if let Some(states) = self.states.as_mut() {
            states.remove_expired(now_ms());
        }
        self.maybe_begin_model_save();
        // At least a slice a second, however busy the engine is.
        self.continue_model_save();
        self.tuning_tick();
    }

    /// The job key of `process` for this owner from the known inputs, if all are known.
    fn key_for(&self, owner: u32, process: &str, known: &Map<String, Value>) -> Option<JobKey> {
        let cfg = self.config.process(process)?;
        let mut inputs = Map::new();
        for name in &cfg.inputs {
            inputs.insert(
                name.clone(),
                known.get(name).filter(|v| !v.is_null())?.clone(),
            );
        }
        // As a run would take them: the optional inputs the session made known.
        for name in &cfg.optional_inputs {
            if let Some(v) = known.get(name).filter(|v| !v.is_null()) {
                inputs.insert(name.clone(), v.clone());
            }
        }
        Some(JobKey {
            owner,
            process: process.to_string(),
            inputs: canonical_json(&Value::Object(inputs)),
            version: self.process_version(process),
            run: 0,
        })
    }

    fn is_cached(&mut self, key: &JobKey) -> bool {
        let Some(cache) = self.cache.as_mut() else {
            return false;
        };
        cache.get(&cache_key(key), now_ms()).is_some()
    }

    pub(super) fn speculation_json(&self) -> Value {
        let p = self.predictor.stats();
        let s = &self.spec;
        let decided = s.used + s.wasted;
        json!({
            "enabled": self.config.predict.speculation,
            "issued": s.issued,
            "prepared": s.prepared,
            "used": s.used,
            "wasted": s.wasted,
            "cancelled": s.cancelled,
            "held": s.held,
            "failed": s.failed,
            "pending": self.speculative.pending(),
            "cpu_s_wasted": s.cpu_ns_wasted as f64 / 1e9,
            "precision": if decided > 0 { s.used as f64 / decided as f64 } else { 0.0 },
            "threshold": p.threshold,
            "per_process": p.per_process,
        })
    }
}
