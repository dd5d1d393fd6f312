//! Per-session behavioural profiles: what one visitor did recently, in a bounded form.
//!
//! A profile keeps the last few steps (as symbol ids the model interned), the signals the model
//! reads (dwell, hover target and time, scroll depth, time and events on the current item, how
//! often the visitor came back to it, how many items the visit saw) and the known inputs taken
//! from event attributes. Apart from the input values a profile stays near a fixed size: the
//! recent-item list and the pending credit window are capped (see the test that prints the figure),
//! and so are the number of known inputs ([`MAX_INPUTS`]) and their size ([`MAX_INPUT_BYTES`]).
//!
//! [`Profiles`] holds all sessions, with a cap on their number and on what their known inputs
//! take together (the least recently active is evicted first) and idle expiry. Pure code: the
//! caller passes the clock. The signals read the events' own `ts_ms` (when the visitor did it);
//! activity and expiry the clock the caller gives (the daemon's own, so a client's clock cannot
//! make a session expire early or never).

use std::hash::{Hash, Hasher};

use serde_json::{Map, Value};

mod sessions;
pub use sessions::Profiles;

/// One thing a visitor did, as the engine hands it over.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Event {
    pub session: String,
    /// `page_view`, `hover`, `dwell`, `scroll`, `input`, `run` (the app asked for a process;
    /// `target` is its name), or an app-defined name.
    pub kind: String,
    pub target: Option<String>,
    pub ms: Option<u64>,
    pub depth: Option<f64>,
    pub attrs: Map<String, Value>,
    pub ts_ms: u64,
}

/// Steps remembered per session; the model reads up to this many back.
pub const RECENT_STEPS: usize = 6;

/// Distinct recent items remembered per session, for the "came back to it" signal.
pub const RECENT_ITEMS: usize = 12;

/// Most inputs (attribute keys) one session keeps; values of known ones may still change.
pub const MAX_INPUTS: usize = 256;

/// Most bytes a session's known inputs take, keys and JSON-encoded values together: the most one
/// `run` may carry, since any more could never be passed to a worker in one piece.
pub const MAX_INPUT_BYTES: usize = 64 * 1024;

/// The attribute that names the item (product) an event concerns.
pub const ITEM_ATTR: &str = "sku";

/// One visitor's behaviour so far.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    /// Newest last; at most [`RECENT_STEPS`].
    steps: [u16; RECENT_STEPS],
    steps_len: u8,
    pub events: u32,
    pub first_ts_ms: u64,
    pub last_ts_ms: u64,
    /// Time between the previous event and the latest one.
    pub gap_ms: u64,
    /// Hash of the item the latest event concerned (0 when none).
    pub item: u64,
    /// Events in a row on the current item, the latest included.
    pub item_events: u16,
    /// The step that brought the visitor to the current item (how they navigate).
    pub entry_step: Option<u16>,
    /// Events in a row the previous item got.
    pub prev_item_events: u16,
    /// How many separate times the visit came to the current item.
    pub item_visits: u16,
    pub item_since_ms: u64,
    /// Recently seen items (hash, separate visits), newest last.
    items: Vec<(u64, u16)>,
    pub distinct_items: u32,
    /// Dwell reported with the latest event or dwell event.
    pub dwell_ms: Option<u64>,
    /// Hash of the last hovered target and how long the hover lasted.
    pub hover: Option<(u64, u64)>,
    /// Deepest scroll on the current page (0..1, or whatever scale the app uses).
    pub scroll_depth: f64,
    /// Inputs taken from event attributes; processes run with these.
    pub known_inputs: Map<String, Value>,
    /// What the known inputs take, as [`input_bytes`] counts them.
    pub(super) known_input_bytes: usize,
    /// Processes (by index in the configuration) the app asked for in this session.
    pub runs_done: u64,
    /// Contexts still waiting to learn which processes followed them: (context keys, credited).
    pub(crate) pending: Vec<([u64; 4], u64)>,
    /// The app's own predictions: (process id, p, events left before they lapse).
    pub(crate) hints: Vec<(u16, f64, u8)>,
    /// This visitor's own step transitions (from, to, fading count), at most [`HABITS`].
    pub(crate) habit: Vec<(u16, u16, f32)>,
    /// The context the model predicted from at the latest event, learned from at the next.
    pub(crate) context: Option<crate::predict::Context>,
}

