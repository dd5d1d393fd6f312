//! The file engine both stores share: a segmented log of checksummed records under an
//! open-addressing hash index, all in one mapped file.
//!
//! Writes append to the current segment: record bytes first, then the segment's fill, then the
//! index slot, with a fence between, so a process killed at any instant leaves at worst a record
//! nobody points to, or a slot whose record fails its checksum or key check and is dropped when
//! read. Nothing is ever overwritten in place except by reclaiming a whole segment, and a segment's
//! slots are cleared before it is reused. A process killed inside an index removal can leave an
//! entry in two slots; the header's close mark tells the next open to repair that.

use std::path::Path;
use std::sync::atomic::{Ordering, fence};

use crate::store::files::{SetAside, StoreFile};
use crate::store::index::{Published, Slots};
use crate::store::layout::{
    CLOSED_AT, CLOSED_MARK, Layout, LayoutError, SegmentMeta, SlotLocation, StoreKind,
    choose_victim, key_hash,
};
use crate::store::record::{Record, decode_record, encode_record, read_u64, record_len};
use crate::store::{StoreError, StoreStats};

/// A record kept through a reclaim because it was read since it was written and is still fresh.
struct Survivor {
    key: Vec<u8>,
    value: Vec<u8>,
    created_ms: u64,
    ttl_ms: u64,
}

/// A live record found while walking a segment that is about to be emptied.
struct Resident {
    hash: u64,
    offset: u64,
    fresh: bool,
    survivor: Option<Survivor>,
}

pub(crate) struct Engine {
    file: StoreFile,
    layout: Layout,
    segments: Vec<SegmentMeta>,
    current: usize,
    next_seq: u64,
    max_record: usize,
    stats: StoreStats,
}

impl Engine {
    pub fn open(
        dir: &Path,
        name: &str,
        kind: StoreKind,
        capacity: u64,
        min_record: usize,
    ) -> Result<(Engine, Vec<SetAside>), StoreError> {
        let layout = Layout::plan(capacity, min_record as u64).map_err(|e| match e {
            LayoutError::TooSmall { minimum } => StoreError::CapacityTooSmall { capacity, minimum },
            LayoutError::TooLarge { maximum } => StoreError::CapacityTooLarge { capacity, maximum },
        })?;
        let (file, set_aside) = StoreFile::open(dir, name, kind, &layout)?;

        let segments = (0..layout.segment_count as usize)
            .map(|i| {
                let at = layout.segment_entry_offset(i);
                SegmentMeta::decode(&file.map[at..at + 24], layout.segment_len)
            })
            .collect::<Vec<_>>();
        let (current, newest) = segments
            .iter()
            .enumerate()
            .max_by_key(|(_, s)| s.seq)
            .map_or((0, 0), |(i, s)| (i, s.seq));

        let mut engine = Engine {
            file,
            layout,
            segments,
            current,
            next_seq: newest.saturating_add(1),
            // Survivors of a reclaim take at most half a segment, so this always fits beside them.
            max_record: (layout.segment_len / 2) as usize,
            stats: StoreStats {
                capacity,
                ..StoreStats::default()
            },
        };
        if newest == 0 {
            engine.start_segment(0);
        }
        // Only a process killed inside a removal leaves repeated slots: skip the scan after a
        // clean close.
        let closed = read_u64(&engine.file.map, CLOSED_AT) == CLOSED_MARK;
        engine.file.map[CLOSED_AT..CLOSED_AT + 8].fill(0);
        if !closed {
            engine.slots_mut().remove_repeated_hashes();
        }
        engine.count_entries();
        engine.advise_random_reads();
        Ok((engine, set_aside))
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    pub fn stats(&self) -> StoreStats {
        let mut stats = self.stats.clone();
        // A fault may have marked the file before any operation looked.
        if !stats.file_changed && self.file.changed_under() {
            stats.file_changed = true;
            stats.disabled = true;
        }
        stats
    }

    /// False once the file has shrunk under the mapping: from then on nothing is read from or
    /// written to it. Said once, at error level, when first noticed.
    fn usable(&mut self) -> bool {
        if self.stats.file_changed || !self.file.changed_under() {
            return !self.stats.file_changed;
        }
        tracing::error!(file = %self.file.path().display(),
            "the store file was changed under precogd (truncated?); the store is off until \
             precogd restarts, which sets the file aside");
        self.stats.file_changed = true;
        self.stats.disabled = true;
        self.stats.entries = 0;
        self.stats.bytes_used = 0;
        false
    }

    pub fn max_record(&self) -> usize {
        self.max_record
    }

    /// The value stored under `key` if it is whole and fresh; a damaged or stale record is
    /// dropped from the index on the way.
    pub fn get(&mut self, key: &[u8], now_ms: u64) -> Option<Vec<u8>> {
        if !self.usable() {
            self.stats.misses += 1;
            return None;
        }
        let hash = key_hash(self.file.hash_seed, key);
        let mut found = Found::Missing;
        for (slot, loc) in self.slots().chain(hash) {
            found = match self.record_at(loc) {
                // Another key with the same hash; unless the slot is debris of an interrupted
                // removal, whose record's own hash differs from the slot's.
                Some(Ok(record)) if record.key != key => {
                    if key_hash(self.file.hash_seed, record.key) == hash {
                        continue;
                    }
                    Found::Damaged(slot, loc)
                }
                Some(Ok(record)) if record.is_fresh(now_ms) => {
                    Found::Fresh(slot, loc, record.value.to_vec())
                }
                Some(Ok(_)) => Found::Stale(slot, loc),
                _ => Found::Damaged(slot, loc),
            };
            break;
        }

        if !self.usable() {
            // The file shrank during the lookup: what was read may be zeros, so none of it counts.
            self.stats.misses += 1;
            return None;
        }
        match found {
            Found::Fresh(slot, loc, value) => {
                if !loc.referenced {
                    let referenced = SlotLocation {
                        referenced: true,
                        ..loc
                    };
                    self.slots_mut().set_location(slot, referenced);
                }
                self.stats.hits += 1;
                return Some(value);
            }
            Found::Stale(slot, loc) => {
                self.stats.expired += 1;
                self.remove_slot(slot, loc);
            }
            Found::Damaged(slot, loc) => {
                self.stats.damaged_dropped += 1;
                self.remove_slot(slot, loc);
            }
            Found::Missing => {}
        }
        self.stats.misses += 1;
        None
    }

    pub fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        if !self.usable() || self.stats.disabled {
            return Ok(());
        }
        let len = record_len(key.len(), value.len());
        if len > self.max_record {
            return Err(StoreError::TooLarge {
                bytes: len as u64,
                limit: self.max_record as u64,
            });
        }

        while self.stats.entries >= self.layout.slot_limit() {
            if !self.evict_one(now_ms) {
                break;
            }
        }
        if self.segments[self.current].fill + len as u64 > self.layout.segment_len {
            self.advance(now_ms);
        }
        self.append(key, value, now_ms, ttl_ms);
        Ok(())
    }

