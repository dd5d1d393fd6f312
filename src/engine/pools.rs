//! The engine's pools: built from the configuration at start, with their cgroups, and brought
//! in line with a new configuration on reload (a `SIGHUP`, the control interface's `Reload`, or
//! `set-pool`).

use std::collections::HashMap;
use std::sync::Arc;

use super::{Engine, EngineError};
use crate::cgroup::PoolLimits;
use crate::config::{Config, PoolConfig};
use crate::pool::{CgroupPlacement, Placement, Pool, PoolSettings};

/// A pool's settings from the configuration: its worker command resolved, its worker user
/// looked up.
pub(super) fn pool_settings(cfg: &Config, p: &PoolConfig) -> Result<PoolSettings, EngineError> {
    let err = |source| EngineError::Pool {
        pool: p.name.clone(),
        source,
    };
    let program = crate::pool::resolve_command(&p.command[0]).map_err(err)?;
    let identity = match (&cfg.daemon.worker_user, nix::unistd::geteuid().is_root()) {
        (Some(user), true) => Some(crate::pool::lookup_user(user).map_err(err)?),
        _ => None,
    };
    let mut settings = PoolSettings {
        name: p.name.clone(),
        program,
        args: p.command[1..].to_vec(),
        cpus: p.cpus.as_ref().map(|c| c.0.clone()),
        timeout: p.timeout.0,
        start_timeout: p.start_timeout.0,
        warm_min: p.warm_min,
        workers_max: p.workers_max,
        queue_max: cfg.daemon.queue_max,
        identity,
        watch: p.watch.clone(),
        code_parts: Vec::new(),
        code: 0,
    };
    settings.set_code(crate::pool::look(&settings.code_files()));
    Ok(settings)
}

/// Refuses pools pinned only to CPUs precogd may not use (none of their workers could start),
/// and narrows those pinned to some to the ones it may, with a warning.
pub(super) fn fit_cpus(cfg: &mut Config) -> Result<(), EngineError> {
    let Some(allowed) = crate::pool::usable_cpus() else {
        return Ok(());
    };
    // The first refusal is enough here: the host checks before a start or a reload name all.
    let fitted = crate::config::fit_cpus(cfg, &allowed).map_err(|mut refused| refused.remove(0));
    for note in fitted? {
        tracing::warn!("{note}");
    }
    Ok(())
}

/// Warns when the pools' reservations leave the allocator no memory budget to share.
pub(super) fn warn_of_budget(cfg: &Config) {
    if let Some(note) = crate::config::budget_note(cfg) {
        tracing::warn!("{note}");
    }
}

/// Removes the cgroup of a pool a reload removed, once its workers are gone, unless a pool
/// added again under its name uses the same directory. Emptying and removing a cgroup waits on
/// the kernel, so it runs on a blocking thread.
async fn release_cgroup(name: String, placement: Arc<CgroupPlacement>) {
    let released = tokio::task::spawn_blocking(move || placement.pool().release()).await;
    match released {
        Ok(Ok(())) => tracing::debug!(pool = %name, "a removed pool's cgroup was released"),
        Ok(Err(e)) => tracing::warn!(pool = %name, error = %e,
            "cannot remove the cgroup of a pool a reload removed"),
        Err(e) => tracing::warn!(pool = %name, error = %e,
            "removing the cgroup of a pool a reload removed failed"),
    }
}

impl Engine {
    /// A pool's settings and its cgroup (when cgroups are in use), made but not yet started.
    pub(super) fn prepare_pool(
        &mut self,
        p: &PoolConfig,
    ) -> Result<(PoolSettings, Option<Arc<dyn Placement>>), EngineError> {
        let settings = pool_settings(&self.config, p)?;
        Ok((settings, self.pool_cgroup(p)?))
    }

