//! The replay report's figures, table and reading.

use super::*;
use serde_json::json;

fn run(process: &str, served: Served, latency_us: u64, at_s: u64) -> RunRecord {
    RunRecord {
        process: process.into(),
        served,
        latency_us,
        at: Duration::from_secs(at_s),
        error: (served == Served::Failed).then(|| "timeout".into()),
        message: (served == Served::Failed).then(|| "ran past its timeout".into()),
        new_inputs: process == "cart_total",
    }
}

#[test]
fn every_run_is_counted_once_and_latencies_summarised() {
    let played = Played {
        runs: vec![
            run("price_quote", Served::Cache, 10, 1),
            run("price_quote", Served::Inflight, 20, 2),
            run("cart_total", Served::Warm, 30, 3),
            run("cart_total", Served::Cold, 1000, 90),
            run("calc_shipping", Served::Failed, 40, 91),
        ],
        ..Played::default()
    };
    let stats = json!({"speculation": {"used": 3, "wasted": 1},
                       "pools": {"shop": {"cold_starts": 2}}});
    let m = ModeReport::new("precog", &played, Some(&stats));
    assert_eq!(m.runs, 5);
    assert_eq!(m.served.values().sum::<u64>(), 5);
    assert_eq!(m.cache_or_inflight, 0.4);
    assert_eq!(m.latency_us.p50, 30);
    assert_eq!(m.latency_us.p99, 1000);
    assert_eq!(m.latency_us.mean, 220.0);
    assert_eq!(m.speculation.used, Some(3));
    assert_eq!(m.speculation.cpu_s_wasted, None);
    assert_eq!(m.cold_starts, Some(2));
    assert_eq!(m.cold_runs_after_first_minute, 1);
    assert_eq!(m.run_errors["timeout"], 1);
    assert_eq!(
        m.first_failures["timeout"],
        "calc_shipping: ran past its timeout"
    );
    assert_eq!(m.per_process["cart_total"]["cold"], 1);
    assert_eq!(m.mean_us_by_served["inflight"], Some(20.0));
    assert_eq!(m.mean_us_by_served["cold"], Some(1000.0));
    assert_eq!(m.new_input_runs, 2);
    assert_eq!(m.new_inputs_mean_us, Some(515.0));
    assert_eq!(m.known_inputs_mean_us, Some(70.0 / 3.0));
}

#[test]
fn the_table_shows_ratios_and_missing_counters() {
    let fast = Played {
        runs: vec![run("p", Served::Cache, 100, 1)],
        ..Played::default()
    };
    let slow = Played {
        runs: vec![run("p", Served::Warm, 300, 1)],
        ..Played::default()
    };
    let r = Report::new(Report {
        file: "f".into(),
        format: "otto".into(),
        speed: 10.0,
        sessions: 1,
        recorded_events: 1,
        span_s: 1.0,
        modes: vec![
            ModeReport::new("precog", &fast, None),
            ModeReport::new("no-predict", &slow, None),
        ],
        mean_latency_ratio: BTreeMap::new(),
    });
    assert_eq!(r.mean_latency_ratio["no-predict/precog"], 3.0);
    let table = r.table();
    assert!(table.contains("3.00x"), "{table}");
    assert!(table.contains("n/a"), "{table}");
    let reading = r.reading();
    assert!(
        reading.contains(
            "  precog                   100 us, 100.0% from the cache or in flight\n  \
             without prediction       300 us (3.00x precog's), 0.0% from the cache or in \
             flight\n"
        ),
        "{reading}"
    );
    assert!(
        reading.contains("  no-predict  the same precogd"),
        "{reading}"
    );
    assert!(!reading.contains("spawn"), "{reading}");
    // Every row's term is explained, and the speculation counters add up to what was issued.
    for term in [
        "inputs known before / new in event",
        "cancelled: dropped",
        "cold starts (daemon)",
        "cold runs after first minute",
        "events sent",
    ] {
        assert!(reading.contains(term), "{term}: {reading}");
    }
    assert!(table.contains("speculative jobs cancelled"), "{table}");
    assert!(!reading.contains("runs failed"), "{reading}");
}

#[test]
fn failed_runs_are_told_by_the_first_message_of_each_kind() {
    let played = Played {
        runs: vec![
            run("price_quote", Served::Cache, 10, 1),
            run("calc_shipping", Served::Failed, 40, 2),
            run("cart_total", Served::Failed, 40, 3),
        ],
        ..Played::default()
    };
    let r = Report::new(Report {
        file: "f".into(),
        format: "events".into(),
        speed: 1.0,
        sessions: 1,
        recorded_events: 1,
        span_s: 1.0,
        modes: vec![ModeReport::new("precog", &played, None)],
        mean_latency_ratio: BTreeMap::new(),
    });
    let reading = r.reading();
    assert!(
        reading.contains(
            "2 runs failed; the first of each kind:\n  \
             precog      timeout in calc_shipping: ran past its timeout\n"
        ),
        "{reading}"
    );
}
