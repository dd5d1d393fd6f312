//! precog: runs a web shop's small units of work before they are asked for.
//!
//! App servers tell the daemon what each visitor does; precog predicts which micro-processes the
//! visitor needs next, runs the likely ones ahead of time in warm worker processes inside cgroups,
//! keeps the results in memory-mapped files and answers `run` requests from them.
//!
//! The modules follow the parts of the design, with imports flowing one way: the pure parts
//! (`config`, `protocol`, `profile`, `predict`, `partition`, `alloc`, `tune`) import nothing with
//! I/O; `cgroup`, `store` and `pool` own the kernel, the files and the worker processes; `engine`
//! ties them together behind one owner; `server` and `control` are the socket and D-Bus edges.

pub mod alloc;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod control;
pub mod engine;
pub mod eval;
pub mod logging;
pub mod metrics;
pub mod partition;
pub mod pool;
pub mod predict;
pub mod profile;
pub mod protocol;
pub mod server;
pub mod store;
pub mod tune;
