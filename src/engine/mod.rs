//! The engine: the one owner of precog's mutable state, fed by messages.
//!
//! Every stimulus — a client request, a finished job, a timer tick, a reload, a control call —
//! becomes one [`Command`] on a channel to a single task that owns the configuration, the pools,
//! the in-flight jobs and the counters. Nothing it does blocks: a `run` that needs a worker is
//! handed to the pool, and the job's outcome comes back later as another message (on a channel
//! of its own, read first), so the loop stays free for the next request. What a command teaches
//! (a run for the predictor, a result for the cache, a job's figures for the tuner) is learnt
//! after the tasks it woke have run: a reply or a job to a worker never waits for bookkeeping.
//! The socket server and the D-Bus interface only forward.

mod control;
mod model;
mod pools;
mod predict;
mod run;
mod speculative;
mod stats;
mod stored;
mod tuning;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::cgroup::{Cgroups, PoolLimits};
use crate::config::Config;
use crate::pool::{CgroupPlacement, JobOutcome, Pool, PoolError};
use crate::predict::Predictor;
use crate::protocol::{ErrorCode, ErrorReply, Op, PROTOCOL_VERSION};
use crate::store::{ResultCache, StateStore};

pub use control::{ControlOp, EngineEvent};
pub use run::JobKey;
pub use stats::Counters;

/// Who sent a request, from the socket's peer credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

pub type Reply = Result<Map<String, Value>, ErrorReply>;

/// A message to the engine.
pub enum Command {
    Request {
        op: Op,
        client: Client,
        received: Instant,
        reply: oneshot::Sender<Reply>,
    },
    JobDone {
        key: JobKey,
        /// Which submission of the key this is; a replaced one's report is ignored.
        seq: u64,
        outcome: JobOutcome,
    },
    /// A job's checkpoint: the latest one its worker wrote waits in `latest`.
    Checkpoint {
        key: Vec<u8>,
        latest: Arc<Mutex<Option<Value>>>,
    },
    Tick,
    /// New limits reached a pool's cgroup, or were refused.
    LimitsWritten {
        pool: String,
        /// The limits in force now: those written, or after a refusal what the cgroup holds,
        /// read back (the settings before and after the refused one were still written).
        limits: PoolLimits,
        result: Result<(), String>,
    },
    Reload {
        config: Box<Config>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Snapshot {
        reply: oneshot::Sender<Value>,
    },
    Control {
        op: ControlOp,
        reply: oneshot::Sender<Result<Value, String>>,
    },
    Shutdown {
        grace: Duration,
        done: oneshot::Sender<()>,
    },
}

/// A cheap, cloneable way to talk to the engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    events: broadcast::Sender<EngineEvent>,
    errors: Arc<stats::ErrorCounts>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("pool `{pool}` cannot be set up")]
    Pool {
        pool: String,
        #[source]
        source: PoolError,
    },
    #[error("the cgroup of pool `{pool}` cannot be set up")]
    Cgroup {
        pool: String,
        #[source]
        source: crate::cgroup::CgroupError,
    },
    #[error(transparent)]
    Cpus(#[from] crate::config::UnusableCpus),
}

impl EngineHandle {
    /// Sends a request and returns where its reply will arrive. Waits when the engine is
    /// saturated, which is the server's backpressure.
    pub async fn request(&self, op: Op, client: Client) -> oneshot::Receiver<Reply> {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::Request {
            op,
            client,
            received: Instant::now(),
            reply: tx,
        };
        if let Err(mpsc::error::SendError(Command::Request { reply, .. })) = self.tx.send(cmd).await
        {
            self.count_error(ErrorCode::ShuttingDown);
            let _ = reply.send(Err(ErrorReply::new(
                ErrorCode::ShuttingDown,
                "precogd is stopping",
            )));
        }
        rx
    }

    /// Counts an error reply that did not come from the engine (`stats` shows it in `errors`).
    pub fn count_error(&self, code: ErrorCode) {
        self.errors.count(code);
    }

