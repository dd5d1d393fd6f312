//! The daemon killed with SIGKILL while it writes results, twenty times: each time it restarts
//! on the same cache, and every result it serves afterwards — from the cache or fresh — is
//! exactly the answer to the request, never a damaged or mixed-up record.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Daemon, have_python, skip_unless, worker};
use serde_json::{Value, json};

const ROUNDS: u64 = 20;
/// Distinct jobs each round writes; later rounds read earlier rounds' results back.
const JOBS_PER_ROUND: u64 = 400;

fn config() -> String {
    format!(
        r#"
[[pool]]
name = "shop"
warm_min = 0

[[pool]]
name = "t"
command = ["python3", "{echo}"]
warm_min = 2
workers_max = 2
timeout = "5s"

[[process]]
name = "echo"
pool = "t"
inputs = ["x", "pad"]
idempotent = true
"#,
        echo = worker("echo.py")
    )
}

/// The inputs of job `x`: a result of a few KiB whose every byte depends on `x`.
fn inputs(x: u64) -> Value {
    json!({"x": x, "pad": format!("{x:06}-").repeat(300)})
}

fn run(x: u64) -> Value {
    json!({"id": x, "op": "run", "session": "crash", "process": "echo", "inputs": inputs(x)})
}

/// Checks one reply: an error is allowed (the daemon may be starting), a wrong result is not.
fn check(reply: &Value, x: u64) -> Result<bool, String> {
    if reply["ok"] != json!(true) {
        return Ok(false);
    }
    if reply["id"] != json!(x) || reply["result"]["echo"] != inputs(x) {
        return Err(format!(
            "job {x} was answered with another result: {reply:.300}"
        ));
    }
    Ok(reply["served"] == json!("cache"))
}

/// Pipelines jobs `from..to` over fresh connections until `stop`, checking what comes back.
fn write_load(socket: PathBuf, from: u64, to: u64, stop: Arc<AtomicBool>, bad: Arc<AtomicU64>) {
    let mut x = from;
    while !stop.load(Ordering::Relaxed) {
        let Ok(stream) = UnixStream::connect(&socket) else {
            return;
        };
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        let batch: Vec<u64> = (0..20)
            .map(|i| from + (x - from + i) % (to - from))
            .collect();
        x = from + (x - from + 20) % (to - from);
        let mut bytes = Vec::new();
        for &j in &batch {
            bytes.extend(run(j).to_string().bytes());
            bytes.push(b'\n');
        }
        if writer.write_all(&bytes).is_err() {
            return;
        }
        for &j in &batch {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let reply: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if check(&reply, j).is_err() {
                bad.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn verify(socket: &Path, upto: u64) -> (u64, u64) {
    let mut c = common::Conn::open(socket).expect("connect after restart");
    let (mut cached, mut fresh) = (0, 0);
    for x in (0..upto).step_by(3) {
        let reply = c.call(&run(x));
        match check(&reply, x) {
            Ok(true) => cached += 1,
            Ok(false) => fresh += 1,
            Err(e) => panic!("{e}"),
        }
    }
    (cached, fresh)
}

#[test]
fn killed_twenty_times_while_writing_it_never_serves_a_damaged_result() {
    if skip_unless(have_python(), "python3 is not installed") {
        return;
    }
    let mut d = Daemon::start(&config());
    let bad = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let (mut cached_total, mut fresh_total) = (0, 0);
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let from = round * JOBS_PER_ROUND;
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (socket, stop, bad) = (d.socket.clone(), stop.clone(), bad.clone());
                let span = JOBS_PER_ROUND / 4;
                let lo = from + w * span;
                std::thread::spawn(move || write_load(socket, lo, lo + span, stop, bad))
            })
            .collect();
        // Somewhere in the middle of the writes.
        std::thread::sleep(Duration::from_millis(150 + (round * 7919) % 350));
        d.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }

        d.spawn();
        let (cached, fresh) = verify(&d.socket, from + JOBS_PER_ROUND);
        cached_total += cached;
        fresh_total += fresh;
    }
    println!(
        "{ROUNDS} SIGKILLs in {:?}: {cached_total} results read back from the cache after \
         restarts, {fresh_total} run again, 0 wrong",
        started.elapsed()
    );
    assert_eq!(bad.load(Ordering::Relaxed), 0, "wrong results under load");
    assert!(
        cached_total > 0,
        "nothing survived a restart, so the test checked nothing:\n{}",
        d.log()
    );
    assert!(!d.log().contains("panicked"), "{}", d.log());
}
