//! `precogd --check-config`: what loading the configuration checks, and then what only this host
//! can tell, each placed at the file and line that set it.

use std::process::ExitCode;

use precog::config::{self, Config, Source};

/// Errors are what a start or a reload would refuse: a worker command that cannot be found, a
/// pool on CPUs this host does not let precogd use. Notes are what a start goes on with: a pool
/// that keeps some of its CPUs, users and groups that do not exist, a pool that keeps warm
/// workers for no process, reservations beyond the memory budget, a worker's file named by a
/// relative path.
pub fn check_config(config: &Config, sources: &[Source]) -> ExitCode {
    let (errors, notes) = host_findings(config, sources);
    for n in &notes {
        eprintln!("precogd: note: {n}");
    }
    for e in &errors {
        eprintln!("precogd: {e}");
    }
    if !errors.is_empty() {
        return ExitCode::from(2);
    }
    println!("configuration is valid");
    ExitCode::SUCCESS
}

/// What a start or a reload refuses that only this host can tell, each placed at the file and
/// line that set it; empty when there is nothing.
pub fn host_errors(config: &Config, sources: &[Source]) -> Vec<String> {
    host_findings(config, sources).0
}

fn host_findings(cfg: &Config, sources: &[Source]) -> (Vec<String>, Vec<String>) {
    let at = |entry: (&str, &str, &str), message: String| {
        config::located(sources, entry, message).to_string()
    };
    let mut errors = Vec::new();
    let mut notes = Vec::new();
    for p in &cfg.pools {
        if let Err(e) = precog::pool::resolve_command(&p.command[0]) {
            errors.push(at(("pool", &p.name, "command"), e.to_string()));
        }
    }
    if let Some(allowed) = precog::pool::usable_cpus() {
        let mut fitted = cfg.clone();
        match config::fit_cpus(&mut fitted, &allowed) {
            Ok(fits) => notes.extend(fits),
            Err(refused) => {
                for e in refused {
                    errors.push(at(("pool", &e.pool, "cpus"), e.to_string()));
                }
            }
        }
    }

    for (pool, arg) in relative_files(cfg) {
        let why = format!(
            "`{arg}` is a file here, but workers start in `/`, where it is `/{arg}`: write its \
             absolute path"
        );
        notes.push(at(("pool", pool, "command"), why));
    }

    for (pool, file) in missing_watched(cfg) {
        notes.push(at(("pool", pool, "watch"), missing_note(&file)));
    }

    for p in &cfg.pools {
        if p.warm_min > 0 && !cfg.processes.iter().any(|proc| proc.pool == p.name) {
            let why = format!(
                "no process runs in pool `{}`: its {} warm workers would wait for nothing",
                p.name, p.warm_min
            );
            notes.push(at(("pool", &p.name, "warm_min"), why));
        }
    }

    if let Some(why) = config::budget_note(cfg) {
        notes.push(at(("budget", "", "memory"), why));
    }

    let d = &cfg.daemon;
    if let Some(group) = &d.socket_group
        && !group_exists(group)
    {
        let why = format!("group `{group}` does not exist: the socket keeps precogd's group");
        notes.push(at(("daemon", "", "socket_group"), why));
    }
    let missing_users: Vec<&str> = d
        .allowed_users
        .iter()
        .filter(|u| !matches!(nix::unistd::User::from_name(u), Ok(Some(_))))
        .map(String::as_str)
        .collect();
    let missing_groups: Vec<&str> = d
        .allowed_groups
        .iter()
        .filter(|g| !group_exists(g))
        .map(String::as_str)
        .collect();
    let nobody_listed = missing_users.len() == d.allowed_users.len()
        && missing_groups.len() == d.allowed_groups.len();
    for (key, names, kind) in [
        ("allowed_users", &missing_users, "user"),
        ("allowed_groups", &missing_groups, "group"),
    ] {
        for name in names.iter() {
            let mut why = format!("{kind} `{name}` does not exist");
            if nobody_listed {
                why.push_str(": only root and precogd's own user may use the socket");
            }
            notes.push(at(("daemon", "", key), why));
        }
    }
    (errors, notes)
}

/// What a start warns of and goes on with, besides what loading the configuration says: a
/// worker's file named by a relative path, a watched file that is not there.
pub fn warn_at_start(cfg: &Config) {
    for (pool, arg) in relative_files(cfg) {
        tracing::warn!(
            pool,
            "worker command names `{arg}`, a file here; workers start in `/`, \
            where it is `/{arg}`: write its absolute path"
        );
    }
    for (pool, file) in missing_watched(cfg) {
        tracing::warn!(pool, "{}", missing_note(&file));
    }
}

/// Files a pool's `watch` lists that cannot be looked at here.
fn missing_watched(cfg: &Config) -> Vec<(&str, String)> {
    let mut found = Vec::new();
    for p in &cfg.pools {
        for file in p
            .watch
            .iter()
            .flatten()
            .filter(|f| std::fs::metadata(f).is_err())
        {
            found.push((p.name.as_str(), file.display().to_string()));
        }
    }
    found
}

fn missing_note(file: &str) -> String {
    format!("watched file `{file}` is not there: a change to it is seen only once it is")
}

/// Arguments of a worker command that name a file by a path relative to the directory precogd
/// was started in (`["python3", "worker.py"]`), which workers, started in `/`, do not find.
/// Only files that exist here and not under `/` count, so options and inline scripts do not.
pub fn relative_files(cfg: &Config) -> Vec<(&str, &str)> {
    let mut found = Vec::new();
    for p in &cfg.pools {
        for arg in p.command.iter().skip(1) {
            let path = std::path::Path::new(arg);
            // A path by its look: a bare word may be an option's value that names a file here
            // by chance.
            let looks_like_a_path = arg.contains('/') || path.extension().is_some();
            if !arg.starts_with('-')
                && looks_like_a_path
                && path.is_relative()
                && path.is_file()
                && !std::path::Path::new("/").join(path).exists()
            {
                found.push((p.name.as_str(), arg.trim_start_matches("./")));
            }
        }
    }
    found
}

fn group_exists(name: &str) -> bool {
    matches!(nix::unistd::Group::from_name(name), Ok(Some(_)))
}
