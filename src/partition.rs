//! The hot / cold split: which hot processes become speculative jobs, and which issued jobs
//! have become pointless.
//!
//! A hot process is speculated when it is declared idempotent, all its declared inputs are
//! known, its chance reaches the threshold, each of its prerequisites has run or is being
//! speculated ahead of it, and the session has room: it starts with `predict.per_session` jobs
//! and the room follows the measured precision. The same process with the same inputs is never
//! issued twice in a session.
//!
//! Thresholds adapt from feedback by stochastic approximation: each wasted result raises a
//! threshold a little and each used one lowers it, so it settles where the share of used results
//! is `predict.precision_target`. Each process whose results have been judged has a threshold of
//! its own, so one process the app over-predicts does not stop the guesses for the others. The
//! shared threshold is moved by every result; a process without results starts from it, or
//! from the initial threshold if that is lower, so others' waste does not keep it out. A
//! process whose results keep being wasted stays out until its chance reaches its own threshold
//! (at most 0.95). Letting it back in now and then was tried: with `ondemand_bench`, the odd
//! guess that got through slowed real requests by milliseconds at the 99th percentile, so it was
//! left out. An operator's threshold (`policy`) applies to every process and stays where it is
//! put. Pure code over plain values.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::ProcessConfig;

/// A process the partitioner wants run ahead of time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpeculativeJob {
    pub process: String,
    /// The inputs a run would take, from the session's known inputs: the declared ones and the
    /// optional ones it knows.
    pub inputs: Map<String, Value>,
    pub p: f64,
}

/// One ranked entry of a session's hot path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HotEntry {
    pub process: String,
    pub p: f64,
    pub inputs_known: bool,
}

/// Used and wasted speculative results of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessFeedback {
    pub used: u64,
    pub wasted: u64,
    pub cpu_ns_wasted: u64,
    /// The process's own threshold, once a result of it has been judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
}

/// How far one feedback moves a threshold.
const THRESHOLD_STEP: f64 = 0.01;
const THRESHOLD_MIN: f64 = 0.02;
const THRESHOLD_MAX: f64 = 0.95;
const INITIAL_THRESHOLD: f64 = 0.2;

/// Ended sessions whose jobs wait to be collected as cancellable.
const ENDED_KEPT: usize = 4096;

#[derive(Debug, Clone)]
struct SessionJobs {
    /// Issued and still worth having.
    live: Vec<SpeculativeJob>,
    /// Cache keys of everything issued in this session.
    issued: HashSet<String>,
}

/// Live jobs of ended sessions, until they are collected as cancellable or the oldest make room
/// for newer ones. Looked up by session on every event, so by hash rather than by a scan.
#[derive(Debug, Clone, Default)]
struct Ended {
    /// Each session's jobs, with the number of the push that put them there.
    jobs: HashMap<String, (u64, Vec<SpeculativeJob>)>,
    /// Pushes, oldest first; a push whose session was collected or pushed again since is stale.
    order: VecDeque<(u64, String)>,
    pushes: u64,
}

impl Ended {
    fn push(&mut self, session: &str, live: Vec<SpeculativeJob>) {
        if self.order.len() == ENDED_KEPT
            && let Some((n, old)) = self.order.pop_front()
            && self.jobs.get(&old).is_some_and(|(m, _)| *m == n)
        {
            self.jobs.remove(&old);
        }
        self.pushes += 1;
        let n = self.pushes;
        // A session id that ends again keeps the jobs of its earlier end too.
        let entry = self.jobs.entry(session.to_string()).or_default();
        entry.0 = n;
        entry.1.extend(live);
        self.order.push_back((n, session.to_string()));
    }

    fn take(&mut self, session: &str) -> Option<Vec<SpeculativeJob>> {
        self.jobs.remove(session).map(|(_, jobs)| jobs)
    }
}

#[derive(Debug, Clone)]
pub struct Partitioner {
    pub threshold: f64,
    /// Set by an operator's policy: the threshold then stays where it was put.
    pub threshold_pinned: bool,
    pub precision_target: f64,
    pub per_session: usize,
    pub speculation: bool,
    sessions: HashMap<String, SessionJobs>,
    ended: Ended,
    pub used: u64,
    pub wasted: u64,
    pub per_process: BTreeMap<String, ProcessFeedback>,
}

