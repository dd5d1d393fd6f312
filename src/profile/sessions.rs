//! All live sessions: capped in number and in what their known inputs take together (the least
//! recently active goes first), with idle expiry.

use std::collections::{BTreeMap, HashMap};

use super::{Profile, hash_string_key};

/// All live sessions, capped in number, with idle expiry.
#[derive(Debug, Default)]
pub struct Profiles {
    /// Profile, sequence number and last activity (its key in `by_activity`).
    by_session: HashMap<String, (Profile, u64, u64)>,
    /// (last activity, sequence) → session, so the idlest session is found first.
    by_activity: BTreeMap<(u64, u64), String>,
    seq: u64,
    max: usize,
    idle_ms: u64,
    /// What all sessions' known inputs may take together ([`input_bytes`]).
    inputs_budget: usize,
    /// What they take now.
    inputs_total: usize,
}

impl Profiles {
    pub fn new(max: usize, idle_ms: u64) -> Profiles {
        Profiles {
            max: max.max(1),
            idle_ms,
            inputs_budget: usize::MAX,
            ..Profiles::default()
        }
    }

    /// Sets the most sessions kept, their idle span and what their known inputs may take
    /// together; returns the sessions pushed out to fit lowered limits.
    pub fn set_limits(&mut self, max: usize, idle_ms: u64, inputs_budget: usize) -> Vec<String> {
        self.max = max.max(1);
        self.idle_ms = idle_ms;
        self.inputs_budget = inputs_budget;
        let mut evicted = Vec::new();
        while self.by_session.len() > self.max {
            evicted.extend(self.evict_idlest());
        }
        evicted.extend(self.fit_inputs(None));
        evicted
    }

    /// What all sessions' known inputs take together.
    pub fn inputs_bytes(&self) -> usize {
        self.inputs_total
    }

    /// Takes note that `session`'s known inputs took `before` bytes before its latest event,
    /// and pushes out the idlest other sessions while all known inputs take more than the
    /// budget; returns those sessions.
    pub fn inputs_changed(&mut self, session: &str, before: usize) -> Vec<String> {
        let now = self
            .by_session
            .get(session)
            .map_or(before, |(p, _, _)| p.known_input_bytes);
        self.inputs_total = self.inputs_total - before + now;
        self.fit_inputs(Some(session))
    }

    /// Pushes out the idlest sessions, `keep` aside, until the known inputs fit the budget.
    fn fit_inputs(&mut self, keep: Option<&str>) -> Vec<String> {
        let mut evicted = Vec::new();
        while self.inputs_total > self.inputs_budget {
            let idlest = self
                .by_activity
                .values()
                .find(|s| Some(s.as_str()) != keep)
                .cloned();
            let Some(session) = idlest else { break };
            self.remove(&session);
            evicted.push(session);
        }
        evicted
    }

    pub fn len(&self) -> usize {
        self.by_session.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_session.is_empty()
    }

    pub fn get(&self, session: &str) -> Option<&Profile> {
        self.by_session.get(session).map(|(p, _, _)| p)
    }

    pub fn get_mut(&mut self, session: &str) -> Option<&mut Profile> {
        self.by_session.get_mut(session).map(|(p, _, _)| p)
    }

    /// The session's profile, created when new (evicting the idlest session at the cap), and
    /// marked active at `ts_ms`. Returns the profile and the session evicted, if any.
    pub fn touch(&mut self, session: &str, ts_ms: u64) -> (&mut Profile, Option<String>) {
        let mut evicted = None;
        if !self.by_session.contains_key(session) {
            if self.by_session.len() >= self.max {
                evicted = self.evict_idlest();
            }
            self.seq += 1;
            self.by_activity
                .insert((ts_ms, self.seq), session.to_string());
            let profile = Profile::new(ts_ms);
            self.by_session
                .insert(session.to_string(), (profile, self.seq, ts_ms));
        } else {
            let (_, seq, active) = self.by_session.get_mut(session).expect("checked above");
            if ts_ms > *active {
                let name = self
                    .by_activity
                    .remove(&(*active, *seq))
                    .unwrap_or_default();
                self.by_activity.insert((ts_ms, *seq), name);
                *active = ts_ms;
            }
        }
        let (profile, _, _) = self.by_session.get_mut(session).expect("inserted above");
        (profile, evicted)
    }