    pub async fn reload(&self, config: Config) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::Reload {
            config: Box::new(config),
            reply: tx,
        };
        if self.tx.send(cmd).await.is_err() {
            return Err("precogd is stopping".into());
        }
        rx.await
            .unwrap_or_else(|_| Err("precogd is stopping".into()))
    }

    /// Everything `stats` reports, for the control interface.
    pub async fn snapshot(&self) -> Option<Value> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Snapshot { reply: tx }).await.ok()?;
        rx.await.ok()
    }

    /// Waits until every pool has its warm workers up (or is backing off after failures), at
    /// most `limit`, so that the first requests find warm workers.
    pub async fn wait_warm(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            let Some(stats) = self.snapshot().await else {
                return;
            };
            let pools = stats["pools"].as_object().cloned().unwrap_or_default();
            let warm = pools.values().all(|p| {
                p["workers"].as_u64() >= p["target_warm"].as_u64()
                    || p["backoff_ms"].as_u64().unwrap_or(0) > 0
            });
            if warm {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Lets in-flight work finish within `grace`, stops the workers, and ends the engine.
    pub async fn shutdown(&self, grace: Duration) {
        let (tx, rx) = oneshot::channel();
        if self
            .tx
            .send(Command::Shutdown { grace, done: tx })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }
}

/// What the engine is built from, besides the configuration.
pub struct EngineParts {
    /// The cgroup subtree for the pools; `None` runs workers without cgroups.
    pub cgroups: Option<Cgroups>,
    /// The result cache, or why it could not be opened (precog then runs without one).
    pub cache: Result<ResultCache, String>,
    /// Partial states of interrupted jobs, or why they could not be opened (likewise).
    pub states: Result<StateStore, String>,
    /// The predictor, with what it learned in earlier runs already loaded.
    pub predictor: Predictor,
}

struct Engine {
    config: Config,
    pools: HashMap<String, Pool>,
    inflight: HashMap<JobKey, run::Inflight>,
    /// The partial-state keys of the jobs in flight, with how many hold each.
    running_states: HashMap<Vec<u8>, u32>,
    counters: Counters,
    started: Instant,
    /// Where the pools report finished jobs and checkpoints; unbounded, since a report must
    /// never wait or be lost. A job has at most its end and one checkpoint waiting here.
    done_tx: mpsc::UnboundedSender<Command>,
    events: broadcast::Sender<EngineEvent>,
    cgroups: Option<Cgroups>,
    placements: HashMap<String, Arc<CgroupPlacement>>,
    cache: Option<ResultCache>,
    states: Option<StateStore>,
    /// Why a store is off since start, for `stats`.
    cache_off: Option<String>,
    states_off: Option<String>,
    /// Stores whose failure was already logged.
    store_warned: std::collections::HashSet<&'static str>,
    predictor: Predictor,
    speculative: speculative::Speculative,
    spec: predict::SpeculationCounters,
    last_model_save: Instant,
    /// A save of the model under way, a slice at a time.
    model_save: Option<model::Saving>,
    /// A failed model save was reported; reset by one that succeeds.
    model_warned: Arc<std::sync::atomic::AtomicBool>,
    tuning: tuning::Tuning,
    /// Numbers each job submission, so a replaced job's late report is told apart.
    next_seq: u64,
    /// Bookkeeping owed for the last command, done after the tasks it woke have run.
    later: Vec<run::Later>,
}

/// Starts the engine task and its pools.
pub fn start(config: Config, parts: EngineParts) -> Result<EngineHandle, EngineError> {
    let (tx, rx) = mpsc::channel(4096);
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let (events, _) = broadcast::channel(256);
    let counters = Counters::default();
    let errors = counters.errors.clone();
    let mut engine = Engine {
        config: config.clone(),
        pools: HashMap::new(),
        inflight: HashMap::new(),
        running_states: HashMap::new(),
        counters,
        started: Instant::now(),
        done_tx,
        events: events.clone(),
        cgroups: parts.cgroups,
        placements: HashMap::new(),
        cache_off: parts.cache.as_ref().err().cloned(),
        states_off: parts.states.as_ref().err().cloned(),
        cache: parts.cache.ok(),
        states: parts.states.ok(),
        store_warned: Default::default(),
        predictor: parts.predictor,
        speculative: Default::default(),
        spec: Default::default(),
        last_model_save: Instant::now(),
        model_save: None,
        model_warned: Default::default(),
        next_seq: 0,
        tuning: Default::default(),
        later: Vec::new(),
    };
    // Whatever can fail comes before any worker starts, and a failure removes the cgroups made
    // so far: a daemon that cannot start leaves nothing behind.
    if let Err(e) = pools::fit_cpus(&mut engine.config) {
        engine.remove_cgroups();
        return Err(e);
    }
    pools::warn_of_budget(&engine.config);
    let config = engine.config.clone();
    let mut ready = Vec::new();
    for p in &config.pools {
        match engine.prepare_pool(p) {
            Ok(pool) => ready.push(pool),
            Err(e) => {
                engine.remove_cgroups();
                return Err(e);
            }
        }
    }
    for (settings, placement) in ready {
        let name = settings.name.clone();
        engine.pools.insert(name, Pool::start(settings, placement));
    }
    tokio::spawn(engine.run(rx, done_rx));
    let ticker = tx.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            every.tick().await;
            if ticker.send(Command::Tick).await.is_err() {
                return;
            }
        }
    });
    Ok(EngineHandle { tx, events, errors })
}

