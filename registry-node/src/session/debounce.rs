//! Push debouncing: which dataInfoIds are due for a push when, free of I/O and clocks.
//!
//! A change notice schedules a push `delay` after it arrives; a newer notice for the same
//! dataInfoId replaces the pending one (keeping the newest version) and pushes the deadline
//! back, but never beyond `max_delay` after the first notice that is still pending.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::model::DataInfoId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    version: u64,
    first_at: Instant,
    due_at: Instant,
}

/// A push that has waited long enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuePush {
    pub data_info_id: DataInfoId,
    /// The newest version announced while the push was pending.
    pub version: u64,
    /// When the first change merged into this push was noticed (publish-to-push latency).
    pub first_at: Instant,
}

#[derive(Debug, Default)]
pub struct Debouncer {
    pending: HashMap<DataInfoId, Pending>,
}

impl Debouncer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a change of `data_info_id` to `version` noticed at `now`.
    pub fn notice(
        &mut self,
        data_info_id: DataInfoId,
        version: u64,
        now: Instant,
        delay: Duration,
        max_delay: Duration,
    ) {
        let max_delay = max_delay.max(delay);
        match self.pending.get_mut(&data_info_id) {
            Some(p) => {
                p.version = p.version.max(version);
                p.due_at = (now + delay).min(p.first_at + max_delay);
            }
            None => {
                self.pending.insert(
                    data_info_id,
                    Pending {
                        version,
                        first_at: now,
                        due_at: now + delay,
                    },
                );
            }
        }
    }

    /// The earliest deadline among pending pushes.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.due_at).min()
    }

    /// Removes and returns every push whose deadline is at or before `now`.
    pub fn take_due(&mut self, now: Instant) -> Vec<DuePush> {
        let mut due = Vec::new();
        self.pending.retain(|id, p| {
            if p.due_at <= now {
                due.push(DuePush {
                    data_info_id: id.clone(),
                    version: p.version,
                    first_at: p.first_at,
                });
                false
            } else {
                true
            }
        });
        due
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Where a subscriber's pushes stand: the newest datum version it was sent and in which
/// stream generation, so that a push never goes backwards and, within one open stream, the
/// version strictly increases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushedVersion {
    last: Option<(u64, u64)>,
}

impl PushedVersion {
    /// Whether a datum at `version` may be pushed on the stream of generation `stream_gen`.
    /// A reopened stream (new generation) may repeat the last version, never go below it.
    pub fn should_push(&self, stream_gen: u64, version: u64) -> bool {
        match self.last {
            None => true,
            Some((gen, last)) if gen == stream_gen => version > last,
            Some((_, last)) => version >= last,
        }
    }

    pub fn record(&mut self, stream_gen: u64, version: u64) {
        self.last = Some((stream_gen, version));
    }

    /// The newest version pushed, on any stream.
    pub fn version(&self) -> Option<u64> {
        self.last.map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_millis(1000);

    fn id(s: &str) -> DataInfoId {
        s.into()
    }

    #[test]
    fn a_notice_is_due_after_the_delay() {
        let t0 = Instant::now();
        let mut d = Debouncer::new();
        d.notice(id("a"), 1, t0, DELAY, MAX);
        assert_eq!(d.next_due(), Some(t0 + DELAY));
        assert!(d.take_due(t0 + DELAY - Duration::from_millis(1)).is_empty());
        let due = d.take_due(t0 + DELAY);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].version, 1);
        assert_eq!(due[0].first_at, t0);
        assert!(d.is_empty());
        assert_eq!(d.next_due(), None);
    }

    #[test]
    fn a_newer_notice_replaces_the_pending_one_and_keeps_the_newest_version() {
        let t0 = Instant::now();
        let mut d = Debouncer::new();
        d.notice(id("a"), 5, t0, DELAY, MAX);
        d.notice(id("a"), 3, t0 + Duration::from_millis(100), DELAY, MAX);
        assert_eq!(d.len(), 1);
        assert_eq!(d.next_due(), Some(t0 + Duration::from_millis(300)));
        let due = d.take_due(t0 + Duration::from_millis(300));
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].version, 5,
            "an older version never replaces a newer one"
        );
    }

    #[test]
    fn a_stream_of_notices_is_never_postponed_past_the_max_delay() {
        let t0 = Instant::now();
        let mut d = Debouncer::new();
        let mut now = t0;
        for v in 1..=100 {
            d.notice(id("a"), v, now, DELAY, MAX);
            assert!(d.next_due().unwrap() <= t0 + MAX);
            now += Duration::from_millis(50);
            if now >= t0 + MAX {
                break;
            }
        }
        assert_eq!(d.next_due(), Some(t0 + MAX));
        let due = d.take_due(t0 + MAX);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].version, 20);
        // After the forced push, a new notice starts a fresh window.
        d.notice(id("a"), 20, t0 + MAX, DELAY, MAX);
        assert_eq!(d.next_due(), Some(t0 + MAX + DELAY));
    }

    #[test]
    fn a_delay_longer_than_the_max_delay_still_waits_the_delay() {
        let t0 = Instant::now();
        let mut d = Debouncer::new();
        let long = Duration::from_millis(2000);
        d.notice(id("a"), 1, t0, long, MAX);
        d.notice(id("a"), 2, t0 + Duration::from_millis(10), long, MAX);
        assert_eq!(d.next_due(), Some(t0 + long));
    }

    #[test]
    fn ids_are_debounced_independently() {
        let t0 = Instant::now();
        let mut d = Debouncer::new();
        d.notice(id("a"), 1, t0, DELAY, MAX);
        d.notice(id("b"), 7, t0 + Duration::from_millis(150), DELAY, MAX);
        let due = d.take_due(t0 + DELAY);
        assert_eq!(due.len(), 1);
        assert_eq!(&*due[0].data_info_id, "a");
        assert_eq!(d.next_due(), Some(t0 + Duration::from_millis(350)));
        let due = d.take_due(t0 + Duration::from_millis(400));
        assert_eq!(&*due[0].data_info_id, "b");
        assert_eq!(due[0].version, 7);
    }

    #[test]
    fn zero_delay_is_due_at_once() {
        let t0 = Instant::now();
        let mut d = Debouncer::new();
        d.notice(id("a"), 1, t0, Duration::ZERO, MAX);
        assert_eq!(d.take_due(t0).len(), 1);
    }

    #[test]
    fn pushed_version_strictly_increases_within_a_stream() {
        let mut p = PushedVersion::default();
        assert!(p.should_push(1, 0), "the first push may carry version 0");
        p.record(1, 0);
        assert!(!p.should_push(1, 0));
        assert!(p.should_push(1, 1));
        p.record(1, 4);
        assert!(!p.should_push(1, 3), "never backwards");
        assert!(
            !p.should_push(1, 4),
            "never the same version twice in one stream"
        );
        assert!(p.should_push(1, 5));
        assert_eq!(p.version(), Some(4));
    }

    #[test]
    fn a_reopened_stream_may_repeat_but_never_go_below_the_last_version() {
        let mut p = PushedVersion::default();
        p.record(1, 4);
        assert!(p.should_push(2, 4));
        assert!(!p.should_push(2, 3));
        p.record(2, 4);
        assert!(!p.should_push(2, 4));
        assert!(p.should_push(2, 5));
    }
}
