//! SOFARegistry's publisher merge rules for one datum: last writer by `(version, registerTimestamp)` wins, removals leave tombstones.
//!
//! Rules (each unit-tested below):
//! - Publishers of a datum are keyed by `registerId`.
//! - A `Put` replaces the live publisher only when its `(version, registerTimestamp)` is
//!   greater (lexicographically, version first). An older write is ignored. An equal key with
//!   identical content is a no-op; an equal key with different content (which a correct
//!   session layer never produces) is resolved by a deterministic tie-break on the content so
//!   that every replica converges to the same winner whatever the arrival order.
//! - A `Remove` applies when its `(version, registerTimestamp)` is at least the live
//!   publisher's. It leaves a tombstone holding the removal key and the local time of
//!   removal. A later `Put` is blocked by the tombstone unless it is newer: greater key, or
//!   accepted by the session layer strictly after the removal's timestamp. The second
//!   clause lets a client re-register the same `registerId` after deleting it (the session
//!   layer starts again at version 1 with a fresh timestamp), while a delayed copy of the
//!   removed write (same or older version, earlier timestamp) stays dead.
//! - Tombstones are compacted once older than a configurable delay; until then they are
//!   what makes removal stick against reordered or retried writes.
//! - Dropping every publisher of a source (session-node lease expiry) leaves no tombstones:
//!   if that session node comes back, its re-publishes must be accepted.
//!
//! Every operation reports whether it was a real change, so the datum version and the
//! notifiers only move when the set of live publishers actually changed.

use crate::model::Publisher;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

/// What a removal left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tombstone {
    pub version: u64,
    pub register_timestamp: u64,
    /// Local milliseconds when the removal was applied; compaction uses this.
    pub removed_at_ms: u64,
}

/// One registerId's slot in a datum.
#[derive(Debug, Clone)]
pub enum Slot {
    Live(Arc<Publisher>),
    // Boxed: tombstones are rare and short-lived, and this keeps every live slot small.
    Removed(Box<Tombstone>),
}

/// The publishers of one datum, live and removed.
#[derive(Debug, Clone, Default)]
pub struct PublisherSet {
    slots: HashMap<Arc<str>, Slot>,
    live: usize,
}

fn key_of(p: &Publisher) -> (u64, u64) {
    (p.version, p.register_timestamp)
}

/// Deterministic order between two publishers with an equal key but different content.
fn tie_break(a: &Publisher, b: &Publisher) -> Ordering {
    a.source
        .cmp(&b.source)
        .then_with(|| a.session_id.cmp(&b.session_id))
        .then_with(|| a.zone.cmp(&b.zone))
        .then_with(|| a.data.cmp(&b.data))
        .then_with(|| a.client_id.cmp(&b.client_id))
        .then_with(|| a.data_info_id.cmp(&b.data_info_id))
}

