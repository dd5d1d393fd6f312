//! The documentation against the code: every configuration key is in the reference, the shell
//! examples wait for slow replies, and the precogctl man page lists the commands `--help` lists,
//! with an example that sends what it means to.

use std::path::Path;
use std::process::Command;

use precog::config::{Config, PoolConfig, ProcessConfig};
use serde_json::Value;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn keys(v: Value) -> Vec<String> {
    v.as_object().expect("an object").keys().cloned().collect()
}

#[test]
fn the_configuration_reference_names_every_section_and_key() {
    let doc = read("docs/configuration.md");
    let config = serde_json::to_value(Config::builtin()).expect("serialises");
    let mut missing = Vec::new();
    for section in ["daemon", "sessions", "predict", "budget"] {
        if !doc.contains(&format!("## `[{section}]`")) {
            missing.push(format!("[{section}]"));
        }
        for key in keys(config[section].clone()) {
            if !doc.contains(&format!("`{key}`")) {
                missing.push(format!("{section}.{key}"));
            }
        }
    }
    for (table, all) in [
        (
            "pool",
            keys(serde_json::to_value(PoolConfig::default()).unwrap()),
        ),
        (
            "process",
            keys(serde_json::to_value(ProcessConfig::default()).unwrap()),
        ),
    ] {
        if !doc.contains(&format!("## `[[{table}]]`")) {
            missing.push(format!("[[{table}]]"));
        }
        missing.extend(
            all.into_iter()
                .filter(|k| !doc.contains(&format!("`{k}`")))
                .map(|k| format!("{table}.{k}")),
        );
    }
    assert!(
        missing.is_empty(),
        "not in docs/configuration.md: {missing:?}"
    );
    assert!(doc.contains("## What a reload applies"));
    assert!(read("README.md").contains("(docs/configuration.md)"));
}

#[test]
fn socat_examples_wait_for_the_reply() {
    for file in ["README.md", "docs/protocol.md", "docs/install.md"] {
        for line in read(file).lines().filter(|l| l.contains("socat ")) {
            let waits = line.contains("socat -t");
            assert!(waits || !line.contains("UNIX-CONNECT"), "{file}: {line}");
        }
    }
}

#[test]
fn the_events_format_is_documented() {
    let doc = read("docs/session-formats.md");
    for field in ["session", "ts", "type", "target", "attrs", "dwell_ms"] {
        assert!(doc.contains(&format!("| `{field}` |")), "{field}");
    }
    assert!(read("README.md").contains("(docs/session-formats.md)"));
}

#[test]
fn the_man_page_agrees_with_precogctl_help() {
    let man = read("packaging/man/precogctl.1");
    let help = Command::new(env!("CARGO_BIN_EXE_precogctl"))
        .arg("--help")
        .output()
        .expect("precogctl --help runs");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() > 10, "{help}");
    for c in commands {
        let roff = c.replace('-', "\\-");
        let listed =
            man.contains(&format!(".B {roff}\n")) || man.contains(&format!(".BI \"{roff} "));
        assert!(listed, "`{c}` is not in the man page's COMMANDS");
    }
    // The example sends the postal code as the string the README's does.
    assert!(
        !man.contains("postal_code=10115"),
        "a number, not a postal code"
    );
    assert!(man.contains("postal_code=\\(aq\"10115\"\\(aq"));
    // The socket's default, in --help's order: $PRECOG_SOCKET first.
    let env_at = man
        .find("By default\n.BR $PRECOG_SOCKET")
        .expect("PRECOG_SOCKET first");
    let system_at = man
        .find("/run/precog/precogd.sock")
        .expect("the system socket");
    assert!(env_at < system_at);
    assert!(man.contains(".B PRECOG_SOCKET") && man.contains(".B PRECOG_BUS"));
}
