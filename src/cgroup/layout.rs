//! Where each cgroup controller lives on this host, and which cgroup a process is in.
//!
//! A host mounts cgroups in one of three ways: every controller on its own v1 hierarchy
//! (`/sys/fs/cgroup/<controller>`), one v2 hierarchy for all (`/sys/fs/cgroup` with
//! `cgroup.controllers`), or both at once (hybrid: v1 hierarchies plus a v2 mount at
//! `/sys/fs/cgroup/unified` that holds whatever controllers v1 does not). The layout is found per
//! controller by looking at the files under the cgroup root, so tests can lay out a temporary
//! tree that looks like any of the three.
//!
//! Parsing `/proc/<pid>/cgroup` is pure and lives here too.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The controllers precog uses. On v2, `cpuacct` has no hierarchy of its own: `cpu.stat` of the
/// cpu controller carries the usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Controller {
    Cpu,
    CpuAcct,
    Cpuset,
    Memory,
    Pids,
}

impl Controller {
    pub const ALL: [Controller; 5] = [
        Controller::Cpu,
        Controller::CpuAcct,
        Controller::Cpuset,
        Controller::Memory,
        Controller::Pids,
    ];

    /// The kernel's name for the controller.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::CpuAcct => "cpuacct",
            Controller::Cpuset => "cpuset",
            Controller::Memory => "memory",
            Controller::Pids => "pids",
        }
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The cgroup interface a hierarchy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V1,
    V2,
}

/// How the controllers precog uses are mounted, found per controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Only v1 hierarchies: each controller at its mount point (co-mounted controllers such as
    /// `cpu,cpuacct` share one).
    V1 {
        mounts: BTreeMap<Controller, PathBuf>,
    },
    /// One v2 hierarchy at `root` with the controllers it offers.
    V2 {
        root: PathBuf,
        controllers: Vec<Controller>,
    },
    /// v1 hierarchies plus a v2 mount at `unified`; `v2_controllers` are the ones v2 holds.
    Hybrid {
        v1: BTreeMap<Controller, PathBuf>,
        unified: PathBuf,
        v2_controllers: Vec<Controller>,
    },
}

impl Layout {
    /// Finds the layout under `sys_root` (normally `/sys/fs/cgroup`); `None` when no controller
    /// precog uses is mounted there.
    pub fn probe(sys_root: &Path) -> Option<Layout> {
        if sys_root.join("cgroup.controllers").is_file() {
            let controllers = v2_controllers(sys_root);
            return Some(Layout::V2 {
                root: sys_root.to_path_buf(),
                controllers,
            });
        }

        let mut v1 = BTreeMap::new();
        for c in Controller::ALL {
            let dir = sys_root.join(c.name());
            // A v1 hierarchy root always has `tasks`; v2 never does.
            if dir.join("tasks").is_file() {
                v1.insert(c, dir);
            }
        }

        let unified = sys_root.join("unified");
        if unified.join("cgroup.controllers").is_file() {
            let v2: Vec<Controller> = v2_controllers(&unified)
                .into_iter()
                .filter(|c| !v1.contains_key(c))
                .collect();
            return Some(Layout::Hybrid {
                v1,
                unified,
                v2_controllers: v2,
            });
        }
        if v1.is_empty() {
            None
        } else {
            Some(Layout::V1 { mounts: v1 })
        }
    }

    /// The hierarchies precog uses: each mount point once, with its version and the controllers
    /// it carries.
    pub fn hierarchies(&self) -> Vec<(Version, PathBuf, Vec<Controller>)> {
        let mut out: Vec<(Version, PathBuf, Vec<Controller>)> = Vec::new();
        let mut add_v1 = |mounts: &BTreeMap<Controller, PathBuf>| {
            for (c, dir) in mounts {
                // Co-mounted controllers are reached through symlinks to the same directory.
                let real = dir.canonicalize().unwrap_or_else(|_| dir.clone());
                let same = |p: &PathBuf| p.canonicalize().unwrap_or_else(|_| p.clone()) == real;
                match out.iter_mut().find(|(_, p, _)| same(p)) {
                    Some(h) => h.2.push(*c),
                    None => out.push((Version::V1, dir.clone(), vec![*c])),
                }
            }
        };
        match self {
            Layout::V1 { mounts } => add_v1(mounts),
            Layout::V2 { root, controllers } => {
                out.push((Version::V2, root.clone(), controllers.clone()));
            }
            Layout::Hybrid {
                v1,
                unified,
                v2_controllers,
            } => {
                add_v1(v1);
                if !v2_controllers.is_empty() {
                    out.push((Version::V2, unified.clone(), v2_controllers.clone()));
                }
            }
        }
        out
    }

    /// A short name for logs: `v1`, `v2` or `v1 (hybrid)`.
    pub fn kind(&self) -> &'static str {
        match self {
            Layout::V1 { .. } => "v1",
            Layout::V2 { .. } => "v2",
            Layout::Hybrid { v2_controllers, .. } if v2_controllers.is_empty() => "v1 (hybrid)",
            Layout::Hybrid { .. } => "hybrid",
        }
    }
}

/// The controllers a v2 directory offers, from its `cgroup.controllers`.
fn v2_controllers(dir: &Path) -> Vec<Controller> {
    let text = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let mut out = Vec::new();
    for name in text.split_whitespace() {
        match name {
            "cpu" => out.extend([Controller::Cpu, Controller::CpuAcct]),
            "cpuset" => out.push(Controller::Cpuset),
            "memory" => out.push(Controller::Memory),
            "pids" => out.push(Controller::Pids),
            _ => {}
        }
    }
    out
}

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub hierarchy: u32,
    /// Empty for the v2 line (`0::/path`).
    pub controllers: Vec<String>,
    /// The cgroup's path from the hierarchy's root, starting with `/`.
    pub path: String,
}

