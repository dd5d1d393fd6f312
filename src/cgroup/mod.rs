//! The one place that touches cgroups: a subtree for precog, one cgroup per pool with its CPU
//! quota, weight, CPU set, memory ceiling and reservation and task limit, and one leaf per
//! worker.
//!
//! Works on cgroup v1, v2 and hybrid hosts; the layout is found per controller ([`Layout`]).
//! Every kernel path (`/sys/fs/cgroup`, `/proc`) comes in as a parameter, so the tests point it
//! at a temporary tree. The files are written directly rather than through cgroups-rs: that
//! crate has no notion of hybrid hosts, finds its mounts itself (so cannot be pointed at a test
//! tree), and some of its setters report success while the kernel kept the old value. Here every
//! value is read back after writing.
//!
//! Per-worker leaves: the limits sit on the pool's cgroup (`<subtree>/<pool>`); each worker runs
//! in its own leaf below it (`<subtree>/<pool>/w<id>`). A leaf gives each job's memory peak and
//! CPU time, tells exactly whether *that* worker was OOM-killed (the kernel counts OOM kills per
//! cgroup, hierarchically), and lets a worker be killed together with everything it forked
//! without touching its siblings. It costs a `mkdir` per spawn (about 10 µs per hierarchy).
//! On v2 the pool then holds no processes itself, as the no-internal-processes rule wants.
//!
//! A worker joins its cgroup between `fork` and `exec` through a [`JoinHandle`], so it is inside
//! before its first instruction and all its memory is charged there (v1 does not move memory a
//! process already has).

mod layout;
mod limits;
mod node;
mod pool;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::fcntl::{Flock, FlockArg};

pub use layout::{Controller, Layout, Membership, Version, own_path, parse_proc_cgroup};
pub use limits::{PoolLimits, Usage, shares_to_weight, weight_to_shares};

use node::{Node, NodeDir};
pub use pool::{PoolCgroup, WorkerCgroup};

/// The leaf a delegated daemon moves itself into on v2, so its own cgroup holds no processes
/// and can hand controllers to the pools.
const DAEMON_LEAF: &str = "daemon";

/// A cgroup error; the message names the file or directory and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot create cgroup {path}; check that the hierarchy is writable")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write `{value}` to {path}; the kernel refused the value")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} still reads `{found}` after writing `{value}`; choose a value it accepts")]
    Refused {
        path: PathBuf,
        value: String,
        found: String,
    },
    #[error("cannot open {path} to join the cgroup")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot kill task {pid}")]
    Kill {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("{tasks} tasks are still running in {path} after killing them; look for stuck tasks")]
    StillRunning { path: PathBuf, tasks: usize },
    #[error("cannot remove cgroup {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the {controller} controller is not mounted or delegated; enable it or drop the limit")]
    MissingController { controller: Controller },
    #[error("`{name}` cannot name a pool's cgroup; use letters, digits, `-`, `_` and `.`")]
    BadName { name: String },
    #[error(
        "{path} is held by another running precogd; stop it or give this one a \
         `daemon.cgroup_parent` of its own"
    )]
    InUse { path: PathBuf },
    #[error("cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One hierarchy precog uses and where its subtree sits in it.
#[derive(Debug, Clone)]
struct Subtree {
    version: Version,
    mount: PathBuf,
    controllers: Vec<Controller>,
    /// precog's directory in this hierarchy; pools are made below it.
    base: PathBuf,
    /// Delegated by systemd (the daemon's own cgroup) rather than made by precog.
    delegated: bool,
}

/// The cgroup subtree precog may use, in every hierarchy that carries a controller it needs.
/// Clones share which pool cgroups are in use.
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Layout,
    subtrees: Vec<Subtree>,
    /// How many pools use each pool's cgroup, by name: a pool a reload removed still stops in
    /// it when a pool added again under its name takes the same directory. Held while a pool
    /// cgroup is made or removed, so a removal never takes a directory being taken again.
    in_use: Arc<Mutex<HashMap<String, usize>>>,
    /// A lock on each subtree's directory, held while this daemon runs: a second precogd given
    /// the same subtree would take the first one's pools for leftovers and kill its workers.
    _held: Arc<Vec<Flock<File>>>,
}

impl Cgroups {
    /// Finds the subtree precog may use. In order: systemd delegation (`delegated`: the daemon's
    /// own cgroup from `/proc/self/cgroup`; on v2 the daemon first moves itself into a leaf
    /// `daemon/` and then enables the controllers for the pools); else, as root, `parent` made
    /// under each hierarchy; else `Ok(None)`, and the caller runs without cgroups.
    pub fn detect(
        sys_root: &Path,
        proc_root: &Path,
        parent: &str,
        delegated: bool,
    ) -> Result<Option<Cgroups>, CgroupError> {
        let is_root = nix::unistd::geteuid().is_root();
        Cgroups::detect_as(sys_root, proc_root, parent, delegated, is_root)
    }

