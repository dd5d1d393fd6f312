//! The on-file record: one key, one value, its creation time and time to live, under a checksum.
//!
//! Records are written once and never changed in place, so a record is either whole (its CRC-32
//! matches) or it is dropped. Decoding is pure and total: any byte slice gives either a record or
//! a [`DecodeError`], never a panic, because a fuzz target is pointed at [`decode_record`].
//!
//! Layout, little-endian, padded to a multiple of 8 bytes:
//!
//! ```text
//! 0  magic  u32 "PRC1"     4  crc32 u32 (over bytes 8..end of value)
//! 8  key_len u32           12 value_len u32
//! 16 created_ms u64        24 ttl_ms u64
//! 32 key bytes, value bytes, zero padding
//! ```

use thiserror::Error;

/// Marks the start of a record.
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"PRC1");
/// Bytes before the key.
pub const RECORD_HEADER_LEN: usize = 32;
/// Records start on this alignment inside a segment.
pub const RECORD_ALIGN: usize = 8;

/// Why a byte slice is not a whole record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("record is shorter than its header")]
    ShortHeader,
    #[error("record does not start with the record magic")]
    BadMagic,
    #[error("record claims {needed} bytes but only {available} are there")]
    Truncated { needed: usize, available: usize },
    #[error("record checksum does not match its contents")]
    BadChecksum,
}

/// A decoded record borrowing its key and value from the buffer it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub created_ms: u64,
    pub ttl_ms: u64,
}

impl Record<'_> {
    /// The first millisecond at which the record is stale.
    pub fn expires_ms(&self) -> u64 {
        self.created_ms.saturating_add(self.ttl_ms)
    }

    /// Whether the record may still be served at `now_ms`.
    pub fn is_fresh(&self, now_ms: u64) -> bool {
        now_ms < self.expires_ms()
    }
}

