//! Reading the configuration layers and merging them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::locate::{Lines, find_in_entry, find_lines, list_written_as_table};
use super::values::in_plain_words;
use super::{BUILTIN, Config, ConfigError, validate};

/// One layer of configuration text and the name it is reported under.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
}

impl Source {
    pub fn builtin() -> Source {
        Source {
            name: "<built-in>".into(),
            text: BUILTIN.into(),
        }
    }
}

/// Loads the built-in layer, the system file and its drop-ins.
///
/// With `explicit` set (`--config PATH`), that file replaces the system file and must exist;
/// otherwise `system` is read when it exists. Drop-ins are `<file>.d/*.toml`, in name order.
pub fn load(system: &Path, explicit: bool) -> Result<Config, ConfigError> {
    load_sources(&sources(system, explicit)?)
}

/// The layers [`load`] reads, in order: the built-in one, the system file, its drop-ins.
pub fn sources(system: &Path, explicit: bool) -> Result<Vec<Source>, ConfigError> {
    let mut sources = vec![Source::builtin()];
    match std::fs::read_to_string(system) {
        Ok(text) => sources.push(Source {
            name: system.display().to_string(),
            text,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {}
        Err(e) => {
            return Err(ConfigError::Read {
                path: system.to_path_buf(),
                message: e.to_string(),
            });
        }
    }

    let dropin_dir = PathBuf::from(format!("{}.d", system.display()));
    let mut dropins: Vec<PathBuf> = match std::fs::read_dir(&dropin_dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect(),
        Err(_) => Vec::new(),
    };
    dropins.sort();
    for path in dropins {
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Read {
            path: path.clone(),
            message: e.to_string(),
        })?;
        sources.push(Source {
            name: path.display().to_string(),
            text,
        });
    }
    Ok(sources)
}

/// Checks each layer, merges them in order and checks the result.
pub fn load_sources(sources: &[Source]) -> Result<Config, ConfigError> {
    let mut merged = Table::new();
    for src in sources {
        // Parsing the layer on its own catches unknown keys and bad values where they were
        // written; missing keys are fine here, they may come from an earlier layer.
        toml::from_str::<Config>(&src.text).map_err(|e| layer_error(src, &e))?;
        let table: Table = src.text.parse().map_err(|e| layer_error(src, &e))?;
        merge(&mut merged, table, src)?;
    }

    let locate = |section: &str, name: &str, key: &str| locate(sources, section, name, key);
    let cfg: Config = Config::deserialize_table(merged).map_err(|e| {
        let (file, line) = locate("", "", "");
        ConfigError::Invalid {
            file,
            line,
            key: String::new(),
            message: e.message().to_string(),
        }
    })?;
    validate(&cfg, &locate)?;
    Ok(cfg)
}

impl Config {
    fn deserialize_table(t: Table) -> Result<Config, toml::de::Error> {
        toml::from_str(&toml::to_string(&t).unwrap_or_default())
    }
}

fn layer_error(src: &Source, e: &toml::de::Error) -> ConfigError {
    let offset = e.span().map(|s| s.start).unwrap_or(0);
    let line = src.text[..offset.min(src.text.len())].matches('\n').count() + 1;
    if let Some(section) = list_written_as_table(&src.text, line) {
        return ConfigError::Invalid {
            file: src.name.clone(),
            line,
            key: section.into(),
            message: format!(
                "`[{section}]` makes one table, but each {section} is an entry of a list: \
                 write `[[{section}]]`, once for each {section}"
            ),
        };
    }
    ConfigError::Invalid {
        file: src.name.clone(),
        line,
        key: key_at(&src.text, line),
        message: in_plain_words(e.message().trim()),
    }
}

/// The dotted key written on `line`: the table header above it, the entry's `name` under a
/// `[[pool]]` or `[[process]]` header, and the key before `=` (`pool.math.workers_max`), as
/// the checks of the merged configuration name keys.
fn key_at(text: &str, line: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let here = lines.get(line.saturating_sub(1)).copied().unwrap_or("");
    let key = here
        .split_once('=')
        .map(|(k, _)| k.trim().to_string())
        .unwrap_or_default();
    // The line itself when it is a header (a table written twice is reported there).
    let header = lines[..line.min(lines.len())]
        .iter()
        .rposition(|l| l.trim().starts_with('['));
    let mut section = header
        .map(|at| {
            let l = lines[at].trim();
            l.trim_matches(|c| c == '[' || c == ']').trim().to_string()
        })
        .unwrap_or_default();
    if let Some(at) = header.filter(|&at| lines[at].trim().starts_with("[["))
        && key != "name"
        && let Some(name) = entry_name(&lines[at + 1..])
    {
        section = format!("{section}.{name}");
    }
    match (section.is_empty(), key.is_empty()) {
        (true, _) => key,
        (false, true) => section,
        (false, false) => format!("{section}.{key}"),
    }
}

/// The `name = "…"` of the array entry whose lines (after its header) begin `lines`.
fn entry_name(lines: &[&str]) -> Option<String> {
    lines
        .iter()
        .map(|l| l.trim())
        .take_while(|l| !l.starts_with('['))
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            (k.trim() == "name" && v.len() > 1 && v.starts_with('"') && v.ends_with('"'))
                .then(|| v[1..v.len() - 1].to_string())
        })
}

