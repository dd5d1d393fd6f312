//! Crash safety, black-box: a writer process is killed with SIGKILL at random moments, fifty
//! times, and after each kill every result read back is either absent or exactly what was
//! written. The writer is this test binary re-executed with `PRECOG_STORE_CRASH_DIR` set.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use precog::store::{CacheKey, ResultCache, StateStore};

const DIR_VAR: &str = "PRECOG_STORE_CRASH_DIR";
const SEED_VAR: &str = "PRECOG_STORE_CRASH_SEED";
const KEYS: u64 = 3_000;
const CACHE_CAPACITY: u64 = 1 << 20;
const STATE_CAPACITY: u64 = 2 << 20;
const NOW_MS: u64 = 1_000;
const TTL_MS: u64 = 1 << 40;

fn inputs_for(k: u64) -> String {
    format!("{{\"k\":{k}}}")
}

fn process_for(k: u64) -> String {
    format!("process_{}", k % 7)
}

/// What the writer stores under key `k`: the checker can rebuild it from `k` alone.
fn value_for(k: u64) -> Vec<u8> {
    let len = 1 + (k * 7_919 % 1_500) as usize;
    (0..len)
        .map(|j| ((k as usize * 31 + j) % 251) as u8)
        .collect()
}

fn state_key(k: u64) -> Vec<u8> {
    format!("job:{k}").into_bytes()
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The writer: runs only when re-executed by the crash test, and never returns.
#[test]
fn crash_writer_child() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let seed = std::env::var(SEED_VAR)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let dir = Path::new(&dir);
    let (mut cache, _) = ResultCache::open(&dir.join("cache"), CACHE_CAPACITY).unwrap();
    let (mut states, _) = StateStore::open(&dir.join("state"), STATE_CAPACITY, 4096).unwrap();
    println!("ready");
    std::io::stdout().flush().unwrap();

    let mut rng = Rng(seed | 1);
    let started = std::time::Instant::now();
    for round in 0u64.. {
        // A writer whose test died must not run on forever.
        if round % 1024 == 0 && started.elapsed() > Duration::from_secs(60) {
            std::process::exit(3);
        }
        let k = rng.next() % KEYS;
        let (inputs, process) = (inputs_for(k), process_for(k));
        let key = CacheKey {
            owner: (k % 5) as u32,
            process: &process,
            version: 0,
            inputs: &inputs,
        };
        match rng.next() % 20 {
            0 => cache.remove(&key),
            1 => states.remove(&state_key(k)),
            2..=5 => states
                .put(&state_key(k), &value_for(k)[..], NOW_MS, TTL_MS)
                .unwrap(),
            _ => cache.put(&key, &value_for(k), NOW_MS, TTL_MS).unwrap(),
        }
        if round % 4 == 0 {
            cache.get(&key, NOW_MS);
        }
    }
}

fn check(dir: &Path) -> (u64, u64) {
    let (mut cache, set_aside) = ResultCache::open(&dir.join("cache"), CACHE_CAPACITY).unwrap();
    assert!(
        set_aside.is_empty(),
        "a killed writer left a file that was set aside: {set_aside:?}"
    );
    let (mut states, set_aside) =
        StateStore::open(&dir.join("state"), STATE_CAPACITY, 4096).unwrap();
    assert!(
        set_aside.is_empty(),
        "a killed writer left a file that was set aside: {set_aside:?}"
    );

    let (mut results, mut checkpoints) = (0, 0);
    for k in 0..KEYS {
        let (inputs, process) = (inputs_for(k), process_for(k));
        let key = CacheKey {
            owner: (k % 5) as u32,
            process: &process,
            version: 0,
            inputs: &inputs,
        };
        if let Some(value) = cache.get(&key, NOW_MS) {
            assert_eq!(value, value_for(k), "result {k} came back different");
            results += 1;
        }
        if let Some(value) = states.get(&state_key(k), NOW_MS) {
            assert_eq!(value, value_for(k), "checkpoint {k} came back different");
            checkpoints += 1;
        }
    }
    let stats = cache.stats();
    assert!(stats.bytes_used <= stats.capacity);
    assert_eq!(
        stats.entries, results,
        "entries left that no key reaches: {stats:?}"
    );
    (results, checkpoints)
}

#[test]
fn killed_writers_never_leave_wrong_results() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = Rng(start | 1);
    let (mut results, mut checkpoints) = (0, 0);

    for round in 0..50 {
        let mut child = Command::new(&exe)
            .args([
                "crash_writer_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_VAR, dir.path())
            .env(SEED_VAR, rng.next().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();

        // Every tenth writer dies while it may still be opening or creating its files.
        if round % 10 != 0 {
            let mut line = String::new();
            let mut out = BufReader::new(child.stdout.take().unwrap());
            while !line.contains("ready") {
                line.clear();
                assert!(
                    out.read_line(&mut line).unwrap() > 0,
                    "writer exited: {line}"
                );
            }
            std::thread::sleep(Duration::from_micros(500 + rng.next() % 40_000));
        } else {
            std::thread::sleep(Duration::from_micros(rng.next() % 3_000));
        }
        // The child is not reaped yet, so its pid cannot have been reused.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "writer ended by itself in round {round}: {status}"
        );

        let (r, c) = check(dir.path());
        results += r;
        checkpoints += c;
    }
    assert!(
        results > 0 && checkpoints > 0,
        "no writer got anything stored"
    );
    println!("after 50 kills: {results} results and {checkpoints} checkpoints read back intact");
}
