//! Delta pushes (opt-in, `"delta": true` on a subscriber): the data items added and removed
//! per zone between two versions of a datum, so that a small change to a large service
//! costs a small event instead of the whole list.
//!
//! A zone's data is a **multiset**: the same item may be published by several publishers,
//! or twice by one, and a push lists it once per occurrence. For each zone, with `old(x)`
//! and `new(x)` the occurrences of item `x` in the base and the new version, the delta lists
//! `x` in `removed` `old(x) - new(x)` times when that is positive, and in `added`
//! `new(x) - old(x)` times when that is positive; never in both. Applying it to the base
//! (take out one occurrence per `removed` entry, then add one per `added` entry) gives the
//! new version's multiset of every zone. A zone with nothing added or removed is absent; a
//! zone whose items are all removed is gone from the result. Order within a zone is not
//! part of it (a full push lists items by publisher, a delta cannot say where an item goes).
//!
//! Pure: the session layer keeps one base per datum with delta subscribers (see
//! [`DiffBase`]), and [`PreparedDatum`](super::prepared::PreparedDatum) renders the delta
//! once per version, shared by every delta subscriber's stream like a full push.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::model::Publisher;

/// Items added and removed in one zone, each listed once per occurrence (see the module
/// docs), in the order they appear in the new and the old version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZoneDelta<'a> {
    pub added: Vec<&'a str>,
    pub removed: Vec<&'a str>,
}

impl ZoneDelta<'_> {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// The delta of every zone that changed between `old` and `new` (zones grouped as a push
/// groups them, [`group_zones`](super::prepared::group_zones)).
pub fn diff<'a>(
    old: &BTreeMap<&'a str, Vec<&'a str>>,
    new: &BTreeMap<&'a str, Vec<&'a str>>,
) -> BTreeMap<&'a str, ZoneDelta<'a>> {
    let empty = Vec::new();
    let mut out = BTreeMap::new();
    let zones = old
        .keys()
        .chain(new.keys().filter(|z| !old.contains_key(*z)));
    for &zone in zones {
        let before = old.get(zone).unwrap_or(&empty);
        let after = new.get(zone).unwrap_or(&empty);
        let delta = diff_zone(before, after);
        if !delta.is_empty() {
            out.insert(zone, delta);
        }
    }
    out
}

