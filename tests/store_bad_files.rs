//! Files that cannot be trusted at open: each is set aside under `<name>.bad-<seconds>` and an
//! empty store takes its place, or, for a damaged record, only that record is dropped.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use precog::store::{CacheKey, ResultCache, StateStore};

const CAPACITY: u64 = 2 << 20;

fn cache_file(dir: &Path) -> PathBuf {
    dir.join("results.db")
}

fn set_aside_files(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("results.db.bad-"))
        .collect();
    found.sort();
    found
}

fn key(n: u32) -> String {
    format!("{{\"n\":{n}}}")
}

/// A healthy cache holding ten entries, closed again.
fn healthy_cache(dir: &Path) {
    let (mut cache, _) = ResultCache::open(dir, CAPACITY).unwrap();
    for n in 0..10 {
        let inputs = key(n);
        let k = CacheKey {
            owner: 7,
            process: "p",
            version: 0,
            inputs: &inputs,
        };
        cache
            .put(&k, format!("value {n}").as_bytes(), 0, 1_000_000)
            .unwrap();
    }
    cache.sync().unwrap();
}

/// Opens the cache over a file prepared by `spoil` and checks it was set aside for `reason`.
fn assert_set_aside(spoil: impl FnOnce(&Path), reason: &str) {
    let dir = tempfile::tempdir().unwrap();
    spoil(dir.path());
    let original = fs::read(cache_file(dir.path())).unwrap();

    let (mut cache, set_aside) = ResultCache::open(dir.path(), CAPACITY).unwrap();
    assert_eq!(set_aside.len(), 1, "nothing set aside for {reason}");
    assert!(
        set_aside[0].reason.contains(reason),
        "{:?} is not {reason}",
        set_aside[0].reason
    );
    assert_eq!(set_aside_files(dir.path()), vec![set_aside[0].path.clone()]);
    assert_eq!(
        fs::read(&set_aside[0].path).unwrap(),
        original,
        "set-aside file was changed"
    );

    assert_eq!(cache.stats().entries, 0);
    let inputs = key(0);
    let k = CacheKey {
        owner: 7,
        process: "p",
        version: 0,
        inputs: &inputs,
    };
    assert_eq!(cache.get(&k, 1), None);
    cache.put(&k, b"fresh", 1, 1_000).unwrap();
    assert_eq!(cache.get(&k, 2).as_deref(), Some(&b"fresh"[..]));
}

#[test]
fn an_empty_file_is_set_aside() {
    assert_set_aside(|dir| fs::write(cache_file(dir), b"").unwrap(), "empty");
}

#[test]
fn a_zero_filled_file_is_set_aside() {
    assert_set_aside(
        |dir| fs::write(cache_file(dir), vec![0u8; CAPACITY as usize]).unwrap(),
        "zeros",
    );
}

#[test]
fn a_truncated_file_is_set_aside() {
    assert_set_aside(
        |dir| {
            healthy_cache(dir);
            let file = OpenOptions::new()
                .write(true)
                .open(cache_file(dir))
                .unwrap();
            file.set_len(CAPACITY / 2).unwrap();
        },
        "truncated",
    );
}

#[test]
fn a_file_cut_inside_its_header_is_set_aside() {
    assert_set_aside(
        |dir| {
            healthy_cache(dir);
            let file = OpenOptions::new()
                .write(true)
                .open(cache_file(dir))
                .unwrap();
            file.set_len(100).unwrap();
        },
        "truncated",
    );
}

#[test]
fn a_foreign_file_is_set_aside() {
    assert_set_aside(
        |dir| fs::write(cache_file(dir), b"SQLite format 3\0 and a lot more besides").unwrap(),
        "truncated",
    );
    assert_set_aside(
        |dir| {
            let mut foreign = vec![0x5Au8; CAPACITY as usize];
            foreign[..16].copy_from_slice(b"SQLite format 3\0");
            fs::write(cache_file(dir), foreign).unwrap();
        },
        "not a precog store",
    );
}

#[test]
fn another_format_version_is_set_aside() {
    assert_set_aside(
        |dir| {
            healthy_cache(dir);
            let file = OpenOptions::new()
                .write(true)
                .open(cache_file(dir))
                .unwrap();
            file.write_all_at(&99u32.to_le_bytes(), 8).unwrap();
        },
        "version 99",
    );
}

#[test]
fn a_flipped_header_byte_is_set_aside() {
    assert_set_aside(
        |dir| {
            healthy_cache(dir);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(cache_file(dir))
                .unwrap();
            let mut byte = [0u8];
            file.read_at(&mut byte, 41).unwrap();
            file.write_all_at(&[byte[0] ^ 0x10], 41).unwrap();
        },
        "checksum",
    );
}

#[test]
fn a_state_file_is_not_opened_as_a_cache() {
    assert_set_aside(
        |dir| {
            StateStore::open(dir, CAPACITY, 1024).unwrap();
            fs::rename(dir.join("states.db"), cache_file(dir)).unwrap();
        },
        "other kind",
    );
}

