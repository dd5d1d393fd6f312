//! Property tests of the store's record decoder: arbitrary bytes never panic it, records round
//! trip, and a record with any one byte changed is refused or decodes unchanged.

use precog::store::{decode_record, encode_record, record_len};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(r) = decode_record(&bytes) {
            prop_assert!(32 + r.key.len() + r.value.len() <= bytes.len());
        }
    }

    #[test]
    fn a_changed_byte_is_refused_or_harmless(
        key in prop::collection::vec(any::<u8>(), 0..64),
        value in prop::collection::vec(any::<u8>(), 0..256),
        created in any::<u64>(),
        ttl in any::<u64>(),
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let mut buf = vec![0u8; record_len(key.len(), value.len())];
        encode_record(&mut buf, &key, &value, created, ttl);
        let r = decode_record(&buf).unwrap();
        prop_assert_eq!(
            (r.key, r.value, r.created_ms, r.ttl_ms),
            (&key[..], &value[..], created, ttl)
        );

        let at = at.index(buf.len());
        buf[at] ^= xor;
        if let Ok(r) = decode_record(&buf) {
            prop_assert_eq!(
                (r.key, r.value, r.created_ms, r.ttl_ms),
                (&key[..], &value[..], created, ttl)
            );
        }
    }

    #[test]
    fn a_cut_record_is_refused(
        key in prop::collection::vec(any::<u8>(), 1..64),
        value in prop::collection::vec(any::<u8>(), 1..256),
        keep in any::<prop::sample::Index>(),
    ) {
        let mut buf = vec![0u8; record_len(key.len(), value.len())];
        encode_record(&mut buf, &key, &value, 1, 1);
        let keep = keep.index(32 + key.len() + value.len());
        prop_assert!(decode_record(&buf[..keep]).is_err());
    }
}
