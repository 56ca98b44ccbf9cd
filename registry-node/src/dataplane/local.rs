//! `LocalDataPlane`: the data layer in the same process as the session layer (standalone).

use super::cluster_view::{DataLayerView, DataNodeState, DataNodeView};
use super::{DataPlane, DataPlaneError, DataPlaneStatus};
use crate::data::store::{DatumStore, StoreConfig};
use crate::model::{ChangeNotice, DatumSnapshot, PublisherOp, ServiceSummary};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Configuration of the in-process data layer.
#[derive(Debug, Clone, Default)]
pub struct LocalDataPlaneConfig {
    pub store: StoreConfig,
    /// What `membership()` reports as the data members (standalone: this node's own
    /// address, if the caller wants to show one).
    pub members: Vec<String>,
}

/// The data layer in process. The publishers the session layer passes in are kept by
/// `Arc`, never copied. In standalone the local session layer is the only source and its
/// lease never expires; `remove_source` is there for a session layer that wants to drop
/// everything it published (and for the data-node role, which expires leases).
pub struct LocalDataPlane {
    store: DatumStore,
    members: Vec<String>,
}

impl LocalDataPlane {
    /// Must be called inside a tokio runtime (the store spawns its shard tasks).
    pub fn new(config: LocalDataPlaneConfig) -> Arc<LocalDataPlane> {
        Arc::new(LocalDataPlane {
            store: DatumStore::new(config.store),
            members: config.members,
        })
    }

    /// The underlying store (the data-node role serves it over HTTP).
    pub fn store(&self) -> &DatumStore {
        &self.store
    }

    /// Datums with at least one live publisher.
    pub fn datum_count(&self) -> usize {
        self.store.datum_count()
    }

    /// Live publishers over all datums.
    pub fn publisher_count(&self) -> usize {
        self.store.publisher_count()
    }

    /// Drops every publisher registered through `source`; returns how many.
    pub async fn remove_source(&self, source: &str) -> usize {
        self.store.remove_source(source).await
    }
}

impl DataPlane for LocalDataPlane {
    fn apply(&self, ops: Vec<PublisherOp>) -> BoxFuture<'_, Result<(), DataPlaneError>> {
        async move {
            self.store.apply(ops).await;
            Ok(())
        }
        .boxed()
    }

    fn fetch(&self, data_info_id: &str) -> BoxFuture<'_, Result<DatumSnapshot, DataPlaneError>> {
        let snap = self.store.fetch(data_info_id);
        async move { Ok(snap) }.boxed()
    }

    fn services(
        &self,
        prefix: &str,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ServiceSummary>, DataPlaneError>> {
        let list = self.store.services(prefix, limit);
        async move { Ok(list) }.boxed()
    }

    fn watch_changes(&self, tx: mpsc::Sender<Vec<ChangeNotice>>) {
        self.store.watch_changes(tx);
    }

    fn status(&self) -> DataPlaneStatus {
        DataPlaneStatus {
            epoch: 1,
            members: self.members.clone(),
            ready: true,
        }
    }

    /// One data layer, in process: all of the ring, always synced.
    fn cluster_view(&self) -> BoxFuture<'_, DataLayerView> {
        let view = DataLayerView {
            replication_factor: 1,
            data_nodes: self
                .members
                .iter()
                .take(1)
                .map(|address| DataNodeView {
                    address: address.clone(),
                    state: DataNodeState::Active,
                    reachable: true,
                    synced: Some(true),
                    ring_share: 1.0,
                    epoch: Some(1),
                    datums: Some(self.datum_count()),
                    publishers: Some(self.publisher_count()),
                })
                .collect(),
            session_nodes: Vec::new(),
        };
        async move { view }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Publisher;

    #[tokio::test]
    async fn apply_then_fetch_sees_the_write_and_shares_the_arc() {
        let plane = LocalDataPlane::new(LocalDataPlaneConfig::default());
        let id = "svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP";
        let p = Arc::new(Publisher {
            register_id: "r1".into(),
            data_info_id: id.into(),
            zone: "z".into(),
            data: vec!["10.0.0.1:80".to_string()].into(),
            version: 1,
            register_timestamp: 1,
            register_seq: 0,
            client_id: None,
            session_id: "s".into(),
            source: "local".into(),
            owner: 0,
            principal: None,
        });
        let (tx, mut rx) = mpsc::channel(4);
        plane.watch_changes(tx);
        plane
            .apply(vec![PublisherOp::Put {
                publisher: p.clone(),
            }])
            .await
            .expect("apply");
        let snap = plane.fetch(id).await.expect("fetch");
        assert_eq!(snap.publishers.len(), 1);
        assert!(
            Arc::ptr_eq(&snap.publishers[0], &p),
            "publisher data must not be copied"
        );
        let notices = rx.recv().await.expect("notice");
        assert_eq!(notices[0].version, snap.version);
        assert_eq!(plane.publisher_count(), 1);
        assert_eq!(plane.datum_count(), 1);
        assert_eq!(plane.services("svc", 10).await.expect("services").len(), 1);
        assert!(plane.status().ready);
    }
}