#[test]
fn a_changed_capacity_starts_an_empty_cache() {
    let dir = tempfile::tempdir().unwrap();
    healthy_cache(dir.path());
    let (cache, set_aside) = ResultCache::open(dir.path(), 2 * CAPACITY).unwrap();
    assert_eq!(set_aside.len(), 1);
    assert!(set_aside[0].reason.contains("capacity changed"));
    assert_eq!(cache.stats().entries, 0);
    assert_eq!(
        fs::metadata(cache_file(dir.path())).unwrap().len(),
        2 * CAPACITY
    );
}

#[test]
fn only_the_latest_file_set_aside_is_kept() {
    // A cache resized at each restart is set aside each time, whole: kept all, the files would
    // fill the disk the cache is on.
    let dir = tempfile::tempdir().unwrap();
    healthy_cache(dir.path());
    let aside = |dir: &Path| {
        fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("results.db.bad-")
            })
            .count()
    };
    for round in 0..4u64 {
        let capacity = if round % 2 == 0 {
            2 * CAPACITY
        } else {
            CAPACITY
        };
        let (cache, set_aside) = ResultCache::open(dir.path(), capacity).unwrap();
        drop(cache);
        assert_eq!(set_aside.len(), 1, "round {round}");
        assert_eq!(
            set_aside[0].removed.len(),
            usize::from(round > 0),
            "round {round}"
        );
        assert_eq!(aside(dir.path()), 1, "round {round}");
        assert!(set_aside[0].path.exists(), "round {round}");
    }
}

#[test]
fn a_flipped_record_byte_drops_that_record_only() {
    let dir = tempfile::tempdir().unwrap();
    healthy_cache(dir.path());

    // Find the record holding "value 3" and flip a byte of its value.
    let bytes = fs::read(cache_file(dir.path())).unwrap();
    let at = bytes
        .windows(7)
        .position(|w| w == b"value 3")
        .expect("record not found");
    let file = OpenOptions::new()
        .write(true)
        .open(cache_file(dir.path()))
        .unwrap();
    file.write_all_at(b"V", at as u64).unwrap();
    drop(file);

    let (mut cache, set_aside) = ResultCache::open(dir.path(), CAPACITY).unwrap();
    assert!(set_aside.is_empty());
    for n in 0..10 {
        let inputs = key(n);
        let got = cache.get(
            &CacheKey {
                owner: 7,
                process: "p",
                version: 0,
                inputs: &inputs,
            },
            1,
        );
        if n == 3 {
            assert_eq!(got, None, "damaged record was served");
        } else {
            assert_eq!(got, Some(format!("value {n}").into_bytes()));
        }
    }
    let stats = cache.stats();
    assert_eq!((stats.damaged_dropped, stats.entries), (1, 9));
}

#[test]
fn a_scrambled_index_loses_entries_but_never_serves_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    healthy_cache(dir.path());
    let bytes = fs::read(cache_file(dir.path())).unwrap();
    // Swap the locations of every pair of used index slots: each key now points at another's
    // record, which carries the wrong key.
    let file = OpenOptions::new()
        .write(true)
        .open(cache_file(dir.path()))
        .unwrap();
    let index_at = 4096 * 2;
    let used: Vec<usize> = (0..8192)
        .map(|i| index_at + i * 16)
        .filter(|&at| bytes[at..at + 8] != [0u8; 8])
        .collect();
    assert_eq!(used.len(), 10);
    for pair in used.chunks(2) {
        file.write_all_at(&bytes[pair[1] + 8..pair[1] + 16], pair[0] as u64 + 8)
            .unwrap();
        file.write_all_at(&bytes[pair[0] + 8..pair[0] + 16], pair[1] as u64 + 8)
            .unwrap();
    }
    drop(file);

    let (mut cache, _) = ResultCache::open(dir.path(), CAPACITY).unwrap();
    for n in 0..10 {
        let inputs = key(n);
        let got = cache.get(
            &CacheKey {
                owner: 7,
                process: "p",
                version: 0,
                inputs: &inputs,
            },
            1,
        );
        assert_eq!(got, None, "key {n} served another key's value");
    }
}

#[test]
fn a_symlink_planted_for_the_lock_file_is_refused_with_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("elsewhere");
    fs::write(&target, b"not precog's").unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join("results.lock")).unwrap();

    let Err(e) = ResultCache::open(dir.path(), CAPACITY) else {
        panic!("a symlinked lock file was followed");
    };
    let text = e.with_causes();
    let os_cause = std::io::Error::from_raw_os_error(libc::ELOOP).to_string();
    assert!(
        text.contains("results.lock") && text.ends_with(&os_cause),
        "{text}"
    );
    assert_eq!(fs::read(&target).unwrap(), b"not precog's");
}

#[test]
fn a_symlink_planted_for_the_store_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("elsewhere");
    fs::write(&target, b"not precog's").unwrap();
    std::os::unix::fs::symlink(&target, cache_file(dir.path())).unwrap();

    assert!(ResultCache::open(dir.path(), CAPACITY).is_err());
    assert_eq!(fs::read(&target).unwrap(), b"not precog's");
}
