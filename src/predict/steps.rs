//! The next-step model: context mixing over a visit's recent steps and behavioural signals.
//!
//! A *step* is an event's kind plus whether it concerns the same item as the event before it
//! (`detail=` vs `detail`), or `run:<process>` when the app asked for a process. Steps are
//! interned to small ids. Each of [`CONTEXTS`] contexts (the last one to four steps, alone or
//! with a dwell, gap, item or position bucket) keeps fading counts of the steps that followed
//! it; each gives a smoothed distribution that backs off to the order-0 one, and a log-linear
//! mixer whose weights are chosen by each context's confidence (how much it has seen) and
//! learned online by gradient descent on log loss blends them. A last expert is the session's
//! own order-1 habit (per-session adaptation), kept in its profile.
//!
//! Fading memory: every count decays by half per `half_life` of event time, applied lazily when
//! a context is touched, so changed habits show within hours.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::belief::{even_odds, updated_belief};
use super::tables::{Evidence, KeyMap, MAX_CONTEXTS, prune_over};
use crate::profile::Profile;

/// Contexts the model keeps counts for (see [`context_keys`]).
pub const CONTEXTS: usize = 18;

/// Experts the mixer blends: the contexts plus the session's own habit.
pub const EXPERTS: usize = CONTEXTS + 1;

/// Confidence buckets per expert, by how many observations its context has seen.
pub(crate) const CONFIDENCE: usize = 6;

/// Most distinct steps the model interns; beyond it, new steps share one id.
pub const MAX_STEPS: usize = 1024;

/// Longest step name: an event type or outcome of at most [`crate::protocol::MAX_NAME_LEN`]
/// bytes, with its `end:` or `run:` prefix or its `=` mark.
pub const MAX_STEP_NAME: usize = crate::protocol::MAX_NAME_LEN + "end:".len();

/// Weight sets the first mixer selects among by the last step (the last set is shared).
const WEIGHT_SETS: usize = 64;

/// Weight sets the second mixer selects among by dwell and events on the item.
const SIGNAL_SETS: usize = 64;

/// Both mixers' weight sets.
const ALL_SETS: usize = WEIGHT_SETS + SIGNAL_SETS;

/// The mixer's knobs. The defaults are the ones `eval` scored best; the others are kept so the
/// comparison can be rerun (`tests/predict_tuning.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepTuning {
    pub learning_rate: f32,
    /// Pseudo-count pulling each context towards the one below it.
    pub backoff: f32,
    /// Which experts take part (bit i: expert i; bit CONTEXTS: the session's habit).
    pub experts: u32,
    /// One weight set per last step instead of one for all.
    pub weight_sets_by_step: bool,
    pub initial_weight: f32,
    /// A second mixer, its weights selected by the signals, averaged with the first.
    pub second_mixer: bool,
    /// Starting weight of the first-order expert.
    pub first_order_weight: f32,
}

impl Default for StepTuning {
    fn default() -> StepTuning {
        StepTuning {
            learning_rate: 0.002,
            backoff: 0.4,
            experts: u32::MAX,
            weight_sets_by_step: true,
            initial_weight: 0.07,
            second_mixer: false,
            first_order_weight: 0.4,
        }
    }
}

/// Counts of the steps that followed one context.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counts {
    pub last_ms: u64,
    pub total: f32,
    pub next: Vec<(u16, f32)>,
}

impl Counts {
    fn decay_to(&mut self, now_ms: u64, half_life_ms: f64) {
        if now_ms > self.last_ms && half_life_ms > 0.0 {
            let f = fading(self.total, now_ms - self.last_ms, half_life_ms);
            if f < 0.999_999 {
                self.total *= f;
                for (_, c) in &mut self.next {
                    *c *= f;
                }
            }
        }
        self.last_ms = self.last_ms.max(now_ms);
    }

    fn add(&mut self, step: u16) {
        self.total += 1.0;
        match self.next.iter_mut().find(|(s, _)| *s == step) {
            Some((_, c)) => *c += 1.0,
            None => self.next.push((step, 1.0)),
        }
    }
}

impl Evidence for Counts {
    fn fade_to(&mut self, now_ms: u64, half_life_ms: f64) {
        self.decay_to(now_ms, half_life_ms);
    }