impl Engine {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut done_rx: mpsc::UnboundedReceiver<Command>,
    ) {
        loop {
            // Finished jobs first: their waiters are the requests that have waited longest.
            let cmd = tokio::select! {
                biased;
                Some(cmd) = done_rx.recv() => cmd,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => cmd,
                    None => break,
                },
                // Nothing waits: the model save under way gets a slice, and then the other
                // tasks (connections, workers) a turn, in which new requests may come.
                () = std::future::ready(()), if self.saving_model() => {
                    self.continue_model_save();
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            match cmd {
                Command::Request {
                    op,
                    client,
                    received,
                    reply,
                } => self.request(op, client, received, reply),
                Command::JobDone { key, seq, outcome } => self.job_done(key, seq, outcome),
                Command::Checkpoint { key, latest } => self.save_latest(&key, &latest),
                Command::Tick => self.tick(),
                Command::LimitsWritten {
                    pool,
                    limits,
                    result,
                } => self.limits_written(pool, limits, result),
                Command::Reload { config, reply } => {
                    self.restart_model_save();
                    let _ = reply.send(self.reload(*config));
                }
                Command::Snapshot { reply } => {
                    let _ = reply.send(Value::Object(self.stats()));
                }
                Command::Control { op, reply } => self.control(op, reply),
                Command::Shutdown { grace, done } => {
                    self.run_later();
                    rx.close();
                    let pools: Vec<Pool> = self.pools.values().cloned().collect();
                    for p in &pools {
                        let p = p.clone();
                        tokio::spawn(async move { p.shutdown(grace).await });
                    }
                    // Keep answering finished jobs until the pools have drained.
                    let deadline = crate::pool::later(
                        Instant::now(),
                        grace.saturating_add(Duration::from_secs(4)),
                    );
                    let deadline = tokio::time::Instant::from_std(deadline);
                    loop {
                        let live: usize = pools
                            .iter()
                            .map(|p| {
                                let s = p.stats();
                                s.workers + s.starting
                            })
                            .sum();
                        if live == 0 && self.inflight.is_empty() {
                            break;
                        }
                        tokio::select! {
                            Some(cmd) = done_rx.recv() => match cmd {
                                Command::JobDone { key, seq, outcome } => {
                                    self.job_done(key, seq, outcome);
                                    self.run_later();
                                }
                                Command::Checkpoint { key, latest } => {
                                    self.save_latest(&key, &latest)
                                }
                                _ => {}
                            },
                            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                            _ = tokio::time::sleep_until(deadline) => break,
                        }
                    }
                    self.save_model();
                    self.sync_stores();
                    self.remove_cgroups();
                    let _ = done.send(());
                    return;
                }
            }
            if !self.later.is_empty() {
                // The worker given a job and the connection given a reply go first.
                let_woken_tasks_run().await;
                self.run_later();
            }
        }
    }

    fn request(
        &mut self,
        op: Op,
        client: Client,
        received: Instant,
        reply: oneshot::Sender<Reply>,
    ) {
        self.counters.requests += 1;
        let answer = match op {
            Op::Ping => Ok(json_map(json!({
                "version": env!("CARGO_PKG_VERSION"),
                "protocol": PROTOCOL_VERSION,
            }))),
            Op::Stats => Ok(self.stats()),
            Op::Run {
                session,
                process,
                inputs,
            } => {
                // Answered now (cache, error) or later (when the job finishes).
                let session = scoped(client, &session);
                self.run_request(client, session, process, inputs, received, reply);
                return;
            }
            Op::Event(mut ev) => {
                ev.session = scoped(client, &ev.session);
                self.on_event(client, ev)
            }
            Op::Hint {
                session,
                predictions,
            } => self.on_hint(client, &scoped(client, &session), &predictions),
            Op::Predict { session, n } => self.on_predict(client, &scoped(client, &session), n),
            Op::End { session, outcome } => {
                self.on_end(&scoped(client, &session), outcome.as_deref())
            }
        };
        if let Err(e) = &answer {
            self.counters.count_error(e.code);
        }
        let _ = reply.send(answer);
    }
}