    pub fn remove(&mut self, key: &[u8]) {
        if !self.usable() {
            return;
        }
        let hash = key_hash(self.file.hash_seed, key);
        let target = self.slots().chain(hash).find(|(_, loc)| {
            // A damaged record under this hash goes too: it can serve nobody.
            !matches!(self.record_at(*loc), Some(Ok(r)) if r.key != key)
        });
        if let Some((slot, loc)) = target {
            self.remove_slot(slot, loc);
            self.stats.removed += 1;
        }
    }

    /// Drops every entry. The index goes first so no slot ever points at a reused segment.
    pub fn clear(&mut self) -> Result<(), StoreError> {
        if !self.usable() {
            return Ok(());
        }
        let index = self.layout.index_at as usize..self.layout.data_at as usize;
        self.file.map[index].fill(0);
        fence(Ordering::Release);
        for segment in 0..self.segments.len() {
            self.set_segment(segment, SegmentMeta::default());
        }
        self.stats.entries = 0;
        self.stats.bytes_used = 0;
        self.next_seq = 1;
        self.start_segment(0);
        self.sync()
    }

    /// Empties every segment whose records have all expired; returns the entries dropped.
    pub fn purge_expired(&mut self, now_ms: u64) -> u64 {
        if !self.usable() {
            return 0;
        }
        let before = self.stats.expired;
        for segment in 0..self.segments.len() {
            let meta = self.segments[segment];
            if segment != self.current && meta.fill > 0 && meta.max_expiry_ms <= now_ms {
                self.empty_segment(segment, now_ms, false);
            }
        }
        self.stats.expired - before
    }

    pub fn sync(&mut self) -> Result<(), StoreError> {
        if !self.usable() {
            return Ok(());
        }
        match self.file.flush() {
            Ok(()) => Ok(()),
            Err(e) => self.fail_write(e),
        }
    }

    /// Stops caching after a write error; the caller sees the first error only, so it is logged
    /// once, and reads go on.
    pub fn fail_write(&mut self, error: StoreError) -> Result<(), StoreError> {
        self.stats.write_errors += 1;
        if self.stats.disabled {
            return Ok(());
        }
        self.stats.disabled = true;
        Err(error)
    }

