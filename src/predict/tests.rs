//! Unit tests of the predictor on small made-up visits whose answer is known.

use serde_json::json;

use super::*;

fn ev(session: &str, kind: &str, target: Option<&str>, ts: u64) -> Event {
    Event {
        session: session.into(),
        kind: kind.into(),
        target: target.map(String::from),
        ts_ms: ts,
        ..Event::default()
    }
}

fn top_step(p: &Predictor, session: &str) -> String {
    let ranked = p.step_ranking(session);
    p.steps.name(ranked[0].0).to_string()
}

#[test]
fn a_strict_cycle_is_predicted_perfectly_after_warm_up() {
    let mut p = Predictor::new(&Config::builtin());
    let cycle = ["page_view", "hover", "scroll", "input"];
    let mut hits = 0;
    let mut ts = 0;
    for s in 0..40 {
        let session = format!("s{s}");
        for (i, kind) in cycle.iter().cycle().take(12).enumerate() {
            if s >= 20 && i > 0 {
                hits += (top_step(&p, &session) == *kind) as usize;
            }
            ts += 1000;
            p.event(ev(&session, kind, None, ts));
        }
        p.end(&session, None, ts);
    }
    assert_eq!(hits, 20 * 11);
}

#[test]
fn runs_that_follow_a_step_enter_the_hot_path() {
    let mut p = Predictor::new(&Config::builtin());
    let mut ts = 0;
    for s in 0..30 {
        let session = format!("s{s}");
        for (kind, target) in [
            ("page_view", None),
            ("input", None),
            ("run", Some("validate_postal_code")),
            ("run", Some("calc_shipping")),
        ] {
            ts += 1000;
            p.event(ev(&session, kind, target, ts));
        }
    }
    p.event(ev("new", "page_view", None, ts + 1));
    let hot = p.event(ev("new", "input", None, ts + 2));
    assert_eq!(hot[0].process, "validate_postal_code", "{hot:?}");
    assert!(hot[0].p > 0.9);
    assert_eq!(hot[1].process, "calc_shipping");
}

#[test]
fn a_hint_lifts_a_process_into_the_hot_path() {
    let mut p = Predictor::new(&Config::builtin());
    p.event(ev("s", "page_view", None, 1));
    let before = p.hot_path("s", 5);
    assert!(!before.iter().any(|h| h.process == "apply_coupon"));
    let hot = p.hint("s", &[("apply_coupon".into(), 0.8)], 2);
    assert_eq!(hot[0].process, "apply_coupon");
    assert!((hot[0].p - 0.8).abs() < 0.05);
}

#[test]
fn a_process_is_not_predicted_before_its_prerequisite() {
    let mut p = Predictor::new(&Config::builtin());
    let hot = p.hint("s", &[("calc_shipping".into(), 0.9)], 1);
    let pos = |name: &str| hot.iter().position(|h| h.process == name);
    assert!(pos("validate_postal_code").unwrap() < pos("calc_shipping").unwrap());

    let mut attrs = Map::new();
    attrs.insert("country".into(), json!("DE"));
    attrs.insert("postal_code".into(), json!("10115"));
    attrs.insert("cart_weight_g".into(), json!(1200));
    p.event(Event {
        attrs,
        ..ev("s", "input", None, 2)
    });
    p.hint("s", &[("calc_shipping".into(), 0.9)], 3);
    let jobs = p.speculate("s");
    let names: Vec<_> = jobs.iter().map(|j| j.process.as_str()).collect();
    assert_eq!(names, ["validate_postal_code", "calc_shipping"]);
    assert_eq!(jobs[1].inputs.len(), 3);
    assert!(p.speculate("s").is_empty(), "a job is issued once");
}

#[test]
fn non_idempotent_processes_and_unknown_inputs_stay_cold() {
    let mut p = Predictor::new(&Config::builtin());
    p.event(ev("s", "page_view", None, 1));
    p.hint(
        "s",
        &[
            ("reserve_stock".into(), 0.99),
            ("apply_coupon".into(), 0.99),
        ],
        2,
    );
    let hot = p.hot_path("s", 5);
    assert!(hot.iter().all(|h| !h.inputs_known));
    assert!(p.speculate("s").is_empty());
}

