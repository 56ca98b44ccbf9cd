//! The documents that cross processes: what the operator sends to registry nodes and reads
//! back from them (docs/INTERNAL.md), defined once for both sides. Serde types and pure
//! helpers only: no I/O, no async, no HTTP client.
//!
//! | document | route | written by → read by |
//! |---|---|---|
//! | [`MembershipDoc`] | `POST /internal/v1/membership`, `--members-file`, gossip | operator → every node; data node ↔ data node |
//! | [`EpochAnswer`] | answer of the membership route and of data-protocol writes | node → operator / peer |
//! | [`NodeStatus`] (with [`DataStatus`], [`SessionCounts`], [`SessionLease`]) | `GET /internal/v1/status` | node → operator |
//! | [`PushSettings`] | `GET`/`PUT /api/v1/admin/push` | session node ↔ operator |
//! | [`access::AccessDoc`] | `--access-file`, `spec.access` | operator (or the user) → session nodes |

pub mod access;

use registry_trust::{DocumentFields, MembershipKey, MembershipSigner, SignatureError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

// === impl MembershipDoc ===

/// At most this many data nodes in one document (members and leaving together).
pub const MAX_MEMBERSHIP_NODES: usize = 1000;
/// At most this many bytes of JSON in one document (POST body, file).
pub const MAX_MEMBERSHIP_BYTES: usize = 256 * 1024;
/// At most this many bytes in one member address.
pub const MAX_MEMBER_ADDRESS_BYTES: usize = 256;

/// The data-node membership, epoch'd: `{"epoch": 7, "members": [...], "leaving": [...]}`.
/// A node adopts a document only when its epoch is greater than the one in use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct MembershipDoc {
    pub epoch: u64,
    /// Data-node addresses in the ring.
    pub members: Vec<String>,
    /// Data nodes out of the ring that still hand their datums over.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaving: Vec<String>,
    /// The operator's Ed25519 signature over epoch, members, leaving and ids (base64; SECURITY.md).
    /// A node started with `--membership-key` adopts no document without a valid one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Ring identities, address → identity (`{"10.0.3.7:9622": "reg-data-2"}`): the ring
    /// places a member by its identity instead of its address, so a member that comes back
    /// at another address (a StatefulSet pod restarted with a new IP) keeps its place and
    /// nothing moves. A member without an entry is placed by its address, so address-only
    /// documents build the ring they always did. Signed like the members.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ids: BTreeMap<String, String>,
}

/// Why a membership document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// Malformed or out of bounds (`400 invalid_argument`).
    #[error("membership: {0}")]
    Invalid(String),
    /// Not signed by the operator's key (`403 forbidden`).
    #[error("membership: {0}")]
    Signature(#[from] SignatureError),
}

impl MembershipDoc {
    /// Checks the document is usable: epoch ≥ 1, at most [`MAX_MEMBERSHIP_NODES`] nodes,
    /// member addresses non-empty, without whitespace, each listed once, not both member
    /// and leaving; every ring identity names a listed node, is well formed and places one
    /// member only (no two members share a place on the ring).
    pub fn validate(&self) -> Result<(), MembershipError> {
        if self.epoch == 0 {
            return Err(MembershipError::Invalid("epoch must be at least 1".into()));
        }
        let nodes = self.members.len() + self.leaving.len();
        if nodes > MAX_MEMBERSHIP_NODES {
            return Err(MembershipError::Invalid(format!(
                "{nodes} nodes in members and leaving, at most {MAX_MEMBERSHIP_NODES} are allowed"
            )));
        }
        let mut seen = HashSet::with_capacity(nodes);
        if let Some(m) = self.members.iter().find(|m| !seen.insert(m.as_str())) {
            return Err(MembershipError::Invalid(format!(
                "{m} is listed twice in members"
            )));
        }
        for (field, list) in [("members", &self.members), ("leaving", &self.leaving)] {
            for m in list {
                if !well_formed(m) {
                    return Err(MembershipError::Invalid(format!(
                        "{field} has a malformed address {m:?}"
                    )));
                }
            }
        }
        for (addr, id) in &self.ids {
            if !self.members.contains(addr) && !self.leaving.contains(addr) {
                return Err(MembershipError::Invalid(format!(
                    "ids names {addr:?}, which is neither a member nor leaving"
                )));
            }
            if !well_formed(id) {
                return Err(MembershipError::Invalid(format!(
                    "ids has a malformed identity {id:?} for {addr}"
                )));
            }
        }
        let mut places = HashSet::with_capacity(self.members.len());
        for m in &self.members {
            let place = self.ring_key(m);
            if !places.insert(place) {
                return Err(MembershipError::Invalid(format!(
                    "two members share the ring identity {place:?}"
                )));
            }
        }
        if let Some(m) = self.leaving.iter().find(|m| self.members.contains(m)) {
            return Err(MembershipError::Invalid(format!(
                "{m} is both in members and leaving"
            )));
        }
        Ok(())
    }

