//! The data-node role: serves the datum store over the internal protocol (see `protocol`), holds session leases, replicates to the other owners, runs anti-entropy and hands datums over on ring changes.
//!
//! Duties, each a background task started by [`DataNode::start`]:
//! - **Change log**: every change of the store is appended to a bounded log that session
//!   nodes long-poll (`changes`); the poll renews the session node's lease.
//! - **Replication**: the ops applied here are pushed (`install`) to each datum's other
//!   owners, batched, as delta images: only the publishers and tombstones those ops carried,
//!   never the whole datum (a full copy per change made replication cost grow with the
//!   datum's size). Failures are left to anti-entropy.
//! - **Leases**: a session node (publisher `source`) that neither polls nor writes for the
//!   lease duration loses its publishers here (no tombstones: if it comes back, its
//!   reconciliation re-publishes). Sources first seen in replicated data get a fresh lease.
//! - **Anti-entropy** (every interval, and at once on a membership change): pull from every
//!   peer the digest of the datums this node owns and fetch those where the peer is ahead
//!   (that is also how a new owner obtains its datums from the previous owners, and how a
//!   node restarted empty gets its data back from the backups). `synced` is true under an
//!   epoch once a round under that epoch got an answer from every member and leaving node
//!   that is alive; a peer that has not answered for `peer_dead_after` counts as dead and
//!   no longer holds it back (what it held is recovered from the other owners and from the
//!   sessions' reconciliation). A new epoch makes the node unsynced at once, until a round
//!   under it completes. Once synced, a datum that changed on the peer within the last
//!   second is left to replication for up to four rounds (it is usually in flight), so
//!   that steady writes do not copy whole datums every round.
//! - **Handover**: datums this node holds but no longer owns are pushed to their owners and
//!   dropped once every owner accepted them. `handoverComplete` is true when this node is
//!   out of the ring and holds nothing left to hand over.
//! - **Drain** ([`DataNode::drain`], on SIGTERM): writes from sessions are refused (503, so
//!   they go to the next owner), writes already accepted finish, then every datum held here
//!   is pushed to its other owners until they all accepted it; then the node may exit.

use super::protocol::{self, *};
use super::store::{DatumImage, DatumStore, StoreConfig, TombstoneImage};
use crate::membership::{ClusterView, Membership, MembershipDoc};
use crate::model::{ChangeNotice, DataInfoId, PublisherOp};
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use axum::{Json, Router};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};

/// Configuration of a data node.
#[derive(Debug, Clone)]
pub struct DataNodeConfig {
    /// This node's identity on the ring (`--advertise-addr`).
    pub advertise_addr: String,
    pub session_lease: Duration,
    pub anti_entropy_interval: Duration,
    pub request_timeout: Duration,
    pub token: Option<String>,
    pub store: StoreConfig,
    /// Notices kept for session nodes that poll; one that falls further behind is reset.
    pub change_log_capacity: usize,
    /// A peer that has not answered anti-entropy for this long is taken as dead: it no
    /// longer keeps this node from becoming synced.
    pub peer_dead_after: Duration,
}

impl DataNodeConfig {
    pub fn new(advertise_addr: String) -> DataNodeConfig {
        DataNodeConfig {
            advertise_addr,
            session_lease: Duration::from_secs(10),
            anti_entropy_interval: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            token: None,
            store: StoreConfig::default(),
            change_log_capacity: 100_000,
            peer_dead_after: Duration::from_secs(10),
        }
    }
}

/// Data-layer part of `GET /internal/v1/status`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataStatus {
    pub datum_count: usize,
    pub publisher_count: usize,
    pub synced: bool,
    pub handover_complete: bool,
}

struct ChangeLog {
    /// Sequence number of `entries[0]`.
    first_seq: u64,
    entries: VecDeque<ChangeNotice>,
    capacity: usize,
}

impl ChangeLog {
    fn last_seq(&self) -> u64 {
        self.first_seq + self.entries.len() as u64 - 1
    }
}