#[test]
fn ended_and_expired_sessions_are_freed() {
    let mut cfg = Config::builtin();
    cfg.sessions.idle = crate::config::Span(std::time::Duration::from_secs(60));
    let mut p = Predictor::new(&cfg);
    let mut attrs = Map::new();
    attrs.insert("sku".into(), json!("a"));
    p.event(Event {
        attrs,
        ..ev("s", "page_view", None, 1)
    });
    p.hint(
        "s",
        &[("check_inventory".into(), 0.9), ("price_quote".into(), 0.9)],
        2,
    );
    assert_eq!(p.speculate("s").len(), 2);
    assert!(p.end("s", Some("order"), 3));
    assert!(!p.end("s", None, 3));
    assert_eq!(p.cancellable("s").len(), 2);
    p.event(ev("t", "page_view", None, 10));
    assert_eq!(p.expire(60_009), Vec::<String>::new());
    assert_eq!(p.expire(60_010), vec!["t".to_string()]);
    assert_eq!(p.stats().sessions, 0);
}

#[test]
fn save_and_load_round_trip_and_damage_is_refused() {
    let mut p = Predictor::new(&Config::builtin());
    for i in 0..50 {
        let kind = ["page_view", "hover", "scroll"][i % 3];
        p.event(ev("s", kind, None, i as u64 * 100));
    }
    p.feedback("price_quote", true, 10);
    let bytes = p.save();

    let mut q = Predictor::new(&Config::builtin());
    q.load(&bytes, 6000).expect("a saved model loads");
    q.event(ev("t", "hover", None, 6000));
    p.event(ev("t", "hover", None, 6000));
    assert_eq!(q.step_ranking("t"), p.step_ranking("t"));
    assert_eq!(q.stats().speculative_used, 1);

    let mut damaged = bytes.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x40;
    assert!(matches!(q.load(&damaged, 0), Err(PredictError::Damaged(_))));
    assert!(q.load(&bytes[..bytes.len() - 3], 0).is_err());
    assert!(q.load(b"junk", 0).is_err());
    assert!(q.load(&[], 0).is_err());

    // A model saved before the Bayesian final stage (format 1) is refused, to be set aside.
    let mut old = bytes.clone();
    old[8..12].copy_from_slice(&1u32.to_le_bytes());
    assert_eq!(q.load(&old, 0), Err(PredictError::Version(1, 2)));
}

#[test]
fn a_model_saved_a_slice_at_a_time_while_it_learns_loads_with_every_context_it_kept() {
    let mut p = Predictor::new(&Config::builtin());
    let kinds = ["page_view", "hover", "scroll", "input", "run"];
    let learn = |p: &mut Predictor, from: u64, to: u64| {
        for i in from..to {
            let kind = kinds[(i * 7 % 5) as usize];
            let target = (kind == "run").then_some("price_quote");
            p.event(ev(&format!("s{}", i / 9), kind, target, i * 100));
        }
    };
    learn(&mut p, 0, 400);
    let before: Vec<u64> = p.steps.tables.keys().copied().collect();
    let mut save = p.save_begin();
    let mut slices = 0;
    while !p.save_some(&mut save, 7) {
        // The model goes on learning between slices, new contexts included.
        learn(&mut p, 400 + slices * 3, 403 + slices * 3);
        p.event(ev("late", &format!("late{slices}"), None, 50_000 + slices));
        slices += 1;
    }
    assert!(slices > 10, "saved in {slices} slices");
    let bytes = p.save_finish(save).seal();

    let mut q = Predictor::new(&Config::builtin());
    q.load(&bytes, 1_000_000)
        .expect("a model saved in slices loads");
    // Every context there was when the save began is there, with the counts it had when its
    // slice was written: no more than it has now. Those learned since wait for the next save.
    assert!(before.iter().all(|k| q.steps.tables.contains_key(k)));
    assert_eq!(q.steps.tables.len(), before.len());
    assert!(!q.runs.tables.is_empty());
    for (key, c) in &q.steps.tables {
        assert!(c.total <= p.steps.tables[key].total + 1e-3, "context {key}");
    }
    assert!(
        p.steps.tables.len() > before.len(),
        "nothing new was learned meanwhile"
    );
    // A model with nothing learned saves and loads too.
    let empty = Predictor::new(&Config::builtin());
    let mut save = empty.save_begin();
    assert!(empty.save_some(&mut save, 0));
    q.load(&empty.save_finish(save).seal(), 0)
        .expect("an empty model loads");
}

