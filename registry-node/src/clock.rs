//! The write-stamp clock: a hybrid logical clock of milliseconds that orders the writes of
//! a registerId across session nodes (see [`crate::model::WriteOrder`]).
//!
//! A session node stamps every write it accepts with [`StampClock::next`]: at least its
//! wall clock, strictly above its previous stamp, and above the highest stamp it has heard
//! of from the data nodes (they report the highest stamp they hold in every change-poll and
//! fetch answer). So when a client fails over and re-publishes a registerId through a new
//! session on another session node, that write is stamped later than the old session's
//! writes which that node has heard of, even when the two nodes' wall clocks disagree.
//!
//! A stamp more than [`MAX_AHEAD_MS`] ahead of the local wall clock is not adopted: a
//! broken clock (or a hostile peer) must not drag every node's stamps to the end of time,
//! where they would stop increasing.

use crate::model::now_millis;
use std::sync::atomic::{AtomicU64, Ordering};

/// How far ahead of the local wall clock an observed stamp may be and still be adopted.
pub const MAX_AHEAD_MS: u64 = 3_600_000;

/// See the module docs.
#[derive(Debug, Default)]
pub struct StampClock {
    highest: AtomicU64,
}

impl StampClock {
    pub fn new() -> StampClock {
        StampClock::default()
    }

    /// The highest stamp handed out or adopted so far.
    pub fn highest(&self) -> u64 {
        self.highest.load(Ordering::Relaxed)
    }

    /// Adopts `stamp` (seen on another node) unless it is implausibly far ahead.
    pub fn observe(&self, stamp: u64) {
        self.observe_at(stamp, now_millis());
    }

    fn observe_at(&self, stamp: u64, now_ms: u64) {
        if stamp <= now_ms.saturating_add(MAX_AHEAD_MS) {
            self.highest.fetch_max(stamp, Ordering::Relaxed);
        }
    }

    /// The next stamp: above every stamp so far, at least the wall clock.
    pub fn next(&self) -> u64 {
        self.next_at(now_millis())
    }

    fn next_at(&self, now_ms: u64) -> u64 {
        let mut prev = self.highest.load(Ordering::Relaxed);
        loop {
            let next = now_ms.max(prev.saturating_add(1));
            match self.highest.compare_exchange_weak(
                prev,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_strictly_increase_and_follow_the_wall_clock() {
        let c = StampClock::new();
        assert_eq!(c.next_at(100), 100);
        assert_eq!(c.next_at(100), 101);
        assert_eq!(
            c.next_at(50),
            102,
            "a clock stepping back does not rewind stamps"
        );
        assert_eq!(c.next_at(500), 500);
    }

    #[test]
    fn a_stamp_heard_of_from_another_node_moves_the_clock_past_it() {
        let c = StampClock::new();
        // Another session node, whose wall clock runs 10 s ahead, wrote at 10_100.
        c.observe_at(10_100, 100);
        assert_eq!(c.next_at(100), 10_101);
        // An older observation changes nothing.
        c.observe_at(5_000, 200);
        assert_eq!(c.next_at(200), 10_102);
    }

    #[test]
    fn an_implausible_stamp_is_not_adopted_and_nothing_overflows() {
        let c = StampClock::new();
        c.observe_at(u64::MAX, 100);
        c.observe_at(100 + MAX_AHEAD_MS + 1, 100);
        assert_eq!(c.next_at(100), 100);
        // Even at the very end of the range, stamps saturate instead of wrapping.
        let end = StampClock::new();
        assert_eq!(end.next_at(u64::MAX), u64::MAX);
        assert_eq!(end.next_at(u64::MAX), u64::MAX);
        end.observe_at(u64::MAX, u64::MAX);
        assert_eq!(end.highest(), u64::MAX);
    }
}
