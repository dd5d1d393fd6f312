//! precogd: the precog daemon.
//!
//! Loads the layered configuration, starts the engine and its worker pools, serves the Unix
//! socket (its own or one passed by systemd) and the D-Bus control interface, tells systemd when
//! it is ready, reloads on SIGHUP or a D-Bus `Reload`, and stops gracefully on SIGTERM.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use nix::sys::signal::{SigHandler, SigSet, Signal};
use precog::cgroup::{CgroupError, Cgroups};
use precog::cli::{self, DaemonArgs};
use precog::config::{self, Config, Source};
use precog::control::{self, ReloadRequest};
use precog::engine::{self, EngineHandle, EngineParts};
use precog::predict::Predictor;
use precog::server::{self, Access, ServerSettings, systemd};
use precog::store::{ResultCache, SetAside, StateStore, StoreError};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

mod check;

fn main() -> ExitCode {
    // Until `run` takes SIGHUP over, its default action would end precogd: one sent while it
    // starts (a reload asked for during a restart) waits, blocked, and is a reload once it serves.
    let _ = SigSet::from(Signal::SIGHUP).thread_block();
    // Under a file-size limit (systemd's LimitFSIZE=, `ulimit -f`), a write past it would end
    // precogd with SIGXFSZ; ignored, it fails with EFBIG instead, and the store or the model
    // save that made it says so as for a full disk. Workers get the default action back.
    // SAFETY: setting a signal to be ignored installs no handler; nothing runs on it.
    let _ = unsafe { nix::sys::signal::signal(Signal::SIGXFSZ, SigHandler::SigIgn) };
    let args = DaemonArgs::parse();
    let sink = precog::logging::init(args.verbose);

    let (config, sources) = match load_config(&args) {
        Ok(loaded) => loaded,
        Err(e) => {
            for line in e.to_string().lines() {
                eprintln!("precogd: {line}");
            }
            return ExitCode::from(2);
        }
    };
    if let Some(addr) = &config.daemon.metrics_listen
        && let Err(e) = precog::metrics::listen_addr(addr)
    {
        eprintln!("precogd: {e}");
        return ExitCode::from(2);
    }
    if args.check_config {
        return check::check_config(&config, &sources);
    }
    let refused = check::host_errors(&config, &sources);
    if !refused.is_empty() {
        for e in &refused {
            eprintln!("precogd: {e}");
        }
        return ExitCode::from(2);
    }
    check::warn_at_start(&config);
    tracing::debug!(?sink, "logging set up");

    // One thread serves every task. A request crosses several tasks (connection, engine, pool,
    // worker pipe); on one thread each crossing is a task switch, where on several it is a
    // thread wake-up, which on a virtual machine costs tens of microseconds.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("precogd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The file that replaces the built-in configuration's system layer, and whether it was named
/// (then it must exist).
fn config_path(args: &DaemonArgs) -> (&Path, bool) {
    match &args.config {
        Some(path) => (path, true),
        None => (Path::new(config::SYSTEM_PATH), false),
    }
}

/// Reads the configuration layers and adapts paths for an unprivileged run; returns the layers
/// read too, to place what later checks find.
fn load_config(args: &DaemonArgs) -> Result<(Config, Vec<Source>), config::ConfigError> {
    let (path, explicit) = config_path(args);
    let sources = config::sources(path, explicit)?;
    let mut cfg = config::load_sources(&sources)?;
    if !nix::unistd::geteuid().is_root() {
        let builtin = Config::builtin();
        let (runtime, cache, state) = user_dirs();
        let mut user = cfg.clone();
        user.use_user_paths(&runtime, &cache, &state);
        // Only paths still at the system defaults move; a configured path is kept.
        if cfg.daemon.socket == builtin.daemon.socket {
            cfg.daemon.socket = user.daemon.socket;
        }
        if cfg.daemon.cache_dir == builtin.daemon.cache_dir {
            cfg.daemon.cache_dir = user.daemon.cache_dir;
        }
        if cfg.daemon.state_dir == builtin.daemon.state_dir {
            cfg.daemon.state_dir = user.daemon.state_dir;
        }
        if cfg.daemon.socket_group == builtin.daemon.socket_group {
            cfg.daemon.socket_group = None;
        }
    }
    if let Some(socket) = &args.socket {
        cfg.daemon.socket = socket.clone();
    }
    Ok((cfg, sources))
}

/// The per-user runtime, cache and state directories (XDG, with the usual fallbacks).
fn user_dirs() -> (PathBuf, PathBuf, PathBuf) {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let env_dir = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let runtime = cli::user_runtime_dir();
    let cache = env_dir("XDG_CACHE_HOME").unwrap_or_else(|| home.join(".cache"));
    let state = env_dir("XDG_STATE_HOME").unwrap_or_else(|| home.join(".local/state"));
    (runtime, cache, state)
}

/// Makes `dir` with mode 0700, or takes it as it is if this user owns it and closes it to
/// others. It sits in the shared temporary directory, where another user could have made it (or
/// a link by its name) first to capture the socket: then the start stops.
fn claim_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    let foreign = cli::foreign_runtime_dir(dir)
        .with_context(|| format!("cannot read the owner of {}", dir.display()))?;
    if let Some(why) = foreign {
        anyhow::bail!(
            "{} {why}: another user may have made it to capture precogd's socket; remove it, or \
             set XDG_RUNTIME_DIR or daemon.socket",
            dir.display()
        )
    }
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("cannot read the mode of {}", dir.display()))?
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot close {} to other users", dir.display()))?;
    }
    Ok(())
}

