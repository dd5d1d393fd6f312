//! The shape of a store file and the pure arithmetic over it: header, regions, index slots,
//! segment table, key hashing and the choice of the segment to reclaim.
//!
//! ```text
//! [header 4 KiB][segment table][index: open-addressing hash table][data: N equal segments]
//! ```
//!
//! The header is written once at creation and checked (magic, version, kind, CRC-32, sizes) at
//! every open; everything after it is validated piece by piece when it is used, so a healthy file
//! opens without being read. Nothing here does I/O.

use crate::store::record::{read_u32, read_u64};

pub const HEADER_LEN: usize = 4096;
pub const MAGIC: [u8; 8] = *b"PRECOGST";
pub const VERSION: u32 = 1;
const HEADER_CRC_AT: usize = 64;
/// Where the header says the last owner closed the file, outside the checksummed part because
/// it changes at every open and close.
pub const CLOSED_AT: usize = 256;
pub const CLOSED_MARK: u64 = u64::from_le_bytes(*b"CLOSEDOK");
const PAGE: u64 = 4096;

/// Bytes of one index slot: key hash, then the packed location of its record.
pub const SLOT_LEN: usize = 16;
/// Bytes of one segment table entry: sequence, fill, latest expiry, spare.
pub const SEGMENT_ENTRY_LEN: usize = 32;
/// Average record size the index is sized for; smaller records fill the index first.
const BYTES_PER_SLOT: u64 = 256;
const MIN_SEGMENT: u64 = 64 * 1024;
const MAX_SEGMENT: u64 = 4 * 1024 * 1024;
const MIN_SEGMENTS: u64 = 4;
/// Offsets are stored in 8-byte units in 32 bits.
pub const MAX_CAPACITY: u64 = 32 << 30;

/// Which store a file belongs to, so a state file is never opened as a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Results = 1,
    States = 2,
}

/// Where each region lives in a file of `capacity` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub capacity: u64,
    pub segment_len: u64,
    pub segment_count: u64,
    pub slot_count: u64,
    pub segment_table_at: u64,
    pub index_at: u64,
    pub data_at: u64,
}

/// Why a capacity cannot be laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    TooSmall { minimum: u64 },
    TooLarge { maximum: u64 },
}

impl Layout {
    /// Plans a file of exactly `capacity` bytes whose segments hold records of up to
    /// `max_record` bytes twice over.
    pub fn plan(capacity: u64, max_record: u64) -> Result<Layout, LayoutError> {
        if capacity > MAX_CAPACITY {
            return Err(LayoutError::TooLarge {
                maximum: MAX_CAPACITY,
            });
        }

        let by_size = (capacity / 64)
            .clamp(MIN_SEGMENT, MAX_SEGMENT)
            .next_power_of_two();
        let segment_len = by_size.max((2 * max_record).next_power_of_two());
        let slot_count = (capacity / BYTES_PER_SLOT).max(1024).next_power_of_two();
        let segment_table_len = round_up(capacity.div_ceil(segment_len) * 32, PAGE);
        let index_len = round_up(slot_count * SLOT_LEN as u64, PAGE);
        let fixed = HEADER_LEN as u64 + segment_table_len + index_len;

        let minimum = fixed + MIN_SEGMENTS * segment_len;
        if capacity < minimum {
            return Err(LayoutError::TooSmall { minimum });
        }
        Ok(Layout {
            capacity,
            segment_len,
            segment_count: (capacity - fixed) / segment_len,
            slot_count,
            segment_table_at: HEADER_LEN as u64,
            index_at: HEADER_LEN as u64 + segment_table_len,
            data_at: fixed,
        })
    }

    /// The file offset of a data-region offset.
    pub fn data_offset(&self, segment: usize, within: u64) -> usize {
        (self.data_at + segment as u64 * self.segment_len + within) as usize
    }

    pub fn segment_entry_offset(&self, segment: usize) -> usize {
        self.segment_table_at as usize + segment * SEGMENT_ENTRY_LEN
    }

    /// Entries allowed before the index counts as full; linear probing slows sharply past it.
    pub fn slot_limit(&self) -> u64 {
        self.slot_count / 4 * 3
    }
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// Builds the header of a new file.
pub fn encode_header(layout: &Layout, kind: StoreKind, hash_seed: u64) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&(kind as u32).to_le_bytes());
    header[16..24].copy_from_slice(&layout.capacity.to_le_bytes());
    header[24..32].copy_from_slice(&layout.segment_len.to_le_bytes());
    header[32..40].copy_from_slice(&layout.segment_count.to_le_bytes());
    header[40..48].copy_from_slice(&layout.slot_count.to_le_bytes());
    header[48..56].copy_from_slice(&hash_seed.to_le_bytes());
    let crc = crc32fast::hash(&header[..HEADER_CRC_AT]);
    header[HEADER_CRC_AT..HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    header
}

