//! The data layer as `GET /api/v1/cluster` shows it beyond API.md (the console's cluster
//! page): every data node of the membership with its state on the ring, whether it holds
//! everything it owns, its share of the ring, and the session nodes the data nodes hold
//! leases of. Built from the membership and the nodes' own `/internal/v1/status`, with no
//! I/O here.

use std::collections::BTreeMap;

use registry_types::NodeStatus;
use serde::Serialize;

use crate::membership::ClusterView;

/// A data node's place in the membership, as the operator's status names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataNodeState {
    /// In the ring, still fetching what it owns under the current epoch.
    Joining,
    /// In the ring and holding what it owns.
    Active,
    /// Out of the ring, handing its datums over.
    Leaving,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataNodeView {
    pub address: String,
    pub state: DataNodeState,
    /// Whether it answered its status just now.
    pub reachable: bool,
    /// Holds everything it owns under the epoch in use (unknown when unreachable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synced: Option<bool>,
    /// The share of the hash space it is the primary owner of (0 when leaving).
    pub ring_share: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datums: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publishers: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionNodeView {
    pub name: String,
    /// The data nodes that hold a lease of it.
    pub seen_by: Vec<String>,
    /// Milliseconds since its most recent renewal on any of them.
    pub last_renewal_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DataLayerView {
    pub replication_factor: usize,
    pub data_nodes: Vec<DataNodeView>,
    pub session_nodes: Vec<SessionNodeView>,
}

/// The view from the membership in use and each data node's status (`None`: no answer).
pub fn build(view: &ClusterView, statuses: &[(String, Option<NodeStatus>)]) -> DataLayerView {
    let shares: BTreeMap<&str, f64> = view.ring.primary_shares().into_iter().collect();
    let status_of = |a: &str| {
        statuses
            .iter()
            .find(|(addr, _)| addr == a)
            .and_then(|(_, s)| s.as_ref())
    };
    let data_nodes = view
        .all_nodes()
        .into_iter()
        .map(|address| {
            let status = status_of(&address);
            let data = status.and_then(|s| s.data);
            // Synced only counts under this epoch: a node behind has not fetched for it yet.
            let synced = status.map(|s| s.epoch >= view.epoch() && s.synced());
            let state = if view.doc.leaving.contains(&address) {
                DataNodeState::Leaving
            } else if synced == Some(false) {
                DataNodeState::Joining
            } else {
                DataNodeState::Active
            };
            DataNodeView {
                ring_share: shares.get(address.as_str()).copied().unwrap_or(0.0),
                state,
                reachable: status.is_some(),
                synced,
                epoch: status.map(|s| s.epoch),
                datums: data.map(|d| d.datum_count),
                publishers: data.map(|d| d.publisher_count),
                address,
            }
        })
        .collect();
    let mut sessions: BTreeMap<&str, SessionNodeView> = BTreeMap::new();
    for (address, status) in statuses {
        for lease in status.iter().flat_map(|s| &s.session_leases) {
            let s = sessions
                .entry(lease.name.as_str())
                .or_insert_with(|| SessionNodeView {
                    name: lease.name.clone(),
                    seen_by: Vec::new(),
                    last_renewal_ms: lease.renewed_ms_ago,
                });
            s.seen_by.push(address.clone());
            s.last_renewal_ms = s.last_renewal_ms.min(lease.renewed_ms_ago);
        }
    }
    DataLayerView {
        replication_factor: view.replication_factor,
        data_nodes,
        session_nodes: sessions.into_values().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::Membership;
    use registry_types::{DataStatus, MembershipDoc, SessionLease};

    fn status(epoch: u64, synced: bool, publishers: usize, leases: &[(&str, u64)]) -> NodeStatus {
        NodeStatus {
            epoch,
            data: Some(DataStatus {
                datum_count: publishers,
                publisher_count: publishers,
                synced,
                handover_complete: false,
            }),
            session_leases: leases
                .iter()
                .map(|(n, ms)| SessionLease {
                    name: n.to_string(),
                    renewed_ms_ago: *ms,
                })
                .collect(),
            ..NodeStatus::default()
        }
    }

    #[test]
    fn states_sync_shares_and_session_nodes() {
        let m = Membership::new(3, 100);
        m.adopt(MembershipDoc {
            epoch: 4,
            members: vec!["a:1".into(), "b:1".into(), "c:1".into()],
            leaving: vec!["d:1".into()],
            signature: None,
            ids: Default::default(),
        });
        let statuses = vec![
            (
                "a:1".to_string(),
                Some(status(4, true, 5, &[("s1", 300), ("s2", 900)])),
            ),
            // Synced, but under an older epoch: still joining this one.
            ("b:1".to_string(), Some(status(3, true, 2, &[("s1", 100)]))),
            ("c:1".to_string(), None),
            ("d:1".to_string(), Some(status(4, false, 1, &[]))),
        ];
        let v = build(&m.view(), &statuses);
        assert_eq!(v.replication_factor, 3);
        let by: BTreeMap<_, _> = v
            .data_nodes
            .iter()
            .map(|d| (d.address.as_str(), d))
            .collect();
        assert_eq!(by.len(), 4);
        assert_eq!(by["a:1"].state, DataNodeState::Active);
        assert_eq!(by["a:1"].synced, Some(true));
        assert_eq!(by["a:1"].publishers, Some(5));
        assert_eq!(by["b:1"].state, DataNodeState::Joining);
        assert_eq!(by["b:1"].synced, Some(false));
        assert_eq!(
            by["c:1"].state,
            DataNodeState::Active,
            "a member that did not answer"
        );
        assert!(!by["c:1"].reachable);
        assert_eq!(by["c:1"].synced, None);
        assert_eq!(by["d:1"].state, DataNodeState::Leaving);
        assert_eq!(by["d:1"].ring_share, 0.0);
        let sum: f64 = v.data_nodes.iter().map(|d| d.ring_share).sum();
        assert!((sum - 1.0).abs() < 1e-9);
        assert_eq!(
            v.session_nodes,
            vec![
                SessionNodeView {
                    name: "s1".into(),
                    seen_by: vec!["a:1".into(), "b:1".into()],
                    last_renewal_ms: 100
                },
                SessionNodeView {
                    name: "s2".into(),
                    seen_by: vec!["a:1".into()],
                    last_renewal_ms: 900
                },
            ]
        );
        let json = serde_json::to_value(&v).expect("json");
        assert_eq!(json["dataNodes"][0]["state"], "active");
        assert_eq!(json["sessionNodes"][0]["seenBy"][1], "b:1");
    }
}
