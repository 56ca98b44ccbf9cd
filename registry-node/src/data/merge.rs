//! SOFARegistry's publisher merge rules for one datum, with owners: the newest write of a registerId wins by [`WriteOrder`], removals leave tombstones.
//!
//! Rules (each unit-tested below):
//! - Publishers of a datum are keyed by `registerId`. Each write has an owner (the session
//!   node `source` and the session's opaque `owner` token) and an order, [`WriteOrder`]:
//!   `(registerTimestamp, owner, version)`, the timestamp first. A session that takes a
//!   registerId over (a client that failed over and re-published it through a new session,
//!   on any session node) writes with a later timestamp than every write of the session it
//!   left, so its write is the newest whatever their versions.
//! - A `Put` replaces the live publisher only when its order is greater. An older write is
//!   ignored. An equal order with identical content is a no-op; an equal order with
//!   different content (which a correct session layer never produces) is resolved by a
//!   deterministic tie-break on the content so that every replica converges to the same
//!   winner whatever the arrival order.
//! - A `Remove` names the write it removes (its order). It applies when that order is at
//!   least the live write's: the owner's own latest write, or anything older. A newer
//!   owner's write is never removed by an older owner's removal, whichever arrives first:
//!   the removal leaves a tombstone holding the removed write's order (and the local time of
//!   removal), and the tombstone blocks only writes that are not newer than it. So a late
//!   copy of the removed write stays dead, and neither the new owner's write nor a
//!   re-registration (a later timestamp) is ever blocked by an old owner's tombstone.
//! - Tombstones are compacted once older than a configurable delay; until then they are
//!   what makes removal stick against reordered or retried writes.
//! - Dropping every publisher of a source (session-node lease expiry) drops only the live
//!   writes whose owner is on that source (a publisher taken over by another session node is
//!   kept) and leaves no tombstones: if that session node comes back, its re-publishes must
//!   be accepted (and lose to any newer owner by the order above).
//!
//! Every operation reports whether it was a real change, so the datum version and the
//! notifiers only move when the set of live publishers actually changed. Nothing here reads
//! a sessionId: owners are compared by their opaque token.

use crate::model::{Publisher, WriteOrder};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

/// What a removal left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tombstone {
    /// The order of the removed write: writes not newer than it stay dead.
    pub order: WriteOrder,
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

