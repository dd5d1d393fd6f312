//! Black-box: `precogctl` against a real precogd on a private socket. A socket named by
//! `PRECOG_SOCKET` keeps the D-Bus commands off the system bus as `--socket` does; `pools` over
//! the socket shows the limits the stats carry and tells workers' error answers from lost
//! workers; a user the socket refuses is told which group to join.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Daemon, is_root, skip_unless, wait_until};
use serde_json::{Value, json};

/// A bus address where no bus listens.
const NO_BUS: &str = "unix:path=/nonexistent/precog-test-system-bus";

/// precogctl with nothing inherited that would choose a daemon or a bus for it.
fn precogctl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_precogctl"));
    c.env_remove("PRECOG_SOCKET")
        .env_remove("PRECOG_BUS")
        .env("DBUS_SYSTEM_BUS_ADDRESS", NO_BUS)
        .env("DBUS_SESSION_BUS_ADDRESS", NO_BUS);
    c
}

fn output(c: &mut Command) -> (bool, String, String) {
    let out = c.output().expect("precogctl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_socket_from_the_environment_keeps_the_commands_off_the_system_bus() {
    let daemon = Daemon::start("");
    let with_env =
        |args: &[&str]| output(precogctl().env("PRECOG_SOCKET", &daemon.socket).args(args));

    let (ok, out, err) = with_env(&["status"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("precogd "), "{out}");
    assert!(!err.contains("bus"), "status went to a bus: {err}");
    // Nothing counted yet reads as such, not as 0.0%.
    assert!(
        out.contains("hit ratio - (no run served yet)")
            && out.contains("speculation precision - (no guess judged yet)"),
        "{out}"
    );
    let run = ["run", "validate_postal_code", "--session", "s"];
    let (ok, _, err) = with_env(&[&run[..], &["country=DE", "postal_code=\"10115\""]].concat());
    assert!(ok, "{err}");
    let (_, out, _) = with_env(&["status"]);
    assert!(out.contains("hit ratio 0.0%"), "{out}");
    let (ok, out, err) = with_env(&["pools"]);
    assert!(ok, "{err}");
    assert!(out.contains("\nshop "), "{out}");
    assert!(!err.contains("bus"), "pools went to a bus: {err}");

    // A change speaks D-Bus only: it asks for the bus rather than reaching the system one.
    let (ok, _, err) = with_env(&["reload"]);
    assert!(!ok);
    assert!(err.contains("give --bus"), "{err}");
    assert!(!err.contains("cannot connect to the system bus"), "{err}");
    // A reload has the signal too, sent to the daemon behind the socket.
    let hup = format!("kill -HUP {}", daemon.pid());
    assert!(err.contains(&hup), "{err}");
    let (ok, _, err) = output(
        precogctl()
            .arg("--socket")
            .arg(&daemon.socket)
            .arg("reload"),
    );
    assert!(!ok && err.contains(&hup), "{err}");

    // Without a socket named, the default stays the system bus.
    let (ok, _, err) = output(precogctl().arg("reload"));
    assert!(!ok);
    assert!(err.contains("system bus"), "{err}");
}

/// The cells of `pools`' row for `pool`, split where two or more spaces separate them.
fn pool_cells(table: &str, pool: &str) -> Vec<String> {
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("{pool} ")))
        .unwrap_or_else(|| panic!("no row for {pool}: {table}"));
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn pools_over_the_socket_show_the_limits_and_tell_error_answers_from_lost_workers() {
    // The built-in shop pool (150% CPU, 256M, two warm), its worker without a catalogue: a
    // catalogue process is answered with the worker's own error.
    let catalog = "/nonexistent/precog-test-catalog.sqlite";
    let daemon = Daemon::start(&format!(
        "[[pool]]\nname = \"shop\"\ncommand = [\"precog-shop-worker\", \"--catalog\", \
         \"{catalog}\"]\n"
    ));
    let reply = daemon.call(
        json!({"op": "run", "session": "s", "process": "check_inventory",
        "inputs": {"sku": "1"}}),
    );
    assert_eq!(reply["error"]["reason"], "job_error", "{reply}");
    assert_eq!(
        reply["error"]["worker_code"], "catalogue_unavailable",
        "{reply}"
    );

    let (ok, table, err) = output(precogctl().arg("--socket").arg(&daemon.socket).arg("pools"));
    assert!(ok, "{err}");
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.contains("FAILED") && header.contains("LOST"),
        "{table}"
    );
    let cells = pool_cells(&table, "shop");
    let stats = daemon.call(json!({"op": "stats"}));
    let enforced = stats["pools"]["shop"]["cgroup"]["limits"].is_object();
    assert_eq!(stats["pools"]["shop"]["job_errors"], json!(1), "{stats}");
    assert_eq!(stats["pools"]["shop"]["timeout_ms"], json!(2000), "{stats}");
    let mark = if enforced { "" } else { "*" };
    // POOL WORKERS BUSY WARM MAX CPU MEMORY TIMEOUT FAILED LOST
    assert_eq!(cells.len(), 10, "{table}");
    assert_eq!(cells[3], "2", "WARM: {table}");
    assert_eq!(cells[4], "8", "MAX: {table}");
    assert_eq!(cells[5], format!("150%{mark}"), "CPU: {table}");
    assert_eq!(cells[6], format!("256M{mark}"), "MEMORY: {table}");
    assert_eq!(cells[7], "2s", "TIMEOUT: {table}");
    assert_eq!(cells[8], "1", "FAILED: {table}");
    assert_eq!(cells[9], "0", "LOST counts no error answer: {table}");
    if !enforced {
        assert!(table.contains("not enforced"), "{table}");
    }

    // A worker killed is lost, and counted so; the failed jobs stay as they were.
    let victim = daemon.workers();
    assert!(!victim.is_empty());
    for pid in &victim {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let lost = wait_until(Duration::from_secs(30), || {
        let s = daemon.call(json!({"op": "stats"}));
        s["pools"]["shop"]["crashes"].as_u64().unwrap_or(0) >= victim.len() as u64
    });
    assert!(lost, "the killed workers were never counted");
    let (_, table, _) = output(precogctl().arg("--socket").arg(&daemon.socket).arg("pools"));
    let cells = pool_cells(&table, "shop");
    assert_eq!(cells[8], "1", "FAILED: {table}");
    let lost: u64 = cells[9].parse().unwrap_or_else(|_| panic!("LOST: {table}"));
    assert!(lost >= victim.len() as u64, "LOST: {table}");
}

/// `precogctl --socket SOCKET ping` as user and group nobody, with no other groups.
fn ping_as_nobody(socket: &std::path::Path) -> (bool, String, String) {
    output(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_precogctl"))
            .arg("--socket")
            .arg(socket)
            .arg("ping")
            .env_remove("PRECOG_SOCKET"),
    )
}

#[test]
fn a_user_the_socket_refuses_is_told_which_group_to_join() {
    let setpriv = Path::new("/usr/bin/setpriv").exists();
    if skip_unless(
        is_root() && setpriv,
        "needs root and setpriv to act as another user",
    ) {
        return;
    }
    let daemon = Daemon::start("");
    // The directory lets anyone through; the socket (0660, group root) does not.
    std::fs::set_permissions(daemon.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let (ok, _, err) = ping_as_nobody(&daemon.socket);
    assert!(!ok);
    assert!(err.contains("group `root`"), "{err}");
    // Joining root's group is no advice to give: the socket's group is what to change.
    assert!(!err.contains("usermod"), "{err}");
    assert!(err.contains("socket_group"), "{err}");
    assert!(!err.contains("is it running"), "{err}");

    // A socket of another group: the user is told to join it.
    let daemon_group = nix::unistd::Group::from_name("daemon").ok().flatten();
    if let Some(group) = daemon_group {
        nix::unistd::chown(&daemon.socket, None, Some(group.gid)).expect("chgrp");
        let (ok, _, err) = ping_as_nobody(&daemon.socket);
        assert!(!ok);
        assert!(err.contains("usermod -aG daemon nobody"), "{err}");
    }

    // A directory on the way that does not let the user through is said to be the cause.
    std::fs::set_permissions(daemon.dir.path(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    let (ok, _, err) = ping_as_nobody(&daemon.socket);
    assert!(!ok);
    assert!(err.contains("directory on the way"), "{err}");
    let reply: Value = daemon.call(json!({"op": "ping"}));
    assert_eq!(reply["ok"], true);
}

#[test]
fn a_path_that_is_no_socket_is_called_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("precogd.toml");
    std::fs::write(&file, "").expect("write");
    let (ok, _, err) = output(precogctl().arg("--socket").arg(&file).arg("ping"));
    assert!(!ok);
    assert!(err.contains("that is not a socket"), "{err}");
    assert!(!err.contains("is it running"), "{err}");

    // Nothing at the path: the daemon may not be running.
    let (ok, _, err) = output(
        precogctl()
            .arg("--socket")
            .arg(dir.path().join("none.sock"))
            .arg("ping"),
    );
    assert!(!ok);
    assert!(err.contains("is it running"), "{err}");
}
