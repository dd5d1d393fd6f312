//! The result cache and state store as the daemon uses them: round trips, expiry, eviction
//! within capacity, counters that add up, persistence across reopen and the single-owner lock.

use precog::store::{CacheKey, ResultCache, StateStore, StoreError, canonical_json};
use serde_json::json;

const MIB: u64 = 1 << 20;

fn key(owner: u32, n: u64) -> (u32, String) {
    (
        owner,
        canonical_json(&json!({"sku": n, "postal_code": "75001"})),
    )
}

#[test]
fn results_round_trip_per_owner_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = canonical_json(&json!({"postal_code": "75001", "cart_weight_g": 1200}));
    let alice = CacheKey {
        owner: 1000,
        process: "calc_shipping",
        version: 0,
        inputs: &inputs,
    };
    let bob = CacheKey {
        owner: 1001,
        ..alice
    };
    {
        let (mut cache, set_aside) = ResultCache::open(dir.path(), 2 * MIB).unwrap();
        assert!(set_aside.is_empty());
        cache.put(&alice, br#"{"eur":4.9}"#, 1_000, 60_000).unwrap();
        assert_eq!(
            cache.get(&alice, 1_001).as_deref(),
            Some(&br#"{"eur":4.9}"#[..])
        );
        assert_eq!(cache.get(&bob, 1_001), None);
        cache.sync().unwrap();
    }
    let (mut cache, set_aside) = ResultCache::open(dir.path(), 2 * MIB).unwrap();
    assert!(set_aside.is_empty());
    assert_eq!(cache.stats().entries, 1);
    assert_eq!(
        cache.get(&alice, 2_000).as_deref(),
        Some(&br#"{"eur":4.9}"#[..])
    );

    cache.put(&alice, b"newer", 2_000, 60_000).unwrap();
    assert_eq!(cache.get(&alice, 2_001).as_deref(), Some(&b"newer"[..]));
    assert_eq!(cache.stats().entries, 1);
    cache.remove(&alice);
    assert_eq!(cache.get(&alice, 2_002), None);
}

#[test]
fn expired_results_are_not_served_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cache, _) = ResultCache::open(dir.path(), 2 * MIB).unwrap();
    let k = CacheKey {
        owner: 0,
        process: "apply_coupon",
        version: 0,
        inputs: "{}",
    };
    cache.put(&k, b"ok", 10_000, 500).unwrap();
    assert!(cache.get(&k, 10_499).is_some());
    assert_eq!(cache.get(&k, 10_500), None);
    let stats = cache.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.expired, stats.entries),
        (1, 1, 1, 0)
    );
}

#[test]
fn purge_expired_drops_whole_expired_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cache, _) = ResultCache::open(dir.path(), 2 * MIB).unwrap();
    let value = vec![7u8; 1000];
    for n in 0..400 {
        let (owner, inputs) = key(1, n);
        let k = CacheKey {
            owner,
            process: "check_inventory",
            version: 0,
            inputs: &inputs,
        };
        cache.put(&k, &value, 0, 1_000).unwrap();
    }
    let before = cache.stats().entries;
    let purged = cache.purge_expired(5_000);
    assert!(purged > 0, "nothing purged");
    assert_eq!(cache.stats().entries, before - purged);
    assert_eq!(cache.stats().expired, purged);
}

