//! Turning SSE events into snapshots — full pushes, and deltas applied to the snapshot the
//! subscription holds — and the filter that keeps a subscription's snapshots from ever
//! going backwards in version (pure, no I/O).

use crate::model::{Delta, Snapshot};
use eventsource_stream::Event;

/// The SSE event type of a push (API.md).
pub const PUSH_EVENT: &str = "push";
/// The SSE event type of a delta push (opt-in, README "Delta pushes").
pub const DELTA_EVENT: &str = "delta";

/// What a push event carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    Full(Snapshot),
    Delta(Delta),
}

impl Push {
    pub fn register_id(&self) -> &str {
        match self {
            Push::Full(s) => &s.register_id,
            Push::Delta(d) => &d.register_id,
        }
    }

    pub fn data_info_id(&self) -> &str {
        match self {
            Push::Full(s) => &s.data_info_id,
            Push::Delta(d) => &d.data_info_id,
        }
    }
}

/// The push carried by a `push` or `delta` event; `Ok(None)` for any other event type.
pub fn decode_push(event: &Event) -> Result<Option<Push>, DecodeError> {
    let error = |err: serde_json::Error| DecodeError {
        id: event.id.clone(),
        message: err.to_string(),
    };
    match event.event.as_str() {
        PUSH_EVENT => serde_json::from_str(&event.data)
            .map(|s| Some(Push::Full(s)))
            .map_err(error),
        DELTA_EVENT => serde_json::from_str(&event.data)
            .map(|d| Some(Push::Delta(d)))
            .map_err(error),
        _ => Ok(None),
    }
}

/// The snapshot `delta` makes of `base`, or `None` when it does not apply: `base` is not at
/// the delta's `baseVersion`, is of another subscriber or service, or lacks an item the
/// delta removes (the subscription then needs a full push). Each `removed` entry takes one
/// occurrence of the item out of its zone, each `added` entry appends one; a zone left
/// empty is dropped. Items keep their order otherwise: the same multiset per zone as a full
/// push of that version, though not necessarily in its order.
pub fn apply_delta(base: &Snapshot, delta: &Delta) -> Option<Snapshot> {
    if base.version != delta.base_version
        || base.register_id != delta.register_id
        || base.data_info_id != delta.data_info_id
    {
        return None;
    }
    let mut zones = base.zones.clone();
    for (zone, removed) in &delta.removed {
        let items = zones.get_mut(zone)?;
        for item in removed {
            let at = items.iter().rposition(|i| i == item)?;
            items.remove(at);
        }
    }
    for (zone, added) in &delta.added {
        zones
            .entry(zone.clone())
            .or_default()
            .extend(added.iter().cloned());
    }
    zones.retain(|_, items| !items.is_empty());
    Some(Snapshot {
        register_id: delta.register_id.clone(),
        data_info_id: delta.data_info_id.clone(),
        data_id: delta.data_id.clone(),
        group: delta.group.clone(),
        instance_id: delta.instance_id.clone(),
        version: delta.version,
        zones,
    })
}

/// What could not be decoded from an event's data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable push event (id {id:?}): {message}")]
pub struct DecodeError {
    pub id: String,
    pub message: String,
}

/// The snapshot carried by a `push` event; `Ok(None)` for any other event type, which a
/// newer server may add and this client ignores.
pub fn decode_event(event: &Event) -> Result<Option<Snapshot>, DecodeError> {
    if event.event != PUSH_EVENT {
        return Ok(None);
    }
    serde_json::from_str::<Snapshot>(&event.data)
        .map(Some)
        .map_err(|err| DecodeError {
            id: event.id.clone(),
            message: err.to_string(),
        })
}

/// What to do with a snapshot given the last one delivered for the same subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Newer than anything delivered: deliver it.
    Deliver,
    /// Same version as the last delivered one (the full push after a stream reopens, or a
    /// re-registration): nothing new, drop it.
    Repeat,
    /// Older than the last delivered one (a lagging node after failover): drop it.
    Stale,
}

