//! How many workers a pool can spare for guesses: those that real requests have not needed
//! lately.
//!
//! A guess holds its worker until it ends, or for its first 50 ms at least when a real request
//! wants the worker back; so a guess started while real requests keep the pool near its size
//! limit makes one of them wait, or costs a replacement's cold start. The pool therefore keeps
//! how long it held each number of real jobs at once (running or waiting) over the last window
//! or two, and takes as its real load the most it held for a hundredth of that time or more.
//! Guesses run only on the workers above that load, within `workers_max`. A steady load that
//! fills the pool leaves no worker to guesses; a short burst does not count (the runs of a burst
//! are the ones the guesses before it answer from the cache).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{FailureKind, JobOutcome, Priority, Queued, State};

/// How long the load is remembered: one to two of these.
pub(super) const LOAD_WINDOW: Duration = Duration::from_secs(5);

/// The share of the time remembered for which a number of real jobs must have been held at
/// once to count as the load.
const LOAD_SHARE: f64 = 0.01;

/// Numbers of real jobs at once told apart; more count as this many.
const LEVELS: usize = 256;

/// How long the pool held at least 1, 2, … real jobs at once, in the current window and the one
/// before.
#[derive(Debug, Clone, Default)]
pub(super) struct RecentLoad {
    window_start: Option<Instant>,
    /// When `demand` was last told, and what it was.
    noted_at: Option<Instant>,
    demand: usize,
    /// `[n]`: time at `n + 1` real jobs or more in this window.
    this_window: Vec<Duration>,
    last_window: Vec<Duration>,
    last_window_len: Duration,
}

impl RecentLoad {
    /// Records that `demand` real jobs are running or waiting from `now` on.
    pub(super) fn note(&mut self, now: Instant, demand: usize) {
        if let Some(at) = self.noted_at {
            let held = now.saturating_duration_since(at);
            let levels = self.demand.min(LEVELS);
            if self.this_window.len() < levels {
                self.this_window.resize(levels, Duration::ZERO);
            }
            for t in &mut self.this_window[..levels] {
                *t += held;
            }
        }
        self.noted_at = Some(now);
        self.demand = demand;
        self.roll(now);
    }

    /// The load: the most real jobs held at once for a hundredth of the time remembered or more.
    pub(super) fn load(&mut self, now: Instant, demand: usize) -> usize {
        self.note(now, demand);
        let Some(start) = self.window_start else {
            return 0;
        };
        let remembered = self.last_window_len + now.saturating_duration_since(start);
        if remembered.is_zero() {
            return 0;
        }
        let at_least = |n: usize| {
            self.this_window.get(n).copied().unwrap_or_default()
                + self.last_window.get(n).copied().unwrap_or_default()
        };
        let needed = remembered.mul_f64(LOAD_SHARE);
        (0..LEVELS)
            .take_while(|&n| at_least(n) >= needed && !at_least(n).is_zero())
            .count()
    }

    fn roll(&mut self, now: Instant) {
        let Some(start) = self.window_start else {
            self.window_start = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < LOAD_WINDOW {
            return;
        }
        // A whole window with nothing noted leaves nothing to remember of the one before.
        if elapsed < 2 * LOAD_WINDOW {
            self.last_window = std::mem::take(&mut self.this_window);
            self.last_window_len = elapsed;
        } else {
            self.last_window.clear();
            self.this_window.clear();
            self.last_window_len = Duration::ZERO;
        }
        self.window_start = Some(now);
    }
}

/// How many workers guesses may hold: at most half the pool's workers (one in a pool of one or
/// two), and only workers above the real load.
pub(super) fn guess_slots(workers_max: usize, real_load: usize) -> usize {
    let half = (workers_max / 2).max(1);
    half.min(workers_max.saturating_sub(real_load))
}

/// How many more guesses may start, with `guessing` running.
pub(super) fn guess_room(workers_max: usize, guessing: usize, real_load: usize) -> usize {
    guess_slots(workers_max, real_load).saturating_sub(guessing)
}

impl State {
    /// Real jobs running or waiting: on-demand ones, and guesses a real request joined.
    pub(super) fn real_demand(&self) -> usize {
        let running = self
            .workers
            .values()
            .filter_map(|w| w.busy.as_ref())
            .filter(|b| b.priority == Priority::OnDemand)
            .count();
        self.on_demand.len() + running
    }

