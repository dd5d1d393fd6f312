//! The on-file hash index: an open-addressing table of 16-byte slots (key hash, packed record
//! location) with linear probing and backward-shift deletion, so no tombstones pile up.
//!
//! It works over a plain byte slice (the index region of the mapping, or a `Vec` in the tests)
//! and does no I/O. Slot writes put the location before the hash, with a fence between, so a
//! process killed mid-write leaves either no entry or one whose record is checked on read.

use std::sync::atomic::{Ordering, fence};

use crate::store::layout::{SLOT_LEN, SlotLocation, probe_distance};
use crate::store::record::read_u64;

/// What publishing a location did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    Added,
    Replaced(SlotLocation),
    /// Every slot is taken; nothing was stored.
    Full,
}

/// A view of the slots; `B` is `&[u8]` for reading and `&mut [u8]` for changing them.
pub struct Slots<B> {
    bytes: B,
    mask: usize,
}

impl<B: AsRef<[u8]>> Slots<B> {
    /// `bytes` holds `slot_count` slots; `slot_count` is a power of two.
    pub fn new(bytes: B, slot_count: usize) -> Slots<B> {
        debug_assert!(slot_count.is_power_of_two());
        debug_assert!(bytes.as_ref().len() >= slot_count * SLOT_LEN);
        Slots {
            bytes,
            mask: slot_count - 1,
        }
    }

    /// The hash (0 for an empty slot) and location in `slot`.
    pub fn get(&self, slot: usize) -> (u64, SlotLocation) {
        let bytes = self.bytes.as_ref();
        let at = slot * SLOT_LEN;
        (
            read_u64(bytes, at),
            SlotLocation::unpack(read_u64(bytes, at + 8)),
        )
    }

