//! `RemoteDataPlane`: the data layer as a session node sees it when the data nodes are other processes.
//!
//! - **Writes** go to the primary owner of each dataInfoId under the newest membership;
//!   concurrent writes (and primary reads) to one data node are coalesced into one request
//!   by that node's lanes (see [`Lanes`]); when the primary cannot be reached, to the next
//!   owner (the backups then hold the write until anti-entropy brings it to the primary).
//! - **Reads** come from the primary. When it is unreachable, not yet synced under the
//!   current epoch (a ring change or a restart is in progress), or on another epoch, the
//!   other owners and the previous epoch's owners (and leaving nodes) are asked too and the
//!   answers merged by the publisher merge rules, so a migration never shows a falsely
//!   empty list. A data node on a newer epoch answers with its membership; this node
//!   adopts it and reads again under it (the old owner may have handed the datum over).
//! - **Change notices**: one long poll per data node (`changes`), which is also how this
//!   node renews its session lease there. Notices are deduplicated by version (every
//!   owner reports the same change) and passed to the watchers.
//! - **Reconciliation**: periodically, the session layer's own publishers (the source of
//!   truth, through [`PublisherSource`]) are compared per datum with what each primary
//!   holds of this node (digest, then diff); what is missing or older is re-published, and
//!   publishers of this node the session no longer has are removed.

use super::protocol::{self, *};
use crate::dataplane::{DataPlane, DataPlaneError, MembershipView, PublisherSource};
use crate::membership::{ClusterView, Membership};
use crate::model::{
    now_millis, ChangeNotice, DataInfoId, DatumSnapshot, Publisher, PublisherOp, ServiceSummary,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Configuration of the session side of the data plane.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// This session node's name: its lease identity on the data nodes and the `source` of
    /// the publishers it writes.
    pub node_name: String,
    pub token: Option<String>,
    /// The data nodes' lease duration; polls renew well within it.
    pub session_lease: Duration,
    pub reconcile_interval: Duration,
    pub request_timeout: Duration,
    /// Publishers of this node that the data node holds but the session layer does not
    /// are removed by reconciliation only when written at least this long before the
    /// session layer's snapshot (a write may be in flight between the two).
    pub reconcile_grace: Duration,
}

impl RemoteConfig {
    pub fn new(node_name: String) -> RemoteConfig {
        RemoteConfig {
            node_name,
            token: None,
            session_lease: Duration::from_secs(10),
            reconcile_interval: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            reconcile_grace: Duration::from_secs(5),
        }
    }
}

fn mark(reachable: &Mutex<HashMap<String, Instant>>, node: &str, ok: bool) {
    let mut r = reachable.lock();
    if ok {
        r.insert(node.to_owned(), Instant::now());
    } else {
        r.remove(node);
    }
}

/// Workers per lane: requests to one data node in flight at once.
const LANE_WORKERS: usize = 4;
/// The most ops (writes) or ids (reads) one coalesced request carries.
const LANE_MAX_BATCH: usize = 512;

struct ApplyJob {
    ops: Vec<PublisherOp>,
    done: oneshot::Sender<Result<(), String>>,
}

struct FetchJob {
    id: DataInfoId,
    done: oneshot::Sender<Result<FetchResponse, String>>,
}

/// What a lane worker needs to call its data node.
#[derive(Clone)]
struct LaneContext {
    http: reqwest::Client,
    token: Option<String>,
    source: Arc<str>,
    membership: Arc<Membership>,
    reachable: Arc<Mutex<HashMap<String, Instant>>>,
    node: String,
}

/// The write and read queues of one data node. Each has a few workers; a free worker takes
/// everything queued (up to a batch) and sends it as one request, so batches grow with
/// the load and nothing waits for a timer.
struct Lanes {
    apply: mpsc::UnboundedSender<ApplyJob>,
    fetch: mpsc::UnboundedSender<FetchJob>,
}

impl Lanes {
    fn start(ctx: LaneContext) -> Lanes {
        let (apply, apply_rx) = mpsc::unbounded_channel();
        let (fetch, fetch_rx) = mpsc::unbounded_channel();
        let apply_rx = Arc::new(tokio::sync::Mutex::new(apply_rx));
        let fetch_rx = Arc::new(tokio::sync::Mutex::new(fetch_rx));
        for _ in 0..LANE_WORKERS {
            tokio::spawn(run_apply_lane(ctx.clone(), apply_rx.clone()));
            tokio::spawn(run_fetch_lane(ctx.clone(), fetch_rx.clone()));
        }
        Lanes { apply, fetch }
    }
}

