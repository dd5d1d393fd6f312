//! Command-line definitions shared by the binaries and by the generated man pages and shell
//! completions.
//!
//! `precogd`'s arguments live here (not in the binary) so that `precogctl generate` can write
//! `precogd.8` next to `precogctl.1` from the very definitions the daemon parses.

use std::fs;
use std::path::{Path, PathBuf};

use clap::{Command, Parser};
use clap_complete::Shell;

use crate::control::Bus;

/// The runtime directory of a precogd that does not run as root, where precogctl looks for its
/// socket too: `$XDG_RUNTIME_DIR`, else [`fallback_runtime_dir`].
pub fn user_runtime_dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(fallback_runtime_dir)
}

/// The runtime directory when `XDG_RUNTIME_DIR` is not set: in the shared temporary directory,
/// named after the user. precogd makes it private, and refuses one another user made.
pub fn fallback_runtime_dir() -> PathBuf {
    std::env::temp_dir().join(format!("precog-{}", nix::unistd::getuid().as_raw()))
}

/// Why `dir` (a per-user runtime directory in the shared temporary directory) is not this user's
/// own, if it is not: another user, or a link by its name, could stand in for precogd there.
/// `None` when it is a directory this user owns, or does not exist.
pub fn foreign_runtime_dir(dir: &Path) -> std::io::Result<Option<String>> {
    use std::os::unix::fs::MetadataExt;
    let meta = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let uid = nix::unistd::getuid().as_raw();
    Ok(if !meta.file_type().is_dir() {
        Some("is not a directory".to_string())
    } else if meta.uid() != uid {
        Some(format!(
            "belongs to uid {}, not to this user (uid {uid})",
            meta.uid()
        ))
    } else {
        None
    })
}

/// precogd's command line.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "precogd",
    version,
    about = "precog daemon: runs a shop's likely next steps ahead of time",
    long_about = "precog daemon: runs a shop's likely next steps ahead of time.\n\n\
        App servers send visitor events over a Unix socket; precogd predicts which \
        micro-processes each visitor needs next, runs them ahead of time in warm worker \
        processes, and answers run requests from the results. It reloads its configuration on \
        SIGHUP (or the D-Bus Reload method) and stops gracefully on SIGTERM."
)]
pub struct DaemonArgs {
    /// Configuration file to use instead of /etc/precog/precogd.toml (its drop-ins in
    /// <FILE>.d/*.toml are read too).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Socket path, overriding the configuration.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Check the configuration, print the result and exit.
    #[arg(long)]
    pub check_config: bool,

    /// D-Bus bus for the org.precog.Precog1 control interface: system, session, none, or a
    /// D-Bus address. When the bus cannot be reached precogd says so once and runs without it.
    #[arg(long, value_name = "BUS", default_value = "system")]
    pub bus: Bus,

    /// More log detail (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes the man page of `cmd` into `dir` in `section`, plus one page per visible
/// subcommand (`precogctl-status.1`, …), which the main page refers to; returns the files.
pub fn write_man_pages(cmd: Command, section: &str, dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    create_dir(dir)?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_page_tree(cmd, section, dir, &mut written)?;
    Ok(written)
}

fn write_page_tree(
    cmd: Command,
    section: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), CliError> {
    let man = clap_mangen::Man::new(cmd.clone()).section(section);
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)
        .and_then(|()| fs::write(&path, page))
        .map_err(|source| CliError::Io {
            op: "write the man page",
            path: path.clone(),
            source,
        })?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page_tree(sub.clone(), section, dir, written)?;
    }
    Ok(())
}

/// Writes bash, zsh and fish completions for `cmd` into `dir`, under the names each shell
/// looks for (`precogctl.bash`, `_precogctl`, `precogctl.fish`); returns the files written.
pub fn write_completions(mut cmd: Command, dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    create_dir(dir)?;
    let name = cmd.get_name().to_string();
    let mut written = Vec::new();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut cmd, &name, dir).map_err(|source| {
            CliError::Io {
                op: "write completions into",
                path: dir.to_path_buf(),
                source,
            }
        })?;
        written.push(path);
    }
    Ok(written)
}

fn create_dir(dir: &Path) -> Result<(), CliError> {
    fs::create_dir_all(dir).map_err(|source| CliError::Io {
        op: "create",
        path: dir.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn daemon_arguments_are_consistent() {
        DaemonArgs::command().debug_assert();
    }

    #[test]
    fn bus_defaults_to_system_and_takes_an_address() {
        let a = DaemonArgs::try_parse_from(["precogd"]).unwrap();
        assert_eq!(a.bus, Bus::System);
        let a = DaemonArgs::try_parse_from(["precogd", "--bus", "unix:path=/tmp/x"]).unwrap();
        assert_eq!(a.bus, Bus::Address("unix:path=/tmp/x".into()));
        assert!(DaemonArgs::try_parse_from(["precogd", "--bus", "nowhere"]).is_err());
    }

    #[test]
    fn man_page_and_completions_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let pages = write_man_pages(DaemonArgs::command(), "8", dir.path()).unwrap();
        assert_eq!(pages, [dir.path().join("precogd.8")]);
        let text = fs::read_to_string(&pages[0]).unwrap();
        assert!(text.contains(".TH precogd 8"), "{text}");
        assert!(text.contains("\\-\\-bus"));
        let files = write_completions(DaemonArgs::command(), dir.path()).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["precogd.bash", "_precogd", "precogd.fish"]);
    }
}