#[test]
fn a_busy_session_stays_near_a_kibibyte() {
    let mut p = Predictor::new(&Config::builtin());
    let kinds = ["page_view", "hover", "dwell", "scroll", "input", "run"];
    for i in 0..20_000u64 {
        let kind = kinds[(i % 6) as usize];
        let mut attrs = Map::new();
        attrs.insert("sku".into(), json!(format!("sku-{}", i / 4)));
        let target = (kind == "run").then(|| ["check_inventory", "price_quote"][(i % 2) as usize]);
        p.event(Event {
            attrs,
            ms: Some(i % 5000),
            ..ev("s", kind, target, i * 100)
        });
        if i % 7 == 0 {
            p.hint("s", &[("apply_coupon".into(), 0.3)], i * 100);
        }
    }
    let profile = p.profile("s").expect("the session is live");
    let bytes = profile.memory_bytes_without_inputs();
    println!("session profile after 20000 events, apart from input values: {bytes} bytes");
    assert!(bytes <= 1024, "{bytes} bytes");
}

#[test]
fn a_hint_keeps_a_session_active_and_reload_keeps_what_was_learned() {
    let mut cfg = Config::builtin();
    cfg.sessions.max = 2;
    let mut p = Predictor::new(&cfg);
    p.event(ev("a", "page_view", None, 1));
    p.event(ev("b", "page_view", None, 2));
    p.hint("a", &[("apply_coupon".into(), 0.5)], 3);
    p.event(ev("a", "hover", None, 4));
    p.event(ev("c", "page_view", None, 5));
    assert!(
        p.profile("a").is_some(),
        "the idlest session, b, goes first"
    );
    assert!(p.profile("b").is_none());

    for i in 0..30 {
        let kind = ["page_view", "hover"][i % 2];
        p.event(ev("a", kind, None, 10 + i as u64));
    }
    let before = p.step_ranking("a");
    cfg.processes.retain(|c| c.name != "apply_coupon");
    p.reconfigure(&cfg);
    assert_eq!(p.step_ranking("a"), before);
    assert!(
        p.hot_path("a", 5)
            .iter()
            .all(|h| h.process != "apply_coupon")
    );
}

#[test]
fn runs_of_unconfigured_processes_take_no_run_model_id() {
    let mut p = Predictor::new(&Config::builtin());
    let configured = p.runs.processes.len();
    for i in 0..100 {
        p.event(ev("s", "run", Some(&format!("junk{i}")), i));
    }
    assert_eq!(p.runs.processes.len(), configured);
}

#[test]
fn a_full_run_model_makes_room_for_configured_processes() {
    // A model whose run ids were all taken by names that are not processes (saved by an older
    // build, or left by processes a reload removed).
    let mut old = Predictor::new(&Config::builtin());
    old.runs = RunModel::new(old.runs.half_life_ms);
    for i in 0..runs::MAX_PROCESSES {
        old.runs.intern(&format!("junk{i}"));
    }
    let bytes = old.save();

    let mut cfg = Config::builtin();
    let mut p = Predictor::new(&cfg);
    p.load(&bytes, 0).expect("loads");
    assert!(
        p.process_ids.iter().all(Option::is_some),
        "{:?}",
        p.process_ids
    );
    let hot = p.hint("h", &[("calc_shipping".into(), 0.9)], 1);
    assert!(hot.iter().any(|h| h.process == "calc_shipping"), "{hot:?}");

    // A process added by a reload gets an id too, and is predicted.
    let mut added = cfg.processes[0].clone();
    added.name = "added_later".into();
    cfg.processes.push(added);
    p.reconfigure(&cfg);
    let hot = p.hint("h", &[("added_later".into(), 0.9)], 2);
    assert!(hot.iter().any(|h| h.process == "added_later"), "{hot:?}");
}

