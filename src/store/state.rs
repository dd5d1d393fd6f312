//! The partial-state store: each job key's latest checkpoint, so a retried or later job resumes
//! instead of starting over.

use std::path::Path;

use crate::store::engine::Engine;
use crate::store::layout::StoreKind;
use crate::store::record::record_len;
use crate::store::{SetAside, StoreError, StoreStats};

const FILE_NAME: &str = "states";
/// Checkpoint size limit when the configuration gives none.
pub const DEFAULT_STATE_MAX: usize = 64 * 1024;
const MAX_KEY: usize = 4 * 1024;

/// The memory-mapped checkpoint store in `state_dir`.
pub struct StateStore {
    engine: Engine,
    max_value: usize,
}

impl StateStore {
    /// Opens the store in `dir` with a file of `capacity` bytes; checkpoints over `max_value`
    /// bytes are refused.
    pub fn open(
        dir: &Path,
        capacity: u64,
        max_value: usize,
    ) -> Result<(StateStore, Vec<SetAside>), StoreError> {
        let largest = record_len(MAX_KEY, max_value);
        let (engine, set_aside) =
            Engine::open(dir, FILE_NAME, StoreKind::States, capacity, largest)?;
        Ok((StateStore { engine, max_value }, set_aside))
    }

    /// The latest checkpoint for a job key, if fresh and intact.
    pub fn get(&mut self, key: &[u8], now_ms: u64) -> Option<Vec<u8>> {
        self.engine.get(key, now_ms)
    }

    /// Keeps `value` as the job's latest checkpoint, replacing the one before.
    pub fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        if value.len() > self.max_value {
            let (bytes, limit) = (value.len() as u64, self.max_value as u64);
            return Err(StoreError::TooLarge { bytes, limit });
        }
        if key.len() > MAX_KEY {
            return Err(StoreError::TooLarge {
                bytes: key.len() as u64,
                limit: MAX_KEY as u64,
            });
        }
        self.engine.put(key, value, now_ms, ttl_ms)
    }

    /// Forgets a job's checkpoint, once the job has finished.
    pub fn remove(&mut self, key: &[u8]) {
        self.engine.remove(key);
    }

    /// Empties the parts of the file whose checkpoints have all expired; returns how many went.
    pub fn remove_expired(&mut self, now_ms: u64) -> u64 {
        self.engine.purge_expired(now_ms)
    }

    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.engine.sync()
    }

    pub fn stats(&self) -> StoreStats {
        self.engine.stats()
    }

    pub fn path(&self) -> &Path {
        self.engine.path()
    }
}
