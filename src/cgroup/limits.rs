//! What a pool's cgroup may use, and how each limit is spelled in the kernel's files.
//!
//! Pure code: [`settings`] turns [`PoolLimits`] into the file writes for one hierarchy, and the
//! `parse_*` functions read the files' contents back. The conversions follow the kernel's own
//! (`cpu.weight` ↔ `cpu.shares` as in `kernel/sched/core.c`, which systemd uses too).

use crate::config::{CpuList, PoolConfig};

use super::layout::{Controller, Version};

/// The CFS period the kernel and systemd use by default, which the configuration's checks of
/// a quota assume.
pub const DEFAULT_CPU_PERIOD_US: u64 = crate::config::CPU_PERIOD_US;

/// v2 `cpu.weight` default, and v1 `cpu.shares` default, which mean the same share.
pub const WEIGHT_DEFAULT: u64 = 100;
pub const SHARES_DEFAULT: u64 = 1024;
const WEIGHT_MIN: u64 = 1;
const WEIGHT_MAX: u64 = 10_000;
const SHARES_MIN: u64 = 2;
const SHARES_MAX: u64 = 262_144;

/// v1 prints an unlimited memory or pids value as a huge number (`PAGE_COUNTER_MAX` pages);
/// anything at or above this is "no limit".
const V1_UNLIMITED_FLOOR: u64 = 1 << 62;

/// What a pool may use. `None` means no limit (or, for `cpu_weight`, the default share; for
/// `cpus`, the parent's CPUs).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolLimits {
    /// CPU time per period as a percentage of one CPU (`150.0` is one and a half CPUs).
    pub cpu_quota_pct: Option<f64>,
    pub cpu_period_us: u64,
    /// Relative share on the v2 scale, 1..=10000 (default 100).
    pub cpu_weight: Option<u64>,
    pub cpus: Option<Vec<usize>>,
    /// Hard ceiling on memory; workers are never allowed to swap past it.
    pub memory_max: Option<u64>,
    /// Memory kept for the pool under pressure (v2 `memory.min`, v1 soft limit).
    pub memory_reserve: Option<u64>,
    pub pids_max: Option<u64>,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            cpu_quota_pct: None,
            cpu_period_us: DEFAULT_CPU_PERIOD_US,
            cpu_weight: None,
            cpus: None,
            memory_max: None,
            memory_reserve: None,
            pids_max: None,
        }
    }
}

/// The limits as the configuration writes them, unset ones left out:
/// `cpu_quota = 150%, memory_max = 256M, cpus = 0-1`.
impl std::fmt::Display for PoolLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::config::{ByteSize, Percent};
        let mut parts = Vec::new();
        if let Some(q) = self.cpu_quota_pct {
            parts.push(format!("cpu_quota = {}", Percent(q)));
        }
        if let Some(w) = self.cpu_weight {
            parts.push(format!("cpu_weight = {w}"));
        }
        if let Some(c) = &self.cpus {
            parts.push(format!("cpus = {}", CpuList(c.clone())));
        }
        if let Some(m) = self.memory_max {
            parts.push(format!("memory_max = {}", ByteSize(m)));
        }
        if let Some(m) = self.memory_reserve {
            parts.push(format!("memory_reserve = {}", ByteSize(m)));
        }
        if let Some(p) = self.pids_max {
            parts.push(format!("pids_max = {p}"));
        }
        if parts.is_empty() {
            return f.write_str("no limits");
        }
        f.write_str(&parts.join(", "))
    }
}

impl PoolLimits {
    /// The start values a pool's configuration asks for.
    pub fn from_config(pool: &PoolConfig) -> PoolLimits {
        PoolLimits {
            cpu_quota_pct: pool.cpu_quota.map(|p| p.0),
            cpu_period_us: DEFAULT_CPU_PERIOD_US,
            cpu_weight: pool.cpu_weight,
            cpus: pool.cpus.as_ref().map(|c| c.0.clone()),
            memory_max: pool.memory_max.map(|b| b.0),
            memory_reserve: pool.memory_reserve.map(|b| b.0),
            pids_max: pool.pids_max,
        }
    }

