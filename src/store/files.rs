//! The files a store owns: its private directory, the lock that keeps a second daemon out, the
//! reserved data file, and the mapping of it.
//!
//! The data file is reserved whole with `fallocate` before it is mapped, and never shrunk while
//! mapped, so a full disk is an error here rather than a SIGBUS on a later write. A file that
//! does not pass the header check is renamed aside, never deleted, so an operator can look at it.
//! Every file here is opened with `O_NOFOLLOW`, so a symlink planted in the directory is refused.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use memmap2::{MmapMut, MmapOptions};
use nix::fcntl::{FallocateFlags, Flock, FlockArg, fallocate};

use crate::store::StoreError;
use crate::store::bus_fault::Guard;
use crate::store::layout::{HEADER_LEN, Layout, StoreKind, check_header, encode_header};

/// A file moved out of the way at open because it could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    pub path: PathBuf,
    pub reason: String,
    /// Files set aside at earlier opens, removed now: only the latest is kept, so files set
    /// aside one restart after another (each as large as the store) cannot fill the disk.
    pub removed: Vec<PathBuf>,
}

/// The mapped data file. Its bus-fault guard goes first when dropped, then the mapping (by
/// `MmapMut`), then the file and lock close.
pub struct StoreFile {
    guard: Guard,
    pub map: MmapMut,
    pub hash_seed: u64,
    path: PathBuf,
    _file: File,
    _lock: Flock<File>,
}

impl StoreFile {
    /// Opens or creates `<dir>/<name>.db`, holding `<dir>/<name>.lock` for as long as it lives.
    pub fn open(
        dir: &Path,
        name: &str,
        kind: StoreKind,
        layout: &Layout,
    ) -> Result<(StoreFile, Vec<SetAside>), StoreError> {
        ensure_private_dir(dir)?;
        let lock = lock_store(&dir.join(format!("{name}.lock")))?;
        let path = dir.join(format!("{name}.db"));
        let mut set_aside = Vec::new();

        let mut found = None;
        match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(file) => match check_existing(&file, &path, kind, layout)? {
                Ok(seed) => found = Some((file, seed)),
                Err(reason) => set_aside.push(move_aside(&path, reason)?),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StoreError::Io {
                    op: "open",
                    path,
                    source,
                });
            }
        }

        let (file, hash_seed) = match found {
            Some(found) => found,
            None => create(&path, kind, layout)?,
        };
        // Re-reserving a healthy file is cheap and fills any holes a copy or restore left.
        reserve(&file, &path, layout.capacity)?;

        // Should someone with the rights truncate the file anyway, the guard registered below
        // turns the faults into zero pages.
        // SAFETY: the file is ours alone (a 0700 directory, our exclusive lock) while the mapping
        // lives; its length is at least `capacity`, all we map, and we never shrink it.
        let map = unsafe {
            MmapOptions::new()
                .len(layout.capacity as usize)
                .map_mut(&file)
        }
        .map_err(|source| StoreError::Io {
            op: "map",
            path: path.clone(),
            source,
        })?;

        let guard = Guard::register(map.as_ptr() as usize, map.len()).map_err(|source| {
            StoreError::Guard {
                path: path.clone(),
                source,
            }
        })?;

        let store = StoreFile {
            guard,
            map,
            hash_seed,
            path,
            _file: file,
            _lock: lock,
        };
        Ok((store, set_aside))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file shrank under the mapping: its pages past the new end now read zeros.
    pub fn changed_under(&self) -> bool {
        self.guard.damaged()
    }

    /// Writes dirty pages back and waits for them.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.map.flush().map_err(|source| StoreError::Io {
            op: "flush",
            path: self.path.clone(),
            source,
        })
    }
}

/// Makes `dir` (mode 0700) if it is missing, and refuses one that is not private to the
/// daemon's user: a directory another user owns, or one that others may write to, lets them put
/// a store file of their making in place of the daemon's, to be served back as results.
fn ensure_private_dir(dir: &Path) -> Result<(), StoreError> {
    let io_err = |op, source| StoreError::Io {
        op,
        path: dir.into(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_err("create directory", e))?;
    let meta = fs::metadata(dir).map_err(|e| io_err("stat directory", e))?;
    let euid = nix::unistd::geteuid().as_raw();
    let reason = if meta.uid() != euid {
        format!(
            "it is owned by uid {}, not by precogd's user (uid {euid})",
            meta.uid()
        )
    } else if meta.mode() & 0o022 != 0 {
        format!(
            "others may write to it (mode {:04o}); remove their write access",
            meta.mode() & 0o7777
        )
    } else {
        return Ok(());
    };
    Err(StoreError::NotPrivate {
        path: dir.into(),
        reason,
    })
}

fn lock_store(path: &Path) -> Result<Flock<File>, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| StoreError::Io {
            op: "open lock file",
            path: path.into(),
            source,
        })?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(StoreError::Locked { path: path.into() }),
        Err((_, errno)) => Err(StoreError::Io {
            op: "lock",
            path: path.into(),
            source: io::Error::from(errno),
        }),
    }
}

