//! Configuration: what precogd serves, with which pools and limits.
//!
//! The configuration is TOML in layers. The built-in default (`config/precogd.toml`, embedded in
//! the binary) comes first, then the system file (`/etc/precog/precogd.toml`, or the file given
//! with `--config`), then the drop-ins of `<system file>.d/*.toml` in name order. A later layer
//! replaces the keys it sets; a `[[pool]]` or `[[process]]` whose `name` is already defined is
//! updated key by key, a new name is added.
//!
//! Every layer is checked on its own first (unknown keys, bad values), so an error names the file,
//! line and key where it was written. Checks that need the whole picture (a process naming a pool
//! that does not exist) name the file that defined the offending entry and its line.
//!
//! Nothing here does I/O except [`load`], which reads the layer files.

mod diff;
mod layers;
mod locate;
mod validate;
mod values;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use diff::changes;
pub use layers::{Source, load, load_sources, located, sources};
use validate::validate;
pub use validate::{CPU_PERIOD_US, MAX_HOT_PATH};
pub use values::{ByteSize, CpuList, FileMode, Percent, Span, in_plain_words};

/// The built-in configuration, embedded at build time.
pub const BUILTIN: &str = include_str!("../../config/precogd.toml");

/// The system configuration file that the packaged daemon reads.
pub const SYSTEM_PATH: &str = "/etc/precog/precogd.toml";

/// A configuration error; its message says where and what to change.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ConfigError {
    #[error("{file}:{line}: {}{message}", key_prefix(key))]
    Invalid {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
    #[error("cannot read configuration {path}: {message}")]
    Read { path: PathBuf, message: String },
    /// More than one check failed: each on a line of its own.
    #[error("{}", several(.0))]
    Several(Vec<ConfigError>),
}

fn several(errors: &[ConfigError]) -> String {
    let lines: Vec<String> = errors.iter().map(ConfigError::to_string).collect();
    lines.join("\n")
}

/// `key: ` before a message, or nothing when the error is not about one key.
fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub sessions: SessionsConfig,
    pub predict: PredictConfig,
    pub budget: BudgetConfig,
    #[serde(rename = "pool", default)]
    pub pools: Vec<PoolConfig>,
    #[serde(rename = "process", default)]
    pub processes: Vec<ProcessConfig>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    pub socket_mode: FileMode,
    #[serde(default)]
    pub socket_group: Option<String>,
    pub cache_dir: PathBuf,
    pub state_dir: PathBuf,
    pub cache_size: ByteSize,
    pub state_max: ByteSize,
    pub max_connections: usize,
    pub max_line: ByteSize,
    pub queue_max: usize,
    pub idle_close: Span,
    pub shutdown_grace: Span,
    #[serde(default)]
    pub allowed_users: Vec<String>,
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    pub cgroup_parent: String,
    #[serde(default)]
    pub worker_user: Option<String>,
    /// Loopback address for the Prometheus `/metrics` listener; off when unset.
    #[serde(default)]
    pub metrics_listen: Option<String>,
}