/// The directories between the claimed runtime directory and the socket (`precog/`) must be
/// this user's own too: one made, or linked elsewhere, while the runtime directory was still
/// open to others would let their owner swap the socket.
fn refuse_foreign_dirs_within(runtime: &Path, socket: &Path) -> anyhow::Result<()> {
    let inner = socket
        .ancestors()
        .skip(1)
        .take_while(|d| d.starts_with(runtime) && *d != runtime);
    for dir in inner {
        let foreign = cli::foreign_runtime_dir(dir)
            .with_context(|| format!("cannot read the owner of {}", dir.display()))?;
        if let Some(why) = foreign {
            anyhow::bail!(
                "{} {why}: another user may have put it there to capture precogd's socket; \
                 remove it, or set XDG_RUNTIME_DIR or daemon.socket",
                dir.display()
            )
        }
    }
    Ok(())
}

/// Finds the cgroup subtree for the pools and clears what a crashed earlier run left there.
/// Without one, precog still runs; it says so once. A subtree another running precogd holds is
/// an error: clearing it would kill that daemon's workers.
fn setup_cgroups(cfg: &Config) -> anyhow::Result<Option<Cgroups>> {
    // systemd starts a service with Delegate=yes in its own `<unit>.service` cgroup and says so
    // with INVOCATION_ID; a daemon started by hand uses a parent cgroup of its own instead.
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let delegated = std::env::var_os("INVOCATION_ID").is_some()
        && own.lines().any(|l| l.trim_end().ends_with(".service"));
    let found = Cgroups::detect(
        Path::new("/sys/fs/cgroup"),
        Path::new("/proc"),
        &cfg.daemon.cgroup_parent,
        delegated,
    );
    match found {
        Ok(Some(cg)) => {
            match cg.remove_stale() {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "removed cgroups left by an earlier run"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot remove cgroups left by an earlier run")
                }
            }
            tracing::info!(cgroups = %cg.describe(), "worker pools run in cgroups");
            Ok(Some(cg))
        }
        Ok(None) => {
            tracing::warn!(
                "cgroups are unavailable or not delegated to this user; pools run without CPU \
                 and memory limits"
            );
            Ok(None)
        }
        Err(e @ CgroupError::InUse { .. }) => Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e,
                "cannot set up cgroups; pools run without CPU and memory limits");
            Ok(None)
        }
    }
}

/// Opens the result cache and the partial-state store. A store held by another precogd is an
/// error; any other failure (a full disk, say) is said once and precog runs without that store.
fn open_stores(
    cfg: &Config,
) -> anyhow::Result<(Result<ResultCache, String>, Result<StateStore, String>)> {
    fn report(which: &str, set_aside: &[SetAside]) {
        for s in set_aside {
            tracing::warn!(store = which, file = %s.path.display(), reason = %s.reason,
                "a damaged store file was set aside; starting with an empty store");
            for older in &s.removed {
                tracing::info!(store = which, file = %older.display(),
                    "removed a store file set aside earlier; only the latest is kept");
            }
        }
    }
    let d = &cfg.daemon;
    let cache = match ResultCache::open(&d.cache_dir, d.cache_size.0) {
        Ok((c, aside)) => {
            report("result cache", &aside);
            Ok(c)
        }
        Err(e @ StoreError::Locked { .. }) => return Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e.with_causes(), "running without a result cache");
            Err(e.with_causes())
        }
    };
    let state_capacity = (d.cache_size.0 / 8).max(4 << 20);
    let states = match StateStore::open(&d.state_dir, state_capacity, d.state_max.0 as usize) {
        Ok((s, aside)) => {
            report("partial-state store", &aside);
            Ok(s)
        }
        Err(e @ StoreError::Locked { .. }) => return Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e.with_causes(), "running without a partial-state store");
            Err(e.with_causes())
        }
    };
    Ok((cache, states))
}

