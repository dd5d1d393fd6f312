//! Unit tests of the store engine: write errors and removals.

use super::*;

fn engine(dir: &Path) -> Engine {
    Engine::open(dir, "t", StoreKind::Results, 1 << 20, 0)
        .unwrap()
        .0
}

#[test]
fn a_write_error_is_returned_once_and_then_puts_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = engine(dir.path());
    store.put(b"kept", b"v", 0, 1_000).unwrap();

    let error = || StoreError::Io {
        op: "flush",
        path: "x".into(),
        source: std::io::Error::from_raw_os_error(libc::ENOSPC),
    };
    assert!(store.fail_write(error()).is_err());
    assert!(store.fail_write(error()).is_ok());
    store.put(b"dropped", b"v", 0, 1_000).unwrap();

    let stats = store.stats();
    assert!(stats.disabled);
    assert_eq!(stats.write_errors, 2);
    assert_eq!(store.get(b"kept", 1), Some(b"v".to_vec()));
    assert_eq!(store.get(b"dropped", 1), None);
}

#[test]
fn removals_keep_probe_chains_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = engine(dir.path());
    let keys: Vec<Vec<u8>> = (0..2_000u32).map(|i| i.to_le_bytes().to_vec()).collect();
    for key in &keys {
        store.put(key, key, 0, 1_000).unwrap();
    }
    for key in keys.iter().step_by(2) {
        store.remove(key);
    }
    for (i, key) in keys.iter().enumerate() {
        let expected = (i % 2 == 1).then(|| key.clone());
        assert_eq!(store.get(key, 1), expected, "key {i}");
    }
    assert_eq!(store.stats().entries, 1_000);
}