impl Partitioner {
    pub fn new(precision_target: f64, per_session: usize, speculation: bool) -> Partitioner {
        Partitioner {
            threshold: INITIAL_THRESHOLD,
            threshold_pinned: false,
            precision_target,
            per_session,
            speculation,
            sessions: HashMap::new(),
            ended: Ended::default(),
            used: 0,
            wasted: 0,
            per_process: BTreeMap::new(),
        }
    }

    /// The threshold `process` must reach to be speculated.
    pub fn threshold_for(&self, process: &str) -> f64 {
        threshold_of(
            &self.per_process,
            self.threshold,
            self.threshold_pinned,
            process,
        )
    }

    /// Share of speculative results that were used (the target before any feedback).
    pub fn precision(&self) -> f64 {
        let all = self.used + self.wasted;
        if all == 0 {
            self.precision_target
        } else {
            self.used as f64 / all as f64
        }
    }

    /// Speculative jobs a session may hold: `per_session` until there is feedback, then scaled
    /// by how the measured precision compares with the target.
    pub fn room(&self) -> usize {
        if self.used + self.wasted < 20 || self.precision_target <= 0.0 {
            return self.per_session;
        }
        let scale = (self.precision() / self.precision_target).clamp(0.34, 2.0);
        ((self.per_session as f64 * scale).round() as usize).max(1)
    }

    /// New speculative jobs from a session's hot path (already in prerequisite order).
    pub fn select(
        &mut self,
        session: &str,
        hot: &[HotEntry],
        known: &Map<String, Value>,
        processes: &[ProcessConfig],
        has_run: &dyn Fn(&str) -> bool,
    ) -> Vec<SpeculativeJob> {
        if !self.speculation {
            return Vec::new();
        }
        let room = self.room();
        let jobs = self
            .sessions
            .entry(session.to_string())
            .or_insert_with(|| SessionJobs {
                live: Vec::new(),
                issued: HashSet::new(),
            });

        let mut fresh = Vec::new();
        for entry in hot {
            if jobs.live.len() >= room {
                break;
            }
            let Some(cfg) = processes.iter().find(|p| p.name == entry.process) else {
                continue;
            };
            if !cfg.idempotent {
                continue;
            }
            let ready = cfg
                .after
                .iter()
                .all(|a| has_run(a) || jobs.live.iter().any(|j| &j.process == a));
            let Some(inputs) = declared_inputs(cfg, known) else {
                continue;
            };
            if !ready {
                continue;
            }
            let key = cache_key(&cfg.name, &inputs);
            if jobs.issued.contains(&key) {
                continue;
            }
            let threshold = threshold_of(
                &self.per_process,
                self.threshold,
                self.threshold_pinned,
                &cfg.name,
            );
            if entry.p < threshold {
                continue;
            }
            jobs.issued.insert(key);
            let job = SpeculativeJob {
                process: cfg.name.clone(),
                inputs,
                p: entry.p,
            };
            jobs.live.push(job.clone());
            fresh.push(job);
        }
        fresh
    }

    /// Issued jobs of a session that ended or whose process left the hot path; each is
    /// reported once.
    pub fn cancellable(&mut self, session: &str, hot: &[HotEntry]) -> Vec<SpeculativeJob> {
        if let Some(jobs) = self.ended.take(session) {
            return jobs;
        }
        let Some(jobs) = self.sessions.get_mut(session) else {
            return Vec::new();
        };
        let (keep, gone): (Vec<_>, Vec<_>) = jobs
            .live
            .drain(..)
            .partition(|j| hot.iter().any(|h| h.process == j.process));
        jobs.live = keep;
        gone
    }

    /// Forgets a session; its live jobs become cancellable.
    pub fn end_session(&mut self, session: &str) {
        if let Some(jobs) = self.sessions.remove(session)
            && !jobs.live.is_empty()
        {
            self.ended.push(session, jobs.live);
        }
    }

    /// Takes back a job [`Partitioner::select`] chose that was not issued after all (its pool
    /// had no worker to spare): a later event of the session may choose it again.
    pub fn withdraw(&mut self, session: &str, job: &SpeculativeJob) {
        if let Some(jobs) = self.sessions.get_mut(session) {
            jobs.live
                .retain(|j| !(j.process == job.process && j.inputs == job.inputs));
            jobs.issued.remove(&cache_key(&job.process, &job.inputs));
        }
    }