    /// [`Cgroups::detect`] with the privilege given rather than asked of the kernel.
    pub fn detect_as(
        sys_root: &Path,
        proc_root: &Path,
        parent: &str,
        delegated: bool,
        is_root: bool,
    ) -> Result<Option<Cgroups>, CgroupError> {
        let Some(layout) = Layout::probe(sys_root) else {
            return Ok(None);
        };
        for part in parent.trim_matches('/').split('/') {
            check_name(part)?;
        }

        let memberships = if delegated {
            let path = proc_root.join("self/cgroup");
            parse_proc_cgroup(&node::read(&path)?)
        } else {
            Vec::new()
        };

        let mut subtrees = Vec::new();
        for (version, mount, controllers) in layout.hierarchies() {
            // The root cgroup is never delegated: taking it would make every cgroup a "pool".
            let own = own_path(&memberships, version, &controllers)
                .map(|p| p.trim_matches('/'))
                .filter(|p| !p.is_empty())
                .map(|p| mount.join(p))
                .filter(|dir| delegated && writable(dir));
            let (base, delegated) = match own {
                Some(dir) => (dir, true),
                None if is_root => (mount.join(parent.trim_matches('/')), false),
                None => continue,
            };
            // On v2 only what the parent hands down can be enabled for the pools.
            let handed_down = if delegated {
                base.join("cgroup.controllers")
            } else {
                base.parent()
                    .unwrap_or(&mount)
                    .join("cgroup.subtree_control")
            };
            let controllers = match version {
                Version::V2 if handed_down.is_file() => {
                    let offered = node::read(&handed_down)?;
                    controllers
                        .into_iter()
                        .filter(|c| {
                            let name = match c {
                                Controller::CpuAcct => "cpu",
                                c => c.name(),
                            };
                            offered.split_whitespace().any(|o| o == name)
                        })
                        .collect()
                }
                _ => controllers,
            };
            subtrees.push(Subtree {
                version,
                mount,
                controllers,
                base,
                delegated,
            });
        }
        if subtrees.is_empty() {
            return Ok(None);
        }

        let mut cgroups = Cgroups {
            layout,
            subtrees,
            in_use: Arc::default(),
            _held: Arc::default(),
        };
        cgroups.prepare()?;
        let held = cgroups.subtrees.iter().map(|s| hold(&s.base));
        cgroups._held = Arc::new(held.collect::<Result<_, _>>()?);
        Ok(Some(cgroups))
    }

    /// Makes the subtree ready for pools: created (as root) or cleared of the daemon (delegated
    /// v2), and on v2 with the controllers enabled for the pools.
    fn prepare(&self) -> Result<(), CgroupError> {
        for s in &self.subtrees {
            let dir = NodeDir {
                version: s.version,
                controllers: s.controllers.clone(),
                dir: s.base.clone(),
            };
            if s.delegated && s.version == Version::V2 {
                let leaf = Node {
                    dirs: vec![NodeDir {
                        dir: s.base.join(DAEMON_LEAF),
                        ..dir.clone()
                    }],
                };
                leaf.create()?;
                let procs = s.base.join(DAEMON_LEAF).join("cgroup.procs");
                node::write_file(&procs, &std::process::id().to_string())?;
            }
            if !s.delegated {
                // The levels between the mount and the subtree, each made like a pool's.
                let rel = s.base.strip_prefix(&s.mount).unwrap_or(Path::new(""));
                let mut level = s.mount.clone();
                for part in rel.components() {
                    level.push(part);
                    Node {
                        dirs: vec![NodeDir {
                            dir: level.clone(),
                            ..dir.clone()
                        }],
                    }
                    .create()?;
                }
            }
            Node { dirs: vec![dir] }.enable_for_children()?;
        }
        Ok(())
    }

    fn base(&self) -> Node {
        Node {
            dirs: self
                .subtrees
                .iter()
                .map(|s| NodeDir {
                    version: s.version,
                    controllers: s.controllers.clone(),
                    dir: s.base.clone(),
                })
                .collect(),
        }
    }

    /// The layout found on this host.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Empties and removes the pools a crashed run left behind; returns how many there were.
    pub fn remove_stale(&self) -> Result<usize, CgroupError> {
        let mut names: Vec<String> = Vec::new();
        for s in &self.subtrees {
            for dir in node::subdirs(&s.base) {
                let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if name != DAEMON_LEAF && !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
            }
        }

        let base = self.base();
        for name in &names {
            let stale = base.child(name);
            let existing = Node {
                dirs: stale.dirs.into_iter().filter(|d| d.dir.is_dir()).collect(),
            };
            existing.remove()?;
        }
        Ok(names.len())
    }

