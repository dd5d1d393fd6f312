//! The cgroup module on this host's real hierarchies, as root: limits are enforced on real
//! processes that join their cgroup in `pre_exec`, OOM kills are reported, and nothing is left
//! behind. Each test makes its own uniquely named subtree and removes it, even when it fails.
//! Without root or a cgroup filesystem a test prints `SKIPPED: <reason>` and returns.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use precog::cgroup::{Cgroups, JoinHandle, PoolLimits};

const SYS: &str = "/sys/fs/cgroup";

/// precog's subtree for one test, removed when the test ends however it ends.
struct Subtree {
    cgroups: Option<Cgroups>,
    parent: String,
}

impl Subtree {
    fn cg(&self) -> &Cgroups {
        self.cgroups.as_ref().expect("the subtree is held")
    }

    /// Lets the subtree go as a daemon that died would, leaving what is in it, and takes it
    /// again as the next start does.
    fn restart(&mut self) -> &Cgroups {
        self.cgroups = None;
        self.cgroups = Some(detect(&self.parent));
        self.cg()
    }
}

impl Drop for Subtree {
    fn drop(&mut self) {
        if let Some(cgroups) = self.cgroups.take()
            && let Err(e) = cgroups.remove()
        {
            eprintln!("could not remove test cgroup {}: {e}", self.parent);
        }
    }
}

fn detect(parent: &str) -> Cgroups {
    Cgroups::detect(Path::new(SYS), Path::new("/proc"), parent, false)
        .expect("cgroups are detected")
        .expect("root gets a subtree")
}

fn subtree(test: &str) -> Option<Subtree> {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: needs root to make cgroups");
        return None;
    }
    if !Path::new(SYS).join("cpu/tasks").exists() && !Path::new(SYS).join("cgroup.procs").exists() {
        println!("SKIPPED: no cgroup filesystem at {SYS}");
        return None;
    }
    let parent = format!("precog-test-{}-{test}", std::process::id());
    Some(Subtree {
        cgroups: Some(detect(&parent)),
        parent,
    })
}

/// Starts `sh -c script` inside the cgroup the handle joins, before it runs anything.
fn spawn_in(join: JoinHandle, script: &str) -> Child {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: join_raw only calls write(2) on descriptors opened before the fork.
    unsafe {
        cmd.pre_exec(move || join.join_raw());
    }
    cmd.spawn().expect("sh starts")
}

#[test]
fn cpu_quota_of_20_percent_holds_a_busy_loop_to_a_fifth_of_a_core() {
    let Some(t) = subtree("quota") else { return };
    let limits = PoolLimits {
        cpu_quota_pct: Some(20.0),
        ..PoolLimits::default()
    };
    let pool = t.cg().create_pool("burn", &limits).unwrap();
    let worker = pool.worker(1).unwrap();
    let mut child = spawn_in(worker.join_handle().unwrap(), "while :; do :; done");

    let start = Instant::now();
    sleep(Duration::from_secs(2));
    let used = worker.usage().cpu_ns as f64 / 1e9;
    let wall = start.elapsed().as_secs_f64();
    worker.kill_all().unwrap();
    child.wait().unwrap();

    println!(
        "cpu under a 20% quota: {used:.3} s in {wall:.3} s ({:.1}% of a core)",
        used / wall * 100.0
    );
    assert!(
        used <= 0.25 * wall,
        "used {used:.3} s of CPU in {wall:.3} s"
    );
    assert!(used >= 0.05 * wall, "the burner barely ran: {used:.3} s");
    assert_eq!(pool.limits().cpu_quota_pct, Some(20.0));
}

#[test]
fn a_worker_allocating_past_memory_max_is_oom_killed_and_reported() {
    let Some(t) = subtree("oom") else { return };
    let limits = PoolLimits {
        memory_max: Some(32 << 20),
        ..PoolLimits::default()
    };
    let pool = t.cg().create_pool("hog", &limits).unwrap();
    let worker = pool.worker(1).unwrap();
    let spare = pool.worker(2).unwrap();
    // The shell keeps 200 MB of text in a variable.
    let script = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived";
    let child = spawn_in(worker.join_handle().unwrap(), script);

    let out = child.wait_with_output().unwrap();
    let usage = worker.usage();
    println!(
        "memory under a 32 MiB limit: peak {} KiB, oom kills {}, exit {:?}",
        usage.memory_peak >> 10,
        usage.oom_kills,
        out.status
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("survived"));
    assert!(worker.oom_killed(), "the kill is reported as OOM");
    assert!(
        !spare.oom_killed(),
        "only the worker that ran out is blamed"
    );
    assert!(usage.memory_peak <= 32 << 20);
    assert!(usage.memory_peak >= 16 << 20, "the worker did allocate");
}

#[test]
fn a_worker_runs_only_on_the_pools_cpus() {
    let Some(t) = subtree("cpuset") else { return };
    let limits = PoolLimits {
        cpus: Some(vec![0]),
        ..PoolLimits::default()
    };
    let pool = t.cg().create_pool("pinned", &limits).unwrap();
    let worker = pool.worker(1).unwrap();
    let child = spawn_in(worker.join_handle().unwrap(), "cat /proc/self/status");

    let out = child.wait_with_output().unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    let allowed = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(str::trim);
    assert_eq!(allowed, Some("0"));
    assert_eq!(pool.limits().cpus, Some(vec![0]));
}

