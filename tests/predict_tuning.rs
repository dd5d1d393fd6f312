//! Compares step-model variants on the JD sessions (run by hand, it takes a while):
//! `cargo test --release --test predict_tuning -- --ignored --nocapture`.

use std::path::PathBuf;

use precog::config::Config;
use precog::eval::{Format, evaluate_tuned, read_sessions};
use precog::predict::{CONTEXTS, StepTuning};

#[test]
#[ignore]
fn compare_step_model_variants() {
    // PRECOG_TUNING_SET=rees46 (or otto) compares on another data set.
    let set = std::env::var("PRECOG_TUNING_SET").unwrap_or_else(|_| "jd".into());
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(&set);
    if !path.exists() {
        println!("SKIPPED: ../shared/data/{set} is not there");
        return;
    }
    let format: Format = set.parse().expect("the data set's folder names its format");
    let sessions = read_sessions(&path, format).expect("the sessions read");
    let cfg = Config::builtin();
    let base = StepTuning::default();
    let all = u32::MAX;
    let without = |i: usize| all & !(1 << i);
    let mut variants = vec![("default".to_string(), base)];
    variants.push((
        "two mixers".into(),
        StepTuning {
            second_mixer: false,
            ..base
        },
    ));
    if std::env::var_os("PRECOG_TUNING_START").is_some() {
        for first in [0.07, 0.2, 0.4, 0.8] {
            for lr in [0.002, 0.005] {
                let t = StepTuning {
                    first_order_weight: first,
                    learning_rate: lr,
                    ..base
                };
                variants.push((format!("first {first} lr {lr}"), t));
            }
        }
    }
    if std::env::var_os("PRECOG_TUNING_GRID").is_some() {
        for lr in [0.001, 0.002, 0.005] {
            for backoff in [0.4, 1.5] {
                for by_step in [false, true] {
                    for init in [0.07, 0.3] {
                        let t = StepTuning {
                            learning_rate: lr,
                            backoff,
                            weight_sets_by_step: by_step,
                            initial_weight: init,
                            ..base
                        };
                        variants.push((format!("lr {lr} bo {backoff} set {by_step} w0 {init}"), t));
                    }
                }
            }
        }
    }
    variants.push((
        "markov order 1 only".into(),
        StepTuning {
            experts: 0b10,
            ..base
        },
    ));
    variants.push((
        "order 3 + dwell only".into(),
        StepTuning {
            experts: 1 << 11,
            ..base
        },
    ));
    for i in 0..=CONTEXTS {
        let t = StepTuning {
            experts: without(i),
            ..base
        };
        variants.push((format!("without expert {i}"), t));
    }
    // JD's dwell is a whole product visit's, so it is known before the visit ends only to an
    // app that reports it up front; this shows what precog scores without it.
    let mut no_dwell = sessions.clone();
    for e in no_dwell.iter_mut().flat_map(|s| s.events.iter_mut()) {
        e.dwell_ms = None;
    }
    let r = evaluate_tuned(&no_dwell, &cfg, None);
    let (p, m) = (r.models.precog, r.models.markov1);
    println!(
        "{:<24} hit@1 {:5.1} ({:+.1})  hit@3 {:5.1} ({:+.1})  mrr {:.3}",
        "default, no dwell",
        p.hit1 * 100.0,
        (p.hit1 - m.hit1) * 100.0,
        p.hit3 * 100.0,
        (p.hit3 - m.hit3) * 100.0,
        p.mrr
    );
    for (name, tuning) in variants {
        let r = evaluate_tuned(&sessions, &cfg, Some(tuning));
        let (p, m) = (r.models.precog, r.models.markov1);
        println!(
            "{name:<24} hit@1 {:5.1} ({:+.1})  hit@3 {:5.1} ({:+.1})  mrr {:.3}",
            p.hit1 * 100.0,
            (p.hit1 - m.hit1) * 100.0,
            p.hit3 * 100.0,
            (p.hit3 - m.hit3) * 100.0,
            p.mrr
        );
    }
}