/// Step transitions remembered per session for the per-session habit expert.
pub const HABITS: usize = 24;

/// What changed in a profile when an event was applied; the model turns it into a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// The event concerned the same item as the previous event of the session.
    pub same_item: bool,
}

impl Profile {
    pub fn new(ts_ms: u64) -> Profile {
        Profile {
            first_ts_ms: ts_ms,
            last_ts_ms: ts_ms,
            ..Profile::default()
        }
    }

    /// The step `back` places before the newest (0 is the newest), if the session has one.
    pub fn step(&self, back: usize) -> Option<u16> {
        let len = self.steps_len as usize;
        (back < len).then(|| self.steps[len - 1 - back])
    }

    /// Records the newest step; `entered` says it moved to a new item or page.
    pub fn push_step(&mut self, step: u16, entered: bool) {
        if entered {
            self.entry_step = Some(step);
        }
        let len = self.steps_len as usize;
        if len == RECENT_STEPS {
            self.steps.copy_within(1.., 0);
            self.steps[RECENT_STEPS - 1] = step;
        } else {
            self.steps[len] = step;
            self.steps_len += 1;
        }
    }

    /// Applies an event's signals and attributes (not its step: the model interns that).
    /// Attributes that would take the known inputs past [`MAX_INPUTS`] keys are left out.
    pub fn observe(&mut self, ev: &Event) -> Observed {
        // The first event sets the visit's own clock (a hint may have opened the profile).
        let ts = if self.events == 0 {
            self.first_ts_ms = ev.ts_ms;
            ev.ts_ms
        } else {
            ev.ts_ms.max(self.last_ts_ms)
        };
        self.gap_ms = if self.events == 0 {
            0
        } else {
            ts - self.last_ts_ms
        };
        self.last_ts_ms = ts;
        self.events = self.events.saturating_add(1);

        let item = item_hash(ev);
        let same_item = item != 0 && item == self.item;
        if item != 0 && !same_item {
            self.enter_item(item, ts);
        } else if same_item {
            self.item_events = self.item_events.saturating_add(1);
        }

        match ev.kind.as_str() {
            "dwell" => self.dwell_ms = ev.ms.or(self.dwell_ms),
            "hover" => {
                let target = ev.target.as_deref().map(hash_str).unwrap_or(0);
                self.hover = Some((target, ev.ms.unwrap_or(0)));
            }
            "scroll" => {
                let depth = ev.depth.unwrap_or(0.0);
                if depth.is_finite() && depth > self.scroll_depth {
                    self.scroll_depth = depth;
                }
            }
            "page_view" => {
                self.scroll_depth = 0.0;
                self.dwell_ms = ev.ms;
            }
            _ => {
                if ev.ms.is_some() {
                    self.dwell_ms = ev.ms;
                }
            }
        }

        for (k, v) in &ev.attrs {
            let room = self.known_inputs.len() < MAX_INPUTS;
            match self.known_inputs.get_mut(k) {
                Some(known) if known == v => {}
                Some(known) => {
                    self.known_input_bytes -= input_bytes(k, known);
                    self.known_input_bytes += input_bytes(k, v);
                    *known = v.clone();
                }
                None if room => {
                    self.known_input_bytes += input_bytes(k, v);
                    self.known_inputs.insert(k.clone(), v.clone());
                }
                None => {}
            }
        }
        Observed { same_item }
    }

    /// What the known inputs would take once `attrs` were applied.
    pub fn input_bytes_with(&self, attrs: &Map<String, Value>) -> usize {
        attrs.iter().fold(self.known_input_bytes, |total, (k, v)| {
            let old = self
                .known_inputs
                .get(k)
                .map_or(0, |known| input_bytes(k, known));
            total - old + input_bytes(k, v)
        })
    }