    /// Where the ring places `addr`: its identity when the document gives one, else the
    /// address itself.
    pub fn ring_key<'a>(&'a self, addr: &'a str) -> &'a str {
        self.ids.get(addr).map_or(addr, String::as_str)
    }

    /// Parses and validates a JSON document of at most [`MAX_MEMBERSHIP_BYTES`].
    pub fn parse(bytes: &[u8]) -> Result<MembershipDoc, MembershipError> {
        if bytes.len() > MAX_MEMBERSHIP_BYTES {
            return Err(MembershipError::Invalid(format!(
                "the document is {} bytes, at most {MAX_MEMBERSHIP_BYTES} are allowed",
                bytes.len()
            )));
        }
        let doc: MembershipDoc = serde_json::from_slice(bytes)
            .map_err(|e| MembershipError::Invalid(format!("malformed document: {e}")))?;
        doc.validate()?;
        Ok(doc)
    }

    /// The static membership of `--members`: epoch 1.
    pub fn from_static(members: &[String]) -> MembershipDoc {
        MembershipDoc {
            epoch: 1,
            members: members
                .iter()
                .map(|m| m.trim().to_owned())
                .filter(|m| !m.is_empty())
                .collect(),
            leaving: Vec::new(),
            signature: None,
            ids: BTreeMap::new(),
        }
    }

    /// The fields the signature covers.
    pub fn fields(&self) -> DocumentFields<'_> {
        DocumentFields {
            epoch: self.epoch,
            members: &self.members,
            leaving: &self.leaving,
            ids: &self.ids,
        }
    }

    /// The document signed with the cluster's key (the operator).
    pub fn signed(mut self, signer: &MembershipSigner) -> MembershipDoc {
        self.signature = Some(signer.sign(self.fields()));
        self
    }

    /// Checks the document carries a valid signature by `key`'s private half.
    pub fn verify(&self, key: &MembershipKey) -> Result<(), MembershipError> {
        Ok(key.verify(self.fields(), self.signature.as_deref())?)
    }

    /// The same ring: epoch, members, leaving and ring identities equal (signatures aside).
    pub fn same_as(&self, other: &MembershipDoc) -> bool {
        self.epoch == other.epoch
            && self.members == other.members
            && self.leaving == other.leaving
            && self.ids == other.ids
    }
}

/// An address or ring identity: non-empty, at most [`MAX_MEMBER_ADDRESS_BYTES`], no
/// whitespace or control characters.
fn well_formed(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_MEMBER_ADDRESS_BYTES
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// `{"epoch": N}`: the epoch a node uses after a membership delivery or a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EpochAnswer {
    pub epoch: u64,
}

// === impl NodeStatus ===

/// `GET /internal/v1/status` of any node. Every field has a default when read, so a reader
/// copes with nodes of another build that leave some out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeStatus {
    pub node_name: String,
    pub roles: Vec<String>,
    pub epoch: u64,
    pub members: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leaving: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_addr: Option<String>,
    /// The data-layer part (data nodes and standalone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<DataStatus>,
    /// The session-layer part (session nodes and standalone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionCounts>,
    /// Data nodes: the session nodes holding a lease here (the cluster view lists them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub session_leases: Vec<SessionLease>,
}

