//! A store directory that is not private to precogd (another user owns it, or others may write
//! to it) is refused, and a store file another user owns is set aside: either would let that
//! user put a file of their making in place of precogd's, to be served back as results.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use precog::store::{CacheKey, ResultCache, StateStore, StoreError};
use serde_json::json;

const CAPACITY: u64 = 2 << 20;

const NOBODY: u32 = 65534;

fn planted_key() -> CacheKey<'static> {
    CacheKey {
        owner: 0,
        process: "p",
        version: 0,
        inputs: "{}",
    }
}

/// A cache in `dir` holding one entry written by someone other than the daemon.
fn plant_cache(dir: &Path) {
    let (mut cache, _) = ResultCache::open(dir, CAPACITY).unwrap();
    cache.put(&planted_key(), b"planted", 0, 1_000_000).unwrap();
    cache.sync().unwrap();
}

fn chown(path: &Path, uid: u32) {
    nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(uid)), None).unwrap();
}

#[test]
fn a_directory_others_may_write_to_is_refused_naming_the_mode() {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    match ResultCache::open(dir.path(), CAPACITY) {
        Err(e @ StoreError::NotPrivate { .. }) => {
            assert!(e.to_string().contains("0777"), "{e}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a world-writable directory was taken"),
    }
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o770)).unwrap();
    assert!(matches!(
        StateStore::open(dir.path(), 4 << 20, 1024),
        Err(StoreError::NotPrivate { .. })
    ));
    assert!(
        fs::read_dir(dir.path()).unwrap().next().is_none(),
        "a refused directory was written to"
    );
}

#[test]
fn a_directory_another_user_owns_is_refused() {
    if common::skip_unless(
        common::is_root(),
        "giving a directory to another user needs root",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    plant_cache(dir.path());
    chown(dir.path(), NOBODY);
    match ResultCache::open(dir.path(), CAPACITY) {
        Err(e @ StoreError::NotPrivate { .. }) => {
            assert!(e.to_string().contains("65534"), "{e}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok((mut cache, _)) => panic!(
            "a directory of another user was taken; it served {:?}",
            cache.get(&planted_key(), 1)
        ),
    }
}

#[test]
fn a_store_file_another_user_owns_is_set_aside_unread() {
    if common::skip_unless(
        common::is_root(),
        "giving a file to another user needs root",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    plant_cache(dir.path());
    chown(&dir.path().join("results.db"), NOBODY);
    let (mut cache, aside) = ResultCache::open(dir.path(), CAPACITY).unwrap();
    assert_eq!(
        cache.get(&planted_key(), 1),
        None,
        "a planted result was served"
    );
    assert_eq!(aside.len(), 1, "nothing was set aside");
    assert!(
        aside[0].reason.contains("uid 65534"),
        "{:?}",
        aside[0].reason
    );
    assert!(aside[0].path.exists());
}

#[test]
fn precogd_runs_without_a_cache_in_a_shared_directory_and_says_why() {
    let shared = tempfile::tempdir().unwrap();
    fs::set_permissions(shared.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let keys = format!("cache_dir = \"{}\"\n", shared.path().display());
    let d = common::Daemon::start_with(&keys, "");
    let stats = d.call(json!({"op": "stats"}));
    let cache = &stats["cache"];
    assert_eq!(cache["open"], json!(false), "{stats}");
    let reason = cache["disabled_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("not private"), "{reason}");
    assert!(
        d.log().contains("running without a result cache"),
        "{}",
        d.log()
    );
    assert_eq!(d.call(json!({"op": "ping"}))["ok"], json!(true));
}