#[test]
fn eviction_keeps_the_store_within_capacity_and_the_counters_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let capacity = 2 * MIB;
    let (mut cache, _) = ResultCache::open(dir.path(), capacity).unwrap();
    let mut added = 0;
    for n in 0..20_000u64 {
        let (owner, inputs) = key((n % 3) as u32, n);
        let k = CacheKey {
            owner,
            process: "check_inventory",
            version: 0,
            inputs: &inputs,
        };
        let value = vec![(n % 251) as u8; 100 + (n % 700) as usize];
        cache.put(&k, &value, n, 1_000_000).unwrap();
        added += 1;
        let stats = cache.stats();
        assert!(
            stats.bytes_used <= capacity,
            "{} bytes used",
            stats.bytes_used
        );
    }
    assert_eq!(std::fs::metadata(cache.path()).unwrap().len(), capacity);

    let stats = cache.stats();
    assert!(stats.evicted > 0, "nothing was evicted: {stats:?}");
    assert_eq!(
        stats.entries + stats.evicted + stats.expired + stats.removed,
        added
    );

    // The newest entries are there, the oldest are gone, and whatever is there is right.
    let mut found = 0;
    for n in 0..20_000u64 {
        let (owner, inputs) = key((n % 3) as u32, n);
        let k = CacheKey {
            owner,
            process: "check_inventory",
            version: 0,
            inputs: &inputs,
        };
        if let Some(v) = cache.get(&k, 20_000) {
            assert_eq!(v, vec![(n % 251) as u8; 100 + (n % 700) as usize]);
            found += 1;
        }
    }
    assert_eq!(found, cache.stats().entries);
    let (owner, inputs) = key((19_999 % 3) as u32, 19_999);
    let newest = CacheKey {
        owner,
        process: "check_inventory",
        version: 0,
        inputs: &inputs,
    };
    assert!(cache.get(&newest, 20_000).is_some());
    let stats = cache.stats();
    assert_eq!(stats.hits + stats.misses, 20_001);
}

#[test]
fn results_read_between_laps_outlive_unread_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cache, _) = ResultCache::open(dir.path(), 2 * MIB).unwrap();
    let value = vec![1u8; 500];
    let forever = u64::MAX / 2;
    let hot: Vec<_> = (0..50).map(|n| key(9, n)).collect();
    let cold: Vec<_> = (100..150).map(|n| key(9, n)).collect();
    for (owner, inputs) in hot.iter().chain(&cold) {
        cache
            .put(
                &CacheKey {
                    owner: *owner,
                    process: "p",
                    version: 0,
                    inputs,
                },
                &value,
                0,
                forever,
            )
            .unwrap();
    }

    let read_hot = |cache: &mut ResultCache| {
        hot.iter()
            .filter(|(owner, inputs)| {
                let k = CacheKey {
                    owner: *owner,
                    process: "p",
                    version: 0,
                    inputs,
                };
                cache.get(&k, 1).is_some()
            })
            .count()
    };
    // About three laps of the file; the hot results are read once per half lap.
    for n in 1_000..12_000 {
        if n % 1_500 == 0 {
            assert_eq!(
                read_hot(&mut cache),
                hot.len(),
                "at {n}: {:?}",
                cache.stats()
            );
        }
        let (owner, inputs) = key(9, n);
        cache
            .put(
                &CacheKey {
                    owner,
                    process: "p",
                    version: 0,
                    inputs: &inputs,
                },
                &value,
                2,
                forever,
            )
            .unwrap();
    }
    assert_eq!(read_hot(&mut cache), hot.len(), "read results were evicted");
    let cold_kept = cold
        .iter()
        .filter(|(owner, inputs)| {
            cache
                .get(
                    &CacheKey {
                        owner: *owner,
                        process: "p",
                        version: 0,
                        inputs,
                    },
                    3,
                )
                .is_some()
        })
        .count();
    assert_eq!(cold_kept, 0, "unread results outlived three laps");
}

#[test]
fn clear_empties_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cache, _) = ResultCache::open(dir.path(), 2 * MIB).unwrap();
    let k = CacheKey {
        owner: 0,
        process: "p",
        version: 0,
        inputs: "{}",
    };
    cache.put(&k, b"v", 0, 1_000).unwrap();
    cache.clear().unwrap();
    assert_eq!(cache.get(&k, 1), None);
    assert_eq!(cache.stats().entries, 0);
    cache.put(&k, b"w", 0, 1_000).unwrap();
    assert_eq!(cache.get(&k, 1).as_deref(), Some(&b"w"[..]));
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = ResultCache::open(dir.path(), 2 * MIB).unwrap();
    let second = ResultCache::open(dir.path(), 2 * MIB);
    assert!(
        matches!(second, Err(StoreError::Locked { .. })),
        "second open was not refused"
    );
    drop(first);
    assert!(ResultCache::open(dir.path(), 2 * MIB).is_ok());
}