/// The last delivered version of one subscription.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MonotonicFilter {
    last: Option<u64>,
}

impl MonotonicFilter {
    pub fn new() -> MonotonicFilter {
        MonotonicFilter::default()
    }

    /// Judges `version` and, when it is to be delivered, remembers it.
    pub fn offer(&mut self, version: u64) -> Verdict {
        match self.last {
            Some(last) if version < last => Verdict::Stale,
            Some(last) if version == last => Verdict::Repeat,
            _ => {
                self.last = Some(version);
                Verdict::Deliver
            }
        }
    }

    pub fn last_delivered(&self) -> Option<u64> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, data: &str) -> Event {
        Event {
            event: kind.to_owned(),
            data: data.to_owned(),
            id: "7".to_owned(),
            retry: None,
        }
    }

    #[test]
    fn push_event_decodes_to_snapshot() {
        let data = r#"{"registerId":"s1","dataInfoId":"echo#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP",
            "dataId":"echo","group":"DEFAULT_GROUP","instanceId":"DEFAULT_INSTANCE_ID",
            "version":12,"zones":{"z1":["a","b"],"z0":["c"]},"someFutureField":true}"#;
        let snapshot = decode_event(&event("push", data)).unwrap().unwrap();
        assert_eq!(snapshot.register_id, "s1");
        assert_eq!(snapshot.version, 12);
        assert_eq!(snapshot.all_data().collect::<Vec<_>>(), vec!["c", "a", "b"]);
    }

    #[test]
    fn empty_zones_decode_and_missing_zones_mean_empty() {
        let data = r#"{"registerId":"s1","dataInfoId":"x#@#i#@#g","dataId":"x","group":"g",
            "instanceId":"i","version":0,"zones":{}}"#;
        let snapshot = decode_event(&event("push", data)).unwrap().unwrap();
        assert!(snapshot.zones.is_empty());
        let data = r#"{"registerId":"s1","dataInfoId":"x#@#i#@#g","dataId":"x","group":"g",
            "instanceId":"i","version":3}"#;
        assert!(decode_event(&event("push", data))
            .unwrap()
            .unwrap()
            .zones
            .is_empty());
    }

    #[test]
    fn other_event_types_are_ignored() {
        assert_eq!(decode_event(&event("message", "hello")), Ok(None));
        assert_eq!(decode_event(&event("session", "{}")), Ok(None));
    }

    #[test]
    fn malformed_push_is_an_error_naming_the_event() {
        let err = decode_event(&event("push", r#"{"registerId":"s1"}"#)).unwrap_err();
        assert_eq!(err.id, "7");
        assert!(err.message.contains("missing field"), "{}", err.message);
        assert!(decode_event(&event("push", "not json")).is_err());
        assert!(decode_event(&event("push", r#"{"registerId":"s1","dataInfoId":"x","dataId":"x","group":"g","instanceId":"i","version":-1}"#)).is_err());
    }

    #[test]
    fn filter_never_goes_backwards() {
        let mut filter = MonotonicFilter::new();
        assert_eq!(filter.last_delivered(), None);
        assert_eq!(filter.offer(0), Verdict::Deliver);
        assert_eq!(filter.offer(5), Verdict::Deliver);
        assert_eq!(filter.offer(5), Verdict::Repeat);
        assert_eq!(filter.offer(4), Verdict::Stale);
        assert_eq!(filter.offer(0), Verdict::Stale);
        assert_eq!(filter.last_delivered(), Some(5));
        assert_eq!(filter.offer(6), Verdict::Deliver);
        assert_eq!(filter.last_delivered(), Some(6));
    }

    #[test]
    fn delivered_sequence_is_strictly_increasing_for_any_input() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..100 {
            let mut filter = MonotonicFilter::new();
            let mut delivered = Vec::new();
            for _ in 0..50 {
                let version = rng.random_range(0..30u64);
                if filter.offer(version) == Verdict::Deliver {
                    delivered.push(version);
                }
            }
            assert!(delivered.windows(2).all(|w| w[0] < w[1]), "{delivered:?}");
        }
    }

    fn snapshot(version: u64, zones: &[(&str, &[&str])]) -> Snapshot {
        Snapshot {
            register_id: "s1".into(),
            data_info_id: "x#@#i#@#g".into(),
            data_id: "x".into(),
            group: "g".into(),
            instance_id: "i".into(),
            version,
            zones: zones
                .iter()
                .map(|(z, items)| (z.to_string(), items.iter().map(|s| s.to_string()).collect()))
                .collect(),
        }
    }

    fn delta(
        base: u64,
        version: u64,
        added: &[(&str, &[&str])],
        removed: &[(&str, &[&str])],
    ) -> Delta {
        let zones = |z: &[(&str, &[&str])]| {
            z.iter()
                .map(|(z, items)| (z.to_string(), items.iter().map(|s| s.to_string()).collect()))
                .collect()
        };
        Delta {
            register_id: "s1".into(),
            data_info_id: "x#@#i#@#g".into(),
            data_id: "x".into(),
            group: "g".into(),
            instance_id: "i".into(),
            base_version: base,
            version,
            added: zones(added),
            removed: zones(removed),
        }
    }

    #[test]
    fn delta_events_decode_and_others_still_do() {
        let data = r#"{"registerId":"s1","dataInfoId":"x#@#i#@#g","dataId":"x","group":"g",
            "instanceId":"i","baseVersion":4,"version":5,"added":{"z":["b"]},"removed":{"z":["a"]}}"#;
        let Some(Push::Delta(d)) = decode_push(&event("delta", data)).unwrap() else {
            panic!("a delta");
        };
        assert_eq!((d.base_version, d.version), (4, 5));
        assert_eq!(d.added["z"], vec!["b"]);
        // A delta event is not a full push: the full-only decoder ignores it.
        assert_eq!(decode_event(&event("delta", data)), Ok(None));
        let full = r#"{"registerId":"s1","dataInfoId":"x#@#i#@#g","dataId":"x","group":"g",
            "instanceId":"i","version":3}"#;
        assert!(matches!(
            decode_push(&event("push", full)),
            Ok(Some(Push::Full(_)))
        ));
        assert_eq!(decode_push(&event("session", "{}")), Ok(None));
        assert!(decode_push(&event("delta", r#"{"registerId":"s1"}"#)).is_err());
    }

    #[test]
    fn a_delta_applies_by_occurrence_and_drops_emptied_zones() {
        let base = snapshot(4, &[("z1", &["a", "b", "a"]), ("z2", &["c"])]);
        let d = delta(
            4,
            5,
            &[("z1", &["d"]), ("z3", &["e", "e"])],
            &[("z1", &["a"]), ("z2", &["c"])],
        );
        let next = apply_delta(&base, &d).unwrap();
        assert_eq!(next.version, 5);
        assert_eq!(
            next.zones,
            snapshot(5, &[("z1", &["a", "b", "d"]), ("z3", &["e", "e"])]).zones
        );
    }

    #[test]
    fn a_delta_for_another_base_does_not_apply() {
        let base = snapshot(4, &[("z1", &["a"])]);
        assert!(apply_delta(&base, &delta(3, 5, &[], &[])).is_none(), "gap");
        assert!(apply_delta(&base, &delta(4, 5, &[], &[("z1", &["b"])])).is_none());
        assert!(apply_delta(&base, &delta(4, 5, &[], &[("z9", &["a"])])).is_none());
        assert!(apply_delta(&base, &delta(4, 5, &[], &[("z1", &["a", "a"])])).is_none());
        let mut other = delta(4, 5, &[], &[]);
        other.register_id = "s2".into();
        assert!(apply_delta(&base, &other).is_none());
        assert_eq!(
            apply_delta(&base, &delta(4, 5, &[], &[])).unwrap().zones,
            base.zones
        );
    }
}