/// Bytes a record with these key and value lengths takes, padding included.
pub fn record_len(key_len: usize, value_len: usize) -> usize {
    let raw = RECORD_HEADER_LEN + key_len + value_len;
    raw.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// Writes a record into the front of `dst`, which must hold at least
/// `record_len(key.len(), value.len())` bytes; returns the length written.
///
/// The checksum is written last in program order, but readers never rely on that: a record whose
/// checksum does not match what it covers is dropped whatever order the bytes reached the file.
pub fn encode_record(
    dst: &mut [u8],
    key: &[u8],
    value: &[u8],
    created_ms: u64,
    ttl_ms: u64,
) -> usize {
    let total = record_len(key.len(), value.len());
    let dst = &mut dst[..total];
    let key_end = RECORD_HEADER_LEN + key.len();
    let value_end = key_end + value.len();

    dst[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    dst[8..12].copy_from_slice(&len_u32(key.len()).to_le_bytes());
    dst[12..16].copy_from_slice(&len_u32(value.len()).to_le_bytes());
    dst[16..24].copy_from_slice(&created_ms.to_le_bytes());
    dst[24..32].copy_from_slice(&ttl_ms.to_le_bytes());
    dst[RECORD_HEADER_LEN..key_end].copy_from_slice(key);
    dst[key_end..value_end].copy_from_slice(value);
    dst[value_end..].fill(0);

    let crc = crc32fast::hash(&dst[8..value_end]);
    dst[4..8].copy_from_slice(&crc.to_le_bytes());
    total
}

/// Decodes the record at the front of `bytes`; bytes after the record are ignored.
pub fn decode_record(bytes: &[u8]) -> Result<Record<'_>, DecodeError> {
    let header = bytes
        .get(..RECORD_HEADER_LEN)
        .ok_or(DecodeError::ShortHeader)?;
    if read_u32(header, 0) != RECORD_MAGIC {
        return Err(DecodeError::BadMagic);
    }

    let key_len = read_u32(header, 8) as usize;
    let value_len = read_u32(header, 12) as usize;
    let value_end = RECORD_HEADER_LEN
        .checked_add(key_len)
        .and_then(|n| n.checked_add(value_len))
        .ok_or(DecodeError::Truncated {
            needed: usize::MAX,
            available: bytes.len(),
        })?;
    if value_end > bytes.len() {
        return Err(DecodeError::Truncated {
            needed: value_end,
            available: bytes.len(),
        });
    }

    if crc32fast::hash(&bytes[8..value_end]) != read_u32(header, 4) {
        return Err(DecodeError::BadChecksum);
    }

    let key_end = RECORD_HEADER_LEN + key_len;
    Ok(Record {
        key: &bytes[RECORD_HEADER_LEN..key_end],
        value: &bytes[key_end..value_end],
        created_ms: read_u64(header, 16),
        ttl_ms: read_u64(header, 24),
    })
}

fn len_u32(len: usize) -> u32 {
    // Callers check sizes against the segment size, which is far below 4 GiB.
    u32::try_from(len).unwrap_or(u32::MAX)
}

pub(crate) fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

pub(crate) fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zeroed_bytes_are_never_a_record() {
        assert_eq!(decode_record(&[0u8; 256]), Err(DecodeError::BadMagic));
        let mut bytes = encoded(b"key", b"value");
        // A page boundary inside the value: the tail reads zeros, so the checksum fails.
        bytes[36..40].fill(0);
        assert_eq!(decode_record(&bytes), Err(DecodeError::BadChecksum));
    }

    fn encoded(key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut buf = vec![0xAA; record_len(key.len(), value.len()) + 5];
        let n = encode_record(&mut buf, key, value, 1_000, 50);
        assert_eq!(n, record_len(key.len(), value.len()));
        buf
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let buf = encoded(b"calc_shipping", b"{\"eur\":4.9}");
        let rec = decode_record(&buf).unwrap();
        assert_eq!(rec.key, b"calc_shipping");
        assert_eq!(rec.value, b"{\"eur\":4.9}");
        assert_eq!((rec.created_ms, rec.ttl_ms), (1_000, 50));
        assert!(rec.is_fresh(1_049));
        assert!(!rec.is_fresh(1_050));
    }

    #[test]
    fn lengths_are_padded_to_eight() {
        assert_eq!(record_len(0, 0), 32);
        assert_eq!(record_len(1, 0), 40);
        assert_eq!(record_len(4, 4), 40);
        assert_eq!(record_len(5, 4), 48);
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let buf = encoded(b"k", b"value");
        let len = record_len(1, 5) - 2; // the last bytes are padding, which is not covered
        for byte in 0..len {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    decode_record(&bad).is_err(),
                    "flip at byte {byte} bit {bit} passed"
                );
            }
        }
    }

    #[test]
    fn a_cut_record_is_truncated() {
        let buf = encoded(b"key", b"a longer value");
        let cut = &buf[..RECORD_HEADER_LEN + 5];
        assert!(matches!(
            decode_record(cut),
            Err(DecodeError::Truncated { .. })
        ));
        assert_eq!(decode_record(&buf[..10]), Err(DecodeError::ShortHeader));
        assert_eq!(decode_record(&[0u8; 64]), Err(DecodeError::BadMagic));
    }

    #[test]
    fn huge_lengths_do_not_overflow() {
        let mut buf = encoded(b"k", b"v");
        buf[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        buf[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_record(&buf),
            Err(DecodeError::Truncated { .. })
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_record(&bytes);
        }

        #[test]
        fn round_trip(key in proptest::collection::vec(any::<u8>(), 0..64),
                      value in proptest::collection::vec(any::<u8>(), 0..300),
                      created in any::<u64>(), ttl in any::<u64>()) {
            let mut buf = vec![0u8; record_len(key.len(), value.len())];
            encode_record(&mut buf, &key, &value, created, ttl);
            let rec = decode_record(&buf).unwrap();
            prop_assert_eq!(rec.key, &key[..]);
            prop_assert_eq!(rec.value, &value[..]);
            prop_assert_eq!((rec.created_ms, rec.ttl_ms), (created, ttl));
        }
    }
}
