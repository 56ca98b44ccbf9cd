//! The data-node role: serves the datum store over the internal protocol (`dataplane::wire`), holds session leases, replicates to the other owners, runs anti-entropy and hands datums over on ring changes.
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
//!   Leases travel with anti-entropy digests (both ways), and each node keeps the newest
//!   renewal any data node heard: a session node cut off from this node alone keeps its
//!   publishers here.
//! - **Anti-entropy** (every interval, and at once on a membership change): pull from every
//!   peer the digest of the datums this node owns and fetch those where the peer is ahead
//!   (that is also how a new owner obtains its datums from the previous owners, and how a
//!   node restarted empty gets its data back from the backups). `synced` is true under an
//!   epoch once a round under that epoch got an answer from every member and leaving node
//!   that is alive; a peer that has not answered for `peer_dead_after` counts as dead and
//!   no longer holds it back (what it held is recovered from the other owners and from the
//!   sessions' reconciliation). A new epoch makes the node unsynced at once, until a round
//!   under it completes; so does a round that reached none of the node's peers (it may be
//!   the one cut off), until a round reaches them again. Once synced, a datum that changed on the peer within the last
//!   second is left to replication for up to four rounds (it is usually in flight), so
//!   that steady writes do not copy whole datums every round.
//! - **Handover**: datums this node holds but no longer owns are pushed to their owners and
//!   dropped once every owner accepted them. `handoverComplete` is true when this node is
//!   out of the ring and holds nothing left to hand over.
//! - **Drain** ([`DataNode::drain`], on SIGTERM): writes from sessions are refused (503, so
//!   they go to the next owner), writes already accepted finish, then every datum held here
//!   is pushed to its other owners until they all accepted it; then the node may exit.
//!
//! One file per duty: [`change_log`], [`replication`], [`leases`], [`anti_entropy`],
//! [`handover`] (with the drain), and [`handlers`] for the routes. This file holds the node
//! itself: its configuration, state and status.

mod anti_entropy;
mod change_log;
mod handlers;
mod handover;
mod leases;
mod replication;

pub use replication::delta_images;

use crate::data::store::{Datum, DatumStore, StoreConfig};
use crate::dataplane::wire::write_set_hash;
use crate::membership::{Membership, MembershipDoc, MembershipError};
use crate::model::{DataInfoId, PublisherOp};
use change_log::ChangeLog;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};

pub use registry_types::DataStatus;

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
    /// Batches of applied ops queued for replication; a full queue drops a batch (left to
    /// anti-entropy). 0: no replication pushes at all.
    pub replication_queue: usize,
    /// Mutual TLS towards the other data nodes (`--internal-tls-*`); plain HTTP by default.
    pub tls: crate::tls::PeerTls,
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
            replication_queue: 1024,
            tls: Default::default(),
        }
    }
}

/// A data node. See the module docs.
pub struct DataNode {
    config: DataNodeConfig,
    store: DatumStore,
    membership: Arc<Membership>,
    http: crate::dataplane::wire::PeerClient,
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
    /// The highest write stamp applied or installed here, reported to session nodes.
    clock: crate::clock::StampClock,
}

/// Datums per `images` or `install` call.
const IMAGES_PER_CALL: usize = 500;

impl DataNode {
    /// Creates the node and starts its background tasks (inside a tokio runtime).
    pub fn start(config: DataNodeConfig, membership: Arc<Membership>) -> Arc<DataNode> {
        let http = crate::dataplane::wire::client(config.request_timeout, &config.tls);
        let (log_seq, _) = watch::channel(0);
        let (replicate, replicate_rx) = mpsc::channel(config.replication_queue.max(1));
        let node = Arc::new(DataNode {
            store: DatumStore::new(config.store.clone()),
            log: Mutex::new(ChangeLog::new(config.change_log_capacity)),
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
            clock: crate::clock::StampClock::new(),
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

    /// Offers the membership a peer attached (gossip). A document that is not newer is
    /// ignored; a newer one that is malformed or not signed with the membership key is
    /// refused (the request fails with it: `400`, `403`) and changes nothing.
    fn gossip(&self, doc: Option<MembershipDoc>) -> Result<(), MembershipError> {
        match doc {
            Some(doc) if doc.epoch > self.membership.epoch() => {
                self.membership.offer(doc).map(drop).inspect_err(|e| {
                    tracing::warn!(error = %e, "refused a membership from a peer");
                })
            }
            _ => Ok(()),
        }
    }

    /// Keeps the reported clock above the stamps of the writes applied here.
    fn observe_ops(&self, ops: &[PublisherOp]) {
        for op in ops {
            if let PublisherOp::Put { publisher } = op {
                self.clock.observe(publisher.stamp());
            }
        }
    }
}

/// Hash of a datum's live publishers (what replicas compare).
pub fn live_hash(d: &Datum) -> u64 {
    write_set_hash(d.publishers.live().map(|p| (&*p.register_id, p.order())))
}