/// A data node. See the module docs.
pub struct DataNode {
    config: DataNodeConfig,
    store: DatumStore,
    membership: Arc<Membership>,
    http: reqwest::Client,
    leases: Mutex<HashMap<Arc<str>, Instant>>,
    /// Session nodes whose lease expired here, and when (kept ten leases).
    expired: Mutex<HashMap<Arc<str>, Instant>>,
    log: Mutex<ChangeLog>,
    log_seq: watch::Sender<u64>,
    incarnation: u64,
    /// The epoch under which this node holds everything it owns (0: none yet). Compared
    /// with the epoch in use, so adopting a new membership unsyncs the node atomically.
    synced_epoch: AtomicU64,
    /// Peers whose anti-entropy pulls fail, since when.
    failing_peers: Mutex<HashMap<String, Instant>>,
    handover_complete: AtomicBool,
    round_trigger: Notify,
    /// Ops applied here, for the replication task.
    replicate: mpsc::Sender<Vec<PublisherOp>>,
    /// Set by [`DataNode::drain`]: session writes are refused.
    draining: AtomicBool,
    /// Session writes being applied right now.
    applying: AtomicUsize,
    /// Datums that differed from a peer's copy while they were changing there, and how many
    /// rounds in a row their pull was put off (see [`SETTLE_MS`]).
    deferred: Mutex<HashMap<(String, DataInfoId), u32>>,
}

/// In steady state (synced under the epoch in use), a datum that changed on the peer less
/// than this long ago is left to replication, which is about to deliver the same change;
/// pulling it would copy the whole datum on every round while writes keep coming.
const SETTLE_MS: u64 = 1_000;
/// ... but not for more than this many rounds in a row, so that a datum that never stops
/// changing is still repaired.
const MAX_DEFERRALS: u32 = 4;

/// Whether anti-entropy puts off pulling a datum that differs from a peer's copy, given
/// whether this node is synced, how long ago the datum changed on the peer (unknown from an
/// older node) and for how many rounds in a row the pull was already put off.
fn defer_pull(steady: bool, peer_age_ms: Option<u64>, rounds_deferred: u32) -> bool {
    steady && peer_age_ms.is_some_and(|a| a < SETTLE_MS) && rounds_deferred < MAX_DEFERRALS
}

const MAX_NOTICES_PER_POLL: usize = 10_000;
const IMAGES_PER_CALL: usize = 500;

