//! Shared domain types that cross the boundary between the session layer and the data layer.

use serde::{Deserialize, Serialize};

use crate::clock::Stamp;
use std::sync::Arc;

/// Separator between the parts of a dataInfoId (API.md).
pub const DATA_INFO_ID_SEPARATOR: &str = "#@#";
pub const DEFAULT_GROUP: &str = "DEFAULT_GROUP";
pub const DEFAULT_INSTANCE_ID: &str = "DEFAULT_INSTANCE_ID";
pub const DEFAULT_ZONE: &str = "DEFAULT_ZONE";

/// `{dataId}#@#{instanceId}#@#{group}`; cheap to clone.
pub type DataInfoId = Arc<str>;

/// The identity of a service, before it is joined into a dataInfoId.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceKey {
    pub data_id: String,
    pub group: String,
    pub instance_id: String,
}

impl ServiceKey {
    pub fn data_info_id(&self) -> DataInfoId {
        format!(
            "{}{sep}{}{sep}{}",
            self.data_id,
            self.instance_id,
            self.group,
            sep = DATA_INFO_ID_SEPARATOR
        )
        .into()
    }

    /// Splits a dataInfoId back into its parts; `None` when it is not well formed.
    pub fn parse(data_info_id: &str) -> Option<ServiceKey> {
        let mut parts = data_info_id.split(DATA_INFO_ID_SEPARATOR);
        let data_id = parts.next()?;
        let instance_id = parts.next()?;
        let group = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        Some(ServiceKey {
            data_id: data_id.to_owned(),
            group: group.to_owned(),
            instance_id: instance_id.to_owned(),
        })
    }
}

/// One publisher as the data layer stores it. Shared by `Arc` between the layers in one
/// process so that a standalone node keeps a single copy of every publisher's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Publisher {
    pub register_id: Arc<str>,
    pub data_info_id: DataInfoId,
    pub zone: Arc<str>,
    pub data: Arc<[String]>,
    /// The publisher's own version: 1 at first, +1 at each replacement.
    pub version: u64,
    /// Milliseconds since the Unix epoch when the session layer accepted this write.
    pub register_timestamp: u64,
    /// The order of this write among those its session node stamped within
    /// `register_timestamp` (the logical half of the write stamp, [`crate::clock`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub register_seq: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<Arc<str>>,
    /// The client's session: the one capability over it, so it never leaves the session
    /// node that owns it (SECURITY.md): not sent to data nodes, not read back from them.
    #[serde(skip)]
    pub session_id: Arc<str>,
    /// The session node that owns this publisher (its name); data nodes expire a source's
    /// publishers when its lease lapses.
    pub source: Arc<str>,
    /// The owning session's token: random per session and never its sessionId (which is a
    /// capability that stays on its session node). With `source` it names the owner, and it
    /// breaks ties between two owners' writes of one registerId (see [`WriteOrder`]).
    #[serde(default)]
    pub owner: u64,
    /// The principal that registered it (`token:NAME`, `serviceaccount:NS/NAME`, `token`
    /// for `--token`; none without authentication). A registerId held by a principal is
    /// taken over (a failover to another session, on any session node) only by the same
    /// principal: data nodes refuse another's write of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<Arc<str>>,
}

impl Publisher {
    /// Whether `incoming`, a write of this publisher's registerId, would take it from
    /// another principal: refused (a write of a publisher with no principal, or by the
    /// same one, is not).
    pub fn takeover_refused(&self, incoming: &Publisher) -> bool {
        self.principal.is_some() && self.principal != incoming.principal
    }

    /// Where this write stands among the writes of its registerId.
    pub fn order(&self) -> WriteOrder {
        WriteOrder {
            register_timestamp: self.register_timestamp,
            register_seq: self.register_seq,
            owner: self.owner,
            version: self.version,
        }
    }

    /// The write stamp.
    pub fn stamp(&self) -> Stamp {
        Stamp::new(self.register_timestamp, self.register_seq)
    }
}

/// The order of the writes of one registerId: the newest wins on every replica, whatever
/// the order they arrive in.
///
/// The write stamp comes first (`register_timestamp`, then `register_seq`): it is when a
/// session layer accepted the write, from a hybrid logical clock (a millisecond and a
/// counter within it, strictly increasing per session node and kept above the highest
/// stamp the data nodes report), so the write of a session that took a registerId over (a
/// client that failed over and re-published it) is newer than every write of the session it
/// left, whatever their versions. Then the owner token (two owners with one stamp: a
/// deterministic winner), then the publisher's own version.
/// A removal carries the order of the write it removes: it removes that write and any older
/// one, never a newer owner's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct WriteOrder {
    pub register_timestamp: u64,
    pub register_seq: u32,
    pub owner: u64,
    pub version: u64,
}

