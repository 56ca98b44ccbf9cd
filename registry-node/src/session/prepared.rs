//! A fetched datum made ready to push: its zones grouped once, its JSON rendered once per
//! scope, so that fanning out to many subscribers costs one small string each.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;

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

/// One datum rendered for push.
pub struct PreparedDatum {
    pub data_info_id: DataInfoId,
    pub version: u64,
    /// The JSON of a push without its leading `{"registerId":..`: every zone.
    all_zones: String,
    /// The same restricted to one zone, for each zone that has data.
    per_zone: HashMap<String, String>,
    /// Restricted to a zone without data.
    no_zone: String,
}

impl PreparedDatum {
    pub fn new(snapshot: &DatumSnapshot) -> Self {
        let key = ServiceKey::parse(&snapshot.data_info_id).unwrap_or(ServiceKey {
            data_id: snapshot.data_info_id.to_string(),
            group: String::new(),
            instance_id: String::new(),
        });
        let render = |zones: &BTreeMap<&str, Vec<&str>>| -> String {
            let tail = PushTail {
                data_info_id: &snapshot.data_info_id,
                data_id: &key.data_id,
                group: &key.group,
                instance_id: &key.instance_id,
                version: snapshot.version,
                zones,
            };
            let mut json = serde_json::to_string(&tail).unwrap_or_else(|_| "{}".into());
            // `{"dataInfoId":...}` → `,"dataInfoId":...}` to follow a registerId field.
            json.replace_range(0..1, ",");
            json
        };
        let all = group_zones(&snapshot.publishers, None);
        let per_zone = all
            .iter()
            .map(|(zone, items)| {
                let mut one = BTreeMap::new();
                one.insert(*zone, items.clone());
                (zone.to_string(), render(&one))
            })
            .collect();
        PreparedDatum {
            data_info_id: snapshot.data_info_id.clone(),
            version: snapshot.version,
            all_zones: render(&all),
            per_zone,
            no_zone: render(&BTreeMap::new()),
        }
    }

    /// The `data:` JSON of a push to subscriber `register_id`; `only_zone` for zone scope.
    pub fn json_for(&self, register_id: &str, only_zone: Option<&str>) -> String {
        let tail = match only_zone {
            None => &self.all_zones,
            Some(z) => self.per_zone.get(z).unwrap_or(&self.no_zone),
        };
        let rid = serde_json::to_string(register_id).unwrap_or_else(|_| "\"\"".into());
        let mut out = String::with_capacity(16 + rid.len() + tail.len());
        out.push_str("{\"registerId\":");
        out.push_str(&rid);
        out.push_str(tail);
        out
    }
}

/// One SSE push event.
pub fn sse_push_frame(seq: u64, json: &str) -> bytes::Bytes {
    let mut s = String::with_capacity(json.len() + 32);
    s.push_str("event: push\nid: ");
    s.push_str(&seq.to_string());
    s.push_str("\ndata: ");
    s.push_str(json);
    s.push_str("\n\n");
    s.into()
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
            client_id: None,
            session_id: "s".into(),
            source: "n".into(),
            owner: 0,
        })
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
        let p = PreparedDatum::new(&snap);
        let v: serde_json::Value = serde_json::from_str(&p.json_for("sub-1", None)).unwrap();
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
        let z2: serde_json::Value = serde_json::from_str(&p.json_for("s\"2", Some("z2"))).unwrap();
        assert_eq!(z2["registerId"], "s\"2");
        assert_eq!(
            z2["zones"],
            serde_json::json!({"z2": ["10.0.0.3:80", "x\ny"]})
        );
        let z3: serde_json::Value = serde_json::from_str(&p.json_for("s3", Some("z3"))).unwrap();
        assert_eq!(z3["zones"], serde_json::json!({}));
        let frame = sse_push_frame(12, &p.json_for("sub-1", None));
        let text = std::str::from_utf8(&frame).unwrap();
        assert!(text.starts_with("event: push\nid: 12\ndata: {"));
        assert!(text.ends_with("}\n\n"));
        assert_eq!(
            text.lines().filter(|l| !l.is_empty()).count(),
            3,
            "the JSON is on one line"
        );
    }
}