impl DataNode {
    /// Creates the node and starts its background tasks (inside a tokio runtime).
    pub fn start(config: DataNodeConfig, membership: Arc<Membership>) -> Arc<DataNode> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        let (log_seq, _) = watch::channel(0);
        let (replicate, replicate_rx) = mpsc::channel(1024);
        let node = Arc::new(DataNode {
            store: DatumStore::new(config.store.clone()),
            log: Mutex::new(ChangeLog {
                first_seq: 1,
                entries: VecDeque::new(),
                capacity: config.change_log_capacity.max(1),
            }),
            config,
            membership,
            http,
            leases: Mutex::new(HashMap::new()),
            expired: Mutex::new(HashMap::new()),
            log_seq,
            incarnation: crate::model::now_millis() ^ rand::random::<u64>() >> 16,
            synced_epoch: AtomicU64::new(0),
            failing_peers: Mutex::new(HashMap::new()),
            handover_complete: AtomicBool::new(false),
            round_trigger: Notify::new(),
            replicate,
            draining: AtomicBool::new(false),
            applying: AtomicUsize::new(0),
            deferred: Mutex::new(HashMap::new()),
        });
        let (tx, all) = mpsc::channel(1024);
        node.store.watch_changes(tx);
        let (tx, local) = mpsc::channel(1024);
        node.store.watch_local_changes(tx);
        tokio::spawn(Self::run_change_log(Arc::downgrade(&node), all, local));
        tokio::spawn(Self::run_replication(Arc::downgrade(&node), replicate_rx));
        tokio::spawn(Self::run_leases(Arc::downgrade(&node)));
        tokio::spawn(Self::run_anti_entropy(Arc::downgrade(&node)));
        node
    }

    pub fn store(&self) -> &DatumStore {
        &self.store
    }

    pub fn membership(&self) -> &Arc<Membership> {
        &self.membership
    }

    pub fn advertise_addr(&self) -> &str {
        &self.config.advertise_addr
    }

    pub fn status(&self) -> DataStatus {
        DataStatus {
            datum_count: self.store.datum_count(),
            publisher_count: self.store.publisher_count(),
            synced: self.is_synced(),
            handover_complete: self.handover_complete.load(Ordering::Relaxed),
        }
    }

    /// True when this node holds everything it owns under the epoch in use.
    pub fn is_synced(&self) -> bool {
        self.synced_under(self.membership.epoch())
    }

    fn synced_under(&self, epoch: u64) -> bool {
        epoch > 0 && self.synced_epoch.load(Ordering::Relaxed) == epoch
    }

    /// Asks for an anti-entropy round now.
    pub fn trigger_round(&self) {
        self.round_trigger.notify_one();
    }

    fn token(&self) -> Option<&str> {
        self.config.token.as_deref()
    }

    fn gossip(&self, doc: Option<MembershipDoc>) {
        if let Some(doc) = doc {
            if doc.epoch > self.membership.epoch() {
                if let Err(e) = self.membership.offer(doc) {
                    tracing::warn!(error = %e, "ignored a malformed membership from a peer");
                }
            }
        }
    }

    fn renew(&self, source: &Arc<str>) {
        let mut leases = self.leases.lock();
        if leases.insert(source.clone(), Instant::now()).is_none() {
            self.expired.lock().remove(source);
        }
    }

    /// The `/internal/v1/data/*` routes (without authentication; the caller layers it).
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(protocol::APPLY, post(apply))
            .route(protocol::FETCH, post(fetch))
            .route(protocol::SERVICES, post(services))
            .route(protocol::CHANGES, post(changes))
            .route(protocol::RECONCILE, post(reconcile))
            .route(protocol::DIGEST, post(digest))
            .route(protocol::IMAGES, post(images))
            .route(protocol::INSTALL, post(install))
            .layer(DefaultBodyLimit::max(512 * 1024 * 1024))
            .with_state(self.clone())
    }

    /// Session nodes are told of a change by the datum's primary, or by whichever node
    /// applied a write itself (a backup taking writes while the primary is down): one
    /// notice per change instead of one per replica.
    async fn run_change_log(
        me: std::sync::Weak<DataNode>,
        mut all: mpsc::Receiver<Vec<ChangeNotice>>,
        mut local: mpsc::Receiver<Vec<ChangeNotice>>,
    ) {
        loop {
            let (batch, from_local) = tokio::select! {
                b = all.recv() => match b { Some(b) => (b, false), None => return },
                b = local.recv() => match b { Some(b) => (b, true), None => return },
            };
            let Some(node) = me.upgrade() else { return };
            let view = node.membership.view();
            let me_addr = node.config.advertise_addr.as_str();
            let batch: Vec<ChangeNotice> = batch
                .into_iter()
                .filter(|n| (view.ring.primary(&n.data_info_id) == Some(me_addr)) != from_local)
                .collect();
            if batch.is_empty() {
                continue;
            }
            let seq = {
                let mut log = node.log.lock();
                for n in batch {
                    log.entries.push_back(n);
                }
                while log.entries.len() > log.capacity {
                    log.entries.pop_front();
                    log.first_seq += 1;
                }
                log.last_seq()
            };
            node.log_seq.send_replace(seq);
        }
    }

    async fn run_replication(
        me: std::sync::Weak<DataNode>,
        mut rx: mpsc::Receiver<Vec<PublisherOp>>,
    ) {
        while let Some(mut ops) = rx.recv().await {
            // Let a burst accumulate into one push per owner.
            tokio::time::sleep(Duration::from_millis(5)).await;
            while let Ok(more) = rx.try_recv() {
                ops.extend(more);
            }
            let Some(node) = me.upgrade() else { return };
            let view = node.membership.view();
            let mut per_target: HashMap<String, Vec<DatumImage>> = HashMap::new();
            for image in delta_images(ops, |id| node.store.version(id)) {
                for t in view.owners(&image.data_info_id) {
                    if t != node.config.advertise_addr {
                        per_target.entry(t.to_owned()).or_default().push(image.clone());
                    }
                }
            }
            let doc = view.doc.clone();
            let calls = per_target.into_iter().map(|(target, images)| {
                let node = node.clone();
                let doc = doc.clone();
                async move {
                    for chunk in images.chunks(IMAGES_PER_CALL) {
                        let body = InstallRequest {
                            images: chunk.to_vec(),
                            membership: Some(doc.clone()),
                        };
                        if let Err(e) = call::<_, EpochResponse>(&node.http, node.token(), &target, protocol::INSTALL, &body).await {
                            tracing::debug!(%target, error = %e, "replication push failed; anti-entropy will repair");
                            return;
                        }
                    }
                }
            });
            futures::future::join_all(calls).await;
        }
    }

    async fn run_leases(me: std::sync::Weak<DataNode>) {
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

    async fn run_anti_entropy(me: std::sync::Weak<DataNode>) {
        let mut changes = match me.upgrade() {
            Some(n) => n.membership.subscribe(),
            None => return,
        };
        loop {
            let Some(node) = me.upgrade() else { return };
            node.round().await;
            let interval = node.config.anti_entropy_interval;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                r = changes.changed() => { if r.is_err() { return } }
                _ = node.round_trigger.notified() => {}
            }
        }
    }

    /// Sources of installed data start a lease if they have none here, so that data of a
    /// dead session node that arrives by replication still expires.
    fn grant_leases(&self, images: &[DatumImage]) {
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
    async fn install_images(&self, mut images: Vec<DatumImage>) {
        {
            let marks = self.expired.lock();
            if !marks.is_empty() {
                for image in &mut images {
                    image.publishers.retain(|p| !marks.contains_key(&p.source));
                }
            }
        }
        self.grant_leases(&images);
        self.store.install(images).await;
    }

    /// One anti-entropy round: pull, then hand over.
    async fn round(self: &Arc<Self>) {
        let view = self.membership.view();
        let me = self.config.advertise_addr.as_str();
        if view.epoch() == 0 {
            return;
        }
        let required: Vec<String> = view.all_nodes().into_iter().filter(|n| n != me).collect();
        let mut peers = required.clone();
        if let Some((prev, _)) = &view.previous {
            for m in prev.members.iter().chain(prev.leaving.iter()) {
                if m != me && !peers.contains(m) {
                    peers.push(m.clone());
                }
            }
        }
        // A node still obtaining what it owns pulls every difference at once.
        let steady = self.synced_under(view.epoch());
        let pulls = peers.iter().map(|p| {
            let node = self.clone();
            let view = view.clone();
            let p = p.clone();
            async move {
                let r = node.pull_from(&p, &view, steady).await;
                if let Err(e) = &r {
                    tracing::debug!(peer = %p, error = %e, "anti-entropy pull failed");
                }
                (p, r.is_ok())
            }
        });
        let results = futures::future::join_all(pulls).await;
        let now = Instant::now();
        let all_ok = {
            let mut failing = self.failing_peers.lock();
            for (p, ok) in &results {
                if *ok {
                    failing.remove(p);
                } else {
                    failing.entry(p.clone()).or_insert(now);
                }
            }
            failing.retain(|p, _| peers.contains(p));
            let dead_after = self.config.peer_dead_after;
            required.iter().all(|r| {
                results.iter().any(|(p, ok)| p == r && *ok)
                    || failing
                        .get(r)
                        .is_some_and(|since| now.duration_since(*since) >= dead_after)
            })
        };
        let member = view.doc.members.iter().any(|m| m == me);
        if all_ok && member {
            // Only the epoch this round ran under: a newer one adopted meanwhile stays
            // unsynced until its own round.
            let _ = self.synced_epoch.fetch_max(view.epoch(), Ordering::Relaxed);
        }
        let handed = self.hand_over(&view).await;
        if self.membership.epoch() == view.epoch() {
            self.handover_complete
                .store(!member && handed, Ordering::Relaxed);
        }
    }

    /// Fetches from `peer` the datums this node owns where the peer is ahead.
    async fn pull_from(
        &self,
        peer: &str,
        view: &ClusterView,
        steady: bool,
    ) -> Result<(), CallError> {
        let body = DigestRequest {
            for_node: self.config.advertise_addr.clone(),
            membership: Some(view.doc.clone()),
        };
        let resp: DigestResponse =
            call(&self.http, self.token(), peer, protocol::DIGEST, &body).await?;
        self.gossip(Some(resp.membership));
        let differing: Vec<(DataInfoId, Option<u64>)> = resp
            .entries
            .into_iter()
            .filter(|e| {
                let (version, hash) = self
                    .store
                    .with_datum(&e.id, |d| (d.version, live_hash(d)))
                    .unwrap_or((0, 0));
                // Whatever differs, whichever version is newer: a write that reached this
                // node before it pulled (a session re-publishing its own publishers) gives
                // it a newer version but not the other sessions' publishers.
                e.version > version || e.hash != hash
            })
            .map(|e| (e.id, e.age_ms))
            .collect();
        let wanted = {
            let mut deferred = self.deferred.lock();
            // Counts of this peer's datums that no longer differ are dropped.
            let before: HashMap<DataInfoId, u32> = deferred
                .extract_if(|(p, _), _| p == peer)
                .map(|((_, id), n)| (id, n))
                .collect();
            let mut wanted = Vec::with_capacity(differing.len());
            for (id, age_ms) in differing {
                let rounds = before.get(&id).copied().unwrap_or(0);
                if defer_pull(steady, age_ms, rounds) {
                    deferred.insert((peer.to_owned(), id), rounds + 1);
                } else {
                    wanted.push(id);
                }
            }
            wanted
        };
        for chunk in wanted.chunks(IMAGES_PER_CALL) {
            let body = ImagesRequest {
                ids: chunk.to_vec(),
            };
            let resp: ImagesResponse =
                call(&self.http, self.token(), peer, protocol::IMAGES, &body).await?;
            self.install_images(resp.images).await;
        }
        Ok(())
    }

    /// Pushes datums this node does not own to their owners and drops those every owner
    /// accepted. Returns true when nothing is left to hand over.
    async fn hand_over(self: &Arc<Self>, view: &ClusterView) -> bool {
        let me = self.config.advertise_addr.as_str();
        // A round that started under an older epoch must not hand over (and drop) by its
        // stale ring: what it would drop may be exactly what this node owns now.
        if view.ring.is_empty() || self.membership.epoch() != view.epoch() {
            return false;
        }
        let mut per_owner: HashMap<String, Vec<DataInfoId>> = HashMap::new();
        let mut versions: HashMap<DataInfoId, u64> = HashMap::new();
        self.store.for_each_datum(|id, d| {
            let owners = view.owners(id);
            if owners.contains(&me) {
                return;
            }
            versions.insert(id.clone(), d.version);
            for o in owners {
                per_owner.entry(o.to_owned()).or_default().push(id.clone());
            }
        });
        if versions.is_empty() {
            return true;
        }
        let failed: HashSet<DataInfoId> = self
            .push_images(per_owner, &view.doc)
            .await
            .into_values()
            .flatten()
            .collect();
        // Drop what every owner accepted, unless a write arrived meanwhile (it is handed
        // over next round) or a newer membership was adopted meanwhile (checked under the
        // store's lock: a peer's install carrying a newer epoch is adopted before it is
        // applied, so an image installed for the new ring is never dropped by the old one).
        let epoch = view.epoch();
        let membership = &self.membership;
        self.store.retain(|id, d| {
            if membership.epoch() != epoch {
                return true;
            }
            match versions.get(id) {
                Some(v) => failed.contains(id) || d.version != *v,
                None => true,
            }
        });
        if !failed.is_empty() {
            tracing::info!(
                pending = failed.len(),
                "handover incomplete; retrying next round"
            );
        }
        failed.is_empty()
    }
}

