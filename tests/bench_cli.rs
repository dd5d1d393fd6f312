//! `precogctl bench` as a user runs it: every placement reports the echo, the relay floor and the
//! warm run, measured in the same run, and the floors keep their order.

use std::process::Command;

use serde_json::Value;

#[test]
fn bench_reports_three_series_for_each_placement() {
    let out = Command::new(env!("CARGO_BIN_EXE_precogctl"))
        .args(["bench", "--rounds", "200", "--json"])
        .output()
        .expect("run precogctl bench");
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("bench prints JSON");
    assert_eq!(report["rounds"], 200);
    let placements = report["placements"].as_object().expect("placements");
    assert!(placements.contains_key("scheduled"));
    assert!(placements.contains_key("one_cpu"));
    for (name, p) in placements {
        for series in ["echo_us", "relay_us", "warm_run_us"] {
            let p50 = p[series]["p50"].as_f64().expect("a median");
            let p99 = p[series]["p99"].as_f64().expect("a p99");
            assert!(
                p50 > 0.0 && p50 <= p99,
                "{name} {series}: median {p50}, p99 {p99}"
            );
        }
        let ratio = p["ratio_p50"].as_f64().expect("ratio");
        let expected =
            p["warm_run_us"]["p50"].as_f64().unwrap() / p["echo_us"]["p50"].as_f64().unwrap();
        assert!(
            (ratio - expected).abs() < 1e-9,
            "{name}: ratio {ratio}, expected {expected}"
        );
        assert_eq!(
            p["within_goal"],
            ratio <= report["goal_ratio"].as_f64().expect("the goal"),
            "{name}"
        );
    }
    // On one CPU every hop is a context switch, so a line through two processes takes longer
    // than through one, and a warm run (which does more than pass the line on) longer still.
    let one = &placements["one_cpu"];
    let p50 = |s: &str| one[s]["p50"].as_f64().unwrap();
    assert!(
        p50("echo_us") < p50("relay_us") && p50("relay_us") < p50("warm_run_us"),
        "one CPU: echo {}, relay {}, warm run {}",
        p50("echo_us"),
        p50("relay_us"),
        p50("warm_run_us")
    );
}