    /// How many of `attrs` are inputs this session does not know yet.
    pub fn new_input_keys(&self, attrs: &Map<String, Value>) -> usize {
        attrs
            .keys()
            .filter(|k| !self.known_inputs.contains_key(*k))
            .count()
    }

    fn enter_item(&mut self, item: u64, ts: u64) {
        self.item = item;
        self.prev_item_events = self.item_events;
        self.item_events = 1;
        self.item_since_ms = ts;
        if let Some(pos) = self.items.iter().position(|(h, _)| *h == item) {
            let (_, visits) = self.items.remove(pos);
            self.item_visits = visits.saturating_add(1);
        } else {
            self.item_visits = 1;
            self.distinct_items = self.distinct_items.saturating_add(1);
            if self.items.len() == RECENT_ITEMS {
                self.items.remove(0);
            }
        }
        self.items.push((item, self.item_visits));
    }

    /// Counts the transition `from` → `to` in the visitor's own habit; older habits fade.
    pub fn learn_habit(&mut self, from: u16, to: u16) {
        for h in &mut self.habit {
            h.2 *= 0.9;
        }
        if let Some(h) = self.habit.iter_mut().find(|h| h.0 == from && h.1 == to) {
            h.2 += 1.0;
            return;
        }
        if self.habit.len() == HABITS {
            let weakest = (0..HABITS)
                .min_by(|a, b| self.habit[*a].2.total_cmp(&self.habit[*b].2))
                .unwrap_or(0);
            self.habit.swap_remove(weakest);
        }
        self.habit.push((from, to, 1.0));
    }

    /// Time spent on the current item so far.
    pub fn time_on_item_ms(&self) -> u64 {
        self.last_ts_ms.saturating_sub(self.item_since_ms)
    }

    /// What the known inputs take, as [`input_bytes`] counts them.
    pub fn known_input_bytes(&self) -> usize {
        self.known_input_bytes
    }

    /// Bytes this profile holds, input values included.
    pub fn memory_bytes(&self) -> usize {
        let inputs: usize = self
            .known_inputs
            .iter()
            .map(|(k, v)| k.capacity() + 48 + value_bytes(v))
            .sum();
        std::mem::size_of::<Profile>()
            + self.items.capacity() * std::mem::size_of::<(u64, u16)>()
            + self.pending.capacity() * std::mem::size_of::<([u64; 4], u64)>()
            + self.hints.capacity() * std::mem::size_of::<(u16, f64, u8)>()
            + self.habit.capacity() * std::mem::size_of::<(u16, u16, f32)>()
            + inputs
    }

    /// Bytes apart from input values: the figure that must stay bounded.
    pub fn memory_bytes_without_inputs(&self) -> usize {
        let inputs: usize = self
            .known_inputs
            .iter()
            .map(|(k, v)| k.capacity() + 48 + value_bytes(v))
            .sum();
        self.memory_bytes() - inputs
    }
}

/// An input's size as limited: its key and its value as JSON.
pub fn input_bytes(key: &str, value: &Value) -> usize {
    /// Counts what is written and keeps nothing.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(key.len());
    // Writing a Value to a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

fn value_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => s.capacity(),
        Value::Array(a) => a.iter().map(|v| 32 + value_bytes(v)).sum(),
        Value::Object(o) => o.iter().map(|(k, v)| k.len() + 48 + value_bytes(v)).sum(),
        _ => 0,
    }
}

/// Hash of the item an event concerns (its `sku` attribute, a string or a number); 0 when none.
pub fn item_hash(ev: &Event) -> u64 {
    match ev.attrs.get(ITEM_ATTR) {
        Some(Value::String(s)) => hash_str(s),
        Some(Value::Number(n)) => hash_str(&n.to_string()),
        _ => 0,
    }
}

/// Stable 64-bit hash of a string (FNV-1a), used for items and hover targets.
pub fn hash_str(s: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in s.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h | 1
}