impl DataNode {
    /// Installs the current image of each listed datum on its owner. Returns, per owner,
    /// the datums it did not accept.
    async fn push_images(
        self: &Arc<Self>,
        per_owner: HashMap<String, Vec<DataInfoId>>,
        doc: &MembershipDoc,
    ) -> HashMap<String, Vec<DataInfoId>> {
        let calls = per_owner.into_iter().map(|(owner, ids)| {
            let node = self.clone();
            let doc = doc.clone();
            async move {
                let mut failed: Vec<DataInfoId> = Vec::new();
                for chunk in ids.chunks(IMAGES_PER_CALL) {
                    let images: Vec<DatumImage> =
                        chunk.iter().filter_map(|id| node.store.image(id)).collect();
                    let body = InstallRequest {
                        images,
                        membership: Some(doc.clone()),
                    };
                    if let Err(e) = call::<_, EpochResponse>(
                        &node.http,
                        node.token(),
                        &owner,
                        protocol::INSTALL,
                        &body,
                    )
                    .await
                    {
                        tracing::debug!(%owner, error = %e, "push of datums failed");
                        failed.extend(chunk.iter().cloned());
                    }
                }
                (owner, failed)
            }
        });
        futures::future::join_all(calls)
            .await
            .into_iter()
            .filter(|(_, failed)| !failed.is_empty())
            .collect()
    }