#[test]
fn a_fork_bomb_is_stopped_by_pids_max_and_killed_whole() {
    let Some(t) = subtree("forkbomb") else { return };
    let limits = PoolLimits {
        pids_max: Some(16),
        ..PoolLimits::default()
    };
    let pool = t.cg().create_pool("bomb", &limits).unwrap();
    let worker = pool.worker(1).unwrap();
    // Every process forks two more and stays, until forks fail.
    let mut child = spawn_in(
        worker.join_handle().unwrap(),
        "b() { b & b & sleep 30; }; b",
    );

    sleep(Duration::from_millis(1000));
    let tasks = worker.tasks().len();
    // Refused forks are counted where the limit sits or where the fork failed, by kernel.
    let refused: u64 = pool
        .paths()
        .into_iter()
        .chain(worker.paths())
        .filter(|p| p.components().any(|c| c.as_os_str() == "pids"))
        .filter_map(|p| std::fs::read_to_string(p.join("pids.events")).ok())
        .filter_map(|e| e.split_whitespace().nth(1)?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    worker.kill_all().unwrap();
    child.wait().unwrap();

    println!("fork bomb under pids_max 16: {tasks} tasks alive, {refused} forks refused");
    assert!((1..=16).contains(&tasks), "{tasks} tasks");
    assert!(refused > 0, "the limit was reached");
    assert!(worker.tasks().is_empty(), "all forked tasks are killed");
}

#[test]
fn removed_pool_leaves_no_directory() {
    let Some(t) = subtree("remove") else { return };
    let pool = t.cg().create_pool("gone", &PoolLimits::default()).unwrap();
    let worker = pool.worker(1).unwrap();
    let mut child = spawn_in(worker.join_handle().unwrap(), "sleep 60");
    let paths = pool.paths();
    assert!(paths.iter().all(|p| p.is_dir()));

    pool.remove().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    for p in paths {
        assert!(!p.exists(), "{} remains", p.display());
    }
}

#[test]
fn remove_stale_cleans_a_left_pool_with_a_live_task() {
    let Some(mut t) = subtree("stale") else {
        return;
    };
    let pool = t.cg().create_pool("left", &PoolLimits::default()).unwrap();
    let worker = pool.worker(3).unwrap();
    let mut child = spawn_in(worker.join_handle().unwrap(), "sleep 60");
    let paths = pool.paths();
    // The run that made it "crashes": nothing removes the pool.
    drop((worker, pool));

    let restarted = t.restart();
    assert_eq!(restarted.remove_stale().unwrap(), 1);
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    for p in paths {
        assert!(!p.exists(), "{} remains", p.display());
    }
}

#[test]
fn limits_are_read_back_and_refusals_name_the_file() {
    let Some(t) = subtree("readback") else { return };
    let limits = PoolLimits {
        cpu_quota_pct: Some(150.0),
        cpu_weight: Some(50),
        memory_max: Some(64 << 20),
        memory_reserve: Some(16 << 20),
        pids_max: Some(64),
        ..PoolLimits::default()
    };
    let pool = t.cg().create_pool("tuned", &limits).unwrap();
    let back = pool.limits();
    assert_eq!(back.cpu_quota_pct, Some(150.0));
    assert_eq!(back.cpu_weight, Some(50));
    assert_eq!(back.memory_max, Some(64 << 20));
    assert_eq!(back.memory_reserve, Some(16 << 20));
    assert_eq!(back.pids_max, Some(64));

    let impossible = PoolLimits {
        cpus: Some(vec![4000]),
        ..PoolLimits::default()
    };
    let err = pool.set_limits(&impossible).unwrap_err().to_string();
    assert!(err.contains("cpuset.cpus") && err.contains("4000"), "{err}");
    assert_eq!(
        pool.limits().cpus,
        Some(vec![0, 1]),
        "the refused CPU set did not take"
    );
}

#[test]
fn describe_names_the_hierarchies_and_the_subtree() {
    let Some(t) = subtree("describe") else { return };
    let text = t.cg().describe();
    println!("{text}");
    assert!(text.contains(&t.parent), "{text}");
    assert!(text.starts_with("v1") || text.starts_with("v2"), "{text}");
}

#[test]
fn a_pool_whose_limits_are_refused_leaves_no_directory() {
    let Some(t) = subtree("refused") else { return };
    let impossible = PoolLimits {
        cpus: Some(vec![4000]),
        pids_max: Some(8),
        ..PoolLimits::default()
    };
    let err = t.cg().create_pool("refused", &impossible).unwrap_err();
    assert!(err.to_string().contains("cpuset.cpus"), "{err}");
    for h in std::fs::read_dir(SYS).unwrap().flatten() {
        let dir = h.path().join(&t.parent).join("refused");
        assert!(!dir.exists(), "{} remains", dir.display());
    }
}

#[test]
fn a_pool_cgroup_shared_with_a_pool_of_the_same_name_goes_with_the_last_release() {
    let Some(t) = subtree("shared") else { return };
    let old = t.cg().create_pool("p", &PoolLimits::default()).unwrap();
    // Added again while the old pool still stops: the same directories.
    let new = t.cg().create_pool("p", &PoolLimits::default()).unwrap();
    assert_eq!(old.paths(), new.paths());
    let worker = new.worker(2).unwrap();
    let mut child = spawn_in(worker.join_handle().unwrap(), "sleep 60");

    old.release().unwrap();
    old.release().unwrap();
    assert!(new.paths().iter().all(|p| p.is_dir()));
    assert_eq!(
        child.try_wait().unwrap(),
        None,
        "the new pool's worker was killed"
    );

    new.release().unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    for p in new.paths() {
        assert!(!p.exists(), "{} remains", p.display());
    }
}
