//! The checks a configuration must pass once its layers are merged: bounds the kernel or the
//! daemon needs, and names that must refer to something defined.

use std::collections::HashSet;

use super::{Config, ConfigError, Percent, PoolConfig, ProcessConfig};

/// The most processes a session's hot path may hold (the control interface's bound too).
pub const MAX_HOT_PATH: usize = 64;

/// The smallest `memory_max` a pool may have.
const MEMORY_MAX_LEAST: u64 = 4 << 20;

/// The scheduling period a pool's CPU quota is written for (the kernel's and systemd's default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The least CPU time per period the kernel takes as a quota (`cpu.cfs_quota_us` on v1,
/// `cpu.max` on v2).
const CPU_QUOTA_LEAST_US: u64 = 1_000;

/// The least `sessions.memory`: room for sixteen sessions whose inputs reach their limit.
const SESSIONS_MEMORY_LEAST: u64 = 1 << 20;

/// The most tasks the kernel can count in `pids.max` (`PID_MAX_LIMIT` on 64-bit).
const PIDS_MAX_MOST: u64 = 4 << 20;

/// Makes the error for a key of an entry: (section, name, key, message).
type Err<'a> = dyn Fn(&str, &str, &str, String) -> ConfigError + 'a;

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

    let mut errors = Vec::new();
    let mut pool_names = HashSet::new();
    for p in &cfg.pools {
        if !pool_names.insert(p.name.as_str()) {
            errors.push(err("pool", &p.name, "name", "is defined twice".into()));
            continue;
        }
        errors.extend(check_pool(p, &err).err());
    }

    let mut process_names = HashSet::new();
    for p in &cfg.processes {
        if !process_names.insert(p.name.as_str()) {
            errors.push(err("process", &p.name, "name", "is defined twice".into()));
            continue;
        }
        // Clients name processes in `run` events, whose names are limited in length.
        if p.name.is_empty() || p.name.len() > crate::protocol::MAX_NAME_LEN {
            let why = format!("must be 1 to {} bytes long", crate::protocol::MAX_NAME_LEN);
            errors.push(err("process", &p.name, "name", why));
        }
    }
    for p in &cfg.processes {
        errors.extend(check_process(p, &pool_names, &process_names, &err).err());
    }
    // A cycle is looked for once every `after` names a process.
    if errors.is_empty()
        && let Some(cycle) = find_cycle(cfg)
    {
        errors.push(err(
            "process",
            &cycle,
            "after",
            "is part of a dependency cycle".into(),
        ));
    }

    // Keys of the single tables ([daemon], [sessions], [predict]).
    let table_err = |section: &str, key: &str, message: &str| {
        let (file, line) = locate(section, "", key);
        ConfigError::Invalid {
            file,
            line,
            key: format!("{section}.{key}"),
            message: message.to_string(),
        }
    };
    let (d, s, p) = (&cfg.daemon, &cfg.sessions, &cfg.predict);
    if d.max_connections == 0 {
        errors.push(table_err("daemon", "max_connections", "must be at least 1"));
    }
    if d.max_line.0 < 1024 {
        errors.push(table_err("daemon", "max_line", "must be at least 1K"));
    }
    if s.max == 0 {
        errors.push(table_err("sessions", "max", "must be at least 1"));
    }
    if s.memory.0 < SESSIONS_MEMORY_LEAST {
        let why = "must be at least 1M: one session's inputs may take 64K";
        errors.push(table_err("sessions", "memory", why));
    }
    if s.idle.0 < std::time::Duration::from_secs(1) {
        let why = "must be at least 1s: a session idle for longer is forgotten, with what it \
                   made known";
        errors.push(table_err("sessions", "idle", why));
    }
    if !(1..=MAX_HOT_PATH).contains(&p.hot_path) {
        let why = format!("must be 1 to {MAX_HOT_PATH}");
        errors.push(table_err("predict", "hot_path", &why));
    }
    if !(0.0..=1.0).contains(&p.precision_target) {
        errors.push(table_err(
            "predict",
            "precision_target",
            "must be between 0 and 1",
        ));
    }
    if p.save_interval.0 < std::time::Duration::from_secs(1) {
        let why = "must be at least 1s: the model is written out whole at each save";
        errors.push(table_err("predict", "save_interval", why));
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(ConfigError::Several(errors)),
    }
}

/// A pool's own keys; the first that is wrong.
fn check_pool(p: &PoolConfig, err: &Err) -> Result<(), ConfigError> {
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
    if let Some(relative) = p.watch.iter().flatten().find(|f| !f.is_absolute()) {
        return Err(err(
            "pool",
            &p.name,
            "watch",
            format!(
                "`{}` is a relative path; give each file's full path",
                relative.display()
            ),
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
        let why = format!("{res} is above memory_max = {max}");
        return Err(err("pool", &p.name, "memory_reserve", why));
    }
    if p.timeout.0.is_zero() {
        return Err(err("pool", &p.name, "timeout", "must be above zero".into()));
    }
    Ok(())
}

/// A process's references to pools, processes and its own inputs; the first that is wrong.
fn check_process(
    p: &ProcessConfig,
    pools: &HashSet<&str>,
    processes: &HashSet<&str>,
    err: &Err,
) -> Result<(), ConfigError> {
    if !pools.contains(p.pool.as_str()) {
        return Err(err(
            "process",
            &p.name,
            "pool",
            format!("names pool `{}`, which is not defined", p.pool),
        ));
    }
    for a in &p.after {
        if !processes.contains(a.as_str()) {
            return Err(err(
                "process",
                &p.name,
                "after",
                format!("names process `{a}`, which is not defined"),
            ));
        }
    }
    // A name listed twice is a slip (a copy left behind, a typo of another name).
    for (key, names) in [
        ("inputs", &p.inputs),
        ("optional_inputs", &p.optional_inputs),
        ("after", &p.after),
        ("prepare", &p.prepare),
    ] {
        let mut seen = HashSet::new();
        if let Some(twice) = names.iter().find(|n| !seen.insert(n.as_str())) {
            let why = format!("lists `{twice}` twice");
            return Err(err("process", &p.name, key, why));
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
    Ok(())
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
