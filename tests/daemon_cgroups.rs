//! Black-box tests of pools in real cgroups (this machine's v1 hierarchies), on the real daemon.
//! Each daemon uses a cgroup parent of its own, removed when it stops.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Daemon, have_python, is_root, skip_unless, worker};
use serde_json::json;

fn cgroups_usable() -> bool {
    if skip_unless(is_root(), "needs root to create cgroups") {
        return false;
    }
    if skip_unless(
        Path::new("/sys/fs/cgroup/cpu/cgroup.procs").exists()
            || Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        "no cgroup filesystem",
    ) {
        return false;
    }
    !skip_unless(have_python(), "python3 is not installed")
}

fn pool(limits: &str) -> String {
    format!(
        r#"
[[pool]]
name = "shop"
warm_min = 0

[[pool]]
name = "t"
command = ["python3", "{echo}"]
warm_min = 1
workers_max = 2
timeout = "10s"
{limits}

[[process]]
name = "burn"
pool = "t"
inputs = ["cpu_ms"]

[[process]]
name = "hog"
pool = "t"
inputs = ["alloc_mb"]

[[process]]
name = "forks"
pool = "t"
inputs = ["fork_bomb"]

[[process]]
name = "echo"
pool = "t"
inputs = ["x"]
"#,
        echo = worker("echo.py")
    )
}

fn v1_dir(controller: &str, d: &Daemon, rest: &str) -> std::path::PathBuf {
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(&d.cgroup_parent)
        .join(rest)
}

#[test]
fn a_cpu_burner_under_a_20_percent_quota_gets_about_a_fifth_of_a_core() {
    if !cgroups_usable() {
        return;
    }
    let d = Daemon::start(&pool("cpu_quota = \"20%\"\ncpus = \"0\""));
    let usage = v1_dir("cpuacct", &d, "t/cpuacct.usage");
    let before: u64 = read_u64(&usage);
    let start = std::time::Instant::now();
    // Asks for 2 s of CPU; with 20% of a core that takes about 10 s of wall time, so sample
    // what it got in the first two seconds.
    let sock = d.socket.clone();
    let job = std::thread::spawn(move || {
        common::Conn::open(&sock)
            .unwrap()
            .call(&json!({"op": "run", "session": "c",
            "process": "burn", "inputs": {"cpu_ms": 2000}}))
    });
    std::thread::sleep(Duration::from_secs(2));
    let used_ns = read_u64(&usage) - before;
    let wall = start.elapsed().as_secs_f64();
    let share = used_ns as f64 / 1e9 / wall;
    println!(
        "CPU used under a 20% quota: {:.3} s in {wall:.2} s = {:.1}% of a core",
        used_ns as f64 / 1e9,
        share * 100.0
    );
    assert!(share <= 0.25, "used {:.1}% of a core", share * 100.0);
    assert!(share >= 0.10, "used only {:.1}% of a core", share * 100.0);
    let quota = std::fs::read_to_string(v1_dir("cpu", &d, "t/cpu.cfs_quota_us")).unwrap();
    assert_eq!(quota.trim(), "20000");
    drop(job);
}

#[test]
fn a_job_past_the_memory_limit_is_reported_as_oom() {
    if !cgroups_usable() {
        return;
    }
    let d = Daemon::start(&pool("memory_max = \"64M\"\nmemory_reserve = \"16M\""));
    let r = d.call(json!({"op": "run", "session": "m", "process": "hog",
        "inputs": {"alloc_mb": 256}}));
    assert_eq!(r["ok"], json!(false), "{r}");
    assert_eq!(r["error"]["code"], json!("worker_failed"), "{r}");
    assert_eq!(r["error"]["reason"], json!("oom"), "{r}\n{}", d.log());

    let r = d.call(json!({"op": "run", "session": "m", "process": "hog",
        "inputs": {"alloc_mb": 8}}));
    assert_eq!(
        r["ok"],
        json!(true),
        "a small job after the OOM should work: {r}"
    );
    let soft =
        std::fs::read_to_string(v1_dir("memory", &d, "t/memory.soft_limit_in_bytes")).unwrap();
    assert_eq!(soft.trim(), (16u64 << 20).to_string());
}

