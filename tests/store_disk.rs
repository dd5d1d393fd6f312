//! The stores on a small disk of their own (a tmpfs mounted for the test): reservation fails
//! cleanly when the disk is too small, and a disk that fills after open cannot take the reserved
//! space away. Needs root to mount; prints SKIPPED otherwise.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use precog::store::{CacheKey, ResultCache, StoreError};

const MIB: u64 = 1 << 20;

/// A tmpfs of `size` mounted on a fresh temporary directory, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        if !nix::unistd::geteuid().is_root() {
            println!("SKIPPED: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "precog-test",
            ])
            .arg(dir.path())
            .status();
        match status {
            Ok(s) if s.success() => Some(SmallDisk { dir }),
            other => {
                println!("SKIPPED: could not mount a tmpfs: {other:?}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(self.dir.path()).status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "could not unmount {}: {status:?}",
                self.dir.path().display()
            );
        }
    }
}

/// Writes to a file until the disk is full; returns the bytes written.
fn fill_disk(path: &Path) -> u64 {
    let mut file = fs::File::create(path).unwrap();
    let block = vec![0xEEu8; 64 * 1024];
    let mut written = 0;
    loop {
        match file.write(&block) {
            Ok(0) => return written,
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == ErrorKind::StorageFull => return written,
            Err(e) => panic!("filling the disk failed: {e}"),
        }
    }
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[test]
fn reservation_fails_cleanly_when_the_disk_is_too_small() {
    let Some(disk) = SmallDisk::mount("4m") else {
        return;
    };
    let dir = disk.path().join("cache");
    match ResultCache::open(&dir, 16 * MIB) {
        Err(StoreError::Reserve { bytes, .. }) => assert_eq!(bytes, 16 * MIB),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a 16 MiB cache was reserved on a 4 MiB disk"),
    }
    let left: Vec<_> = entries(&dir)
        .into_iter()
        .filter(|p| !p.ends_with("results.lock"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    // The space the failed reservation took is given back.
    assert!(fill_disk(&disk.path().join("filler")) >= 3 * MIB);
    fs::remove_file(disk.path().join("filler")).unwrap();
    let (mut cache, _) = ResultCache::open(&dir, 2 * MIB).unwrap();
    let k = CacheKey {
        owner: 0,
        process: "p",
        version: 0,
        inputs: "{}",
    };
    cache.put(&k, b"v", 0, 1_000).unwrap();
    assert_eq!(cache.get(&k, 1).as_deref(), Some(&b"v"[..]));
}

#[test]
fn a_disk_that_fills_after_open_does_not_take_the_cache_space() {
    let Some(disk) = SmallDisk::mount("8m") else {
        return;
    };
    let dir = disk.path().join("cache");
    let (mut cache, _) = ResultCache::open(&dir, 4 * MIB).unwrap();
    let filled = fill_disk(&disk.path().join("filler"));
    assert!(
        filled < 5 * MIB,
        "the cache's space was not reserved: {filled} bytes more fit"
    );

    // Several laps of the file on a full disk: every put lands, in reserved space.
    let value = vec![0x42u8; 900];
    for n in 0..20_000u32 {
        let inputs = format!("{{\"n\":{n}}}");
        let k = CacheKey {
            owner: 1,
            process: "check_inventory",
            version: 0,
            inputs: &inputs,
        };
        cache.put(&k, &value, 0, 1_000_000).unwrap();
    }
    let stats = cache.stats();
    assert!(!stats.disabled && stats.write_errors == 0, "{stats:?}");
    assert!(stats.evicted > 0);
    let newest = CacheKey {
        owner: 1,
        process: "check_inventory",
        version: 0,
        inputs: "{\"n\":19999}",
    };
    assert_eq!(cache.get(&newest, 1), Some(value));
    cache.sync().unwrap();
}