    /// Marks a job as done with (a result the session asked for is no longer live).
    pub fn consumed(&mut self, session: &str, process: &str) {
        if let Some(jobs) = self.sessions.get_mut(session) {
            jobs.live.retain(|j| j.process != process);
        }
    }

    /// Learns whether a speculative result was used, and moves the shared threshold and the
    /// process's own.
    pub fn feedback(&mut self, process: &str, used: bool, cpu_ns: u64) {
        let shared = self.threshold;
        let own = threshold_of(&self.per_process, shared, false, process);
        let entry = self.per_process.entry(process.to_string()).or_default();
        if used {
            self.used += 1;
            entry.used += 1;
        } else {
            self.wasted += 1;
            entry.wasted += 1;
            entry.cpu_ns_wasted = entry.cpu_ns_wasted.saturating_add(cpu_ns);
        }
        if !self.threshold_pinned {
            let outcome = if used { 1.0 } else { 0.0 };
            let step = THRESHOLD_STEP * (self.precision_target - outcome);
            entry.threshold = Some((own + step).clamp(THRESHOLD_MIN, THRESHOLD_MAX));
            self.threshold = (shared + step).clamp(THRESHOLD_MIN, THRESHOLD_MAX);
        }
    }

    /// Adds CPU time to a process's wasted speculation, for a job counted as wasted before it
    /// finished.
    pub fn wasted_cpu(&mut self, process: &str, cpu_ns: u64) {
        let entry = self.per_process.entry(process.to_string()).or_default();
        entry.cpu_ns_wasted = entry.cpu_ns_wasted.saturating_add(cpu_ns);
    }
}

/// The threshold of `process`: an operator's pinned one, else its own, else where a process
/// without results starts (the shared threshold, or the initial one if that is lower).
fn threshold_of(
    per_process: &BTreeMap<String, ProcessFeedback>,
    shared: f64,
    pinned: bool,
    process: &str,
) -> f64 {
    if pinned {
        return shared;
    }
    per_process
        .get(process)
        .and_then(|f| f.threshold)
        .unwrap_or(shared.min(INITIAL_THRESHOLD))
}

/// The inputs a run of the process would take from what the session knows: its declared
/// inputs, or None if one is missing (null counts as missing, as in a run), and the optional
/// ones the session knows. A guess computed without the optional inputs would be kept under
/// another key than the run that needs it, and never used.
pub fn declared_inputs(
    cfg: &ProcessConfig,
    known: &Map<String, Value>,
) -> Option<Map<String, Value>> {
    let value = |name: &String| known.get(name).filter(|v| !v.is_null()).cloned();
    let mut inputs: Map<String, Value> = cfg
        .inputs
        .iter()
        .map(|name| Some((name.clone(), value(name)?)))
        .collect::<Option<_>>()?;
    for name in &cfg.optional_inputs {
        if let Some(v) = value(name) {
            inputs.insert(name.clone(), v);
        }
    }
    Some(inputs)
}