    fn evidence(&self) -> f32 {
        self.total
    }
}

/// Evidence a context keeps however long it was quiet: fading memory weighs old observations
/// against new ones, and without new ones the old shape is still the best guess. (Measured: a
/// shop with a visit an hour, OTTO, fell below the plain chain when quiet contexts faded to
/// nothing.)
const KEPT_EVIDENCE: f32 = 8.0;

/// The factor a context's counts fade by over `elapsed_ms`, never below [`KEPT_EVIDENCE`].
pub(crate) fn fading(total: f32, elapsed_ms: u64, half_life_ms: f64) -> f32 {
    let f = (-(elapsed_ms as f64) / half_life_ms).exp2() as f32;
    if total * f >= KEPT_EVIDENCE || total <= 0.0 {
        f
    } else {
        (KEPT_EVIDENCE / total).min(1.0)
    }
}

/// The learned state of the step model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepModel {
    pub names: Vec<String>,
    #[serde(skip)]
    ids: HashMap<String, u16>,
    pub order0: Counts,
    pub tables: KeyMap<Counts>,
    /// Mixer weights per weight set, expert and confidence bucket.
    pub weights: Vec<[f32; CONFIDENCE]>,
    pub tuning: StepTuning,
    /// The final stage's belief that the mixers, rather than the plain first-order chain, are
    /// the better forecaster (0..1): a posterior over the two, learned online.
    #[serde(default = "even_odds")]
    pub mixer_belief: f32,
    #[serde(skip)]
    pub half_life_ms: f64,
    /// Buffers reused by `learn`, so the hot path does not allocate.
    #[serde(skip)]
    scratch: Scratch,
}

/// Everything the model needs to predict from one session state, computed once per event.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context {
    pub keys: [u64; CONTEXTS],
    pub last_step: Option<u16>,
    /// The second mixer's weight set (dwell bucket and events on the item).
    pub signal_set: u16,
}

impl StepModel {
    pub fn new(half_life_ms: f64) -> StepModel {
        StepModel {
            names: Vec::new(),
            ids: HashMap::new(),
            order0: Counts::default(),
            tables: KeyMap::default(),
            weights: initial_weights(&StepTuning::default()),
            tuning: StepTuning::default(),
            mixer_belief: even_odds(),
            half_life_ms,
            scratch: Scratch::default(),
        }
    }

