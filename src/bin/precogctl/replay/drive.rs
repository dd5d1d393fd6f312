//! Plays the sessions against a backend as a shop's app server would, in real time divided by
//! the speed: one scheduler over every session's next action in time order, served by a pool of
//! threads that each hold one connection. A session's actions stay in order (its next action is
//! queued only once the previous one is done), and sessions that overlapped in time overlap.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use precog::config::Config;
use precog::eval::{Format, SessionRecord};
use serde_json::{Value, json};

use super::backend::{Backend, Served};
use super::mapping::Mapping;
use super::visitor::Visitor;

/// What to play.
pub struct Script<'a> {
    pub sessions: &'a [SessionRecord],
    /// Real-time offset (ms) of each event, from `timeline::plan`.
    pub offsets: &'a [Vec<u64>],
    pub format: Format,
    pub mapping: &'a Mapping,
    /// Declares each process's inputs.
    pub config: &'a Config,
    pub speed: f64,
    /// Only the runs whose answers may be cached (a ceiling's first pass fills the cache with
    /// them, and changes nothing in the shop).
    pub cache_fill: bool,
}

/// One run as the app saw it, for the report.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub process: String,
    pub served: Served,
    pub latency_us: u64,
    /// When the run was answered, from the start of the replay.
    pub at: Duration,
    pub error: Option<String>,
    /// What the error said.
    pub message: Option<String>,
    /// Whether the action's own event made the run's inputs known (the item first viewed, the
    /// cart just changed): no guess could have started before that event.
    pub new_inputs: bool,
}

#[derive(Debug, Default)]
pub struct Played {
    pub runs: Vec<RunRecord>,
    pub events: u64,
    /// Refused `event`/`end` requests by error code.
    pub notify_errors: BTreeMap<String, u64>,
    /// How late each action started against its schedule.
    pub lag_us: Vec<u64>,
    pub wall: Duration,
}

#[derive(PartialEq, Eq)]
struct Turn {
    due_us: u64,
    session: usize,
    index: usize,
}

impl Ord for Turn {
    fn cmp(&self, other: &Turn) -> std::cmp::Ordering {
        (self.due_us, self.session, self.index).cmp(&(other.due_us, other.session, other.index))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Turn) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

struct Queue {
    due: BinaryHeap<Reverse<Turn>>,
    visitors: Vec<Option<Visitor>>,
    busy: usize,
    /// A thread is sleeping until the earliest turn is due; the others wait to be called.
    timing: bool,
    failed: Option<anyhow::Error>,
}

/// How the threads call each other: one sleeps until the next turn is due (`timer`), the rest
/// wait until there is a turn for them (`idle`), so that a due turn wakes one thread, not all.
#[derive(Default)]
struct Wake {
    timer: Condvar,
    idle: Condvar,
}

impl Wake {
    fn everyone(&self) {
        self.timer.notify_all();
        self.idle.notify_all();
    }
}

impl Script<'_> {
    fn due_us(&self, session: usize, index: usize) -> u64 {
        (self.offsets[session][index] as f64 * 1000.0 / self.speed) as u64
    }
}

