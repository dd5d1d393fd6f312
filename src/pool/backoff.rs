//! What the pool's state learns when a worker ends, or fails to start: a worker that keeps
//! failing at start is started again only after a pause that doubles each time (up to
//! [`BACKOFF_MAX`]), so it cannot cause a storm of restarts.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Shared, State};

/// A worker that dies sooner than this without serving a job counts as failing at start.
const HEALTHY_AFTER: Duration = Duration::from_secs(2);

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

pub(super) fn remove_slot(
    shared: &Shared,
    id: u64,
    started: Instant,
    served: u64,
    death: Option<String>,
) {
    let pool = pool_name(shared);
    let mut st = shared.state.lock().expect("pool state");
    st.workers.remove(&id);
    if let Some(why) = death.filter(|_| !shared.shutting_down.load(Ordering::Relaxed)) {
        st.stats.crashes += 1;
        if served == 0 && started.elapsed() < HEALTHY_AFTER {
            note_start_failure(&mut st, &pool, why);
        }
    }
    drop(st);
    shared.supervisor_wake.notify_one();
}

pub(super) fn started_failed(shared: &Shared, why: String) {
    let pool = pool_name(shared);
    let mut st = shared.state.lock().expect("pool state");
    st.starting -= 1;
    note_start_failure(&mut st, &pool, why);
    drop(st);
    shared.supervisor_wake.notify_one();
}

/// The pool's name, for the log: with several pools, a failure must say whose it is. Taken
/// before the state's lock, never under it.
fn pool_name(shared: &Shared) -> String {
    shared.settings.lock().expect("pool settings").name.clone()
}

fn note_start_failure(st: &mut State, pool: &str, why: String) {
    st.stats.start_failures += 1;
    // Starts that were under way together fail together: while a pause is in force, another
    // failure belongs to the same episode and does not lengthen it.
    if st.backoff_until.is_some_and(|until| until > Instant::now()) {
        st.stats.last_failure = Some(why);
        return;
    }
    st.failures = st.failures.saturating_add(1);
    let backoff = BACKOFF_START
        .saturating_mul(1 << st.failures.min(16).saturating_sub(1))
        .min(BACKOFF_MAX);
    if st.failures == 1 || st.failures.is_power_of_two() {
        tracing::warn!(
            pool = %pool,
            failures = st.failures,
            backoff_ms = backoff.as_millis() as u64,
            "worker failed at start: {why}"
        );
    }
    st.backoff_until = Some(Instant::now() + backoff);
    st.stats.last_failure = Some(why);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_failing_together_count_as_one_failure() {
        let mut st = State::default();
        for _ in 0..32 {
            note_start_failure(&mut st, "p", "no such file".into());
        }
        assert_eq!(st.failures, 1);
        let pause = st
            .backoff_until
            .unwrap()
            .saturating_duration_since(Instant::now());
        assert!(pause <= BACKOFF_START, "{pause:?}");

        // Once the pause is over, the next failure doubles it.
        st.backoff_until = Some(Instant::now());
        note_start_failure(&mut st, "p", "no such file".into());
        assert_eq!(st.failures, 2);
        let pause = st
            .backoff_until
            .unwrap()
            .saturating_duration_since(Instant::now());
        assert!(
            pause > BACKOFF_START && pause <= 2 * BACKOFF_START,
            "{pause:?}"
        );
    }
}
