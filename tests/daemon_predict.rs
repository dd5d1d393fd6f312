//! Black-box tests of prediction and speculation on the real daemon: visitors' events teach it
//! which process follows, and a new visitor's process is precomputed before it is asked for.

mod common;

use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::{Value, json};

/// One visit: the visitor types an address, the app validates it.
fn visit(c: &mut common::Conn, session: &str, code: &str) -> Value {
    let ev = c.call(&json!({"op": "event", "session": session, "type": "input",
        "target": "address", "attrs": {"country": "DE", "postal_code": code}}));
    assert_eq!(ev["ok"], json!(true), "{ev}");
    let r = c.call(&json!({"op": "run", "session": session, "process": "validate_postal_code"}));
    assert_eq!(r["ok"], json!(true), "{r}");
    let end = c.call(&json!({"op": "end", "session": session, "outcome": "left"}));
    assert_eq!(end["ok"], json!(true), "{end}");
    r
}

#[test]
fn a_learned_process_is_precomputed_and_served_from_the_cache() {
    let d = Daemon::start("");
    let mut c = d.connect();
    for i in 0..30 {
        visit(&mut c, &format!("teach-{i}"), &format!("{}", 10115 + i));
    }

    // A new visitor types an address no one used before.
    let ev = c.call(&json!({"op": "event", "session": "new", "type": "input",
        "target": "address", "attrs": {"country": "DE", "postal_code": "80331"}}));
    let hot = ev["hot_path"].as_array().expect("hot_path");
    assert_eq!(hot[0]["process"], json!("validate_postal_code"), "{ev}");
    assert_eq!(hot[0]["inputs_known"], json!(true), "{ev}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let state = loop {
        let p = c.call(&json!({"op": "predict", "session": "new", "n": 3}));
        let first = p["predictions"][0].clone();
        assert_eq!(first["process"], json!("validate_postal_code"), "{p}");
        if first["state"] == json!("cached") || Instant::now() > deadline {
            break first["state"].clone();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(state, json!("cached"));

    let r = c.call(&json!({"op": "run", "session": "new", "process": "validate_postal_code"}));
    assert_eq!(r["served"], json!("cache"), "{r}");
    assert_eq!(r["result"]["valid"], json!(true), "{r}");

    let stats = c.call(&json!({"op": "stats"}));
    let spec = &stats["speculation"];
    assert!(spec["used"].as_u64().unwrap() >= 1, "{spec}");
    assert!(spec["issued"].as_u64().unwrap() >= 1, "{spec}");
}

#[test]
fn a_hint_lifts_a_process_into_the_hot_path() {
    let d = Daemon::start("");
    let mut c = d.connect();
    c.call(&json!({"op": "event", "session": "h", "type": "page_view", "target": "home"}));
    let r = c.call(&json!({"op": "hint", "session": "h",
        "predictions": [{"process": "apply_coupon", "p": 0.9}]}));
    assert_eq!(r["ok"], json!(true), "{r}");
    let first = &r["hot_path"][0];
    assert_eq!(first["process"], json!("apply_coupon"), "{r}");
    assert_eq!(first["inputs_known"], json!(false), "{r}");

    let p = c.call(&json!({"op": "predict", "session": "h"}));
    assert_eq!(p["predictions"][0]["state"], json!("waiting_inputs"), "{p}");
}

#[test]
fn a_wasted_guess_is_counted_when_the_session_ends() {
    let d = Daemon::start("");
    let mut c = d.connect();
    for i in 0..20 {
        visit(&mut c, &format!("t{i}"), &format!("{}", 20095 + i));
    }
    c.call(
        &json!({"op": "event", "session": "quitter", "type": "input",
        "target": "address", "attrs": {"country": "DE", "postal_code": "50667"}}),
    );
    std::thread::sleep(Duration::from_millis(300));
    let end = c.call(&json!({"op": "end", "session": "quitter"}));
    assert_eq!(end["speculative_wasted"], json!(1), "{end}");
    let stats = c.call(&json!({"op": "stats"}));
    assert!(
        stats["speculation"]["wasted"].as_u64().unwrap() >= 1,
        "{stats}"
    );

    // The wasted result is not kept: asking now runs it again.
    let r = c.call(
        &json!({"op": "run", "session": "late", "process": "validate_postal_code",
        "inputs": {"country": "DE", "postal_code": "50667"}}),
    );
    assert_ne!(r["served"], json!("cache"), "{r}");
}

#[test]
fn a_hot_process_is_prepared_from_partial_inputs_and_the_full_run_resumes() {
    let d = Daemon::start("");
    let mut c = d.connect();
    // The visitor has typed an address but the cart weight is not known yet.
    c.call(
        &json!({"op": "event", "session": "q", "type": "input", "target": "address",
        "attrs": {"country": "DE", "postal_code": "80331"}}),
    );
    let r = c.call(&json!({"op": "hint", "session": "q",
        "predictions": [{"process": "quote_carriers", "p": 0.95}]}));
    assert_eq!(r["ok"], json!(true), "{r}");

    // The prepare run's checkpoint lands in the partial-state store.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = c.call(&json!({"op": "stats"}));
        if stats["states"]["entries"].as_u64().unwrap_or(0) >= 1 {
            assert!(
                stats["speculation"]["prepared"].as_u64().unwrap() >= 1,
                "{stats}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no prepared state: {stats}");
        std::thread::sleep(Duration::from_millis(20));
    }

    let r = c.call(
        &json!({"op": "run", "session": "q", "process": "quote_carriers",
        "inputs": {"cart_weight_g": 1200}}),
    );
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(r["result"]["routes_from_state"], json!(true), "{r}");
}

#[test]
fn the_model_is_saved_while_precogd_serves_and_loads_at_the_next_start() {
    let mut d = Daemon::start("[predict]\nsave_interval = \"1s\"\n");
    let mut c = d.connect();
    for i in 0..20 {
        visit(&mut c, &format!("s{i}"), &format!("{}", 10115 + i));
    }
    let model = d.dir.path().join("state").join("model.bin");
    let saved = common::wait_until(Duration::from_secs(10), || model.exists());
    assert!(saved, "no model saved while running:\n{}", d.log());
    // Saves go on, and requests are answered meanwhile.
    for i in 20..40 {
        visit(&mut c, &format!("s{i}"), &format!("{}", 10115 + i));
    }
    let first = std::fs::metadata(&model).unwrap().modified().unwrap();
    let again = common::wait_until(Duration::from_secs(10), || {
        std::fs::metadata(&model).is_ok_and(|m| m.modified().unwrap() > first)
    });
    assert!(again, "the model was saved only once:\n{}", d.log());
    d.kill9();
    // What a running precogd saved loads, after a crash too.
    d.spawn();
    assert!(d.log().contains("model loaded"), "{}", d.log());
    assert!(!d.log().contains("set aside"), "{}", d.log());
}

#[test]
fn a_symlink_planted_for_the_saved_model_is_not_followed() {
    let mut d = Daemon::start("");
    let mut c = d.connect();
    visit(&mut c, "s1", "10115");
    let target = d.dir.path().join("not-precogs");
    std::fs::write(&target, b"keep me").unwrap();
    let state = d.dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::symlink(&target, state.join("model.bin.new")).unwrap();
    // The model is saved when precogd stops.
    assert!(d.stop(), "precogd did not stop cleanly");
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    assert!(d.log().contains("cannot save the model"), "{}", d.log());
}

#[test]
fn optional_inputs_reach_the_worker_from_the_request_or_the_session_and_key_the_cache() {
    if common::skip_unless(common::have_python(), "python3 is not installed") {
        return;
    }
    let d = Daemon::start(&format!(
        "[[pool]]\nname = \"t\"\ncommand = [\"python3\", \"{}\"]\n\
         [[process]]\nname = \"reserve\"\npool = \"t\"\ninputs = [\"sku\"]\n\
         optional_inputs = [\"qty\"]\n\
         [[process]]\nname = \"quote\"\npool = \"t\"\ninputs = [\"sku\"]\n\
         optional_inputs = [\"qty\"]\nidempotent = true\n",
        common::worker("echo.py")
    ));
    let echo = |r: &Value| r["result"]["echo"].clone();
    let run = |process: &str, session: &str, inputs: Value| {
        d.call(json!({"op": "run", "session": session, "process": process, "inputs": inputs}))
    };

    // Given with the request, or not at all: a run without it still runs.
    let r = run("reserve", "a", json!({"sku": "1", "qty": 3, "other": 1}));
    assert_eq!(echo(&r), json!({"sku": "1", "qty": 3}), "{r}");
    let r = run("reserve", "a", json!({"sku": "1"}));
    assert_eq!(echo(&r), json!({"sku": "1"}), "{r}");

    // Made known by the session's events.
    let e = d.call(json!({"op": "event", "session": "b", "type": "input",
        "attrs": {"sku": "2", "qty": 5}}));
    assert_eq!(e["ok"], json!(true), "{e}");
    let r = run("reserve", "b", json!({}));
    assert_eq!(echo(&r), json!({"sku": "2", "qty": 5}), "{r}");

    // Part of the job's identity: another quantity is another result.
    let one = run("quote", "c", json!({"sku": "3", "qty": 1}));
    let two = run("quote", "c", json!({"sku": "3", "qty": 2}));
    assert_eq!(echo(&two), json!({"sku": "3", "qty": 2}), "{two}");
    assert_ne!(two["served"], json!("cache"), "{one}\n{two}");
    let again = run("quote", "c", json!({"sku": "3", "qty": 1}));
    assert_eq!(again["served"], json!("cache"), "{again}");
    assert_eq!(echo(&again), json!({"sku": "3", "qty": 1}), "{again}");
}

#[test]
fn a_hint_for_a_process_a_reload_removed_is_not_passed_to_the_one_that_takes_its_place() {
    // The built-in 8 processes and 56 more fill the model's 64 process places, so a process
    // added by a reload takes over the place of one it removed.
    let processes = |names: &[String]| {
        names
            .iter()
            .map(|n| format!("[[process]]\nname = \"{n}\"\npool = \"shop\"\n"))
            .collect::<String>()
    };
    let mut names: Vec<String> = (0..56).map(|i| format!("p{i}")).collect();
    let head = "[predict]\nspeculation = false\n[[pool]]\nname = \"shop\"\nwarm_min = 0\n";
    let first = format!("{head}{}", processes(&names));
    let d = Daemon::start(&first);
    let hint = d.call(json!({"op": "hint", "session": "s",
        "predictions": [{"process": "p55", "p": 0.97}]}));
    assert_eq!(hint["hot_path"][0]["process"], json!("p55"), "{hint}");

    names[55] = "newcomer".into();
    let text = std::fs::read_to_string(&d.config).unwrap();
    d.reload_applied(&text.replace(&first, &format!("{head}{}", processes(&names))));
    let p = d.call(json!({"op": "predict", "session": "s"}));
    let predicted = p["predictions"].as_array().expect("predictions");
    assert!(
        predicted.iter().all(|e| e["process"] != json!("newcomer")),
        "the hint for the removed process went to the new one: {p}"
    );
}

#[test]
fn sessions_a_reload_pushes_out_end_with_their_guesses_judged() {
    let d = Daemon::start("[sessions]\nmax = 100\n");
    let mut c = d.connect();
    for i in 0..4 {
        let session = format!("v{i}");
        let code = format!("{}", 10115 + i);
        c.call(&json!({"op": "event", "session": session, "type": "input",
            "target": "address", "attrs": {"country": "DE", "postal_code": code}}));
        let hint = c.call(&json!({"op": "hint", "session": session,
            "predictions": [{"process": "validate_postal_code", "p": 1.0}]}));
        assert_eq!(hint["ok"], json!(true), "{hint}");
    }
    let spec = |c: &mut common::Conn| c.call(&json!({"op": "stats"}))["speculation"].clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while spec(&mut c)["pending"] != json!(4) {
        assert!(Instant::now() < deadline, "no 4 guesses: {}", spec(&mut c));
        std::thread::sleep(Duration::from_millis(20));
    }

    // Three of the four sessions no longer fit: they are gone as if they had ended. Each of
    // their guesses is judged: wasted once it ran, cancelled while it still waited for a worker.
    let cancelled = |c: &mut common::Conn| spec(c)["cancelled"].as_u64().unwrap();
    let cancelled_before = cancelled(&mut c);
    let text = std::fs::read_to_string(&d.config).unwrap();
    d.reload_applied(&text.replace("[sessions]\nmax = 100\n", "[sessions]\nmax = 1\n"));
    let stats = c.call(&json!({"op": "stats"}));
    assert_eq!(stats["sessions"]["active"], json!(1), "{stats}");
    assert_eq!(stats["speculation"]["pending"], json!(1), "{stats}");
    let wasted = stats["speculation"]["wasted"].as_u64().unwrap();
    let cancelled = stats["speculation"]["cancelled"].as_u64().unwrap() - cancelled_before;
    assert_eq!(wasted + cancelled, 3, "{stats}");
}

#[test]
fn sessions_inputs_together_stay_within_sessions_memory() {
    let d = Daemon::start("[sessions]\nmemory = \"1M\"\n");
    let mut c = d.connect();
    // Forty sessions, each with about 60K of inputs: some 2.4M, where 1M is allowed.
    let note = "n".repeat(60_000);
    for i in 0..40 {
        let r = c.call(
            &json!({"op": "event", "session": format!("s{i}"), "type": "input",
            "attrs": {"note": note, "country": "DE", "postal_code": format!("{}", 10115 + i)}}),
        );
        assert_eq!(r["ok"], json!(true), "{r}");
    }
    let stats = c.call(&json!({"op": "stats"}));
    let bytes = stats["sessions"]["inputs_bytes"].as_u64().unwrap();
    assert!(bytes <= 1 << 20 && bytes > 1 << 19, "{stats}");
    let active = stats["sessions"]["active"].as_u64().unwrap();
    assert!((10..40).contains(&active), "{stats}");

    // The newest session kept its inputs and the oldest went: a run there lacks them.
    let run = |c: &mut common::Conn, s: &str| {
        c.call(&json!({"op": "run", "session": s, "process": "validate_postal_code"}))
    };
    assert_eq!(run(&mut c, "s39")["ok"], json!(true));
    let gone = run(&mut c, "s0");
    assert_eq!(gone["error"]["code"], json!("missing_input"), "{gone}");
}
