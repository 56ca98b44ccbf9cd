//! The consistent-hash ring of data nodes: virtual nodes, a stable hash, `owners(dataInfoId, n)`.
//!
//! The hash is part of the cluster protocol: every node must compute the same owners for
//! the same membership, whatever its build, so **changing any of this is a breaking change**:
//! - a member is placed by its key: its ring identity when the membership document gives
//!   one (`ids`, a StatefulSet pod's name), else its address as written in the document;
//! - a member with key `k` gets `virtual_nodes` points at `xxh3_64("{k}#{i}")` for `i` in
//!   `0..virtual_nodes` (xxh3 64-bit, seed 0, UTF-8);
//! - a dataInfoId sits at `xxh3_64(dataInfoId)`;
//! - its owners are found walking clockwise from the first point `>=` its hash (wrapping),
//!   collecting distinct members; the first is the primary, the next ones the backups;
//! - two points with the same hash are ordered by member key, so ties are stable too.
//!
//! Placing by identity is what keeps a restarted data pod's place: it comes back at a new
//! IP, the document maps the new address to the same identity, the points do not move, and
//! the only copying is the restarted node refilling itself from its backups.

use xxhash_rust::xxh3::xxh3_64;

/// Default points per member (DESIGN.md).
pub const DEFAULT_VIRTUAL_NODES: usize = 1000;

/// A ring built from one membership. Cheap to query; rebuild on membership change.
#[derive(Debug, Clone)]
pub struct Ring {
    /// Member addresses, in the order of their keys (the order ties are broken in).
    by_key: Vec<String>,
    /// The same addresses, sorted, for [`Ring::members`] and [`Ring::contains`].
    members: Vec<String>,
    /// (point hash, index into `by_key`), sorted.
    points: Vec<(u64, u32)>,
}

/// Where a dataInfoId sits on the ring.
pub fn key_hash(data_info_id: &str) -> u64 {
    xxh3_64(data_info_id.as_bytes())
}

/// Where a member's `i`-th virtual node sits on the ring.
pub fn point_hash(member: &str, i: usize) -> u64 {
    xxh3_64(format!("{member}#{i}").as_bytes())
}

impl Ring {
    /// Builds the ring of members placed by their addresses; duplicate members count once,
    /// order of `members` does not matter.
    pub fn new<S: AsRef<str>>(members: &[S], virtual_nodes: usize) -> Ring {
        let placed: Vec<(String, String)> = members
            .iter()
            .map(|m| (m.as_ref().to_owned(), m.as_ref().to_owned()))
            .collect();
        Ring::placed(placed, virtual_nodes)
    }

    /// Builds the ring of a membership document: its members, each placed by its ring
    /// identity (`ids`) or, without one, by its address.
    pub fn of(doc: &registry_types::MembershipDoc, virtual_nodes: usize) -> Ring {
        let placed = doc
            .members
            .iter()
            .map(|m| (doc.ring_key(m).to_owned(), m.clone()))
            .collect();
        Ring::placed(placed, virtual_nodes)
    }

    /// `(key, address)` pairs: points hash the key, owners are answered as addresses.
    fn placed(mut placed: Vec<(String, String)>, virtual_nodes: usize) -> Ring {
        placed.sort();
        placed.dedup();
        let vnodes = virtual_nodes.max(1);
        let mut points = Vec::with_capacity(placed.len() * vnodes);
        for (idx, (key, _)) in placed.iter().enumerate() {
            for i in 0..vnodes {
                points.push((point_hash(key, i), idx as u32));
            }
        }
        // Members are sorted by key, so ordering ties by index orders them by key.
        points.sort_unstable();
        let by_key: Vec<String> = placed.into_iter().map(|(_, addr)| addr).collect();
        let mut members = by_key.clone();
        members.sort();
        Ring {
            by_key,
            members,
            points,
        }
    }

