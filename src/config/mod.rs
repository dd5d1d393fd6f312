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
mod values;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use diff::changes;
pub use layers::{Source, load, load_sources};
pub use values::{ByteSize, CpuList, FileMode, Percent, Span};

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
}

fn default_warm_min() -> usize {
    1
}

/// The smallest `memory_max` a pool may have.
const MEMORY_MAX_LEAST: u64 = 4 << 20;

/// The scheduling period a pool's CPU quota is written for (the kernel's and systemd's default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The least CPU time per period the kernel takes as a quota (`cpu.cfs_quota_us` on v1,
/// `cpu.max` on v2).
const CPU_QUOTA_LEAST_US: u64 = 1_000;

/// The most tasks the kernel can count in `pids.max` (`PID_MAX_LIMIT` on 64-bit).
const PIDS_MAX_MOST: u64 = 4 << 20;

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

/// Checks that need the whole merged configuration. `locate` maps a (section, name) to where the
/// entry was defined.
pub(crate) fn validate(
    cfg: &Config,
    locate: &dyn Fn(&str, &str, &str) -> (String, usize),
) -> Result<(), ConfigError> {
    let err = |section: &str, name: &str, key: &str, message: String| {
        let (file, line) = locate(section, name, key);
        ConfigError::Invalid {
            file,
            line,
            key: format!("{section}.{name}.{key}"),
            message,
        }
    };

    let mut pool_names = HashSet::new();
    for p in &cfg.pools {
        if !pool_names.insert(p.name.as_str()) {
            return Err(err("pool", &p.name, "name", "is defined twice".into()));
        }
        // A pool's name names its cgroup, beside the kernel's own files and the daemon's leaf.
        let plain = !p.name.is_empty()
            && p.name.len() <= 64
            && p.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if !plain || ["tasks", "notify_on_release", "release_agent", "daemon"].contains(&&*p.name) {
            let why = "must be 1 to 64 letters, digits, `-` or `_`, and not a name the cgroup \
                       files or precogd's own cgroup use (tasks, notify_on_release, \
                       release_agent, daemon)";
            return Err(err("pool", &p.name, "name", why.into()));
        }
        if p.command.is_empty() || p.command[0].is_empty() {
            return Err(err(
                "pool",
                &p.name,
                "command",
                "must name an executable".into(),
            ));
        }
        if p.workers_max == 0 || p.warm_min > p.workers_max {
            return Err(err(
                "pool",
                &p.name,
                "warm_min",
                format!(
                    "warm_min ({}) must be at most workers_max ({}), and workers_max at least 1",
                    p.warm_min, p.workers_max
                ),
            ));
        }
        if let Some(w) = p.cpu_weight
            && !(1..=10_000).contains(&w)
        {
            return Err(err(
                "pool",
                &p.name,
                "cpu_weight",
                format!("{w} is not in 1..=10000"),
            ));
        }
        if let (Some(lo), Some(hi)) = (p.cpu_min, p.cpu_max)
            && lo.0 > hi.0
        {
            return Err(err("pool", &p.name, "cpu_min", "is above cpu_max".into()));
        }
        // Limits no worker could live under: the kernel takes some and refuses others.
        if let Some(m) = p.memory_max
            && m.0 < MEMORY_MAX_LEAST
        {
            let why = format!("{m} leaves a worker no room; give at least 4M");
            return Err(err("pool", &p.name, "memory_max", why));
        }
        if p.pids_max == Some(0) {
            let why = "must be at least 1: a worker is a task".to_string();
            return Err(err("pool", &p.name, "pids_max", why));
        }
        if let Some(n) = p.pids_max.filter(|&n| n > PIDS_MAX_MOST) {
            let why = format!("{n} is above {PIDS_MAX_MOST}, the most the kernel can count");
            return Err(err("pool", &p.name, "pids_max", why));
        }
        for (key, pct) in [
            ("cpu_quota", p.cpu_quota),
            ("cpu_min", p.cpu_min),
            ("cpu_max", p.cpu_max),
        ] {
            // Rounded as the quota written to the kernel is.
            let quota_us = |q: Percent| (q.0 / 100.0 * CPU_PERIOD_US as f64).round();
            if let Some(pct) = pct.filter(|&q| quota_us(q) < CPU_QUOTA_LEAST_US as f64) {
                let least = CPU_QUOTA_LEAST_US as f64 * 100.0 / CPU_PERIOD_US as f64;
                let why = format!(
                    "{pct} is under {least}%: the kernel takes no less than \
                     {CPU_QUOTA_LEAST_US} µs of CPU time per {CPU_PERIOD_US} µs period"
                );
                return Err(err("pool", &p.name, key, why));
            }
        }
        if let (Some(max), Some(res)) = (p.memory_max, p.memory_reserve)
            && res.0 > max.0
        {
            return Err(err(
                "pool",
                &p.name,
                "memory_reserve",
                "is above memory_max".into(),
            ));
        }
        if p.timeout.0.is_zero() {
            return Err(err("pool", &p.name, "timeout", "must be above zero".into()));
        }
    }

    let mut process_names = HashSet::new();
    for p in &cfg.processes {
        if !process_names.insert(p.name.as_str()) {
            return Err(err("process", &p.name, "name", "is defined twice".into()));
        }
        // Clients name processes in `run` events, whose names are limited in length.
        if p.name.is_empty() || p.name.len() > crate::protocol::MAX_NAME_LEN {
            let why = format!("must be 1 to {} bytes long", crate::protocol::MAX_NAME_LEN);
            return Err(err("process", &p.name, "name", why));
        }
    }
    for p in &cfg.processes {
        if !pool_names.contains(p.pool.as_str()) {
            return Err(err(
                "process",
                &p.name,
                "pool",
                format!("names pool `{}`, which is not defined", p.pool),
            ));
        }
        for a in &p.after {
            if !process_names.contains(a.as_str()) {
                return Err(err(
                    "process",
                    &p.name,
                    "after",
                    format!("names process `{a}`, which is not defined"),
                ));
            }
        }
        for i in &p.optional_inputs {
            if p.inputs.contains(i) {
                return Err(err(
                    "process",
                    &p.name,
                    "optional_inputs",
                    format!("`{i}` is also one of the process's required inputs"),
                ));
            }
        }
        for i in &p.prepare {
            if !p.inputs.contains(i) {
                return Err(err(
                    "process",
                    &p.name,
                    "prepare",
                    format!("`{i}` is not one of the process's inputs"),
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(cfg) {
        return Err(err(
            "process",
            &cycle,
            "after",
            "is part of a dependency cycle".into(),
        ));
    }

    let d = &cfg.daemon;
    let daemon_err = |key: &str, message: String| {
        let (file, line) = locate("daemon", "", key);
        ConfigError::Invalid {
            file,
            line,
            key: format!("daemon.{key}"),
            message,
        }
    };
    if d.max_connections == 0 {
        return Err(daemon_err("max_connections", "must be at least 1".into()));
    }
    if d.max_line.0 < 1024 {
        return Err(daemon_err("max_line", "must be at least 1K".into()));
    }
    if !(0.0..=1.0).contains(&cfg.predict.precision_target) {
        let (file, line) = locate("predict", "", "precision_target");
        return Err(ConfigError::Invalid {
            file,
            line,
            key: "predict.precision_target".into(),
            message: "must be between 0 and 1".into(),
        });
    }
    Ok(())
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
/// cpus` is only counted, never pinned to, so it is left alone.
pub fn fit_cpus(cfg: &mut Config, allowed: &[usize]) -> Result<Vec<String>, UnusableCpus> {
    let mut allowed = allowed.to_vec();
    allowed.sort_unstable();
    allowed.dedup();
    let mut notes = Vec::new();
    for p in &mut cfg.pools {
        let Some(cpus) = &p.cpus else { continue };
        let usable: Vec<usize> = cpus
            .0
            .iter()
            .copied()
            .filter(|c| allowed.contains(c))
            .collect();
        if usable.is_empty() {
            return Err(UnusableCpus {
                pool: p.name.clone(),
                cpus: cpus.clone(),
                allowed: CpuList(allowed),
            });
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
    Ok(notes)
}

/// Returns a process on a cycle of `after` edges, if there is one.
fn find_cycle(cfg: &Config) -> Option<String> {
    // Colours: 0 unvisited, 1 on the stack, 2 done.
    fn visit<'a>(
        cfg: &'a Config,
        name: &'a str,
        colour: &mut std::collections::HashMap<&'a str, u8>,
    ) -> Option<String> {
        match colour.get(name) {
            Some(1) => return Some(name.to_string()),
            Some(2) => return None,
            _ => {}
        }
        colour.insert(name, 1);
        if let Some(p) = cfg.process(name) {
            for a in &p.after {
                if let Some(c) = visit(cfg, a, colour) {
                    return Some(c);
                }
            }
        }
        colour.insert(name, 2);
        None
    }

    let mut colour = std::collections::HashMap::new();
    cfg.processes
        .iter()
        .find_map(|p| visit(cfg, &p.name, &mut colour))
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
        let e = fit_cpus(&mut cfg.clone(), &[1, 0]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pool `shop`: cpus = \"2-3\" names no CPU precogd may use; name CPUs among 0-1"
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
}
