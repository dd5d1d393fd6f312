//! Property tests of the configuration parser: arbitrary text, and arbitrary values under real
//! keys, give a configuration or an error that names a place — never a panic.

use precog::config::{Source, load_sources};
use proptest::prelude::*;

fn layer(text: String) -> Vec<Source> {
    vec![
        Source::builtin(),
        Source {
            name: "prop.toml".into(),
            text,
        },
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        let _ = load_sources(&layer(text));
    }

    #[test]
    fn arbitrary_values_under_real_keys_are_accepted_or_located(
        table in prop_oneof![Just("daemon"), Just("budget"), Just("predict"), Just("sessions")],
        key in prop_oneof![
            Just("max_line"), Just("cache_size"), Just("socket_mode"), Just("cpus"),
            Just("memory"), Just("max_connections"), Just("precision_target"), Just("idle"),
            Just("half_life"), Just("max"), Just("shutdown_grace"),
        ],
        value in prop_oneof![
            Just("\"0\"".to_string()),
            Just("\"-1K\"".to_string()),
            Just("\"99999999999T\"".to_string()),
            Just("\"0-4096\"".to_string()),
            Just("\"9-1\"".to_string()),
            Just("\"1e309\"".to_string()),
            Just("1e309".to_string()), Just("-1".to_string()), Just("\"07777\"".to_string()),
            any::<i64>().prop_map(|i| i.to_string()),
            "\"\\PC{0,12}\"".prop_map(|s| s.replace('\\', "")),
        ],
    ) {
        let text = format!("[{table}]\n{key} = {value}\n");
        if let Err(e) = load_sources(&layer(text)) {
            let msg = e.to_string();
            prop_assert!(msg.starts_with("prop.toml:") || msg.contains("prop.toml"), "{msg}");
        }
    }

    #[test]
    fn arbitrary_pools_are_accepted_or_located(
        warm in 0usize..20,
        max in 0usize..20,
        quota in "[0-9]{1,5}%",
        timeout in "[0-9]{1,3}(ms|s|m|x)",
    ) {
        let text = format!(
            "[[pool]]\nname = \"p\"\ncommand = [\"w\"]\nwarm_min = {warm}\nworkers_max = {max}\n\
             cpu_quota = \"{quota}\"\ntimeout = \"{timeout}\"\n"
        );
        match load_sources(&layer(text)) {
            Ok(cfg) => {
                let p = cfg.pool("p").unwrap();
                prop_assert!(p.warm_min <= p.workers_max && p.workers_max >= 1);
                prop_assert!(!p.timeout.0.is_zero());
            }
            Err(e) => prop_assert!(e.to_string().contains("prop.toml"), "{e}"),
        }
    }
}
