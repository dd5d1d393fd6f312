//! One cgroup as it exists in every hierarchy precog uses: making it, writing limits and reading
//! them back, reading usage, killing its tasks and removing it.
//!
//! On v1 the same cgroup is a directory under each controller's mount; on v2 it is one
//! directory. A [`Node`] holds all of them, so the code above never cares which.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::CgroupError;
use super::layout::{Controller, Version};
use super::limits::{self, PoolLimits, Setting, Usage};

/// How long removal keeps retrying a cgroup the kernel still calls busy.
const REMOVE_PATIENCE: Duration = Duration::from_secs(2);
/// How long killing keeps sweeping for tasks that forked while being killed.
const KILL_PATIENCE: Duration = Duration::from_secs(2);
const RETRY_PAUSE: Duration = Duration::from_millis(10);

/// One directory of a cgroup, in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeDir {
    pub version: Version,
    pub controllers: Vec<Controller>,
    pub dir: PathBuf,
}

/// A cgroup across the hierarchies precog uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub dirs: Vec<NodeDir>,
}

impl Node {
    /// The same cgroup one level down, named `name`.
    pub fn child(&self, name: &str) -> Node {
        Node {
            dirs: self
                .dirs
                .iter()
                .map(|d| NodeDir {
                    dir: d.dir.join(name),
                    ..d.clone()
                })
                .collect(),
        }
    }

    /// The directory carrying `controller`, if any hierarchy does.
    pub fn dir_for(&self, controller: Controller) -> Option<&NodeDir> {
        self.dirs
            .iter()
            .find(|d| d.controllers.contains(&controller))
    }

