//! Logging set-up for the binaries: structured `tracing` events to journald when the daemon runs
//! under it, to stderr otherwise (colour only on a terminal).
//!
//! `RUST_LOG` takes precedence; otherwise `-v` raises the level from `info` to `debug` and
//! `-vv` to `trace`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where log lines went, so the caller can say so once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSink {
    Journald,
    Stderr,
}

/// Installs the global subscriber. Journald is used when stderr is not a terminal and the
/// journal's socket answers (as under systemd); a failure there falls back to stderr.
pub fn init(verbosity: u8) -> LogSink {
    let default = match verbosity {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let stderr_is_tty = std::io::stderr().is_terminal();

    if !stderr_is_tty && std::env::var_os("JOURNAL_STREAM").is_some() {
        let mut mappings = tracing_journald::PriorityMappings::new();
        mappings.info = tracing_journald::Priority::Informational;
        mappings.debug = tracing_journald::Priority::Debug;
        if let Ok(layer) = tracing_journald::layer() {
            let layer = layer.with_priority_mappings(mappings);
            if tracing_subscriber::registry()
                .with(filter.clone())
                .with(layer)
                .try_init()
                .is_ok()
            {
                return LogSink::Journald;
            }
        }
    }

    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(stderr_is_tty)
        .with_target(false);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init();
    LogSink::Stderr
}
