//! The result cache: finished micro-process results keyed by owner, process and inputs.

use std::path::Path;

use crate::store::engine::Engine;
use crate::store::layout::StoreKind;
use crate::store::{SetAside, StoreError, StoreStats};

const FILE_NAME: &str = "results";
/// Keys longer than this are refused so one request cannot take a whole segment with its key.
const MAX_KEY: usize = 16 * 1024;

/// What a result is cached under. Results are never shared between client users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheKey<'a> {
    pub owner: u32,
    pub process: &'a str,
    /// What computed the result (the daemon's fingerprint of the worker command it ran on): a
    /// result another version computed is not this key's.
    pub version: u64,
    /// The inputs as [`canonical_json`] writes them.
    pub inputs: &'a str,
}

impl CacheKey<'_> {
    /// Owner, version, then the process name with its length, then the inputs: no two keys
    /// share bytes.
    fn encode_into(&self, buf: &mut Vec<u8>) {
        buf.clear();
        buf.extend_from_slice(&self.owner.to_le_bytes());
        buf.extend_from_slice(&self.version.to_le_bytes());
        buf.extend_from_slice(&(self.process.len() as u32).to_le_bytes());
        buf.extend_from_slice(self.process.as_bytes());
        buf.extend_from_slice(self.inputs.as_bytes());
    }
}

pub use crate::protocol::canonical_json;

/// The memory-mapped result cache in `cache_dir`.
pub struct ResultCache {
    engine: Engine,
    key_buf: Vec<u8>,
}

impl ResultCache {
    /// Opens the cache in `dir`, creating it (and `dir`, mode 0700) if needed. `capacity` is the
    /// size of the file, reserved on disk now. Files that could not be used are listed, moved
    /// aside.
    pub fn open(dir: &Path, capacity: u64) -> Result<(ResultCache, Vec<SetAside>), StoreError> {
        let (engine, set_aside) = Engine::open(dir, FILE_NAME, StoreKind::Results, capacity, 0)?;
        Ok((
            ResultCache {
                engine,
                key_buf: Vec::new(),
            },
            set_aside,
        ))
    }

    /// The cached result if it is fresh at `now_ms` and intact.
    pub fn get(&mut self, key: &CacheKey, now_ms: u64) -> Option<Vec<u8>> {
        key.encode_into(&mut self.key_buf);
        self.engine.get(&self.key_buf, now_ms)
    }

    /// Stores a result, replacing any earlier one. After a write error the cache is disabled:
    /// that error is returned once and later puts do nothing.
    pub fn put(
        &mut self,
        key: &CacheKey,
        value: &[u8],
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        key.encode_into(&mut self.key_buf);
        if self.key_buf.len() > MAX_KEY {
            let (bytes, limit) = (self.key_buf.len() as u64, MAX_KEY as u64);
            return Err(StoreError::TooLarge { bytes, limit });
        }
        self.engine.put(&self.key_buf, value, now_ms, ttl_ms)
    }

    pub fn remove(&mut self, key: &CacheKey) {
        key.encode_into(&mut self.key_buf);
        self.engine.remove(&self.key_buf);
    }

    /// Drops every result (the operator's "flush cache").
    pub fn clear(&mut self) -> Result<(), StoreError> {
        self.engine.clear()
    }

    /// Empties the parts of the file whose results have all expired; returns how many went.
    pub fn purge_expired(&mut self, now_ms: u64) -> u64 {
        self.engine.purge_expired(now_ms)
    }

    /// Writes the mapping back to disk; call at stop and periodically.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.engine.sync()
    }

    pub fn stats(&self) -> StoreStats {
        self.engine.stats()
    }

    /// The largest record (key, value and 32 bytes of header) a put accepts.
    pub fn max_record(&self) -> usize {
        self.engine.max_record()
    }

    /// The file the cache lives in.
    pub fn path(&self) -> &Path {
        self.engine.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_when_any_part_differs() {
        let encode = |k: CacheKey| {
            let mut buf = Vec::new();
            k.encode_into(&mut buf);
            buf
        };
        let base = CacheKey {
            owner: 1,
            process: "ab",
            version: 7,
            inputs: "c",
        };
        assert_ne!(
            encode(base),
            encode(CacheKey {
                process: "a",
                inputs: "bc",
                ..base
            })
        );
        assert_ne!(encode(base), encode(CacheKey { owner: 2, ..base }));
        assert_ne!(encode(base), encode(CacheKey { version: 8, ..base }));
    }
}
