//! Black-box: the stats carry the allocator's and the tuner's figures, `precogctl stats
//! --prometheus` prints them as Prometheus text, the loopback `/metrics` listener serves the
//! same, and a listener address off loopback is refused when the configuration is checked.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use common::{Daemon, check_config};
use serde_json::json;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap().port()
}

fn get(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn metrics_come_as_prometheus_text_from_precogctl_and_over_loopback_http() {
    let port = free_port();
    let d = Daemon::start_with(
        &format!("metrics_listen = \"127.0.0.1:{port}\""),
        "[[pool]]\nname = \"shop\"\nwarm_min = 1\n",
    );
    let r = d.call(
        json!({"op": "run", "session": "s", "process": "validate_postal_code",
        "inputs": {"country": "DE", "postal_code": "10115"}}),
    );
    assert_eq!(r["ok"], json!(true), "{r}");

    let stats = d.call(json!({"op": "stats"}));
    assert!(stats["alloc"]["pools"]["shop"].is_object(), "{stats}");
    assert!(stats["tune"]["processes"]["validate_postal_code"]["jobs"].as_u64() >= Some(1));

    let out = Command::new(env!("CARGO_BIN_EXE_precogctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["stats", "--prometheus"])
        .output()
        .expect("run precogctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("# TYPE precog_runs_served_total counter"),
        "{text}"
    );
    assert!(
        text.contains("precog_pool_workers{pool=\"shop\"}"),
        "{text}"
    );
    assert!(text.contains("precog_process_jobs_total{process=\"validate_postal_code\"}"));

    let http = get(port, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(http.starts_with("HTTP/1.1 200 OK\r\n"), "{http}");
    assert!(http.contains("text/plain; version=0.0.4"), "{http}");
    assert!(
        http.contains("precog_alloc_warm_workers{pool=\"shop\"}"),
        "{http}"
    );
    let other = get(port, "GET /secrets HTTP/1.1\r\n\r\n");
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
}

#[test]
fn a_metrics_listener_off_loopback_is_refused_at_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("precogd.toml");
    std::fs::write(&cfg, "[daemon]\nmetrics_listen = \"0.0.0.0:9187\"\n").unwrap();
    let out = check_config(&cfg);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
}
