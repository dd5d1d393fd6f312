//! The speculative jobs issued and not yet judged used or wasted, found by cache key (when a job
//! finishes or a `run` asks for its result) and by session (when the session goes).

use std::collections::{HashMap, HashSet};

use super::JobKey;

/// A speculative job issued for a session, until it is used or its session goes.
#[derive(Debug, Clone)]
pub(super) struct SpeculativeRecord {
    pub session: String,
    pub process: String,
    pub cpu_ns: u64,
    pub finished: bool,
    /// Its session went while it ran: already counted as wasted, its CPU time is added when it
    /// finishes.
    pub released: bool,
    /// A `run` waits for it: judged used when it brings a result (if it was released, its
    /// result stays in the cache for that run's session).
    pub joined: bool,
}

#[derive(Debug, Default)]
pub(super) struct Speculative {
    records: HashMap<JobKey, SpeculativeRecord>,
    by_session: HashMap<String, HashSet<JobKey>>,
}

impl Speculative {
    /// Records a job; returns the record it replaces for the same key, if any.
    pub fn insert(&mut self, key: JobKey, rec: SpeculativeRecord) -> Option<SpeculativeRecord> {
        let old = self.remove(&key);
        self.by_session
            .entry(rec.session.clone())
            .or_default()
            .insert(key.clone());
        self.records.insert(key, rec);
        old
    }

    pub fn remove(&mut self, key: &JobKey) -> Option<SpeculativeRecord> {
        let rec = self.records.remove(key)?;
        if let Some(keys) = self.by_session.get_mut(&rec.session) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_session.remove(&rec.session);
            }
        }
        Some(rec)
    }

    pub fn get(&self, key: &JobKey) -> Option<&SpeculativeRecord> {
        self.records.get(key)
    }

    /// Marks the job finished with the CPU time it took.
    pub fn finish(&mut self, key: &JobKey, cpu_ns: u64) {
        if let Some(rec) = self.records.get_mut(key) {
            rec.cpu_ns = cpu_ns;
            rec.finished = true;
        }
    }

    /// Notes that a `run` waits for the job.
    pub fn join(&mut self, key: &JobKey) {
        if let Some(rec) = self.records.get_mut(key) {
            rec.joined = true;
        }
    }

    /// The keys of the session's jobs, without a scan of everyone else's.
    pub fn of_session(&self, session: &str) -> Vec<JobKey> {
        self.by_session
            .get(session)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Jobs not judged yet. A job whose session went is kept until it finishes, for its CPU
    /// time, but it was already counted as wasted.
    pub fn pending(&self) -> usize {
        self.records.values().filter(|r| !r.released).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> JobKey {
        JobKey {
            owner: 0,
            process: "p".into(),
            inputs: n.to_string(),
            version: 0,
            run: 0,
        }
    }

    fn rec(session: &str) -> SpeculativeRecord {
        SpeculativeRecord {
            session: session.into(),
            process: "p".into(),
            cpu_ns: 0,
            finished: false,
            released: false,
            joined: false,
        }
    }

    #[test]
    fn jobs_are_found_by_session_until_removed_or_replaced() {
        let mut book = Speculative::default();
        book.insert(key(1), rec("a"));
        book.insert(key(2), rec("a"));
        book.insert(key(3), rec("b"));
        let mut a = book.of_session("a");
        a.sort_by(|x, y| x.inputs.cmp(&y.inputs));
        assert_eq!(a, vec![key(1), key(2)]);
        // The same key issued again for another session moves to that session.
        let old = book.insert(key(2), rec("b"));
        assert_eq!(old.map(|r| r.session), Some("a".to_string()));
        assert_eq!(book.of_session("a"), vec![key(1)]);
        assert_eq!(book.of_session("b").len(), 2);
        book.remove(&key(1));
        assert!(book.of_session("a").is_empty());
        assert_eq!(book.pending(), 2);
        // A job whose session went was judged then: it is kept, but no longer pending.
        let gone = book.remove(&key(3)).expect("recorded");
        book.insert(
            key(3),
            SpeculativeRecord {
                released: true,
                ..gone
            },
        );
        assert_eq!(book.pending(), 1);
    }
}