    /// Makes the cgroup for pool `name` and puts `limits` in force before any worker joins. A
    /// directory that exists already (that of a pool of the same name still stopping) is taken
    /// as it is. When the cgroup cannot be set up, the directories this call made go again.
    pub fn create_pool(&self, name: &str, limits: &PoolLimits) -> Result<PoolCgroup, CgroupError> {
        check_name(name)?;
        if name == DAEMON_LEAF {
            return Err(CgroupError::BadName { name: name.into() });
        }

        let node = self.base().child(name);
        let mut in_use = self.in_use.lock().expect("pool cgroups");
        let new_dirs: Vec<PathBuf> = node
            .paths()
            .into_iter()
            .filter(|dir| !dir.exists())
            .collect();
        let made = node
            .create()
            .and_then(|()| node.set_limits(limits))
            .and_then(|()| node.enable_for_children());
        if let Err(e) = made {
            for dir in &new_dirs {
                if let Err(undo) = node::remove_tree(dir) {
                    tracing::warn!(error = %undo, "cannot remove a pool cgroup that failed");
                }
            }
            return Err(e);
        }
        *in_use.entry(name.to_string()).or_default() += 1;
        Ok(PoolCgroup::new(node, name, self.in_use.clone()))
    }

    /// Removes every pool and, where precog made it, the subtree itself (at daemon stop).
    pub fn remove(self) -> Result<(), CgroupError> {
        let _in_use = self.in_use.lock().expect("pool cgroups");
        self.remove_stale()?;
        for s in self.subtrees.iter().filter(|s| !s.delegated) {
            node::remove_tree(&s.base)?;
        }
        Ok(())
    }

    /// Where the subtree is, for logs: `v1 (hybrid): /sys/fs/cgroup/{cpu,memory,...}/precog`.
    pub fn describe(&self) -> String {
        let delegated = self.subtrees.iter().any(|s| s.delegated);
        let kind = self.layout.kind();
        let suffix = if delegated { " (delegated)" } else { "" };

        // Same place in every hierarchy: fold the mounts' names into one brace list.
        let first = &self.subtrees[0];
        let rel = |s: &Subtree| s.base.strip_prefix(&s.mount).map(Path::to_path_buf).ok();
        let parent = |s: &Subtree| s.mount.parent().map(Path::to_path_buf);
        let foldable = self.subtrees.len() > 1
            && self
                .subtrees
                .iter()
                .all(|s| rel(s) == rel(first) && parent(s) == parent(first));
        if foldable && let (Some(root), Some(rel)) = (parent(first), rel(first)) {
            let names: Vec<String> = self
                .subtrees
                .iter()
                .filter_map(|s| s.mount.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect();
            let place = root.join(format!("{{{}}}", names.join(","))).join(rel);
            return format!("{kind}: {}{suffix}", place.display());
        }

        let places: Vec<String> = self
            .subtrees
            .iter()
            .map(|s| s.base.display().to_string())
            .collect();
        format!("{kind}: {}{suffix}", places.join(", "))
    }
}

/// Files opened in the parent (`O_WRONLY | O_CLOEXEC`) whose write of `"0"` moves the writing
/// process into the cgroup. The pool code calls [`JoinHandle::join_raw`] in `pre_exec`, between
/// fork and exec, where only async-signal-safe calls are allowed; exec closes the files.
#[derive(Debug)]
pub struct JoinHandle {
    procs: Vec<OwnedFd>,
}

impl JoinHandle {
    fn open(node: &Node) -> Result<JoinHandle, CgroupError> {
        let mut procs = Vec::with_capacity(node.dirs.len());
        for d in &node.dirs {
            let path = d.dir.join("cgroup.procs");
            let file = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .map_err(|source| CgroupError::Open { path, source })?;
            procs.push(OwnedFd::from(file));
        }
        Ok(JoinHandle { procs })
    }

    /// Moves the calling process into the cgroup in every hierarchy. Makes only `write` calls
    /// and allocates nothing, so it is safe between fork and exec.
    pub fn join_raw(&self) -> io::Result<()> {
        for fd in &self.procs {
            // SAFETY: the descriptor is open for as long as `self` lives and the buffer is a
            // static one-byte string; write(2) is async-signal-safe.
            let n = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
            if n != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Whether a name is one path component made of safe characters.
fn check_name(name: &str) -> Result<(), CgroupError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(CgroupError::BadName { name: name.into() })
    }
}

/// Locks `dir` for as long as the returned lock lives; another precogd holding it is `InUse`.
fn hold(dir: &Path) -> Result<Flock<File>, CgroupError> {
    let lock_error = |source| CgroupError::Lock {
        path: dir.to_path_buf(),
        source,
    };
    let file = File::open(dir).map_err(lock_error)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(held) => Ok(held),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(CgroupError::InUse {
            path: dir.to_path_buf(),
        }),
        Err((_, errno)) => Err(lock_error(io::Error::from(errno))),
    }
}

fn writable(dir: &Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

#[cfg(test)]
mod tests;