    /// The member addresses, sorted.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn contains(&self, member: &str) -> bool {
        self.members
            .binary_search_by(|m| m.as_str().cmp(member))
            .is_ok()
    }

    /// Up to `n` distinct members owning `data_info_id`, primary first (fewer when the ring
    /// has fewer members; none when it is empty).
    pub fn owners(&self, data_info_id: &str, n: usize) -> Vec<&str> {
        let want = n.min(self.members.len());
        let mut out: Vec<&str> = Vec::with_capacity(want);
        if want == 0 {
            return out;
        }
        let h = key_hash(data_info_id);
        let start = self.points.partition_point(|(p, _)| *p < h);
        let len = self.points.len();
        for k in 0..len {
            let (_, idx) = self.points[(start + k) % len];
            let m = self.by_key[idx as usize].as_str();
            if !out.contains(&m) {
                out.push(m);
                if out.len() == want {
                    break;
                }
            }
        }
        out
    }

    /// The primary owner of `data_info_id`.
    pub fn primary(&self, data_info_id: &str) -> Option<&str> {
        self.owners(data_info_id, 1).into_iter().next()
    }

    /// Whether `member` is among the `n` owners of `data_info_id`.
    pub fn is_owner(&self, data_info_id: &str, member: &str, n: usize) -> bool {
        self.owners(data_info_id, n).contains(&member)
    }

    /// Each member's share of the hash space it is the primary owner of (the shares sum to
    /// 1; none for an empty ring): the arc from the previous point up to each of its points.
    pub fn primary_shares(&self) -> Vec<(&str, f64)> {
        let mut arcs = vec![0u128; self.members.len()];
        for (i, (hash, idx)) in self.points.iter().enumerate() {
            let prev = self.points[(i + self.points.len() - 1) % self.points.len()].0;
            // The first point's arc wraps around zero; a ring of one point is all of it.
            let arc = match hash.wrapping_sub(prev) {
                0 if self.points.len() == 1 => 1u128 << 64,
                a => u128::from(a),
            };
            arcs[*idx as usize] += arc;
        }
        let whole = (1u128 << 64) as f64;
        self.by_key
            .iter()
            .zip(arcs)
            .map(|(m, arc)| (m.as_str(), arc as f64 / whole))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{}:9622", i + 1)).collect()
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("com.example.Service{i}#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP"))
            .collect()
    }

    #[test]
    fn primary_shares_sum_to_one_and_match_where_keys_land() {
        assert!(Ring::new::<String>(&[], 10).primary_shares().is_empty());
        assert_eq!(
            Ring::new(&members(1), 1).primary_shares(),
            [("10.0.0.1:9622", 1.0)]
        );
        let ring = Ring::new(&members(3), DEFAULT_VIRTUAL_NODES);
        let shares = ring.primary_shares();
        let sum: f64 = shares.iter().map(|(_, s)| s).sum();
        assert!((sum - 1.0).abs() < 1e-9, "{sum}");
        let keys = keys(30_000);
        let mut landed: HashMap<&str, usize> = HashMap::new();
        for k in &keys {
            *landed.entry(ring.primary(k).expect("owner")).or_default() += 1;
        }
        for (m, share) in shares {
            let seen = landed[m] as f64 / keys.len() as f64;
            assert!(
                (seen - share).abs() < 0.02,
                "{m}: share {share}, keys {seen}"
            );
        }
    }

    #[test]
    fn owners_are_distinct_primary_first_and_capped() {
        let ring = Ring::new(&members(5), 100);
        for k in keys(200) {
            let o = ring.owners(&k, 3);
            assert_eq!(o.len(), 3);
            let mut d = o.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 3, "owners must be distinct");
            assert_eq!(ring.primary(&k), Some(o[0]));
            // A bigger n extends the list, it does not reorder it.
            assert_eq!(&ring.owners(&k, 5)[..3], &o[..]);
        }
        let small = Ring::new(&members(2), 100);
        assert_eq!(
            small.owners("x", 3).len(),
            2,
            "RF is capped at the member count"
        );
        assert!(Ring::new::<String>(&[], 100).owners("x", 3).is_empty());
    }

    #[test]
    fn balanced_over_ten_members() {
        let ring = Ring::new(&members(10), DEFAULT_VIRTUAL_NODES);
        let ks = keys(100_000);
        let mut count: HashMap<&str, usize> = HashMap::new();
        for k in &ks {
            *count.entry(ring.primary(k).unwrap_or("")).or_default() += 1;
        }
        assert_eq!(count.len(), 10);
        let ideal = ks.len() as f64 / 10.0;
        for (m, c) in &count {
            let dev = (*c as f64 - ideal).abs() / ideal;
            assert!(
                dev < 0.15,
                "{m} has {c} keys, {:.1}% off the ideal",
                dev * 100.0
            );
        }
    }

    #[test]
    fn about_one_nth_of_keys_move_on_add_and_remove() {
        let before = Ring::new(&members(10), DEFAULT_VIRTUAL_NODES);
        let after_add = Ring::new(&members(11), DEFAULT_VIRTUAL_NODES);
        let after_remove = Ring::new(&members(9), DEFAULT_VIRTUAL_NODES);
        let ks = keys(50_000);
        let moved = |a: &Ring, b: &Ring| {
            ks.iter().filter(|k| a.primary(k) != b.primary(k)).count() as f64 / ks.len() as f64
        };
        let add = moved(&before, &after_add);
        assert!((0.06..0.13).contains(&add), "adding 1 of 11 moved {add}");
        let remove = moved(&before, &after_remove);
        assert!(
            (0.07..0.14).contains(&remove),
            "removing 1 of 10 moved {remove}"
        );
        // Keys only move to the new member, or away from the removed one.
        for k in &ks {
            let (p, q) = (before.primary(k), after_add.primary(k));
            assert!(p == q || q == Some("10.0.0.11:9622"));
            let r = after_remove.primary(k);
            assert!(p == r || p == Some("10.0.0.10:9622"));
        }
    }

    #[test]
    fn member_order_and_duplicates_do_not_matter() {
        let mut m = members(4);
        let a = Ring::new(&m, 50);
        m.reverse();
        m.push(m[0].clone());
        let b = Ring::new(&m, 50);
        for k in keys(500) {
            assert_eq!(a.owners(&k, 3), b.owners(&k, 3));
        }
    }

    /// A document of `n` members `10.0.{gen}.{i}:9622`, with or without ring identities.
    fn doc_of(addrs: &[String], with_ids: bool) -> registry_types::MembershipDoc {
        registry_types::MembershipDoc {
            epoch: 1,
            members: addrs.to_vec(),
            ids: if with_ids {
                addrs
                    .iter()
                    .enumerate()
                    .map(|(i, a)| (a.clone(), format!("reg-data-{i}")))
                    .collect()
            } else {
                Default::default()
            },
            ..Default::default()
        }
    }

    /// A rolling upgrade of 5 data pods, each coming back at a new IP: placed by address,
    /// every restart gives about 3/5 of the datums (RF 3) another owner set; placed by
    /// identity, no datum changes owners (only the restarted node refills itself).
    #[test]
    fn members_placed_by_identity_keep_their_place_across_new_addresses() {
        let ks = keys(20_000);
        for with_ids in [false, true] {
            let mut addrs = members(5);
            let mut ring = Ring::of(&doc_of(&addrs, with_ids), DEFAULT_VIRTUAL_NODES);
            let identity = |r: &Ring, addrs: &[String], k: &str| -> Vec<usize> {
                let mut o: Vec<usize> = r
                    .owners(k, 3)
                    .iter()
                    .map(|a| addrs.iter().position(|x| x == a).expect("member"))
                    .collect();
                o.sort();
                o
            };
            let mut moved = 0usize;
            for pod in (0..5).rev() {
                let before: Vec<Vec<usize>> =
                    ks.iter().map(|k| identity(&ring, &addrs, k)).collect();
                // The pod restarts at a new IP: with identities the document maps its new
                // address to the same name; without, it is a new member.
                addrs[pod] = format!("10.0.1.{}:9622", pod + 1);
                ring = Ring::of(&doc_of(&addrs, with_ids), DEFAULT_VIRTUAL_NODES);
                moved += ks
                    .iter()
                    .zip(&before)
                    .filter(|(k, b)| identity(&ring, &addrs, k) != **b)
                    .count();
            }
            if with_ids {
                assert_eq!(moved, 0, "placed by identity, an upgrade moves nothing");
            } else {
                assert!(
                    moved > ks.len(),
                    "placed by address, an upgrade moves {moved}"
                );
            }
        }
        // Without ids, Ring::of is Ring::new: address-only documents keep their ring.
        let plain = Ring::of(&doc_of(&members(5), false), DEFAULT_VIRTUAL_NODES);
        let old = Ring::new(&members(5), DEFAULT_VIRTUAL_NODES);
        for k in keys(500) {
            assert_eq!(plain.owners(&k, 3), old.owners(&k, 3));
        }
    }

    /// Fixed vector: these exact owners are part of the protocol between nodes of different
    /// builds. If this test fails, the ring changed incompatibly.
    #[test]
    fn golden_vector_is_stable_across_builds() {
        assert_eq!(
            key_hash("com.example.Echo#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP"),
            GOLDEN_KEY_HASH
        );
        assert_eq!(point_hash("10.0.0.1:9622", 7), GOLDEN_POINT_HASH);
        let ring = Ring::new(&members(5), DEFAULT_VIRTUAL_NODES);
        let got: Vec<Vec<&str>> = (0..6)
            .map(|i| ring.owners(&format!("svc{i}#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP"), 3))
            .collect();
        assert_eq!(got, golden_owners());
    }

    const GOLDEN_KEY_HASH: u64 = 12294926794441320557;
    const GOLDEN_POINT_HASH: u64 = 1262164823266052143;
    fn golden_owners() -> Vec<Vec<&'static str>> {
        let m = |i: u8| -> &'static str {
            [
                "10.0.0.1:9622",
                "10.0.0.2:9622",
                "10.0.0.3:9622",
                "10.0.0.4:9622",
                "10.0.0.5:9622",
            ][i as usize - 1]
        };
        [
            [2, 4, 5],
            [3, 5, 2],
            [2, 3, 1],
            [4, 5, 3],
            [2, 1, 4],
            [4, 3, 5],
        ]
        .iter()
        .map(|o| o.iter().map(|&i| m(i)).collect())
        .collect()
    }
}
