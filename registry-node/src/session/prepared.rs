//! A fetched datum made ready to push: its zones grouped once, its JSON rendered once per
//! scope, so that fanning out to many subscribers costs one small string each. With a base
//! to diff against (a datum with delta subscribers, see [`delta`](super::delta)), the delta
//! from that base is rendered once per scope too, for the `event: delta` of subscribers that
//! hold exactly the base.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use super::delta::{diff, DiffBase, ZoneDelta};
use crate::model::{DataInfoId, DatumSnapshot, Publisher, ServiceKey};

/// Groups the data of live publishers by zone, publishers in registerId order; a zone with
/// no data is absent. `only_zone` keeps a single zone (`scope: "zone"`).
pub fn group_zones<'a>(
    publishers: &'a [Arc<Publisher>],
    only_zone: Option<&str>,
) -> BTreeMap<&'a str, Vec<&'a str>> {
    let mut sorted: Vec<&Arc<Publisher>> = publishers.iter().collect();
    sorted.sort_by(|a, b| a.register_id.cmp(&b.register_id));
    let mut zones: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for p in sorted {
        if p.data.is_empty() || only_zone.is_some_and(|z| z != &*p.zone) {
            continue;
        }
        zones
            .entry(&p.zone)
            .or_default()
            .extend(p.data.iter().map(String::as_str));
    }
    zones
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PushTail<'a> {
    data_info_id: &'a str,
    data_id: &'a str,
    group: &'a str,
    instance_id: &'a str,
    version: u64,
    zones: &'a BTreeMap<&'a str, Vec<&'a str>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeltaTail<'a> {
    data_info_id: &'a str,
    data_id: &'a str,
    group: &'a str,
    instance_id: &'a str,
    base_version: u64,
    version: u64,
    added: BTreeMap<&'a str, &'a [&'a str]>,
    removed: BTreeMap<&'a str, &'a [&'a str]>,
}

/// The delta from a base version to this one, rendered like the full push (the rest of the
/// `data:` JSON after the registerId). A rendering that would not be smaller than the full
/// push is not kept: that subscriber gets the full push.
struct PreparedDelta {
    base_version: u64,
    base_writes: u64,
    /// Every zone, when smaller than the full push.
    all_zones: Option<Bytes>,
    /// Restricted to each zone that changed (`None`: not smaller than that zone's push).
    per_zone: HashMap<String, Option<Bytes>>,
    /// Restricted to a zone that did not change: nothing added, nothing removed.
    unchanged: Bytes,
}

/// One datum rendered for push, once per version: every subscriber's frame shares its
/// bytes (only the SSE head with the event id and the subscriber's registerId is made per
/// push), so that a fan-out of a large datum to many subscribers holds one copy of it.
pub struct PreparedDatum {
    pub data_info_id: DataInfoId,
    pub version: u64,
    /// The hash of the writes this rendering shows (0 when not known): a delta subscriber
    /// holds exactly (version, writes).
    pub writes: u64,
    /// The rest of a push's `data:` JSON after its leading `{"registerId":..`, and the
    /// blank line ending the event: every zone.
    all_zones: Bytes,
    /// The same restricted to one zone, for each zone that has data.
    per_zone: HashMap<String, Bytes>,
    /// Restricted to a zone without data.
    no_zone: Bytes,
    /// The delta from the base it was prepared with, if any.
    delta: Option<PreparedDelta>,
}

impl PreparedDatum {
    /// A rendering with no delta.
    pub fn new(snapshot: &DatumSnapshot) -> Self {
        Self::with_delta(snapshot, 0, None)
    }

    /// A rendering of `snapshot`, whose writes hash to `writes`, and the delta from `base`
    /// when one is given with a lower version.
    pub fn with_delta(snapshot: &DatumSnapshot, writes: u64, base: Option<&DiffBase>) -> Self {
        let key = ServiceKey::parse(&snapshot.data_info_id).unwrap_or(ServiceKey {
            data_id: snapshot.data_info_id.to_string(),
            group: String::new(),
            instance_id: String::new(),
        });
        let render = |zones: &BTreeMap<&str, Vec<&str>>| -> Bytes {
            let tail = PushTail {
                data_info_id: &snapshot.data_info_id,
                data_id: &key.data_id,
                group: &key.group,
                instance_id: &key.instance_id,
                version: snapshot.version,
                zones,
            };
            let mut json = serde_json::to_vec(&tail).unwrap_or_else(|_| b"{}".to_vec());
            // `{"dataInfoId":...}` → `,"dataInfoId":...}` to follow a registerId field.
            json[0] = b',';
            json.extend_from_slice(b"\n\n");
            json.into()
        };
        let all = group_zones(&snapshot.publishers, None);
        let all_zones = render(&all);
        let per_zone: HashMap<String, Bytes> = all
            .iter()
            .map(|(zone, items)| {
                if all.len() == 1 {
                    // The one zone is every zone: the same bytes.
                    return (zone.to_string(), all_zones.clone());
                }
                let mut one = BTreeMap::new();
                one.insert(*zone, items.clone());
                (zone.to_string(), render(&one))
            })
            .collect();
        let no_zone = render(&BTreeMap::new());
        let delta = base.filter(|b| b.version < snapshot.version).map(|base| {
            let old = group_zones(&base.publishers, None);
            let changes = diff(&old, &all);
            let render_delta = |changes: &mut dyn Iterator<Item = (&str, &ZoneDelta<'_>)>| {
                let mut added = BTreeMap::new();
                let mut removed = BTreeMap::new();
                for (zone, d) in changes {
                    if !d.added.is_empty() {
                        added.insert(zone, &d.added[..]);
                    }
                    if !d.removed.is_empty() {
                        removed.insert(zone, &d.removed[..]);
                    }
                }
                let tail = DeltaTail {
                    data_info_id: &snapshot.data_info_id,
                    data_id: &key.data_id,
                    group: &key.group,
                    instance_id: &key.instance_id,
                    base_version: base.version,
                    version: snapshot.version,
                    added,
                    removed,
                };
                let mut json = serde_json::to_vec(&tail).unwrap_or_else(|_| b"{}".to_vec());
                json[0] = b',';
                json.extend_from_slice(b"\n\n");
                Bytes::from(json)
            };
            let smaller = |delta: Bytes, full: &Bytes| (delta.len() < full.len()).then_some(delta);
            let every = render_delta(&mut changes.iter().map(|(z, d)| (*z, d)));
            let per_zone = changes
                .iter()
                .map(|(zone, d)| {
                    let full = per_zone.get(*zone).unwrap_or(&no_zone);
                    let one = render_delta(&mut std::iter::once((*zone, d)));
                    (zone.to_string(), smaller(one, full))
                })
                .collect();
            PreparedDelta {
                base_version: base.version,
                base_writes: base.writes,
                all_zones: smaller(every, &all_zones),
                per_zone,
                unchanged: render_delta(&mut std::iter::empty()),
            }
        });
        PreparedDatum {
            data_info_id: snapshot.data_info_id.clone(),
            version: snapshot.version,
            writes,
            all_zones,
            per_zone,
            no_zone,
            delta,
        }
    }

    /// The shared part of a push: every zone, or `only_zone` for zone scope.
    fn tail(&self, only_zone: Option<&str>) -> &Bytes {
        match only_zone {
            None => &self.all_zones,
            Some(z) => self.per_zone.get(z).unwrap_or(&self.no_zone),
        }
    }

    /// The push event `seq` of this datum to subscriber `register_id` (API.md's `event:
    /// push`); `only_zone` for zone scope. Its data is shared, not copied.
    pub fn frame(
        self: &Arc<Self>,
        seq: u64,
        register_id: &str,
        only_zone: Option<&str>,
    ) -> PushFrame {
        self.event("push", seq, register_id, self.tail(only_zone).clone())
    }

    /// The `event: delta` of this datum to subscriber `register_id`, which holds the
    /// datum at version `held_version` with writes `held_writes`: `None` unless this
    /// rendering has a delta from exactly that state, smaller than the full push (the
    /// subscriber then gets [`frame`](Self::frame)). Its data is shared, not copied.
    pub fn delta_frame(
        self: &Arc<Self>,
        seq: u64,
        register_id: &str,
        only_zone: Option<&str>,
        (held_version, held_writes): (u64, u64),
    ) -> Option<PushFrame> {
        let delta = self
            .delta
            .as_ref()
            .filter(|d| d.base_version == held_version && d.base_writes == held_writes)?;
        let tail = match only_zone {
            None => delta.all_zones.as_ref()?,
            Some(z) => match delta.per_zone.get(z) {
                Some(rendered) => rendered.as_ref()?,
                // Not smaller than a push of a zone without data.
                None if delta.unchanged.len() >= self.tail(only_zone).len() => return None,
                None => &delta.unchanged,
            },
        };
        Some(self.event("delta", seq, register_id, tail.clone()))
    }

    fn event(self: &Arc<Self>, kind: &str, seq: u64, register_id: &str, tail: Bytes) -> PushFrame {
        let rid = serde_json::to_string(register_id).unwrap_or_else(|_| "\"\"".into());
        let mut head = String::with_capacity(48 + rid.len());
        head.push_str("event: ");
        head.push_str(kind);
        head.push_str("\nid: ");
        head.push_str(&seq.to_string());
        head.push_str("\ndata: {\"registerId\":");
        head.push_str(&rid);
        PushFrame {
            head: head.into(),
            tail,
            _datum: self.clone(),
        }
    }

    /// Bytes of the largest push of this datum (every zone), without its head.
    pub fn size(&self) -> usize {
        self.all_zones.len()
    }
}

/// One push event ready for a stream: a small head made for its subscriber and the datum's
/// shared bytes. Holding it keeps its [`PreparedDatum`] alive, so that later deliveries of
/// the same version find and share it (see `SessionLayer::prepare`).
pub struct PushFrame {
    head: Bytes,
    tail: Bytes,
    _datum: Arc<PreparedDatum>,
}

impl PushFrame {
    /// Bytes this event takes on the wire.
    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The event as written: the head, then the shared rest (its `data:` JSON goes on, and
    /// the blank line that ends the event).
    pub fn into_parts(self) -> (Bytes, Bytes) {
        (self.head, self.tail)
    }

    /// The whole event in one buffer (a copy: for tests and small frames).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.len());
        out.extend_from_slice(&self.head);
        out.extend_from_slice(&self.tail);
        out.into()
    }
}

#[cfg(test)]
impl PushFrame {
    /// A frame of `len` bytes that is not an event: for tests of what queues frames.
    pub(crate) fn filler(len: usize) -> PushFrame {
        let snap = DatumSnapshot {
            data_info_id: "t".into(),
            version: 0,
            publishers: Vec::new(),
        };
        PushFrame {
            head: vec![b'x'; len].into(),
            tail: Bytes::new(),
            _datum: Arc::new(PreparedDatum::new(&snap)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publisher(rid: &str, zone: &str, data: &[&str]) -> Arc<Publisher> {
        Arc::new(Publisher {
            register_id: rid.into(),
            data_info_id: "svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP".into(),
            zone: zone.into(),
            data: data
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .into(),
            version: 1,
            register_timestamp: 1,
            register_seq: 0,
            client_id: None,
            session_id: "s".into(),
            source: "n".into(),
            owner: 0,
            principal: None,
        })
    }

    /// The JSON of a push event's `data:` line, checking the event's exact shape.
    fn data_of(frame: &PushFrame, seq: u64) -> serde_json::Value {
        let bytes = frame.to_bytes();
        assert_eq!(bytes.len(), frame.len());
        let text = std::str::from_utf8(&bytes).unwrap();
        let prefix = format!("event: push\nid: {seq}\ndata: {{");
        assert!(text.starts_with(&prefix), "{text:?}");
        assert!(text.ends_with("}\n\n"), "{text:?}");
        assert_eq!(
            text.lines().filter(|l| !l.is_empty()).count(),
            3,
            "the JSON is on one line"
        );
        serde_json::from_str(&text[prefix.len() - 1..]).unwrap()
    }

    #[test]
    fn pushes_are_full_snapshots_grouped_by_zone() {
        let snap = DatumSnapshot {
            data_info_id: "svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP".into(),
            version: 7,
            publishers: vec![
                publisher("b", "z1", &["10.0.0.2:80"]),
                publisher("a", "z1", &["10.0.0.1:80"]),
                publisher("c", "z2", &["10.0.0.3:80", "x\ny"]),
                publisher("d", "z3", &[]),
            ],
        };
        let p = Arc::new(PreparedDatum::new(&snap));
        let v = data_of(&p.frame(12, "sub-1", None), 12);
        assert_eq!(
            v,
            serde_json::json!({
                "registerId": "sub-1",
                "dataInfoId": "svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP",
                "dataId": "svc", "group": "DEFAULT_GROUP", "instanceId": "DEFAULT_INSTANCE_ID",
                "version": 7,
                "zones": {"z1": ["10.0.0.1:80", "10.0.0.2:80"], "z2": ["10.0.0.3:80", "x\ny"]}
            })
        );
        let z2 = data_of(&p.frame(13, "s\"2", Some("z2")), 13);
        assert_eq!(z2["registerId"], "s\"2");
        assert_eq!(
            z2["zones"],
            serde_json::json!({"z2": ["10.0.0.3:80", "x\ny"]})
        );
        let z3 = data_of(&p.frame(14, "s3", Some("z3")), 14);
        assert_eq!(z3["zones"], serde_json::json!({}));
    }

    #[test]
    fn an_event_is_exactly_the_api_shape_and_frames_share_the_datum() {
        let snap = DatumSnapshot {
            data_info_id: "svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP".into(),
            version: 3,
            publishers: vec![publisher("a", "z1", &["10.0.0.1:80"])],
        };
        let p = Arc::new(PreparedDatum::new(&snap));
        let frame = p.frame(5, "r1", None);
        assert_eq!(
            &frame.to_bytes()[..],
            concat!(
                "event: push\nid: 5\ndata: {\"registerId\":\"r1\",",
                "\"dataInfoId\":\"svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP\",",
                "\"dataId\":\"svc\",\"group\":\"DEFAULT_GROUP\",",
                "\"instanceId\":\"DEFAULT_INSTANCE_ID\",\"version\":3,",
                "\"zones\":{\"z1\":[\"10.0.0.1:80\"]}}\n\n"
            )
            .as_bytes()
        );
        // Two subscribers' frames point at the same bytes of the datum.
        let (_, a) = p.frame(6, "r1", None).into_parts();
        let (_, b) = p.frame(7, "r2", None).into_parts();
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert_eq!(a.len(), p.size());
    }

    fn delta_of(frame: &PushFrame, seq: u64) -> serde_json::Value {
        let text = String::from_utf8(frame.to_bytes().to_vec()).unwrap();
        let prefix = format!("event: delta\nid: {seq}\ndata: {{");
        assert!(text.starts_with(&prefix), "{text:?}");
        assert!(text.ends_with("}\n\n"), "{text:?}");
        assert_eq!(text.lines().filter(|l| !l.is_empty()).count(), 3);
        serde_json::from_str(&text[prefix.len() - 1..]).unwrap()
    }

    fn snap(version: u64, publishers: Vec<Arc<Publisher>>) -> DatumSnapshot {
        DatumSnapshot {
            data_info_id: "svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP".into(),
            version,
            publishers,
        }
    }

    fn base_of(s: &DatumSnapshot, writes: u64) -> DiffBase {
        DiffBase {
            version: s.version,
            writes,
            publishers: s.publishers.clone(),
        }
    }

    /// A service of `n` addresses in z1 (one per publisher) and one in z2.
    fn big(version: u64, n: usize, changed: &str) -> DatumSnapshot {
        let mut pubs: Vec<_> = (0..n)
            .map(|i| {
                let item = if i == 7 {
                    changed.to_owned()
                } else {
                    format!("10.0.{}.{}:80", i / 250, i % 250)
                };
                publisher(&format!("p{i:05}"), "z1", &[&item])
            })
            .collect();
        let z2: Vec<String> = (0..10).map(|i| format!("10.9.9.{i}:80")).collect();
        let z2: Vec<&str> = z2.iter().map(String::as_str).collect();
        pubs.push(publisher("q", "z2", &z2));
        snap(version, pubs)
    }

    #[test]
    fn a_delta_from_the_held_base_carries_what_was_added_and_removed() {
        let old = big(10, 100, "10.0.0.7:80");
        let new = big(11, 100, "10.5.5.5:80");
        let p = Arc::new(PreparedDatum::with_delta(&new, 2, Some(&base_of(&old, 1))));
        assert_eq!(p.writes, 2);
        let frame = p.delta_frame(4, "d1", None, (10, 1)).expect("a delta");
        assert!(frame.len() < 400, "{}", frame.len());
        assert_eq!(
            delta_of(&frame, 4),
            serde_json::json!({
                "registerId": "d1",
                "dataInfoId": "svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP",
                "dataId": "svc", "group": "DEFAULT_GROUP", "instanceId": "DEFAULT_INSTANCE_ID",
                "baseVersion": 10, "version": 11,
                "added": {"z1": ["10.5.5.5:80"]},
                "removed": {"z1": ["10.0.0.7:80"]}
            })
        );
        // Zone scope: the changed zone's delta; another zone's is empty.
        let z1 = delta_of(&p.delta_frame(5, "d2", Some("z1"), (10, 1)).unwrap(), 5);
        assert_eq!(z1["added"], serde_json::json!({"z1": ["10.5.5.5:80"]}));
        let z2 = delta_of(&p.delta_frame(6, "d3", Some("z2"), (10, 1)).unwrap(), 6);
        assert_eq!(
            (&z2["added"], &z2["removed"]),
            (&serde_json::json!({}), &serde_json::json!({}))
        );
        assert_eq!(z2["version"], 11);
        // A zone without data: its push is smaller than an empty delta.
        assert!(p.delta_frame(6, "d4", Some("z9"), (10, 1)).is_none());
        // Shared like full pushes.
        let (_, a) = p.delta_frame(7, "a", None, (10, 1)).unwrap().into_parts();
        let (_, b) = p.delta_frame(8, "b", None, (10, 1)).unwrap().into_parts();
        assert_eq!(a.as_ptr(), b.as_ptr());
        // The full push is unchanged by the delta.
        assert_eq!(data_of(&p.frame(9, "f", None), 9)["version"], 11);
    }

    #[test]
    fn no_delta_for_another_base_a_newer_base_or_when_it_is_not_smaller() {
        let old = big(10, 50, "10.0.0.7:80");
        let new = big(11, 50, "10.5.5.5:80");
        let p = Arc::new(PreparedDatum::with_delta(&new, 2, Some(&base_of(&old, 1))));
        assert!(
            p.delta_frame(1, "d", None, (9, 1)).is_none(),
            "other version"
        );
        assert!(
            p.delta_frame(1, "d", None, (10, 3)).is_none(),
            "other writes"
        );
        let same = Arc::new(PreparedDatum::with_delta(
            &new,
            2,
            Some(&base_of(&big(11, 50, "x"), 1)),
        ));
        assert!(
            same.delta_frame(1, "d", None, (11, 1)).is_none(),
            "a base not below"
        );
        assert!(Arc::new(PreparedDatum::new(&new))
            .delta_frame(1, "d", None, (10, 1))
            .is_none());
        // Everything replaced in a small datum: the delta would be larger than the push.
        let a = snap(1, vec![publisher("a", "z1", &["1", "2"])]);
        let b = snap(2, vec![publisher("a", "z1", &["3", "4"])]);
        let p = Arc::new(PreparedDatum::with_delta(&b, 0, Some(&base_of(&a, 0))));
        assert!(p.delta_frame(1, "d", None, (1, 0)).is_none());
        assert!(p.delta_frame(1, "d", Some("z1"), (1, 0)).is_none());
    }
}