/// Takes the next batch off a lane queue; `None` once the lane is dropped and drained.
async fn next_batch<J>(
    rx: &tokio::sync::Mutex<mpsc::UnboundedReceiver<J>>,
    weight: impl Fn(&J) -> usize,
) -> Option<Vec<J>> {
    let mut rx = rx.lock().await;
    let first = rx.recv().await?;
    let mut size = weight(&first);
    let mut jobs = vec![first];
    while size < LANE_MAX_BATCH {
        match rx.try_recv() {
            Ok(j) => {
                size += weight(&j);
                jobs.push(j);
            }
            Err(_) => break,
        }
    }
    Some(jobs)
}

async fn run_apply_lane(
    ctx: LaneContext,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<ApplyJob>>>,
) {
    while let Some(jobs) = next_batch(&rx, |j| j.ops.len()).await {
        let body = ApplyRequest {
            source: ctx.source.clone(),
            ops: jobs.iter().flat_map(|j| j.ops.iter().cloned()).collect(),
            membership: Some(ctx.membership.view().doc.clone()),
        };
        let r: Result<EpochResponse, _> =
            call(&ctx.http, ctx.token.as_deref(), &ctx.node, protocol::APPLY, &body).await;
        mark(&ctx.reachable, &ctx.node, r.is_ok());
        let r = r.map(|_| ()).map_err(|e| e.to_string());
        for j in jobs {
            let _ = j.done.send(r.clone());
        }
    }
}