/// A session node's lease on a data node, as [`NodeStatus`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct SessionLease {
    /// The session node's name (the `source` of its publishers).
    pub name: String,
    /// Milliseconds since its last renewal (a change poll or a write).
    pub renewed_ms_ago: u64,
}

/// The data-layer part of [`NodeStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct DataStatus {
    /// Datums with at least one live publisher.
    pub datum_count: usize,
    /// Live publishers held.
    pub publisher_count: usize,
    /// True when the node holds everything it owns under the epoch in use.
    pub synced: bool,
    /// True when the node is out of the ring and has handed everything over.
    pub handover_complete: bool,
}

/// The session-layer part of [`NodeStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct SessionCounts {
    pub sessions: usize,
    pub publishers: usize,
    pub subscribers: usize,
}

impl NodeStatus {
    /// Whether the node reports its data part synced (false for a node without one).
    pub fn synced(&self) -> bool {
        self.data.is_some_and(|d| d.synced)
    }

    /// Whether the node reports its handover complete (false for a node without a data part).
    pub fn handover_complete(&self) -> bool {
        self.data.is_some_and(|d| d.handover_complete)
    }
}

// === impl PushSettings ===

/// The push switch and delay of a session node: `GET`/`PUT /api/v1/admin/push`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PushSettings {
    pub stop_push: bool,
    pub push_delay_millis: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_malformed_membership_documents() {
        assert!(MembershipDoc::parse(b"{").is_err());
        assert!(MembershipDoc::parse(br#"{"epoch":0,"members":["a:1"]}"#).is_err());
        assert!(MembershipDoc::parse(br#"{"epoch":1,"members":["a b"]}"#).is_err());
        assert!(
            MembershipDoc::parse(br#"{"epoch":1,"members":["a:1"],"leaving":["a:1"]}"#).is_err()
        );
        let ok = MembershipDoc::parse(br#"{"epoch":4,"members":["a:1"],"leaving":["b:1"]}"#)
            .expect("valid");
        assert_eq!(ok.leaving, ["b:1"]);
    }

    #[test]
    fn ring_identities_name_listed_nodes_and_never_share_a_place() {
        let ok = MembershipDoc::parse(
            br#"{"epoch":2,"members":["a:1","b:1"],"ids":{"a:1":"reg-data-0","b:1":"reg-data-1"}}"#,
        )
        .expect("valid");
        assert_eq!(ok.ring_key("a:1"), "reg-data-0");
        assert_eq!(ok.ring_key("c:1"), "c:1");
        // An identity for a node the document does not list.
        assert!(
            MembershipDoc::parse(br#"{"epoch":2,"members":["a:1"],"ids":{"x:1":"d0"}}"#).is_err()
        );
        // Two members at one place: by two equal identities, or an identity equal to
        // another member's address.
        assert!(MembershipDoc::parse(
            br#"{"epoch":2,"members":["a:1","b:1"],"ids":{"a:1":"d0","b:1":"d0"}}"#
        )
        .is_err());
        assert!(MembershipDoc::parse(
            br#"{"epoch":2,"members":["a:1","b:1"],"ids":{"a:1":"b:1"}}"#
        )
        .is_err());
        assert!(
            MembershipDoc::parse(br#"{"epoch":2,"members":["a:1"],"ids":{"a:1":"d 0"}}"#).is_err()
        );
        // Address-only documents write no ids.
        let plain = MembershipDoc::from_static(&["a:1".into()]);
        assert!(serde_json::to_value(&plain)
            .expect("json")
            .get("ids")
            .is_none());
    }

    #[test]
    fn documents_are_bounded() {
        let many: Vec<String> = (0..=MAX_MEMBERSHIP_NODES)
            .map(|i| format!("10.0.{}.{}:9622", i / 256, i % 256))
            .collect();
        let doc = MembershipDoc {
            epoch: 2,
            members: many,
            ..Default::default()
        };
        let e = doc.validate().unwrap_err().to_string();
        assert!(e.contains("at most 1000"), "{e}");
        let twice = MembershipDoc {
            epoch: 2,
            members: vec!["a:1".into(), "a:1".into()],
            ..Default::default()
        };
        assert!(twice.validate().unwrap_err().to_string().contains("twice"));
        let long = format!(
            r#"{{"epoch":1,"members":["a:1"],"pad":"{}"}}"#,
            "x".repeat(MAX_MEMBERSHIP_BYTES)
        );
        assert!(MembershipDoc::parse(long.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("bytes"));
        let address = MembershipDoc {
            epoch: 2,
            members: vec!["a".repeat(MAX_MEMBER_ADDRESS_BYTES + 1)],
            ..Default::default()
        };
        assert!(address.validate().is_err());
    }

    #[test]
    fn a_signed_document_round_trips_and_verifies_only_unchanged() {
        let signer = MembershipSigner::generate();
        let doc = MembershipDoc {
            epoch: 5,
            members: vec!["a:1".into()],
            leaving: vec!["b:1".into()],
            signature: None,
            ids: [("a:1".to_owned(), "reg-data-0".to_owned())].into(),
        }
        .signed(&signer);
        let json = serde_json::to_vec(&doc).unwrap();
        let back = MembershipDoc::parse(&json).unwrap();
        assert_eq!(back, doc);
        assert_eq!(back.verify(&signer.public_key()), Ok(()));
        let mut forged = back.clone();
        forged.epoch = u64::MAX;
        assert!(matches!(
            forged.verify(&signer.public_key()),
            Err(MembershipError::Signature(SignatureError::Invalid))
        ));
        let unsigned = MembershipDoc {
            signature: None,
            ..back.clone()
        };
        assert!(matches!(
            unsigned.verify(&signer.public_key()),
            Err(MembershipError::Signature(SignatureError::Missing))
        ));
        assert!(unsigned.same_as(&back));
        assert!(!forged.same_as(&back));
        // The ring identities are signed: moving one member's place breaks the signature.
        let mut moved = back.clone();
        moved.ids.insert("a:1".into(), "reg-data-9".into());
        assert!(matches!(
            moved.verify(&signer.public_key()),
            Err(MembershipError::Signature(SignatureError::Invalid))
        ));
        assert!(!moved.same_as(&back));
    }

    #[test]
    fn static_membership_is_epoch_one_without_blanks() {
        let doc = MembershipDoc::from_static(&[" a:1 ".into(), "".into(), "b:1".into()]);
        assert_eq!(doc.epoch, 1);
        assert_eq!(doc.members, ["a:1", "b:1"]);
    }

    #[test]
    fn node_status_reads_partial_documents_and_writes_camel_case() {
        let s: NodeStatus =
            serde_json::from_str(r#"{"epoch":3,"data":{"synced":true}}"#).expect("parse");
        assert_eq!(s.epoch, 3);
        assert!(s.synced());
        assert!(!s.handover_complete());
        let s = NodeStatus {
            node_name: "d0".into(),
            roles: vec!["data".into()],
            data: Some(DataStatus {
                handover_complete: true,
                ..DataStatus::default()
            }),
            ..NodeStatus::default()
        };
        let v = serde_json::to_value(&s).expect("json");
        assert_eq!(v["nodeName"], "d0");
        assert_eq!(v["data"]["handoverComplete"], true);
        assert!(v.get("leaving").is_none() && v.get("session").is_none());
        assert!(v.get("sessionLeases").is_none());
        let s: NodeStatus =
            serde_json::from_str(r#"{"sessionLeases":[{"name":"s1","renewedMsAgo":120}]}"#)
                .expect("parse");
        assert_eq!(s.session_leases[0].name, "s1");
        assert_eq!(s.session_leases[0].renewed_ms_ago, 120);
    }

    #[test]
    fn push_settings_are_camel_case() {
        let v = serde_json::to_value(PushSettings {
            stop_push: true,
            push_delay_millis: 7,
        })
        .expect("json");
        assert_eq!(
            v,
            serde_json::json!({"stopPush": true, "pushDelayMillis": 7})
        );
    }
}
