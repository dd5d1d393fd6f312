//! The engine's side of the stores: results kept for later requests, and the partial states
//! (checkpoints) jobs resume from.

use std::sync::Mutex;

use serde_json::{Map, Value};

use super::Engine;
use super::run::{JobKey, now_ms};
use crate::store::{CacheKey, StoreError, canonical_json};

/// Where a job's result is kept in the cache.
pub(super) fn cache_key(key: &JobKey) -> CacheKey<'_> {
    CacheKey {
        owner: key.owner,
        process: &key.process,
        version: key.version,
        inputs: &key.inputs,
    }
}

/// 64-bit FNV-1a: a hash that stays the same from one build to the next, for what is kept on
/// disk across restarts.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.as_bytes().iter().chain(&[0xff]) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The hash [`Engine::process_version`] gives a pool, its worker command, the user its workers
/// run as and the stamp of the files they run (`PoolSettings::set_code`). The command's length
/// goes first, so no argument can pass for the user, nor the user for an argument.
fn worker_version(pool: &str, command: &[String], user: Option<&str>, code: u64) -> u64 {
    let count = command.len().to_string();
    let code = code.to_string();
    let mut parts: Vec<&str> = vec![pool, &count];
    parts.extend(command.iter().map(String::as_str));
    parts.push(user.unwrap_or(""));
    parts.push(&code);
    fnv1a(&parts)
}

impl Engine {
    /// What computes `process`'s results in the running configuration: its pool, that pool's
    /// worker command, the user its workers run as and the files they run as they were when
    /// the workers were last configured. A result kept, a job in flight or a checkpoint of
    /// another version is not served for, joined by or resumed in this one, so a reload, a
    /// restart or a new worker program on disk never answers with the old worker's results. 0
    /// for a process not configured.
    pub(super) fn process_version(&self, process: &str) -> u64 {
        let Some(p) = self.config.process(process) else {
            return 0;
        };
        let command: &[String] = self.config.pool(&p.pool).map_or(&[], |pool| &pool.command);
        let code = self.pools.get(&p.pool).map_or(0, |pool| pool.code());
        worker_version(
            &p.pool,
            command,
            self.config.daemon.worker_user.as_deref(),
            code,
        )
    }

    pub(super) fn is_cacheable(&self, process: &str) -> bool {
        self.cache.is_some() && self.config.process(process).is_some_and(|p| p.idempotent)
    }

