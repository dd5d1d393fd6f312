//! Where a layer sets a key: the file and line an error about the merged configuration points at.

use toml::de::{DeTable, DeValue};

/// Where a layer sets a key, and where its entry starts (the `name` of a `[[section]]` entry).
pub(super) struct Lines {
    pub key: Option<usize>,
    pub entry: Option<usize>,
}

/// Where `text` sets `key` of the entry (`section`, `name`); an empty `name` means a plain
/// table such as `[daemon]`. The text is read as TOML, so comments, quotes, dotted keys and
/// inline tables place keys where they are written.
pub(super) fn find_lines(text: &str, section: &str, name: &str, key: &str) -> Lines {
    find_in_entry(text, section, name, 0, key)
}

/// As [`find_lines`], in the entry named `name` that comes `nth` (from 0) among those so named.
pub(super) fn find_in_entry(text: &str, section: &str, name: &str, nth: usize, key: &str) -> Lines {
    let mut found = Lines {
        key: None,
        entry: None,
    };
    // A layer that does not parse was refused before anything is located in it.
    let Ok(doc) = DeTable::parse(text) else {
        return found;
    };
    let line = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let key_line = |t: &DeTable, k: &str| {
        t.iter()
            .find(|(name, _)| name.get_ref().as_ref() == k)
            .map(|(name, _)| line(name.span().start))
    };
    let Some(value) = doc
        .get_ref()
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == section)
    else {
        return found;
    };
    match value.1.get_ref() {
        DeValue::Table(t) if name.is_empty() => found.key = key_line(t, key),
        DeValue::Array(entries) if !name.is_empty() => {
            let named = |t: &&DeTable| {
                t.iter().any(|(k, v)| {
                    k.get_ref().as_ref() == "name"
                        && matches!(v.get_ref(), DeValue::String(s) if s.as_ref() == name)
                })
            };
            let entry = entries
                .iter()
                .filter_map(|e| match e.get_ref() {
                    DeValue::Table(t) => Some(t),
                    _ => None,
                })
                .filter(named)
                .nth(nth);
            if let Some(t) = entry {
                found.entry = key_line(t, "name");
                found.key = key_line(t, key);
            }
        }
        _ => {}
    }
    found
}

/// The section, `pool` or `process`, whose list of entries `line` of `text` opens as a single
/// table (`[pool]` where `[[pool]]` is meant), if it does.
pub(super) fn list_written_as_table(text: &str, line: usize) -> Option<&'static str> {
    let here = text.lines().nth(line.checked_sub(1)?)?;
    let header = here.split('#').next().unwrap_or_default().trim();
    let name = header.strip_prefix('[')?.strip_suffix(']')?.trim();
    ["pool", "process"].into_iter().find(|s| *s == name)
}

#[cfg(test)]
mod tests {
    use super::super::{Source, located};

    fn at(text: &str, entry: (&str, &str, &str)) -> String {
        let sources = [
            Source::builtin(),
            Source {
                name: "x.toml".into(),
                text: text.into(),
            },
        ];
        let e = located(&sources, entry, "m".into()).to_string();
        e.split(": ").next().unwrap_or_default().to_string()
    }

    #[test]
    fn keys_are_found_however_the_file_lays_them_out() {
        let pool = ("pool", "math", "memory_reserve");
        let users = ("daemon", "", "allowed_users");
        for (text, entry, expected) in [
            (
                "[[pool]]  # math\nname = \"math\"\nmemory_reserve = \"64M\"\n",
                pool,
                "x.toml:3",
            ),
            (
                "[[pool]]\nname = \"math\"  # math\nmemory_reserve = \"64M\"\n",
                pool,
                "x.toml:3",
            ),
            (
                "[[pool]]\nname = 'math'\nmemory_reserve = '64M'\n",
                pool,
                "x.toml:3",
            ),
            (
                "[[pool]]\nname = \"shop\"\n\n[[pool]]\n\"name\" = \"math\"\n\
                 \"memory_reserve\" = \"64M\"\n",
                pool,
                "x.toml:6",
            ),
            (
                "pool = [\n  { name = \"shop\" },\n  \
                 { name = \"math\", memory_reserve = \"64M\" },\n]\n",
                pool,
                "x.toml:3",
            ),
            (
                "\ndaemon.allowed_users = [\"nobody1\"]\n",
                users,
                "x.toml:2",
            ),
            (
                "[daemon] # access\n\nallowed_users = []\n",
                users,
                "x.toml:3",
            ),
            // A key the layer leaves alone is found where an earlier one set it.
            ("[[pool]]\nname = \"math\"\n", pool, "x.toml:2"),
        ] {
            assert_eq!(at(text, entry), expected, "{text}");
        }
    }

    #[test]
    fn an_entry_named_twice_in_one_file_is_refused_at_its_second_definition() {
        let layer = Source {
            name: "x.toml".into(),
            text: "[[process]]\nname = \"p\"\npool = \"shop\"\nidempotent = true\n\n\
                   [[process]]\nname = \"p\"\npool = \"shop\"\n"
                .into(),
        };
        let msg = super::super::load_sources(&[Source::builtin(), layer])
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "x.toml:7: process.p.name: is defined twice in this file"
        );
    }

    #[test]
    fn a_list_written_as_one_table_is_named_at_its_header() {
        let sources = |text: &str| {
            [
                Source::builtin(),
                Source {
                    name: "x.toml".into(),
                    text: text.into(),
                },
            ]
        };
        let once = "[daemon]\nqueue_max = 8\n\n[pool] # mine\nname = \"m\"\ncommand = [\"w\"]\n";
        let twice = "[[pool]]\nname = \"m\"\ncommand = [\"w\"]\n[process]\nname = \"a\"\n\
                     pool = \"m\"\n[process]\nname = \"b\"\npool = \"m\"\n";
        for (text, expected) in [
            (once, "x.toml:4: pool: `[pool]` makes one table"),
            (twice, "x.toml:7: process: `[process]` makes one table"),
        ] {
            let msg = super::super::load_sources(&sources(text))
                .unwrap_err()
                .to_string();
            assert!(msg.starts_with(expected), "{msg}");
            assert!(msg.contains("write `[[process]]`") || msg.contains("write `[[pool]]`"));
        }
        // Another table written twice is named at its second header, not the one before it.
        let msg = super::super::load_sources(&sources("[daemon]\n[sessions]\n[daemon]\n"))
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("x.toml:3: daemon:"), "{msg}");
    }
}
