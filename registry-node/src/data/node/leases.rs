//! Session leases: a session node (publisher `source`) that neither polls nor writes for
//! the lease duration loses its publishers here (no tombstones: if it comes back, its
//! reconciliation re-publishes). Sources first seen in replicated data get a fresh lease,
//! and data of an expired source arriving from peers is left out.
//!
//! A lease is the newest renewal heard of on any data node, not only here: peers send
//! their leases (each with the time since its renewal) with every anti-entropy digest, and
//! a node keeps the newer of its own and theirs. So a session node cut off from this data
//! node alone (a partition between the two, while the others still hear from it) keeps
//! its publishers here; only a session node that no data node has heard from for the
//! lease duration is taken as gone. The delay this adds to the expiry of a dead session
//! node is at most one anti-entropy interval.

use super::DataNode;
use crate::data::store::DatumImage;
use registry_types::SessionLease;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl DataNode {
    /// The session nodes holding a lease here, by name, with the time since each renewal.
    pub fn session_leases(&self) -> Vec<SessionLease> {
        let now = Instant::now();
        let mut out: Vec<SessionLease> = self
            .leases
            .lock()
            .iter()
            .map(|(name, renewed)| SessionLease {
                name: name.to_string(),
                renewed_ms_ago: now.duration_since(*renewed).as_millis() as u64,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Takes the peers' renewals that are newer than this node's own (see the module
    /// docs). A session node expired here comes back when a peer heard from it after the
    /// expiry; its data then returns by anti-entropy and its reconciliation.
    pub(super) fn learn_leases(&self, heard: &[SessionLease]) {
        if heard.is_empty() {
            return;
        }
        let now = Instant::now();
        let lease = self.config.session_lease;
        let mut leases = self.leases.lock();
        let mut marks = self.expired.lock();
        for l in heard {
            let ago = Duration::from_millis(l.renewed_ms_ago);
            if ago >= lease || l.name.is_empty() {
                continue;
            }
            let Some(renewed) = now.checked_sub(ago) else {
                continue;
            };
            let name: Arc<str> = l.name.as_str().into();
            match leases.get_mut(&name) {
                Some(t) => *t = (*t).max(renewed),
                None => {
                    if marks.get(&name).is_some_and(|expired| *expired >= renewed) {
                        continue;
                    }
                    marks.remove(&name);
                    leases.insert(name, renewed);
                }
            }
        }
    }

    pub(super) fn renew(&self, source: &Arc<str>) {
        let mut leases = self.leases.lock();
        if leases.insert(source.clone(), Instant::now()).is_none() {
            self.expired.lock().remove(source);
        }
    }

    pub(super) async fn run_leases(me: std::sync::Weak<DataNode>) {
        loop {
            let (lease, tick) = {
                let Some(node) = me.upgrade() else { return };
                let lease = node.config.session_lease;
                (lease, (lease / 5).max(Duration::from_millis(20)))
            };
            tokio::time::sleep(tick).await;
            let Some(node) = me.upgrade() else { return };
            let now = Instant::now();
            let expired: Vec<Arc<str>> = {
                let mut leases = node.leases.lock();
                let expired: Vec<Arc<str>> = leases
                    .iter()
                    .filter(|(_, t)| now.duration_since(**t) > lease)
                    .map(|(s, _)| s.clone())
                    .collect();
                for s in &expired {
                    leases.remove(s);
                }
                expired
            };
            {
                let mut marks = node.expired.lock();
                marks.retain(|_, t| now.duration_since(*t) < lease * 10);
                for s in &expired {
                    marks.insert(s.clone(), now);
                }
            }
            for source in expired {
                let n = node.store.remove_source(&source).await;
                tracing::info!(%source, dropped = n, "session lease expired");
            }
        }
    }

    /// Sources of installed data start a lease if they have none here, so that data of a
    /// dead session node that arrives by replication still expires.
    pub(super) fn grant_leases(&self, images: &[DatumImage]) {
        let now = Instant::now();
        let mut leases = self.leases.lock();
        for image in images {
            for p in &image.publishers {
                leases.entry(p.source.clone()).or_insert(now);
            }
        }
    }

    /// Merges images from peers. Publishers of a session node whose lease expired here
    /// (and which has not renewed since) are left out: replicas expire a dead session node
    /// at slightly different times, and without this a replica that has not expired it yet
    /// would hand its publishers back to one that already has (merging images only adds).
    pub(super) async fn install_images(&self, mut images: Vec<DatumImage>) {
        {
            let marks = self.expired.lock();
            if !marks.is_empty() {
                for image in &mut images {
                    image.publishers.retain(|p| !marks.contains_key(&p.source));
                }
            }
        }
        self.grant_leases(&images);
        for image in &images {
            for p in &image.publishers {
                self.clock.observe(p.stamp());
            }
        }
        self.store.install(images).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::node::DataNodeConfig;
    use crate::membership::Membership;
    use crate::model::{Publisher, PublisherOp};

    fn node(lease_ms: u64) -> Arc<DataNode> {
        let mut config = DataNodeConfig::new("127.0.0.1:1".into());
        config.session_lease = Duration::from_millis(lease_ms);
        DataNode::start(config, Membership::new(3, 10))
    }

    fn heard(name: &str, ago_ms: u64) -> Vec<SessionLease> {
        vec![SessionLease {
            name: name.into(),
            renewed_ms_ago: ago_ms,
        }]
    }

    fn holds(node: &DataNode, name: &str) -> bool {
        node.session_leases().iter().any(|l| l.name == name)
    }

    async fn publish_from(node: &DataNode, source: &str) {
        let publisher = Arc::new(Publisher {
            register_id: "r1".into(),
            data_info_id: "svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP".into(),
            zone: "z".into(),
            data: vec!["a".to_string()].into(),
            version: 1,
            register_timestamp: 10,
            register_seq: 0,
            client_id: None,
            session_id: "s".into(),
            source: source.into(),
            owner: 1,
            principal: None,
        });
        node.renew(&source.into());
        node.store.apply(vec![PublisherOp::Put { publisher }]).await;
    }

    #[tokio::test]
    async fn a_lease_renewed_on_a_peer_keeps_the_session_nodes_publishers_here() {
        let node = node(400);
        publish_from(&node, "s1").await;
        // This node hears nothing from s1 itself any more, but a peer does: for three
        // leases, the publishers stay.
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            node.learn_leases(&heard("s1", 20));
        }
        assert!(holds(&node, "s1"));
        assert_eq!(node.store.publisher_count(), 1);
        // Once no data node hears from it, it expires after one lease.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!holds(&node, "s1"));
        assert_eq!(node.store.publisher_count(), 0);
        // A peer's report older than the expiry here does not bring it back (replicas
        // expire a dead session node at slightly different times)...
        node.learn_leases(&heard("s1", 390));
        assert!(!holds(&node, "s1"));
        // ... a renewal heard after the expiry does, and a report from the far past, or
        // for a session node never seen, older than a lease, is ignored.
        node.learn_leases(&heard("s1", 0));
        assert!(holds(&node, "s1"));
        node.learn_leases(&heard("s9", 5_000));
        assert!(!holds(&node, "s9"));
    }
}