#[test]
fn workers_run_on_the_pools_cpus_inside_its_cgroup() {
    if !cgroups_usable() {
        return;
    }
    let d = Daemon::start(&pool("cpus = \"0\""));
    let r = d.call(json!({"op": "run", "session": "p", "process": "echo", "inputs": {"x": 1}}));
    assert_eq!(r["ok"], json!(true), "{r}");
    let workers = d.workers();
    assert!(!workers.is_empty());
    for pid in workers {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_string();
        assert_eq!(cpus, "0", "worker {pid} may run on {cpus}");
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(
            cg.contains(&format!("/{}/t/w", d.cgroup_parent)),
            "worker {pid}: {cg}"
        );
    }
}

#[test]
fn a_fork_bomb_is_stopped_by_the_pids_limit_and_the_daemon_keeps_serving() {
    if !cgroups_usable() {
        return;
    }
    let d = Daemon::start(&pool("pids_max = 16"));
    let r = d.call(json!({"op": "run", "session": "f", "process": "forks",
        "inputs": {"fork_bomb": 200}}));
    println!("fork bomb reply: {r}");
    let pids = std::fs::read_to_string(v1_dir("pids", &d, "t/pids.max")).unwrap();
    assert_eq!(pids.trim(), "16");
    let current: u64 = read_u64(&v1_dir("pids", &d, "t/pids.current"));
    assert!(current <= 16, "{current} tasks in a pool limited to 16");
    assert_eq!(d.call(json!({"op": "ping"}))["ok"], json!(true));
    let r = d.call(json!({"op": "run", "session": "f", "process": "echo", "inputs": {"x": 2}}));
    assert_eq!(r["ok"], json!(true), "{r}");
}

#[test]
fn no_cgroup_directory_remains_after_the_daemon_stops() {
    if !cgroups_usable() {
        return;
    }
    let mut d = Daemon::start(&pool("memory_max = \"128M\"\ncpu_quota = \"50%\""));
    let r = d.call(json!({"op": "run", "session": "r", "process": "echo", "inputs": {"x": 3}}));
    assert_eq!(r["ok"], json!(true));
    assert!(v1_dir("memory", &d, "t").exists());
    let stats = d.call(json!({"op": "stats"}));
    let cg = &stats["pools"]["t"]["cgroup"];
    assert!(
        cg["paths"].to_string().contains(&d.cgroup_parent),
        "{stats}"
    );
    assert_eq!(cg["limits"]["memory_max"], json!(128u64 << 20), "{cg}");
    assert!(d.stop());
    for c in ["cpu", "cpuacct", "cpuset", "memory", "pids"] {
        let dir = Path::new("/sys/fs/cgroup").join(c).join(&d.cgroup_parent);
        assert!(!dir.exists(), "{} remains", dir.display());
    }
}

fn read_u64(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .parse()
        .unwrap()
}

/// Writes a configuration with a cgroup parent of its own and `pools`; returns its path and the
/// parent's name.
fn own_config(dir: &Path, pools: &str) -> (std::path::PathBuf, String) {
    let parent = common::cgroup_parent();
    (config_on(dir, pools, &parent), parent)
}

/// Writes a configuration with cgroup parent `parent` and `pools`; returns its path.
fn config_on(dir: &Path, pools: &str, parent: &str) -> std::path::PathBuf {
    let config = dir.join("precogd.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\ncache_dir = \"{d}/cache\"\nstate_dir = \"{d}/state\"\n\
             cgroup_parent = \"{parent}\"\nsocket_group = \"root\"\nallowed_groups = []\n{pools}",
            d = dir.display(),
        ),
    )
    .unwrap();
    config
}

/// The directories of cgroup `parent` that remain in any hierarchy.
fn cgroups_left(parent: &str) -> Vec<String> {
    std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path().join(parent)))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect()
}

