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
use std::path::{Path, PathBuf};
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

    /// Whether `other` names the same files as code, by its command and `watch`, without looking
    /// at the disk.
    pub fn same_code_files(&self, other: &PoolSettings) -> bool {
        self.program == other.program && self.args == other.args && self.watch == other.watch
    }

    /// Sets the stamps of [`PoolSettings::code_files`] the workers are configured under, and
    /// the pool's `code` from them.
    pub fn set_code(&mut self, parts: Vec<Option<u64>>) {
        self.code = combine(&parts);
        self.code_parts = parts;
    }
}

/// The stamp of each file: its inode, size, and modification and change times, or `None` for a
/// file that cannot be looked at. A file replaced by another (a package upgrade, or a deploy that
/// renames a new file into place) gets another inode; one rewritten in place, another
/// modification time; one whose times were put back, another change time. Stamps are stable
/// across restarts of precogd, so results kept on disk still answer after a restart that
/// changed nothing.
pub fn look(files: &[PathBuf]) -> Vec<Option<u64>> {
    files.iter().map(|f| stamp(f)).collect()
}

fn stamp(file: &Path) -> Option<u64> {
    let m = std::fs::metadata(file).ok()?;
    Some(fnv(&[
        m.ino(),
        m.size(),
        m.mtime() as u64,
        m.mtime_nsec() as u64,
        m.ctime() as u64,
        m.ctime_nsec() as u64,
    ]))
}

/// One stamp for all the files, a file not there counting as such.
fn combine(parts: &[Option<u64>]) -> u64 {
    let words: Vec<u64> = parts
        .iter()
        .flat_map(|p| [u64::from(p.is_some()), p.unwrap_or(0)])
        .collect();
    fnv(&words)
}

fn fnv(words: &[u64]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in words.iter().flat_map(|w| w.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Whether the files looked at `now` are other than those the workers were configured under: a
/// file there whose stamp differs, a file there that was not. A file gone is no change: workers
/// keep the code they loaded, and it may be on its way back (a deploy that deletes first).
pub fn changed(configured: &[Option<u64>], now: &[Option<u64>]) -> bool {
    configured.len() != now.len()
        || configured
            .iter()
            .zip(now)
            .any(|(was, is)| is.is_some() && is != was)
}

/// The stamps to configure after a change: those looked at now, and for a file gone the one it
/// had.
fn merged(configured: &[Option<u64>], now: &[Option<u64>]) -> Vec<Option<u64>> {
    now.iter()
        .zip(configured.iter().chain(std::iter::repeat(&None)))
        .map(|(is, was)| is.or(*was))
        .collect()
}

/// Looks at the pool's files every [`LOOK_EVERY`], off the runtime (a file on a hung network
/// mount holds up only this look, and the starts of new workers). A change that still holds at
/// the next look (so a file caught half-written is not started, unless its writer pauses for a
/// look) gives the pool new workers as a new command does: each old worker finishes its job
/// and retires, and the pool's code, part of its processes' version, changes, so the old code's
/// results, jobs in flight and partial states serve no more.
pub(super) async fn watch(shared: Arc<Shared>) {
    let mut seen: Option<Vec<Option<u64>>> = None;
    loop {
        tokio::time::sleep(LOOK_EVERY).await;
        if shared.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        let settings = shared.settings.lock().expect("pool settings").clone();
        let looking = settings.clone();
        let Ok((files, now)) = tokio::task::spawn_blocking(move || {
            let files = looking.code_files();
            let now = look(&files);
            (files, now)
        })
        .await
        else {
            continue;
        };
        if !changed(&settings.code_parts, &now) {
            seen = None;
            continue;
        }
        let next = merged(&settings.code_parts, &now);
        if seen.replace(next.clone()).as_ref() != Some(&next) {
            continue;
        }
        seen = None;
        let mut new = shared.settings.lock().expect("pool settings").clone();
        // A reload meanwhile decided for itself.
        if new.code != settings.code || !new.same_code_files(&settings) {
            continue;
        }
        let shown: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        tracing::info!(pool = %new.name, files = %shown.join(" "),
            "the worker's files changed on disk; new workers replace the old ones");
        new.set_code(next);
        super::supervise::reconfigure(&shared, new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(program: &Path, args: &[&Path], watch: Option<Vec<PathBuf>>) -> PoolSettings {
        PoolSettings {
            program: program.to_path_buf(),
            args: args.iter().map(|a| a.display().to_string()).collect(),
            watch,
            ..crate::pool::tests::settings()
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
        let first = look(&pool.code_files());
        assert!(first[0].is_some());
        assert!(
            !changed(&first, &look(&pool.code_files())),
            "nothing changed"
        );

        std::fs::write(&data, "more rows").unwrap();
        assert!(
            !changed(&first, &look(&pool.code_files())),
            "only the data changed"
        );

        // A deploy: a new file renamed into place.
        let next = dir.path().join("worker.new");
        std::fs::write(&next, "two").unwrap();
        std::fs::rename(&next, &program).unwrap();
        let second = look(&pool.code_files());
        assert!(changed(&first, &second));
        assert_ne!(combine(&first), combine(&second));
    }

    #[test]
    fn a_file_gone_is_no_change_and_hides_no_other() {
        let (a, b, c) = (Some(1), Some(2), Some(3));
        // Gone: no change, and the stamps configured after another change keep its last one.
        assert!(!changed(&[a, b], &[a, None]));
        assert!(changed(&[a, b], &[c, None]));
        assert_eq!(merged(&[a, b], &[c, None]), vec![c, b]);
        // Not there when configured, there now: a change.
        assert!(changed(&[a, None], &[a, b]));
        assert_eq!(merged(&[a, None], &[a, b]), vec![a, b]);
        // A file not there still lets the others' changes through, and counts in the stamp.
        assert!(changed(&[a, None], &[c, None]));
        assert_ne!(combine(&[a, None]), combine(&[a, Some(0)]));
        assert_ne!(combine(&[a, None]), combine(&[c, None]));
    }
}
