//! Black-box tests of what the prediction side keeps from clients, on the real daemon: names are
//! limited in length, processes must be configured, a session's inputs are capped in number and
//! in size, and the daemon's own clock (not the client's `ts`) decides when sessions expire and
//! how the model fades, also in the saved model.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Daemon, wait_until};
use serde_json::{Value, json};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn error_code(reply: &Value) -> &str {
    reply["error"]["code"].as_str().unwrap_or("")
}

/// A session that knows an address, so `validate_postal_code` can run from it.
fn address(c: &mut common::Conn, session: &str) {
    let r = c.call(&json!({"op": "event", "session": session, "type": "input",
        "attrs": {"country": "DE", "postal_code": "10115"}}));
    assert_eq!(r["ok"], json!(true), "{r}");
}

fn runs_from_known_inputs(c: &mut common::Conn, session: &str) -> bool {
    let r = c.call(&json!({"op": "run", "session": session, "process": "validate_postal_code"}));
    r["ok"] == json!(true)
}

#[test]
fn overlong_names_are_refused_and_the_session_keeps_what_it_knew() {
    let d = Daemon::start("");
    let mut c = d.connect();
    address(&mut c, "s");
    let long = "k".repeat(129);
    let fine = "k".repeat(128);

    let refused = [
        json!({"op": "event", "session": "s", "type": long}),
        json!({"op": "event", "session": "s", "type": "page_view", "target": long}),
        json!({"op": "event", "session": "s", "type": "input", "attrs": {long.clone(): 1}}),
        json!({"op": "end", "session": "s", "outcome": long}),
    ];
    for req in &refused {
        let r = c.call(req);
        assert_eq!(error_code(&r), "bad_request", "{r}");
        assert!(
            r["error"]["message"].as_str().unwrap().contains("128"),
            "{r}"
        );
    }
    let r = c.call(
        &json!({"op": "event", "session": "s", "type": fine, "target": fine,
        "attrs": {fine.clone(): 1}}),
    );
    assert_eq!(r["ok"], json!(true), "{r}");
    assert!(
        runs_from_known_inputs(&mut c, "s"),
        "the session lost its inputs"
    );
    let r = c.call(&json!({"op": "end", "session": "s", "outcome": fine}));
    assert_eq!(r["ended"], json!(true), "{r}");
}

#[test]
fn run_events_and_hints_must_name_configured_processes() {
    let d = Daemon::start("");
    let mut c = d.connect();
    for i in 0..64 {
        let r = c.call(&json!({"op": "event", "session": "x", "type": "run",
            "target": format!("junk{i}")}));
        assert_eq!(error_code(&r), "unknown_process", "{r}");
    }
    let r = c.call(&json!({"op": "hint", "session": "h",
        "predictions": [{"process": "calc_shipping", "p": 0.9}, {"process": "junk", "p": 0.5}]}));
    assert_eq!(error_code(&r), "unknown_process", "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("junk"),
        "{r}"
    );
    let r = c.call(&json!({"op": "event", "session": "x", "type": "run",
        "target": "calc_shipping"}));
    assert_eq!(r["ok"], json!(true), "{r}");

    // A process added by a reload is predicted.
    let mut text = std::fs::read_to_string(&d.config).unwrap();
    text.push_str("\n[[process]]\nname = \"added_later\"\npool = \"shop\"\ninputs = []\n");
    d.reload(&text);
    let mut hot = Value::Null;
    let predicted = wait_until(Duration::from_secs(10), || {
        let r = c.call(&json!({"op": "hint", "session": "h2",
            "predictions": [{"process": "added_later", "p": 0.9}]}));
        hot = r.clone();
        r["ok"] == json!(true) && r["hot_path"][0]["process"] == json!("added_later")
    });
    assert!(predicted, "{hot}");
}

#[test]
fn a_sessions_known_inputs_are_capped_and_stay_updatable() {
    let d = Daemon::start("");
    let mut c = d.connect();
    address(&mut c, "fat");
    let mut attrs = serde_json::Map::new();
    for i in 0..254 {
        attrs.insert(format!("field{i}"), json!(i));
    }
    let r = c.call(&json!({"op": "event", "session": "fat", "type": "input", "attrs": attrs}));
    assert_eq!(r["ok"], json!(true), "{r}");

    let r = c.call(&json!({"op": "event", "session": "fat", "type": "input",
        "attrs": {"one_too_many": 1}}));
    assert_eq!(error_code(&r), "bad_request", "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("256"),
        "{r}"
    );
    // Known inputs may change, and the session still serves from them.
    let r = c.call(&json!({"op": "event", "session": "fat", "type": "input",
        "attrs": {"field3": "changed", "postal_code": "10117"}}));
    assert_eq!(r["ok"], json!(true), "{r}");
    let r = c.call(&json!({"op": "predict", "session": "fat"}));
    assert_eq!(r["ok"], json!(true), "{r}");
    assert!(runs_from_known_inputs(&mut c, "fat"));

    // One event with more new keys than the cap is refused as a whole.
    let many: serde_json::Map<String, Value> =
        (0..300).map(|i| (format!("k{i}"), json!(i))).collect();
    let r = c.call(&json!({"op": "event", "session": "new", "type": "input", "attrs": many}));
    assert_eq!(error_code(&r), "bad_request", "{r}");
}