    fn append(&mut self, key: &[u8], value: &[u8], now_ms: u64, ttl_ms: u64) {
        let segment = self.current;
        let mut meta = self.segments[segment];
        let at = self.layout.data_offset(segment, meta.fill);
        let len = encode_record(&mut self.file.map[at..], key, value, now_ms, ttl_ms) as u64;
        fence(Ordering::Release);

        let loc = SlotLocation {
            offset: segment as u64 * self.layout.segment_len + meta.fill,
            len,
            referenced: false,
        };
        meta.fill += len;
        meta.max_expiry_ms = meta.max_expiry_ms.max(now_ms.saturating_add(ttl_ms));
        self.set_segment(segment, meta);
        fence(Ordering::Release);

        self.publish(key_hash(self.file.hash_seed, key), loc);
    }

    /// Points the key's slot at a new record, replacing an older one.
    fn publish(&mut self, hash: u64, loc: SlotLocation) {
        match self.slots_mut().publish(hash, loc) {
            Published::Replaced(old) => {
                let old_len = if old.segment(&self.layout).is_some() {
                    old.len
                } else {
                    0
                };
                self.stats.bytes_used = self.stats.bytes_used.saturating_sub(old_len) + loc.len;
            }
            Published::Added => {
                self.stats.entries += 1;
                self.stats.bytes_used += loc.len;
            }
            // Unreachable while puts keep the table under its load limit; the record is simply
            // not indexed, as if evicted at once.
            Published::Full => self.stats.evicted += 1,
        }
    }

    /// Moves writing to a reclaimed segment, keeping that segment's recently read records.
    fn advance(&mut self, now_ms: u64) {
        let Some(victim) = choose_victim(&self.segments, self.current, now_ms) else {
            return;
        };
        let survivors = self.empty_segment(victim, now_ms, true);
        self.start_segment(victim);
        for s in survivors {
            self.append(&s.key, &s.value, s.created_ms, s.ttl_ms);
        }
    }

    /// Frees index slots by emptying the oldest segment; false when nothing could be freed.
    fn evict_one(&mut self, now_ms: u64) -> bool {
        let before = self.stats.entries;
        match choose_victim(&self.segments, self.current, now_ms) {
            Some(victim) if self.segments[victim].fill > 0 => {
                self.empty_segment(victim, now_ms, false);
            }
            _ => {
                // Only the current segment holds entries: start a fresh one and empty it.
                let old = self.current;
                self.advance(now_ms);
                if self.current != old {
                    self.empty_segment(old, now_ms, false);
                }
            }
        }
        self.stats.entries < before
    }

    fn start_segment(&mut self, segment: usize) {
        self.current = segment;
        let meta = SegmentMeta {
            seq: self.next_seq,
            fill: 0,
            max_expiry_ms: 0,
        };
        self.next_seq = self.next_seq.saturating_add(1);
        self.set_segment(segment, meta);
    }

    /// Drops every index slot that points into `segment` and marks it unused. With
    /// `second_chance`, fresh records read since they were written (up to half a segment) are
    /// handed back for rewriting instead of being evicted.
    fn empty_segment(&mut self, segment: usize, now_ms: u64, second_chance: bool) -> Vec<Survivor> {
        let (residents, whole) = self.walk_segment(segment, now_ms, second_chance);
        let mut survivors = Vec::new();
        for resident in residents {
            if let Some(slot) = self.slots().find_at(resident.hash, resident.offset) {
                let loc = self.slots().get(slot).1;
                self.remove_slot(slot, loc);
                // A killed removal may have left the entry twice.
                while let Some(again) = self.slots().find_at(resident.hash, resident.offset) {
                    self.slots_mut().remove(again);
                    self.stats.entries = self.stats.entries.saturating_sub(1);
                }
                match resident.survivor {
                    Some(survivor) => survivors.push(survivor),
                    None if resident.fresh => self.stats.evicted += 1,
                    None => self.stats.expired += 1,
                }
            }
        }
        if !whole {
            self.drop_slots_into(segment);
        }
        fence(Ordering::Release);
        self.set_segment(segment, SegmentMeta::default());
        survivors
    }