/// Plays the script with `threads` connections made by `connect`.
pub fn play<F>(script: &Script, threads: usize, connect: F) -> anyhow::Result<Played>
where
    F: Fn() -> anyhow::Result<Box<dyn Backend>> + Sync,
{
    let mut backends = Vec::new();
    for _ in 0..threads.max(1) {
        backends.push(connect()?);
    }
    let mut due = BinaryHeap::new();
    for (s, record) in script.sessions.iter().enumerate() {
        if !record.events.is_empty() {
            due.push(Reverse(Turn {
                due_us: script.due_us(s, 0),
                session: s,
                index: 0,
            }));
        }
    }
    let queue = Mutex::new(Queue {
        due,
        visitors: script
            .sessions
            .iter()
            .map(|r| Some(Visitor::new(&r.id)))
            .collect(),
        busy: 0,
        timing: false,
        failed: None,
    });
    let wake = Wake::default();
    let start = Instant::now() + Duration::from_millis(20);

    let parts: Vec<Played> = std::thread::scope(|scope| {
        let handles: Vec<_> = backends
            .into_iter()
            .map(|backend| scope.spawn(|| serve(script, &queue, &wake, start, backend)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a replay thread panicked"))
            .collect()
    });
    if let Some(e) = queue.into_inner().expect("queue lock").failed {
        return Err(e);
    }

    let mut played = Played {
        wall: start.elapsed(),
        ..Played::default()
    };
    for p in parts {
        played.runs.extend(p.runs);
        played.events += p.events;
        played.lag_us.extend(p.lag_us);
        for (code, n) in p.notify_errors {
            *played.notify_errors.entry(code).or_default() += n;
        }
    }
    played.runs.sort_by_key(|r| r.at);
    Ok(played)
}

fn serve(
    script: &Script,
    queue: &Mutex<Queue>,
    wake: &Wake,
    start: Instant,
    mut backend: Box<dyn Backend>,
) -> Played {
    let mut played = Played::default();
    let mut q = queue.lock().expect("queue lock");
    loop {
        if q.failed.is_some() {
            wake.everyone();
            return played;
        }
        let Some(Reverse(next)) = q.due.peek() else {
            if q.busy == 0 {
                wake.everyone();
                return played;
            }
            q = wake.idle.wait(q).expect("queue lock");
            continue;
        };
        let due = start + Duration::from_micros(next.due_us);
        let now = Instant::now();
        if due > now {
            if q.timing {
                q = wake.idle.wait(q).expect("queue lock");
            } else {
                q.timing = true;
                q = wake.timer.wait_timeout(q, due - now).expect("queue lock").0;
                q.timing = false;
            }
            continue;
        }
        let Reverse(turn) = q.due.pop().expect("peeked");
        let mut visitor = q.visitors[turn.session]
            .take()
            .expect("one turn per visitor");
        q.busy += 1;
        if !q.due.is_empty() && !q.timing {
            // Someone else watches the clock for the next turn.
            wake.idle.notify_one();
        }
        drop(q);

        played
            .lag_us
            .push(now.duration_since(due).as_micros() as u64);
        let outcome = act(
            script,
            &turn,
            &mut visitor,
            &mut *backend,
            start,
            &mut played,
        );

        q = queue.lock().expect("queue lock");
        q.busy -= 1;
        match outcome {
            Err(e) => {
                q.failed.get_or_insert(e);
                wake.everyone();
            }
            Ok(()) if turn.index + 1 < script.sessions[turn.session].events.len() => {
                let next = Turn {
                    due_us: script.due_us(turn.session, turn.index + 1),
                    session: turn.session,
                    index: turn.index + 1,
                };
                let earliest = q.due.peek().is_none_or(|Reverse(head)| next < *head);
                q.due.push(Reverse(next));
                q.visitors[turn.session] = Some(visitor);
                if earliest {
                    // The clock-watcher sleeps until a later turn.
                    wake.timer.notify_one();
                }
            }
            Ok(()) => {}
        }
    }
}

/// One recorded action: its event, the runs it needs, and `end` after the session's last.
fn act(
    script: &Script,
    turn: &Turn,
    visitor: &mut Visitor,
    backend: &mut dyn Backend,
    start: Instant,
    played: &mut Played,
) -> anyhow::Result<()> {
    let record = &script.sessions[turn.session];
    let event = &record.events[turn.index];
    let action = script.mapping.action(script.format, &event.kind);
    let item = event.item.as_deref();
    let runs = action.map(|a| a.runs.as_slice()).unwrap_or_default();
    let config = script.config;
    let declared = |process: &str| -> &[String] {
        config
            .process(process)
            .map(|p| p.inputs.as_slice())
            .unwrap_or_default()
    };
    let known_before: Vec<_> = runs
        .iter()
        .map(|p| visitor.run_inputs(declared(p)))
        .collect();
    visitor.begin(action, item);

    let mut attrs = event.attrs.clone();
    attrs.extend(visitor.known_inputs());
    let mut request = json!({"op": "event", "session": record.id, "type": event.kind,
                             "attrs": attrs});
    if let Some(target) = action.map(|a| &a.page).or(event.target.as_ref()) {
        request["target"] = json!(target);
    }
    if let Some(ms) = event.dwell_ms {
        request["ms"] = json!(ms);
    }
    notify(backend, &request, played)?;

    for (process, before) in runs.iter().zip(known_before) {
        let Some(inputs) = visitor.run_inputs(declared(process)) else {
            continue;
        };
        if script.cache_fill && !config.process(process).is_some_and(|p| p.idempotent) {
            continue;
        }
        let new_inputs = before.as_ref() != Some(&inputs);
        let answer = backend.run(&record.id, process, inputs)?;
        played.runs.push(RunRecord {
            process: process.clone(),
            served: answer.served,
            latency_us: answer.latency_us,
            at: start.elapsed(),
            error: answer.error,
            message: answer.message,
            new_inputs,
        });
        if process == "cart_total"
            && let Some(attrs) = answer.result.as_ref().and_then(|r| visitor.priced(r))
        {
            let input = json!({"op": "event", "session": record.id, "type": "input",
                               "target": "cart", "attrs": Value::Object(attrs)});
            notify(backend, &input, played)?;
        }
    }
    visitor.finish(action, item);

    if turn.index + 1 == record.events.len() {
        let mut end = json!({"op": "end", "session": record.id});
        if visitor.ordered {
            end["outcome"] = json!("order");
        }
        notify(backend, &end, played)?;
    }
    Ok(())
}

fn notify(backend: &mut dyn Backend, request: &Value, played: &mut Played) -> anyhow::Result<()> {
    if request["op"] == "event" {
        played.events += 1;
    }
    if let Some(code) = backend.notify(request)? {
        let op = request["op"].as_str().unwrap_or("?");
        *played
            .notify_errors
            .entry(format!("{op}:{code}"))
            .or_default() += 1;
    }
    Ok(())
}