/// The predictor with the model saved by an earlier run; a damaged file is set aside.
fn load_predictor(cfg: &Config) -> Predictor {
    let mut predictor = Predictor::new(cfg);
    let path = cfg.daemon.state_dir.join("model.bin");
    let Ok(bytes) = std::fs::read(&path) else {
        return predictor;
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    match predictor.load(&bytes, now_ms) {
        Ok(mended) => {
            tracing::info!(file = %path.display(), "model loaded");
            if mended.long_names > 0 {
                tracing::warn!(
                    names = mended.long_names,
                    "the saved model had names over the length limit; they were dropped"
                );
            }
            if mended.future_times > 0 {
                tracing::warn!(
                    counts = mended.future_times,
                    "the saved model had times ahead of the clock; they were set to now"
                );
            }
        }
        Err(e) => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let aside = path.with_extension(format!("bin.bad-{secs}"));
            let _ = std::fs::rename(&path, &aside);
            tracing::warn!(file = %aside.display(), "{e}; set aside, learning afresh");
            predictor = Predictor::new(cfg);
        }
    }
    predictor
}

fn server_settings(cfg: &Config) -> Arc<ServerSettings> {
    Arc::new(ServerSettings {
        max_connections: cfg.daemon.max_connections,
        max_line: cfg.daemon.max_line.0 as usize,
        idle_close: cfg.daemon.idle_close.0.max(Duration::from_secs(1)),
        access: Access::resolve(&cfg.daemon.allowed_users, &cfg.daemon.allowed_groups),
    })
}

async fn run(args: DaemonArgs, cfg: Config) -> anyhow::Result<()> {
    // Taken over before anything is set up: a SIGTERM while the pools warm up must stop the
    // daemon gracefully too (the default action would leave its cgroups behind).
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let _ = SigSet::from(Signal::SIGHUP).thread_unblock();
    let (listener, own_socket) = match systemd::take_listen_fd() {
        Some(fd) => (server::from_systemd(fd)?, None),
        None => {
            let shared = cli::fallback_runtime_dir();
            if !nix::unistd::geteuid().is_root() && cfg.daemon.socket.starts_with(&shared) {
                claim_private_dir(&shared)?;
                refuse_foreign_dirs_within(&shared, &cfg.daemon.socket)?;
            }
            let group = cfg.daemon.socket_group.as_deref();
            let l = server::bind(&cfg.daemon.socket, cfg.daemon.socket_mode.0, group)?;
            (l, Some(cfg.daemon.socket.clone()))
        }
    };
    // Removed when `run` returns, whether the daemon stopped or failed to start.
    let socket_file = own_socket.clone().map(SocketFile);

    // Bound before the stores, cgroups and workers: an address another process holds stops the
    // start here, with nothing set up yet to leave behind.
    let metrics = match &cfg.daemon.metrics_listen {
        Some(addr) => {
            let addr = precog::metrics::listen_addr(addr)?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for /metrics on {addr}"))?;
            tracing::info!(%addr, "serving /metrics");
            Some(listener)
        }
        None => None,
    };

    let (cache, states) = open_stores(&cfg)?;
    let parts = EngineParts {
        cgroups: setup_cgroups(&cfg)?,
        cache,
        states,
        predictor: load_predictor(&cfg),
    };
    let engine = engine::start(cfg.clone(), parts).context("cannot start the engine")?;
    engine.wait_warm(Duration::from_secs(10)).await;

    let (settings_tx, settings_rx) = watch::channel(server_settings(&cfg));
    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(metrics) = metrics {
        tokio::spawn(serve_metrics(metrics, engine.clone()));
    }

    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(4);
    // Kept alive until the daemon stops; dropping it leaves the bus.
    let _control = match control::serve(engine.clone(), &args.bus, reload_tx).await {
        Ok(service) => service,
        Err(e) => {
            let cause = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            tracing::warn!("running without the D-Bus interface: {e}{cause}");
            None
        }
    };

    // Serving starts once everything else is up: the metrics listener and the bus.
    let server = tokio::spawn(server::serve(
        listener,
        engine.clone(),
        settings_rx,
        stop_rx,
    ));

    let where_ = own_socket
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "the socket passed by systemd".into());
    tracing::info!(socket = %where_, pools = cfg.pools.len(), "precogd ready");
    systemd::notify(&format!("READY=1\nSTATUS=serving on {where_}"));

    let watchdog = systemd::watchdog_interval();
    let mut dog = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let grace = cfg.daemon.shutdown_grace.0;

    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let reloading = reload(&args, &engine, &settings_tx);
                let mut stop = Stop { term: &mut term, int: &mut int, dog: &mut dog, watchdog };
                match stop.unless_stopped(reloading).await {
                    None => break,
                    Some(Err(e)) => tracing::error!("{e}"),
                    Some(Ok(())) => {}
                }
            }
            Some(done) = reload_rx.recv() => {
                let reloading = reload(&args, &engine, &settings_tx);
                let mut stop = Stop { term: &mut term, int: &mut int, dog: &mut dog, watchdog };
                let Some(result) = stop.unless_stopped(reloading).await else {
                    break;
                };
                if let Err(e) = &result {
                    // Logged here too: the caller is one client, the journal is the record.
                    tracing::error!("{e}");
                }
                let _ = done.send(result);
            }
            _ = dog.tick(), if watchdog.is_some() => systemd::notify("WATCHDOG=1"),
        }
    }

    tracing::info!("stopping");
    systemd::notify("STOPPING=1");
    let _ = stop_tx.send(true);
    let _ = server.await;
    engine.shutdown(grace).await;
    drop(socket_file);
    tracing::info!("stopped");
    Ok(())
}

