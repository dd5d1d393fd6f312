//! What a pool's workers run, as a stamp of files on disk: the worker program and, when the
//! command's first argument is an absolute path, that file (the script an interpreter runs), or
//! the files the pool's `watch` names instead. A worker keeps the code it started with until it
//! exits, so a stamp that changes means the pool needs new workers, and results the old code
//! computed must not answer for the new.
//!
//! Only the first argument counts by default: later ones are as often data (the shop worker's
//! `--catalog` database, which `reserve_stock` writes to), and a worker restarted on every write
//! to its data would never stay warm.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{PoolSettings, Shared};

/// How often a pool looks at its workers' files.
const LOOK_EVERY: Duration = Duration::from_secs(1);

impl PoolSettings {
    /// The files whose contents decide what the workers compute: the program, then the `watch`
    /// list, or without one the first argument when it is an absolute path that is not a
    /// directory.
    pub fn code_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.program.clone()];
        match &self.watch {
            Some(list) => files.extend(list.iter().cloned()),
            None => files.extend(
                self.args
                    .first()
                    .map(PathBuf::from)
                    .filter(|first| first.is_absolute() && !first.is_dir()),
            ),
        }
        files
    }

    /// [`stamp`] of [`PoolSettings::code_files`].
    pub fn code_stamp(&self) -> Option<u64> {
        stamp(&self.code_files())
    }
}

/// A stamp of `files`: the inode, size, and modification and change times of each. A file
/// replaced by another (a package upgrade, or a deploy that renames a new file into place) gets
/// another inode; one rewritten in place, another modification time; one whose times were put
/// back, another change time. The stamp is stable across restarts of precogd, so results kept on
/// disk still answer after a restart that changed nothing. `None` when a file cannot be looked
/// at (it is gone, or being replaced): running workers keep the code they loaded, so that is no
/// reason to replace them.
pub fn stamp(files: &[PathBuf]) -> Option<u64> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for file in files {
        let m = std::fs::metadata(file).ok()?;
        let fields = [
            m.ino(),
            m.size(),
            m.mtime() as u64,
            m.mtime_nsec() as u64,
            m.ctime() as u64,
            m.ctime_nsec() as u64,
        ];
        for byte in fields.iter().flat_map(|f| f.to_le_bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    Some(hash)
}

/// Looks at the pool's files every [`LOOK_EVERY`], off the runtime (a file on a hung network
/// mount holds up only this look). A change that still holds at the next look (so a file caught
/// half-written is not started) gives the pool new workers as a new command does: each old
/// worker finishes its job and retires, and the pool's code, part of its processes' version,
/// changes, so the old code's results, jobs in flight and partial states serve no more.
pub(super) async fn watch(shared: Arc<Shared>) {
    let mut seen: Option<u64> = None;
    loop {
        tokio::time::sleep(LOOK_EVERY).await;
        if shared.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        let settings = shared.settings.lock().expect("pool settings").clone();
        let files = settings.code_files();
        let looked = files.clone();
        let Ok(Some(now)) = tokio::task::spawn_blocking(move || stamp(&looked)).await else {
            continue;
        };
        if now == settings.code {
            seen = None;
            continue;
        }
        if seen.replace(now) != Some(now) {
            continue;
        }
        seen = None;
        let mut new = shared.settings.lock().expect("pool settings").clone();
        // A reload meanwhile decided for itself.
        if new.code != settings.code || new.code_files() != files {
            continue;
        }
        let shown: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        tracing::info!(pool = %new.name, files = %shown.join(" "),
            "the worker's files changed on disk; new workers replace the old ones");
        new.code = now;
        super::supervise::reconfigure(&shared, new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn settings(program: &Path, args: &[&Path], watch: Option<Vec<PathBuf>>) -> PoolSettings {
        PoolSettings {
            name: "p".into(),
            program: program.to_path_buf(),
            args: args.iter().map(|a| a.display().to_string()).collect(),
            cpus: None,
            timeout: Duration::from_secs(1),
            start_timeout: Duration::from_secs(1),
            warm_min: 1,
            workers_max: 2,
            queue_max: 8,
            identity: None,
            watch,
            code: 0,
        }
    }

    #[test]
    fn an_interpreters_script_counts_and_later_arguments_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("worker.py");
        let data = dir.path().join("catalog.sqlite");
        std::fs::write(&script, "print()\n").unwrap();
        std::fs::write(&data, "rows").unwrap();
        let python = Path::new("/usr/bin/python3");
        let option = Path::new("--catalog");
        let with_script = settings(python, &[&script, option, &data], None);
        assert_eq!(
            with_script.code_files(),
            vec![python.to_path_buf(), script.clone()]
        );
        // An option first: nothing but the program.
        let option_first = settings(python, &[option, &data], None);
        assert_eq!(option_first.code_files(), vec![python.to_path_buf()]);
        // A relative name is not looked up (workers start in `/`), nor is a directory.
        let relative = settings(python, &[Path::new("worker.py")], None);
        assert_eq!(relative.code_files(), vec![python.to_path_buf()]);
        let directory = settings(python, &[dir.path()], None);
        assert_eq!(directory.code_files(), vec![python.to_path_buf()]);
        // A `watch` list names the files instead; an empty one leaves the program alone.
        let listed = settings(python, &[option, &script], Some(vec![script.clone()]));
        assert_eq!(
            listed.code_files(),
            vec![python.to_path_buf(), script.clone()]
        );
        let none = settings(python, &[&data], Some(Vec::new()));
        assert_eq!(none.code_files(), vec![python.to_path_buf()]);
    }

    #[test]
    fn the_stamp_follows_the_code_and_not_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("worker");
        let data = dir.path().join("data");
        std::fs::write(&program, "one").unwrap();
        std::fs::write(&data, "rows").unwrap();
        let pool = settings(&program, &[Path::new("--data"), &data], None);
        let first = pool.code_stamp().unwrap();
        assert_eq!(Some(first), pool.code_stamp(), "nothing changed");

        std::fs::write(&data, "more rows").unwrap();
        assert_eq!(Some(first), pool.code_stamp(), "only the data changed");

        // A deploy: a new file renamed into place.
        let next = dir.path().join("worker.new");
        std::fs::write(&next, "two").unwrap();
        std::fs::rename(&next, &program).unwrap();
        let second = pool.code_stamp().unwrap();
        assert_ne!(first, second);

        // Gone: no stamp, so the workers running it are left alone.
        std::fs::remove_file(&program).unwrap();
        assert_eq!(pool.code_stamp(), None);
    }
}