#[test]
fn a_sessions_inputs_are_limited_in_size_and_a_refused_event_changes_nothing() {
    let d = Daemon::start("");
    let mut c = d.connect();
    address(&mut c, "big");
    // Inputs that add up to more than 64 KiB, in events of 40 KB each: the second is refused.
    let r = c.call(&json!({"op": "event", "session": "big", "type": "input",
        "attrs": {"cart": "x".repeat(40_000)}}));
    assert_eq!(r["ok"], json!(true), "{r}");
    let r = c.call(&json!({"op": "event", "session": "big", "type": "input",
        "attrs": {"notes": "y".repeat(40_000), "postal_code": "99999"}}));
    assert_eq!(error_code(&r), "bad_request", "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("65536"),
        "{r}"
    );
    // Nothing of the refused event was applied: the session runs from the address it knew.
    let r = c.call(&json!({"op": "run", "session": "big", "process": "validate_postal_code"}));
    assert_eq!(r["result"]["postal_code"], json!("10115"), "{r}");
    // A known input may shrink, which makes room again.
    let r = c.call(&json!({"op": "event", "session": "big", "type": "input",
        "attrs": {"cart": "small"}}));
    assert_eq!(r["ok"], json!(true), "{r}");
    let r = c.call(&json!({"op": "event", "session": "big", "type": "input",
        "attrs": {"notes": "y".repeat(40_000)}}));
    assert_eq!(r["ok"], json!(true), "{r}");
    // One value over the limit on a new session is refused too.
    let r = c.call(&json!({"op": "event", "session": "new", "type": "input",
        "attrs": {"cart": "z".repeat(70_000)}}));
    assert_eq!(error_code(&r), "bad_request", "{r}");
}

#[test]
fn sessions_expire_by_precogds_clock_not_the_clients_ts() {
    let d = Daemon::start("[sessions]\nidle = \"10s\"\n");
    let mut c = d.connect();
    // Replayed from a recording: the visit happened 31 minutes ago.
    let r = c.call(&json!({"op": "event", "session": "old", "type": "input",
        "ts": now_ms() - 31 * 60 * 1000, "attrs": {"country": "DE", "postal_code": "10115"}}));
    assert_eq!(r["ok"], json!(true), "{r}");
    // Expiry runs once a second; the session is not idle by precogd's clock.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(runs_from_known_inputs(&mut c, "old"), "the session expired");
    let r = c.call(&json!({"op": "end", "session": "old"}));
    assert_eq!(r["ended"], json!(true), "{r}");

    // A client sending microseconds: the session still expires once idle.
    let r = c.call(
        &json!({"op": "event", "session": "ahead", "type": "page_view",
        "ts": now_ms() * 1000}),
    );
    assert_eq!(r["ok"], json!(true), "{r}");
    let expired = wait_until(Duration::from_secs(40), || {
        c.call(&json!({"op": "stats"}))["sessions"]["active"] == json!(0)
    });
    assert!(expired, "a session with a far-future ts never expired");
}

/// The payload of a saved model, as JSON.
fn read_model(path: &std::path::Path) -> Value {
    let bytes = std::fs::read(path).expect("model.bin");
    serde_json::from_slice(&bytes[24..]).expect("model JSON")
}

fn write_model(path: &std::path::Path, model: &Value) {
    let payload = serde_json::to_vec(model).unwrap();
    let mut bytes = std::fs::read(path).unwrap()[..12].to_vec();
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    std::fs::write(path, bytes).unwrap();
}

fn latest_time(model: &Value) -> u64 {
    let tables = |m: &Value| -> Vec<u64> {
        m["tables"]
            .as_object()
            .unwrap()
            .values()
            .map(|c| c["last_ms"].as_u64().unwrap())
            .collect()
    };
    let mut all = tables(&model["steps"]);
    all.extend(tables(&model["runs"]));
    all.push(model["steps"]["order0"]["last_ms"].as_u64().unwrap());
    all.into_iter().max().unwrap()
}

#[test]
fn a_clients_clock_does_not_reach_the_saved_model_and_damage_is_mended_on_load() {
    let mut d = Daemon::start("");
    let mut c = d.connect();
    let us = now_ms() * 1000;
    for i in 0..3 {
        c.call(&json!({"op": "event", "session": "a", "type": "page_view"}));
        let r = c.call(&json!({"op": "event", "session": "b", "type": "page_view",
            "ts": us + i}));
        assert_eq!(r["ok"], json!(true), "{r}");
    }
    drop(c);
    assert!(d.stop(), "precogd did not stop cleanly");
    let path = d.dir.path().join("state/model.bin");
    let mut model = read_model(&path);
    let day = 86_400_000;
    assert!(
        latest_time(&model) < now_ms() + day,
        "the model's clock moved ahead"
    );

    // A model saved by an older build: a count's time far ahead, and a huge step name.
    model["steps"]["order0"]["last_ms"] = json!(us);
    model["steps"]["names"]
        .as_array_mut()
        .unwrap()
        .push(json!("h".repeat(200_000)));
    write_model(&path, &model);
    d.spawn();
    let log = d.log();
    assert!(log.contains("model loaded"), "{log}");
    assert!(log.contains("times ahead of the clock"), "{log}");
    assert!(log.contains("names over the length limit"), "{log}");
    assert!(d.stop(), "precogd did not stop cleanly");
    let model = read_model(&path);
    assert!(latest_time(&model) < now_ms() + day, "not mended");
    assert!(std::fs::metadata(&path).unwrap().len() < 100_000);
}
