//! The routes of the data node: `/internal/v1/data/*` of `dataplane::wire`, each a thin
//! handler over the node's duties.

use super::{live_hash, DataNode};
use crate::data::store::Datum;
use crate::data::validate;
use crate::dataplane::wire::{self, *};
use crate::http::error::ApiError;
use crate::model::{now_millis, DataInfoId, PublisherOp};
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use axum::{Json, Router};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

impl DataNode {
    /// The `/internal/v1/data/*` routes (without authentication; the caller layers it).
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(wire::APPLY, post(apply))
            .route(wire::FETCH, post(fetch))
            .route(wire::SERVICES, post(services))
            .route(wire::CHANGES, post(changes))
            .route(wire::RECONCILE, post(reconcile))
            .route(wire::DIGEST, post(digest))
            .route(wire::IMAGES, post(images))
            .route(wire::INSTALL, post(install))
            .layer(DefaultBodyLimit::max(wire::MAX_REQUEST_BYTES))
            .with_state(self.clone())
    }
}

/// Counts a session write as in progress while it lives.
struct Applying<'a>(&'a AtomicUsize);

impl Drop for Applying<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

type Answer<T> = Result<Json<T>, ApiError>;

async fn apply(
    State(node): State<Arc<DataNode>>,
    Json(req): Json<ApplyRequest>,
) -> Answer<ApplyAnswer> {
    node.applying.fetch_add(1, Ordering::SeqCst);
    let _applying = Applying(&node.applying);
    if node.draining.load(Ordering::SeqCst) {
        return Err(ApiError::Unavailable("data node is shutting down".into()));
    }
    // Everything checked before anything changes: a bad op refuses the whole request.
    validate::check_ops(&req.source, &req.ops, now_millis())?;
    node.gossip(req.membership)?;
    node.renew(&req.source);
    node.observe_ops(&req.ops);
    // A write that would take a registerId from the principal holding it is refused (the
    // session node answers 403); the rest of the batch is applied.
    let (ops, refused): (Vec<_>, Vec<_>) = req
        .ops
        .into_iter()
        .partition(|op| !node.store.takeover_refused(op));
    let refused = refused
        .into_iter()
        .map(|op| RefusedWrite {
            data_info_id: op.data_info_id().clone(),
            register_id: match op {
                PublisherOp::Put { publisher } => publisher.register_id.clone(),
                PublisherOp::Remove { register_id, .. } => register_id,
            },
        })
        .collect();
    let started = Instant::now();
    let n = ops.len();
    node.store.apply(ops.clone()).await;
    // After the apply, so the version the delta images carry includes these ops. Never
    // waited for: a backup that hangs (each push then takes the request timeout) must not
    // hold up the session's write here; what is dropped, anti-entropy repairs.
    if node.config.replication_queue == 0 {
        // Replication off: anti-entropy carries every change.
    } else if let Err(mpsc::error::TrySendError::Full(_)) = node.replicate.try_send(ops) {
        tracing::debug!("replication queue full; anti-entropy will repair");
    }
    tracing::debug!(ops = n, took = ?started.elapsed(), "applied");
    Ok(Json(ApplyAnswer {
        epoch: node.membership.epoch(),
        refused,
    }))
}

async fn fetch(
    State(node): State<Arc<DataNode>>,
    Json(req): Json<FetchRequest>,
) -> Answer<FetchResponse> {
    validate::check_ids("ids", &req.ids)?;
    let asked_under = req.membership.as_ref().map_or(0, |d| d.epoch);
    node.gossip(req.membership)?;
    let view = node.membership.view();
    let synced = node.synced_under(view.epoch());
    let datums = req.ids.iter().map(|id| node.store.fetch(id)).collect();
    let clock = node.clock.highest();
    Ok(Json(FetchResponse {
        epoch: view.epoch(),
        synced,
        datums,
        // A reader on an older epoch adopts this one and asks its owners instead.
        membership: (view.epoch() > asked_under).then(|| view.doc.clone()),
        clock: clock.ms,
        clock_seq: clock.seq,
    }))
}

async fn services(
    State(node): State<Arc<DataNode>>,
    Json(req): Json<ServicesRequest>,
) -> Json<ServicesResponse> {
    Json(ServicesResponse {
        services: node.store.services(&req.prefix, req.limit),
    })
}

async fn changes(
    State(node): State<Arc<DataNode>>,
    Json(mut req): Json<ChangesRequest>,
) -> Answer<ChangesResponse> {
    crate::http::validate::check_name("source", &req.source)?;
    node.gossip(req.membership.take())?;
    Ok(Json(node.poll_changes(req).await))
}