    /// The controllers these limits need.
    pub fn needs(&self) -> Vec<Controller> {
        let mut out = Vec::new();
        if self.cpu_quota_pct.is_some() || self.cpu_weight.is_some() {
            out.push(Controller::Cpu);
        }
        if self.cpus.is_some() {
            out.push(Controller::Cpuset);
        }
        if self.memory_max.is_some() || self.memory_reserve.is_some() {
            out.push(Controller::Memory);
        }
        if self.pids_max.is_some() {
            out.push(Controller::Pids);
        }
        out
    }
}

/// What a cgroup (and everything below it) has used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time since the cgroup was made.
    pub cpu_ns: u64,
    pub memory_now: u64,
    /// Highest memory use seen; 0 where the kernel does not report it.
    pub memory_peak: u64,
    /// Tasks the kernel's OOM killer killed in the cgroup.
    pub oom_kills: u64,
}

/// v2 weight to v1 shares, rounding to the closest as the kernel does.
pub fn weight_to_shares(weight: u64) -> u64 {
    let w = weight.clamp(WEIGHT_MIN, WEIGHT_MAX);
    div_round(w * SHARES_DEFAULT, WEIGHT_DEFAULT).clamp(SHARES_MIN, SHARES_MAX)
}

/// v1 shares to v2 weight, rounding to the closest as the kernel does.
pub fn shares_to_weight(shares: u64) -> u64 {
    let s = shares.clamp(SHARES_MIN, SHARES_MAX);
    div_round(s * WEIGHT_DEFAULT, SHARES_DEFAULT).clamp(WEIGHT_MIN, WEIGHT_MAX)
}

fn div_round(n: u64, d: u64) -> u64 {
    (n + d / 2) / d
}

/// CPU time per period for a percentage of one CPU.
pub fn quota_us(pct: f64, period_us: u64) -> u64 {
    (pct / 100.0 * period_us as f64).round() as u64
}

/// How a file's content is compared with what was written to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Compared as trimmed text.
    Exact,
    /// A byte count (or `max`/`-1`) the kernel rounds down to whole pages.
    Bytes,
    /// A CPU or memory-node list, compared as a set.
    List,
}

/// One write to a cgroup file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub controller: Controller,
    pub file: &'static str,
    pub value: String,
    pub kind: ValueKind,
    /// Files some kernels lack (swap accounting, `memory.oom.group`); skipped when absent.
    pub optional: bool,
}

fn setting(controller: Controller, file: &'static str, value: String, kind: ValueKind) -> Setting {
    Setting {
        controller,
        file,
        value,
        kind,
        optional: false,
    }
}

