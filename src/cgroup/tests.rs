//! Tests of the cgroup module against temporary trees laid out like v1, hybrid and v2 hosts.
//! Writes land in plain files there, so these check which files get which values, not what the
//! kernel does with them (the tests in `tests/cgroup_*.rs` do that on the real hierarchies).

use std::fs;
use std::path::Path;

use super::*;

fn put(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn get(path: &Path) -> String {
    fs::read_to_string(path).unwrap().trim().to_string()
}

/// A host like the test machine: five v1 hierarchies and a unified mount with hugetlb only.
fn hybrid_tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let sys = t.path().join("sys");
    for c in ["cpu", "cpuacct", "cpuset", "memory", "pids"] {
        put(&sys.join(c).join("tasks"), "");
    }
    put(&sys.join("cpuset/cpuset.cpus"), "0-3\n");
    put(&sys.join("cpuset/cpuset.mems"), "0\n");
    put(&sys.join("unified/cgroup.controllers"), "hugetlb\n");
    put(&t.path().join("proc/self/cgroup"), "1:cpu:/\n0::/\n");
    t
}

/// A pure v2 host where systemd delegated `precogd.service` to the daemon.
fn delegated_v2_tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let sys = t.path().join("sys");
    put(
        &sys.join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    );
    let unit = sys.join("system.slice/precogd.service");
    put(&unit.join("cgroup.controllers"), "cpu memory pids\n");
    put(&unit.join("cgroup.procs"), "");
    put(
        &t.path().join("proc/self/cgroup"),
        "0::/system.slice/precogd.service\n",
    );
    t
}

fn detect(t: &tempfile::TempDir, delegated: bool, is_root: bool) -> Option<Cgroups> {
    let sys = t.path().join("sys");
    let proc = t.path().join("proc");
    Cgroups::detect_as(&sys, &proc, "precog", delegated, is_root).unwrap()
}

#[test]
fn root_on_hybrid_host_makes_the_parent_in_each_hierarchy() {
    let t = hybrid_tree();
    let cg = detect(&t, false, true).unwrap();
    let sys = t.path().join("sys");

    assert_eq!(
        cg.describe(),
        format!(
            "v1 (hybrid): {}/{{cpu,cpuacct,cpuset,memory,pids}}/precog",
            sys.display()
        )
    );
    for c in ["cpu", "cpuacct", "cpuset", "memory", "pids"] {
        assert!(sys.join(c).join("precog").is_dir(), "{c}");
    }
    // A v1 cpuset refuses tasks until it has CPUs and memory nodes.
    assert_eq!(get(&sys.join("cpuset/precog/cpuset.cpus")), "0-3");
    assert_eq!(get(&sys.join("cpuset/precog/cpuset.mems")), "0");
}

#[test]
fn unprivileged_and_not_delegated_runs_without_cgroups() {
    let t = hybrid_tree();
    assert!(detect(&t, false, false).is_none());
}

#[test]
fn no_cgroup_filesystem_means_no_cgroups() {
    let t = tempfile::tempdir().unwrap();
    let cg = Cgroups::detect_as(t.path(), t.path(), "precog", false, true).unwrap();
    assert!(cg.is_none());
}

#[test]
fn v1_pool_gets_its_limits_in_v1_files() {
    let t = hybrid_tree();
    let cg = detect(&t, false, true).unwrap();
    let limits = PoolLimits {
        cpu_quota_pct: Some(20.0),
        cpu_weight: Some(200),
        cpus: Some(vec![0]),
        memory_max: Some(64 << 20),
        memory_reserve: Some(16 << 20),
        pids_max: Some(32),
        ..PoolLimits::default()
    };
    let pool = cg.create_pool("shop", &limits).unwrap();
    let sys = t.path().join("sys");

    assert_eq!(get(&sys.join("cpu/precog/shop/cpu.cfs_quota_us")), "20000");
    assert_eq!(get(&sys.join("cpu/precog/shop/cpu.shares")), "2048");
    assert_eq!(get(&sys.join("cpuset/precog/shop/cpuset.cpus")), "0");
    assert_eq!(get(&sys.join("cpuset/precog/shop/cpuset.mems")), "0");
    assert_eq!(
        get(&sys.join("memory/precog/shop/memory.limit_in_bytes")),
        "67108864"
    );
    assert_eq!(get(&sys.join("pids/precog/shop/pids.max")), "32");
    assert_eq!(pool.limits(), limits);
    assert_eq!(pool.paths().len(), 5);
}

#[test]
fn lifting_limits_reads_back_as_none() {
    let t = hybrid_tree();
    let cg = detect(&t, false, true).unwrap();
    let tight = PoolLimits {
        cpu_quota_pct: Some(50.0),
        memory_max: Some(1 << 20),
        pids_max: Some(8),
        ..PoolLimits::default()
    };
    let pool = cg.create_pool("shop", &tight).unwrap();
    pool.set_limits(&PoolLimits::default()).unwrap();

    let l = pool.limits();
    assert_eq!(l.cpu_quota_pct, None);
    assert_eq!(l.memory_max, None);
    assert_eq!(l.pids_max, None);
    assert_eq!(
        l.cpus,
        Some(vec![0, 1, 2, 3]),
        "cpus fall back to the parent's"
    );
}