    /// Graceful stop: refuses session writes from now on (they fail over to the next
    /// owner), waits for the writes already accepted, then pushes every datum held here to
    /// its other owners under the current membership, retrying until each accepted or
    /// `within` runs out. True when everything was accepted.
    pub async fn drain(self: &Arc<Self>, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        self.draining.store(true, Ordering::SeqCst);
        while self.applying.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let me = self.config.advertise_addr.clone();
        let mut pending: Option<HashMap<String, Vec<DataInfoId>>> = None;
        loop {
            let view = self.membership.view();
            let per_owner = match pending.take() {
                Some(p) => p,
                None => {
                    let mut per_owner: HashMap<String, Vec<DataInfoId>> = HashMap::new();
                    self.store.for_each_datum(|id, _| {
                        for o in view.owners(id) {
                            if o != me {
                                per_owner.entry(o.to_owned()).or_default().push(id.clone());
                            }
                        }
                    });
                    per_owner
                }
            };
            let datums: usize = per_owner.values().map(Vec::len).sum();
            let failed = self.push_images(per_owner, &view.doc).await;
            if failed.is_empty() {
                tracing::info!(pushes = datums, "drained: every datum is with its other owners");
                return true;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    owners = failed.len(),
                    "drain deadline: some owners did not accept their datums"
                );
                return false;
            }
            pending = Some(failed);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Counts a session write as in progress while it lives.
struct Applying<'a>(&'a AtomicUsize);

impl Drop for Applying<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Hash of a datum's live publishers (what replicas compare).
/// Groups ops into one delta image per datum: the publishers the puts carried and the
/// tombstones the removes left, at the datum's current version (`version_of`). Installing
/// the image (tombstones, then puts, each by the merge rules) on a replica has the same
/// effect as applying the ops in order there.
pub fn delta_images(
    ops: Vec<PublisherOp>,
    version_of: impl Fn(&str) -> u64,
) -> Vec<DatumImage> {
    let mut by_id: HashMap<DataInfoId, DatumImage> = HashMap::new();
    for op in ops {
        let image = by_id
            .entry(op.data_info_id().clone())
            .or_insert_with_key(|id| DatumImage {
                data_info_id: id.clone(),
                version: 0,
                publishers: Vec::new(),
                tombstones: Vec::new(),
            });
        match op {
            PublisherOp::Put { publisher } => image.publishers.push(publisher),
            PublisherOp::Remove {
                register_id,
                version,
                register_timestamp,
                ..
            } => image.tombstones.push(TombstoneImage {
                register_id,
                version,
                register_timestamp,
            }),
        }
    }
    let mut images: Vec<DatumImage> = by_id.into_values().collect();
    for image in &mut images {
        image.version = version_of(&image.data_info_id);
    }
    images
}

pub fn live_hash(d: &super::store::Datum) -> u64 {
    write_set_hash(
        d.publishers
            .live()
            .map(|p| (&*p.register_id, p.version, p.register_timestamp)),
    )
}

async fn apply(
    State(node): State<Arc<DataNode>>,
    Json(req): Json<ApplyRequest>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    node.applying.fetch_add(1, Ordering::SeqCst);
    let _applying = Applying(&node.applying);
    if node.draining.load(Ordering::SeqCst) {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"error": {"code": "unavailable", "message": "data node is shutting down"}})),
        )
            .into_response();
    }
    node.gossip(req.membership);
    node.renew(&req.source);
    let started = Instant::now();
    let n = req.ops.len();
    node.store.apply(req.ops.clone()).await;
    // After the apply, so the version the delta images carry includes these ops. Never
    // waited for: a backup that hangs (each push then takes the request timeout) must not
    // hold up the session's write here; what is dropped, anti-entropy repairs.
    if let Err(mpsc::error::TrySendError::Full(_)) = node.replicate.try_send(req.ops) {
        tracing::debug!("replication queue full; anti-entropy will repair");
    }
    tracing::debug!(ops = n, took = ?started.elapsed(), "applied");
    Json(EpochResponse {
        epoch: node.membership.epoch(),
    })
    .into_response()
}