async fn run_fetch_lane(
    ctx: LaneContext,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<FetchJob>>>,
) {
    while let Some(jobs) = next_batch(&rx, |_| 1).await {
        let body = FetchRequest {
            ids: jobs.iter().map(|j| j.id.clone()).collect(),
            membership: Some(ctx.membership.view().doc.clone()),
        };
        let r: Result<FetchResponse, _> =
            call(&ctx.http, ctx.token.as_deref(), &ctx.node, protocol::FETCH, &body).await;
        mark(&ctx.reachable, &ctx.node, r.is_ok());
        match r {
            Ok(resp) if resp.datums.len() == jobs.len() => {
                for (j, snap) in jobs.into_iter().zip(resp.datums) {
                    let _ = j.done.send(Ok(FetchResponse {
                        epoch: resp.epoch,
                        synced: resp.synced,
                        datums: vec![snap],
                        membership: resp.membership.clone(),
                    }));
                }
            }
            Ok(resp) => {
                let e = format!(
                    "{}: {} datums for {} ids",
                    ctx.node,
                    resp.datums.len(),
                    jobs.len()
                );
                for j in jobs {
                    let _ = j.done.send(Err(e.clone()));
                }
            }
            Err(e) => {
                let e = e.to_string();
                for j in jobs {
                    let _ = j.done.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Outcome of a read under one view.
enum Fetched {
    Done(Result<DatumSnapshot, DataPlaneError>),
    /// A data node is on a newer epoch: this document.
    NewerEpoch(crate::membership::MembershipDoc),
}

impl Fetched {
    fn into_result(self) -> Result<DatumSnapshot, DataPlaneError> {
        match self {
            Fetched::Done(r) => r,
            Fetched::NewerEpoch(_) => Err(DataPlaneError::Unavailable(
                "the data nodes' membership keeps changing".into(),
            )),
        }
    }
}

/// See the module docs.
pub struct RemoteDataPlane {
    config: RemoteConfig,
    source_name: Arc<str>,
    membership: Arc<Membership>,
    http: reqwest::Client,
    watchers: super::store::Watchers,
    forwarded: Mutex<HashMap<DataInfoId, u64>>,
    reachable: Arc<Mutex<HashMap<String, Instant>>>,
    /// Per data node of the view: the queues that coalesce concurrent writes and reads.
    lanes: Mutex<HashMap<String, Arc<Lanes>>>,
    pollers: Mutex<HashSet<String>>,
    publishers: RwLock<Option<Arc<dyn PublisherSource>>>,
}

impl RemoteDataPlane {
    /// Creates the data plane and starts its pollers and reconciler (inside a runtime).
    pub fn start(config: RemoteConfig, membership: Arc<Membership>) -> Arc<RemoteDataPlane> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        let plane = Arc::new(RemoteDataPlane {
            source_name: config.node_name.as_str().into(),
            config,
            membership,
            http,
            watchers: RwLock::new(Vec::new()),
            forwarded: Mutex::new(HashMap::new()),
            reachable: Arc::new(Mutex::new(HashMap::new())),
            lanes: Mutex::new(HashMap::new()),
            pollers: Mutex::new(HashSet::new()),
            publishers: RwLock::new(None),
        });
        tokio::spawn(Self::run_supervisor(Arc::downgrade(&plane)));
        tokio::spawn(Self::run_reconciler(Arc::downgrade(&plane)));
        plane
    }

    fn token(&self) -> Option<&str> {
        self.config.token.as_deref()
    }

    fn mark(&self, node: &str, ok: bool) {
        mark(&self.reachable, node, ok);
    }

    /// The lanes of `node` when it is in the current view (created on first use); `None`
    /// for other nodes (previous owners), which are called directly.
    fn lanes(&self, node: &str) -> Option<Arc<Lanes>> {
        if let Some(l) = self.lanes.lock().get(node) {
            return Some(l.clone());
        }
        let view = self.membership.view();
        if !view.all_nodes().iter().any(|n| n == node) {
            return None;
        }
        let ctx = LaneContext {
            http: self.http.clone(),
            token: self.config.token.clone(),
            source: self.source_name.clone(),
            membership: self.membership.clone(),
            reachable: self.reachable.clone(),
            node: node.to_owned(),
        };
        let lanes = self
            .lanes
            .lock()
            .entry(node.to_owned())
            .or_insert_with(|| Arc::new(Lanes::start(ctx)))
            .clone();
        Some(lanes)
    }

    /// Sends `ops` to `node`, in one request with whatever else is queued for it.
    async fn apply_on(&self, node: &str, ops: Vec<PublisherOp>) -> Result<(), String> {
        match self.lanes(node) {
            Some(lanes) => {
                let (done, rx) = oneshot::channel();
                if lanes.apply.send(ApplyJob { ops, done }).is_err() {
                    return Err("lane closed".into());
                }
                rx.await.unwrap_or_else(|_| Err("lane closed".into()))
            }
            None => {
                let body = ApplyRequest {
                    source: self.source_name.clone(),
                    ops,
                    membership: Some(self.membership.view().doc.clone()),
                };
                self.call::<_, EpochResponse>(node, protocol::APPLY, &body)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    }

    fn is_reachable(&self, node: &str) -> bool {
        self.reachable
            .lock()
            .get(node)
            .is_some_and(|t| t.elapsed() < self.config.session_lease.max(Duration::from_secs(1)))
    }

    async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        node: &str,
        path: &str,
        body: &Req,
    ) -> Result<Resp, CallError> {
        let r = call(&self.http, self.token(), node, path, body).await;
        self.mark(node, r.is_ok());
        r
    }

    /// Keeps one poller per data node of the current view.
    async fn run_supervisor(me: std::sync::Weak<RemoteDataPlane>) {
        let mut changes = match me.upgrade() {
            Some(p) => p.membership.subscribe(),
            None => return,
        };
        loop {
            {
                let Some(plane) = me.upgrade() else { return };
                let view = plane.membership.view();
                for node in view.all_nodes() {
                    if plane.pollers.lock().insert(node.clone()) {
                        tokio::spawn(Self::run_poller(Arc::downgrade(&plane), node));
                    }
                }
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    async fn run_poller(me: std::sync::Weak<RemoteDataPlane>, node: String) {
        let mut after: Option<u64> = None;
        let mut incarnation: Option<u64> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            let Some(plane) = me.upgrade() else { return };
            let view = plane.membership.view();
            if !view.all_nodes().contains(&node) {
                plane.pollers.lock().remove(&node);
                plane.lanes.lock().remove(&node);
                return;
            }
            let wait = (plane.config.session_lease / 3).min(Duration::from_secs(5));
            let body = ChangesRequest {
                source: plane.source_name.clone(),
                after,
                wait_ms: wait.as_millis() as u64,
                incarnation,
                membership: Some(view.doc.clone()),
            };
            let http = plane.http.clone();
            let token = plane.config.token.clone();
            let timeout = wait + plane.config.request_timeout;
            drop(view);
            drop(plane);
            let r: Result<ChangesResponse, _> = call_with_timeout(
                &http,
                token.as_deref(),
                &node,
                protocol::CHANGES,
                &body,
                Some(timeout),
            )
            .await;
            let Some(plane) = me.upgrade() else { return };
            plane.mark(&node, r.is_ok());
            match r {
                Ok(resp) => {
                    backoff = Duration::from_millis(100);
                    if incarnation.is_some() && incarnation != Some(resp.incarnation) {
                        tracing::info!(%node, "data node restarted");
                    }
                    incarnation = Some(resp.incarnation);
                    after = Some(resp.seq);
                    if !resp.notices.is_empty() {
                        plane.forward(resp.notices);
                    }
                }
                Err(e) => {
                    tracing::debug!(%node, error = %e, "change poll failed");
                    drop(plane);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Passes on notices newer than what was already passed on for their dataInfoId.
    fn forward(&self, notices: Vec<ChangeNotice>) {
        let fresh: Vec<ChangeNotice> = {
            let mut seen = self.forwarded.lock();
            notices
                .into_iter()
                .filter(|n| {
                    let v = seen.entry(n.data_info_id.clone()).or_insert(0);
                    if n.version > *v {
                        *v = n.version;
                        true
                    } else {
                        false
                    }
                })
                .collect()
        };
        if fresh.is_empty() {
            return;
        }
        super::store::notify(&self.watchers, fresh);
    }

    async fn run_reconciler(me: std::sync::Weak<RemoteDataPlane>) {
        loop {
            let interval = match me.upgrade() {
                Some(p) => p.config.reconcile_interval,
                None => return,
            };
            tokio::time::sleep(interval).await;
            let Some(plane) = me.upgrade() else { return };
            if let Err(e) = plane.reconcile_once().await {
                tracing::debug!(error = %e, "reconciliation incomplete");
            }
        }
    }

    /// One reconciliation pass (see the module docs). Returns how many ops it applied.
    pub async fn reconcile_once(&self) -> Result<usize, DataPlaneError> {
        let Some(source) = self.publishers.read().clone() else {
            return Ok(0);
        };
        let view = self.membership.view();
        if view.epoch() == 0 {
            return Ok(0);
        }
        let snapshot_at = now_millis();
        let mut mine: HashMap<DataInfoId, Vec<Arc<Publisher>>> = HashMap::new();
        for p in source.publishers() {
            mine.entry(p.data_info_id.clone()).or_default().push(p);
        }
        // Ask each datum's primary, or its first reachable owner while the primary is down.
        let mut per_node: HashMap<String, (Vec<ReconcileDatum>, bool)> = HashMap::new();
        for m in &view.doc.members {
            per_node.insert(m.clone(), (Vec::new(), true));
        }
        for (id, pubs) in &mine {
            let owners = view.owners(id);
            let Some(primary) = owners.first() else {
                continue;
            };
            let target = if self.is_reachable(primary) {
                primary
            } else {
                owners
                    .iter()
                    .find(|o| self.is_reachable(o))
                    .unwrap_or(primary)
            };
            let hash = write_set_hash(
                pubs.iter()
                    .map(|p| (&*p.register_id, p.version, p.register_timestamp)),
            );
            per_node
                .entry((*target).to_owned())
                .or_insert_with(|| (Vec::new(), true))
                .0
                .push(ReconcileDatum {
                    id: id.clone(),
                    hash,
                });
        }
        let calls = per_node.into_iter().map(|(node, (datums, complete))| {
            let body = ReconcileRequest {
                source: self.source_name.clone(),
                datums,
                complete,
                membership: Some(view.doc.clone()),
            };
            async move {
                (
                    node.clone(),
                    self.call::<_, ReconcileResponse>(&node, protocol::RECONCILE, &body)
                        .await,
                )
            }
        });
        let answers = futures::future::join_all(calls).await;
        let grace = self.config.reconcile_grace.as_millis() as u64;
        let mut ops = Vec::new();
        let mut failed = 0;
        for (node, answer) in answers {
            let resp = match answer {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(%node, error = %e, "reconcile call failed");
                    failed += 1;
                    continue;
                }
            };
            for m in resp.mismatched {
                let have: HashMap<&str, &WriteKey> =
                    m.have.iter().map(|w| (&*w.register_id, w)).collect();
                let empty = Vec::new();
                let pubs = mine.get(&m.id).unwrap_or(&empty);
                for p in pubs {
                    let behind = match have.get(&*p.register_id) {
                        None => true,
                        Some(w) => {
                            (w.version, w.register_timestamp) < (p.version, p.register_timestamp)
                        }
                    };
                    if behind {
                        ops.push(PublisherOp::Put {
                            publisher: p.clone(),
                        });
                    }
                }
                let listed: HashSet<&str> = pubs.iter().map(|p| &*p.register_id).collect();
                for w in &m.have {
                    if !listed.contains(&*w.register_id)
                        && w.register_timestamp + grace < snapshot_at
                    {
                        ops.push(PublisherOp::Remove {
                            data_info_id: m.id.clone(),
                            register_id: w.register_id.clone(),
                            version: w.version,
                            register_timestamp: w.register_timestamp,
                            source: self.source_name.clone(),
                        });
                    }
                }
            }
        }
        let n = ops.len();
        if n > 0 {
            tracing::info!(
                ops = n,
                "reconciliation re-publishes what the data nodes lack"
            );
            self.apply_ops(ops).await?;
        }
        if failed > 0 {
            return Err(DataPlaneError::Unavailable(format!(
                "{failed} data node(s) did not answer reconciliation"
            )));
        }
        Ok(n)
    }

    async fn apply_ops(&self, ops: Vec<PublisherOp>) -> Result<(), DataPlaneError> {
        let view = self.membership.view();
        if view.epoch() == 0 || view.ring.is_empty() {
            return Err(DataPlaneError::Unavailable(
                "no data-node membership yet".into(),
            ));
        }
        let mut groups: HashMap<Vec<String>, Vec<PublisherOp>> = HashMap::new();
        for op in ops {
            let owners: Vec<String> = view
                .owners(op.data_info_id())
                .into_iter()
                .map(str::to_owned)
                .collect();
            groups.entry(owners).or_default().push(op);
        }
        let calls = groups.into_iter().map(|(owners, ops)| {
            async move {
                let mut last = String::new();
                // The primary first, then the backups.
                for owner in &owners {
                    let started = Instant::now();
                    match self.apply_on(owner, ops.clone()).await {
                        Ok(()) => {
                            tracing::debug!(%owner, took = ?started.elapsed(), "apply call");
                            return Ok(());
                        }
                        Err(e) => last = e,
                    }
                }
                Err(DataPlaneError::Unavailable(format!(
                    "no owner accepted the write: {last}"
                )))
            }
        });
        for r in futures::future::join_all(calls).await {
            r?;
        }
        Ok(())
    }

    async fn fetch_from(
        &self,
        node: &str,
        id: &DataInfoId,
        view: &ClusterView,
    ) -> Result<FetchResponse, CallError> {
        let body = FetchRequest {
            ids: vec![id.clone()],
            membership: Some(view.doc.clone()),
        };
        self.call(node, protocol::FETCH, &body).await
    }

    /// [`Self::fetch_from`] through the node's lane: concurrent reads of several datums
    /// from one primary go out as one request.
    async fn fetch_primary(
        &self,
        node: &str,
        id: &DataInfoId,
        view: &ClusterView,
    ) -> Result<FetchResponse, String> {
        match self.lanes(node) {
            Some(lanes) => {
                let (done, rx) = oneshot::channel();
                if lanes
                    .fetch
                    .send(FetchJob {
                        id: id.clone(),
                        done,
                    })
                    .is_err()
                {
                    return Err("lane closed".into());
                }
                rx.await.unwrap_or_else(|_| Err("lane closed".into()))
            }
            None => self
                .fetch_from(node, id, view)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    async fn fetch_one(&self, data_info_id: &str) -> Result<DatumSnapshot, DataPlaneError> {
        let id: DataInfoId = data_info_id.into();
        // A data node on a newer epoch hands its membership back; adopt it and ask again
        // under it (bounded: epochs only grow, and each retry needs a newer one).
        for _ in 0..4 {
            let view = self.membership.view();
            if view.epoch() == 0 || view.ring.is_empty() {
                return Err(DataPlaneError::Unavailable(
                    "no data-node membership yet".into(),
                ));
            }
            match self.fetch_under(&id, &view).await {
                Fetched::Done(r) => return r,
                Fetched::NewerEpoch(doc) => {
                    if let Err(e) = self.membership.offer(doc) {
                        tracing::warn!(error = %e, "ignored a malformed membership from a data node");
                        return self.fetch_merged(&id, &view, Vec::new()).await.into_result();
                    }
                }
            }
        }
        let view = self.membership.view();
        self.fetch_merged(&id, &view, Vec::new())
            .await
            .into_result()
    }

    /// Reads `id` under `view`: the primary's answer when it is synced under this epoch,
    /// else the merge of every owner's (see [`Self::fetch_merged`]).
    async fn fetch_under(&self, id: &DataInfoId, view: &ClusterView) -> Fetched {
        let owners = view.owners(id);
        let mut answers: Vec<DatumSnapshot> = Vec::new();
        if let Some(primary) = owners.first() {
            if let Ok(mut resp) = self.fetch_primary(primary, id, view).await {
                if let Some(doc) = resp.membership.take() {
                    if doc.epoch > view.epoch() {
                        return Fetched::NewerEpoch(doc);
                    }
                }
                let trusted = resp.synced && resp.epoch == view.epoch();
                tracing::trace!(%id, %primary, epoch = view.epoch(), node_epoch = resp.epoch, trusted, "read from the primary");
                if let Some(snap) = resp.datums.pop() {
                    if trusted {
                        return Fetched::Done(Ok(snap));
                    }
                    answers.push(snap);
                }
            }
        }
        self.fetch_merged(id, view, answers).await
    }

    /// The primary is unreachable or still syncing: merge what the previous epoch's owners
    /// and then every current owner hold. In that order because a previous owner drops a
    /// datum only after every new owner accepted it: a datum missed at the previous owner
    /// (dropped) is then found at the current owners, asked afterwards.
    async fn fetch_merged(
        &self,
        id: &DataInfoId,
        view: &ClusterView,
        mut answers: Vec<DatumSnapshot>,
    ) -> Fetched {
        let owners = view.owners(id);
        let previous: Vec<&str> = view
            .previous_owners(id)
            .into_iter()
            .chain(
                view.previous
                    .as_ref()
                    .map(|(d, _)| d.leaving.iter().map(String::as_str).collect::<Vec<_>>())
                    .unwrap_or_default(),
            )
            .chain(view.doc.leaving.iter().map(String::as_str))
            .filter(|o| !owners.contains(o))
            .collect();
        let mut reached = !answers.is_empty();
        for phase in [previous, owners] {
            let calls = phase.iter().map(|o| self.fetch_from(o, id, view));
            for r in futures::future::join_all(calls).await.into_iter().flatten() {
                if let Some(doc) = r.membership.filter(|d| d.epoch > view.epoch()) {
                    return Fetched::NewerEpoch(doc);
                }
                reached = true;
                answers.extend(r.datums);
            }
        }
        if !reached {
            return Fetched::Done(Err(DataPlaneError::Unavailable(format!(
                "no owner of {id} could be reached"
            ))));
        }
        let merged = merge_snapshots(id.clone(), answers);
        tracing::trace!(%id, epoch = view.epoch(), publishers = merged.publishers.len(), "merged read");
        Fetched::Done(Ok(merged))
    }

    async fn services_all(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<ServiceSummary>, DataPlaneError> {
        let view = self.membership.view();
        if view.epoch() == 0 {
            return Err(DataPlaneError::Unavailable(
                "no data-node membership yet".into(),
            ));
        }
        let body = ServicesRequest {
            prefix: prefix.to_owned(),
            limit,
        };
        let nodes = view.all_nodes();
        let calls = nodes
            .iter()
            .map(|n| self.call::<_, ServicesResponse>(n, protocol::SERVICES, &body));
        let mut merged: HashMap<DataInfoId, usize> = HashMap::new();
        let mut any = false;
        for r in futures::future::join_all(calls).await.into_iter().flatten() {
            any = true;
            for s in r.services {
                let c = merged.entry(s.data_info_id).or_default();
                *c = (*c).max(s.publisher_count);
            }
        }
        if !any {
            return Err(DataPlaneError::Unavailable(
                "no data node could be reached".into(),
            ));
        }
        let mut out: Vec<ServiceSummary> = merged
            .into_iter()
            .map(|(data_info_id, publisher_count)| ServiceSummary {
                data_info_id,
                publisher_count,
            })
            .collect();
        out.sort_unstable_by(|a, b| a.data_info_id.cmp(&b.data_info_id));
        out.truncate(limit);
        Ok(out)
    }
}

/// Merges answers from several owners: per registerId the greater `(version,
/// registerTimestamp)` wins; the version is the greatest seen.
pub fn merge_snapshots(id: DataInfoId, answers: Vec<DatumSnapshot>) -> DatumSnapshot {
    let mut version = 0;
    let mut by_rid: HashMap<Arc<str>, Arc<Publisher>> = HashMap::new();
    for snap in answers {
        version = version.max(snap.version);
        for p in snap.publishers {
            match by_rid.get(&p.register_id) {
                Some(cur)
                    if (cur.version, cur.register_timestamp)
                        >= (p.version, p.register_timestamp) => {}
                _ => {
                    by_rid.insert(p.register_id.clone(), p);
                }
            }
        }
    }
    let mut publishers: Vec<Arc<Publisher>> = by_rid.into_values().collect();
    publishers.sort_unstable_by(|a, b| a.register_id.cmp(&b.register_id));
    DatumSnapshot {
        data_info_id: id,
        version,
        publishers,
    }
}

impl DataPlane for RemoteDataPlane {
    fn apply(&self, ops: Vec<PublisherOp>) -> BoxFuture<'_, Result<(), DataPlaneError>> {
        self.apply_ops(ops).boxed()
    }

    fn fetch(&self, data_info_id: &str) -> BoxFuture<'_, Result<DatumSnapshot, DataPlaneError>> {
        let id = data_info_id.to_owned();
        async move { self.fetch_one(&id).await }.boxed()
    }

    fn services(
        &self,
        prefix: &str,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ServiceSummary>, DataPlaneError>> {
        let prefix = prefix.to_owned();
        async move { self.services_all(&prefix, limit).await }.boxed()
    }

    fn watch_changes(&self, tx: mpsc::Sender<Vec<ChangeNotice>>) {
        self.watchers.write().push(tx);
    }

    fn membership(&self) -> MembershipView {
        let view = self.membership.view();
        let members = view.doc.members.clone();
        let reachable = members.iter().filter(|m| self.is_reachable(m)).count();
        let rf = view.replication_factor.min(members.len()).max(1);
        // Every datum has a reachable owner when at most rf-1 members are unreachable.
        let ready = view.epoch() > 0 && reachable > 0 && reachable + (rf - 1) >= members.len();
        MembershipView {
            epoch: view.epoch(),
            members,
            ready,
        }
    }

    fn set_publisher_source(&self, source: Arc<dyn PublisherSource>) {
        *self.publishers.write() = Some(source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(rid: &str, version: u64, ts: u64) -> Arc<Publisher> {
        Arc::new(Publisher {
            register_id: rid.into(),
            data_info_id: "x#@#i#@#g".into(),
            zone: "z".into(),
            data: vec![format!("{rid}-{version}")].into(),
            version,
            register_timestamp: ts,
            client_id: None,
            session_id: "s".into(),
            source: "n".into(),
        })
    }

    #[test]
    fn merged_snapshot_is_the_union_with_newest_writes() {
        let id: DataInfoId = "x#@#i#@#g".into();
        let a = DatumSnapshot {
            data_info_id: id.clone(),
            version: 10,
            publishers: vec![p("r1", 1, 1), p("r2", 2, 1)],
        };
        let b = DatumSnapshot {
            data_info_id: id.clone(),
            version: 7,
            publishers: vec![p("r2", 1, 5), p("r3", 1, 1)],
        };
        let m = merge_snapshots(id, vec![a, b]);
        assert_eq!(m.version, 10);
        let got: Vec<(String, u64)> = m
            .publishers
            .iter()
            .map(|p| (p.register_id.to_string(), p.version))
            .collect();
        assert_eq!(got, [("r1".into(), 1), ("r2".into(), 2), ("r3".into(), 1)]);
    }
}
