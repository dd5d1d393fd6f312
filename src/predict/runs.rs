//! Which processes follow which contexts: the chance a process is asked for within the next
//! [`HORIZON`] events, learned online from the `run` events the daemon reports.
//!
//! The contexts are the step model's own (order 0 to 3 over the same steps), so the two models
//! see a visit the same way. Every event opens a credit window over its context; a `run` of a
//! process within the next [`HORIZON`] events credits that process once per window. The estimate
//! interpolates from order 0 upwards (each order's rate pulled towards the one below in
//! proportion to how little it has seen), with the same fading memory as the step model.

use serde::{Deserialize, Serialize};

use super::steps::Context;
use super::tables::{Evidence, KeyMap, MAX_CONTEXTS, prune_over};
use crate::profile::Profile;

/// Events after a context within which a run counts as following it.
pub const HORIZON: usize = 3;

/// Step-model contexts (orders 0 to 3) the run model shares.
pub const RUN_ORDERS: usize = 4;

/// Most processes the run model tells apart (credit is kept in a 64-bit mask).
pub const MAX_PROCESSES: usize = 64;

const SMOOTHING: f32 = 2.0;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunCounts {
    pub last_ms: u64,
    pub total: f32,
    pub runs: Vec<(u16, f32)>,
}

impl RunCounts {
    fn decay_to(&mut self, now_ms: u64, half_life_ms: f64) {
        if now_ms > self.last_ms && half_life_ms > 0.0 {
            let f = super::steps::fading(self.total, now_ms - self.last_ms, half_life_ms);
            self.total *= f;
            for (_, c) in &mut self.runs {
                *c *= f;
            }
        }
        self.last_ms = self.last_ms.max(now_ms);
    }
}

impl Evidence for RunCounts {
    fn fade_to(&mut self, now_ms: u64, half_life_ms: f64) {
        self.decay_to(now_ms, half_life_ms);
    }

    fn evidence(&self) -> f32 {
        self.total
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunModel {
    /// Process names by run-model id.
    pub processes: Vec<String>,
    pub tables: KeyMap<RunCounts>,
    #[serde(skip)]
    pub half_life_ms: f64,
}

impl RunModel {
    pub fn new(half_life_ms: f64) -> RunModel {
        RunModel {
            half_life_ms,
            ..RunModel::default()
        }
    }

    /// Checks a loaded model. Names no process can have (saved by a build that took any
    /// `run` target) are emptied, which frees their ids for configured processes; returns how
    /// many were.
    pub fn restore(&mut self, half_life_ms: f64) -> Result<usize, String> {
        self.half_life_ms = half_life_ms;
        let n = self.processes.len();
        if n > MAX_PROCESSES {
            return Err("run table names too many processes".into());
        }
        let mut retired = 0;
        for name in self.processes.iter_mut() {
            if name.len() > crate::protocol::MAX_NAME_LEN {
                *name = String::new();
                retired += 1;
            }
        }
        let ok = self.tables.values().all(|c| {
            c.total.is_finite()
                && c.runs
                    .iter()
                    .all(|(p, v)| (*p as usize) < n && v.is_finite())
        });
        if ok {
            Ok(retired)
        } else {
            Err("a run count names a process that does not exist".into())
        }
    }

    /// The run-model id of a process, interned on first sight (None past the cap).
    pub fn intern(&mut self, name: &str) -> Option<u16> {
        if let Some(i) = self.processes.iter().position(|p| p == name) {
            return Some(i as u16);
        }
        if self.processes.len() >= MAX_PROCESSES {
            return None;
        }
        self.processes.push(name.to_string());
        Some((self.processes.len() - 1) as u16)
    }

    /// Run-model ids for the configured processes, in their order. A process the model does
    /// not know yet takes a free id; when none is left, it takes over the id of a name that is
    /// not configured (what was learned for that name is dropped). Returns the ids and the ids
    /// taken over, whose marks in live sessions no longer mean what they did.
    pub fn assign(&mut self, configured: &[&str]) -> (Vec<Option<u16>>, Vec<u16>) {
        let mut taken_over = Vec::new();
        let ids = configured
            .iter()
            .map(|name| {
                if let Some(id) = self.intern(name) {
                    return Some(id);
                }
                let free = self
                    .processes
                    .iter()
                    .position(|p| !configured.contains(&p.as_str()))?;
                self.forget(free as u16);
                self.processes[free] = name.to_string();
                taken_over.push(free as u16);
                Some(free as u16)
            })
            .collect();
        (ids, taken_over)
    }

    /// Drops every count of the process with this id.
    fn forget(&mut self, id: u16) {
        for c in self.tables.values_mut() {
            c.runs.retain(|(p, _)| *p != id);
        }
    }

    /// Credits a run of `process` to the open windows of the session.
    pub fn credit(&mut self, profile: &mut Profile, process: u16, now_ms: u64) {
        let bit = 1u64 << process;
        let hl = self.half_life_ms;
        for (keys, credited) in &mut profile.pending {
            if *credited & bit != 0 {
                continue;
            }
            *credited |= bit;
            for key in keys.iter() {
                let counts = self.tables.entry(*key).or_default();
                counts.decay_to(now_ms, hl);
                match counts.runs.iter_mut().find(|(p, _)| *p == process) {
                    Some((_, c)) => *c += 1.0,
                    None => counts.runs.push((process, 1.0)),
                }
            }
        }
    }

    /// Opens a credit window for the session's new context.
    pub fn open(&mut self, profile: &mut Profile, ctx: &Context, now_ms: u64) {
        let mut keys = [0u64; RUN_ORDERS];
        keys.copy_from_slice(&ctx.keys[..RUN_ORDERS]);
        let hl = self.half_life_ms;
        for key in &keys {
            let counts = self.tables.entry(*key).or_default();
            counts.decay_to(now_ms, hl);
            counts.total += 1.0;
        }
        if profile.pending.len() == HORIZON {
            profile.pending.remove(0);
        }
        profile.pending.push((keys, 0));
        // Orders 2 and 3 have no bound of their own; a credit window still open on a dropped
        // context starts it again.
        prune_over(&mut self.tables, MAX_CONTEXTS, now_ms, hl);
    }

    /// The chance each process (by run-model id) is asked for within the horizon after `ctx`.
    pub fn estimate(&self, ctx: &Context) -> Vec<f32> {
        let n = self.processes.len();
        let mut p = vec![0.0f32; n];
        for key in &ctx.keys[..RUN_ORDERS] {
            let Some(counts) = self.tables.get(key) else {
                continue;
            };
            let mut next = vec![0.0f32; n];
            for (i, below) in p.iter().enumerate() {
                next[i] = SMOOTHING * below / (counts.total + SMOOTHING);
            }
            for (i, c) in &counts.runs {
                next[*i as usize] += c / (counts.total + SMOOTHING);
            }
            p = next;
        }
        for x in &mut p {
            *x = x.clamp(0.0, 1.0);
        }
        p
    }
}
