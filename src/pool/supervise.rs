//! The pool's supervisor, which keeps the number of workers at the target and starts more while
//! jobs queue up, and the choice of a guess to take back when a real request would wait.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{FailureKind, JobOutcome, Priority, Queued, Shared, State, worker};

/// A speculative job running longer than this is taken back for a real request.
const TAKE_BACK_AFTER: Duration = Duration::from_millis(50);

/// When a real request waits because every worker is busy and the pool cannot grow (it is at
/// its limit, or backing off after failed starts), queued guesses already wait behind it; a
/// worker is taken back (killed and replaced) from a speculative job that has run longer than
/// [`TAKE_BACK_AFTER`], that no real request has joined, and that is not being taken back
/// already: one per waiting request that no worker being taken back or started will serve.
/// Killing a short job would cost the replacement's cold start, far more than letting it finish;
/// a joined one is real work. Returns how soon the youngest guess passes [`TAKE_BACK_AFTER`]
/// when a request still waits for one, so the supervisor looks again then. `workers_max` is the
/// pool's size limit.
pub(super) fn take_back_guess(st: &mut State, workers_max: usize) -> Option<Duration> {
    let waiting = st.on_demand.len();
    take_back_for(st, workers_max, waiting)
}

/// [`take_back_guess`] for `waiting` real requests.
fn take_back_for(st: &mut State, workers_max: usize, waiting: usize) -> Option<Duration> {
    let idle = st.workers.values().any(|w| w.idle());
    let backing_off = st.backoff_until.is_some_and(|until| until > Instant::now());
    if idle || (st.workers.len() + st.starting < workers_max && !backing_off) {
        return None;
    }
    // Workers being taken back, and their replacements once they are starting, are already
    // on their way to the waiting requests.
    let on_the_way = st
        .workers
        .values()
        .filter(|w| w.busy.as_ref().is_some_and(|b| b.taken_back))
        .count();
    let mut wanted = waiting.saturating_sub(on_the_way + st.starting);
    let mut soonest: Option<Duration> = None;
    for b in st.workers.values_mut().filter_map(|w| w.busy.as_mut()) {
        if wanted == 0 {
            break;
        }
        if b.priority != Priority::Speculative || b.taken_back || b.joins.any() {
            continue;
        }
        let ran = b.since.elapsed();
        if ran < TAKE_BACK_AFTER {
            let left = TAKE_BACK_AFTER - ran;
            soonest = Some(soonest.map_or(left, |s| s.min(left)));
            continue;
        }
        b.take_back.notify_one();
        b.taken_back = true;
        st.stats.preempted += 1;
        wanted -= 1;
    }
    soonest.filter(|_| wanted > 0)
}

/// Applies new settings to the pool; see [`super::Pool::reconfigure`].
pub(super) fn reconfigure(shared: &Shared, new: super::PoolSettings) {
    let mut s = shared.settings.lock().expect("pool settings");
    let restart = super::needs_new_workers(&s, &new);
    let (lo, hi) = (new.warm_min, new.workers_max);
    *s = new;
    drop(s);
    let mut st = shared.state.lock().expect("pool state");
    if restart {
        st.generation += 1;
        st.failures = 0;
        st.backoff_until = None;
    }
    st.target_warm = st.target_warm.clamp(lo, hi);
    drop(st);
    shared.job_ready.notify_waiters();
    shared.supervisor_wake.notify_one();
}