/// Reads the header without mapping (a short file must not fault) and says whether it is usable.
fn check_existing(
    file: &File,
    path: &Path,
    kind: StoreKind,
    layout: &Layout,
) -> Result<Result<u64, String>, StoreError> {
    let io_err = |op, source| StoreError::Io {
        op,
        path: path.into(),
        source,
    };
    let meta = file.metadata().map_err(|e| io_err("stat", e))?;
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Ok(Err(format!(
            "file is owned by uid {}, not by precogd's user (uid {euid})",
            meta.uid()
        )));
    }
    let file_len = meta.len();
    let mut header = vec![0u8; HEADER_LEN];
    let mut read = 0;
    while read < HEADER_LEN {
        match file.read_at(&mut header[read..], read as u64) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("read header", e)),
        }
    }
    header.truncate(read);
    Ok(check_header(&header, file_len, kind, layout))
}

fn move_aside(path: &Path, reason: String) -> Result<SetAside, StoreError> {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = PathBuf::from(format!("{}.bad-{seconds}", path.display()));
    let mut n = 1;
    while aside.exists() {
        aside = PathBuf::from(format!("{}.bad-{seconds}-{n}", path.display()));
        n += 1;
    }
    fs::rename(path, &aside).map_err(|source| StoreError::Io {
        op: "set aside",
        path: path.into(),
        source,
    })?;
    let removed = remove_older_aside(path, &aside);
    Ok(SetAside {
        path: aside,
        reason,
        removed,
    })
}

/// Removes the files set aside before `kept` for the store file at `path` (`<name>.db.bad-*`
/// beside it); returns those removed. One that cannot be removed is left where it is.
fn remove_older_aside(path: &Path, kept: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.bad-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let older = entry.path();
        let ours = entry.file_name().to_string_lossy().starts_with(&prefix);
        // A regular file only: never follow a link planted in the directory.
        let file = entry.file_type().is_ok_and(|t| t.is_file());
        if ours && file && older != kept && fs::remove_file(&older).is_ok() {
            removed.push(older);
        }
    }
    removed
}

/// Creates a new file under a temporary name and renames it in place once it is reserved and
/// has its header, so a crash never leaves a half-made file under the real name.
fn create(path: &Path, kind: StoreKind, layout: &Layout) -> Result<(File, u64), StoreError> {
    let tmp = PathBuf::from(format!("{}.new", path.display()));
    let io_err = |op, path: &Path, source| StoreError::Io {
        op,
        path: path.into(),
        source,
    };
    let _ = fs::remove_file(&tmp);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| io_err("create", &tmp, e))?;

    if let Err(e) = reserve(&file, &tmp, layout.capacity) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }

    let hash_seed = random_seed();
    let header = encode_header(layout, kind, hash_seed);
    file.write_all_at(&header, 0)
        .map_err(|e| io_err("write header", &tmp, e))?;
    file.sync_all().map_err(|e| io_err("sync", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err("rename", &tmp, e))?;
    if let Some(dir) = path.parent() {
        // The rename is durable only once the directory is; a failure here loses nothing now.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok((file, hash_seed))
}

fn reserve(file: &File, path: &Path, capacity: u64) -> Result<(), StoreError> {
    let len = i64::try_from(capacity).unwrap_or(i64::MAX);
    match fallocate(file, FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EOPNOTSUPP) => {
            // SAFETY: posix_fallocate only reads the descriptor, which `file` keeps open.
            let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
            if rc == 0 {
                Ok(())
            } else {
                let source = io::Error::from_raw_os_error(rc);
                Err(StoreError::Reserve {
                    path: path.into(),
                    bytes: capacity,
                    source,
                })
            }
        }
        Err(errno) => Err(StoreError::Reserve {
            path: path.into(),
            bytes: capacity,
            source: io::Error::from(errno),
        }),
    }
}

/// A per-file hash seed; it only has to be hard to guess from outside, not cryptographic.
fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .is_ok()
    {
        return u64::from_le_bytes(seed);
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (nanos as u64) ^ (u64::from(std::process::id()) << 32)
}