#[test]
fn worker_leaf_sits_under_the_pool_and_reports_oom() {
    let t = hybrid_tree();
    let cg = detect(&t, false, true).unwrap();
    let pool = cg.create_pool("shop", &PoolLimits::default()).unwrap();
    let worker = pool.worker(7).unwrap();
    let sys = t.path().join("sys");
    let leaf = sys.join("memory/precog/shop/w7");

    assert!(worker.paths().contains(&leaf));
    assert_eq!(get(&sys.join("cpuset/precog/shop/w7/cpuset.cpus")), "0-3");
    assert!(!worker.oom_killed());

    put(
        &leaf.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
    );
    put(&leaf.join("memory.max_usage_in_bytes"), "5000\n");
    put(
        &sys.join("cpuacct/precog/shop/w7/cpuacct.usage"),
        "123456\n",
    );
    assert!(worker.oom_killed());
    let u = worker.usage();
    assert_eq!((u.cpu_ns, u.memory_peak, u.oom_kills), (123_456, 5000, 1));
    assert_eq!(worker.cpu_ns(), Some(123_456));
    // Read again through the file opened the first time.
    put(
        &sys.join("cpuacct/precog/shop/w7/cpuacct.usage"),
        "200000\n",
    );
    assert_eq!(worker.cpu_ns(), Some(200_000));
}

#[test]
fn delegated_v2_moves_the_daemon_into_a_leaf_and_enables_controllers() {
    let t = delegated_v2_tree();
    let cg = detect(&t, true, false).unwrap();
    let unit = t.path().join("sys/system.slice/precogd.service");

    assert_eq!(
        get(&unit.join("daemon/cgroup.procs")),
        std::process::id().to_string()
    );
    assert!(unit.join("cgroup.subtree_control").is_file());
    assert_eq!(cg.describe(), format!("v2: {} (delegated)", unit.display()));

    let limits = PoolLimits {
        cpu_quota_pct: Some(150.0),
        cpu_weight: Some(300),
        memory_max: Some(256 << 20),
        memory_reserve: Some(64 << 20),
        pids_max: Some(64),
        ..PoolLimits::default()
    };
    let pool = cg.create_pool("shop", &limits).unwrap();
    let dir = unit.join("shop");
    assert_eq!(get(&dir.join("cpu.max")), "150000 100000");
    assert_eq!(get(&dir.join("cpu.weight")), "300");
    assert_eq!(get(&dir.join("memory.max")), "268435456");
    assert_eq!(get(&dir.join("memory.min")), "67108864");
    assert_eq!(get(&dir.join("pids.max")), "64");
    assert_eq!(pool.limits(), limits);
}

#[test]
fn delegated_v2_refuses_cpus_it_was_not_given() {
    let t = delegated_v2_tree();
    let cg = detect(&t, true, false).unwrap();
    let limits = PoolLimits {
        cpus: Some(vec![0]),
        ..PoolLimits::default()
    };
    let err = cg.create_pool("shop", &limits).unwrap_err();
    assert!(err.to_string().contains("cpuset controller"), "{err}");
}

#[test]
fn remove_stale_clears_left_pools_but_keeps_the_daemon_leaf() {
    let t = delegated_v2_tree();
    let cg = detect(&t, true, false).unwrap();
    let unit = t.path().join("sys/system.slice/precogd.service");
    put(&unit.join("shop/w1/cgroup.procs"), "");
    put(&unit.join("search/cgroup.procs"), "");

    assert_eq!(cg.remove_stale().unwrap(), 2);
    assert!(!unit.join("shop").exists());
    assert!(!unit.join("search").exists());
    assert!(unit.join("daemon").is_dir());
}

#[test]
fn removing_everything_leaves_no_directory_behind() {
    let t = hybrid_tree();
    let cg = detect(&t, false, true).unwrap();
    let pool = cg.create_pool("shop", &PoolLimits::default()).unwrap();
    pool.worker(1).unwrap();
    pool.remove().unwrap();
    cg.create_pool("other", &PoolLimits::default()).unwrap();
    cg.remove().unwrap();

    for c in ["cpu", "cpuacct", "cpuset", "memory", "pids"] {
        assert!(!t.path().join("sys").join(c).join("precog").exists(), "{c}");
    }
}

#[test]
fn pool_names_must_be_one_safe_component() {
    let t = hybrid_tree();
    let cg = detect(&t, false, true).unwrap();
    for bad in ["", "..", "a/b", ".hidden", "daemon", "x y"] {
        let err = cg.create_pool(bad, &PoolLimits::default()).unwrap_err();
        assert!(matches!(err, CgroupError::BadName { .. }), "{bad}: {err}");
    }
}

#[test]
fn from_config_takes_the_pools_start_values() {
    let cfg = crate::config::Config::builtin();
    let l = PoolLimits::from_config(cfg.pool("shop").unwrap());
    assert_eq!(l.cpu_quota_pct, Some(150.0));
    assert_eq!(l.cpus, Some(vec![0, 1]));
    assert_eq!(l.memory_max, Some(256 << 20));
    assert_eq!(l.memory_reserve, Some(64 << 20));
    assert_eq!(l.pids_max, Some(64));
}

#[test]
fn the_root_cgroup_is_never_taken_as_delegated() {
    let t = hybrid_tree();
    // /proc/self/cgroup says "/" everywhere: a delegation flag cannot make the root ours.
    assert!(detect(&t, true, false).is_none());
    let cg = detect(&t, true, true).unwrap();
    assert!(!cg.describe().contains("delegated"), "{}", cg.describe());
    assert!(t.path().join("sys/cpu/precog").is_dir());
}