#[test]
fn a_saved_model_with_overlong_names_loads_without_them() {
    let mut old = Predictor::new(&Config::builtin());
    for i in 0..5 {
        old.event(ev("s", "page_view", None, i * 10));
        old.event(ev(
            "s",
            &format!("{i}-{}", "k".repeat(100_000)),
            None,
            i * 10 + 5,
        ));
    }
    old.runs.intern(&"j".repeat(100_000));
    let bytes = old.save();
    assert!(bytes.len() > 500_000);

    let mut p = Predictor::new(&Config::builtin());
    let mended = p
        .load(&bytes, 100)
        .expect("a model with long names still loads");
    assert_eq!(mended.long_names, 6);
    assert_eq!(p.steps.step_count(), old.steps.step_count());
    assert!(
        p.steps
            .names
            .iter()
            .all(|n| n.len() <= steps::MAX_STEP_NAME)
    );
    assert_eq!(p.step_id("page_view"), old.step_id("page_view"));
    assert!(p.save().len() < 100_000, "{} bytes", p.save().len());
    p.event(ev("t", "page_view", None, 200));
    assert!(!p.step_ranking("t").is_empty());
}

#[test]
fn saved_times_ahead_of_the_clock_are_brought_back() {
    let now = 1_700_000_000_000u64;
    let mut old = Predictor::new(&Config::builtin());
    for i in 0..30 {
        old.event(ev("s", "page_view", None, now + i));
    }
    // Microseconds taken for milliseconds.
    old.event(ev("s", "run", Some("calc_shipping"), now * 1000));
    old.event(ev("s", "hover", None, now * 1000));
    let bytes = old.save();

    let mut p = Predictor::new(&Config::builtin());
    let mended = p.load(&bytes, now + 10).expect("loads");
    assert!(mended.future_times > 0);
    let limit = now + codec::CLOCK_SLACK_MS;
    assert!(p.steps.order0.last_ms <= limit);
    assert!(p.steps.tables.values().all(|c| c.last_ms <= limit));
    assert!(p.runs.tables.values().all(|c| c.last_ms <= limit));

    // Fading works again: a day later the counts have shrunk.
    let before = p.steps.order0.total;
    let day_later = now + 86_400_000;
    p.event_at(ev("t", "page_view", None, now), day_later);
    p.event_at(ev("t", "page_view", None, now), day_later);
    assert!(
        p.steps.order0.total < before,
        "{} -> {}",
        before,
        p.steps.order0.total
    );
}

#[test]
fn sessions_live_by_the_clock_given_not_the_events_own_time() {
    let mut cfg = Config::builtin();
    cfg.sessions.idle = crate::config::Span(std::time::Duration::from_secs(60));
    let mut p = Predictor::new(&cfg);
    let now = 1_700_000_000_000u64;
    // Recorded long ago, and with a clock far ahead.
    p.event_at(ev("old", "page_view", None, now - 3_600_000), now);
    p.event_at(ev("ahead", "page_view", None, now * 1000), now);
    p.event_at(ev("ahead", "hover", None, now * 1000 + 1), now);
    assert!(p.expire(now + 1_000).is_empty());
    let mut gone = p.expire(now + 60_000);
    gone.sort();
    assert_eq!(gone, ["ahead", "old"]);
    assert_eq!(p.steps.order0.last_ms, now);
}
