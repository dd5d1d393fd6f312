//! How many workers a pool can spare for guesses: those that real requests have not needed
//! lately.
//!
//! A guess holds its worker until it ends, or for its first 50 ms at least when a real request
//! wants the worker back; so a guess started while real requests keep the pool near its size
//! limit makes one of them wait, or costs a replacement's cold start.
//! The pool therefore remembers the most real jobs it held at once (running or waiting) over
//! the last window or two, and lets guesses run only on the workers above that peak, within
//! `workers_max`. Under a load that fills the pool, guesses wait in their queue and run when it
//! eases; at a lighter load they run as before.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{FailureKind, JobOutcome, Priority, Queued, State};

/// How long a peak of real demand is remembered: one to two of these.
pub(super) const PEAK_WINDOW: Duration = Duration::from_secs(5);

/// The most real jobs held at once in the current window and the one before.
#[derive(Debug, Clone, Default)]
pub(super) struct RecentPeak {
    window_start: Option<Instant>,
    this_window: usize,
    last_window: usize,
}

impl RecentPeak {
    /// Records that `demand` real jobs are running or waiting at `now`.
    pub(super) fn note(&mut self, now: Instant, demand: usize) {
        self.roll(now);
        self.this_window = self.this_window.max(demand);
    }

    /// The peak over the current window and the one before, counting `demand` now.
    pub(super) fn peak(&mut self, now: Instant, demand: usize) -> usize {
        self.note(now, demand);
        self.this_window.max(self.last_window)
    }

    fn roll(&mut self, now: Instant) {
        let Some(start) = self.window_start else {
            self.window_start = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < PEAK_WINDOW {
            return;
        }
        // A whole window with nothing noted leaves nothing to remember of the one before.
        self.last_window = if elapsed < 2 * PEAK_WINDOW {
            self.this_window
        } else {
            0
        };
        self.this_window = 0;
        self.window_start = Some(now);
    }
}

/// How many workers guesses may hold: at most half the pool's workers (one in a pool of one or
/// two), and only workers above the recent peak of real demand.
pub(super) fn guess_slots(workers_max: usize, real_peak: usize) -> usize {
    let half = (workers_max / 2).max(1);
    half.min(workers_max.saturating_sub(real_peak))
}

/// How many more guesses may start, with `guessing` running.
pub(super) fn guess_room(workers_max: usize, guessing: usize, real_peak: usize) -> usize {
    guess_slots(workers_max, real_peak).saturating_sub(guessing)
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

    /// Records the real demand there is now, toward the recent peak.
    pub(super) fn note_real_demand(&mut self) {
        let demand = self.real_demand();
        self.real_peak.note(Instant::now(), demand);
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
        let demand = self.real_demand();
        let peak = self.real_peak.peak(Instant::now(), demand);
        guess_slots(workers_max, peak)
    }

    /// How many more guesses may start now (see the module's note).
    pub(super) fn guess_room(&mut self, workers_max: usize) -> usize {
        let demand = self.real_demand();
        let peak = self.real_peak.peak(Instant::now(), demand);
        guess_room(workers_max, self.guessing(), peak)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peak_is_remembered_for_one_to_two_windows() {
        let t0 = Instant::now();
        let mut p = RecentPeak::default();
        p.note(t0, 3);
        assert_eq!(p.peak(t0 + Duration::from_secs(1), 1), 3);
        // The next window still remembers the one before.
        assert_eq!(p.peak(t0 + PEAK_WINDOW + Duration::from_secs(1), 0), 3);
        // Two windows on, only what the later one saw.
        assert_eq!(p.peak(t0 + 2 * PEAK_WINDOW + Duration::from_secs(2), 1), 1);
        // After a long lull, nothing.
        assert_eq!(p.peak(t0 + 10 * PEAK_WINDOW, 0), 0);
    }

    #[test]
    fn demand_now_counts_even_above_the_peak_remembered() {
        let t0 = Instant::now();
        let mut p = RecentPeak::default();
        p.note(t0, 1);
        assert_eq!(p.peak(t0 + Duration::from_millis(10), 4), 4);
        assert_eq!(p.peak(t0 + Duration::from_millis(20), 0), 4);
    }

    #[test]
    fn guesses_run_only_on_workers_real_demand_left_spare() {
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