    /// Rebuilds the name index after loading and checks that every id is in range. Names
    /// longer than any step can be now (saved by a build without the limit) are emptied: their
    /// ids and counts stay, so nothing else moves. Returns how many were emptied.
    pub fn restore(&mut self, half_life_ms: f64) -> Result<usize, String> {
        self.half_life_ms = half_life_ms;
        if self.names.len() > MAX_STEPS || self.weights.len() != EXPERTS * ALL_SETS {
            return Err("step table has the wrong shape".into());
        }
        let mut retired = 0;
        for name in self.names.iter_mut().filter(|n| n.len() > MAX_STEP_NAME) {
            *name = String::new();
            retired += 1;
        }
        self.ids = self
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u16))
            .collect();
        let n = self.names.len() as u16;
        let in_range = |c: &Counts| c.next.iter().all(|(s, v)| *s < n && v.is_finite());
        if !in_range(&self.order0) || !self.tables.values().all(in_range) {
            return Err("a step count names a step that does not exist".into());
        }
        if !self.weights.iter().flatten().all(|w| w.is_finite())
            || !(0.0..=1.0).contains(&self.mixer_belief)
        {
            return Err("a mixer weight is not a number".into());
        }
        Ok(retired)
    }

    /// Changes the mixer's knobs and starts its weights afresh.
    pub fn set_tuning(&mut self, tuning: StepTuning) {
        self.tuning = tuning;
        self.weights = initial_weights(&tuning);
    }

    fn weight_set(&self, ctx: &Context) -> usize {
        if !self.tuning.weight_sets_by_step {
            return 0;
        }
        ctx.last_step
            .map_or(WEIGHT_SETS - 1, |s| (s as usize).min(WEIGHT_SETS - 1))
            * EXPERTS
    }

    fn uses(&self, expert: usize) -> bool {
        self.tuning.experts & (1 << expert) != 0
    }

    pub fn id(&self, name: &str) -> Option<u16> {
        self.ids.get(name).copied()
    }

    pub fn name(&self, id: u16) -> &str {
        self.names.get(id as usize).map_or("", String::as_str)
    }

    pub fn intern(&mut self, name: &str) -> u16 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        if self.names.len() >= MAX_STEPS {
            return (MAX_STEPS - 1) as u16;
        }
        let id = self.names.len() as u16;
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        id
    }

    pub fn step_count(&self) -> usize {
        self.names.len()
    }

    /// Probabilities of every known step following `ctx`, indexed by step id.
    pub fn distribution(&self, ctx: &Context, habit: &[(u16, u16, f32)], now_ms: u64) -> Vec<f32> {
        let mut scratch = Scratch::default();
        self.mix(ctx, habit, now_ms, &mut scratch);
        scratch.q
    }

    fn mix(&self, ctx: &Context, habit: &[(u16, u16, f32)], now_ms: u64, out: &mut Scratch) {
        let v = self.names.len();
        out.q.clear();
        out.q.resize(v, 0.0);
        out.x.clear();
        out.x.resize(v * EXPERTS, 0.0);
        out.buckets = [0; EXPERTS];
        if v == 0 {
            return;
        }

        let decay = |c: &Counts| -> f32 {
            if now_ms > c.last_ms && self.half_life_ms > 0.0 {
                fading(c.total, now_ms - c.last_ms, self.half_life_ms)
            } else {
                1.0
            }
        };

        let backoff = self.tuning.backoff;
        let f0 = decay(&self.order0);
        let n0 = self.order0.total * f0;
        let prior = 0.1f32;
        let mut p0 = std::mem::take(&mut out.p0);
        p0.clear();
        p0.resize(v, prior / (n0 + prior * v as f32));
        for (s, c) in &self.order0.next {
            p0[*s as usize] = (c * f0 + prior) / (n0 + prior * v as f32);
        }

        // Expert i's distribution backs off to the one of the context below it in the chain
        // (order-1 backs off to order-0), which keeps rare contexts from shouting.
        let mut order1 = std::mem::take(&mut out.order1);
        order1.clear();
        order1.extend_from_slice(&p0);
        for (i, key) in ctx.keys.iter().enumerate() {
            let counts = self.tables.get(key);
            let (n, f) = counts.map_or((0.0, 1.0), |c| {
                let f = decay(c);
                (c.total * f, f)
            });
            out.buckets[i] = confidence(n);
            let base = if i <= 1 { &p0 } else { &order1 };
            let row = &mut out.x[i * v..(i + 1) * v];
            for s in 0..v {
                row[s] = backoff * base[s] / (n + backoff);
            }
            if let Some(c) = counts {
                for (s, k) in &c.next {
                    row[*s as usize] += k * f / (n + backoff);
                }
            }
            if i == 1 {
                order1.copy_from_slice(row);
            }
        }

        // The session's own habit after its last step.
        let i = CONTEXTS;
        let row_start = i * v;
        let last = ctx.last_step;
        let n: f32 = habit
            .iter()
            .filter(|(a, _, _)| Some(*a) == last)
            .map(|(_, _, c)| *c)
            .sum();
        out.buckets[i] = confidence(n);
        for (x, base) in out.x[row_start..row_start + v].iter_mut().zip(&order1) {
            *x = backoff * base / (n + backoff);
        }
        for (a, b, c) in habit {
            if Some(*a) == last && (*b as usize) < v {
                out.x[row_start + *b as usize] += c / (n + backoff);
            }
        }

        for x in out.x.iter_mut() {
            *x = fast_ln(x.max(1e-6));
        }
        let sets = self.weight_sets(ctx);
        for (m, set) in sets.iter().enumerate() {
            let Some(set) = *set else { continue };
            let q = &mut out.qs[m];
            q.clear();
            q.resize(v, 0.0);
            let mut max = f32::MIN;
            for (s, q) in q.iter_mut().enumerate() {
                let mut logit = 0.0;
                for e in (0..EXPERTS).filter(|e| self.uses(*e)) {
                    logit += self.weights[set + e][out.buckets[e]] * out.x[e * v + s];
                }
                *q = logit;
                max = max.max(logit);
            }
            let mut sum = 0.0;
            for q in q.iter_mut() {
                *q = (*q - max).exp();
                sum += *q;
            }
            for q in q.iter_mut() {
                *q /= sum;
            }
        }
        // The final stage: the mixers' average and the plain first-order chain, weighted by the
        // posterior belief in each. A young mixer, or one that never converges on a thin data
        // set, loses to the chain on log loss and the chain's ranking shows through.
        let mixers = sets.iter().flatten().count() as f32;
        out.mixed.clear();
        out.first_order.clear();
        out.first_order.extend_from_slice(&order1);
        out.p0 = p0;
        for (s, chain) in order1.iter().enumerate() {
            let mixed = (0..2)
                .filter(|m| sets[*m].is_some())
                .map(|m| out.qs[m][s])
                .sum::<f32>()
                / mixers;
            out.mixed.push(mixed);
            out.q[s] = self.mixer_belief * mixed + (1.0 - self.mixer_belief) * chain;
        }
        out.order1 = order1;
    }

    fn weight_sets(&self, ctx: &Context) -> [Option<usize>; 2] {
        let second = self
            .tuning
            .second_mixer
            .then(|| (WEIGHT_SETS + (ctx.signal_set as usize).min(SIGNAL_SETS - 1)) * EXPERTS);
        [Some(self.weight_set(ctx)), second]
    }

    /// Learns that `step` followed `ctx`: one gradient step for the mixer, then the counts.
    pub fn learn(&mut self, ctx: &Context, habit: &[(u16, u16, f32)], step: u16, now_ms: u64) {
        let mut scratch = std::mem::take(&mut self.scratch);
        self.mix(ctx, habit, now_ms, &mut scratch);
        let v = self.names.len();
        if (step as usize) < v {
            let y = step as usize;
            self.mixer_belief = updated_belief(
                self.mixer_belief,
                scratch.mixed[y].max(1e-6),
                scratch.first_order[y].max(1e-6),
            );

            let rate = self.tuning.learning_rate;
            let mask = self.tuning.experts;
            let sets = self.weight_sets(ctx);
            for (m, set) in sets.iter().enumerate() {
                let Some(set) = *set else { continue };
                for e in (0..EXPERTS).filter(|e| mask & (1 << e) != 0) {
                    let row = &scratch.x[e * v..(e + 1) * v];
                    let expected: f32 = row.iter().zip(&scratch.qs[m]).map(|(x, q)| x * q).sum();
                    let grad = row[step as usize] - expected;
                    let w = &mut self.weights[set + e][scratch.buckets[e]];
                    *w = (*w + rate * grad).clamp(-2.0, 4.0);
                }
            }
        }

        let hl = self.half_life_ms;
        self.order0.decay_to(now_ms, hl);
        self.order0.add(step);
        for key in &ctx.keys {
            let counts = self.tables.entry(*key).or_default();
            counts.decay_to(now_ms, hl);
            counts.add(step);
        }
        prune_over(&mut self.tables, MAX_CONTEXTS, now_ms, hl);
        self.scratch = scratch;
    }

    /// Learns how a session ended: counts only. The end is never ranked as a next step, so
    /// letting it move the mixer only pulls the weights away from what the ranking needs
    /// (measured: visits of a few events, where ends are a third of all steps, lost ground).
    pub fn learn_end(&mut self, ctx: &Context, step: u16, now_ms: u64) {
        let hl = self.half_life_ms;
        for key in &ctx.keys {
            let counts = self.tables.entry(*key).or_default();
            counts.decay_to(now_ms, hl);
            counts.add(step);
        }
    }
}