/// The cache key of a job: its process and its inputs in canonical (sorted-key) JSON.
pub fn cache_key(process: &str, inputs: &Map<String, Value>) -> String {
    let inputs = crate::protocol::canonical_json(&Value::Object(inputs.clone()));
    format!("{process}\u{0}{inputs}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn process(name: &str, inputs: &[&str], after: &[&str], idempotent: bool) -> ProcessConfig {
        ProcessConfig {
            name: name.into(),
            inputs: inputs.iter().map(|a| a.to_string()).collect(),
            after: after.iter().map(|a| a.to_string()).collect(),
            idempotent,
            ..ProcessConfig::default()
        }
    }

    fn hot(entries: &[(&str, f64)]) -> Vec<HotEntry> {
        entries
            .iter()
            .map(|(p, x)| HotEntry {
                process: p.to_string(),
                p: *x,
                inputs_known: true,
            })
            .collect()
    }

    #[test]
    fn only_idempotent_ready_processes_with_known_inputs_are_speculated_once() {
        let procs = vec![
            process("validate", &["zip"], &[], true),
            process("ship", &["zip", "weight"], &["validate"], true),
            process("reserve", &["sku"], &[], false),
            process("price", &["sku"], &[], true),
        ];
        let mut part = Partitioner::new(0.5, 3, true);
        let known = json!({"zip": "10115", "sku": "a", "weight": 300, "other": 1});
        let known = known.as_object().unwrap();
        let h = hot(&[
            ("validate", 0.9),
            ("ship", 0.8),
            ("reserve", 0.7),
            ("price", 0.6),
        ]);
        let jobs = part.select("s", &h, known, &procs, &|_| false);
        let names: Vec<_> = jobs.iter().map(|j| j.process.as_str()).collect();
        assert_eq!(names, ["validate", "ship", "price"]);
        assert_eq!(
            jobs[1].inputs,
            *json!({"zip": "10115", "weight": 300}).as_object().unwrap()
        );
        assert!(part.select("s", &h, known, &procs, &|_| false).is_empty());
    }

    #[test]
    fn a_process_waits_for_its_prerequisite() {
        let procs = vec![
            process("validate", &["country"], &[], true),
            process("ship", &["zip"], &["validate"], true),
        ];
        let mut part = Partitioner::new(0.5, 3, true);
        let known = json!({"zip": "10115"});
        let h = hot(&[("validate", 0.9), ("ship", 0.9)]);
        let jobs = part.select("s", &h, known.as_object().unwrap(), &procs, &|_| false);
        assert!(jobs.is_empty());
        let jobs = part.select("s", &h, known.as_object().unwrap(), &procs, &|p| {
            p == "validate"
        });
        assert_eq!(jobs.len(), 1);
    }

    #[test]
    fn threshold_moves_toward_the_precision_target() {
        let mut part = Partitioner::new(0.5, 3, true);
        let start = part.threshold;
        for _ in 0..20 {
            part.feedback("price", false, 1000);
        }
        assert!(
            part.threshold > start + 0.05,
            "threshold {}",
            part.threshold
        );
        assert!(part.room() < 3);
        let high = part.threshold;
        for _ in 0..60 {
            part.feedback("price", true, 0);
        }
        assert!(part.threshold < high, "threshold {}", part.threshold);
        assert_eq!(part.per_process["price"].cpu_ns_wasted, 20_000);
    }

    /// A partitioner that has seen 300 results of `a` wasted.
    fn a_always_wasted() -> Partitioner {
        let mut part = Partitioner::new(0.5, 3, true);
        for _ in 0..300 {
            part.feedback("a", false, 1000);
        }
        part
    }

    #[test]
    fn a_process_the_app_overpredicts_keeps_its_high_threshold_to_itself() {
        let procs = vec![process("a", &[], &[], true), process("b", &[], &[], true)];
        let mut part = a_always_wasted();
        assert!(part.threshold_for("a") > 0.9, "{}", part.threshold_for("a"));
        // The shared threshold followed the waste; a process without results does not.
        assert!(part.threshold > 0.9);
        assert!(part.threshold_for("b") <= INITIAL_THRESHOLD);
        let jobs = part.select(
            "s",
            &hot(&[("a", 0.9), ("b", 0.5)]),
            &Map::new(),
            &procs,
            &|_| false,
        );
        let names: Vec<_> = jobs.iter().map(|j| j.process.as_str()).collect();
        assert_eq!(names, ["b"]);
    }

    #[test]
    fn a_process_whose_results_are_wasted_stays_out_below_its_threshold() {
        let procs = vec![process("a", &[], &[], true)];
        let mut part = a_always_wasted();
        let t = part.threshold_for("a");
        assert!(t > 0.9 && t <= THRESHOLD_MAX, "{t}");
        let tried = (0..1000)
            .filter(|i| {
                !part
                    .select(
                        &format!("s{i}"),
                        &hot(&[("a", 0.9)]),
                        &Map::new(),
                        &procs,
                        &|_| false,
                    )
                    .is_empty()
            })
            .count();
        assert_eq!(tried, 0);
        // A chance above its threshold, from the app's hint say, lets it in again.
        let jobs = part.select("t", &hot(&[("a", 0.99)]), &Map::new(), &procs, &|_| false);
        assert_eq!(jobs.len(), 1);
        part.feedback("a", true, 0);
        assert!(part.threshold_for("a") < t);
    }

    #[test]
    fn a_withdrawn_job_may_be_chosen_again_and_holds_no_share() {
        let procs = vec![
            process("a", &[], &[], true),
            process("b", &[], &["a"], true),
        ];
        let mut part = Partitioner::new(0.5, 1, true);
        let pick =
            |p: &mut Partitioner, h: &[HotEntry]| p.select("s", h, &Map::new(), &procs, &|_| false);
        let both = hot(&[("a", 0.9), ("b", 0.9)]);
        let jobs = pick(&mut part, &both);
        assert_eq!(jobs.len(), 1);
        assert!(pick(&mut part, &both).is_empty());
        part.withdraw("s", &jobs[0]);
        // Chosen again: it no longer counts as in flight, nor as issued.
        assert_eq!(pick(&mut part, &both), jobs);
        // What waits on it is not ready while it is withdrawn.
        part.withdraw("s", &jobs[0]);
        assert!(pick(&mut part, &hot(&[("b", 0.9)])).is_empty());
    }

    #[test]
    fn an_operator_threshold_applies_to_every_process() {
        let procs = vec![process("a", &[], &[], true)];
        let mut part = a_always_wasted();
        part.threshold = 0.5;
        part.threshold_pinned = true;
        assert_eq!(part.threshold_for("a"), 0.5);
        let jobs = part.select("s", &hot(&[("a", 0.9)]), &Map::new(), &procs, &|_| false);
        assert_eq!(jobs.len(), 1);
        // Feedback leaves a pinned threshold where the operator put it.
        part.feedback("a", false, 1000);
        assert_eq!(part.threshold_for("a"), 0.5);
    }

    #[test]
    fn jobs_that_left_the_hot_path_or_whose_session_ended_are_cancellable() {
        let procs = vec![process("a", &[], &[], true), process("b", &[], &[], true)];
        let mut part = Partitioner::new(0.5, 3, true);
        let known = Map::new();
        part.select(
            "s",
            &hot(&[("a", 0.9), ("b", 0.9)]),
            &known,
            &procs,
            &|_| false,
        );
        let gone = part.cancellable("s", &hot(&[("a", 0.9)]));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].process, "b");
        part.end_session("s");
        let gone = part.cancellable("s", &[]);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].process, "a");
        assert!(part.cancellable("s", &[]).is_empty());
    }

    #[test]
    fn ended_sessions_make_room_oldest_first() {
        let procs = vec![process("a", &[], &[], true)];
        let mut part = Partitioner::new(0.5, 3, true);
        let end = |part: &mut Partitioner, s: &str| {
            part.select(s, &hot(&[("a", 0.9)]), &Map::new(), &procs, &|_| false);
            part.end_session(s);
        };
        end(&mut part, "early");
        end(&mut part, "again");
        for i in 0..ENDED_KEPT - 2 {
            end(&mut part, &format!("s{i}"));
        }
        // "again" ends a second time: its first end no longer counts as its age.
        end(&mut part, "again");
        end(&mut part, "late");
        assert!(part.cancellable("early", &[]).is_empty());
        assert_eq!(part.cancellable("again", &[]).len(), 2);
        assert_eq!(part.cancellable("s0", &[]).len(), 1);
        assert_eq!(part.cancellable("late", &[]).len(), 1);
    }

    #[test]
    fn a_guess_takes_the_optional_inputs_the_session_knows_and_no_null() {
        let mut cfg = process("quote", &["sku"], &[], true);
        cfg.optional_inputs = vec!["qty".into()];
        let known = |v: Value| v.as_object().cloned().unwrap();
        assert_eq!(
            declared_inputs(&cfg, &known(json!({"sku": "a", "qty": 3, "other": 1}))),
            Some(known(json!({"sku": "a", "qty": 3})))
        );
        assert_eq!(
            declared_inputs(&cfg, &known(json!({"sku": "a"}))),
            Some(known(json!({"sku": "a"})))
        );
        // A declared input known as null is not known, as a run takes it.
        assert_eq!(declared_inputs(&cfg, &known(json!({"sku": null}))), None);
    }
}