/// Parses `/proc/<pid>/cgroup`; lines that do not have three fields are skipped.
pub fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut it = line.splitn(3, ':');
            let hierarchy = it.next()?.parse().ok()?;
            let controllers = it.next()?;
            let path = it.next()?;
            Some(Membership {
                hierarchy,
                controllers: controllers
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

/// The path of the cgroup a process is in for a hierarchy carrying `controllers`: the v1 line
/// naming the first of them, or the v2 line (`0::`) for a v2 hierarchy.
pub fn own_path<'a>(
    memberships: &'a [Membership],
    version: Version,
    controllers: &[Controller],
) -> Option<&'a str> {
    let line = match version {
        Version::V2 => memberships
            .iter()
            .find(|m| m.hierarchy == 0 && m.controllers.is_empty()),
        Version::V1 => {
            let first = controllers.first()?.name();
            memberships
                .iter()
                .find(|m| m.controllers.iter().any(|c| c == first))
        }
    };
    line.map(|m| m.path.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/536b\n\
                          3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n0::/\n";
    const V2: &str = "0::/system.slice/precogd.service\n";
    const V1: &str = "12:cpu,cpuacct:/system.slice/precogd.service\n\
                      5:memory:/system.slice/precogd.service\n1:name=systemd:/x\n";

    #[test]
    fn parses_hybrid_proc_cgroup() {
        let m = parse_proc_cgroup(HYBRID);
        assert_eq!(m.len(), 7);
        assert_eq!(
            own_path(&m, Version::V1, &[Controller::Memory]),
            Some("/process_api/536b")
        );
        assert_eq!(own_path(&m, Version::V1, &[Controller::Cpu]), Some("/"));
        assert_eq!(own_path(&m, Version::V2, &[]), Some("/"));
    }

    #[test]
    fn parses_v2_proc_cgroup() {
        let m = parse_proc_cgroup(V2);
        assert_eq!(
            own_path(&m, Version::V2, &[Controller::Cpu]),
            Some("/system.slice/precogd.service")
        );
        assert_eq!(own_path(&m, Version::V1, &[Controller::Cpu]), None);
    }

    #[test]
    fn parses_v1_comounted_proc_cgroup() {
        let m = parse_proc_cgroup(V1);
        assert_eq!(m[0].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(
            own_path(&m, Version::V1, &[Controller::CpuAcct]),
            Some("/system.slice/precogd.service")
        );
        assert_eq!(own_path(&m, Version::V1, &[Controller::Pids]), None);
    }

    #[test]
    fn path_with_colon_is_kept_whole() {
        let m = parse_proc_cgroup("0::/a:b\n");
        assert_eq!(m[0].path, "/a:b");
    }

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "").unwrap();
    }

    #[test]
    fn probes_hybrid_tree() {
        let t = tempfile::tempdir().unwrap();
        for c in ["cpu", "cpuacct", "cpuset", "memory", "pids"] {
            touch(&t.path().join(c).join("tasks"));
        }
        std::fs::create_dir_all(t.path().join("unified")).unwrap();
        std::fs::write(t.path().join("unified/cgroup.controllers"), "hugetlb\n").unwrap();

        let layout = Layout::probe(t.path()).unwrap();
        assert_eq!(layout.kind(), "v1 (hybrid)");
        let h = layout.hierarchies();
        assert_eq!(h.len(), 5);
        assert!(h.iter().all(|(v, _, _)| *v == Version::V1));
    }

    #[test]
    fn probes_v2_tree() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        )
        .unwrap();
        let layout = Layout::probe(t.path()).unwrap();
        assert_eq!(layout.kind(), "v2");
        let h = layout.hierarchies();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].2.len(), 5);
    }

    #[test]
    fn probes_comounted_v1_as_one_hierarchy() {
        let t = tempfile::tempdir().unwrap();
        touch(&t.path().join("cpu,cpuacct/tasks"));
        std::os::unix::fs::symlink("cpu,cpuacct", t.path().join("cpu")).unwrap();
        std::os::unix::fs::symlink("cpu,cpuacct", t.path().join("cpuacct")).unwrap();
        touch(&t.path().join("memory/tasks"));

        let layout = Layout::probe(t.path()).unwrap();
        assert_eq!(layout.kind(), "v1");
        let h = layout.hierarchies();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].2, vec![Controller::Cpu, Controller::CpuAcct]);
    }

    #[test]
    fn hybrid_with_v2_memory_uses_unified_for_it() {
        let t = tempfile::tempdir().unwrap();
        touch(&t.path().join("cpu/tasks"));
        std::fs::create_dir_all(t.path().join("unified")).unwrap();
        std::fs::write(t.path().join("unified/cgroup.controllers"), "memory pids\n").unwrap();
        let layout = Layout::probe(t.path()).unwrap();
        assert_eq!(layout.kind(), "hybrid");
        let h = layout.hierarchies();
        assert_eq!(h[1].0, Version::V2);
        assert_eq!(h[1].2, vec![Controller::Memory, Controller::Pids]);
    }

    #[test]
    fn empty_tree_has_no_layout() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(Layout::probe(t.path()), None);
    }
}