    /// The pool's cgroup, made with its configured limits, when cgroups are in use.
    fn pool_cgroup(&mut self, p: &PoolConfig) -> Result<Option<Arc<dyn Placement>>, EngineError> {
        let mut placement: Option<Arc<dyn Placement>> = None;
        if let Some(cg) = &self.cgroups {
            match cg.create_pool(&p.name, &PoolLimits::from_config(p)) {
                Ok(pool_cg) => {
                    let pl = Arc::new(CgroupPlacement::new(pool_cg));
                    self.placements.insert(p.name.clone(), pl.clone());
                    placement = Some(pl);
                }
                // A container or host without the controller: the pool still serves, unfenced.
                Err(e @ crate::cgroup::CgroupError::MissingController { .. }) => {
                    tracing::warn!(pool = %p.name, error = %e,
                        "pool runs without a cgroup; its CPU and memory limits are not enforced");
                }
                Err(source) => {
                    return Err(EngineError::Cgroup {
                        pool: p.name.clone(),
                        source,
                    });
                }
            }
        }
        Ok(placement)
    }

    pub(super) fn reload(&mut self, mut config: Config) -> Result<(), String> {
        let left = config.daemon.keep_start_only(&self.config.daemon);
        let describe = |e: EngineError| match std::error::Error::source(&e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        };
        // All that can fail comes first, so a refused configuration changes nothing.
        fit_cpus(&mut config).map_err(describe)?;
        let mut settings = Vec::with_capacity(config.pools.len());
        for p in &config.pools {
            settings.push(pool_settings(&config, p).map_err(describe)?);
        }
        let mut added = HashMap::new();
        for p in &config.pools {
            if self.pools.contains_key(&p.name) {
                continue;
            }
            match self.pool_cgroup(p) {
                Ok(placement) => {
                    added.insert(p.name.clone(), placement);
                }
                Err(e) => {
                    // The cgroups made for the other new pools go too: nothing runs in them.
                    for name in added.keys() {
                        if let Some(pl) = self.placements.remove(name)
                            && let Err(e) = pl.pool().release()
                        {
                            tracing::warn!(pool = %name, error = %e,
                                "cannot remove the cgroup of a pool a refused reload added");
                        }
                    }
                    return Err(describe(e));
                }
            }
        }
        for (p, mut settings) in config.pools.iter().zip(settings) {
            match self.pools.get(&p.name) {
                Some(pool) => {
                    // The same command keeps its stamp: the pool takes a change of its files
                    // on disk once it holds, and a file gone or half-written is no reason to
                    // replace the workers running the old one.
                    let running = pool.settings();
                    if running.same_code_files(&settings) {
                        settings.set_code(running.code_parts);
                    }
                    pool.reconfigure(settings);
                    // The last plan, clamped to the new bounds: a `warm_min` raised and lowered
                    // again must not leave the pool at the count the raise clamped it to.
                    pool.set_target_warm(self.planned_warm(&p.name).unwrap_or(0));
                    if let Some(old) = self.config.pool(&p.name).cloned() {
                        self.limits_reconfigured(&old, p, &config.budget);
                    }
                }
                None => {
                    self.tuning.forget_pool(&p.name);
                    let placement = added.remove(&p.name).flatten();
                    self.pools
                        .insert(p.name.clone(), Pool::start(settings, placement));
                }
            }
        }
        let gone: Vec<String> = self
            .pools
            .keys()
            .filter(|n| config.pool(n).is_none())
            .cloned()
            .collect();
        // A removed pool's running jobs get the same grace as at a stop.
        let grace = self.config.daemon.shutdown_grace.0;
        for name in gone {
            self.tuning.forget_pool(&name);
            if let Some(pool) = self.pools.remove(&name) {
                let placement = self.placements.remove(&name);
                tokio::spawn(async move {
                    pool.shutdown(grace).await;
                    if let Some(placement) = placement {
                        release_cgroup(name, placement).await;
                    }
                });
            }
        }
        self.predictor.reconfigure(&config);
        warn_of_budget(&config);
        let changed = crate::config::changes(&self.config, &config);
        self.config = config;
        self.end_evicted_sessions();
        let changed = if changed.is_empty() {
            "nothing".to_string()
        } else {
            changed.join("; ")
        };
        tracing::info!(pools = self.pools.len(), %changed, "configuration reloaded");
        if !left.is_empty() {
            tracing::warn!(
                keys = %left.join(", "),
                "the reload left changed [daemon] keys as they were; restart precogd to apply them"
            );
        }
        Ok(())
    }
}