    /// The slots holding `hash`, in probe order, up to the first empty slot.
    pub fn chain(&self, hash: u64) -> impl Iterator<Item = (usize, SlotLocation)> + '_ {
        let home = hash as usize & self.mask;
        (0..=self.mask)
            .map(move |step| (home + step) & self.mask)
            .map(|slot| (slot, self.get(slot)))
            .take_while(|(_, (slot_hash, _))| *slot_hash != 0)
            .filter(move |(_, (slot_hash, _))| *slot_hash == hash)
            .map(|(slot, (_, loc))| (slot, loc))
    }

    /// The slot of `hash` that points at `offset`.
    pub fn find_at(&self, hash: u64, offset: u64) -> Option<usize> {
        self.chain(hash)
            .find(|(_, loc)| loc.offset == offset)
            .map(|(slot, _)| slot)
    }

    /// Every used slot's location.
    pub fn occupied(&self) -> impl Iterator<Item = SlotLocation> + '_ {
        (0..=self.mask)
            .map(|slot| self.get(slot))
            .filter(|(h, _)| *h != 0)
            .map(|(_, l)| l)
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Slots<B> {
    pub fn set_location(&mut self, slot: usize, loc: SlotLocation) {
        let at = slot * SLOT_LEN + 8;
        self.bytes.as_mut()[at..at + 8].copy_from_slice(&loc.pack().to_le_bytes());
    }

    fn set_hash(&mut self, slot: usize, hash: u64) {
        let at = slot * SLOT_LEN;
        self.bytes.as_mut()[at..at + 8].copy_from_slice(&hash.to_le_bytes());
    }

    /// Points `hash` at `loc`: takes over the first slot with the same hash or fills the first
    /// empty one. Keys are not compared here: two keys sharing a seeded 64-bit hash only cost
    /// one entry, since reads compare full keys.
    pub fn publish(&mut self, hash: u64, loc: SlotLocation) -> Published {
        let home = hash as usize & self.mask;
        for step in 0..=self.mask {
            let slot = (home + step) & self.mask;
            let (slot_hash, old) = self.get(slot);
            if slot_hash == hash {
                self.set_location(slot, loc);
                return Published::Replaced(old);
            }
            if slot_hash == 0 {
                self.set_location(slot, loc);
                fence(Ordering::Release);
                self.set_hash(slot, hash);
                return Published::Added;
            }
        }
        Published::Full
    }

    /// Removes the later of two slots with the same hash in one cluster and returns how many
    /// went. `publish` never makes such pairs, but a process killed in the middle of `remove`
    /// can leave an entry in both its old and new slot; the earlier one is the one lookups find.
    pub fn remove_repeated_hashes(&mut self) -> usize {
        let slot_count = self.mask + 1;
        // Start after an empty slot, so no cluster wraps around the scan's start.
        let Some(start) = (0..slot_count).find(|&slot| self.get(slot).0 == 0) else {
            return 0;
        };
        let mut removed = 0;
        let mut cluster: Vec<u64> = Vec::new();
        let mut step = 1;
        while step <= slot_count {
            let slot = (start + step) & self.mask;
            let (hash, _) = self.get(slot);
            if hash == 0 {
                cluster.clear();
            } else if cluster.contains(&hash) {
                // The shift brings the next entry into this slot: look at it again.
                self.remove(slot);
                removed += 1;
                continue;
            } else {
                cluster.push(hash);
            }
            step += 1;
        }
        removed
    }

    /// Empties `slot`, moving later entries of its probe chains back into the hole.
    pub fn remove(&mut self, slot: usize) {
        let mask = self.mask;
        let mut hole = slot;
        let mut next = (slot + 1) & mask;
        for _ in 0..mask {
            let (hash, loc) = self.get(next);
            if hash == 0 {
                break;
            }
            if probe_distance(hash, next, mask) >= next.wrapping_sub(hole) & mask {
                self.set_location(hole, loc);
                self.set_hash(hole, hash);
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.set_hash(hole, 0);
        self.set_location(hole, SlotLocation::unpack(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn loc(n: u64) -> SlotLocation {
        SlotLocation {
            offset: n * 8,
            len: 8,
            referenced: false,
        }
    }

    fn lookup(slots: &Slots<Vec<u8>>, hash: u64) -> Option<u64> {
        slots.chain(hash).next().map(|(_, l)| l.offset / 8)
    }

    #[test]
    fn colliding_hashes_share_a_chain_and_survive_removals() {
        let mut slots = Slots::new(vec![0u8; 16 * SLOT_LEN], 16);
        // Hashes 3, 19 and 35 share home slot 3; 4 is displaced by them.
        for (hash, n) in [(3, 1), (19, 2), (4, 3), (35, 4)] {
            assert_eq!(slots.publish(hash, loc(n)), Published::Added);
        }
        slots.remove(slots.find_at(19, 16).unwrap());
        assert_eq!(lookup(&slots, 3), Some(1));
        assert_eq!(lookup(&slots, 19), None);
        assert_eq!(lookup(&slots, 4), Some(3));
        assert_eq!(lookup(&slots, 35), Some(4));
        assert_eq!(slots.occupied().count(), 3);
    }

    #[test]
    fn chains_wrap_around_the_end() {
        let mut slots = Slots::new(vec![0u8; 8 * SLOT_LEN], 8);
        for (hash, n) in [(7, 1), (15, 2), (23, 3)] {
            slots.publish(hash, loc(n));
        }
        slots.remove(slots.find_at(7, 8).unwrap());
        assert_eq!((lookup(&slots, 15), lookup(&slots, 23)), (Some(2), Some(3)));
    }

    #[test]
    fn publishing_the_same_hash_replaces() {
        let mut slots = Slots::new(vec![0u8; 8 * SLOT_LEN], 8);
        slots.publish(5, loc(1));
        assert_eq!(slots.publish(5, loc(2)), Published::Replaced(loc(1)));
        assert_eq!(lookup(&slots, 5), Some(2));
        assert_eq!(slots.occupied().count(), 1);
    }

    #[test]
    fn entries_left_twice_by_an_interrupted_removal_are_dropped() {
        let mut slots = Slots::new(vec![0u8; 16 * SLOT_LEN], 16);
        for (hash, n) in [(3, 1), (19, 2), (35, 3), (8, 4)] {
            slots.publish(hash, loc(n));
        }
        // As if a removal of slot 3 was killed after copying slot 4 into it.
        let copied = slots.get(4);
        slots.set_location(3, copied.1);
        slots.set_hash(3, copied.0);
        assert_eq!(slots.occupied().count(), 4);

        assert_eq!(slots.remove_repeated_hashes(), 1);
        assert_eq!(slots.occupied().count(), 3);
        assert_eq!((lookup(&slots, 19), lookup(&slots, 35)), (Some(2), Some(3)));
        assert_eq!((lookup(&slots, 3), lookup(&slots, 8)), (None, Some(4)));
    }

    #[test]
    fn a_full_table_stores_nothing() {
        let mut slots = Slots::new(vec![0u8; 2 * SLOT_LEN], 2);
        slots.publish(1, loc(1));
        slots.publish(2, loc(2));
        assert_eq!(slots.publish(3, loc(3)), Published::Full);
        assert_eq!((lookup(&slots, 1), lookup(&slots, 3)), (Some(1), None));
    }

    proptest! {
        #[test]
        fn the_index_agrees_with_a_map(
            ops in proptest::collection::vec((1u64..200, any::<bool>()), 0..150)
        ) {
            let mut slots = Slots::new(vec![0u8; 256 * SLOT_LEN], 256);
            let mut model = std::collections::HashMap::new();
            for (i, (hash, insert)) in ops.into_iter().enumerate() {
                if insert {
                    slots.publish(hash, loc(i as u64));
                    model.insert(hash, i as u64);
                } else {
                    let found = slots.chain(hash).next().map(|(slot, _)| slot);
                    if let Some(slot) = found {
                        slots.remove(slot);
                        model.remove(&hash);
                    }
                }
            }
            for hash in 1u64..200 {
                prop_assert_eq!(lookup(&slots, hash), model.get(&hash).copied());
            }
        }
    }
}