async fn fetch(
    State(node): State<Arc<DataNode>>,
    Json(req): Json<FetchRequest>,
) -> Json<FetchResponse> {
    let asked_under = req.membership.as_ref().map_or(0, |d| d.epoch);
    node.gossip(req.membership);
    let view = node.membership.view();
    let synced = node.synced_under(view.epoch());
    let datums = req.ids.iter().map(|id| node.store.fetch(id)).collect();
    Json(FetchResponse {
        epoch: view.epoch(),
        synced,
        datums,
        // A reader on an older epoch adopts this one and asks its owners instead.
        membership: (view.epoch() > asked_under).then(|| view.doc.clone()),
    })
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
    Json(req): Json<ChangesRequest>,
) -> Json<ChangesResponse> {
    node.gossip(req.membership);
    node.renew(&req.source);
    let mut seq_rx = node.log_seq.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms.min(30_000));
    let epoch = || node.membership.epoch();
    loop {
        let answer = {
            let log = node.log.lock();
            let last = if log.entries.is_empty() {
                log.first_seq - 1
            } else {
                log.last_seq()
            };
            match req.after {
                None => Some((last, Vec::new(), false)),
                Some(after) => {
                    let other_run = req.incarnation.is_some_and(|i| i != node.incarnation);
                    if other_run || after > last || after + 1 < log.first_seq {
                        None
                    } else if after == last {
                        Some((last, Vec::new(), false))
                    } else {
                        let start = (after + 1 - log.first_seq) as usize;
                        let notices: Vec<ChangeNotice> = log
                            .entries
                            .iter()
                            .skip(start)
                            .take(MAX_NOTICES_PER_POLL)
                            .cloned()
                            .collect();
                        Some((after + notices.len() as u64, notices, false))
                    }
                }
            }
        };
        match answer {
            None => {
                // Reset: the current version of everything, after the log's current end.
                let last = {
                    let log = node.log.lock();
                    if log.entries.is_empty() {
                        log.first_seq - 1
                    } else {
                        log.last_seq()
                    }
                };
                let mut notices = Vec::new();
                node.store.for_each_datum(|id, d| {
                    if d.version > 0 {
                        notices.push(ChangeNotice {
                            data_info_id: id.clone(),
                            version: d.version,
                        });
                    }
                });
                return Json(ChangesResponse {
                    seq: last,
                    incarnation: node.incarnation,
                    notices,
                    reset: true,
                    epoch: epoch(),
                });
            }
            Some((seq, notices, reset)) => {
                let waiting = notices.is_empty() && req.after.is_some();
                if !waiting || tokio::time::Instant::now() >= deadline {
                    return Json(ChangesResponse {
                        seq,
                        incarnation: node.incarnation,
                        notices,
                        reset,
                        epoch: epoch(),
                    });
                }
            }
        }
        if tokio::time::timeout_at(deadline, seq_rx.changed())
            .await
            .is_err()
        {
            // Deadline: loop once more to answer with whatever is there.
            continue;
        }
        node.renew(&req.source);
    }
}

