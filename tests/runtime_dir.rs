//! Black-box: an unprivileged precogd without `XDG_RUNTIME_DIR` puts its socket under
//! `$TMPDIR/precog-<uid>`, a directory it makes private; one another user made first (or a link
//! by that name) stops the start, since its owner could capture the socket; precogctl will not
//! talk to a socket in such a directory either.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{is_root, precogd, skip_unless};

const NOBODY: u32 = 65534;

/// A shared temporary directory like /tmp (sticky, open to all), with nobody's home and a
/// configuration nobody can read.
fn shared_tmp() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
    let config = tmp.path().join("precogd.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\ncgroup_parent = \"{}\"\nallowed_groups = []\n\
             [[pool]]\nname = \"shop\"\nwarm_min = 0\n",
            common::cgroup_parent()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    (tmp, config)
}

/// `program` as nobody, with `tmp` as its temporary directory and no XDG directories.
fn as_nobody(program: &str, tmp: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    cmd.env("TMPDIR", tmp)
        .env("HOME", tmp.join("home"))
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("XDG_STATE_HOME")
        .env_remove("PRECOG_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .current_dir("/")
        .uid(NOBODY)
        .gid(NOBODY);
    cmd
}

/// precogd as nobody, with `tmp` as its temporary directory and no XDG directories.
fn precogd_as_nobody(tmp: &Path, config: &Path) -> Command {
    let mut cmd = as_nobody(precogd(), tmp);
    cmd.arg("--config").arg(config).args(["--bus", "none"]);
    cmd
}

/// `precogctl ping` as nobody on `socket`: whether it succeeded, and what it printed.
fn ping_as_nobody(tmp: &Path, socket: &Path) -> (bool, String) {
    let out = as_nobody(env!("CARGO_BIN_EXE_precogctl"), tmp)
        .arg("--socket")
        .arg(socket)
        .arg("ping")
        .output()
        .expect("run precogctl");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Starts precogd as nobody, which must refuse to start; its stderr. One that is still running
/// after 20 s started: it is stopped and the test fails.
fn refused_start(tmp: &Path, config: &Path) -> String {
    use std::io::Read;
    let mut child = precogd_as_nobody(tmp, config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start precogd");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for precogd") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    assert!(
        status.is_some_and(|s| !s.success()),
        "precogd started: {err}"
    );
    err
}

fn preconditions() -> bool {
    !skip_unless(is_root(), "needs root to start precogd as nobody")
}

#[test]
fn a_runtime_directory_another_user_made_first_stops_the_start() {
    if !preconditions() {
        return;
    }
    let (tmp, config) = shared_tmp();
    let dir = tmp.path().join(format!("precog-{NOBODY}"));
    // Made by root, open to all: root could swap the socket nobody's daemon makes there.
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = refused_start(tmp.path(), &config);
    assert!(err.contains("belongs to uid 0"), "{err}");
    assert!(err.contains("XDG_RUNTIME_DIR"), "{err}");
    assert!(
        !dir.join("precog").exists(),
        "precogd made its socket directory in it"
    );

    // A link by that name, to a directory nobody owns, is refused too.
    std::fs::remove_dir(&dir).unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::chown(&elsewhere, Some(NOBODY), Some(NOBODY)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
    let err = refused_start(tmp.path(), &config);
    assert!(err.contains("is not a directory"), "{err}");
    assert!(
        !elsewhere.join("precog").exists(),
        "precogd followed the link"
    );

    // nobody's own directory, but the `precog/` inside it a link to root's, put there while
    // it was open to all.
    std::fs::remove_file(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let roots = tmp.path().join("roots");
    std::fs::create_dir(&roots).unwrap();
    std::fs::set_permissions(&roots, std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::symlink(&roots, dir.join("precog")).unwrap();
    let err = refused_start(tmp.path(), &config);
    assert!(
        err.contains("precog-65534/precog is not a directory"),
        "{err}"
    );
    assert!(
        !roots.join("precogd.sock").exists(),
        "precogd made its socket through the link"
    );
}

#[test]
fn precogctl_does_not_talk_to_a_socket_in_a_runtime_directory_another_user_made() {
    if !preconditions() {
        return;
    }
    let (tmp, _config) = shared_tmp();
    let dir = tmp.path().join(format!("precog-{NOBODY}"));
    std::fs::create_dir_all(dir.join("precog")).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.join("precog/precogd.sock");
    let reached = stand_in(&socket);

    let (ok, text) = ping_as_nobody(tmp.path(), &socket);
    assert!(!ok, "precogctl used the socket: {text}");
    assert!(text.contains("belongs to uid 0"), "{text}");
    assert!(text.contains("XDG_RUNTIME_DIR"), "{text}");
    assert!(
        !reached.load(std::sync::atomic::Ordering::SeqCst),
        "precogctl connected to the stand-in"
    );
}

#[test]
fn the_runtime_directory_is_made_private_and_serves_the_socket() {
    if !preconditions() {
        return;
    }
    let (tmp, config) = shared_tmp();
    let mut child = precogd_as_nobody(tmp.path(), &config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start precogd");
    let dir = tmp.path().join(format!("precog-{NOBODY}"));
    let socket = dir.join("precog/precogd.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    let answered = loop {
        if let Ok(mut conn) = common::Conn::open(&socket) {
            break conn.call(&serde_json::json!({"op": "ping"}));
        }
        assert!(
            Instant::now() < deadline,
            "no socket at {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let meta = std::fs::symlink_metadata(&dir).unwrap();
    let pinged = ping_as_nobody(tmp.path(), &socket);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    assert_eq!(answered["ok"], serde_json::json!(true), "{answered}");
    assert_eq!(meta.uid(), NOBODY);
    assert_eq!(meta.mode() & 0o777, 0o700);
    assert!(pinged.0, "precogctl ping as nobody: {}", pinged.1);
}

/// Root's stand-in for precogd at `socket`, open to all; tells whether anyone connected.
fn stand_in(socket: &Path) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = reached.clone();
    std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        for conn in listener.incoming().flatten() {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            let mut line = String::new();
            let _ = std::io::BufReader::new(&conn).read_line(&mut line);
            let _ = (&conn).write_all(b"{\"ok\":true,\"version\":1}\n");
        }
    });
    reached
}

#[test]
fn precogctl_does_not_talk_to_another_users_server_inside_its_own_runtime_directory() {
    if !preconditions() {
        return;
    }
    let (tmp, _config) = shared_tmp();
    let dir = tmp.path().join(format!("precog-{NOBODY}"));
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    // nobody's own directory, but the `precog` directory in it is root's.
    std::fs::create_dir(dir.join("precog")).unwrap();
    let socket = dir.join("precog/precogd.sock");
    let reached = stand_in(&socket);
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let roundabout = other
        .join("..")
        .join(format!("precog-{NOBODY}/precog/precogd.sock"));
    for path in [socket.clone(), roundabout] {
        let (ok, text) = ping_as_nobody(tmp.path(), &path);
        assert!(!ok, "precogctl used {}: {text}", path.display());
        assert!(text.contains("served by uid 0"), "{text}");
    }
    // Reached and refused: the check is on who answers, not on the path alone.
    assert!(reached.load(std::sync::atomic::Ordering::SeqCst));
}