    /// Makes the directories (those that exist are kept) and, on v1 cpuset, gives the new
    /// cgroup its parent's CPUs and memory nodes: a v1 cpuset starts empty and refuses tasks.
    pub fn create(&self) -> Result<(), CgroupError> {
        for d in &self.dirs {
            match fs::create_dir(&d.dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(CgroupError::Create {
                        path: d.dir.clone(),
                        source,
                    });
                }
            }
            if d.version == Version::V1 && d.controllers.contains(&Controller::Cpuset) {
                let parent = d.dir.parent().unwrap_or(&d.dir);
                for file in ["cpuset.mems", "cpuset.cpus"] {
                    let current = read(&d.dir.join(file)).unwrap_or_default();
                    if current.trim().is_empty() {
                        let inherited = read(&parent.join(file))?;
                        write_checked(
                            &d.dir.join(file),
                            inherited.trim(),
                            limits::ValueKind::List,
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Turns the controllers on for the children of this cgroup (v2 only; v1 has no switch).
    pub fn enable_for_children(&self) -> Result<(), CgroupError> {
        for d in self.dirs.iter().filter(|d| d.version == Version::V2) {
            let path = d.dir.join("cgroup.subtree_control");
            let enabled = read(&path).unwrap_or_default();
            for c in &d.controllers {
                // cpuacct is part of cpu on v2.
                if *c == Controller::CpuAcct || enabled.split_whitespace().any(|e| e == c.name()) {
                    continue;
                }
                write_file(&path, &format!("+{c}"))?;
            }
        }
        Ok(())
    }

    /// Puts `l` in force, reading every value back; a value the kernel did not take is an error
    /// naming the file and the value.
    pub fn set_limits(&self, l: &PoolLimits) -> Result<(), CgroupError> {
        for c in l.needs() {
            if self.dir_for(c).is_none() {
                return Err(CgroupError::MissingController { controller: c });
            }
        }

        // Each setting is tried even when one before it is refused; the first refusal is
        // reported, and the caller tries again later.
        let mut refused = None;
        for d in &self.dirs {
            let parent_cpus = d
                .dir
                .parent()
                .map(|p| read(&p.join("cpuset.cpus")).unwrap_or_default())
                .unwrap_or_default();
            let period = read(&d.dir.join("cpu.cfs_period_us"))
                .ok()
                .and_then(|t| t.trim().parse().ok());
            for s in limits::settings(l, d.version, &parent_cpus, period) {
                if !d.controllers.contains(&s.controller) {
                    continue;
                }
                if let Err(e) = self.apply(d, &s) {
                    let moved = s.file == "cpuset.cpus"
                        && d.version == Version::V1
                        && move_cpus(&d.dir, &s.value);
                    if !moved {
                        refused.get_or_insert(e);
                    }
                }
            }
        }
        refused.map_or(Ok(()), Err)
    }

    fn apply(&self, d: &NodeDir, s: &Setting) -> Result<(), CgroupError> {
        let path = d.dir.join(s.file);
        if s.optional && !path.exists() {
            return Ok(());
        }
        write_checked(&path, &s.value, s.kind)
    }

    /// The limits in force, read back from the files.
    pub fn limits(&self) -> PoolLimits {
        let mut l = PoolLimits::default();
        let text = |c: Controller, file: &str| {
            self.dir_for(c)
                .and_then(|d| read(&d.dir.join(file)).ok().map(|t| (d.version, t)))
        };

        match self.dir_for(Controller::Cpu).map(|d| d.version) {
            Some(Version::V1) => {
                let quota = text(Controller::Cpu, "cpu.cfs_quota_us").map(|t| t.1);
                let period = text(Controller::Cpu, "cpu.cfs_period_us").map(|t| t.1);
                let (q, p) = limits::parse_cfs(
                    quota.as_deref().unwrap_or(""),
                    period.as_deref().unwrap_or(""),
                );
                (l.cpu_quota_pct, l.cpu_period_us) = (q, p);
                l.cpu_weight = text(Controller::Cpu, "cpu.shares")
                    .and_then(|t| t.1.trim().parse().ok())
                    .map(limits::shares_to_weight);
            }
            Some(Version::V2) => {
                if let Some((_, t)) = text(Controller::Cpu, "cpu.max") {
                    (l.cpu_quota_pct, l.cpu_period_us) = limits::parse_cpu_max(&t);
                }
                l.cpu_weight =
                    text(Controller::Cpu, "cpu.weight").and_then(|t| t.1.trim().parse().ok());
            }
            None => {}
        }
        l.cpu_weight = l.cpu_weight.filter(|&w| w != limits::WEIGHT_DEFAULT);

        l.cpus = match self.dir_for(Controller::Cpuset).map(|d| d.version) {
            Some(Version::V1) => text(Controller::Cpuset, "cpuset.cpus"),
            Some(Version::V2) => text(Controller::Cpuset, "cpuset.cpus.effective"),
            None => None,
        }
        .and_then(|(_, t)| limits::parse_list(&t));

        let (max_file, reserve_file) = match self.dir_for(Controller::Memory).map(|d| d.version) {
            Some(Version::V1) => ("memory.limit_in_bytes", "memory.soft_limit_in_bytes"),
            _ => ("memory.max", "memory.min"),
        };
        l.memory_max = text(Controller::Memory, max_file).and_then(|t| limits::parse_bytes(&t.1));
        l.memory_reserve = text(Controller::Memory, reserve_file)
            .and_then(|t| limits::parse_bytes(&t.1))
            .filter(|&b| b > 0);
        l.pids_max = text(Controller::Pids, "pids.max").and_then(|t| limits::parse_count(&t.1));
        l
    }

    /// CPU time, memory and OOM kills of this cgroup and everything below it; a value the kernel
    /// does not offer reads as 0.
    pub fn usage(&self) -> Usage {
        let mut u = Usage::default();
        let num = |d: &NodeDir, file: &str| {
            read(&d.dir.join(file))
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
        };
        let keyed = |d: &NodeDir, file: &str, key: &str| {
            read(&d.dir.join(file))
                .ok()
                .and_then(|t| limits::keyed(&t, key))
        };

        if let Some(d) = self.dir_for(Controller::CpuAcct) {
            u.cpu_ns = match d.version {
                Version::V1 => num(d, "cpuacct.usage"),
                Version::V2 => keyed(d, "cpu.stat", "usage_usec").map(|us| us * 1000),
            }
            .unwrap_or(0);
        }
        if let Some(d) = self.dir_for(Controller::Memory) {
            let (now, peak, events) = match d.version {
                Version::V1 => (
                    num(d, "memory.usage_in_bytes"),
                    num(d, "memory.max_usage_in_bytes"),
                    "memory.oom_control",
                ),
                Version::V2 => (
                    num(d, "memory.current"),
                    num(d, "memory.peak"),
                    "memory.events",
                ),
            };
            u.memory_now = now.unwrap_or(0);
            u.memory_peak = peak.unwrap_or(0);
            u.oom_kills = keyed(d, events, "oom_kill").unwrap_or(0);
        }
        u
    }

    /// The file that counts this cgroup's CPU time, opened once so that reading it per job is one
    /// `pread` rather than an open, a stat, a read and a close.
    pub fn cpu_counter(&self) -> Option<CpuCounter> {
        let d = self.dir_for(Controller::CpuAcct)?;
        let (file, keyed) = match d.version {
            Version::V1 => ("cpuacct.usage", false),
            Version::V2 => ("cpu.stat", true),
        };
        let file = fs::File::open(d.dir.join(file)).ok()?;
        Some(CpuCounter { file, keyed })
    }

    /// Every process in this cgroup and the cgroups below it, in every hierarchy.
    pub fn tasks(&self) -> BTreeSet<i32> {
        let mut pids = BTreeSet::new();
        for d in &self.dirs {
            collect_tasks(&d.dir, &mut pids);
        }
        let own = std::process::id() as i32;
        // pid 0 or below would signal process groups; our own pid never belongs to a pool.
        pids.retain(|&p| p > 0 && p != own);
        pids
    }

    /// Kills every process in the cgroup, sweeping again for those forked meanwhile, until it
    /// is empty.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        for d in self.dirs.iter().filter(|d| d.version == Version::V2) {
            // cgroup.kill (Linux 5.14) kills the whole subtree at once, forks included.
            let path = d.dir.join("cgroup.kill");
            if path.exists() {
                write_file(&path, "1")?;
            }
        }

        let start = Instant::now();
        loop {
            let pids = self.tasks();
            if pids.is_empty() {
                return Ok(());
            }
            if start.elapsed() > KILL_PATIENCE {
                return Err(CgroupError::StillRunning {
                    path: self.dirs[0].dir.clone(),
                    tasks: pids.len(),
                });
            }
            for pid in pids {
                match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(e) => {
                        return Err(CgroupError::Kill {
                            pid,
                            source: io::Error::from(e),
                        });
                    }
                }
            }
            sleep(RETRY_PAUSE);
        }
    }

    /// Kills what runs in the cgroup and removes it with everything below it.
    pub fn remove(&self) -> Result<(), CgroupError> {
        self.kill_all()?;
        for d in &self.dirs {
            remove_tree(&d.dir)?;
        }
        Ok(())
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.dir.clone()).collect()
    }
}

fn collect_tasks(dir: &Path, pids: &mut BTreeSet<i32>) {
    if let Ok(text) = read(&dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    for sub in subdirs(dir) {
        collect_tasks(&sub, pids);
    }
}

/// The child cgroups of a directory.
pub(crate) fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// Removes a cgroup directory and those below it, deepest first. The kernel answers EBUSY for a
/// moment after the last task died, so a busy directory is retried.
pub(crate) fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    for sub in subdirs(dir) {
        remove_tree(&sub)?;
    }

    let start = Instant::now();
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < REMOVE_PATIENCE =>
            {
                sleep(RETRY_PAUSE);
            }
            // A fake tree in a test holds plain files, which rmdir cannot take.
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) && is_plain_dir(dir) => {
                return fs::remove_dir_all(dir).map_err(|source| CgroupError::Remove {
                    path: dir.to_path_buf(),
                    source,
                });
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// Whether `dir` is an ordinary directory rather than one on a cgroup filesystem.
fn is_plain_dir(dir: &Path) -> bool {
    use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, statfs};
    match statfs(dir) {
        Ok(s) => ![CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC].contains(&s.filesystem_type()),
        Err(_) => false,
    }
}

pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a value in one `write` call, as cgroup files require.
pub(crate) fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    let err = |source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    };
    // create(true) only matters for a fake tree in tests; cgroupfs files always exist.
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(err)?;
    f.write_all(value.as_bytes()).map_err(err)
}