impl DaemonConfig {
    /// For a reload: takes from `running` the keys the daemon uses only at start (the socket,
    /// the stores, the cgroup parent, the metrics listener, the shutdown grace), so the running
    /// daemon goes on as it started until a restart. Names those whose new value is left for
    /// the restart.
    pub fn keep_start_only(&mut self, running: &DaemonConfig) -> Vec<&'static str> {
        let mut kept = Vec::new();
        macro_rules! keep {
            ($($key:ident),*) => {$(
                if self.$key != running.$key {
                    kept.push(stringify!($key));
                    self.$key = running.$key.clone();
                }
            )*};
        }
        keep!(
            socket,
            socket_mode,
            socket_group,
            cache_dir,
            cache_size,
            state_dir,
            state_max,
            cgroup_parent,
            metrics_listen,
            shutdown_grace
        );
        kept
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    pub max: usize,
    pub idle: Span,
    /// What the known inputs of all sessions may take together.
    pub memory: ByteSize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PredictConfig {
    pub hot_path: usize,
    pub speculation: bool,
    pub precision_target: f64,
    pub per_session: usize,
    pub half_life: Span,
    pub save_interval: Span,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    pub cpus: CpuList,
    pub memory: ByteSize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    /// Executable and arguments; a bare name is looked up beside precogd, then in `PATH`.
    pub command: Vec<String>,
    #[serde(default)]
    pub cpus: Option<CpuList>,
    #[serde(default)]
    pub cpu_quota: Option<Percent>,
    /// Bounds the tuner keeps `cpu_quota` within.
    #[serde(default)]
    pub cpu_min: Option<Percent>,
    #[serde(default)]
    pub cpu_max: Option<Percent>,
    /// Relative CPU weight on the cgroup v2 scale (1..=10000, default 100).
    #[serde(default)]
    pub cpu_weight: Option<u64>,
    #[serde(default)]
    pub memory_max: Option<ByteSize>,
    #[serde(default)]
    pub memory_reserve: Option<ByteSize>,
    /// Ceiling the tuner may raise `memory_max` to.
    #[serde(default)]
    pub memory_ceiling: Option<ByteSize>,
    #[serde(default)]
    pub pids_max: Option<u64>,
    #[serde(default = "default_warm_min")]
    pub warm_min: usize,
    #[serde(default = "default_workers_max")]
    pub workers_max: usize,
    #[serde(default = "default_timeout")]
    pub timeout: Span,
    /// How long a new worker may take to start before its first job's `timeout` runs out;
    /// `0s` makes start-up count against that job.
    #[serde(default = "default_start_timeout")]
    pub start_timeout: Span,
    /// Absolute paths of files whose change on disk gives the pool new workers, besides the
    /// program; unset, the command's first argument when it is an absolute path.
    #[serde(default)]
    pub watch: Option<Vec<PathBuf>>,
}

fn default_warm_min() -> usize {
    1
}

fn default_workers_max() -> usize {
    4
}

fn default_timeout() -> Span {
    Span(std::time::Duration::from_secs(2))
}

fn default_start_timeout() -> Span {
    Span(std::time::Duration::from_secs(10))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessConfig {
    pub name: String,
    pub pool: String,
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Inputs passed to the worker, and made part of the job's identity, when the request or
    /// the session gives them; a run without them is still run.
    #[serde(default)]
    pub optional_inputs: Vec<String>,
    /// Processes that must run before this one in a visit.
    #[serde(default)]
    pub after: Vec<String>,
    /// Inputs enough to run the `prepare` phase and keep its checkpoint.
    #[serde(default)]
    pub prepare: Vec<String>,
    /// Only idempotent processes are ever speculated or cached.
    #[serde(default)]
    pub idempotent: bool,
    #[serde(default = "default_ttl")]
    pub ttl: Span,
}

fn default_ttl() -> Span {
    Span(std::time::Duration::from_secs(600))
}

impl Config {
    /// The built-in configuration alone.
    pub fn builtin() -> Config {
        load_sources(&[Source::builtin()]).expect("the built-in configuration is valid")
    }

    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }

    pub fn process(&self, name: &str) -> Option<&ProcessConfig> {
        self.processes.iter().find(|p| p.name == name)
    }

    /// Replaces the paths that only root can use with per-user ones under the XDG directories,
    /// for a daemon that runs unprivileged (a developer's machine, a test).
    pub fn use_user_paths(&mut self, runtime_dir: &Path, cache_home: &Path, state_home: &Path) {
        self.daemon.socket = runtime_dir.join("precog/precogd.sock");
        self.daemon.cache_dir = cache_home.join("precog");
        self.daemon.state_dir = state_home.join("precog");
    }
}

/// A pool's `cpus` naming no CPU that precogd may run on: no worker could be pinned there
/// (`sched_setaffinity` fails with EINVAL) nor could the pool's cpuset hold one.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[error("pool `{pool}`: cpus = \"{cpus}\" names no CPU precogd may use; name CPUs among {allowed}")]
pub struct UnusableCpus {
    pub pool: String,
    pub cpus: CpuList,
    pub allowed: CpuList,
}

/// Fits each pool's `cpus` to `allowed`, the CPUs precogd may run on (its affinity). A pool
/// that names none of them is refused: none of its workers could start. One that names some it
/// may not use keeps those it may, so a file written for a larger host (the built-in one names
/// CPUs 0-1) still serves on a smaller one; each such pool is described in the notes returned,
/// for a warning. The CPUs are the host's, not the file's, so the caller says which are
/// allowed: only a start, a reload or `--check-config` on the host itself can tell. `[budget]
/// cpus` is only counted, never pinned to, so it is left alone. Every pool refused is returned.
pub fn fit_cpus(cfg: &mut Config, allowed: &[usize]) -> Result<Vec<String>, Vec<UnusableCpus>> {
    let mut allowed = allowed.to_vec();
    allowed.sort_unstable();
    allowed.dedup();
    let mut notes = Vec::new();
    let mut refused = Vec::new();
    for p in &mut cfg.pools {
        let Some(cpus) = &p.cpus else { continue };
        let usable: Vec<usize> = cpus
            .0
            .iter()
            .copied()
            .filter(|c| allowed.contains(c))
            .collect();
        if usable.is_empty() {
            refused.push(UnusableCpus {
                pool: p.name.clone(),
                cpus: cpus.clone(),
                allowed: CpuList(allowed.clone()),
            });
            continue;
        }
        if usable.len() < cpus.0.len() {
            let fitted = CpuList(usable);
            notes.push(format!(
                "pool `{}`: cpus = \"{cpus}\" names CPUs precogd may not use; its workers run \
                 on {fitted}",
                p.name
            ));
            p.cpus = Some(fitted);
        }
    }
    if refused.is_empty() {
        Ok(notes)
    } else {
        Err(refused)
    }
}

/// Says so when the reservations of the pools' `warm_min` workers add up to more than
/// `budget.memory`. The allocator keeps every pool's `warm_min` workers and their reservation
/// all the same, and has nothing left for a warm worker beyond them; a configuration that asks
/// for that is served, with this note for the log and `--check-config`.
pub fn budget_note(cfg: &Config) -> Option<String> {
    let reserving: Vec<&PoolConfig> = cfg
        .pools
        .iter()
        .filter(|p| p.warm_min > 0 && p.memory_reserve.is_some_and(|m| m.0 > 0))
        .collect();
    let total = reserving
        .iter()
        .filter_map(|p| p.memory_reserve)
        .fold(0u64, |sum, m| sum.saturating_add(m.0));
    if total <= cfg.budget.memory.0 {
        return None;
    }
    let each: Vec<String> = reserving
        .iter()
        .map(|p| format!("`{}` {}", p.name, p.memory_reserve.unwrap_or_default()))
        .collect();
    Some(format!(
        "the pools' memory_reserve add up to {} ({}), above budget.memory = {}: their warm_min \
         workers keep it all the same, and no pool gets a warm worker beyond warm_min",
        ByteSize(total),
        each.join(", "),
        cfg.budget.memory
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_keeps_the_start_only_keys_and_names_those_it_left() {
        let running = Config::builtin().daemon;
        let mut new = running.clone();
        new.state_dir = "/elsewhere".into();
        new.cgroup_parent = "other".into();
        new.max_line = ByteSize(4096);
        new.idle_close = Span(std::time::Duration::from_secs(1));
        let left = new.keep_start_only(&running);
        assert_eq!(left, vec!["state_dir", "cgroup_parent"]);
        assert_eq!(new.state_dir, running.state_dir);
        assert_eq!(new.cgroup_parent, running.cgroup_parent);
        // What a reload applies is kept as the new configuration says.
        assert_eq!(new.max_line, ByteSize(4096));
        assert_eq!(new.idle_close, Span(std::time::Duration::from_secs(1)));
        assert!(running.clone().keep_start_only(&running).is_empty());
    }

    #[test]
    fn pools_keep_the_cpus_precogd_may_use_and_one_with_none_is_refused() {
        let mut cfg = Config::builtin();
        let shop = cfg.pools.iter_mut().find(|p| p.name == "shop").unwrap();
        shop.cpus = Some("2-3".parse().unwrap());
        let mut other = cfg.pools[0].clone();
        other.name = "other".into();
        other.cpus = Some("7".parse().unwrap());
        let mut two = cfg.clone();
        two.pools.push(other);
        // Every pool refused is named, not only the first.
        let e = fit_cpus(&mut two, &[1, 0]).unwrap_err();
        let e: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert_eq!(
            e,
            [
                "pool `shop`: cpus = \"2-3\" names no CPU precogd may use; name CPUs among 0-1",
                "pool `other`: cpus = \"7\" names no CPU precogd may use; name CPUs among 0-1"
            ]
        );
        assert_eq!(fit_cpus(&mut cfg.clone(), &[0, 1, 2, 3]), Ok(vec![]));
        // The built-in pool on a host of one CPU keeps the one, and says so.
        let mut one = Config::builtin();
        let notes = fit_cpus(&mut one, &[0]).unwrap();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("its workers run on 0"), "{notes:?}");
        assert_eq!(one.pool("shop").unwrap().cpus, Some(CpuList(vec![0])));
        // A pool without `cpus` runs wherever precogd may, and the budget is only counted.
        cfg.pools.iter_mut().for_each(|p| p.cpus = None);
        cfg.budget.cpus = "0-7".parse().unwrap();
        assert_eq!(fit_cpus(&mut cfg, &[0]), Ok(vec![]));
    }

    #[test]
    fn every_entry_and_key_that_fails_is_reported_at_once() {
        let layer = Source {
            name: "e.toml".into(),
            text: "[sessions]\nidle = \"0s\"\n\n[predict]\nhot_path = 0\n\n\
             [[pool]]\nname = \"a\"\ncommand = [\"w\"]\npids_max = 0\n\n\
             [[pool]]\nname = \"b\"\ncommand = [\"w\"]\ntimeout = \"0s\"\n\n\
             [[process]]\nname = \"p\"\npool = \"nowhere\"\ninputs = []\n"
                .into(),
        };
        let msg = load_sources(&[Source::builtin(), layer])
            .unwrap_err()
            .to_string();
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(lines.len(), 5, "{msg}");
        for (at, key) in [
            ("e.toml:10", "pool.a.pids_max"),
            ("e.toml:15", "pool.b.timeout"),
            ("e.toml:19", "process.p.pool"),
            ("e.toml:2", "sessions.idle"),
            ("e.toml:5", "predict.hot_path"),
        ] {
            let line = format!("{at}: {key}: ");
            assert!(
                lines.iter().any(|l| l.starts_with(&line)),
                "{line} in {msg}"
            );
        }

        // A name listed twice in one list.
        let layer = Source {
            name: "d.toml".into(),
            text: "[[process]]\nname = \"p\"\npool = \"shop\"\ninputs = [\"a\", \"b\", \"a\"]\n"
                .into(),
        };
        let msg = load_sources(&[Source::builtin(), layer])
            .unwrap_err()
            .to_string();
        assert_eq!(msg, "d.toml:4: process.p.inputs: lists `a` twice");

        // One error is reported as before, on its own.
        let layer = Source {
            name: "f.toml".into(),
            text: "[sessions]\nmax = 0\n".into(),
        };
        let e = load_sources(&[Source::builtin(), layer]).unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { .. }), "{e:?}");
    }

