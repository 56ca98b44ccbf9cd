//! Push versions that keep moving when a datum's version goes backwards.
//!
//! A subscriber is pushed a datum only when its version is above the last one it was sent
//! (API.md: within one stream the version strictly increases). Datum versions are hybrid
//! clocks of the data node that owns the datum, so a *fresh* owner (a data node restarted
//! empty after every replica was lost, or one whose wall clock stepped back) can number the
//! datum below what subscribers were already sent, and they would not be pushed again until
//! its versions caught up: for as long as the clocks disagree.
//!
//! The session node therefore keeps, per subscribed dataInfoId, an offset added to the
//! datum version it pushes, and the newest version and write set it handed out. A change
//! notice at or below that version *arms* a check (the owner really changed the datum, but
//! numbered the change lower; without a notice a lower version is only a read that lags,
//! and is ignored as before). The next prepared read of that datum, if it is still at or
//! below the version handed out and holds other writes, raises the offset so that the
//! read goes out one above it; later changes by that owner keep the offset, so their
//! pushes increase too. With the offset at 0 (everything else) pushes carry the datum
//! version unchanged.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::model::DataInfoId;

#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Added to the datum version.
    offset: u64,
    /// The newest version handed out, and the hash of the writes it showed.
    top: u64,
    writes: u64,
    /// A notice at or below `top` arrived since.
    armed: bool,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct PushVersions {
    seen: Mutex<HashMap<DataInfoId, Seen>>,
}

impl PushVersions {
    /// A change notice for `id` at `version`.
    pub fn noticed(&self, id: &DataInfoId, version: u64) {
        if let Some(s) = self.seen.lock().get_mut(id) {
            if version.saturating_add(s.offset) <= s.top {
                s.armed = true;
            }
        }
    }

    /// The version to push a read of `id` under: the datum version (plus the offset), or
    /// one above the newest handed out when the owner went backwards (see the module docs).
    /// `writes` identifies the read's set of writes.
    pub fn version_for(&self, id: &DataInfoId, datum_version: u64, writes: u64) -> u64 {
        let mut seen = self.seen.lock();
        let s = seen.entry(id.clone()).or_insert(Seen {
            offset: 0,
            top: 0,
            writes,
            armed: false,
        });
        let v = datum_version.saturating_add(s.offset);
        if v > s.top {
            s.top = v;
            s.writes = writes;
            s.armed = false;
            return v;
        }
        if s.armed && writes != s.writes {
            s.top = s.top.saturating_add(1);
            s.offset = s.top.saturating_sub(datum_version);
            s.writes = writes;
            s.armed = false;
            tracing::info!(data_info_id = %id, datum_version, pushed = s.top, "datum version went backwards at its owner; pushing above what subscribers have");
            return s.top;
        }
        v
    }

    /// Forgets dataInfoIds for which `keep` is false (no subscriber left).
    pub fn retain(&self, mut keep: impl FnMut(&DataInfoId) -> bool) {
        self.seen.lock().retain(|id, _| keep(id));
    }

    pub fn len(&self) -> usize {
        self.seen.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_pass_through_while_they_increase() {
        let v = PushVersions::default();
        let id: DataInfoId = "a#@#b#@#c".into();
        assert_eq!(v.version_for(&id, 100, 1), 100);
        assert_eq!(v.version_for(&id, 200, 2), 200);
        // A lagging read, unannounced, is ignored as before (not pushed: not above 200).
        assert_eq!(v.version_for(&id, 150, 3), 150);
        assert_eq!(v.version_for(&id, 300, 4), 300);
    }

    #[test]
    fn a_change_announced_below_what_was_pushed_goes_out_above_it() {
        let v = PushVersions::default();
        let id: DataInfoId = "a#@#b#@#c".into();
        assert_eq!(v.version_for(&id, 1_000, 1), 1_000);
        // A fresh owner, its clock far behind, announces its change at 10.
        v.noticed(&id, 10);
        assert_eq!(v.version_for(&id, 10, 2), 1_001);
        // Its next changes keep increasing above what subscribers have.
        v.noticed(&id, 11);
        assert_eq!(v.version_for(&id, 11, 3), 1_002);
        // The offset stays: the owner's later versions go out above all of these.
        assert_eq!(v.version_for(&id, 2_000, 4), 2_000 + (1_002 - 11));
    }

    #[test]
    fn a_stale_notice_with_the_same_writes_changes_nothing() {
        let v = PushVersions::default();
        let id: DataInfoId = "a#@#b#@#c".into();
        assert_eq!(v.version_for(&id, 1_000, 1), 1_000);
        v.noticed(&id, 900);
        assert_eq!(v.version_for(&id, 1_000, 1), 1_000);
        assert_eq!(v.version_for(&id, u64::MAX, 5), u64::MAX);
        v.noticed(&id, 1);
        assert_eq!(v.version_for(&id, 1, 6), u64::MAX, "saturates, never wraps");
    }
}