/// Keeps the pool at its target size and restarts failed workers with backoff.
pub(super) async fn supervise(shared: Arc<Shared>) {
    loop {
        if shared.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        let mut look_again = Duration::from_millis(100);
        let to_start = {
            let max = shared.settings.lock().expect("pool settings").workers_max;
            let mut st = shared.state.lock().expect("pool state");
            // A request that found only young guesses is looked after once they are old enough.
            if let Some(soon) = take_back_guess(&mut st, max) {
                look_again = look_again.min(soon + Duration::from_millis(1));
            }
            let now = Instant::now();
            let backing_off = st.backoff_until.is_some_and(|u| u > now);
            let idle = st.workers.values().filter(|w| w.idle()).count();
            // Guesses count only as far as real demand leaves workers for them.
            let guesses = st.speculative.len().min(st.guess_room(max));
            let waiting = st.on_demand.len() + guesses;
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
            let id = super::NEXT_WORKER.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(worker::run(shared.clone(), id));
        }
        let _ = tokio::time::timeout(look_again, shared.supervisor_wake.notified()).await;
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
            taken_back: false,
        };
        let slot = WorkerSlot {
            busy: Some(busy),
            ..WorkerSlot::default()
        };
        (slot, take_back, joins)
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
        assert_eq!(take_back_for(&mut st, 2, 1), None);
        assert!(!signalled(&joined_signal), "the joined guess was signalled");
        assert!(
            signalled(&other_signal),
            "the other guess was not taken back"
        );
        assert_eq!(st.stats.preempted, 1);

        // A second request does not pick the guess already on its way out, nor the joined one.
        assert_eq!(take_back_for(&mut st, 2, 2), None);
        assert!(!signalled(&joined_signal) && !signalled(&other_signal));
        assert_eq!(st.stats.preempted, 1);
    }

    #[test]
    fn a_request_that_finds_only_young_guesses_is_told_when_to_look_again() {
        let mut st = State::default();
        let (young, young_signal, _) = guessing(10);
        st.workers.insert(1, young);
        let again = take_back_for(&mut st, 1, 1).expect("a time to look again");
        assert!(
            again <= TAKE_BACK_AFTER - Duration::from_millis(10),
            "{again:?}"
        );
        assert!(!signalled(&young_signal));
        assert_eq!(st.stats.preempted, 0);
        // Nobody waits: nothing to look at again.
        assert_eq!(take_back_for(&mut st, 1, 0), None);
    }

    #[test]
    fn one_guess_is_taken_back_per_waiting_request() {
        let mut st = State::default();
        let mut signals = Vec::new();
        for id in 1..=3 {
            let (slot, signal, _) = guessing(100 + id);
            st.workers.insert(id, slot);
            signals.push(signal);
        }
        assert_eq!(take_back_for(&mut st, 3, 2), None);
        assert_eq!(signals.iter().filter(|s| signalled(s)).count(), 2);
        assert_eq!(st.stats.preempted, 2);
    }

    #[test]
    fn a_worker_starting_for_a_waiting_request_spares_the_next_guess() {
        let mut st = State::default();
        let (slot, signal, _) = guessing(200);
        st.workers.insert(1, slot);
        // The replacement of a worker taken back for this request is starting.
        st.starting = 1;
        assert_eq!(take_back_for(&mut st, 2, 1), None);
        assert!(!signalled(&signal));
        assert_eq!(st.stats.preempted, 0);
    }

    #[test]
    fn a_pool_backing_off_after_failed_starts_takes_back_a_guess() {
        let mut st = State::default();
        let (slot, signal, _) = guessing(200);
        st.workers.insert(1, slot);
        st.backoff_until = Some(Instant::now() + Duration::from_secs(1));
        take_back_for(&mut st, 2, 1);
        assert!(signalled(&signal), "the request waited behind the guess");
        assert_eq!(st.stats.preempted, 1);
    }

    #[test]
    fn nothing_is_taken_back_while_a_worker_is_idle_or_the_pool_can_grow() {
        let mut st = State::default();
        let (slot, signal, _) = guessing(200);
        st.workers.insert(1, slot);
        st.workers.insert(2, WorkerSlot::default());
        take_back_for(&mut st, 2, 1);
        st.workers.remove(&2);
        take_back_for(&mut st, 2, 1);
        assert!(!signalled(&signal));
        assert_eq!(st.stats.preempted, 0);
        take_back_for(&mut st, 1, 1);
        assert!(signalled(&signal));
    }
}