impl Engine {
    /// Removes precog's cgroups, with every pool's, once their workers are gone.
    fn remove_cgroups(&mut self) {
        self.placements.clear();
        if let Some(cg) = self.cgroups.take()
            && let Err(e) = cg.remove()
        {
            tracing::warn!(error = %e, "cannot remove precog's cgroups");
        }
    }

    /// Applies the prediction policy in `config.predict` plus an operator threshold, which the
    /// predictor keeps (pinned until the next reload).
    fn apply_policy(&mut self, threshold: Option<f64>) {
        let p = &self.config.predict;
        self.predictor
            .set_policy(Some(p.hot_path), threshold, Some(p.speculation));
    }

    fn policy_view(&self) -> Value {
        let p = &self.config.predict;
        let threshold = self.predictor.threshold();
        control::policy_json(p.hot_path, threshold, p.speculation)
    }

    /// Drops every cached result; returns how many there were.
    fn flush_cache(&mut self) -> u64 {
        let Some(cache) = self.cache.as_mut() else {
            return 0;
        };
        let entries = cache.stats().entries;
        match cache.clear() {
            Ok(()) => {
                tracing::info!(entries, "result cache flushed");
                entries
            }
            Err(e) => {
                self.store_error("result cache", &e);
                0
            }
        }
    }

    /// Writes the stores' pages to disk (at stop; the kernel writes them back on its own
    /// otherwise, and a crash of the daemon alone loses nothing that was stored).
    fn sync_stores(&mut self) {
        if let Some(c) = self.cache.as_mut()
            && let Err(e) = c.sync()
        {
            tracing::warn!(error = %e.with_causes(), "cannot write the result cache to disk");
        }
        if let Some(s) = self.states.as_mut()
            && let Err(e) = s.sync()
        {
            tracing::warn!(error = %e.with_causes(), "cannot write the partial states to disk");
        }
    }
}

/// Returns once the tasks already woken have run. Unlike `tokio::task::yield_now`, which waits
/// until the runtime has polled the I/O driver (one more `epoll_wait` per request), this puts
/// the engine back at the end of the runtime's queue at once.
async fn let_woken_tasks_run() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

/// Sessions are named by the app, so two client users may pick the same name: each user's
/// sessions are kept apart, like their results.
fn scoped(client: Client, session: &str) -> String {
    format!("{}/{session}", client.uid)
}

pub(crate) fn json_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}