impl PublisherSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of live publishers.
    pub fn live_count(&self) -> usize {
        self.live
    }

    /// Number of tombstones waiting for compaction.
    pub fn tombstone_count(&self) -> usize {
        self.slots.len() - self.live
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn get(&self, register_id: &str) -> Option<&Slot> {
        self.slots.get(register_id)
    }

    /// Live publishers, in no particular order.
    pub fn live(&self) -> impl Iterator<Item = &Arc<Publisher>> {
        self.slots.values().filter_map(|s| match s {
            Slot::Live(p) => Some(p),
            Slot::Removed(_) => None,
        })
    }

    /// All slots (live and tombstones), for replication.
    pub fn slots(&self) -> impl Iterator<Item = (&Arc<str>, &Slot)> {
        self.slots.iter()
    }

    /// Adds or replaces a publisher. Returns true when the live set changed.
    pub fn put(&mut self, publisher: Arc<Publisher>) -> bool {
        let incoming = key_of(&publisher);
        match self.slots.get_mut(&publisher.register_id) {
            None => {
                self.slots
                    .insert(publisher.register_id.clone(), Slot::Live(publisher));
                self.live += 1;
                true
            }
            Some(Slot::Live(current)) => {
                let wins = match incoming.cmp(&key_of(current)) {
                    Ordering::Greater => true,
                    Ordering::Less => false,
                    Ordering::Equal => {
                        // Same key: a retry of the same write (no-op) or, in a broken setup,
                        // two different writes; pick one deterministically.
                        tie_break(&publisher, current) == Ordering::Greater
                    }
                };
                if !wins {
                    return false;
                }
                // A newer key with identical content is stored (so later comparisons use
                // the newest key) but is not a change of the live set.
                let changed = !same_content(&publisher, current);
                *current = publisher;
                changed
            }
            Some(slot @ Slot::Removed(_)) => {
                let Slot::Removed(t) = &*slot else {
                    return false;
                };
                let newer = incoming > (t.version, t.register_timestamp)
                    || publisher.register_timestamp > t.register_timestamp;
                if !newer {
                    return false;
                }
                *slot = Slot::Live(publisher);
                self.live += 1;
                true
            }
        }
    }

    /// Removes a publisher if the removal is at least as new as it, leaving a tombstone.
    /// Returns true when the live set changed.
    pub fn remove(
        &mut self,
        register_id: &Arc<str>,
        version: u64,
        register_timestamp: u64,
        now_ms: u64,
    ) -> bool {
        let incoming = (version, register_timestamp);
        let tomb = Tombstone {
            version,
            register_timestamp,
            removed_at_ms: now_ms,
        };
        match self.slots.get_mut(register_id) {
            None => {
                // Remember the removal even for an unknown publisher: its Put may still be
                // on the way (reordered) and must not appear afterwards.
                self.slots
                    .insert(register_id.clone(), Slot::Removed(Box::new(tomb)));
                false
            }
            Some(slot @ Slot::Live(_)) => {
                let Slot::Live(current) = &*slot else {
                    return false;
                };
                if incoming < key_of(current) {
                    return false;
                }
                *slot = Slot::Removed(Box::new(tomb));
                self.live -= 1;
                true
            }
            Some(Slot::Removed(t)) => {
                if incoming > (t.version, t.register_timestamp) {
                    **t = tomb;
                }
                false
            }
        }
    }

    /// Drops every live publisher whose source is `source`, without tombstones.
    /// Returns how many were dropped.
    pub fn remove_source(&mut self, source: &str) -> usize {
        let before = self.live;
        self.slots.retain(|_, slot| match slot {
            Slot::Live(p) => &*p.source != source,
            Slot::Removed(_) => true,
        });
        self.live = self
            .slots
            .values()
            .filter(|s| matches!(s, Slot::Live(_)))
            .count();
        before - self.live
    }

    /// Drops tombstones removed at or before `older_than_ms`. Returns how many were dropped.
    pub fn compact(&mut self, older_than_ms: u64) -> usize {
        let before = self.slots.len();
        self.slots.retain(|_, slot| match slot {
            Slot::Live(_) => true,
            Slot::Removed(t) => t.removed_at_ms > older_than_ms,
        });
        before - self.slots.len()
    }

    /// Installs a tombstone as a replica received it (keeps the newer of the two).
    /// Returns true when the live set changed.
    pub fn install_tombstone(&mut self, register_id: &Arc<str>, tomb: Tombstone) -> bool {
        self.remove(
            register_id,
            tomb.version,
            tomb.register_timestamp,
            tomb.removed_at_ms,
        )
    }
}