    fn evict_idlest(&mut self) -> Option<String> {
        let (_, session) = self.by_activity.first_key_value()?;
        let session = session.clone();
        self.remove(&session);
        Some(session)
    }

    pub fn remove(&mut self, session: &str) -> Option<Profile> {
        let (profile, seq, active) = self.by_session.remove(session)?;
        self.by_activity.remove(&(active, seq));
        self.inputs_total -= profile.known_input_bytes;
        Some(profile)
    }

    /// Removes and names the sessions idle longer than the configured span at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) -> Vec<String> {
        let mut expired = Vec::new();
        while let Some((&(ts, _), _)) = self.by_activity.first_key_value() {
            if now_ms.saturating_sub(ts) < self.idle_ms {
                break;
            }
            if let Some(session) = self.evict_idlest() {
                expired.push(session);
            }
        }
        expired
    }

    pub fn profiles_mut(&mut self) -> impl Iterator<Item = &mut Profile> {
        self.by_session.values_mut().map(|(p, _, _)| p)
    }

    pub fn sessions(&self) -> impl Iterator<Item = &str> {
        self.by_session.keys().map(String::as_str)
    }

    /// A stable key for a session name (for per-session tables kept elsewhere).
    pub fn session_key(session: &str) -> u64 {
        hash_string_key(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Event, input_bytes};
    use serde_json::Value;

    fn ev(session: &str, kind: &str, ts: u64) -> Event {
        Event {
            session: session.into(),
            kind: kind.into(),
            ts_ms: ts,
            ..Event::default()
        }
    }

    #[test]
    fn sessions_inputs_together_stay_within_their_budget() {
        let big = |session: &str, ts: u64| {
            let mut e = ev(session, "page_view", ts);
            e.attrs
                .insert("note".into(), Value::String("x".repeat(1000)));
            e
        };
        let one = input_bytes("note", &Value::String("x".repeat(1000)));
        let mut all = Profiles::new(100, 0);
        all.set_limits(100, 0, 3 * one);
        for (i, s) in ["a", "b", "c", "d"].iter().enumerate() {
            let (p, _) = all.touch(s, i as u64);
            let before = p.known_input_bytes();
            p.observe(&big(s, i as u64));
            let gone = all.inputs_changed(s, before);
            // The fourth session's inputs push out the idlest, never the session itself.
            assert_eq!(
                gone,
                if i == 3 {
                    vec!["a".to_string()]
                } else {
                    vec![]
                }
            );
        }
        assert_eq!(all.inputs_bytes(), 3 * one);
        assert!(all.get("a").is_none() && all.get("d").is_some());

        all.remove("b");
        assert_eq!(all.inputs_bytes(), 2 * one);
        // A lowered budget pushes out the idlest at once.
        assert_eq!(all.set_limits(100, 0, one), ["c"]);
        assert_eq!(all.inputs_bytes(), one);
    }

    #[test]
    fn cap_evicts_the_idlest_and_idle_sessions_expire() {
        let mut all = Profiles::new(2, 1000);
        all.touch("a", 0);
        all.touch("b", 10);
        all.touch("a", 20);
        let (_, evicted) = all.touch("c", 30);
        assert_eq!(evicted.as_deref(), Some("b"));
        assert_eq!(all.len(), 2);
        assert_eq!(all.expire(1025), vec!["a".to_string()]);
        assert!(all.get("c").is_some());
        assert!(all.remove("c").is_some());
        assert!(all.is_empty());
        assert!(all.by_activity.is_empty());
        assert!(all.expire(u64::MAX).is_empty());
    }
}