/// Every mixer starts out leaning on the first-order chain (expert 1) and learns from there, so
/// a young model does not stray far below the chain.
fn initial_weights(tuning: &StepTuning) -> Vec<[f32; CONFIDENCE]> {
    let mut w = vec![[tuning.initial_weight; CONFIDENCE]; EXPERTS * ALL_SETS];
    for set in 0..ALL_SETS {
        w[set * EXPERTS + 1] = [tuning.first_order_weight; CONFIDENCE];
    }
    w
}

#[derive(Debug, Clone, Default)]
struct Scratch {
    q: Vec<f32>,
    /// The mixers' average and the first-order chain, before the trust blend.
    mixed: Vec<f32>,
    first_order: Vec<f32>,
    p0: Vec<f32>,
    order1: Vec<f32>,
    /// Each mixer's own distribution.
    qs: [Vec<f32>; 2],
    x: Vec<f32>,
    buckets: [usize; EXPERTS],
}

fn confidence(n: f32) -> usize {
    match n {
        n if n < 0.5 => 0,
        n if n < 2.0 => 1,
        n if n < 5.0 => 2,
        n if n < 15.0 => 3,
        n if n < 50.0 => 4,
        _ => 5,
    }
}

/// Natural logarithm to about 1e-5, several times cheaper than `ln`; the mixer takes hundreds
/// of logarithms per event and only needs them to rank and to learn weights.
fn fast_ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let exponent = ((bits >> 23) & 0xff) as f32 - 127.0;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    // ln m = 2 atanh t with t = (m - 1) / (m + 1) <= 1/3, whose series converges fast.
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let ln_m = 2.0 * t * (1.0 + t2 * (1.0 / 3.0 + t2 * (0.2 + t2 * (1.0 / 7.0))));
    exponent * std::f32::consts::LN_2 + ln_m
}