fn hash_string_key(s: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(session: &str, kind: &str, sku: Option<&str>, ts: u64) -> Event {
        let mut attrs = Map::new();
        if let Some(s) = sku {
            attrs.insert("sku".into(), json!(s));
        }
        Event {
            session: session.into(),
            kind: kind.into(),
            attrs,
            ts_ms: ts,
            ..Event::default()
        }
    }

    #[test]
    fn same_item_and_revisits_are_tracked() {
        let mut p = Profile::new(0);
        assert!(!p.observe(&ev("s", "page_view", Some("a"), 0)).same_item);
        assert!(p.observe(&ev("s", "detail", Some("a"), 10)).same_item);
        assert_eq!(p.item_events, 2);
        assert!(!p.observe(&ev("s", "page_view", Some("b"), 20)).same_item);
        assert!(!p.observe(&ev("s", "page_view", Some("a"), 30)).same_item);
        assert_eq!(p.item_visits, 2);
        assert_eq!(p.distinct_items, 2);
        assert_eq!(p.gap_ms, 10);
        assert_eq!(p.known_inputs.get("sku"), Some(&json!("a")));
    }

    #[test]
    fn steps_keep_the_newest() {
        let mut p = Profile::new(0);
        for s in 0..10u16 {
            p.push_step(s, true);
        }
        assert_eq!(p.step(0), Some(9));
        assert_eq!(p.step(RECENT_STEPS - 1), Some(10 - RECENT_STEPS as u16));
        assert_eq!(p.step(RECENT_STEPS), None);
    }

    #[test]
    fn profile_memory_is_bounded_apart_from_inputs() {
        let mut p = Profile::new(0);
        for i in 0..10_000u64 {
            let mut e = ev("s", "page_view", Some(&format!("sku-{i}")), i * 1000);
            e.attrs.insert("postal_code".into(), json!("10115"));
            p.observe(&e);
            p.push_step((i % 20) as u16, true);
            p.hover = Some((i, i));
        }
        let bytes = p.memory_bytes_without_inputs();
        println!("profile memory apart from input values: {bytes} bytes");
        assert!(bytes <= 1024, "a profile holds {bytes} bytes");
    }

    #[test]
    fn known_inputs_are_capped_and_known_ones_stay_updatable() {
        let mut p = Profile::new(0);
        for i in 0..MAX_INPUTS + 10 {
            let mut e = ev("s", "input", None, i as u64);
            e.attrs.insert(format!("field{i}"), json!(i));
            assert_eq!(p.new_input_keys(&e.attrs), 1);
            p.observe(&e);
        }
        assert_eq!(p.known_inputs.len(), MAX_INPUTS);
        assert!(!p.known_inputs.contains_key(&format!("field{MAX_INPUTS}")));

        let mut e = ev("s", "input", None, 10_000);
        e.attrs.insert("field0".into(), json!("changed"));
        assert_eq!(p.new_input_keys(&e.attrs), 0);
        p.observe(&e);
        assert_eq!(p.known_inputs["field0"], json!("changed"));
    }

    #[test]
    fn the_size_of_known_inputs_is_followed_as_values_change() {
        let mut p = Profile::new(0);
        let mut e = ev("s", "input", None, 1);
        e.attrs.insert("cart".into(), json!(["a", "b"]));
        e.attrs.insert("zip".into(), json!("10115"));
        // "cart" + ["a","b"] and "zip" + "10115"
        assert_eq!(p.input_bytes_with(&e.attrs), 4 + 9 + 3 + 7);
        p.observe(&e);
        assert_eq!(p.input_bytes_with(&Map::new()), 23);

        let mut e = ev("s", "input", None, 2);
        e.attrs.insert("cart".into(), json!([]));
        assert_eq!(p.input_bytes_with(&e.attrs), 23 - 9 + 2);
        p.observe(&e);
        assert_eq!(p.input_bytes_with(&Map::new()), 16);
    }

    #[test]
    fn the_first_event_sets_the_visits_clock() {
        // A profile opened at the daemon's clock by a hint; the visit's events carry older times.
        let mut p = Profile::new(5_000_000);
        p.observe(&ev("s", "page_view", Some("a"), 1_000));
        p.observe(&ev("s", "detail", Some("a"), 4_000));
        assert_eq!(
            (p.first_ts_ms, p.gap_ms, p.time_on_item_ms()),
            (1_000, 3_000, 3_000)
        );
    }
}