/// Deterministic order between two publishers with an equal order but different content.
fn tie_break(a: &Publisher, b: &Publisher) -> Ordering {
    a.source
        .cmp(&b.source)
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
        let incoming = publisher.order();
        match self.slots.get_mut(&publisher.register_id) {
            None => {
                self.slots
                    .insert(publisher.register_id.clone(), Slot::Live(publisher));
                self.live += 1;
                true
            }
            Some(Slot::Live(current)) => {
                let wins = match incoming.cmp(&current.order()) {
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
                if incoming <= t.order {
                    return false;
                }
                *slot = Slot::Live(publisher);
                self.live += 1;
                true
            }
        }
    }

    /// Removes the write of order `order` (and any older one), leaving a tombstone; a newer
    /// write (another owner's takeover, or a later write of the same owner) stays.
    /// Returns true when the live set changed.
    pub fn remove(&mut self, register_id: &Arc<str>, order: WriteOrder, now_ms: u64) -> bool {
        let incoming = order;
        let tomb = Tombstone {
            order,
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
                if incoming < current.order() {
                    return false;
                }
                *slot = Slot::Removed(Box::new(tomb));
                self.live -= 1;
                true
            }
            Some(Slot::Removed(t)) => {
                if incoming > t.order {
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
        self.remove(register_id, tomb.order, tomb.removed_at_ms)
    }
}

/// Same publisher content (what subscribers see and what identifies the write).
pub fn same_content(a: &Publisher, b: &Publisher) -> bool {
    a.data == b.data
        && a.zone == b.zone
        && a.client_id == b.client_id
        && a.owner == b.owner
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
            register_seq: 0,
            client_id: None,
            session_id: "s1".into(),
            source: "node-a".into(),
            owner: 1,
            principal: None,
        })
    }

    /// A write of `id` by the session with token `owner` on session node `source`.
    fn by(source: &str, owner: u64, id: &str, version: u64, ts: u64, data: &str) -> Arc<Publisher> {
        let mut p = (*publ(id, version, ts, &[data])).clone();
        p.source = source.into();
        p.owner = owner;
        Arc::new(p)
    }

    fn order(version: u64, ts: u64) -> WriteOrder {
        WriteOrder {
            register_timestamp: ts,
            register_seq: 0,
            owner: 1,
            version,
        }
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
    fn newer_write_wins_older_is_ignored() {
        let mut set = PublisherSet::new();
        assert!(set.put(publ("r1", 2, 200, &["v2"])));
        assert!(
            !set.put(publ("r1", 1, 100, &["v1"])),
            "older write must lose"
        );
        assert_eq!(live_data(&set, "r1"), Some(vec!["v2".into()]));
        assert!(set.put(publ("r1", 3, 300, &["v3"])));
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
        assert!(set.remove(&"r1".into(), order(2, 100), 1_000));
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
        assert!(!set.remove(&"r1".into(), order(2, 200), 1_000));
        assert_eq!(live_data(&set, "r1"), Some(vec!["v3".into()]));
    }

    #[test]
    fn remove_before_put_still_blocks_that_put() {
        let mut set = PublisherSet::new();
        assert!(!set.remove(&"r1".into(), order(1, 100), 1_000));
        assert!(!set.put(publ("r1", 1, 100, &["a"])));
        assert_eq!(set.live_count(), 0);
    }

    #[test]
    fn re_registration_after_removal_is_accepted() {
        let mut set = PublisherSet::new();
        set.put(publ("r1", 5, 100, &["a"]));
        set.remove(&"r1".into(), order(5, 100), 1_000);
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
        set.remove(&"r1".into(), order(1, 100), 1_000);
        set.remove(&"r2".into(), order(1, 100), 5_000);
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

    /// Applies `ops` in the order given by `perm` to a fresh set.
    fn apply_in(ops: &[Op], perm: &[usize]) -> PublisherSet {
        let mut set = PublisherSet::new();
        for &i in perm {
            match &ops[i] {
                Op::Put(p) => {
                    set.put(p.clone());
                }
                Op::Remove(p) => {
                    set.remove(&p.register_id, p.order(), 1_000);
                }
            }
        }
        set
    }

    #[derive(Clone)]
    enum Op {
        Put(Arc<Publisher>),
        Remove(Arc<Publisher>),
    }

    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for p in permutations(n - 1) {
            for i in 0..=p.len() {
                let mut q = p.clone();
                q.insert(i, n - 1);
                out.push(q);
            }
        }
        out
    }

    #[test]
    fn a_takeover_survives_the_old_owners_removal_in_every_arrival_order() {
        // Session A (node a) wrote r1 five times; the client failed over and session B
        // (node b) re-published it (version 1, later timestamp); then A ended.
        let a = by("node-a", 11, "r1", 5, 100, "a");
        let b = by("node-b", 22, "r1", 1, 200, "b");
        let ops = [Op::Put(a.clone()), Op::Put(b.clone()), Op::Remove(a)];
        for perm in permutations(ops.len()) {
            let set = apply_in(&ops, &perm);
            assert_eq!(
                live_data(&set, "r1"),
                Some(vec!["b".to_string()]),
                "arrival order {perm:?}"
            );
        }
    }

    #[test]
    fn the_new_owners_removal_beats_the_old_owners_late_write_in_every_order() {
        let a = by("node-a", 11, "r1", 5, 100, "a");
        let b = by("node-b", 22, "r1", 1, 200, "b");
        let ops = [Op::Put(a), Op::Put(b.clone()), Op::Remove(b)];
        for perm in permutations(ops.len()) {
            let set = apply_in(&ops, &perm);
            assert_eq!(set.live_count(), 0, "arrival order {perm:?}");
        }
    }

    #[test]
    fn an_old_owners_tombstone_never_blocks_the_new_owner() {
        let mut set = PublisherSet::new();
        let a = by("node-a", 11, "r1", 3, 100, "a");
        set.put(a.clone());
        assert!(set.remove(&a.register_id, a.order(), 1_000));
        // The new owner's first write (version 1) and its re-publish after its own
        // delete-and-register are both accepted.
        assert!(set.put(by("node-b", 22, "r1", 1, 150, "b")));
        assert_eq!(live_data(&set, "r1"), Some(vec!["b".to_string()]));
    }

    #[test]
    fn two_owners_in_one_millisecond_converge_on_one_winner() {
        let a = by("node-a", 11, "r1", 1, 100, "a");
        let b = by("node-b", 22, "r1", 1, 100, "b");
        let ops = [Op::Put(a.clone()), Op::Put(b.clone()), Op::Remove(a)];
        let mut results = std::collections::HashSet::new();
        for perm in permutations(ops.len()) {
            results.insert(live_data(&apply_in(&ops, &perm), "r1"));
        }
        assert_eq!(results.len(), 1, "replicas disagree: {results:?}");
        // The greater token wins the tie, so A's removal cannot touch it.
        assert_eq!(
            results.into_iter().next().unwrap(),
            Some(vec!["b".to_string()])
        );
    }

    #[test]
    fn lease_expiry_of_the_old_session_node_keeps_a_taken_over_publisher() {
        let mut set = PublisherSet::new();
        set.put(by("node-a", 11, "r1", 1, 100, "a"));
        set.put(by("node-b", 22, "r1", 1, 200, "b"));
        assert_eq!(set.remove_source("node-a"), 0);
        assert_eq!(live_data(&set, "r1"), Some(vec!["b".to_string()]));
        // The old node's reconciliation re-publishing its (older) write changes nothing.
        assert!(!set.put(by("node-a", 11, "r1", 1, 100, "a")));
        assert_eq!(live_data(&set, "r1"), Some(vec!["b".to_string()]));
    }
}
