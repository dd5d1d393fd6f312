//! Black-box: a start that cannot complete leaves nothing behind.

mod common;

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
    let out = Command::new(precogd())
        .arg("--config")
        .arg(&config)
        .args(["--bus", "none", "--socket"])
        .arg(&socket)
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .output()
        .expect("run precogd");
    let err = String::from_utf8_lossy(&out.stderr);
    let left = cgroup_dirs(&parent);
    remove_cgroup_parent(&parent);
    assert!(!out.status.success(), "precogd started: {err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(left.is_empty(), "cgroups left behind: {left:?}\n{err}");
    assert!(!err.contains("precogd ready"), "{err}");
    assert!(!socket.exists(), "the socket was left behind");
}