/// Writes a value and reads it back; the kernel keeps the old value on some refusals without
/// failing the write.
pub(crate) fn write_checked(
    path: &Path,
    value: &str,
    kind: limits::ValueKind,
) -> Result<(), CgroupError> {
    write_file(path, value)?;
    let found = read(path)?;
    if limits::matches(kind, value, &found, page_size()) {
        Ok(())
    } else {
        Err(CgroupError::Refused {
            path: path.to_path_buf(),
            value: value.to_string(),
            found: found.trim().to_string(),
        })
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant and has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}

/// An open CPU-time file of one cgroup (see [`Node::cpu_counter`]).
#[derive(Debug)]
pub struct CpuCounter {
    file: fs::File,
    /// v2's `cpu.stat` holds `usage_usec` among other keys; v1's `cpuacct.usage` is nanoseconds.
    keyed: bool,
}

impl CpuCounter {
    /// CPU time used so far, in nanoseconds; `None` when the file cannot be read (the cgroup is
    /// gone).
    pub fn read_ns(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 512];
        // Kernel attribute files are produced afresh at offset 0 on every read.
        let n = self.file.read_at(&mut buf, 0).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        if self.keyed {
            limits::keyed(text, "usage_usec").map(|us| us * 1000)
        } else {
            text.trim().parse().ok()
        }
    }
}

