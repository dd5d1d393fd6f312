//! Black-box tests of who may use precog and what a worker may do, on the real daemon: the
//! SO_PEERCRED check (with the groups the client process holds), results kept apart per client
//! user, and the worker sandbox (no new privileges, clean environment, only stdio open, the
//! configured user). They run as root.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::{Daemon, have_python, is_root, skip_unless, worker};
use serde_json::{Value, json};

const NOBODY: u32 = 65534;

fn preconditions() -> bool {
    if skip_unless(is_root(), "needs root to act as other users") {
        return false;
    }
    if skip_unless(have_python(), "python3 is not installed") {
        return false;
    }
    !skip_unless(
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(NOBODY))
            .ok()
            .flatten()
            .is_some(),
        "there is no user `nobody`",
    )
}

/// A group made for one test, removed when dropped.
struct TempGroup {
    name: String,
    gid: u32,
}

impl TempGroup {
    fn create() -> Option<TempGroup> {
        let name = format!("precogt{}", std::process::id());
        let ok = Command::new("groupadd")
            .arg(&name)
            .status()
            .is_ok_and(|s| s.success());
        let group = nix::unistd::Group::from_name(&name).ok().flatten();
        match (ok, group) {
            (true, Some(g)) => Some(TempGroup {
                name,
                gid: g.gid.as_raw(),
            }),
            _ => None,
        }
    }
}

impl Drop for TempGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).status();
    }
}

/// Restarts `d` with `toml` laid over its configuration as a drop-in, and opens its directory
/// and socket to other users at the file level, so only precogd's own check decides.
fn restart_with_drop_in(d: &mut Daemon, toml: &str) {
    d.stop();
    let drop_ins = d.config.with_extension("toml.d");
    std::fs::create_dir_all(&drop_ins).unwrap();
    let text = format!("[daemon]\nsocket_mode = \"0666\"\n{toml}\n");
    std::fs::write(drop_ins.join("50-test.toml"), text).unwrap();
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    d.spawn();
}

/// Sends each request on one connection as `uid`:`gid` (a Python client) and returns the
/// replies; a reply that never came is `null`.
fn call_as(uid: u32, gid: u32, d: &Daemon, requests: &[Value]) -> Vec<Value> {
    call_in_groups(uid, gid, &[], d, requests)
}

