//! Black-box, in this machine's real (v1) cgroups: the tuner raises a pool's memory limit after
//! an OOM kill until the job succeeds, and a CPU-bound pool's quota past the one it started with;
//! limits the kernel took in a write it partly refused are undone by the next reload. Each daemon
//! uses a cgroup parent of its own, removed when it stops.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Daemon, have_python, is_root, skip_unless, worker};
use serde_json::json;

fn cgroups_usable() -> bool {
    if skip_unless(is_root(), "needs root to create cgroups") {
        return false;
    }
    if skip_unless(
        Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists()
            && Path::new("/sys/fs/cgroup/cpu/cgroup.procs").exists(),
        "no cgroup v1 cpu and memory hierarchies",
    ) {
        return false;
    }
    !skip_unless(have_python(), "python3 is not installed")
}

fn config(limits: &str) -> String {
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
timeout = "20s"
{limits}

[[process]]
name = "burn"
pool = "t"
inputs = ["cpu_ms"]

[[process]]
name = "hog"
pool = "t"
inputs = ["alloc_mb"]
"#,
        echo = worker("echo.py")
    )
}

fn v1(controller: &str, d: &Daemon, file: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(&d.cgroup_parent)
        .join("t")
        .join(file)
}

fn read_i64(p: &Path) -> i64 {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_job_killed_for_memory_gets_a_higher_limit_and_then_succeeds() {
    if !cgroups_usable() {
        return;
    }
    let d = Daemon::start(&config(
        "memory_max = \"64M\"\nmemory_reserve = \"16M\"\nmemory_ceiling = \"512M\"",
    ));
    let limit = v1("memory", &d, "memory.limit_in_bytes");
    assert_eq!(read_i64(&limit), 64 << 20);

    let mut attempts = Vec::new();
    let mut ok = false;
    for _ in 0..10 {
        let r = d.call(json!({"op": "run", "session": "m", "process": "hog",
            "inputs": {"alloc_mb": 120}}));
        attempts.push(read_i64(&limit) >> 20);
        if r["ok"] == json!(true) {
            ok = true;
            break;
        }
        assert_eq!(r["error"]["reason"], json!("oom"), "{r}");
    }
    println!("memory limit after each attempt (MiB): {attempts:?}");
    assert!(ok, "never succeeded; limits {attempts:?}\n{}", d.log());
    assert!(attempts.len() > 1, "the first attempt should not have fit");
    assert!(read_i64(&limit) > 120 << 20);

    let s = d.call(json!({"op": "stats"}));
    let floor = s["tune"]["pools"]["t"]["oom_floor"]
        .as_u64()
        .expect("an OOM floor");
    assert!(floor > 64 << 20, "{}", s["tune"]);
    assert!(
        d.log().contains("quota changed"),
        "no info line for the change"
    );
}

#[test]
fn a_cpu_bound_pool_gets_a_higher_quota() {
    if !cgroups_usable() {
        return;
    }
    let d = Daemon::start(&config(
        "cpu_quota = \"20%\"\ncpu_min = \"10%\"\ncpu_max = \"150%\"",
    ));
    let quota = v1("cpu", &d, "cpu.cfs_quota_us");
    assert_eq!(read_i64(&quota), 20_000);

    let sock = d.socket.clone();
    let job = std::thread::spawn(move || {
        common::Conn::open(&sock).unwrap().call(
            &json!({"op": "run", "session": "c", "process": "burn", "inputs": {"cpu_ms": 1500}}),
        )
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = vec![read_i64(&quota)];
    while Instant::now() < deadline && *seen.last().unwrap() < 60_000 {
        std::thread::sleep(Duration::from_millis(200));
        let q = read_i64(&quota);
        if Some(&q) != seen.last() {
            seen.push(q);
        }
    }
    println!("cpu.cfs_quota_us over time: {seen:?}");
    assert!(*seen.last().unwrap() >= 60_000, "{seen:?}\n{}", d.log());
    assert!(*seen.last().unwrap() <= 150_000, "{seen:?}");
    let r = job.join().unwrap();
    assert_eq!(r["ok"], json!(true), "{r}");
}

#[test]
fn a_partly_refused_write_leaves_nothing_a_reload_cannot_undo() {
    if !cgroups_usable() {
        return;
    }
    let plain = config("");
    let d = Daemon::start(&plain);
    let memory = v1("memory", &d, "memory.limit_in_bytes");
    let unlimited = read_i64(&memory);
    assert!(unlimited >= 1 << 62, "{unlimited}");
    // On v1 the kernel refuses a quota above the parent's: cap the daemon's own parent (at the
    // built-in pool's 150%), so the pool's quota below is refused while its memory limit is
    // taken.
    let parent = Path::new("/sys/fs/cgroup/cpu")
        .join(&d.cgroup_parent)
        .join("cpu.cfs_quota_us");
    std::fs::write(&parent, "150000").unwrap();
    let text = std::fs::read_to_string(&d.config).unwrap();
    let limited = text.replace(
        "timeout = \"20s\"",
        "timeout = \"20s\"\nmemory_max = \"128M\"\ncpu_quota = \"400%\"",
    );
    assert_ne!(limited, text);
    d.reload(&limited);
    let taken = common::wait_until(Duration::from_secs(10), || {
        // 128M, or where the tuner moved it since.
        read_i64(&memory) < unlimited && d.log().contains("cannot apply tuned limits")
    });
    assert!(taken, "memory limit {}:\n{}", read_i64(&memory), d.log());

    d.reload(&text);
    let undone = common::wait_until(Duration::from_secs(10), || read_i64(&memory) == unlimited);
    assert!(
        undone,
        "memory limit {} after the reload:\n{}",
        read_i64(&memory),
        d.log()
    );
    assert_eq!(read_i64(&v1("cpu", &d, "cpu.cfs_quota_us")), -1);
}
