//! Black-box: a start that cannot complete leaves nothing behind, and signals that arrive while
//! precogd starts do what they do once it runs.

mod common;

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;

use common::{is_root, precogd, skip_unless};

/// A configuration on private directories under `dir`, with `daemon_keys` in `[daemon]`.
fn write_config(dir: &Path, parent: &str, daemon_keys: &str) -> std::path::PathBuf {
    let config = dir.join("precogd.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\ncache_dir = \"{0}/cache\"\nstate_dir = \"{0}/state\"\n\
             cgroup_parent = \"{parent}\"\nsocket_group = \"root\"\nallowed_groups = []\n\
             {daemon_keys}\n",
            dir.display()
        ),
    )
    .expect("write config");
    config
}

/// precogd on `config` and `socket`, without the bus, logging at `info` to its stderr.
fn precogd_on(config: &Path, socket: &Path) -> Command {
    let mut cmd = Command::new(precogd());
    cmd.arg("--config")
        .arg(config)
        .args(["--bus", "none", "--socket"])
        .arg(socket)
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM");
    cmd
}

/// The directories named `parent` in any cgroup hierarchy, with what they hold.
fn cgroup_dirs(parent: &str) -> Vec<String> {
    let mut found = Vec::new();
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = h.path().join(parent);
        if dir.is_dir() {
            let pools: Vec<String> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            found.push(format!("{} {pools:?}", dir.display()));
        }
    }
    found
}

/// Removes what a start left of its own cgroup parent: empty directories, deepest first.
fn remove_cgroup_parent(parent: &str) {
    fn remove_tree(dir: &Path) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                remove_tree(&e.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        remove_tree(&h.path().join(parent));
    }
}

#[test]
fn a_metrics_address_in_use_stops_the_start_before_any_cgroup_or_worker() {
    if skip_unless(is_root(), "needs root to create cgroups")
        || skip_unless(
            Path::new("/sys/fs/cgroup/cpu/cgroup.procs").exists()
                || Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
            "no cgroup filesystem",
        )
    {
        return;
    }
    // Another process (another precogd, say) holds the address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let parent = common::cgroup_parent();
    let config = write_config(
        dir.path(),
        &parent,
        &format!("metrics_listen = \"127.0.0.1:{port}\""),
    );
    let socket = dir.path().join("precogd.sock");
    let out = precogd_on(&config, &socket).output().expect("run precogd");
    let err = String::from_utf8_lossy(&out.stderr);
    let left = cgroup_dirs(&parent);
    remove_cgroup_parent(&parent);
    assert!(!out.status.success(), "precogd started: {err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(left.is_empty(), "cgroups left behind: {left:?}\n{err}");
    assert!(!err.contains("precogd ready"), "{err}");
    assert!(!socket.exists(), "the socket was left behind");
}

/// The FIFO at `path` opened for writing, once a reader has it open; `None` after `limit`.
fn fifo_writer(path: &Path, limit: std::time::Duration) -> Option<std::fs::File> {
    let mut writer = None;
    common::wait_until(limit, || {
        // Without a reader, a non-blocking open for writing fails (ENXIO).
        writer = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .ok();
        writer.is_some()
    });
    writer
}

/// Writes `text` into the FIFO at `path` for the next reader, once one opens it; gives up
/// (false) after `limit`.
fn feed_fifo(path: &Path, text: &str, limit: std::time::Duration) -> bool {
    use std::io::Write;
    fifo_writer(path, limit).is_some_and(|mut w| w.write_all(text.as_bytes()).is_ok())
}

#[test]
fn a_sighup_while_precogd_reads_its_configuration_is_a_reload_not_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &common::cgroup_parent(), "");
    // A drop-in that is a FIFO holds precogd inside its start, reading its configuration, until
    // the test writes it.
    let dropins = dir.path().join("precogd.toml.d");
    std::fs::create_dir(&dropins).unwrap();
    let fifo = dropins.join("hold.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let socket = dir.path().join("precogd.sock");
    let log_path = dir.path().join("precogd.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = precogd_on(&config, &socket)
        .stderr(log)
        .spawn()
        .expect("start precogd");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let limit = std::time::Duration::from_secs(20);

    // Once the FIFO has a reader, precogd is reading its configuration.
    let writer = fifo_writer(&fifo, limit);
    assert!(writer.is_some(), "precogd never read its configuration");
    let holds_fifo = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == fifo))
    };
    common::wait_until(limit, holds_fifo);
    for _ in 0..3 {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    }
    drop(writer);

    // The first reading is over once precogd no longer holds the FIFO; the reload asked for
    // reads it again, holding up the daemon until it is written.
    common::wait_until(limit, || !holds_fifo());
    if let Ok(Some(status)) = child.try_wait() {
        panic!(
            "a SIGHUP ended precogd as it started ({status}):\n{}",
            log_text()
        );
    }
    let fed = feed_fifo(&fifo, "# again\n", limit);
    let reloaded =
        fed && common::wait_until(limit, || log_text().contains("configuration reloaded"));
    let serving = common::Conn::open(&socket)
        .ok()
        .and_then(|mut c| c.try_call(&serde_json::json!({"op": "ping"})))
        .is_some_and(|r| r["ok"] == serde_json::json!(true));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let stopped = common::wait_until(limit, || child.try_wait().ok().flatten().is_some());
    if !stopped {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    assert!(
        reloaded && serving,
        "no reload, or not serving:\n{}",
        log_text()
    );
    assert!(status.success(), "{status}:\n{}", log_text());
}

/// A reload whose configuration blocks on reading (a drop-in that is a FIFO here, a hung network
/// mount in life) holds up neither the requests nor a stop: precogd reads its files aside.
#[test]
fn a_reload_stuck_reading_its_configuration_keeps_serving_and_can_be_stopped() {
    let mut d = common::Daemon::start("");
    let dropins = Path::new(&format!("{}.d", d.config.display())).to_path_buf();
    std::fs::create_dir_all(&dropins).unwrap();
    let fifo = dropins.join("hold.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let pid = nix::unistd::Pid::from_raw(d.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();

    // Once a writer can open the FIFO, precogd is reading it; with the writer held open and
    // silent, the read never ends.
    let writer = fifo_writer(&fifo, std::time::Duration::from_secs(20));
    assert!(
        writer.is_some(),
        "the reload never read the drop-in:\n{}",
        d.log()
    );

    let ask = |req: serde_json::Value| {
        common::Conn::open(&d.socket)
            .ok()
            .and_then(|mut c| c.try_call(&req))
    };
    let ping = ask(serde_json::json!({"op": "ping"}));
    assert!(
        ping.as_ref()
            .is_some_and(|r| r["ok"] == serde_json::json!(true)),
        "{ping:?}"
    );
    let run = ask(serde_json::json!({"op": "run", "session": "s",
        "process": "validate_postal_code", "inputs": {"country": "DE", "postal_code": "10115"}}));
    assert!(
        run.as_ref()
            .is_some_and(|r| r["ok"] == serde_json::json!(true)),
        "{run:?}"
    );
    assert!(d.stop(), "precogd did not stop cleanly:\n{}", d.log());
    drop(writer);
}