/// As [`call_as`], from a process that also holds the supplementary `groups`.
fn call_in_groups(
    uid: u32,
    gid: u32,
    groups: &[u32],
    d: &Daemon,
    requests: &[Value],
) -> Vec<Value> {
    const CLIENT: &str = r#"
import json, os, socket, sys
os.setgroups([int(g) for g in sys.argv[2].split(",") if g])
os.setgid(int(sys.argv[3]))
os.setuid(int(sys.argv[4]))
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
s.connect(sys.argv[1])
f = s.makefile("rwb")
for req in sys.argv[5:]:
    try:
        f.write(req.encode() + b"\n")
        f.flush()
        print(f.readline().decode().strip() or "null", flush=True)
    except OSError:
        print("null", flush=True)
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(CLIENT)
        .arg(&d.socket)
        .arg(
            groups
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
        )
        .arg(gid.to_string())
        .arg(uid.to_string())
        .args(requests.iter().map(Value::to_string))
        .current_dir("/")
        .output()
        .expect("run the python client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
        .collect()
}

fn echo_pool(python: &str, script: &str) -> String {
    format!(
        r#"
[[pool]]
name = "shop"
warm_min = 0

[[pool]]
name = "t"
command = ["{python}", "{script}"]
warm_min = 2
workers_max = 2
timeout = "5s"

[[process]]
name = "echo"
pool = "t"
inputs = ["x"]
idempotent = true

[[process]]
name = "sleep"
pool = "t"
inputs = ["sleep_ms"]
idempotent = true
"#
    )
}

/// A daemon whose socket is open to all at the file level and allows only a group made for
/// the test; `None` (having said why) without root, python3 or `groupadd`.
fn daemon_allowing_a_new_group() -> Option<(TempGroup, Daemon)> {
    if !preconditions() {
        return None;
    }
    let Some(group) = TempGroup::create() else {
        println!("SKIPPED: cannot create a group with groupadd");
        return None;
    };
    let mut d = Daemon::start("");
    restart_with_drop_in(&mut d, &format!("allowed_groups = [\"{}\"]", group.name));
    Some((group, d))
}

#[test]
fn only_allowed_groups_are_served_and_others_are_told_forbidden() {
    let Some((group, d)) = daemon_allowing_a_new_group() else {
        return;
    };

    let ping = json!({"id": 1, "op": "ping"});
    let outsider = call_as(NOBODY, NOBODY, &d, &[ping.clone(), ping.clone()]);
    assert_eq!(outsider[0]["ok"], json!(false), "{outsider:?}");
    assert_eq!(
        outsider[0]["error"]["code"],
        json!("forbidden"),
        "{outsider:?}"
    );
    assert_eq!(
        outsider[1],
        Value::Null,
        "the connection should be closed after forbidden"
    );

    let member = call_as(NOBODY, group.gid, &d, &[ping.clone(), ping]);
    assert_eq!(member[0]["ok"], json!(true), "{member:?}");
    assert_eq!(member[0]["id"], json!(1), "{member:?}");
    assert_eq!(member[1]["ok"], json!(true), "{member:?}");

    // Root is always served.
    assert_eq!(d.call(json!({"op": "ping"}))["ok"], json!(true));
}

#[test]
fn allowed_groups_are_those_the_client_process_holds_not_those_the_user_database_lists() {
    let Some((group, d)) = daemon_allowing_a_new_group() else {
        return;
    };
    let ping = json!({"id": 1, "op": "ping"});

    // A process given the group (as systemd's SupplementaryGroups= does), though the user
    // database does not list its user as a member, holds it: it is served.
    let holder = call_in_groups(
        NOBODY,
        NOBODY,
        &[group.gid],
        &d,
        std::slice::from_ref(&ping),
    );
    assert_eq!(holder[0]["ok"], json!(true), "{holder:?}");

    // A process of a listed member that dropped the group (a sandboxed one) does not hold it.
    let added = Command::new("gpasswd")
        .args(["-a", "nobody", &group.name])
        .output()
        .is_ok_and(|o| o.status.success());
    if skip_unless(added, "cannot add a member with gpasswd") {
        return;
    }
    let dropped = call_in_groups(NOBODY, NOBODY, &[], &d, &[ping]);
    assert_eq!(
        dropped[0]["error"]["code"],
        json!("forbidden"),
        "{dropped:?}"
    );
}

#[test]
fn allowed_names_that_do_not_exist_let_nobody_in() {
    if !preconditions() {
        return;
    }
    let mut d = Daemon::start("");
    // A list of names none of which exist (a typo, a user since removed) is not an empty list:
    // the socket must not open to everyone.
    restart_with_drop_in(
        &mut d,
        "allowed_users = [\"no-such-precog-user\"]\nallowed_groups = [\"no-such-precog-group\"]",
    );
    let outsider = call_as(NOBODY, NOBODY, &d, &[json!({"id": 1, "op": "ping"})]);
    assert_eq!(
        outsider[0]["error"]["code"],
        json!("forbidden"),
        "{outsider:?}"
    );
    assert!(
        d.log()
            .contains("none of the allowed users and groups exist"),
        "{}",
        d.log()
    );
    assert_eq!(d.call(json!({"op": "ping"}))["ok"], json!(true));
}

#[test]
fn one_users_results_are_never_served_to_another() {
    if !preconditions() {
        return;
    }
    let mut d = Daemon::start(&echo_pool("python3", &worker("echo.py")));
    restart_with_drop_in(&mut d, "allowed_users = [\"nobody\"]");

    let job = json!({"op": "run", "session": "u", "process": "sleep",
        "inputs": {"sleep_ms": 900}});
    let sock = d.socket.clone();
    let first = {
        let job = job.clone();
        std::thread::spawn(move || common::Conn::open(&sock).unwrap().call(&job))
    };
    std::thread::sleep(Duration::from_millis(150));

    // While root's job runs, root joins it and nobody does not.
    let sock = d.socket.clone();
    let same_user = {
        let job = job.clone();
        std::thread::spawn(move || common::Conn::open(&sock).unwrap().call(&job))
    };
    let other_user = call_as(NOBODY, NOBODY, &d, std::slice::from_ref(&job));
    let first = first.join().unwrap();
    let same_user = same_user.join().unwrap();
    assert_eq!(first["ok"], json!(true), "{first}");
    assert_eq!(same_user["served"], json!("inflight"), "{same_user}");
    let other = &other_user[0];
    assert_eq!(other["ok"], json!(true), "{other}\n{}", d.log());
    assert!(
        other["served"] == json!("warm") || other["served"] == json!("cold"),
        "nobody was served root's job: {other}"
    );

    // A finished result of root's is cached for root, and not served to nobody.
    let quick = json!({"op": "run", "session": "u", "process": "echo", "inputs": {"x": 42}});
    assert_eq!(d.call(quick.clone())["served"], json!("warm"));
    let cached = d.call(quick.clone());
    assert_eq!(cached["served"], json!("cache"), "{cached}");
    let theirs = &call_as(NOBODY, NOBODY, &d, &[quick.clone(), quick])[..];
    assert_eq!(theirs[0]["ok"], json!(true), "{theirs:?}");
    assert!(
        theirs[0]["served"] == json!("warm") || theirs[0]["served"] == json!("cold"),
        "nobody was served root's cached result: {theirs:?}"
    );
    assert_eq!(
        theirs[1]["served"],
        json!("cache"),
        "nobody's own result: {theirs:?}"
    );
}

/// The system interpreter (a per-user one, pyenv under /root, is out of another user's reach)
/// and a copy of the echo worker that every user can read and run, whatever the mode of the
/// source tree; the directory goes when the second value is dropped. `None`, said as skipped,
/// without `/usr/bin/python3`.
fn worker_for_any_user() -> Option<(&'static str, tempfile::TempDir, std::path::PathBuf)> {
    let python = "/usr/bin/python3";
    if skip_unless(std::path::Path::new(python).exists(), "no /usr/bin/python3") {
        return None;
    }
    let scripts = tempfile::tempdir().unwrap();
    std::fs::set_permissions(scripts.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = scripts.path().join("echo.py");
    std::fs::copy(worker("echo.py"), &script).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    Some((python, scripts, script))
}

#[test]
fn workers_run_as_the_worker_user_with_no_new_privileges_clean_env_and_only_stdio() {
    if !preconditions() {
        return;
    }
    let Some((python, _scripts, script)) = worker_for_any_user() else {
        return;
    };

    let d = Daemon::start_with(
        "worker_user = \"nobody\"",
        &echo_pool(python, &script.display().to_string()),
    );
    let r = d.call(json!({"op": "run", "session": "w", "process": "echo", "inputs": {"x": 1}}));
    assert_eq!(r["ok"], json!(true), "{r}\n{}", d.log());
    let pid = r["result"]["pid"].as_u64().expect("worker pid") as u32;

    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(field("NoNewPrivs:"), ["1"], "{status}");
    assert!(field("Uid:").iter().all(|u| *u == "65534"), "{status}");
    assert!(field("Gid:").iter().all(|g| *g == "65534"), "{status}");
    assert!(
        field("Groups:").iter().all(|g| *g == "65534"),
        "supplementary groups kept: {status}"
    );
    assert_eq!(field("CapEff:"), ["0000000000000000"], "{status}");

    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let mut names: Vec<String> = environ
        .split(|&b| b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| {
            String::from_utf8_lossy(v)
                .split('=')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["LANG", "PATH"],
        "the worker's environment is not clean"
    );

    let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    assert_eq!(fds, [0, 1, 2], "the worker holds descriptors beyond stdio");
}

#[test]
fn a_socket_group_the_daemon_may_not_give_is_named_and_leaves_no_socket_behind() {
    if skip_unless(is_root(), "needs root to start precogd as nobody") {
        return;
    }
    // An unprivileged trial of a configuration written for root, which sets the socket's group.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let config = dir.path().join("precogd.toml");
    let socket = dir.path().join("precogd.sock");
    std::fs::write(
        &config,
        format!(
            "[daemon]\ncache_dir = \"{0}/cache\"\nstate_dir = \"{0}/state\"\n\
             cgroup_parent = \"{1}\"\nsocket_group = \"root\"\nallowed_groups = []\n",
            dir.path().display(),
            common::cgroup_parent()
        ),
    )
    .unwrap();
    let out = Command::new(common::precogd())
        .arg("--config")
        .arg(&config)
        .args(["--bus", "none", "--socket"])
        .arg(&socket)
        .env_remove("JOURNAL_STREAM")
        .current_dir("/")
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("start precogd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "precogd started: {err}");
    assert!(err.contains("daemon.socket_group"), "{err}");
    assert!(err.contains("member of group `root`"), "{err}");
    assert!(!socket.exists(), "the socket was left behind: {err}");
}

/// The uid a process runs as (its real one), from `/proc`.
fn uid_of(pid: u64) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().next()?.parse().ok()
}

#[test]
fn a_reload_that_sets_the_worker_user_replaces_busy_and_idle_workers() {
    if !preconditions() {
        return;
    }
    let Some((python, _scripts, script)) = worker_for_any_user() else {
        return;
    };

    let d = Daemon::start(&echo_pool(python, &script.display().to_string()));
    // One worker busy, one idle, both root, when the reload names the worker user.
    let mut busy = d.connect();
    busy.send(&json!({"op": "run", "session": "w", "process": "sleep",
        "inputs": {"sleep_ms": 1000}}));
    std::thread::sleep(Duration::from_millis(200));
    let text = std::fs::read_to_string(&d.config).unwrap();
    let [before, after] =
        ["", "worker_user = \"nobody\"\n"].map(|user| format!("allowed_groups = []\n{user}"));
    d.reload_applied(&text.replace(&before, &after));
    let r = busy.recv();
    assert_eq!(r["ok"], json!(true), "{r}");
    let old = r["result"]["pid"].as_u64().unwrap();

    let all_nobody = || {
        let workers = d.workers();
        !workers.is_empty()
            && workers
                .iter()
                .all(|&pid| uid_of(pid.into()).is_none_or(|u| u == NOBODY))
    };
    assert!(
        common::wait_until(Duration::from_secs(20), all_nobody),
        "workers still root: {:?}\n{}",
        d.workers(),
        d.log()
    );
    assert_eq!(uid_of(old), None, "the busy worker stayed after its job");
    let r = d.call(json!({"op": "run", "session": "w", "process": "echo", "inputs": {"x": 2}}));
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(uid_of(r["result"]["pid"].as_u64().unwrap()), Some(NOBODY));
}