async fn reconcile(
    State(node): State<Arc<DataNode>>,
    Json(req): Json<ReconcileRequest>,
) -> Json<ReconcileResponse> {
    node.gossip(req.membership);
    node.renew(&req.source);
    let source = req.source.clone();
    let have_of = |d: &super::store::Datum| -> Vec<WriteKey> {
        d.publishers
            .live()
            .filter(|p| p.source == source)
            .map(|p| WriteKey {
                register_id: p.register_id.clone(),
                version: p.version,
                register_timestamp: p.register_timestamp,
            })
            .collect()
    };
    let mut mismatched = Vec::new();
    let mut listed: HashSet<DataInfoId> = HashSet::new();
    for d in req.datums {
        let have = node.store.with_datum(&d.id, &have_of).unwrap_or_default();
        let hash = write_set_hash(
            have.iter()
                .map(|w| (&*w.register_id, w.version, w.register_timestamp)),
        );
        if hash != d.hash {
            mismatched.push(ReconcileMismatch {
                id: d.id.clone(),
                have,
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
                });
            }
        });
    }
    Json(ReconcileResponse {
        epoch: node.membership.epoch(),
        mismatched,
    })
}

async fn digest(
    State(node): State<Arc<DataNode>>,
    Json(req): Json<DigestRequest>,
) -> Json<DigestResponse> {
    node.gossip(req.membership);
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
    Json(DigestResponse {
        membership: view.doc.clone(),
        entries,
    })
}