    /// Lists the segment's records that the index still points to; false when a damaged record
    /// stopped the walk early.
    fn walk_segment(
        &self,
        segment: usize,
        now_ms: u64,
        second_chance: bool,
    ) -> (Vec<Resident>, bool) {
        let fill = self.segments[segment].fill;
        let base = self.layout.data_offset(segment, 0);
        let bytes = &self.file.map[base..base + fill as usize];
        let budget = self.layout.segment_len / 2;
        let mut kept = 0;
        let mut residents = Vec::new();
        let mut at = 0usize;

        while at < bytes.len() {
            let Ok(record) = decode_record(&bytes[at..]) else {
                return (residents, false);
            };
            let len = record_len(record.key.len(), record.value.len());
            let offset = segment as u64 * self.layout.segment_len + at as u64;
            let hash = key_hash(self.file.hash_seed, record.key);
            if let Some(slot) = self.slots().find_at(hash, offset) {
                let referenced = self.slots().get(slot).1.referenced;
                let fresh = record.is_fresh(now_ms);
                let keep = second_chance && referenced && fresh && kept + len as u64 <= budget;
                kept += if keep { len as u64 } else { 0 };
                let survivor = keep.then(|| survivor_of(&record));
                residents.push(Resident {
                    hash,
                    offset,
                    fresh,
                    survivor,
                });
            }
            at += len;
        }
        (residents, true)
    }

    /// The slow path for a segment with a damaged record: scans the whole index.
    fn drop_slots_into(&mut self, segment: usize) {
        for slot in 0..self.layout.slot_count as usize {
            loop {
                let (hash, loc) = self.slots().get(slot);
                if hash == 0 || loc.segment(&self.layout) != Some(segment) {
                    break;
                }
                self.remove_slot(slot, loc);
                self.stats.evicted += 1;
            }
        }
    }

    /// The record a slot points to: None when the location is outside the written part of a
    /// segment, an error when the bytes there are not a whole record.
    fn record_at(
        &self,
        loc: SlotLocation,
    ) -> Option<Result<Record<'_>, crate::store::DecodeError>> {
        let segment = loc.segment(&self.layout)?;
        let within = loc.offset - segment as u64 * self.layout.segment_len;
        if within + loc.len > self.segments[segment].fill {
            return None;
        }
        let at = self.layout.data_offset(segment, within);
        Some(decode_record(&self.file.map[at..at + loc.len as usize]))
    }

    fn remove_slot(&mut self, slot: usize, loc: SlotLocation) {
        self.stats.entries = self.stats.entries.saturating_sub(1);
        if loc.segment(&self.layout).is_some() {
            self.stats.bytes_used = self.stats.bytes_used.saturating_sub(loc.len);
        }
        self.slots_mut().remove(slot);
    }

    /// Records are read one at a time at scattered places, so read-ahead around a fault would
    /// only fetch neighbours nobody asked for; it is a hint, and failing it changes nothing.
    fn advise_random_reads(&self) {
        let data = self.layout.data_at as usize;
        let len = self.layout.capacity as usize - data;
        let _ = self
            .file
            .map
            .advise_range(memmap2::Advice::Random, data, len);
    }

    fn count_entries(&mut self) {
        let (mut entries, mut bytes) = (0, 0);
        for loc in self.slots().occupied() {
            entries += 1;
            // A damaged slot is dropped when it is read; until then it counts no bytes.
            bytes += if loc.segment(&self.layout).is_some() {
                loc.len
            } else {
                0
            };
        }
        self.stats.entries = entries;
        self.stats.bytes_used = bytes;
    }

    fn slots(&self) -> Slots<&[u8]> {
        let index = self.layout.index_at as usize..self.layout.data_at as usize;
        Slots::new(&self.file.map[index], self.layout.slot_count as usize)
    }

    fn slots_mut(&mut self) -> Slots<&mut [u8]> {
        let index = self.layout.index_at as usize..self.layout.data_at as usize;
        Slots::new(&mut self.file.map[index], self.layout.slot_count as usize)
    }

    fn set_segment(&mut self, segment: usize, meta: SegmentMeta) {
        self.segments[segment] = meta;
        let at = self.layout.segment_entry_offset(segment);
        self.file.map[at..at + 24].copy_from_slice(&meta.encode());
    }
}

/// What a lookup found under the key's hash.
enum Found {
    Fresh(usize, SlotLocation, Vec<u8>),
    Stale(usize, SlotLocation),
    Damaged(usize, SlotLocation),
    Missing,
}

impl Drop for Engine {
    fn drop(&mut self) {
        // A file that shrank is set aside at the next open; it is not to be marked closed.
        if self.file.changed_under() {
            return;
        }
        self.file.map[CLOSED_AT..CLOSED_AT + 8].copy_from_slice(&CLOSED_MARK.to_le_bytes());
    }
}

fn survivor_of(record: &Record<'_>) -> Survivor {
    Survivor {
        key: record.key.to_vec(),
        value: record.value.to_vec(),
        created_ms: record.created_ms,
        ttl_ms: record.ttl_ms,
    }
}

#[cfg(test)]
mod tests;