/// The multiset difference of one zone's items.
fn diff_zone<'a>(old: &[&'a str], new: &[&'a str]) -> ZoneDelta<'a> {
    if old == new {
        return ZoneDelta::default();
    }
    // Occurrences in new minus occurrences in old, per item.
    let mut balance: HashMap<&str, i64> = HashMap::with_capacity(old.len().max(new.len()));
    for item in new {
        *balance.entry(item).or_default() += 1;
    }
    for item in old {
        *balance.entry(item).or_default() -= 1;
    }
    let mut delta = ZoneDelta::default();
    for &item in new {
        if let Some(n) = balance.get_mut(item) {
            if *n > 0 {
                *n -= 1;
                delta.added.push(item);
            }
        }
    }
    for &item in old {
        if let Some(n) = balance.get_mut(item) {
            if *n < 0 {
                *n += 1;
                delta.removed.push(item);
            }
        }
    }
    delta
}

/// The state of a datum's last rendered version, kept once per datum that has delta
/// subscribers, to diff the next version against: its push version, the hash of its writes
/// (two reads of one version may differ; a delta applies only to exactly the state a
/// subscriber was sent) and its publishers (shared `Arc`s, not copies of their data).
#[derive(Debug)]
pub struct DiffBase {
    pub version: u64,
    pub writes: u64,
    pub publishers: Vec<Arc<Publisher>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Applies `delta` to `zones` as the client library does: one occurrence out per removed
    /// entry, one in per added entry, zones left empty dropped. `Err` names an item the delta
    /// removes that is not there: the holder is not at the delta's base.
    fn apply(
        zones: &mut BTreeMap<String, Vec<String>>,
        delta: &BTreeMap<&str, ZoneDelta<'_>>,
    ) -> Result<(), String> {
        for (zone, d) in delta {
            let items = zones.entry((*zone).to_owned()).or_default();
            for removed in &d.removed {
                match items.iter().rposition(|i| i == removed) {
                    Some(at) => {
                        items.swap_remove(at);
                    }
                    None => return Err(format!("zone {zone:?} has no item {removed:?} to remove")),
                }
            }
            items.extend(d.added.iter().map(|s| (*s).to_owned()));
            if items.is_empty() {
                zones.remove(*zone);
            }
        }
        Ok(())
    }

    fn zones<'a>(pairs: &[(&'a str, &[&'a str])]) -> BTreeMap<&'a str, Vec<&'a str>> {
        pairs
            .iter()
            .filter(|(_, items)| !items.is_empty())
            .map(|(z, items)| (*z, items.to_vec()))
            .collect()
    }

    fn owned(z: &BTreeMap<&str, Vec<&str>>) -> BTreeMap<String, Vec<String>> {
        z.iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn sorted(mut z: BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
        z.values_mut().for_each(|v| v.sort());
        z
    }

    #[test]
    fn one_item_replaced_is_one_added_and_one_removed() {
        let old = zones(&[("z1", &["a", "b", "c"]), ("z2", &["d"])]);
        let new = zones(&[("z1", &["a", "x", "c"]), ("z2", &["d"])]);
        let d = diff(&old, &new);
        assert_eq!(d.len(), 1, "an unchanged zone is absent");
        assert_eq!(d["z1"].added, vec!["x"]);
        assert_eq!(d["z1"].removed, vec!["b"]);
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn duplicates_count_by_occurrence() {
        // "a" twice → three times, "b" twice → once: one "a" added, one "b" removed.
        let old = zones(&[("z", &["a", "b", "a", "b"])]);
        let new = zones(&[("z", &["b", "a", "a", "a"])]);
        let d = diff(&old, &new);
        assert_eq!(d["z"].added, vec!["a"]);
        assert_eq!(d["z"].removed, vec!["b"]);
        // A reordering alone changes no multiset.
        let shuffled = zones(&[("z", &["b", "b", "a", "a"])]);
        assert!(diff(&old, &shuffled).is_empty());
    }

    #[test]
    fn zones_that_appear_or_vanish() {
        let old = zones(&[("gone", &["a", "a"]), ("kept", &["k"])]);
        let new = zones(&[("kept", &["k"]), ("new", &["n"])]);
        let d = diff(&old, &new);
        assert_eq!(d["gone"].removed, vec!["a", "a"]);
        assert!(d["gone"].added.is_empty());
        assert_eq!(d["new"].added, vec!["n"]);
        let mut held = owned(&old);
        apply(&mut held, &d).unwrap();
        assert_eq!(held, owned(&new), "an emptied zone is gone");
    }

    #[test]
    fn applying_to_the_wrong_base_is_refused() {
        let old = zones(&[("z", &["a"])]);
        let new = zones(&[("z", &["b"])]);
        let d = diff(&old, &new);
        let mut other = owned(&zones(&[("z", &["c"])]));
        assert!(apply(&mut other, &d).unwrap_err().contains("\"a\""));
    }

    #[test]
    fn applying_a_diff_gives_the_new_multisets_for_any_change() {
        let pool = ["a", "b", "c", "d", "e"];
        let zone_names = ["z1", "z2", "z3"];
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        for _ in 0..500 {
            let mut random_zones = || {
                let mut z: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
                for name in zone_names {
                    let n = rng.random_range(0..6);
                    let items: Vec<&str> = (0..n)
                        .map(|_| pool[rng.random_range(0..pool.len())])
                        .collect();
                    if !items.is_empty() {
                        z.insert(name, items);
                    }
                }
                z
            };
            let old = random_zones();
            let new = random_zones();
            let d = diff(&old, &new);
            for zd in d.values() {
                assert!(!zd.is_empty());
                assert!(
                    zd.added.iter().all(|a| !zd.removed.contains(a)),
                    "never both added and removed: {zd:?}"
                );
            }
            let mut held = owned(&old);
            apply(&mut held, &d).unwrap();
            assert_eq!(
                sorted(held),
                sorted(owned(&new)),
                "{old:?} → {new:?}: {d:?}"
            );
        }
    }
}