/// Same publisher content (what subscribers see and what identifies the write).
pub fn same_content(a: &Publisher, b: &Publisher) -> bool {
    a.data == b.data
        && a.zone == b.zone
        && a.client_id == b.client_id
        && a.session_id == b.session_id
        && a.source == b.source
        && a.data_info_id == b.data_info_id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publ(id: &str, version: u64, ts: u64, data: &[&str]) -> Arc<Publisher> {
        Arc::new(Publisher {
            register_id: id.into(),
            data_info_id: "svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP".into(),
            zone: "z".into(),
            data: data
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .into(),
            version,
            register_timestamp: ts,
            client_id: None,
            session_id: "s1".into(),
            source: "node-a".into(),
        })
    }

    fn live_data(set: &PublisherSet, id: &str) -> Option<Vec<String>> {
        match set.get(id)? {
            Slot::Live(p) => Some(p.data.to_vec()),
            Slot::Removed(_) => None,
        }
    }

    #[test]
    fn first_put_is_a_change_and_counts() {
        let mut set = PublisherSet::new();
        assert!(set.put(publ("r1", 1, 100, &["a"])));
        assert_eq!(set.live_count(), 1);
        assert_eq!(live_data(&set, "r1"), Some(vec!["a".into()]));
    }

    #[test]
    fn newer_version_wins_older_is_ignored() {
        let mut set = PublisherSet::new();
        assert!(set.put(publ("r1", 2, 100, &["v2"])));
        assert!(
            !set.put(publ("r1", 1, 200, &["v1"])),
            "older version must lose"
        );
        assert_eq!(live_data(&set, "r1"), Some(vec!["v2".into()]));
        assert!(
            set.put(publ("r1", 3, 50, &["v3"])),
            "version is compared first"
        );
        assert_eq!(live_data(&set, "r1"), Some(vec!["v3".into()]));
    }

    #[test]
    fn same_version_newer_timestamp_wins() {
        let mut set = PublisherSet::new();
        assert!(set.put(publ("r1", 1, 100, &["old"])));
        assert!(set.put(publ("r1", 1, 101, &["new"])));
        assert!(!set.put(publ("r1", 1, 100, &["old"])));
        assert_eq!(live_data(&set, "r1"), Some(vec!["new".into()]));
    }

    #[test]
    fn identical_retry_is_not_a_change() {
        let mut set = PublisherSet::new();
        assert!(set.put(publ("r1", 1, 100, &["a"])));
        assert!(!set.put(publ("r1", 1, 100, &["a"])));
        // A newer key carrying the same content is stored but is not a change either.
        assert!(!set.put(publ("r1", 2, 100, &["a"])));
        assert_eq!(set.live_count(), 1);
    }

    #[test]
    fn equal_key_conflict_converges_whatever_the_order() {
        let a = publ("r1", 1, 100, &["a"]);
        let b = publ("r1", 1, 100, &["b"]);
        let mut x = PublisherSet::new();
        x.put(a.clone());
        x.put(b.clone());
        let mut y = PublisherSet::new();
        y.put(b);
        y.put(a);
        assert_eq!(live_data(&x, "r1"), live_data(&y, "r1"));
    }

    #[test]
    fn remove_leaves_tombstone_blocking_late_older_put() {
        let mut set = PublisherSet::new();
        set.put(publ("r1", 2, 100, &["a"]));
        assert!(set.remove(&"r1".into(), 2, 150, 1_000));
        assert_eq!(set.live_count(), 0);
        assert_eq!(set.tombstone_count(), 1);
        // The delayed copy of version 1 or 2 must not resurrect it.
        assert!(!set.put(publ("r1", 1, 90, &["late"])));
        assert!(!set.put(publ("r1", 2, 100, &["a"])));
        assert_eq!(set.live_count(), 0);
    }

    #[test]
    fn remove_older_than_live_is_ignored() {
        let mut set = PublisherSet::new();
        set.put(publ("r1", 3, 300, &["v3"]));
        assert!(!set.remove(&"r1".into(), 2, 200, 1_000));
        assert_eq!(live_data(&set, "r1"), Some(vec!["v3".into()]));
    }

    #[test]
    fn remove_before_put_still_blocks_that_put() {
        let mut set = PublisherSet::new();
        assert!(!set.remove(&"r1".into(), 1, 100, 1_000));
        assert!(!set.put(publ("r1", 1, 100, &["a"])));
        assert_eq!(set.live_count(), 0);
    }

    #[test]
    fn re_registration_after_removal_is_accepted() {
        let mut set = PublisherSet::new();
        set.put(publ("r1", 5, 100, &["a"]));
        set.remove(&"r1".into(), 5, 200, 1_000);
        // New registration: the session layer restarts at version 1, later timestamp.
        assert!(set.put(publ("r1", 1, 201, &["again"])));
        assert_eq!(live_data(&set, "r1"), Some(vec!["again".into()]));
    }

    #[test]
    fn compaction_drops_only_old_tombstones() {
        let mut set = PublisherSet::new();
        set.put(publ("r1", 1, 100, &["a"]));
        set.put(publ("r2", 1, 100, &["b"]));
        set.put(publ("r3", 1, 100, &["c"]));
        set.remove(&"r1".into(), 1, 100, 1_000);
        set.remove(&"r2".into(), 1, 100, 5_000);
        assert_eq!(set.compact(2_000), 1);
        assert!(set.get("r1").is_none());
        assert!(matches!(set.get("r2"), Some(Slot::Removed(_))));
        assert_eq!(set.live_count(), 1);
        // After compaction the (very late) older write is no longer blocked: this is why
        // the delay must exceed any plausible in-flight time.
        assert!(set.put(publ("r1", 1, 100, &["a"])));
    }

    #[test]
    fn remove_source_drops_only_that_source_without_tombstones() {
        let mut set = PublisherSet::new();
        set.put(publ("r1", 1, 100, &["a"]));
        let mut other = (*publ("r2", 1, 100, &["b"])).clone();
        other.source = "node-b".into();
        set.put(Arc::new(other));
        assert_eq!(set.remove_source("node-a"), 1);
        assert_eq!(set.live_count(), 1);
        assert_eq!(set.tombstone_count(), 0);
        assert!(live_data(&set, "r2").is_some());
        // The same session node re-publishing after its lease came back is accepted.
        assert!(set.put(publ("r1", 1, 100, &["a"])));
    }
}
