//! Memory-mapped result cache and partial-state store: bounded, checksummed, survives restarts.
//!
//! Both stores are one file each, owned by the daemon alone (a 0700 directory and an exclusive
//! `flock`), reserved whole with `fallocate` at open and mapped once. A file is a header, a
//! segment table, an on-file hash index and a data region cut into equal segments; records are
//! appended to the current segment and carry a CRC-32, checked when they are read. Reopening a
//! healthy file reads its header, segment table and index only — never the records — so a 1 GiB
//! cache is ready in a fraction of a second.
//!
//! Eviction is segment-wise FIFO with a second chance, after the TTL-aware segmented caches
//! (Segcache): when the current segment is full, the next one to reuse is an unused segment, else
//! the oldest segment whose records have all expired, else the oldest segment. Records of the
//! reclaimed segment that were read since they were written and are still fresh are rewritten
//! into it (up to half a segment); the rest go. That suits this cache: a speculative result is
//! mostly read soon after it is written, while it is young and cheap to keep in a FIFO, and a
//! result read once is likely to be read again in the same visit; whole-segment reclaim keeps
//! each write a memory copy with no per-entry list to maintain on disk, and expired entries leave
//! with their segment without ever being visited. Stale or damaged records found on the way are
//! dropped lazily.
//!
//! Because the whole file is reserved at open, a disk that fills later cannot make a put fail or
//! fault: the store keeps cycling through its own space. What can still fail is writing dirty
//! pages back (`sync`, e.g. EIO or ENOSPC on a thin or network volume); the first such error
//! is returned, the store is marked `disabled` (puts are then ignored, gets still served) and
//! later errors are only counted, so the daemon logs it once.
//!
//! A file truncated while mapped (by someone with the rights to do it) would make the next touch
//! of a page past its new end a SIGBUS. The mapping is guarded against that (`bus_fault`): the
//! faulting page reads zeros, which no record or index slot accepts, and the store turns itself
//! off at its next operation (`file_changed`), so the daemon runs on without it until a restart
//! sets the file aside.
//!
//! The daemon owns each store from one task; the stores take `&mut self` and do no locking.
//! `sync` waits for the write-back (about half a second for a freshly filled 1 GiB cache on
//! this kind of machine), so the daemon calls it from a blocking thread or at stop.

mod bus_fault;
mod cache;
mod engine;
mod files;
mod index;
mod layout;
mod record;
mod state;

use std::io;
use std::path::PathBuf;

use thiserror::Error;

pub use cache::{CacheKey, ResultCache, canonical_json};
pub use files::SetAside;
pub use record::{DecodeError, Record, decode_record, encode_record, record_len};
pub use state::{DEFAULT_STATE_MAX, StateStore};

/// Counters an operator reads through `stats`. Entries and bytes describe the file now; the
/// other counters count since open. Every entry ever added is either still an entry or was
/// removed, evicted, expired or dropped as damaged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub entries: u64,
    /// Bytes of the records the index points to.
    pub bytes_used: u64,
    /// Size of the file, which is also the most it uses on disk.
    pub capacity: u64,
    pub hits: u64,
    pub misses: u64,
    pub expired: u64,
    pub evicted: u64,
    pub removed: u64,
    pub damaged_dropped: u64,
    pub write_errors: u64,
    /// Set after a write error (puts are ignored, gets still served) or when the file changed
    /// under the mapping.
    pub disabled: bool,
    /// Set when the file shrank while mapped: nothing is read from it or written to it again
    /// until the daemon restarts.
    pub file_changed: bool,
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("failed to {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not reserve {bytes} bytes for {path}; free disk space or lower the store size")]
    Reserve {
        path: PathBuf,
        bytes: u64,
        #[source]
        source: io::Error,
    },
    #[error("cannot guard the mapping of {path} against the file shrinking")]
    Guard {
        path: PathBuf,
        #[source]
        source: bus_fault::GuardError,
    },
    #[error("{path} is not private to precogd: {reason}")]
    NotPrivate { path: PathBuf, reason: String },
    #[error("{path} is locked by another process; stop the other precogd or use another directory")]
    Locked { path: PathBuf },
    #[error("store size {capacity} bytes is too small; use at least {minimum} bytes")]
    CapacityTooSmall { capacity: u64, minimum: u64 },
    #[error("store size {capacity} bytes is too large; use at most {maximum} bytes")]
    CapacityTooLarge { capacity: u64, maximum: u64 },
    #[error("entry of {bytes} bytes is over the {limit}-byte limit; it was not stored")]
    TooLarge { bytes: u64, limit: u64 },
}

impl StoreError {
    /// The error with its causes (the OS error, for I/O) on one line, for a log line.
    pub fn with_causes(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        text
    }
}