/// The socket file precogd made, removed when dropped: at a stop, and when a start fails after
/// the bind (a store or cgroup subtree held by another precogd, an engine that cannot start).
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What ends precogd, and the watchdog it keeps fed, while it waits for something else.
struct Stop<'a> {
    term: &'a mut tokio::signal::unix::Signal,
    int: &'a mut tokio::signal::unix::Signal,
    dog: &'a mut tokio::time::Interval,
    watchdog: Option<Duration>,
}

impl Stop<'_> {
    /// `work`'s output, or `None` when SIGTERM or SIGINT came first: a reload stuck reading a
    /// file does not keep precogd from stopping, nor from feeding the watchdog.
    async fn unless_stopped<T>(&mut self, work: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return Some(out),
                _ = self.term.recv() => return None,
                _ = self.int.recv() => return None,
                _ = self.dog.tick(), if self.watchdog.is_some() => systemd::notify("WATCHDOG=1"),
            }
        }
    }
}

/// Reads the configuration, and checks what only this host can tell, on a thread of its own, so
/// a file that blocks (a FIFO, a hung network mount) holds up that thread, not the runtime that
/// serves requests. The thread is not waited for at exit.
async fn load_config_aside(args: &DaemonArgs) -> Result<Config, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let args = args.clone();
    std::thread::Builder::new()
        .name("precogd-config".into())
        .spawn(move || {
            let loaded = load_config(&args).map_err(|e| e.to_string());
            let checked = loaded.and_then(|(cfg, sources)| {
                let refused = check::host_errors(&cfg, &sources);
                if refused.is_empty() {
                    Ok(cfg)
                } else {
                    Err(refused.join("\n"))
                }
            });
            let _ = tx.send(checked);
        })
        .map_err(|e| format!("cannot start a thread to read the configuration: {e}"))?;
    match rx.await {
        Ok(checked) => checked,
        Err(_) => Err("reading the configuration failed".into()),
    }
}

/// Reloads the configuration; SIGHUP and the D-Bus `Reload` method both come here.
async fn reload(
    args: &DaemonArgs,
    engine: &EngineHandle,
    settings_tx: &watch::Sender<Arc<ServerSettings>>,
) -> Result<(), String> {
    systemd::notify("RELOADING=1");
    let result = match load_config_aside(args).await {
        Ok(new) => match engine.reload(new.clone()).await {
            Ok(()) => {
                let _ = settings_tx.send(server_settings(&new));
                Ok(())
            }
            Err(e) => Err(format!("configuration not reloaded: {e}")),
        },
        Err(e) => Err(format!(
            "configuration not reloaded, keeping the old one: {e}"
        )),
    };
    systemd::notify("READY=1");
    result
}

/// Answers scrapers on the loopback `/metrics` listener: one request per connection, a few
/// connections at a time, each given a few seconds.
async fn serve_metrics(listener: tokio::net::TcpListener, engine: EngineHandle) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let slots = Arc::new(tokio::sync::Semaphore::new(8));
    let mut accept_pause = server::AcceptPause::new("metrics");
    loop {
        let mut conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                accept_pause.after_failure(&e).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            let read = async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(5), read)
                .await
                .is_err()
            {
                return;
            }
            let stats = engine.snapshot().await.unwrap_or_default();
            let text = String::from_utf8_lossy(&head);
            let reply = precog::metrics::http_response(&text, || precog::metrics::render(&stats));
            let _ = conn.write_all(reply.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}
