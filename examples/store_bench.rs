//! Store benchmark: fills a 1 GiB result cache with small results, then prints writes per
//! second, lookups (hash, probe, checksum, copy) per second, and how long reopening the full
//! cache takes. Run with `cargo run --release --example store_bench [dir]`; the directory
//! defaults to a temporary one, which is removed afterwards.

use std::path::PathBuf;
use std::time::Instant;

use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
use nix::sys::resource::{UsageWho, getrusage};
use precog::store::{CacheKey, ResultCache};

const CAPACITY: u64 = 1 << 30;
const VALUE_LEN: usize = 300;
const LOOKUPS: usize = 3_000_000;

fn inputs(n: u64) -> String {
    format!(
        "{{\"cart_weight_g\":{},\"postal_code\":\"{:05}\"}}",
        n % 20_000,
        n % 99_991
    )
}

fn main() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| temp.path().join("cache"), PathBuf::from);
    let value = vec![b'x'; VALUE_LEN];

    let started = Instant::now();
    let (mut cache, _) = ResultCache::open(&dir, CAPACITY)?;
    println!(
        "create 1 GiB cache (fallocate + map): {:.1} ms",
        ms(started)
    );

    // Precomputed key strings, so the figures measure the store and not string formatting.
    let key_count = 2_600_000u64;
    let keys: Vec<String> = (0..key_count).map(inputs).collect();
    let key = |n: usize| CacheKey {
        owner: 1000,
        process: "calc_shipping",
        version: 0,
        inputs: &keys[n],
    };

    let mut failed = None;
    measure("writes of 300-byte results", keys.len(), || {
        for n in 0..keys.len() {
            if let Err(e) = cache.put(&key(n), &value, 0, u64::MAX / 2) {
                failed.get_or_insert(e);
            }
        }
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    let stats = cache.stats();
    println!(
        "  cache now: {} entries, {} MiB of records, {} evicted",
        stats.entries,
        stats.bytes_used >> 20,
        stats.evicted
    );

    // Lookups of resident keys in a scattered order.
    let resident: Vec<usize> = (0..keys.len())
        .filter(|&n| cache.get(&key(n), 1).is_some())
        .collect();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let order: Vec<usize> = (0..LOOKUPS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            resident[(x % resident.len() as u64) as usize]
        })
        .collect();
    let mut bytes = 0;
    measure("lookups+reads, scattered over 1 GiB", LOOKUPS, || {
        for &n in &order {
            bytes += cache.get(&key(n), 1).map_or(0, |v| v.len());
        }
    });
    // Working sets of recent results, as when visitors come back to the same steps.
    for hot_len in [20_000, 1_000] {
        let hot: Vec<usize> = order.iter().take(hot_len).copied().collect();
        measure(
            &format!("lookups+reads, {hot_len} hot results"),
            LOOKUPS,
            || {
                for i in 0..LOOKUPS {
                    bytes += cache
                        .get(&key(hot[i % hot.len()]), 1)
                        .map_or(0, |v| v.len());
                }
            },
        );
    }
    // Most hits come soon after the write: the newest results, read in a scattered order.
    let newest: Vec<usize> = (0..20_000)
        .map(|i| order[i] % 20_000 + keys.len() - 20_000)
        .collect();
    measure("lookups+reads, 20000 newest results", LOOKUPS, || {
        for i in 0..LOOKUPS {
            bytes += cache
                .get(&key(newest[i % newest.len()]), 1)
                .map_or(0, |v| v.len());
        }
    });
    println!("  {} MiB read", bytes >> 20);

    let started = Instant::now();
    cache.sync()?;
    println!("sync (msync of the whole mapping): {:.1} ms", ms(started));
    drop(cache);

    let started = Instant::now();
    let (mut cache, set_aside) = ResultCache::open(&dir, CAPACITY)?;
    let reopen = ms(started);
    let first = cache.get(&key(resident[resident.len() / 2]), 1).is_some();
    println!(
        "reopen full 1 GiB cache ({} entries, page cache warm): {reopen:.1} ms, \
         first lookup hit: {first}, set aside: {}",
        cache.stats().entries,
        set_aside.len()
    );
    drop(cache);

    // The same again with the file's pages dropped from the page cache (they are clean after
    // the sync), as after a reboot; this touches no other file's cache.
    let file = std::fs::File::open(dir.join("results.db"))?;
    file.sync_all()?;
    posix_fadvise(&file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED)?;
    let started = Instant::now();
    let (mut cache, _) = ResultCache::open(&dir, CAPACITY)?;
    let reopen = ms(started);
    let started = Instant::now();
    let hits = resident
        .iter()
        .step_by(2_500)
        .filter(|&&n| cache.get(&key(n), 1).is_some());
    let hits = hits.count();
    println!(
        "reopen full 1 GiB cache, its pages not in memory: {reopen:.1} ms; then {hits} \
         scattered cold lookups took {:.1} ms",
        ms(started)
    );
    Ok(())
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// CPU seconds this thread has used: on a shared machine the wall clock also counts the time
/// other processes had the CPU, so rates are printed per wall second and per CPU second.
fn cpu_seconds() -> f64 {
    getrusage(UsageWho::RUSAGE_THREAD).map_or(0.0, |u| {
        let (user, system) = (u.user_time(), u.system_time());
        let micros =
            (user.tv_sec() + system.tv_sec()) * 1_000_000 + user.tv_usec() + system.tv_usec();
        micros as f64 / 1e6
    })
}

/// Runs `work` over `count` items and prints its rate per wall second and per CPU second.
fn measure(what: &str, count: usize, work: impl FnOnce()) {
    let (wall, cpu) = (Instant::now(), cpu_seconds());
    work();
    let (wall, cpu) = (wall.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    println!(
        "{what}: {count} in {wall:.2} s = {:.0}/s wall, {:.0}/s per CPU second",
        count as f64 / wall,
        count as f64 / cpu.max(1e-9)
    );
}
