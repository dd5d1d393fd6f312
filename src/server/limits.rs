//! What all connections share: the connection slots, and the bytes their partial lines hold.
//!
//! Both limits are read from the settings of the moment, so a reload applies them to the next
//! connection (slots) or the next read (partial lines); connections already over a lowered
//! limit are not cut, they count until they leave.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Partial lines of all connections together hold at most this many times `max_line` bytes.
pub const PARTIAL_LINES_PER_MAX_LINE: usize = 64;

/// Connections being served.
#[derive(Debug, Default)]
pub struct Slots {
    held: AtomicUsize,
}

/// One connection's slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
}

impl Slots {
    /// A slot, if fewer than `limit` are held.
    pub fn try_take(self: &Arc<Self>, limit: usize) -> Option<Slot> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < limit).then_some(held + 1)
            })
            .ok()?;
        Some(Slot {
            slots: self.clone(),
        })
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.held.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Bytes held in partial lines (received, not yet ended by a newline) by all connections.
#[derive(Debug, Default)]
pub struct LineBudget {
    held: AtomicUsize,
}

/// One connection's part of the [`LineBudget`], given back when dropped.
#[derive(Debug)]
pub struct LineShare {
    budget: Arc<LineBudget>,
    held: usize,
}

impl LineBudget {
    pub fn share(self: &Arc<Self>) -> LineShare {
        LineShare {
            budget: self.clone(),
            held: 0,
        }
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

impl LineShare {
    /// Records that the connection's partial line is now `bytes` long. False when it grew and
    /// all partial lines together now hold more than `total`: the connection should be closed
    /// (dropping the share gives its bytes back). A line that shrinks or stays is always fine.
    pub fn set(&mut self, bytes: usize, total: usize) -> bool {
        let budget = &self.budget.held;
        if bytes <= self.held {
            budget.fetch_sub(self.held - bytes, Ordering::AcqRel);
            self.held = bytes;
            return true;
        }
        let more = bytes - self.held;
        let before = budget.fetch_add(more, Ordering::AcqRel);
        self.held = bytes;
        before + more <= total
    }
}

impl Drop for LineShare {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.held, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_limit_of_the_moment() {
        let slots = Arc::new(Slots::default());
        let a = slots.try_take(2).expect("first slot");
        let b = slots.try_take(2).expect("second slot");
        assert!(
            slots.try_take(2).is_none(),
            "a third slot under a limit of 2"
        );
        // Raised: served at once.
        let c = slots.try_take(50).expect("a slot under the raised limit");
        assert_eq!(slots.held(), 3);
        // Lowered below what is held: nobody is cut, nobody new comes in until enough leave.
        assert!(slots.try_take(1).is_none());
        drop((a, b));
        assert!(
            slots.try_take(1).is_none(),
            "one still held under a limit of 1"
        );
        drop(c);
        assert_eq!(slots.held(), 0);
        assert!(slots.try_take(1).is_some());
    }

    #[test]
    fn partial_lines_are_bounded_in_total() {
        let budget = Arc::new(LineBudget::default());
        let mut a = budget.share();
        let mut b = budget.share();
        assert!(a.set(600, 1000));
        assert!(b.set(300, 1000));
        assert!(!b.set(500, 1000), "1100 bytes held under a total of 1000");
        drop(b);
        assert_eq!(budget.held(), 600);
        // A line that ends frees its bytes; one that shrinks is never refused.
        assert!(a.set(0, 1000));
        let mut c = budget.share();
        assert!(c.set(1000, 1000));
        assert!(c.set(10, 5), "a shrinking line refused");
        drop((a, c));
        assert_eq!(budget.held(), 0);
    }
}
