//! Fuzzes the store's record decoder: arbitrary bytes decode to a record or an error, never a
//! panic; and a record built from the input, with one byte of it changed, is either refused or
//! decodes to exactly what was written — a damaged result is never served.

#![no_main]

use libfuzzer_sys::fuzz_target;
use precog::store::{decode_record, encode_record, record_len};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = decode_record(data) {
        assert!(32 + r.key.len() + r.value.len() <= data.len());
    }

    // Input: [split, flip_at_lo, flip_at_hi, xor, rest...]; rest is cut into key and value.
    let [split, lo, hi, xor, rest @ ..] = data else {
        return;
    };
    let split = usize::from(*split).min(rest.len());
    let (key, value) = rest.split_at(split);
    let mut buf = vec![0u8; record_len(key.len(), value.len())];
    let written = encode_record(&mut buf, key, value, 1_700_000_000_000, 60_000);
    assert_eq!(written, buf.len());
    let whole = decode_record(&buf).expect("a record just written decodes");
    assert_eq!((whole.key, whole.value), (key, value));

    let at = usize::from(u16::from_le_bytes([*lo, *hi])) % buf.len();
    buf[at] ^= xor.max(&1);
    if let Ok(r) = decode_record(&buf) {
        assert_eq!((r.key, r.value), (key, value), "a damaged record decoded");
        assert_eq!((r.created_ms, r.ttl_ms), (1_700_000_000_000, 60_000));
    }
});