    /// Workers running a guess no real request joined.
    pub(super) fn guessing(&self) -> usize {
        self.workers
            .values()
            .filter_map(|w| w.busy.as_ref())
            .filter(|b| b.priority == Priority::Speculative)
            .count()
    }

    /// Records the real demand there is from now on, toward the real load.
    pub(super) fn note_real_demand(&mut self) {
        let demand = self.real_demand();
        self.real_load.note(Instant::now(), demand);
    }

    /// The real load now (see the module's note).
    pub(super) fn real_load(&mut self) -> usize {
        let demand = self.real_demand();
        self.real_load.load(Instant::now(), demand)
    }

    /// Answers the queued guesses that were cancelled: while guesses are held back, no worker
    /// takes them off the queue.
    pub(super) fn drop_cancelled_guesses(&mut self) {
        let cancelled = |q: &Queued| q.job.cancelled.load(Ordering::Relaxed);
        if !self.speculative.iter().any(cancelled) {
            return;
        }
        let (gone, kept) = std::mem::take(&mut self.speculative)
            .into_iter()
            .partition(cancelled);
        self.speculative = kept;
        for q in gone {
            q.reply
                .send(JobOutcome::failed(FailureKind::Cancelled, "cancelled"));
        }
    }

    /// How many workers guesses may hold now (see the module's note).
    pub(super) fn guess_slots(&mut self, workers_max: usize) -> usize {
        let load = self.real_load();
        guess_slots(workers_max, load)
    }

    /// How many more guesses may start now (see the module's note).
    pub(super) fn guess_room(&mut self, workers_max: usize) -> usize {
        let load = self.real_load();
        guess_room(workers_max, self.guessing(), load)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_load_is_what_was_held_for_a_hundredth_of_the_time_or_more() {
        let t0 = Instant::now();
        let mut l = RecentLoad::default();
        // Three jobs at once for 1 s, then one for 3 s: three for a quarter of the time.
        l.note(t0, 3);
        l.note(t0 + ms(1000), 1);
        assert_eq!(l.load(t0 + ms(4000), 1), 3);
        // A burst of eight for 20 ms in 4 s does not count.
        l.note(t0 + ms(4000), 8);
        assert_eq!(l.load(t0 + ms(4020), 1), 3);
        // Nothing at all for a long while: no load.
        assert_eq!(l.load(t0 + ms(30_000), 0), 0);
    }

    #[test]
    fn the_load_is_remembered_for_one_to_two_windows() {
        let t0 = Instant::now();
        let mut l = RecentLoad::default();
        l.note(t0, 2);
        l.note(t0 + ms(4000), 0);
        // The next window still remembers the one before.
        assert_eq!(l.load(t0 + ms(6000), 0), 2);
        // A window later, only what the window after it saw.
        assert_eq!(l.load(t0 + ms(11_500), 0), 0);
    }

    #[test]
    fn a_steady_load_counts_from_its_start() {
        let t0 = Instant::now();
        let mut l = RecentLoad::default();
        l.note(t0, 0);
        assert_eq!(l.load(t0 + ms(100), 2), 0);
        assert_eq!(l.load(t0 + ms(400), 2), 2);
    }

    #[test]
    fn guesses_run_only_on_workers_real_load_left_spare() {
        // Three workers at most, three real requests at once lately: no room for a guess.
        assert_eq!(guess_room(3, 0, 3), 0);
        // Two at once: one worker to spare.
        assert_eq!(guess_room(3, 0, 2), 1);
        assert_eq!(guess_room(3, 1, 2), 0);
        // No real demand: still at most half the pool guesses.
        assert_eq!(guess_room(8, 0, 0), 4);
        assert_eq!(guess_room(8, 3, 0), 1);
        assert_eq!(guess_room(8, 0, 6), 2);
        // A pool of one guesses only when no real request came lately.
        assert_eq!(guess_room(1, 0, 0), 1);
        assert_eq!(guess_room(1, 0, 1), 0);
        // A peak above the limit (the limit was lowered) leaves nothing.
        assert_eq!(guess_room(2, 0, 5), 0);
        // Slots count the guesses running: one held by a guess leaves room for none.
        assert_eq!(guess_slots(1, 0), 1);
        assert_eq!(guess_room(1, 1, 0), 0);
        assert_eq!(guess_slots(3, 3), 0);
    }
}
