//! What a pool's workers run, as a stamp of files on disk: the worker program and, when the
//! command's first argument is an absolute path to a file, that file (the script an interpreter
//! runs). A worker keeps the code it started with until it exits, so a stamp that changes means
//! the pool needs new workers, and results the old code computed must not answer for the new.
//!
//! Only the first argument counts as code: later ones are as often data (the shop worker's
//! `--catalog` database, which `reserve_stock` writes to), and a worker restarted on every write
//! to its data would never stay warm.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The files whose contents decide what a worker started with `program` and `args` computes:
/// the program, and the first argument when it is an absolute path that is not a directory.
pub fn code_files<'a>(program: &'a Path, args: &'a [String]) -> Vec<&'a Path> {
    let mut files = vec![program];
    if let Some(first) = args.first().map(Path::new)
        && first.is_absolute()
        && !first.is_dir()
    {
        files.push(first);
    }
    files
}

/// A stamp of [`code_files`]: the inode, size, and modification and change times of each.
/// A file replaced by another (a package upgrade, or a deploy that renames a new file into
/// place) gets another inode; one rewritten in place, another modification time. The stamp is
/// stable across restarts of precogd, so results kept on disk still answer after a restart that
/// changed nothing. `None` when a file cannot be looked at (it is gone, or being replaced):
/// running workers keep the code they loaded, so that is no reason to replace them.
pub fn code_stamp(program: &Path, args: &[String]) -> Option<u64> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for file in code_files(program, args) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_interpreters_script_counts_and_later_arguments_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("worker.py");
        let data = dir.path().join("catalog.sqlite");
        std::fs::write(&script, "print()\n").unwrap();
        std::fs::write(&data, "rows").unwrap();
        let python = Path::new("/usr/bin/python3");
        let with_script = args(&[
            script.to_str().unwrap(),
            "--catalog",
            data.to_str().unwrap(),
        ]);
        assert_eq!(
            code_files(python, &with_script),
            vec![python, script.as_path()]
        );
        // An option first: nothing but the program.
        let option_first = args(&["--catalog", data.to_str().unwrap()]);
        assert_eq!(code_files(python, &option_first), vec![python]);
        // A relative name is not looked up (workers start in `/`), nor is a directory.
        assert_eq!(code_files(python, &args(&["worker.py"])), vec![python]);
        let dir_first = args(&[dir.path().to_str().unwrap()]);
        assert_eq!(code_files(python, &dir_first), vec![python]);
    }

    #[test]
    fn the_stamp_follows_the_code_and_not_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("worker");
        let data = dir.path().join("data");
        std::fs::write(&program, "one").unwrap();
        std::fs::write(&data, "rows").unwrap();
        let rest = args(&["--data", data.to_str().unwrap()]);
        let first = code_stamp(&program, &rest).unwrap();
        assert_eq!(Some(first), code_stamp(&program, &rest), "nothing changed");

        std::fs::write(&data, "more rows").unwrap();
        assert_eq!(
            Some(first),
            code_stamp(&program, &rest),
            "only the data changed"
        );

        // A deploy: a new file renamed into place.
        let next = dir.path().join("worker.new");
        std::fs::write(&next, "two").unwrap();
        std::fs::rename(&next, &program).unwrap();
        let second = code_stamp(&program, &rest).unwrap();
        assert_ne!(first, second);

        // Gone: no stamp, so the workers running it are left alone.
        std::fs::remove_file(&program).unwrap();
        assert_eq!(code_stamp(&program, &rest), None);
    }
}
