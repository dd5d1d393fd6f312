//! What a new configuration changes against the running one, said in the words of the file:
//! `pool t: workers_max 3 -> 1`, `process quote added`. A reload logs it, so an operator can tell
//! from the journal what a SIGHUP did.

use serde_json::{Map, Value};

use super::Config;

/// The changes from `old` to `new`, one per key, pool or process; empty when they are the same.
pub fn changes(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(old), Ok(new)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        return vec!["the configuration (cannot be compared)".into()];
    };
    let mut out = Vec::new();
    for section in ["daemon", "sessions", "predict", "budget"] {
        keys(
            &format!("[{section}]"),
            &old[section],
            &new[section],
            &mut out,
        );
    }
    for kind in ["pool", "process"] {
        named(kind, &old[kind], &new[kind], &mut out);
    }
    out
}

/// The keys of table `a` that `b` changes, added or drops.
fn keys(prefix: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    let empty = Map::new();
    let a = a.as_object().unwrap_or(&empty);
    let b = b.as_object().unwrap_or(&empty);
    let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let before = a.get(name).unwrap_or(&Value::Null);
        let after = b.get(name).unwrap_or(&Value::Null);
        if before != after {
            out.push(format!(
                "{prefix} {name} {} -> {}",
                short(before),
                short(after)
            ));
        }
    }
}

/// Pools or processes, matched by name.
fn named(kind: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    let list = |v: &Value| -> Vec<(String, Value)> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|item| {
                (
                    item["name"].as_str().unwrap_or("").to_string(),
                    item.clone(),
                )
            })
            .collect()
    };
    let (a, b) = (list(a), list(b));
    for (name, before) in &a {
        match b.iter().find(|(n, _)| n == name) {
            Some((_, after)) => keys(&format!("{kind} {name}:"), before, after, out),
            None => out.push(format!("{kind} {name} removed")),
        }
    }
    for (name, _) in b.iter().filter(|(n, _)| !a.iter().any(|(m, _)| m == n)) {
        out.push(format!("{kind} {name} added"));
    }
}

/// A value as the log shows it: scalars as written, at most 40 characters, lists and tables
/// by kind.
fn short(v: &Value) -> String {
    let text = match v {
        Value::Null => return "(unset)".into(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) if items.iter().all(|i| !i.is_array() && !i.is_object()) => {
            v.to_string()
        }
        Value::Array(_) => return "(a list)".into(),
        Value::Object(_) => return "(a table)".into(),
        other => other.to_string(),
    };
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ByteSize, Span};

    #[test]
    fn the_same_configuration_changes_nothing() {
        let c = Config::builtin();
        assert!(changes(&c, &c.clone()).is_empty());
    }

    #[test]
    fn changed_keys_say_their_old_and_new_values() {
        let old = Config::builtin();
        let mut new = old.clone();
        new.daemon.idle_close = Span(std::time::Duration::from_secs(7));
        new.daemon.max_line = ByteSize(4096);
        let workers_max = old.pools[0].workers_max;
        new.pools[0].workers_max = workers_max + 1;
        let pool = old.pools[0].name.clone();
        let got = changes(&old, &new);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            got.iter()
                .any(|c| c.starts_with("[daemon] idle_close ") && c.ends_with("-> \"7s\"")),
            "{got:?}"
        );
        assert!(
            got.iter().any(|c| c.starts_with("[daemon] max_line ")),
            "{got:?}"
        );
        let expected = format!(
            "pool {pool}: workers_max {workers_max} -> {}",
            workers_max + 1
        );
        assert!(got.contains(&expected), "{got:?}");
    }

    #[test]
    fn pools_and_processes_added_and_removed_are_named() {
        let old = Config::builtin();
        let mut new = old.clone();
        let mut pool = new.pools[0].clone();
        pool.name = "extra".into();
        new.pools.push(pool);
        let gone = new.processes.remove(0).name;
        let got = changes(&old, &new);
        assert!(got.contains(&"pool extra added".to_string()), "{got:?}");
        assert!(got.contains(&format!("process {gone} removed")), "{got:?}");
        assert_eq!(got.len(), 2, "{got:?}");
    }

    #[test]
    fn long_values_are_cut_and_lists_of_tables_are_not_spelled_out() {
        let long = Value::String("x".repeat(100));
        assert_eq!(short(&long).chars().count(), 43);
        assert!(short(&long).ends_with("..."));
        assert_eq!(short(&serde_json::json!([{"a": 1}])), "(a list)");
        assert_eq!(
            short(&serde_json::json!(["python3", "w.py"])),
            "[\"python3\",\"w.py\"]"
        );
        assert_eq!(short(&Value::Null), "(unset)");
    }
}