async fn images(
    State(node): State<Arc<DataNode>>,
    Json(req): Json<ImagesRequest>,
) -> Json<ImagesResponse> {
    Json(ImagesResponse {
        images: req
            .ids
            .iter()
            .filter_map(|id| node.store.image(id))
            .collect(),
    })
}

async fn install(
    State(node): State<Arc<DataNode>>,
    Json(req): Json<InstallRequest>,
) -> Json<EpochResponse> {
    node.gossip(req.membership);
    node.install_images(req.images).await;
    Json(EpochResponse {
        epoch: node.membership.epoch(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Publisher;

    const ID: &str = "svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP";

    fn publ(rid: &str, version: u64, ts: u64, data: &str) -> Arc<Publisher> {
        Arc::new(Publisher {
            register_id: rid.into(),
            data_info_id: ID.into(),
            zone: "z".into(),
            data: vec![data.to_string()].into(),
            version,
            register_timestamp: ts,
            client_id: None,
            session_id: "s".into(),
            source: "session-a".into(),
        })
    }

    fn put(p: Arc<Publisher>) -> PublisherOp {
        PublisherOp::Put { publisher: p }
    }

    fn remove(rid: &str, version: u64, ts: u64) -> PublisherOp {
        PublisherOp::Remove {
            data_info_id: ID.into(),
            register_id: rid.into(),
            version,
            register_timestamp: ts,
            source: "session-a".into(),
        }
    }

    fn live(store: &DatumStore) -> Vec<(String, u64, Vec<String>)> {
        let mut out: Vec<_> = store
            .fetch(ID)
            .publishers
            .iter()
            .map(|p| (p.register_id.to_string(), p.version, p.data.to_vec()))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn anti_entropy_defers_only_fresh_changes_in_steady_state_and_not_forever() {
        // Not synced yet (joining, restarted, new epoch): every difference is pulled.
        assert!(!defer_pull(false, Some(0), 0));
        // Synced: a change younger than the settle window is left to replication...
        assert!(defer_pull(true, Some(SETTLE_MS - 1), 0));
        assert!(defer_pull(true, Some(0), MAX_DEFERRALS - 1));
        // ... but not a settled one, nor one put off for too many rounds, nor one whose
        // age the peer did not say.
        assert!(!defer_pull(true, Some(SETTLE_MS), 0));
        assert!(!defer_pull(true, Some(0), MAX_DEFERRALS));
        assert!(!defer_pull(true, None, 0));
    }

    #[tokio::test]
    async fn a_delta_image_on_a_replica_has_the_effect_of_the_ops_on_the_primary() {
        let primary = DatumStore::new(StoreConfig::default());
        let replica = DatumStore::new(StoreConfig::default());
        let base = vec![put(publ("r1", 1, 10, "a")), put(publ("r2", 1, 11, "b"))];
        primary.apply(base.clone()).await;
        replica
            .install(delta_images(base, |id| primary.version(id)))
            .await;
        assert_eq!(live(&primary), live(&replica));

        // Replace r1, remove r2, add and remove r3 in the same batch, add r4.
        let batch = vec![
            put(publ("r1", 2, 12, "a2")),
            remove("r2", 1, 11),
            put(publ("r3", 1, 13, "c")),
            remove("r3", 1, 13),
            put(publ("r4", 1, 14, "d")),
        ];
        primary.apply(batch.clone()).await;
        let images = delta_images(batch, |id| primary.version(id));
        assert_eq!(images.len(), 1);
        // Only what the ops carried: r2's publisher is not resent.
        assert_eq!(images[0].publishers.len(), 3);
        assert_eq!(images[0].tombstones.len(), 2);
        assert_eq!(images[0].version, primary.version(ID));
        replica.install(images).await;
        assert_eq!(
            live(&replica),
            vec![
                ("r1".to_string(), 2, vec!["a2".to_string()]),
                ("r4".to_string(), 1, vec!["d".to_string()]),
            ]
        );
        assert_eq!(live(&primary), live(&replica));
        assert_eq!(replica.version(ID), primary.version(ID));
        // A late, older copy of r2 does not come back on the replica (the tombstone holds).
        replica
            .install(delta_images(vec![put(publ("r2", 1, 11, "b"))], |_| 0))
            .await;
        assert_eq!(live(&primary), live(&replica));
    }
}
