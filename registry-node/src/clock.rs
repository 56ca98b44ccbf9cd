//! The write-stamp clock: a hybrid logical clock that orders the writes of a registerId
//! across session nodes (see [`crate::model::WriteOrder`]).
//!
//! A stamp is a wall-clock millisecond and a logical counter within it ([`Stamp`]). A
//! session node stamps every write it accepts with [`StampClock::next`]: strictly above its
//! previous stamp, at least its wall clock, and above the highest stamp it has heard of
//! from the data nodes (they report the highest stamp they hold in every change-poll and
//! fetch answer). So when a client fails over and re-publishes a registerId through a new
//! session on another session node, that write is stamped later than the old session's
//! writes which that node has heard of, even when the two nodes' wall clocks disagree.
//!
//! Writes within one millisecond take the next counter value, not the next millisecond:
//! the millisecond never runs ahead of the highest wall clock in the cluster, however many
//! writes a second the session nodes accept. (A clock that moved on by a millisecond per
//! write ran ahead by a millisecond for every write beyond 1,000 a second, summed over the
//! session nodes through the data nodes' reports, until the data nodes refused the writes
//! as stamped too far in the future: BENCHMARKS.md, "Reading this run".)
//!
//! A stamp more than [`MAX_AHEAD_MS`] ahead of the local wall clock is not adopted: a
//! broken clock (or a hostile peer) must not drag every node's stamps to the end of time,
//! where they would stop increasing.

use crate::model::now_millis;
use std::sync::atomic::{AtomicU64, Ordering};

/// How far ahead of the local wall clock an observed stamp may be and still be adopted.
pub const MAX_AHEAD_MS: u64 = 3_600_000;

/// Bits of the logical counter in a packed stamp: a million writes in one millisecond
/// before the counter carries into the millisecond.
const SEQ_BITS: u32 = 20;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
/// The largest millisecond a packed stamp holds (the year 2527); later ones saturate.
const MAX_MS: u64 = u64::MAX >> SEQ_BITS;

/// One write stamp: `registerTimestamp` (milliseconds since the Unix epoch) and
/// `registerSeq` (the order of writes stamped within that millisecond). Ordered by the
/// millisecond first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Stamp {
    pub ms: u64,
    pub seq: u32,
}

impl Stamp {
    pub fn new(ms: u64, seq: u32) -> Stamp {
        Stamp { ms, seq }
    }

    fn packed(self) -> u64 {
        (self.ms.min(MAX_MS) << SEQ_BITS) | u64::from(self.seq).min(SEQ_MASK)
    }

    fn unpacked(packed: u64) -> Stamp {
        Stamp {
            ms: packed >> SEQ_BITS,
            seq: (packed & SEQ_MASK) as u32,
        }
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct StampClock {
    /// The highest stamp so far, packed (millisecond above the counter) so that one atomic
    /// compare-and-swap moves both.
    highest: AtomicU64,
}

impl StampClock {
    pub fn new() -> StampClock {
        StampClock::default()
    }

    /// The highest stamp handed out or adopted so far.
    pub fn highest(&self) -> Stamp {
        Stamp::unpacked(self.highest.load(Ordering::Relaxed))
    }

    /// Adopts `stamp` (seen on another node) unless it is implausibly far ahead.
    pub fn observe(&self, stamp: Stamp) {
        self.observe_at(stamp, now_millis());
    }

    fn observe_at(&self, stamp: Stamp, now_ms: u64) {
        if stamp.ms <= now_ms.saturating_add(MAX_AHEAD_MS) {
            self.highest.fetch_max(stamp.packed(), Ordering::Relaxed);
        }
    }

    /// The next stamp: above every stamp so far, at least the wall clock.
    pub fn next(&self) -> Stamp {
        self.next_at(now_millis())
    }

    fn next_at(&self, now_ms: u64) -> Stamp {
        let wall = Stamp::new(now_ms, 0).packed();
        let mut prev = self.highest.load(Ordering::Relaxed);
        loop {
            // Within the same millisecond the counter goes up (and carries into the
            // millisecond only after a million writes in it).
            let next = wall.max(prev.saturating_add(1));
            match self.highest.compare_exchange_weak(
                prev,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Stamp::unpacked(next),
                Err(p) => prev = p,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ms: u64, seq: u32) -> Stamp {
        Stamp::new(ms, seq)
    }

    #[test]
    fn stamps_strictly_increase_and_follow_the_wall_clock() {
        let c = StampClock::new();
        assert_eq!(c.next_at(100), s(100, 0));
        assert_eq!(c.next_at(100), s(100, 1));
        assert_eq!(
            c.next_at(50),
            s(100, 2),
            "a clock stepping back does not rewind stamps"
        );
        assert_eq!(c.next_at(500), s(500, 0));
    }

    #[test]
    fn many_writes_in_one_millisecond_do_not_run_ahead_of_the_wall_clock() {
        // 600,000 writes stamped within one millisecond: every stamp is that millisecond,
        // in order (a clock of one millisecond per write would be 10 minutes ahead).
        let c = StampClock::new();
        let mut last = s(0, 0);
        for _ in 0..600_000 {
            let stamp = c.next_at(1_000);
            assert_eq!(stamp.ms, 1_000);
            assert!(stamp > last);
            last = stamp;
        }
        // Past a million the counter carries into the next millisecond, still in order.
        let c = StampClock::new();
        c.observe_at(s(1_000, SEQ_MASK as u32), 1_000);
        assert_eq!(c.next_at(1_000), s(1_001, 0));
    }

    #[test]
    fn a_stamp_heard_of_from_another_node_moves_the_clock_past_it() {
        let c = StampClock::new();
        // Another session node, whose wall clock runs 10 s ahead, wrote at 10_100.
        c.observe_at(s(10_100, 7), 100);
        assert_eq!(c.next_at(100), s(10_100, 8));
        // An older observation changes nothing.
        c.observe_at(s(5_000, 0), 200);
        assert_eq!(c.next_at(200), s(10_100, 9));
        // Once the wall clock passes it, stamps follow the wall clock again.
        assert_eq!(c.next_at(10_101), s(10_101, 0));
    }

    #[test]
    fn an_implausible_stamp_is_not_adopted_and_nothing_overflows() {
        let c = StampClock::new();
        c.observe_at(s(u64::MAX, u32::MAX), 100);
        c.observe_at(s(100 + MAX_AHEAD_MS + 1, 0), 100);
        assert_eq!(c.next_at(100), s(100, 0));
        // Even at the very end of the range, stamps saturate instead of wrapping.
        let end = StampClock::new();
        let first = end.next_at(u64::MAX);
        assert_eq!(first.ms, MAX_MS);
        assert!(end.next_at(u64::MAX) >= first);
        end.observe_at(s(u64::MAX, u32::MAX), u64::MAX);
        assert_eq!(end.highest(), Stamp::unpacked(u64::MAX));
    }
}