    pub(super) fn cache_get(&mut self, key: &JobKey) -> Option<Value> {
        let cache = self.cache.as_mut()?;
        let bytes = cache.get(&cache_key(key), now_ms())?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Keeps a result for later requests; results of processes not declared idempotent are
    /// never kept.
    pub(super) fn cache_put(&mut self, key: &JobKey, result: &Value) {
        if !self.is_cacheable(&key.process) {
            return;
        }
        let ttl = self
            .config
            .process(&key.process)
            .map(|p| p.ttl.0.as_millis() as u64)
            .unwrap_or(0);
        let Some(cache) = self.cache.as_mut() else {
            return;
        };
        let bytes = serde_json::to_vec(result).unwrap_or_default();
        if let Err(e) = cache.put(&cache_key(key), &bytes, now_ms(), ttl) {
            self.store_error("result cache", &e);
        }
    }

    /// The partial-state key of a job: its owner, process and the inputs its `prepare` phase
    /// needs (all inputs when it declares none), so a prepare run and the full run share it.
    pub(super) fn state_key(&self, key: &JobKey, inputs: &Map<String, Value>) -> Vec<u8> {
        let prepare = self
            .config
            .process(&key.process)
            .map(|p| p.prepare.clone())
            .unwrap_or_default();
        let basis = if prepare.is_empty() {
            key.inputs.clone()
        } else {
            let subset: Map<String, Value> = inputs
                .iter()
                .filter(|(k, _)| prepare.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            canonical_json(&Value::Object(subset))
        };
        let (owner, process, version) = (key.owner, &key.process, key.version);
        format!("{owner}\u{0}{process}\u{0}{version:016x}\u{0}{basis}").into_bytes()
    }

    /// The checkpoint a job starting now resumes from, and the job counted as holding its key
    /// until [`Engine::state_released`]. A checkpoint is handed only to a job that follows the
    /// one that wrote it, never to one running beside it: a second run of a process that is not
    /// idempotent is an action of its own, and must not take up where the first one is.
    pub(super) fn state_taken(&mut self, state_key: &[u8]) -> Option<Value> {
        let holders = self.running_states.entry(state_key.to_vec()).or_insert(0);
        *holders += 1;
        if *holders > 1 {
            return None;
        }
        self.saved_state(state_key)
    }

    /// A job that held `state_key` is no longer in flight.
    pub(super) fn state_released(&mut self, state_key: &[u8]) {
        if let Some(holders) = self.running_states.get_mut(state_key) {
            *holders -= 1;
            if *holders == 0 {
                self.running_states.remove(state_key);
            }
        }
    }

    pub(super) fn saved_state(&mut self, state_key: &[u8]) -> Option<Value> {
        let bytes = self.states.as_mut()?.get(state_key, now_ms())?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Stores the checkpoint waiting in `latest`, if another message has not taken it yet.
    pub(super) fn save_latest(&mut self, state_key: &[u8], latest: &Mutex<Option<Value>>) {
        let state = latest.lock().expect("latest checkpoint").take();
        if let Some(state) = state {
            self.save_state(state_key, &state);
        }
    }

    pub(super) fn save_state(&mut self, state_key: &[u8], state: &Value) {
        let ttl = 3_600_000;
        let Some(states) = self.states.as_mut() else {
            return;
        };
        let bytes = serde_json::to_vec(state).unwrap_or_default();
        if let Err(e) = states.put(state_key, &bytes, now_ms(), ttl) {
            self.store_error("partial-state store", &e);
        }
    }

    pub(super) fn forget_state(&mut self, key: &JobKey) {
        if self.states.is_none() {
            return;
        }
        let inputs: Map<String, Value> = serde_json::from_str(&key.inputs).unwrap_or_default();
        let state_key = self.state_key(key, &inputs);
        if let Some(states) = self.states.as_mut() {
            states.remove(&state_key);
        }
    }

    /// A store error is said once per store; the store keeps serving what it has. An entry
    /// too large to keep is no fault of the store: it is said at debug level, each time.
    pub(super) fn store_error(&mut self, which: &'static str, e: &StoreError) {
        if let StoreError::TooLarge { .. } = e {
            tracing::debug!(store = which, error = %e, "not stored");
            return;
        }
        if self.store_warned.insert(which) {
            let error = e.with_causes();
            tracing::warn!(store = which, %error, "storing failed; precog keeps serving");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::worker_version;

    #[test]
    fn no_argument_passes_for_the_user() {
        let cmd = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let as_args = worker_version("t", &cmd(&["python3", "w.py", "user", "nobody"]), None, 0);
        let as_user = worker_version("t", &cmd(&["python3", "w.py"]), Some("nobody"), 0);
        assert_ne!(as_args, as_user);
        assert_ne!(
            worker_version("t", &cmd(&["a", "b"]), None, 0),
            worker_version("t", &cmd(&["a"]), Some("b"), 0)
        );
        // The same pool, command and user give the same version, from one start to the next.
        assert_eq!(
            worker_version("t", &cmd(&["a"]), Some("b"), 0),
            worker_version("t", &cmd(&["a"]), Some("b"), 0)
        );
        // Another program behind the same command is another version.
        assert_ne!(
            worker_version("t", &cmd(&["a"]), Some("b"), 0),
            worker_version("t", &cmd(&["a"]), Some("b"), 1)
        );
    }
}
