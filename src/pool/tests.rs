//! Tests of the pool's own logic that need no worker process.

use super::*;

/// Settings for a pool of `/bin/cat` workers, for tests to change what they need.
pub(super) fn settings() -> PoolSettings {
    PoolSettings {
        name: "p".into(),
        program: PathBuf::from("/bin/cat"),
        args: Vec::new(),
        cpus: None,
        timeout: Duration::from_secs(1),
        start_timeout: Duration::from_secs(1),
        warm_min: 1,
        workers_max: 2,
        queue_max: 8,
        identity: None,
        watch: None,
        code_parts: Vec::new(),
        code: 0,
    }
}

#[test]
fn a_new_worker_user_replaces_the_workers_and_a_new_size_does_not() {
    let old = settings();
    let user = PoolSettings {
        identity: Some(WorkerIdentity {
            uid: 65534,
            gid: 65534,
        }),
        ..settings()
    };
    assert!(needs_new_workers(&old, &user));
    assert!(needs_new_workers(&user, &old));
    let resized = PoolSettings {
        workers_max: 5,
        timeout: Duration::from_secs(3),
        ..settings()
    };
    assert!(!needs_new_workers(&old, &resized));
    let moved = PoolSettings {
        cpus: Some(vec![0]),
        ..settings()
    };
    assert!(needs_new_workers(&old, &moved));
    let rebuilt = PoolSettings {
        code: 1,
        ..settings()
    };
    assert!(needs_new_workers(&old, &rebuilt));
}

#[test]
fn bare_names_resolve_beside_the_binary_or_in_path() {
    assert!(resolve_command("sh").is_ok());
    assert!(matches!(
        resolve_command("precog-no-such-worker"),
        Err(PoolError::NoExecutable(_))
    ));
}

#[test]
fn a_path_must_name_an_executable_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("worker.py");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let why = |p: &std::path::Path| match resolve_command(&p.display().to_string()) {
        Err(PoolError::NotExecutable { why, .. }) => why,
        other => panic!("{}: {other:?}", p.display()),
    };
    assert!(why(&script).contains("not executable"));
    assert!(why(dir.path()).contains("not a file"));
    assert!(why(&dir.path().join("gone")).contains("does not exist"));
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(resolve_command(script.to_str().unwrap()).unwrap(), script);
}

#[test]
fn a_relative_path_is_refused_since_workers_start_in_the_root() {
    // An executable file relative to the tests' directory, which precogd's own directory may be.
    let relative = "tests/workers/echo.py";
    assert!(std::path::Path::new(relative).is_file());
    match resolve_command(relative) {
        Err(e @ PoolError::NotExecutable { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("relative path"), "{msg}");
            assert!(msg.contains("full path"), "{msg}");
        }
        other => panic!("{relative}: {other:?}"),
    }
    let absolute = std::fs::canonicalize(relative).unwrap();
    assert_eq!(
        resolve_command(absolute.to_str().unwrap()).unwrap(),
        absolute
    );
}

#[test]
fn an_outcome_is_reported_once_and_a_dropped_job_says_its_pool_stopped() {
    let (tx, rx) = std::sync::mpsc::channel();
    let report = |tx: std::sync::mpsc::Sender<JobOutcome>| {
        Deliver::new(move |o| {
            let _ = tx.send(o);
        })
    };
    report(tx.clone()).send(JobOutcome::failed(FailureKind::Timeout, "slow"));
    drop(report(tx));
    let kinds: Vec<FailureKind> = rx
        .iter()
        .map(|o| o.result.expect_err("failures only").kind)
        .collect();
    assert_eq!(kinds, [FailureKind::Timeout, FailureKind::ShuttingDown]);
}

#[test]
fn idle_workers_above_workers_max_retire_at_once_and_the_rest_after_the_keep_alive() {
    let mut st = State {
        target_warm: 1,
        ..State::default()
    };
    for id in 1..=4 {
        st.workers.insert(id, WorkerSlot::default());
    }
    // workers_max lowered to 3 under 4 workers: one goes without waiting for the keep-alive.
    assert!(worker::should_retire(&st, 3, false));
    st.workers.get_mut(&1).unwrap().retiring = true;
    assert!(!worker::should_retire(&st, 3, false));
    // Above the warm target, the others wait for the keep-alive.
    assert!(worker::should_retire(&st, 3, true));
    // Lowered to 1: the workers leaving are not counted, so exactly one stays.
    for id in 2..=3 {
        assert!(worker::should_retire(&st, 1, false), "worker {id}");
        st.workers.get_mut(&id).unwrap().retiring = true;
    }
    assert!(!worker::should_retire(&st, 1, false));
    assert!(!worker::should_retire(&st, 1, true));
}