/// A write from the session layer to the data layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum PublisherOp {
    /// Add or replace the publisher keyed by `register_id` under its dataInfoId.
    Put { publisher: Arc<Publisher> },
    /// Remove the write with this order (`register_timestamp`, `owner`, `version`: those of
    /// the write being removed) and any older one; leaves a tombstone so that a late copy of
    /// it is ignored. A newer write (another owner's takeover) is left alone.
    #[serde(rename_all = "camelCase")]
    Remove {
        data_info_id: DataInfoId,
        register_id: Arc<str>,
        version: u64,
        register_timestamp: u64,
        #[serde(default, skip_serializing_if = "is_zero")]
        register_seq: u32,
        source: Arc<str>,
        #[serde(default)]
        owner: u64,
    },
}

impl PublisherOp {
    pub fn data_info_id(&self) -> &DataInfoId {
        match self {
            PublisherOp::Put { publisher } => &publisher.data_info_id,
            PublisherOp::Remove { data_info_id, .. } => data_info_id,
        }
    }

    /// A removal of exactly this write (and anything older).
    pub fn remove_of(p: &Publisher) -> PublisherOp {
        PublisherOp::Remove {
            data_info_id: p.data_info_id.clone(),
            register_id: p.register_id.clone(),
            version: p.version,
            register_timestamp: p.register_timestamp,
            register_seq: p.register_seq,
            source: p.source.clone(),
            owner: p.owner,
        }
    }
}

/// The live publishers of one dataInfoId at one datum version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatumSnapshot {
    pub data_info_id: DataInfoId,
    /// 0 for a dataInfoId that has never had a publisher.
    pub version: u64,
    pub publishers: Vec<Arc<Publisher>>,
}

/// "This dataInfoId changed and is now at this version": what the data layer tells sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeNotice {
    pub data_info_id: DataInfoId,
    pub version: u64,
}

/// One row of `GET /api/v1/services` as the data layer knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSummary {
    pub data_info_id: DataInfoId,
    pub publisher_count: usize,
}

/// Milliseconds since the Unix epoch.
/// Serde's `skip_serializing_if` for the fields older nodes do not know (they read them
/// as 0).
pub fn is_zero(n: &u32) -> bool {
    *n == 0
}

pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_stamp_counter_is_left_out_when_zero_and_read_as_zero_when_missing() {
        // Nodes that know no counter neither send nor expect one (rolling upgrades).
        let p: Publisher = serde_json::from_value(serde_json::json!({
            "registerId": "r1", "dataInfoId": "svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP",
            "zone": "z", "data": [], "version": 1, "registerTimestamp": 10, "source": "s"
        }))
        .unwrap();
        assert_eq!(p.stamp(), Stamp::new(10, 0));
        let json = serde_json::to_value(&p).unwrap();
        assert!(json.get("registerSeq").is_none(), "{json}");
        let counted = Publisher {
            register_seq: 4,
            ..p.clone()
        };
        let json = serde_json::to_value(&counted).unwrap();
        assert_eq!(json["registerSeq"], 4);
        // The counter orders writes of one millisecond, before the owner token.
        let other_owner = Publisher {
            owner: u64::MAX,
            ..p.clone()
        };
        assert!(counted.order() > other_owner.order());
        let op = PublisherOp::remove_of(&counted);
        let json = serde_json::to_value(&op).unwrap();
        assert_eq!(json["registerSeq"], 4, "{json}");
        let back: PublisherOp = serde_json::from_value(json).unwrap();
        assert_eq!(back, op);
    }

    #[test]
    fn data_info_id_round_trips() {
        let key = ServiceKey {
            data_id: "com.example.Echo".into(),
            group: DEFAULT_GROUP.into(),
            instance_id: DEFAULT_INSTANCE_ID.into(),
        };
        let id = key.data_info_id();
        assert_eq!(
            &*id,
            "com.example.Echo#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP"
        );
        assert_eq!(ServiceKey::parse(&id), Some(key));
        assert_eq!(ServiceKey::parse("a#@#b"), None);
    }
}
