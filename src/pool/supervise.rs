//! The pool's supervisor, which keeps the number of workers at the target and starts more while
//! jobs queue up, and the choice of a guess to take back when a real request would wait.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{FailureKind, JobOutcome, Priority, Queued, Shared, State, worker};

/// A speculative job running longer than this is taken back for a real request.
const TAKE_BACK_AFTER: Duration = Duration::from_millis(50);

/// When a real request would wait because every worker is busy and the pool cannot grow,
/// queued guesses already wait behind it; a worker is taken back (killed and replaced) only
/// from a speculative job that has run longer than [`TAKE_BACK_AFTER`] and that no real request
/// has joined. Killing a short job would cost the replacement's cold start, far more than letting
/// it finish; a joined one is real work.
/// `workers_max` is the pool's size limit.
pub(super) fn take_back_guess(st: &mut State, workers_max: usize) {
    let idle = st.workers.values().any(|w| w.busy.is_none());
    if idle || st.workers.len() + st.starting < workers_max {
        return;
    }
    let guess = st
        .workers
        .values()
        .filter_map(|w| w.busy.as_ref())
        .find(|b| {
            b.priority == Priority::Speculative
                && !b.joins.any()
                && b.since.elapsed() >= TAKE_BACK_AFTER
        });
    if let Some(b) = guess {
        b.take_back.notify_one();
        st.stats.preempted += 1;
    }
}

/// Keeps the pool at its target size and restarts failed workers with backoff.
pub(super) async fn supervise(shared: Arc<Shared>) {
    loop {
        if shared.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        let to_start = {
            let max = shared.settings.lock().expect("pool settings").workers_max;
            let mut st = shared.state.lock().expect("pool state");
            let now = Instant::now();
            let backing_off = st.backoff_until.is_some_and(|u| u > now);
            let idle = st.workers.values().filter(|w| w.busy.is_none()).count();
            let waiting = st.on_demand.len() + st.speculative.len();
            let live = st.workers.len() + st.starting;
            let wanted = st
                .target_warm
                .max(live + waiting.saturating_sub(idle + st.starting));
            let n = if backing_off {
                if live == 0 {
                    fail_waiting(&mut st);
                }
                0
            } else {
                wanted.min(max).saturating_sub(live)
            };
            st.starting += n;
            n
        };
        for _ in 0..to_start {
            let id = shared.next_worker.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(worker::run(shared.clone(), id));
        }
        let _ = tokio::time::timeout(
            Duration::from_millis(100),
            shared.supervisor_wake.notified(),
        )
        .await;
    }
}

/// With no worker alive and starts backing off, waiting requests are answered at once.
fn fail_waiting(st: &mut State) {
    let why = st.stats.last_failure.clone().unwrap_or_default();
    let mut waiting: Vec<Queued> = st.on_demand.drain(..).collect();
    waiting.extend(st.speculative.drain(..));
    for q in waiting {
        q.reply.send(JobOutcome::failed(
            FailureKind::Unavailable,
            format!("pool has no live worker ({why})"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{Busy, Joins, WorkerSlot};
    use tokio::sync::Notify;

    fn guessing(for_ms: u64) -> (WorkerSlot, Arc<Notify>, Arc<Joins>) {
        let take_back = Arc::new(Notify::new());
        let joins = Arc::new(Joins::default());
        let busy = Busy {
            priority: Priority::Speculative,
            since: Instant::now() - Duration::from_millis(for_ms),
            joins: joins.clone(),
            take_back: take_back.clone(),
        };
        (WorkerSlot { busy: Some(busy) }, take_back, joins)
    }

    /// Whether `notify` holds a signal, without waiting for one.
    fn signalled(notify: &Notify) -> bool {
        let waiter = notify.notified();
        tokio::pin!(waiter);
        waiter.as_mut().enable()
    }

    #[test]
    fn a_guess_that_a_real_request_joined_is_never_taken_back() {
        let mut st = State::default();
        let (joined, joined_signal, joins) = guessing(200);
        let (other, other_signal, _) = guessing(100);
        joins.join();
        st.workers.insert(1, joined);
        st.workers.insert(2, other);
        take_back_guess(&mut st, 2);
        assert!(!signalled(&joined_signal), "the joined guess was signalled");
        assert!(
            signalled(&other_signal),
            "the other guess was not taken back"
        );
        assert_eq!(st.stats.preempted, 1);

        // With only joined or young guesses left, nothing is taken back and nothing counted.
        st.workers.remove(&2);
        let (young, young_signal, _) = guessing(5);
        st.workers.insert(2, young);
        take_back_guess(&mut st, 2);
        assert!(!signalled(&joined_signal) && !signalled(&young_signal));
        assert_eq!(st.stats.preempted, 1);
    }

    #[test]
    fn nothing_is_taken_back_while_a_worker_is_idle_or_the_pool_can_grow() {
        let mut st = State::default();
        let (slot, signal, _) = guessing(200);
        st.workers.insert(1, slot);
        st.workers.insert(2, WorkerSlot { busy: None });
        take_back_guess(&mut st, 2);
        st.workers.remove(&2);
        take_back_guess(&mut st, 2);
        assert!(!signalled(&signal));
        assert_eq!(st.stats.preempted, 0);
        take_back_guess(&mut st, 1);
        assert!(signalled(&signal));
    }
}
