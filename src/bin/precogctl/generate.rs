//! `precogctl generate`: writes the man pages and shell completions from the CLI definitions,
//! for the package build.

use std::path::PathBuf;

use clap::CommandFactory;
use precog::cli::{self, DaemonArgs};

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Directory for precogd.8, precogctl.1 and a page per precogctl subcommand.
    #[arg(long, value_name = "DIR")]
    pub man: Option<PathBuf>,

    /// Directory for the bash, zsh and fish completions of precogctl and precogd.
    #[arg(long, value_name = "DIR")]
    pub completions: Option<PathBuf>,
}

pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    if args.man.is_none() && args.completions.is_none() {
        anyhow::bail!("give --man DIR, --completions DIR or both");
    }
    let mut written = Vec::new();
    if let Some(dir) = &args.man {
        written.extend(cli::write_man_pages(DaemonArgs::command(), "8", dir)?);
        written.extend(cli::write_man_pages(crate::Cli::command(), "1", dir)?);
    }
    if let Some(dir) = &args.completions {
        written.extend(cli::write_completions(crate::Cli::command(), dir)?);
        written.extend(cli::write_completions(DaemonArgs::command(), dir)?);
    }
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}
