//! Measures what one event costs the predictor: profile update, model learning and the new hot
//! path, over a million events (`cargo run --release --example predict_bench`).
//!
//! The events come from the JD sessions in `../shared/data/jd` when they are there (replayed
//! round and round under fresh session names), otherwise — or with `-- --made-up` — from a
//! made-up shop visit pattern that also asks for processes, so the run model has work too.

use std::path::PathBuf;
use std::time::Instant;

use precog::config::Config;
use precog::eval::{Format, read_sessions, to_event};
use precog::predict::Predictor;
use precog::profile::Event;
use serde_json::json;

const EVENTS: usize = 1_000_000;

/// CPU time this thread has used: the cost on one core, whatever else the machine runs.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "the thread CPU clock is readable");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn made_up() -> Vec<Vec<Event>> {
    let kinds = [
        "page_view",
        "hover",
        "dwell",
        "scroll",
        "input",
        "page_view",
        "run",
    ];
    (0..500)
        .map(|s| {
            (0..40)
                .map(|i| {
                    let kind = kinds[(i * 7 + s) % kinds.len()];
                    let mut attrs = serde_json::Map::new();
                    attrs.insert("sku".into(), json!(format!("sku-{}", (i / 3 + s) % 50)));
                    Event {
                        kind: kind.into(),
                        target: (kind == "run").then(|| "check_inventory".to_string()),
                        ms: Some((i as u64 * 1700) % 60_000),
                        attrs,
                        ts_ms: i as u64 * 5000,
                        ..Event::default()
                    }
                })
                .collect()
        })
        .collect()
}

fn main() {
    let jd = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/jd");
    let made_up_only = std::env::args().any(|a| a == "--made-up");
    let read = if made_up_only {
        Err(())
    } else {
        read_sessions(&jd, Format::Jd).map_err(|_| ())
    };
    let (source, visits): (&str, Vec<Vec<Event>>) = match read {
        Ok(sessions) => (
            "JD sessions",
            sessions
                .iter()
                .map(|s| s.events.iter().map(|e| to_event("", e)).collect())
                .collect(),
        ),
        Err(()) => ("made-up visits with process runs", made_up()),
    };

    let mut predictor = Predictor::new(&Config::builtin());
    let mut events = Vec::with_capacity(EVENTS);
    let mut round = 0u64;
    'fill: loop {
        for (n, visit) in visits.iter().enumerate() {
            for e in visit {
                if events.len() == EVENTS {
                    break 'fill;
                }
                let mut e = e.clone();
                e.session = format!("r{round}-{n}");
                e.ts_ms += round * 86_400_000;
                events.push(e);
            }
        }
        round += 1;
    }

    let mut hot_len = 0;
    let start = Instant::now();
    let cpu_start = thread_cpu_ns();
    for e in events {
        hot_len += predictor.event(e).len();
    }
    let cpu_ns = thread_cpu_ns() - cpu_start;
    let took = start.elapsed();
    let stats = predictor.stats();
    println!(
        "{EVENTS} events from {source}: {:.2} µs of CPU per event on one core \
         (profile, learning, hot path); {:.2} µs wall clock",
        cpu_ns as f64 / 1e3 / EVENTS as f64,
        took.as_secs_f64() * 1e6 / EVENTS as f64
    );
    println!(
        "sessions live {}, steps known {}, contexts {}, mean hot path length {:.2}",
        stats.sessions,
        stats.steps_known,
        stats.contexts,
        hot_len as f64 / EVENTS as f64
    );
}
