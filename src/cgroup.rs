//! (module cgroup: filled in by its own change.)