/// What an existing file's header says, checked against the file's real length and what the
/// caller expects; the error is the reason the file is set aside.
pub fn check_header(
    header: &[u8],
    file_len: u64,
    kind: StoreKind,
    expected: &Layout,
) -> Result<u64, String> {
    if file_len == 0 {
        return Err("file is empty".into());
    }
    if header.len() < HEADER_LEN || file_len < HEADER_LEN as u64 {
        return Err(format!("file is truncated to {file_len} bytes"));
    }
    if header[..HEADER_LEN].iter().all(|&b| b == 0) {
        return Err("header is all zeros".into());
    }
    if header[0..8] != MAGIC {
        return Err("file is not a precog store".into());
    }
    let version = read_u32(header, 8);
    if version != VERSION {
        return Err(format!(
            "file has format version {version}, expected {VERSION}"
        ));
    }
    let crc = read_u32(header, HEADER_CRC_AT);
    if crc32fast::hash(&header[..HEADER_CRC_AT]) != crc {
        return Err("header checksum does not match".into());
    }
    if read_u32(header, 12) != kind as u32 {
        return Err("file belongs to the other kind of store".into());
    }

    let capacity = read_u64(header, 16);
    if file_len < capacity {
        return Err(format!(
            "file is truncated to {file_len} of {capacity} bytes"
        ));
    }
    if capacity != expected.capacity {
        return Err(format!(
            "capacity changed from {capacity} to {} bytes",
            expected.capacity
        ));
    }
    let stored = (
        read_u64(header, 24),
        read_u64(header, 32),
        read_u64(header, 40),
    );
    if stored
        != (
            expected.segment_len,
            expected.segment_count,
            expected.slot_count,
        )
    {
        return Err("file was laid out for other record sizes".into());
    }
    Ok(read_u64(header, 48))
}

/// A stable, seeded 64-bit hash of a key; never 0, which marks an empty slot. The seed is
/// random per file so visitors cannot choose inputs that pile up in one probe chain.
pub fn key_hash(seed: u64, key: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = seed ^ (key.len() as u64).wrapping_mul(K);
    let mut chunks = key.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        h = (h ^ word).wrapping_mul(K).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(K);

    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^= h >> 33;
    if h == 0 { 1 } else { h }
}

/// Where a slot's record is: data-region offset and length, both multiples of 8, and whether
/// it was read since it was written (its second chance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLocation {
    pub offset: u64,
    pub len: u64,
    pub referenced: bool,
}

const REFERENCED_BIT: u64 = 1 << 63;

impl SlotLocation {
    pub fn pack(&self) -> u64 {
        let referenced = if self.referenced { REFERENCED_BIT } else { 0 };
        (self.offset / 8) | ((self.len / 8) << 32) | referenced
    }

    pub fn unpack(word: u64) -> SlotLocation {
        SlotLocation {
            offset: (word & 0xFFFF_FFFF) * 8,
            len: ((word & !REFERENCED_BIT) >> 32) * 8,
            referenced: word & REFERENCED_BIT != 0,
        }
    }

    /// The segment holding the record, if the location lies wholly inside one segment.
    pub fn segment(&self, layout: &Layout) -> Option<usize> {
        let segment = self.offset / layout.segment_len;
        let end = self.offset.checked_add(self.len)?;
        let fits = self.len > 0
            && segment < layout.segment_count
            && end <= (segment + 1) * layout.segment_len;
        fits.then_some(segment as usize)
    }
}

/// The distance of `slot` from the home slot of `hash`, for backward-shift deletion.
pub fn probe_distance(hash: u64, slot: usize, mask: usize) -> usize {
    slot.wrapping_sub(hash as usize & mask) & mask
}

/// One segment's entry in the segment table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentMeta {
    /// Order in which segments were opened for writing; 0 for a never-used segment.
    pub seq: u64,
    /// Bytes of records written into it.
    pub fill: u64,
    /// The latest expiry of any record written into it.
    pub max_expiry_ms: u64,
}

impl SegmentMeta {
    pub fn decode(bytes: &[u8], segment_len: u64) -> SegmentMeta {
        SegmentMeta {
            seq: read_u64(bytes, 0),
            // A damaged fill is clamped: records past it are checked one by one anyway.
            fill: read_u64(bytes, 8).min(segment_len),
            max_expiry_ms: read_u64(bytes, 16),
        }
    }

    pub fn encode(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[0..8].copy_from_slice(&self.seq.to_le_bytes());
        out[8..16].copy_from_slice(&self.fill.to_le_bytes());
        out[16..24].copy_from_slice(&self.max_expiry_ms.to_le_bytes());
        out
    }
}