/// The writes that put `limits` in force on a hierarchy of `version`, in the order they must
/// happen. `parent_cpus` is what a v1 cpuset takes when `limits.cpus` is `None` (v1 has no
/// "inherit"); `v1_period_us` is the v1 CPU period the cgroup has now, when it could be read.
/// Settings for a controller the hierarchy does not carry are left to the caller to filter out.
pub fn settings(
    limits: &PoolLimits,
    version: Version,
    parent_cpus: &str,
    v1_period_us: Option<u64>,
) -> Vec<Setting> {
    use Controller::*;
    use ValueKind::*;

    let period = limits.cpu_period_us;
    let quota = limits.cpu_quota_pct.map(|p| quota_us(p, period));
    let cpus = limits.cpus.as_ref().map(|c| CpuList(c.clone()).to_string());
    let mut out = Vec::new();
    match version {
        Version::V1 => {
            // The kernel checks the quota against the period on each write (and the pair
            // against the parent's), so a new period goes in with no quota in force. With the
            // period in place already the quota is written alone: a quota the kernel refuses
            // then leaves the one before it, not none.
            if v1_period_us != Some(period) {
                out.push(setting(Cpu, "cpu.cfs_quota_us", "-1".into(), Exact));
                out.push(setting(Cpu, "cpu.cfs_period_us", period.to_string(), Exact));
            }
            let q = quota.map_or("-1".to_string(), |q| q.to_string());
            out.push(setting(Cpu, "cpu.cfs_quota_us", q, Exact));
            let shares = limits.cpu_weight.map_or(SHARES_DEFAULT, weight_to_shares);
            out.push(setting(Cpu, "cpu.shares", shares.to_string(), Exact));
            let cpus = cpus.unwrap_or_else(|| parent_cpus.trim().to_string());
            out.push(setting(Cpuset, "cpuset.cpus", cpus, List));

            let max = limits
                .memory_max
                .map_or("-1".to_string(), |m| m.to_string());
            // The kernel keeps memsw at or above the memory limit on every write: lift it
            // first so a raised limit is not refused.
            let mut lift = setting(Memory, "memory.memsw.limit_in_bytes", "-1".into(), Bytes);
            lift.optional = true;
            out.push(lift);
            out.push(setting(Memory, "memory.limit_in_bytes", max.clone(), Bytes));
            // mem+swap at the same ceiling: a worker never swaps to get past memory_max.
            let mut memsw = setting(Memory, "memory.memsw.limit_in_bytes", max, Bytes);
            memsw.optional = true;
            out.push(memsw);
            let soft = limits.memory_reserve.map_or("-1".into(), |m| m.to_string());
            out.push(setting(Memory, "memory.soft_limit_in_bytes", soft, Bytes));
        }
        Version::V2 => {
            let max = quota.map_or("max".to_string(), |q| q.to_string());
            out.push(setting(Cpu, "cpu.max", format!("{max} {period}"), Exact));
            let weight = limits.cpu_weight.unwrap_or(WEIGHT_DEFAULT);
            out.push(setting(Cpu, "cpu.weight", weight.to_string(), Exact));
            out.push(setting(
                Cpuset,
                "cpuset.cpus",
                cpus.unwrap_or_default(),
                List,
            ));

            let max = limits
                .memory_max
                .map_or("max".to_string(), |m| m.to_string());
            out.push(setting(Memory, "memory.max", max, Bytes));
            let swap = if limits.memory_max.is_some() {
                "0"
            } else {
                "max"
            };
            let mut swap = setting(Memory, "memory.swap.max", swap.into(), Bytes);
            swap.optional = true;
            out.push(swap);
            // TODO: memory.min protects only as far as every ancestor's does; the subtree's own
            // value (the unit's MemoryMin=, or precog's parent as root) is not raised to match.
            let min = limits.memory_reserve.unwrap_or(0).to_string();
            out.push(setting(Memory, "memory.min", min, Bytes));
        }
    }
    let pids = limits.pids_max.map_or("max".to_string(), |p| p.to_string());
    out.push(setting(Pids, "pids.max", pids, Exact));
    out
}

/// Whether a file's content shows `written` in force.
pub fn matches(kind: ValueKind, written: &str, found: &str, page_size: u64) -> bool {
    match kind {
        ValueKind::Exact => written.trim() == found.trim(),
        ValueKind::Bytes => {
            let page = |v: Option<u64>| v.map(|b| b / page_size * page_size);
            page(parse_bytes(written)) == page(parse_bytes(found))
        }
        ValueKind::List => parse_list(written) == parse_list(found),
    }
}

/// A byte limit: `None` for no limit (`max`, `-1`, or v1's huge number).
pub fn parse_bytes(text: &str) -> Option<u64> {
    match text.trim() {
        "max" | "-1" => None,
        t => t.parse().ok().filter(|&v| v < V1_UNLIMITED_FLOOR),
    }
}