/// A v1 cpuset refuses CPUs that leave out any its children use: when a pool moves to other
/// CPUs, its workers' cgroups hold the old ones until the workers are replaced. So the children
/// are narrowed to the new CPUs where they share some, then the pool; where a child still holds
/// only old CPUs (a worker that has not stopped yet), the pool gets the old and new CPUs together
/// for now, so its new workers can start on the new ones, and `false` says to try again later.
fn move_cpus(dir: &Path, wanted: &str) -> bool {
    let cpus = |p: &Path| {
        read(&p.join("cpuset.cpus"))
            .ok()
            .and_then(|t| t.trim().parse::<crate::config::CpuList>().ok())
            .map(|l| l.0.into_iter().collect::<BTreeSet<usize>>())
    };
    let list = |set: &BTreeSet<usize>| crate::config::CpuList(set.iter().copied().collect());
    let Ok(wanted_list) = wanted.trim().parse::<crate::config::CpuList>() else {
        return false;
    };
    let wanted_set: BTreeSet<usize> = wanted_list.0.iter().copied().collect();
    let children = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir());
    for child in children {
        let Some(has) = cpus(&child) else { continue };
        let keep: BTreeSet<usize> = has.intersection(&wanted_set).copied().collect();
        if !keep.is_empty() && keep != has {
            let _ = write_checked(
                &child.join("cpuset.cpus"),
                &list(&keep).to_string(),
                limits::ValueKind::List,
            );
        }
    }
    let path = dir.join("cpuset.cpus");
    if write_checked(&path, wanted, limits::ValueKind::List).is_ok() {
        return true;
    }
    let both: BTreeSet<usize> = cpus(dir)
        .unwrap_or_default()
        .union(&wanted_set)
        .copied()
        .collect();
    if let Err(e) = write_checked(&path, &list(&both).to_string(), limits::ValueKind::List) {
        tracing::warn!(path = %path.display(), error = %e, "cannot widen a pool's CPUs");
    }
    false
}
