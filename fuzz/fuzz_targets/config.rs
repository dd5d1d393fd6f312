//! Fuzzes the configuration parser: arbitrary text as the system file laid over the built-in
//! default, and as a drop-in after it. Errors are fine; panics are not.

#![no_main]

use libfuzzer_sys::fuzz_target;
use precog::config::{Source, load_sources};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Source {
        name: "fuzz.toml".into(),
        text: text.to_string(),
    };
    let _ = load_sources(&[Source::builtin(), file.clone()]);
    let _ = load_sources(&[file]);
});