/// Lays `layer` over `base`: tables merge key by key; `pool` and `process` entries merge by name.
fn merge(base: &mut Table, layer: Table, src: &Source) -> Result<(), ConfigError> {
    for (section, value) in layer {
        match (section.as_str(), value) {
            ("pool" | "process", Value::Array(entries)) => {
                let list = base
                    .entry(section.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                let Value::Array(list) = list else {
                    unreachable!("checked by the layer parse")
                };
                // Names this layer defined, and how often: a second definition is a slip.
                let mut defined: HashMap<String, usize> = HashMap::new();
                for entry in entries {
                    let Value::Table(entry) = entry else { continue };
                    let Some(name) = entry.get("name").and_then(Value::as_str) else {
                        return Err(ConfigError::Invalid {
                            file: src.name.clone(),
                            line: 1,
                            key: format!("{section}.name"),
                            message: format!("every [[{section}]] needs a name"),
                        });
                    };
                    let times = defined.entry(name.to_string()).or_default();
                    *times += 1;
                    if *times > 1 {
                        let found = find_in_entry(&src.text, &section, name, *times - 1, "name");
                        return Err(ConfigError::Invalid {
                            file: src.name.clone(),
                            line: found.entry.unwrap_or(1),
                            key: format!("{section}.{name}.name"),
                            message: "is defined twice in this file".into(),
                        });
                    }
                    let existing = list.iter_mut().find_map(|v| match v {
                        Value::Table(t) if t.get("name").and_then(Value::as_str) == Some(name) => {
                            Some(t)
                        }
                        _ => None,
                    });
                    match existing {
                        Some(t) => t.extend(entry),
                        None => list.push(Value::Table(entry)),
                    }
                }
            }
            (_, Value::Table(t)) => match base.get_mut(&section) {
                Some(Value::Table(b)) => b.extend(t),
                _ => {
                    base.insert(section, Value::Table(t));
                }
            },
            (_, v) => {
                base.insert(section, v);
            }
        }
    }
    Ok(())
}

/// An error about `key` of the entry (`section`, `name`) found after loading, such as one only
/// the host can tell (a worker command not found), placed where the key was last set.
pub fn located(
    sources: &[Source],
    (section, name, key): (&str, &str, &str),
    message: String,
) -> ConfigError {
    let (file, line) = locate(sources, section, name, key);
    let key = [section, name, key]
        .iter()
        .filter(|part| !part.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(".");
    ConfigError::Invalid {
        file,
        line,
        key,
        message,
    }
}

/// Finds the last layer that sets `key` of the entry (`section`, `name`) and the line it is on;
/// when no layer sets it (a default, a missing key), the line of the entry in the last layer
/// that has it. An empty `name` means a plain table such as `[daemon]`.
fn locate(sources: &[Source], section: &str, name: &str, key: &str) -> (String, usize) {
    let found: Vec<(&Source, Lines)> = sources
        .iter()
        .rev()
        .map(|src| (src, find_lines(&src.text, section, name, key)))
        .collect();
    let by_key = found.iter().find_map(|(src, l)| Some((*src, l.key?)));
    let by_entry = || found.iter().find_map(|(src, l)| Some((*src, l.entry?)));
    match by_key.or_else(by_entry) {
        Some((src, line)) => (src.name.clone(), line),
        None => {
            let last = sources.last().map(|s| s.name.clone()).unwrap_or_default();
            (last, 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn src(name: &str, text: &str) -> Source {
        Source {
            name: name.into(),
            text: text.into(),
        }
    }

    #[test]
    fn builtin_is_valid() {
        let c = Config::builtin();
        assert!(c.pool("shop").is_some());
        assert!(c.process("calc_shipping").unwrap().idempotent);
        assert_eq!(c.daemon.max_line.0, 1 << 20);
    }

    #[test]
    fn a_later_layer_replaces_keys_and_merges_entries_by_name() {
        let layer = src(
            "/etc/precog/precogd.toml",
            "[daemon]\ncache_size = \"1G\"\n[[pool]]\nname = \"shop\"\nworkers_max = 3\n\
             [[pool]]\nname = \"fast\"\ncommand = [\"w\"]\n",
        );
        let c = load_sources(&[Source::builtin(), layer]).unwrap();
        assert_eq!(c.daemon.cache_size.0, 1 << 30);
        let shop = c.pool("shop").unwrap();
        assert_eq!(shop.workers_max, 3);
        assert_eq!(shop.command, vec!["precog-shop-worker".to_string()]);
        assert_eq!(c.pool("fast").unwrap().warm_min, 1);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let layer = src("drop.toml", "\n[daemon]\nsocket_mdoe = \"0600\"\n");
        let e = load_sources(&[Source::builtin(), layer]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("drop.toml:3: daemon.socket_mdoe:"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");
    }

    #[test]
    fn bad_value_names_file_line_and_key() {
        let layer = src(
            "x.toml",
            "[[pool]]\nname = \"shop\"\ntimeout = \"2 fortnights\"\n",
        );
        let msg = load_sources(&[Source::builtin(), layer])
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("x.toml:3: pool.shop.timeout:"), "{msg}");
    }

    #[test]
    fn a_bad_value_in_an_entry_names_the_entry_and_the_type_in_plain_words() {
        let layer = src(
            "x.toml",
            "[[pool]]\nname = \"math\"\ncommand = [\"w\"]\n[[pool]]\nworkers_max = \"three\"\n\
             name = \"shop\"\n",
        );
        let msg = load_sources(&[Source::builtin(), layer])
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("x.toml:5: pool.shop.workers_max:"), "{msg}");
        assert!(msg.ends_with("expected a whole number, 0 or more"), "{msg}");
    }

    #[test]
    fn a_pool_start_timeout_defaults_to_ten_seconds_and_is_parsed_like_timeout() {
        let c = Config::builtin();
        assert_eq!(
            c.pool("shop").unwrap().start_timeout.0,
            Duration::from_secs(10)
        );
        let layer = src(
            "x.toml",
            "[[pool]]\nname = \"shop\"\nstart_timeout = \"1m\"\n",
        );
        let c = load_sources(&[Source::builtin(), layer]).unwrap();
        assert_eq!(
            c.pool("shop").unwrap().start_timeout.0,
            Duration::from_secs(60)
        );
        let layer = src(
            "x.toml",
            "[[pool]]\nname = \"shop\"\n\nstart_timeout = \"soon\"\n",
        );
        let msg = load_sources(&[Source::builtin(), layer])
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("x.toml:4: pool.shop.start_timeout:"),
            "{msg}"
        );
    }

    #[test]
    fn a_duration_past_a_century_names_its_key() {
        for (text, at) in [
            (
                "[daemon]\nidle_close = \"18446744073709551615s\"\n",
                "x.toml:2: daemon.idle_close:",
            ),
            (
                "[daemon]\nshutdown_grace = \"36501d\"\n",
                "x.toml:2: daemon.shutdown_grace:",
            ),
            (
                "[[pool]]\nname = \"shop\"\ntimeout = \"99999999999h\"\n",
                "x.toml:3: pool.shop.timeout:",
            ),
        ] {
            let msg = load_sources(&[Source::builtin(), src("x.toml", text)])
                .unwrap_err()
                .to_string();
            assert!(msg.starts_with(at), "{msg}");
            assert!(msg.contains("longer than a century"), "{msg}");
        }
        let century = src("x.toml", "[daemon]\nidle_close = \"36500d\"\n");
        load_sources(&[Source::builtin(), century]).expect("a century is the longest span");
    }

    #[test]
    fn limits_no_worker_could_live_under_are_refused() {
        for (line, key) in [
            ("memory_max = \"0\"", "memory_max"),
            ("memory_max = \"1M\"", "memory_max"),
            ("pids_max = 0", "pids_max"),
            ("pids_max = 4194305", "pids_max"),
            ("cpu_quota = \"0.5%\"", "cpu_quota"),
            ("cpu_min = \"0.99%\"", "cpu_min"),
            ("cpu_max = \"0.1%\"", "cpu_max"),
        ] {
            let pool = format!("[[pool]]\nname = \"tiny\"\ncommand = [\"w\"]\n{line}\n");
            let layer = src("z.toml", &pool);
            let msg = load_sources(&[Source::builtin(), layer])
                .unwrap_err()
                .to_string();
            assert!(msg.contains(&format!("pool.tiny.{key}:")), "{line}: {msg}");
        }
        let fine = src(
            "z.toml",
            "[[pool]]\nname = \"tiny\"\ncommand = [\"w\"]\nmemory_max = \"4M\"\npids_max = 1\n\
             cpu_quota = \"1%\"\ncpu_min = \"1%\"\n",
        );
        load_sources(&[Source::builtin(), fine]).expect("the smallest limits that work");
        let fine = src(
            "z.toml",
            "[[pool]]\nname = \"tiny\"\ncommand = [\"w\"]\npids_max = 4194304\n",
        );
        load_sources(&[Source::builtin(), fine]).expect("the largest task limit");
    }

    #[test]
    fn session_and_prediction_settings_that_would_lose_work_are_refused() {
        for (text, key, says) in [
            (
                "[sessions]\nidle = \"0s\"\n",
                "sessions.idle",
                "at least 1s",
            ),
            ("[sessions]\nmax = 0\n", "sessions.max", "at least 1"),
            ("[predict]\nhot_path = 0\n", "predict.hot_path", "1 to 64"),
            ("[predict]\nhot_path = 65\n", "predict.hot_path", "1 to 64"),
            (
                "[predict]\nsave_interval = \"0s\"\n",
                "predict.save_interval",
                "at least 1s",
            ),
        ] {
            let e = load_sources(&[Source::builtin(), src("/etc/x.toml", text)]).unwrap_err();
            let shown = e.to_string();
            assert!(shown.starts_with("/etc/x.toml:2: "), "{text}: {shown}");
            assert!(
                shown.contains(key) && shown.contains(says),
                "{text}: {shown}"
            );
        }
        let edge = "[sessions]\nidle = \"1s\"\nmax = 1\n[predict]\nhot_path = 64\n";
        assert!(load_sources(&[Source::builtin(), src("/etc/x.toml", edge)]).is_ok());
    }

    #[test]
    fn pool_names_that_cgroups_cannot_hold_are_refused() {
        for name in [
            "tasks",
            "cgroup.procs",
            "pids.max",
            "daemon",
            "a/b",
            "",
            "é",
        ] {
            let pool = format!("[[pool]]\nname = \"{name}\"\ncommand = [\"w\"]\n");
            let msg = load_sources(&[Source::builtin(), src("n.toml", &pool)])
                .unwrap_err()
                .to_string();
            assert!(msg.contains(".name:"), "{name}: {msg}");
        }
        let fine = src(
            "n.toml",
            "[[pool]]\nname = \"check-out_2\"\ncommand = [\"w\"]\n",
        );
        load_sources(&[Source::builtin(), fine]).expect("a plain name");
    }

    #[test]
    fn an_input_both_required_and_optional_is_refused() {
        let layer = src(
            "o.toml",
            "[[process]]\nname = \"p\"\npool = \"shop\"\ninputs = [\"a\"]\n\
             optional_inputs = [\"b\", \"a\"]\n",
        );
        let msg = load_sources(&[Source::builtin(), layer])
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "o.toml:5: process.p.optional_inputs: `a` is also one of the process's required inputs"
        );
    }

    #[test]
    fn process_with_missing_pool_is_located() {
        let layer = src(
            "y.toml",
            "[[process]]\nname = \"p\"\npool = \"nowhere\"\ninputs = []\n",
        );
        let msg = load_sources(&[Source::builtin(), layer])
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "y.toml:3: process.p.pool: names pool `nowhere`, which is not defined"
        );
    }

    #[test]
    fn an_error_points_at_the_layer_that_set_the_key() {
        // The built-in layer sets the shop pool's memory_reserve (64M); lowering memory_max under
        // it is reported at the reserve's line there, with both values.
        let layer = src(
            "m.toml",
            "[[pool]]\nname = \"shop\"\nmemory_max = \"32M\"\n",
        );
        let msg = load_sources(&[Source::builtin(), layer])
            .unwrap_err()
            .to_string();
        let builtin = Source::builtin().text;
        let line = builtin
            .lines()
            .position(|l| l.starts_with("memory_reserve"))
            .unwrap()
            + 1;
        assert_eq!(
            msg,
            format!("<built-in>:{line}: pool.shop.memory_reserve: 64M is above memory_max = 32M")
        );

        // A key no layer sets is reported at the entry of the last layer that has it.
        let layer = src("n.toml", "\n[[pool]]\nname = \"new\"\n");
        let msg = load_sources(&[Source::builtin(), layer])
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("n.toml:3: pool.new.command"), "{msg}");
    }

    #[test]
    fn dependency_cycles_and_unknown_after_are_refused() {
        let layer = src(
            "z.toml",
            "[[process]]\nname = \"validate_postal_code\"\nafter = [\"calc_shipping\"]\n",
        );
        let msg = load_sources(&[Source::builtin(), layer])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("dependency cycle"), "{msg}");

        let layer = src(
            "z.toml",
            "[[process]]\nname = \"q\"\npool = \"shop\"\nafter = [\"nope\"]\n",
        );
        let msg = load_sources(&[Source::builtin(), layer])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("z.toml:4: process.q.after"), "{msg}");
    }

    #[test]
    fn files_and_dropins_are_read_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("precogd.toml");
        std::fs::write(&main, "[sessions]\nmax = 10\n").unwrap();
        std::fs::create_dir(dir.path().join("precogd.toml.d")).unwrap();
        std::fs::write(
            dir.path().join("precogd.toml.d/20-b.toml"),
            "[sessions]\nmax = 30\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("precogd.toml.d/10-a.toml"),
            "[sessions]\nmax = 20\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("precogd.toml.d/ignored.txt"), "garbage").unwrap();
        assert_eq!(load(&main, true).unwrap().sessions.max, 30);

        let missing = dir.path().join("absent.toml");
        assert!(load(&missing, false).is_ok());
        assert!(matches!(
            load(&missing, true),
            Err(ConfigError::Read { .. })
        ));
    }
}