/// A SIGTERM while the pools are still warming up stops the daemon as gracefully as one later:
/// its cgroups are gone when it exits.
#[test]
fn a_daemon_stopped_while_it_starts_leaves_no_cgroup() {
    if !cgroups_usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (config, parent) = own_config(
        dir.path(),
        &pool("warm_min = 2").replace("warm_min = 1\n", ""),
    );
    let mut child = std::process::Command::new(common::precogd())
        .arg("--config")
        .arg(&config)
        .args(["--bus", "none", "--socket"])
        .arg(dir.path().join("precogd.sock"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The pool's cgroup exists before its first worker answers.
    let pool_dir = Path::new("/sys/fs/cgroup/cpu").join(&parent).join("t");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !pool_dir.exists() {
        assert!(std::time::Instant::now() < deadline, "no pool cgroup");
        std::thread::sleep(Duration::from_millis(1));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "precogd ended with {status}");
    let left = cgroups_left(&parent);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Starts precogd on `config` with its socket in `dir`, for a start that must fail.
fn start_to_exit(config: &Path, dir: &Path) -> std::process::Output {
    std::process::Command::new(common::precogd())
        .arg("--config")
        .arg(config)
        .arg("--socket")
        .arg(dir.join("precogd.sock"))
        .args(["--bus", "none"])
        .output()
        .unwrap()
}

/// A daemon that fails at start after it made cgroups (here the kernel refuses the pool's CPU
/// quota, above that of the cgroup precogd is given to work in) exits with the reason and
/// removes the cgroups it made before it found out.
#[test]
fn a_daemon_that_cannot_start_leaves_no_cgroups_behind() {
    if !cgroups_usable()
        || skip_unless(
            Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists(),
            "caps a cgroup v1 CPU quota",
        )
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (config, parent) = own_config(
        dir.path(),
        "[[pool]]\nname = \"shop\"\nwarm_min = 1\ncpu_quota = \"150%\"\n",
    );
    let capped = Path::new("/sys/fs/cgroup/cpu").join(&parent);
    std::fs::create_dir(&capped).unwrap();
    std::fs::write(capped.join("cpu.cfs_quota_us"), "50000").unwrap();
    let out = start_to_exit(&config, dir.path());
    let left = cgroups_left(&parent);
    let _ = std::fs::remove_dir(&capped);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "precogd started:\n{log}");
    assert!(
        log.contains("cpu.cfs_quota_us") && log.contains("refused"),
        "{log}"
    );
    assert!(left.is_empty(), "left behind: {left:?}\n{log}");
}

/// A worker that cannot be found is refused before anything is made, placed at the file and
/// line that names it, like every other configuration error; so is a pool on CPUs precogd may
/// not use, and both are reported at once.
#[test]
fn a_start_refuses_what_only_the_host_can_tell_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (config, parent) = own_config(
        dir.path(),
        "[[pool]]\nname = \"zz\"\ncommand = [\"no-such-precog-worker\"]\n\
         [[pool]]\nname = \"far\"\ncommand = [\"/bin/cat\"]\ncpus = \"4095\"\n",
    );
    let out = start_to_exit(&config, dir.path());
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(
        log.contains("precogd.toml:9: pool.zz.command: worker executable `no-such-precog-worker`"),
        "{log}"
    );
    assert!(log.contains("precogd.toml:13: pool.far.cpus: "), "{log}");
    assert!(cgroups_left(&parent).is_empty());
    assert!(!dir.path().join("precogd.sock").exists());
}

#[test]
fn a_reload_fences_a_new_pool_writes_changed_limits_and_a_refused_one_changes_nothing() {
    if !cgroups_usable()
        || skip_unless(
            Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists(),
            "reads cgroup v1 files",
        )
    {
        return;
    }
    let mut d = Daemon::start(&pool("pids_max = 20"));
    let pids_max = |d: &Daemon, pool: &str| {
        std::fs::read_to_string(v1_dir("pids", d, &format!("{pool}/pids.max")))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let first = std::fs::read_to_string(&d.config).unwrap();

    // A new pool, and a tighter limit for the old one.
    let added = format!(
        "{}\n[[pool]]\nname = \"added\"\ncommand = [\"python3\", \"{echo}\"]\nwarm_min = 1\n\
         pids_max = 9\n\n[[process]]\nname = \"added_echo\"\npool = \"added\"\ninputs = [\"x\"]\n",
        first.replace("pids_max = 20", "pids_max = 11"),
        echo = worker("echo.py")
    );
    d.reload(&added);
    assert!(
        common::wait_until(Duration::from_secs(10), || pids_max(&d, "t") == "11"),
        "the changed limit was not written: pids.max {}",
        pids_max(&d, "t")
    );
    let r = d.call(json!({"op": "run", "session": "s", "process": "added_echo",
        "inputs": {"x": 1}}));
    assert_eq!(r["ok"], json!(true), "{r}");
    let pid = r["result"]["pid"]
        .as_u64()
        .expect("echo.py reports its pid");
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let fenced = format!("pids:/{}/added/", d.cgroup_parent);
    assert!(
        cgroups.contains(&fenced),
        "worker {pid} not in {fenced}: {cgroups}"
    );
    assert_eq!(pids_max(&d, "added"), "9");

    // Refused (a pool whose worker does not exist): the running configuration stays whole.
    let refused = format!(
        "{}\n[[pool]]\nname = \"late\"\ncommand = [\"python3\", \"{echo}\"]\nwarm_min = 1\n\n\
         [[pool]]\nname = \"broken\"\ncommand = [\"no-such-precog-worker\"]\n",
        added.replace("pids_max = 11", "pids_max = 5"),
        echo = worker("echo.py")
    );
    d.reload(&refused);
    assert!(
        common::wait_until(Duration::from_secs(10), || d
            .log()
            .contains("configuration not reloaded")),
        "the bad configuration was not refused: {}",
        d.log()
    );
    let stats = d.call(json!({"op": "stats"}));
    assert!(stats["pools"].get("late").is_none(), "{stats}");
    assert_eq!(pids_max(&d, "t"), "11");
    assert!(!v1_dir("pids", &d, "late").exists());
    assert!(d.stop(), "precogd did not stop cleanly");
}

#[test]
fn a_pool_moved_to_other_cpus_by_a_reload_keeps_serving_and_ends_on_them() {
    if !cgroups_usable()
        || skip_unless(
            Path::new("/sys/fs/cgroup/cpuset/cgroup.procs").exists(),
            "reads cgroup v1 files",
        )
        || skip_unless(
            std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2),
            "needs two CPUs",
        )
    {
        return;
    }
    let mut d = Daemon::start(&pool("cpus = \"0\"\npids_max = 20"));
    let r = d.call(json!({"op": "run", "session": "p", "process": "echo", "inputs": {"x": 1}}));
    assert_eq!(r["ok"], json!(true), "{r}");

    let text = std::fs::read_to_string(&d.config).unwrap();
    let moved = text
        .replace("cpus = \"0\"", "cpus = \"1\"")
        .replace("pids_max = 20", "pids_max = 30");
    d.reload(&moved);

    // Requests go on being served while the workers move, and the other limits are written.
    let file = |name: &str| {
        let controller = name.split('.').next().unwrap();
        std::fs::read_to_string(v1_dir(controller, &d, &format!("t/{name}")))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    for x in 2..12 {
        let r = d.call(json!({"op": "run", "session": "p", "process": "echo", "inputs": {"x": x}}));
        assert_eq!(r["ok"], json!(true), "run {x} while the pool moved: {r}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(file("pids.max"), "30");
    // Once the old workers are gone, the pool holds the new CPU alone.
    assert!(
        common::wait_until(Duration::from_secs(25), || file("cpuset.cpus") == "1"),
        "the pool's CPUs stayed {}",
        file("cpuset.cpus")
    );
    for pid in d.workers() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(
            status.contains("Cpus_allowed_list:\t1\n"),
            "worker {pid}: {status}"
        );
    }
    assert!(d.stop(), "precogd did not stop cleanly");
}

#[test]
fn a_pool_a_reload_removed_leaves_no_cgroup_unless_a_pool_added_again_shares_it() {
    if !cgroups_usable()
        || skip_unless(
            Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists(),
            "reads cgroup v1 files",
        )
    {
        return;
    }
    let d = Daemon::start(&pool(""));
    let first = std::fs::read_to_string(&d.config).unwrap();
    let with = |name: &str| {
        format!(
            "{first}\n[[pool]]\nname = \"{name}\"\ncommand = [\"python3\", \"{echo}\"]\n\
             warm_min = 1\ntimeout = \"30s\"\n\n[[process]]\nname = \"{name}_nap\"\n\
             pool = \"{name}\"\ninputs = [\"sleep_ms\"]\n",
            echo = worker("echo.py")
        )
    };
    let dirs = |name: &str| {
        ["cpu", "cpuacct", "cpuset", "memory", "pids"]
            .into_iter()
            .map(|c| v1_dir(c, &d, name))
            .filter(|dir| dir.exists())
            .collect::<Vec<_>>()
    };
    let nap = |name: &str, ms: u64| {
        json!({"op": "run", "session": "n", "process": format!("{name}_nap"),
            "inputs": {"sleep_ms": ms}})
    };
    let released = |d: &Daemon| {
        d.log()
            .matches("a removed pool's cgroup was released")
            .count()
    };

    // Added, then removed: its cgroup goes once its worker has stopped.
    d.reload_applied(&with("added"));
    let r = d.call(nap("added", 0));
    assert_eq!(r["ok"], json!(true), "{r}");
    assert!(v1_dir("pids", &d, "added").is_dir());
    d.reload_applied(&first);
    assert!(
        common::wait_until(Duration::from_secs(20), || dirs("added").is_empty()),
        "left behind: {:?}\n{}",
        dirs("added"),
        d.log()
    );
    assert!(common::wait_until(Duration::from_secs(5), || released(&d) == 1));

    // Removed while a job runs on it, and added again before the job ends: the old pool's
    // end leaves the directory to the new one, whose workers go on serving in it.
    d.reload_applied(&with("again"));
    let r = d.call(nap("again", 0));
    assert_eq!(r["ok"], json!(true), "{r}");
    let mut c = d.connect();
    c.send(&nap("again", 1500));
    std::thread::sleep(Duration::from_millis(300));
    d.reload_applied(&first);
    d.reload_applied(&with("again"));
    let r = c.recv();
    assert_eq!(r["ok"], json!(true), "{r}");
    assert!(
        common::wait_until(Duration::from_secs(20), || released(&d) == 2),
        "the old pool's cgroup was not released:\n{}",
        d.log()
    );
    assert!(v1_dir("pids", &d, "again").is_dir());
    let r = d.call(nap("again", 0));
    assert_eq!(r["ok"], json!(true), "{r}");
    let pid = r["result"]["pid"]
        .as_u64()
        .expect("echo.py reports its pid");
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let fenced = format!("pids:/{}/again/", d.cgroup_parent);
    assert!(
        cgroups.contains(&fenced),
        "worker {pid} not in {fenced}: {cgroups}"
    );
}

/// A second precogd given the cgroup parent of one that runs (a hand-started daemon beside the
/// service, say) refuses to start and says why; the first keeps its workers, its cgroups and
/// its service.
#[test]
fn a_second_daemon_on_a_running_ones_cgroup_parent_refuses_and_leaves_its_workers_alone() {
    if !cgroups_usable() {
        return;
    }
    let first = Daemon::start(&pool(""));
    let before = first.workers();
    assert!(!before.is_empty(), "{}", first.log());

    let dir = tempfile::tempdir().unwrap();
    let config = config_on(dir.path(), &pool(""), &first.cgroup_parent);
    let socket = dir.path().join("precogd.sock");
    let mut second = std::process::Command::new(common::precogd())
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&socket)
        .args(["--bus", "none"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ended = common::wait_until(Duration::from_secs(20), || {
        second.try_wait().unwrap().is_some()
    });
    if !ended {
        let _ = second.kill();
    }
    let out = second.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(ended, "the second precogd kept running:\n{log}");
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("held by another running precogd"), "{log}");
    assert!(log.contains("cgroup_parent"), "{log}");
    assert!(!socket.exists(), "the refused daemon left its socket file");

    assert_eq!(
        first.workers(),
        before,
        "the first daemon's workers were replaced"
    );
    for pid in before {
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let leaf = format!("/{}/t/w", first.cgroup_parent);
        assert!(cg.contains(&leaf), "worker {pid} left its cgroup: {cg}");
    }
    let r = first.call(json!({"op": "run", "session": "p", "process": "echo", "inputs": {"x": 2}}));
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(r["served"], json!("warm"), "{r}");
}
