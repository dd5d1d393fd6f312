//! `precogd --check-config` on files with errors and with findings only this host can tell:
//! what is refused and where, and what is only noted.

mod common;

use common::check_config;

/// `precogd --check-config` on file `name`, started in `dir`, where relative paths are read.
fn check_config_from(dir: &std::path::Path, name: &str) -> std::process::Output {
    std::process::Command::new(common::precogd())
        .current_dir(dir)
        .args(["--config", name, "--check-config"])
        .output()
        .expect("run precogd --check-config")
}

#[test]
fn check_config_reports_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[daemon]\nqueue_max = \"many\"\n").unwrap();
    let out = check_config(&path);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:2: daemon.queue_max"), "{err}");

    // A worker that cannot be found would be refused at start and at reload: so here too.
    std::fs::write(
        &path,
        "[[pool]]\nname = \"gone\"\ncommand = [\"no-such-precog-worker\"]\n",
    )
    .unwrap();
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:3: pool.gone.command") && err.contains("no-such-precog-worker"),
        "{err}"
    );

    // Watched files are named by their full path: workers start in `/`.
    std::fs::write(
        &path,
        "[[pool]]\nname = \"w\"\ncommand = [\"/bin/cat\"]\nwatch = [\"worker.py\"]\n",
    )
    .unwrap();
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:4: pool.w.watch") && err.contains("`worker.py` is a relative path"),
        "{err}"
    );
    // One that is not there is only noted.
    std::fs::write(
        &path,
        "[[pool]]\nname = \"w\"\ncommand = [\"/bin/cat\"]\nwarm_min = 0\n\
         watch = [\"/nonexistent/precog-watched.py\"]\n",
    )
    .unwrap();
    let out = check_config(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("bad.toml:5: pool.w.watch")
            && err.contains("`/nonexistent/precog-watched.py` is not there"),
        "{err}"
    );

    // So is a path that does not exist, or names a file no one may execute.
    let plain = dir.path().join("worker.py");
    std::fs::write(&plain, "print('hi')\n").unwrap();
    for (command, why) in [
        ("/nonexistent/precog-worker".to_string(), "does not exist"),
        (plain.display().to_string(), "is not executable"),
        (dir.path().display().to_string(), "is not a file"),
    ] {
        let text = format!("[[pool]]\nname = \"gone\"\ncommand = [\"{command}\"]\n");
        std::fs::write(&path, text).unwrap();
        let out = check_config(&path);
        assert_eq!(out.status.code(), Some(2), "{command} passed");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("bad.toml:3: pool.gone.command")
                && err.contains(&command)
                && err.contains(why),
            "{err}"
        );
    }

    // A pool written as one table rather than an entry of the list says how to write it.
    std::fs::write(
        &path,
        "[daemon]\nqueue_max = 8\n\n[pool]\nname = \"m\"\ncommand = [\"/bin/cat\"]\n",
    )
    .unwrap();
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:4: pool: `[pool]` makes one table") && err.contains("[[pool]]"),
        "{err}"
    );

    std::fs::write(&path, "[sessions]\nmax = 10\n").unwrap();
    let out = check_config(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_notes_what_a_start_goes_on_with() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.toml");
    let text = "[daemon]\nsocket_group = \"no-such-precog-group\"\n\
                allowed_users = [\"no-such-precog-user\"]\nallowed_groups = []\n";
    std::fs::write(&path, text).unwrap();
    let out = check_config(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    // precogd starts with them (and warns), so they are notes, not errors.
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("access.toml:2: daemon.socket_group: group `no-such-precog-group`"),
        "{err}"
    );
    assert!(
        err.contains(
            "access.toml:3: daemon.allowed_users: user `no-such-precog-user` does not exist: \
             only root and precogd's own user may use the socket"
        ),
        "{err}"
    );

    // A pool no process runs in keeps warm workers for nothing.
    let text = "[[pool]]\nname = \"idle\"\ncommand = [\"sh\"]\nwarm_min = 2\n";
    std::fs::write(&path, text).unwrap();
    let out = check_config(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("access.toml:4: pool.idle.warm_min: no process runs in pool `idle`"),
        "{err}"
    );

    // Reservations beyond the memory budget: kept, but nothing is left to share.
    let text = "[budget]\nmemory = \"32M\"\n";
    std::fs::write(&path, text).unwrap();
    let out = check_config(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(
            "access.toml:2: budget.memory: the pools' memory_reserve add up to 64M (`shop` 64M)"
        ),
        "{err}"
    );

    // A worker's script named relative to where precogd was started: workers start in `/`.
    std::fs::write(dir.path().join("my-worker.py"), "print()\n").unwrap();
    let text = "[[pool]]\nname = \"mine\"\ncommand = [\"sh\", \"my-worker.py\"]\nwarm_min = 0\n";
    std::fs::write(&path, text).unwrap();
    let out = check_config_from(dir.path(), "access.toml");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(
            "access.toml:3: pool.mine.command: `my-worker.py` is a file here, but workers start \
             in `/`, where it is `/my-worker.py`: write its absolute path"
        ),
        "{err}"
    );

    // A bare word is an option's value, even when a file of that name is here.
    std::fs::write(dir.path().join("fast"), "").unwrap();
    let text = "[[pool]]\nname = \"mine\"\ncommand = [\"/bin/sh\", \"--mode\", \"fast\"]\n\
                warm_min = 0\n";
    std::fs::write(&path, text).unwrap();
    let out = check_config_from(dir.path(), "access.toml");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("is a file here"), "{err}");

    // Beside a user who exists, a missing one is only named.
    let text = "[daemon]\nallowed_users = [\"root\", \"no-such-precog-user\"]\n\
                allowed_groups = []\n";
    std::fs::write(&path, text).unwrap();
    let err = String::from_utf8_lossy(&check_config(&path).stderr).into_owned();
    assert!(
        err.contains("user `no-such-precog-user` does not exist\n"),
        "{err}"
    );
}
