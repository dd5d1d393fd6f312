//! `precogctl eval`: scores precog's next-step model on recorded sessions against the
//! most-popular-step and first-order Markov baselines, training online as the daemon would.

use std::path::PathBuf;

use anyhow::{Context, bail};
use precog::config::Config;
use precog::eval::{Format, evaluate_sessions, read_sessions};

/// Several files of one format are read as one stream of sessions (JD ships two).
pub fn run(files: &[PathBuf], format: &str, as_json: bool) -> anyhow::Result<()> {
    let format: Format = format
        .parse()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("--format takes jd, rees46, otto or events")?;
    let mut sessions = Vec::new();
    for file in files {
        let read = read_sessions(file, format);
        let read = read.with_context(|| format!("cannot read {}", file.display()))?;
        // An empty report would read as a model that predicts nothing.
        if read.is_empty() {
            bail!(
                "{} holds no sessions to score; is it the right file for --format?",
                file.display()
            );
        }
        sessions.extend(read);
    }
    let report = evaluate_sessions(&sessions, &Config::builtin());
    if as_json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}