    #[test]
    fn reservations_beyond_the_memory_budget_are_noted() {
        // The built-in shop pool reserves 64M of a 1G budget.
        assert_eq!(budget_note(&Config::builtin()), None);
        let layer = Source {
            name: "b.toml".into(),
            text: "[budget]\nmemory = \"512M\"\n[[pool]]\nname = \"big\"\n\
                   command = [\"/bin/cat\"]\nmemory_reserve = \"500M\"\n\
                   [[pool]]\nname = \"cold\"\ncommand = [\"/bin/cat\"]\nwarm_min = 0\n\
                   memory_reserve = \"1G\"\n"
                .into(),
        };
        let cfg = load_sources(&[Source::builtin(), layer]).expect("valid");
        let note = budget_note(&cfg).expect("a note");
        // Sizes that add up past 64 bits are above any budget, not wrapped below it.
        let mut huge = cfg.clone();
        for p in &mut huge.pools {
            p.memory_reserve = Some(ByteSize(1 << 63));
        }
        assert!(budget_note(&huge).is_some());
        // A pool without warm workers reserves nothing, so `cold` is not counted.
        assert_eq!(
            note,
            "the pools' memory_reserve add up to 564M (`shop` 64M, `big` 500M), above \
             budget.memory = 512M: their warm_min workers keep it all the same, and no pool gets \
             a warm worker beyond warm_min"
        );
    }
}
