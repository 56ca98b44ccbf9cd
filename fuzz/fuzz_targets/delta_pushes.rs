//! Delta pushes (registry-node/src/session/delta.rs, rendered by session/prepared.rs) for
//! any two states of a datum, across zones and with repeated items, checking what the
//! README promises a client:
//! - applied to the full push of the base, a delta event gives the full push of the new
//!   version, zone by zone, as multisets, in every scope (all zones, and each zone);
//! - no item is both added and removed in one zone, and an unchanged zone is absent;
//! - a delta is only offered when smaller than the full push, only from the base it was
//!   made against, and it carries that base's version.

#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use registry_node::model::{DatumSnapshot, Publisher};
use registry_node::session::delta::DiffBase;
use registry_node::session::prepared::{PreparedDatum, PushFrame};
use serde_json::Value;

#[derive(Debug, Arbitrary)]
struct Pub {
    rid: u8,
    zone: u8,
    items: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    old: Vec<Pub>,
    new: Vec<Pub>,
}

const ZONES: [&str; 3] = ["z0", "z1", "z2"];

fn snapshot(version: u64, pubs: &[Pub]) -> DatumSnapshot {
    let mut by_rid: BTreeMap<String, Arc<Publisher>> = BTreeMap::new();
    for p in pubs.iter().take(12) {
        let rid = format!("r{}", p.rid % 6);
        by_rid.insert(
            rid.clone(),
            Arc::new(Publisher {
                register_id: Arc::from(rid),
                data_info_id: Arc::from("svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP"),
                zone: Arc::from(ZONES[usize::from(p.zone) % 3]),
                data: p
                    .items
                    .iter()
                    .take(6)
                    .map(|i| format!("10.0.0.{}:80", i % 4))
                    .collect::<Vec<_>>()
                    .into(),
                version: 1,
                register_timestamp: 1,
                register_seq: 0,
                client_id: None,
                session_id: Arc::from("s"),
                source: Arc::from("n"),
                owner: 0,
                principal: None,
            }),
        );
    }
    DatumSnapshot {
        data_info_id: "svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP".into(),
        version,
        publishers: by_rid.into_values().collect(),
    }
}

/// The kind and `data:` JSON of one event.
fn event(frame: &PushFrame) -> (String, Value) {
    let bytes = frame.to_bytes();
    let text = std::str::from_utf8(&bytes).expect("UTF-8");
    assert!(text.ends_with("\n\n"));
    let kind = text
        .lines()
        .next()
        .unwrap()
        .strip_prefix("event: ")
        .unwrap()
        .to_owned();
    let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    (kind, serde_json::from_str(data).expect("one line of JSON"))
}

type Zones = BTreeMap<String, Vec<String>>;

fn zones(v: &Value) -> Zones {
    serde_json::from_value(v.clone()).expect("zones")
}

fn sorted(mut z: Zones) -> Zones {
    z.values_mut().for_each(|items| items.sort());
    z
}

fuzz_target!(|input: Input| {
    let old = snapshot(1, &input.old);
    let new = snapshot(2, &input.new);
    let before = Arc::new(PreparedDatum::new(&old));
    let base = DiffBase {
        version: 1,
        writes: 3,
        publishers: old.publishers.clone(),
    };
    let after = Arc::new(PreparedDatum::with_delta(&new, 4, Some(&base)));
    for only_zone in [None, Some("z0"), Some("z1"), Some("z2"), Some("elsewhere")] {
        let (_, full_old) = event(&before.frame(1, "s", only_zone));
        let full_new_frame = after.frame(2, "s", only_zone);
        let (_, full_new) = event(&full_new_frame);
        assert!(
            after.delta_frame(3, "s", only_zone, (1, 2)).is_none(),
            "other writes"
        );
        assert!(
            after.delta_frame(3, "s", only_zone, (0, 3)).is_none(),
            "other version"
        );
        let Some(frame) = after.delta_frame(3, "s", only_zone, (1, 3)) else {
            continue;
        };
        assert!(
            frame.len() < full_new_frame.len(),
            "smaller than the full push"
        );
        let (kind, delta) = event(&frame);
        assert_eq!(kind, "delta");
        assert_eq!(delta["baseVersion"], 1);
        assert_eq!(delta["version"], 2);
        assert_eq!(delta["registerId"], "s");
        assert_eq!(delta["dataInfoId"], full_new["dataInfoId"]);
        let (added, removed) = (zones(&delta["added"]), zones(&delta["removed"]));
        let mut held = zones(&full_old["zones"]);
        for (zone, items) in &removed {
            assert!(!items.is_empty(), "an unchanged zone is absent");
            for item in items {
                assert!(
                    !added.get(zone).is_some_and(|a| a.contains(item)),
                    "{item} both added and removed in {zone}"
                );
                let list = held.get_mut(zone).expect("the zone removed from");
                let at = list
                    .iter()
                    .position(|i| i == item)
                    .expect("the item removed");
                list.remove(at);
            }
        }
        for (zone, items) in added {
            assert!(!items.is_empty(), "an unchanged zone is absent");
            held.entry(zone).or_default().extend(items);
        }
        held.retain(|_, items| !items.is_empty());
        assert_eq!(sorted(held), sorted(zones(&full_new["zones"])));
    }
});