async fn reconcile(
    State(node): State<Arc<DataNode>>,
    Json(req): Json<ReconcileRequest>,
) -> Answer<ReconcileResponse> {
    crate::http::validate::check_name("source", &req.source)?;
    let ids: Vec<DataInfoId> = req.datums.iter().map(|d| d.id.clone()).collect();
    validate::check_ids("datums", &ids)?;
    node.gossip(req.membership)?;
    node.renew(&req.source);
    let source = req.source.clone();
    let have_of = |d: &Datum| -> Vec<WriteKey> {
        d.publishers
            .live()
            .filter(|p| p.source == source)
            .map(|p| write_key(&p.register_id, p.order()))
            .collect()
    };
    let mut mismatched = Vec::new();
    let mut listed: HashSet<DataInfoId> = HashSet::new();
    for d in req.datums {
        let have = node.store.with_datum(&d.id, have_of).unwrap_or_default();
        let hash = write_set_hash(have.iter().map(|w| (&*w.register_id, w.order())));
        if hash != d.hash {
            let newer = node
                .store
                .with_datum(&d.id, |datum| others_of(datum, &source))
                .unwrap_or_default();
            mismatched.push(ReconcileMismatch {
                id: d.id.clone(),
                have,
                newer,
            });
        }
        listed.insert(d.id);
    }
    if req.complete {
        let view = node.membership.view();
        let me = node.config.advertise_addr.as_str();
        node.store.for_each_datum(|id, d| {
            if listed.contains(id) || view.ring.primary(id) != Some(me) {
                return;
            }
            let have = have_of(d);
            if !have.is_empty() {
                mismatched.push(ReconcileMismatch {
                    id: id.clone(),
                    have,
                    newer: Vec::new(),
                });
            }
        });
    }
    Ok(Json(ReconcileResponse {
        epoch: node.membership.epoch(),
        mismatched,
    }))
}

fn write_key(register_id: &Arc<str>, o: crate::model::WriteOrder) -> WriteKey {
    WriteKey {
        register_id: register_id.clone(),
        version: o.version,
        register_timestamp: o.register_timestamp,
        register_seq: o.register_seq,
        owner: o.owner,
    }
}

/// The writes of a datum that are not live writes of `source`: other session nodes' live
/// publishers and every tombstone (what a session needs to see that a newer owner holds, or
/// removed, a registerId it still has).
fn others_of(d: &Datum, source: &str) -> Vec<WriteKey> {
    use crate::data::merge::Slot;
    d.publishers
        .slots()
        .filter_map(|(rid, slot)| match slot {
            Slot::Live(p) if &*p.source == source => None,
            Slot::Live(p) => Some(write_key(rid, p.order())),
            Slot::Removed(t) => Some(write_key(rid, t.order)),
        })
        .collect()
}

async fn digest(
    State(node): State<Arc<DataNode>>,
    Json(req): Json<DigestRequest>,
) -> Answer<DigestResponse> {
    node.gossip(req.membership)?;
    node.learn_leases(&req.leases);
    let view = node.membership.view();
    let now_ms = crate::model::now_millis();
    let mut entries = Vec::new();
    node.store.for_each_datum(|id, d| {
        if d.version > 0 && view.owners(id).contains(&req.for_node.as_str()) {
            entries.push(DigestEntry {
                id: id.clone(),
                version: d.version,
                hash: live_hash(d),
                age_ms: Some(now_ms.saturating_sub(d.changed_at_ms)),
            });
        }
    });
    Ok(Json(DigestResponse {
        membership: view.doc.clone(),
        entries,
        leases: node.session_leases(),
    }))
}

async fn images(
    State(node): State<Arc<DataNode>>,
    Json(req): Json<ImagesRequest>,
) -> Answer<ImagesResponse> {
    validate::check_ids("ids", &req.ids)?;
    Ok(Json(ImagesResponse {
        images: req
            .ids
            .iter()
            .filter_map(|id| node.store.image(id))
            .collect(),
    }))
}

async fn install(
    State(node): State<Arc<DataNode>>,
    Json(req): Json<InstallRequest>,
) -> Answer<EpochAnswer> {
    validate::check_images(&req.images, now_millis())?;
    node.gossip(req.membership)?;
    node.install_images(req.images).await;
    Ok(Json(EpochAnswer {
        epoch: node.membership.epoch(),
    }))
}