/// log2 bucket of a duration, capped.
fn time_bucket(ms: u64) -> u64 {
    (64 - (ms / 1000).leading_zeros() as u64).min(10)
}

fn mix_key(parts: &[u64]) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    for p in parts {
        h = (h ^ p).wrapping_mul(0x0100_0000_01b3).rotate_left(23);
        h ^= h >> 31;
    }
    h
}

/// The context keys of a session state whose newest step has been pushed.
pub fn context_of(profile: &Profile) -> Context {
    let s = |back: usize| profile.step(back).map_or(u64::MAX, |x| x as u64);
    let (s1, s2, s3, s4) = (s(0), s(1), s(2), s(3));
    let dwell = profile.dwell_ms.map_or(99, time_bucket);
    let gap = time_bucket(profile.gap_ms);
    let on_item = time_bucket(profile.time_on_item_ms());
    let item_events = profile.item_events.min(4) as u64;
    let visits = profile.item_visits.min(3) as u64;
    let position = (64 - (profile.events as u64).leading_zeros() as u64).min(7);
    let distinct = (64 - (profile.distinct_items as u64).leading_zeros() as u64).min(5);
    // The visitor's own pace: events per item so far (per-session adaptation).
    let per_item = (profile.events / profile.distinct_items.max(1)).min(8) as u64;
    let prev_item_events = profile.prev_item_events.min(4) as u64;
    let fine_dwell = profile.dwell_ms.map_or(99, |ms| {
        let x = (ms as f64 / 1000.0 + 1.0).log2() * 2.0;
        (x as u64).min(24)
    });
    let entry = profile.entry_step.map_or(u64::MAX, u64::from);
    let keys = [
        mix_key(&[0]),
        mix_key(&[1, s1]),
        mix_key(&[2, s1, s2]),
        mix_key(&[3, s1, s2, s3]),
        mix_key(&[4, s1, s2, s3, s4]),
        mix_key(&[5, s1, dwell]),
        mix_key(&[6, s1, s2, dwell]),
        mix_key(&[7, s1, item_events, visits]),
        mix_key(&[8, s1, gap]),
        mix_key(&[9, s1, position, distinct]),
        mix_key(&[10, s1, s2, on_item]),
        mix_key(&[11, s1, s2, s3, dwell]),
        mix_key(&[12, s1, dwell, item_events]),
        mix_key(&[13, s1, s2, dwell, item_events, visits]),
        mix_key(&[14, s1, item_events, per_item]),
        mix_key(&[15, s1, fine_dwell, prev_item_events, item_events]),
        mix_key(&[16, s1, entry, item_events]),
        mix_key(&[17, s1, s2, entry, dwell]),
    ];
    Context {
        keys,
        last_step: profile.step(0),
        signal_set: (dwell.min(11) * 5 + item_events) as u16,
    }
}

#[cfg(test)]
mod tests {
    use super::fast_ln;

    #[test]
    fn fast_ln_is_close_to_ln() {
        for x in [1e-6f32, 0.001, 0.1, 0.5, 0.9, 1.0, 3.0] {
            assert!((fast_ln(x) - x.ln()).abs() < 1e-3, "{x}");
        }
    }
}