/// A count limit such as `pids.max`: `None` for `max`.
pub fn parse_count(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// A CPU or node list (`0-3,6`); empty text is an empty list.
pub fn parse_list(text: &str) -> Option<Vec<usize>> {
    let t = text.trim();
    if t.is_empty() {
        return Some(Vec::new());
    }
    t.parse::<CpuList>().ok().map(|c| c.0)
}

/// v2 `cpu.max` (`"max 100000"` or `"20000 100000"`) as (quota percentage, period).
pub fn parse_cpu_max(text: &str) -> (Option<f64>, u64) {
    let mut it = text.split_whitespace();
    let quota = it.next().and_then(|q| q.parse::<u64>().ok());
    let period = it
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(DEFAULT_CPU_PERIOD_US);
    (quota.map(|q| q as f64 * 100.0 / period as f64), period)
}

/// v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us` as (quota percentage, period).
pub fn parse_cfs(quota: &str, period: &str) -> (Option<f64>, u64) {
    let period = period.trim().parse().unwrap_or(DEFAULT_CPU_PERIOD_US);
    let quota = quota.trim().parse::<i64>().ok().filter(|&q| q > 0);
    (quota.map(|q| q as f64 * 100.0 / period as f64), period)
}

/// The value of `key` in a flat-keyed file (`memory.events`, `memory.oom_control`, `cpu.stat`).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_and_shares_defaults_match() {
        assert_eq!(weight_to_shares(100), 1024);
        assert_eq!(shares_to_weight(1024), 100);
        assert_eq!(weight_to_shares(1), 10);
        assert_eq!(weight_to_shares(10_000), 102_400);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(512), 50);
    }

    #[test]
    fn every_weight_survives_a_trip_through_shares() {
        for w in 1..=10_000 {
            assert_eq!(shares_to_weight(weight_to_shares(w)), w, "weight {w}");
        }
    }

    #[test]
    fn quota_is_a_share_of_the_period() {
        assert_eq!(quota_us(20.0, 100_000), 20_000);
        assert_eq!(quota_us(150.0, 100_000), 150_000);
        assert_eq!(quota_us(12.5, 10_000), 1_250);
    }

    #[test]
    fn v1_settings_spell_limits_the_v1_way() {
        let l = PoolLimits {
            cpu_quota_pct: Some(20.0),
            cpu_weight: Some(200),
            cpus: Some(vec![0, 1, 3]),
            memory_max: Some(64 << 20),
            memory_reserve: Some(16 << 20),
            pids_max: Some(32),
            ..PoolLimits::default()
        };
        let s = settings(&l, Version::V1, "0-3", None);
        let get = |f: &str| s.iter().rfind(|x| x.file == f).unwrap().value.clone();
        assert_eq!(get("cpu.cfs_quota_us"), "20000");
        assert_eq!(get("cpu.shares"), "2048");
        assert_eq!(get("cpuset.cpus"), "0-1,3");
        assert_eq!(get("memory.limit_in_bytes"), "67108864");
        assert_eq!(get("memory.soft_limit_in_bytes"), "16777216");
        assert_eq!(get("pids.max"), "32");
    }

    #[test]
    fn limits_read_as_the_configuration_writes_them() {
        let l = PoolLimits {
            cpu_quota_pct: Some(150.0),
            cpus: Some(vec![0, 1]),
            memory_max: Some(256 << 20),
            ..PoolLimits::default()
        };
        assert_eq!(
            l.to_string(),
            "cpu_quota = 150%, cpus = 0-1, memory_max = 256M"
        );
        assert_eq!(PoolLimits::default().to_string(), "no limits");
    }

    #[test]
    fn a_v1_quota_under_the_same_period_is_written_alone() {
        let l = PoolLimits {
            cpu_quota_pct: Some(50.0),
            ..PoolLimits::default()
        };
        let cpu = |s: Vec<Setting>| -> Vec<String> {
            s.iter()
                .filter(|x| x.file.starts_with("cpu.cfs"))
                .map(|x| format!("{}={}", x.file, x.value))
                .collect()
        };
        assert_eq!(
            cpu(settings(&l, Version::V1, "0", Some(DEFAULT_CPU_PERIOD_US))),
            ["cpu.cfs_quota_us=50000"]
        );
        // Another period (or one not known) goes in with no quota in force.
        let expected = [
            "cpu.cfs_quota_us=-1",
            "cpu.cfs_period_us=100000",
            "cpu.cfs_quota_us=50000",
        ];
        assert_eq!(cpu(settings(&l, Version::V1, "0", Some(250_000))), expected);
        assert_eq!(cpu(settings(&l, Version::V1, "0", None)), expected);
    }

    #[test]
    fn v1_unset_limits_reset_to_unlimited_and_parent_cpus() {
        let s = settings(&PoolLimits::default(), Version::V1, "0-1\n", None);
        let get = |f: &str| s.iter().rfind(|x| x.file == f).unwrap().value.clone();
        assert_eq!(get("cpu.cfs_quota_us"), "-1");
        assert_eq!(get("cpu.shares"), "1024");
        assert_eq!(get("cpuset.cpus"), "0-1");
        assert_eq!(get("memory.limit_in_bytes"), "-1");
        assert_eq!(get("pids.max"), "max");
    }

    #[test]
    fn v2_settings_spell_limits_the_v2_way() {
        let l = PoolLimits {
            cpu_quota_pct: Some(150.0),
            cpu_weight: Some(300),
            memory_max: Some(1 << 30),
            memory_reserve: Some(1 << 28),
            ..PoolLimits::default()
        };
        let s = settings(&l, Version::V2, "", None);
        let get = |f: &str| s.iter().find(|x| x.file == f).unwrap().value.clone();
        assert_eq!(get("cpu.max"), "150000 100000");
        assert_eq!(get("cpu.weight"), "300");
        assert_eq!(get("cpuset.cpus"), "");
        assert_eq!(get("memory.max"), "1073741824");
        assert_eq!(get("memory.swap.max"), "0");
        assert_eq!(get("memory.min"), "268435456");
        assert_eq!(get("pids.max"), "max");
    }

    #[test]
    fn read_back_compares_the_kernels_way() {
        assert!(matches(ValueKind::Bytes, "1000000", "999424", 4096));
        assert!(!matches(ValueKind::Bytes, "1000000", "2000000", 4096));
        assert!(matches(ValueKind::Bytes, "-1", "9223372036854771712", 4096));
        assert!(matches(ValueKind::Bytes, "max", "max\n", 4096));
        assert!(matches(ValueKind::List, "0,1", "0-1\n", 4096));
        assert!(!matches(ValueKind::List, "0-1", "0\n", 4096));
        assert!(matches(ValueKind::Exact, "max", "max\n", 4096));
        assert!(!matches(ValueKind::Exact, "20000", "-1\n", 4096));
    }

    #[test]
    fn parses_cpu_limits() {
        assert_eq!(parse_cpu_max("max 100000\n"), (None, 100_000));
        assert_eq!(parse_cpu_max("20000 100000\n"), (Some(20.0), 100_000));
        assert_eq!(parse_cfs("-1\n", "100000\n"), (None, 100_000));
        assert_eq!(parse_cfs("150000\n", "100000\n"), (Some(150.0), 100_000));
    }

    #[test]
    fn parses_keyed_files() {
        let oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed(oom, "oom_kill"), Some(3));
        let events = "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed(events, "oom_kill"), Some(1));
        assert_eq!(keyed(events, "oom"), Some(1));
        assert_eq!(keyed("usage_usec 1500\n", "usage_usec"), Some(1500));
        assert_eq!(keyed(events, "missing"), None);
    }

    #[test]
    fn parses_limits() {
        assert_eq!(parse_bytes("9223372036854771712\n"), None);
        assert_eq!(parse_bytes("max\n"), None);
        assert_eq!(parse_bytes("4096\n"), Some(4096));
        assert_eq!(parse_count("max\n"), None);
        assert_eq!(parse_count("64\n"), Some(64));
        assert_eq!(parse_list("\n"), Some(vec![]));
    }
}