#[test]
fn the_directory_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("cache/precog");
    let _cache = ResultCache::open(&dir, 2 * MIB).unwrap();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn bad_sizes_are_refused_with_their_limits() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        ResultCache::open(dir.path(), 4096),
        Err(StoreError::CapacityTooSmall { .. })
    ));
    let (mut cache, _) = ResultCache::open(dir.path(), 2 * MIB).unwrap();
    let k = CacheKey {
        owner: 0,
        process: "p",
        version: 0,
        inputs: "{}",
    };
    let huge = vec![0u8; cache.max_record()];
    assert!(matches!(
        cache.put(&k, &huge, 0, 1),
        Err(StoreError::TooLarge { .. })
    ));
    assert!(!cache.stats().disabled);
}

#[test]
fn checkpoints_keep_the_latest_and_respect_the_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (mut states, _) = StateStore::open(dir.path(), 4 * MIB, 64 * 1024).unwrap();
    states
        .put(b"job:calc_shipping:75001", b"step1", 0, 10_000)
        .unwrap();
    states
        .put(b"job:calc_shipping:75001", b"step2", 1, 10_000)
        .unwrap();
    assert_eq!(
        states.get(b"job:calc_shipping:75001", 2).as_deref(),
        Some(&b"step2"[..])
    );

    let too_big = vec![0u8; 64 * 1024 + 1];
    let refused = states.put(b"job:x", &too_big, 0, 10_000);
    assert!(matches!(refused, Err(StoreError::TooLarge { .. })));
    states
        .put(b"job:x", &too_big[..64 * 1024], 0, 10_000)
        .unwrap();
    assert_eq!(states.get(b"job:x", 1).map(|v| v.len()), Some(64 * 1024));

    states.remove(b"job:x");
    assert_eq!(states.get(b"job:x", 1), None);
    assert_eq!(states.stats().entries, 1);
    assert!(states.get(b"job:calc_shipping:75001", 10_000).is_some());
    assert_eq!(states.get(b"job:calc_shipping:75001", 10_001), None);
}

#[test]
fn cache_and_state_files_can_share_a_directory_but_not_a_kind() {
    let dir = tempfile::tempdir().unwrap();
    let (_cache, _) = ResultCache::open(dir.path(), 2 * MIB).unwrap();
    let (_states, set_aside) = StateStore::open(dir.path(), 4 * MIB, 64 * 1024).unwrap();
    assert!(set_aside.is_empty());
}

#[test]
fn expired_checkpoints_are_removed_and_fresh_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (mut states, _) = StateStore::open(dir.path(), 4 * MIB, 4096).unwrap();
    let checkpoint = vec![3u8; 3000];
    for n in 0..2_000u32 {
        let ttl = if n < 1_000 { 100 } else { 1_000_000 };
        states
            .put(format!("job:{n}").as_bytes(), &checkpoint, 0, ttl)
            .unwrap();
    }
    let before = states.stats().entries;
    let removed = states.remove_expired(1_000);
    assert!(removed > 0, "no expired checkpoint was removed");
    assert_eq!(states.stats().entries, before - removed);
    for n in 1_000..2_000u32 {
        let got = states.get(format!("job:{n}").as_bytes(), 1_000);
        assert!(got.is_none() || got == Some(checkpoint.clone()));
    }
    assert_eq!(states.get(b"job:1999", 1_000), Some(checkpoint));
    assert_eq!(states.get(b"job:0", 1_000), None);
}