/// Picks the segment to empty next, never the one being written: an unused segment first, then
/// the oldest segment whose records have all expired, then the oldest segment.
pub fn choose_victim(segments: &[SegmentMeta], current: usize, now_ms: u64) -> Option<usize> {
    let others = || {
        segments
            .iter()
            .enumerate()
            .filter(move |(i, _)| *i != current)
    };
    if let Some((i, _)) = others().find(|(_, s)| s.fill == 0) {
        return Some(i);
    }
    others()
        .filter(|(_, s)| s.max_expiry_ms <= now_ms)
        .min_by_key(|(_, s)| s.seq)
        .or_else(|| others().min_by_key(|(_, s)| s.seq))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gibibyte_cache_has_room_and_an_index() {
        let layout = Layout::plan(1 << 30, 4096).unwrap();
        assert_eq!(layout.segment_len, 4 << 20);
        assert_eq!(layout.slot_count, 4 << 20);
        let data_end = layout.data_at + layout.segment_count * layout.segment_len;
        assert!(data_end <= layout.capacity);
        assert!(layout.segment_count > 200);
        assert!(layout.index_at >= layout.segment_table_at + layout.segment_count * 32);
        assert!(layout.data_at >= layout.index_at + layout.slot_count * SLOT_LEN as u64);
    }

    #[test]
    fn small_and_huge_capacities_are_refused() {
        assert!(matches!(
            Layout::plan(64 * 1024, 1024),
            Err(LayoutError::TooSmall { .. })
        ));
        assert!(matches!(
            Layout::plan(64 << 30, 1024),
            Err(LayoutError::TooLarge { .. })
        ));
        let state = Layout::plan(4 << 20, 64 * 1024 + 4096).unwrap();
        assert!(state.segment_len >= 2 * (64 * 1024 + 4096));
    }

    #[test]
    fn headers_round_trip_and_name_what_is_wrong() {
        let layout = Layout::plan(1 << 20, 1024).unwrap();
        let header = encode_header(&layout, StoreKind::Results, 42);
        assert_eq!(
            check_header(&header, 1 << 20, StoreKind::Results, &layout),
            Ok(42)
        );

        let why = |h: &[u8], len| check_header(h, len, StoreKind::Results, &layout).unwrap_err();
        assert!(why(&header, 0).contains("empty"));
        assert!(why(&header, 100).contains("truncated"));
        assert!(why(&header, 8192).contains("truncated"));
        assert!(why(&[0u8; HEADER_LEN], 1 << 20).contains("zeros"));
        let mut foreign = header;
        foreign[0] = b'X';
        assert!(why(&foreign, 1 << 20).contains("not a precog store"));
        let mut flipped = header;
        flipped[20] ^= 4;
        assert!(why(&flipped, 1 << 20).contains("checksum"));
        let state = check_header(&header, 1 << 20, StoreKind::States, &layout);
        assert!(state.unwrap_err().contains("other kind"));
        let bigger = Layout::plan(2 << 20, 1024).unwrap();
        let resized = check_header(&header, 1 << 20, StoreKind::Results, &bigger);
        assert!(resized.unwrap_err().contains("capacity changed"));
    }

    #[test]
    fn hashes_are_stable_seeded_and_never_zero() {
        assert_eq!(key_hash(7, b"calc_shipping"), key_hash(7, b"calc_shipping"));
        assert_ne!(key_hash(7, b"calc_shipping"), key_hash(8, b"calc_shipping"));
        assert_ne!(key_hash(7, b"a"), key_hash(7, b"a\0"));
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000u32 {
            assert!(seen.insert(key_hash(1, &i.to_le_bytes())));
        }
    }

    #[test]
    fn slot_locations_pack_and_stay_inside_one_segment() {
        let layout = Layout::plan(4 << 20, 1024).unwrap();
        let loc = SlotLocation {
            offset: 65_536 + 64,
            len: 128,
            referenced: true,
        };
        assert_eq!(SlotLocation::unpack(loc.pack()), loc);
        assert_eq!(loc.segment(&layout), Some(1));
        let straddling = SlotLocation {
            offset: 65_536 - 8,
            len: 16,
            referenced: false,
        };
        assert_eq!(straddling.segment(&layout), None);
        let beyond = SlotLocation {
            offset: layout.segment_count * 65_536,
            len: 8,
            referenced: false,
        };
        assert_eq!(beyond.segment(&layout), None);
        assert_eq!(SlotLocation::unpack(0).segment(&layout), None);
    }

    #[test]
    fn probe_distance_wraps() {
        assert_eq!(probe_distance(5, 7, 15), 2);
        assert_eq!(probe_distance(14, 1, 15), 3);
    }

    #[test]
    fn victims_are_unused_then_expired_then_oldest() {
        let seg = |seq, fill, max_expiry_ms| SegmentMeta {
            seq,
            fill,
            max_expiry_ms,
        };
        let full = [
            seg(3, 10, 900),
            seg(1, 10, 900),
            seg(2, 10, 100),
            seg(4, 10, 900),
        ];
        assert_eq!(choose_victim(&full, 3, 500), Some(2));
        assert_eq!(choose_victim(&full, 3, 50), Some(1));
        assert_eq!(choose_victim(&full, 1, 50), Some(2));
        let with_free = [seg(1, 10, 0), seg(0, 0, 0), seg(2, 10, 0)];
        assert_eq!(choose_victim(&with_free, 2, 50), Some(1));
        assert_eq!(choose_victim(&[seg(1, 10, 0)], 0, 50), None);
    }
}
