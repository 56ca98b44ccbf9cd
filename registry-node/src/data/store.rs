//! The datum store and its change-event queue: datums sharded by dataInfoId, each shard a task that merges queued ops, applies them and fires the notifiers.
//!
//! This is SOFARegistry's `DataChangeEventQueue` + `DataChangeHandler`: every write goes
//! into the queue of the shard that owns its dataInfoId (hash of the dataInfoId modulo the
//! shard count). A shard task takes everything that queued up while it was busy, applies it
//! under one write lock, bumps each touched datum's version **once** if the batch really
//! changed it (several writes to one dataInfoId while waiting merge into one change), then
//! sends one batched `Vec<ChangeNotice>` to every watcher and finally resolves the callers'
//! acknowledgements, so that a caller's `apply().await` is followed by a fetch that sees it.
//!
//! Reads (`fetch`, `services`, counts) take a shard's read lock and never wait for the queue.
//!
//! ## Datum versions
//! A datum's version is a hybrid clock: `max(previous + 1, now_millis * 1000)`. It strictly
//! increases on every real change and does not move on a no-op. Being tied to wall time, a
//! node that becomes the owner of a datum it knows nothing (or little) about — after a
//! failover or a ring change — still produces versions above those subscribers have already
//! been pushed by the previous owner, so their per-subscriber "never go backwards" check
//! does not swallow the new owner's state. The ×1000 leaves room for 1000 changes per
//! millisecond before the counter runs ahead of the clock, and `now_millis * 1000` stays
//! below 2^53 until the year 2255, so JavaScript/JSON clients read it exactly.

use super::merge::{PublisherSet, Slot, Tombstone};
use crate::model::{
    now_millis, ChangeNotice, DataInfoId, DatumSnapshot, PublisherOp, ServiceSummary, WriteOrder,
};
use parking_lot::RwLock;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Next datum version after `prev` at wall time `now_ms` (see the module docs).
pub fn next_version(prev: u64, now_ms: u64) -> u64 {
    prev.saturating_add(1).max(now_ms.saturating_mul(1000))
}

/// The shard of a dataInfoId. xxh3-64 so that it is stable across processes (not that it
/// needs to be: shards are local) and cheap.
pub fn shard_of(data_info_id: &str, shards: usize) -> usize {
    (xxhash_rust::xxh3::xxh3_64(data_info_id.as_bytes()) % shards.max(1) as u64) as usize
}

/// Tuning of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Number of change-event queues (one task each).
    pub shards: usize,
    /// Pending jobs per shard before `apply` waits (backpressure).
    pub queue_capacity: usize,
    /// How long a tombstone (and an empty datum) is kept before compaction.
    pub tombstone_ttl: Duration,
    /// How often each shard compacts.
    pub compaction_interval: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            shards: 8,
            queue_capacity: 4096,
            tombstone_ttl: Duration::from_secs(60),
            compaction_interval: Duration::from_secs(5),
        }
    }
}

/// All publishers of one dataInfoId and the datum version.
#[derive(Debug, Default)]
pub struct Datum {
    pub version: u64,
    pub publishers: PublisherSet,
    /// Local milliseconds of the last real change; an empty datum is dropped a tombstone
    /// TTL after it.
    pub changed_at_ms: u64,
}

impl Datum {
    pub fn snapshot(&self, data_info_id: &DataInfoId) -> DatumSnapshot {
        let mut publishers: Vec<_> = self.publishers.live().cloned().collect();
        publishers.sort_unstable_by(|a, b| a.register_id.cmp(&b.register_id));
        DatumSnapshot {
            data_info_id: data_info_id.clone(),
            version: self.version,
            publishers,
        }
    }
}

/// A full copy of one datum as a replica or a new owner receives it: version and every
/// slot, tombstones included, so that removals survive the transfer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatumImage {
    pub data_info_id: DataInfoId,
    pub version: u64,
    pub publishers: Vec<Arc<crate::model::Publisher>>,
    #[serde(default)]
    pub tombstones: Vec<TombstoneImage>,
}

/// A tombstone in a [`DatumImage`]: the order of the removed write.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TombstoneImage {
    pub register_id: Arc<str>,
    pub version: u64,
    pub register_timestamp: u64,
    #[serde(default, skip_serializing_if = "crate::model::is_zero")]
    pub register_seq: u32,
    #[serde(default)]
    pub owner: u64,
}

impl TombstoneImage {
    pub fn order(&self) -> WriteOrder {
        WriteOrder {
            register_timestamp: self.register_timestamp,
            register_seq: self.register_seq,
            owner: self.owner,
            version: self.version,
        }
    }
}

/// Work for a shard task.
enum Job {
    Ops {
        ops: Vec<PublisherOp>,
        done: Option<oneshot::Sender<()>>,
    },
    RemoveSource {
        source: Arc<str>,
        done: oneshot::Sender<usize>,
    },
    /// Merge full copies of datums (replication, migration). The datum version becomes at
    /// least the image's, and moves above it if the merge changed anything here that the
    /// image did not have.
    Install {
        images: Vec<DatumImage>,
        done: oneshot::Sender<()>,
    },
}

struct Shard {
    datums: RwLock<HashMap<DataInfoId, Datum>>,
    tx: mpsc::Sender<Job>,
    publishers: AtomicI64,
    nonempty_datums: AtomicI64,
}

/// Receivers of batched change notices.
pub(crate) type Watchers = RwLock<Vec<mpsc::Sender<Vec<ChangeNotice>>>>;

/// The sharded datum store. Construct inside a tokio runtime (it spawns one task per shard).
pub struct DatumStore {
    shards: Vec<Arc<Shard>>,
    watchers: Arc<Watchers>,
    local_watchers: Arc<Watchers>,
}

impl DatumStore {
    pub fn new(config: StoreConfig) -> DatumStore {
        let watchers: Arc<Watchers> = Arc::default();
        let local_watchers: Arc<Watchers> = Arc::default();
        let n = config.shards.max(1);
        let mut shards = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
            let shard = Arc::new(Shard {
                datums: RwLock::new(HashMap::new()),
                tx,
                publishers: AtomicI64::new(0),
                nonempty_datums: AtomicI64::new(0),
            });
            tokio::spawn(run_shard(
                Arc::downgrade(&shard),
                rx,
                watchers.clone(),
                local_watchers.clone(),
                config.clone(),
            ));
            shards.push(shard);
        }
        DatumStore {
            shards,
            watchers,
            local_watchers,
        }
    }

    fn shard(&self, data_info_id: &str) -> &Arc<Shard> {
        &self.shards[shard_of(data_info_id, self.shards.len())]
    }

    /// Queues `ops` and returns once all of them are applied (and notified).
    pub async fn apply(&self, ops: Vec<PublisherOp>) {
        if ops.is_empty() {
            return;
        }
        let n = self.shards.len();
        let mut per_shard: Vec<Vec<PublisherOp>> = (0..n).map(|_| Vec::new()).collect();
        for op in ops {
            per_shard[shard_of(op.data_info_id(), n)].push(op);
        }
        let mut waits = Vec::new();
        for (i, ops) in per_shard.into_iter().enumerate() {
            if ops.is_empty() {
                continue;
            }
            let (done, wait) = oneshot::channel();
            if self.shards[i]
                .tx
                .send(Job::Ops {
                    ops,
                    done: Some(done),
                })
                .await
                .is_ok()
            {
                waits.push(wait);
            }
        }
        for w in waits {
            let _ = w.await;
        }
    }

    /// Drops every publisher registered through `source` (a session node) without leaving
    /// tombstones; returns how many were dropped.
    pub async fn remove_source(&self, source: &str) -> usize {
        let source: Arc<str> = source.into();
        let mut waits = Vec::new();
        for shard in &self.shards {
            let (done, wait) = oneshot::channel();
            if shard
                .tx
                .send(Job::RemoveSource {
                    source: source.clone(),
                    done,
                })
                .await
                .is_ok()
            {
                waits.push(wait);
            }
        }
        let mut total = 0;
        for w in waits {
            total += w.await.unwrap_or(0);
        }
        total
    }

    /// Merges full datum copies (from the primary, or from a previous owner).
    pub async fn install(&self, images: Vec<DatumImage>) {
        let n = self.shards.len();
        let mut per_shard: Vec<Vec<DatumImage>> = (0..n).map(|_| Vec::new()).collect();
        for image in images {
            per_shard[shard_of(&image.data_info_id, n)].push(image);
        }
        let mut waits = Vec::new();
        for (i, images) in per_shard.into_iter().enumerate() {
            if images.is_empty() {
                continue;
            }
            let (done, wait) = oneshot::channel();
            if self.shards[i]
                .tx
                .send(Job::Install { images, done })
                .await
                .is_ok()
            {
                waits.push(wait);
            }
        }
        for w in waits {
            let _ = w.await;
        }
    }

    /// The live publishers of a dataInfoId; version 0 and none when unknown.
    pub fn fetch(&self, data_info_id: &str) -> DatumSnapshot {
        let shard = self.shard(data_info_id);
        let datums = shard.datums.read();
        match datums.get_key_value(data_info_id) {
            Some((id, datum)) => datum.snapshot(id),
            None => DatumSnapshot {
                data_info_id: data_info_id.into(),
                version: 0,
                publishers: Vec::new(),
            },
        }
    }

    /// Full copy of a datum (live and tombstones); `None` when unknown here.
    pub fn image(&self, data_info_id: &str) -> Option<DatumImage> {
        let shard = self.shard(data_info_id);
        let datums = shard.datums.read();
        let (id, datum) = datums.get_key_value(data_info_id)?;
        Some(image_of(id, datum))
    }

    /// Whether `op` is a write that would take a live registerId from the principal that
    /// holds it here (`Publisher::takeover_refused`), and is newer, so it would win.
    pub fn takeover_refused(&self, op: &PublisherOp) -> bool {
        let PublisherOp::Put { publisher } = op else {
            return false;
        };
        self.with_datum(&publisher.data_info_id, |d| {
            matches!(
                d.publishers.get(&publisher.register_id),
                Some(Slot::Live(current))
                    if current.takeover_refused(publisher) && publisher.order() > current.order()
            )
        })
        .unwrap_or(false)
    }

    /// Runs `f` on a datum under its shard's read lock (`None` when unknown).
    pub fn with_datum<R>(&self, data_info_id: &str, f: impl FnOnce(&Datum) -> R) -> Option<R> {
        let shard = self.shard(data_info_id);
        let datums = shard.datums.read();
        datums.get(data_info_id).map(f)
    }

    /// The current version of a datum (0 when unknown).
    pub fn version(&self, data_info_id: &str) -> u64 {
        self.shard(data_info_id)
            .datums
            .read()
            .get(data_info_id)
            .map(|d| d.version)
            .unwrap_or(0)
    }

    /// Visits every datum (id, version, live count) shard by shard; for digests and scans.
    /// The visitor runs under a shard's read lock: keep it short.
    pub fn for_each_datum(&self, mut f: impl FnMut(&DataInfoId, &Datum)) {
        for shard in &self.shards {
            let datums = shard.datums.read();
            for (id, d) in datums.iter() {
                f(id, d);
            }
        }
    }

    /// Services (datums with at least one live publisher) whose dataInfoId starts with
    /// `prefix`, sorted, at most `limit`.
    pub fn services(&self, prefix: &str, limit: usize) -> Vec<ServiceSummary> {
        let mut out = Vec::new();
        self.for_each_datum(|id, d| {
            let count = d.publishers.live_count();
            if count > 0 && id.starts_with(prefix) {
                out.push(ServiceSummary {
                    data_info_id: id.clone(),
                    publisher_count: count,
                });
            }
        });
        out.sort_unstable_by(|a, b| a.data_info_id.cmp(&b.data_info_id));
        out.truncate(limit);
        out
    }

    /// Datums with at least one live publisher.
    pub fn datum_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.nonempty_datums.load(Ordering::Relaxed))
            .sum::<i64>()
            .max(0) as usize
    }

    /// Live publishers over all datums.
    pub fn publisher_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.publishers.load(Ordering::Relaxed))
            .sum::<i64>()
            .max(0) as usize
    }

    /// Registers a receiver of batched change notices.
    pub fn watch_changes(&self, tx: mpsc::Sender<Vec<ChangeNotice>>) {
        self.watchers.write().push(tx);
    }

    /// Registers a receiver of the changes made by ops and lease expiry only (not by
    /// installed images): what a data node replicates to the other owners.
    pub fn watch_local_changes(&self, tx: mpsc::Sender<Vec<ChangeNotice>>) {
        self.local_watchers.write().push(tx);
    }

    /// Drops datums for which `keep` is false (a node that no longer owns them, after
    /// handing them over). No notices: the data did not change, only its location.
    pub fn retain(&self, mut keep: impl FnMut(&DataInfoId, &Datum) -> bool) {
        for shard in &self.shards {
            let mut datums = shard.datums.write();
            datums.retain(|id, d| {
                let k = keep(id, d);
                if !k {
                    let live = d.publishers.live_count() as i64;
                    shard.publishers.fetch_sub(live, Ordering::Relaxed);
                    if live > 0 {
                        shard.nonempty_datums.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                k
            });
        }
    }
}

pub(crate) fn image_of(id: &DataInfoId, datum: &Datum) -> DatumImage {
    let mut publishers = Vec::with_capacity(datum.publishers.live_count());
    let mut tombstones = Vec::new();
    for (rid, slot) in datum.publishers.slots() {
        match slot {
            Slot::Live(p) => publishers.push(p.clone()),
            Slot::Removed(t) => tombstones.push(TombstoneImage {
                register_id: rid.clone(),
                version: t.order.version,
                register_timestamp: t.order.register_timestamp,
                register_seq: t.order.register_seq,
                owner: t.order.owner,
            }),
        }
    }
    publishers.sort_unstable_by(|a, b| a.register_id.cmp(&b.register_id));
    DatumImage {
        data_info_id: id.clone(),
        version: datum.version,
        publishers,
        tombstones,
    }
}

/// Counts kept per shard for metrics, adjusted as ops apply.
struct CountDelta {
    publishers: i64,
    datums: i64,
}

impl CountDelta {
    fn track(&mut self, before: usize, after: usize) {
        self.publishers += after as i64 - before as i64;
        match (before > 0, after > 0) {
            (false, true) => self.datums += 1,
            (true, false) => self.datums -= 1,
            _ => {}
        }
    }
}

const MAX_JOBS_PER_ROUND: usize = 512;

async fn run_shard(
    shard: std::sync::Weak<Shard>,
    mut rx: mpsc::Receiver<Job>,
    watchers: Arc<Watchers>,
    local_watchers: Arc<Watchers>,
    config: StoreConfig,
) {
    let mut tick = tokio::time::interval(config.compaction_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            job = rx.recv() => {
                let Some(job) = job else { return };
                let mut jobs = vec![job];
                while jobs.len() < MAX_JOBS_PER_ROUND {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                let Some(shard) = shard.upgrade() else { return };
                process(&shard, jobs, &watchers, &local_watchers);
            }
            _ = tick.tick() => {
                let Some(shard) = shard.upgrade() else { return };
                compact(&shard, &config);
            }
        }
    }
}

fn process(shard: &Shard, jobs: Vec<Job>, watchers: &Watchers, local_watchers: &Watchers) {
    let now = now_millis();
    let mut changed_local: HashSet<DataInfoId> = HashSet::new();
    let mut changed_install: HashSet<DataInfoId> = HashSet::new();
    let mut delta = CountDelta {
        publishers: 0,
        datums: 0,
    };
    let mut acks_ops = Vec::new();
    let mut acks_source = Vec::new();
    let mut acks_install = Vec::new();
    let mut notices = Vec::new();
    let mut local_notices = Vec::new();
    {
        let mut datums = shard.datums.write();
        // Versions that installed images demand, applied after the ops of this round.
        let mut version_floor: HashMap<DataInfoId, u64> = HashMap::new();
        for job in jobs {
            match job {
                Job::Ops { ops, done } => {
                    for op in ops {
                        let id = op.data_info_id().clone();
                        let datum = datums.entry(id.clone()).or_default();
                        let before = datum.publishers.live_count();
                        let real = match op {
                            PublisherOp::Put { publisher } => datum.publishers.put(publisher),
                            PublisherOp::Remove {
                                register_id,
                                version,
                                register_timestamp,
                                register_seq,
                                owner,
                                ..
                            } => datum.publishers.remove(
                                &register_id,
                                WriteOrder {
                                    register_timestamp,
                                    register_seq,
                                    owner,
                                    version,
                                },
                                now,
                            ),
                        };
                        delta.track(before, datum.publishers.live_count());
                        if real {
                            changed_local.insert(id);
                        } else if datum.publishers.is_empty() && datum.version == 0 {
                            // A no-op on an unknown datum must not leave an empty entry.
                            datums.remove(&id);
                        }
                    }
                    acks_ops.extend(done);
                }
                Job::RemoveSource { source, done } => {
                    let mut dropped = 0;
                    for (id, datum) in datums.iter_mut() {
                        let before = datum.publishers.live_count();
                        let n = datum.publishers.remove_source(&source);
                        if n > 0 {
                            dropped += n;
                            delta.track(before, datum.publishers.live_count());
                            changed_local.insert(id.clone());
                        }
                    }
                    acks_source.push((done, dropped));
                }
                Job::Install { images, done } => {
                    for image in images {
                        let id = image.data_info_id.clone();
                        let datum = datums.entry(id.clone()).or_default();
                        let before = datum.publishers.live_count();
                        let mut real = false;
                        for t in &image.tombstones {
                            real |= datum.publishers.install_tombstone(
                                &t.register_id,
                                Tombstone {
                                    order: t.order(),
                                    removed_at_ms: now,
                                },
                            );
                        }
                        for p in image.publishers {
                            real |= datum.publishers.put(p);
                        }
                        delta.track(before, datum.publishers.live_count());
                        if image.version > datum.version {
                            let floor = version_floor.entry(id.clone()).or_default();
                            *floor = (*floor).max(image.version);
                        }
                        if real {
                            changed_install.insert(id);
                        } else if datum.publishers.is_empty() && datum.version == 0 {
                            datums.remove(&id);
                        }
                    }
                    acks_install.push(done);
                }
            }
        }
        // Versions: a local change (ops, lease expiry) moves past everything known,
        // including a version an image demands; an image ahead of us is adopted as is, so
        // that replicas applying the primary's image agree with it on the version; an image
        // that changed something while behind us moves us forward.
        let mut ids: HashSet<DataInfoId> = changed_local.clone();
        ids.extend(changed_install.iter().cloned());
        ids.extend(version_floor.keys().cloned());
        for id in ids {
            let Some(datum) = datums.get_mut(&id) else {
                continue;
            };
            let floor = version_floor.get(&id).copied().unwrap_or(0);
            let version = if changed_local.contains(&id) {
                next_version(datum.version.max(floor), now)
            } else if floor > datum.version {
                floor
            } else if changed_install.contains(&id) {
                next_version(datum.version, now)
            } else {
                continue;
            };
            datum.version = version;
            datum.changed_at_ms = now;
            if changed_local.contains(&id) {
                local_notices.push(ChangeNotice {
                    data_info_id: id.clone(),
                    version,
                });
            }
            notices.push(ChangeNotice {
                data_info_id: id,
                version,
            });
        }
    }
    shard
        .publishers
        .fetch_add(delta.publishers, Ordering::Relaxed);
    shard
        .nonempty_datums
        .fetch_add(delta.datums, Ordering::Relaxed);
    if !notices.is_empty() {
        notify(watchers, notices);
    }
    if !local_notices.is_empty() {
        notify(local_watchers, local_notices);
    }
    for done in acks_ops {
        let _ = done.send(());
    }
    for (done, n) in acks_source {
        let _ = done.send(n);
    }
    for done in acks_install {
        let _ = done.send(());
    }
}

/// Sends one batch to every watcher. A full watcher gets it from a spawned task rather than
/// stalling the shard (a consumer that itself waits on `apply` would otherwise deadlock);
/// notices carry only (dataInfoId, version) and receivers re-read the datum, so a batch
/// arriving out of order is harmless.
pub(crate) fn notify(watchers: &Watchers, notices: Vec<ChangeNotice>) {
    let mut closed = false;
    {
        let list = watchers.read();
        for tx in list.iter() {
            match tx.try_send(notices.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(batch)) => {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(batch).await;
                    });
                }
                Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
            }
        }
    }
    if closed {
        watchers.write().retain(|tx| !tx.is_closed());
    }
}

fn compact(shard: &Shard, config: &StoreConfig) {
    let now = now_millis();
    let cutoff = now.saturating_sub(config.tombstone_ttl.as_millis() as u64);
    let mut datums = shard.datums.write();
    datums.retain(|_, d| {
        d.publishers.compact(cutoff);
        !(d.publishers.is_empty() && d.changed_at_ms <= cutoff)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Publisher;

    const ID: &str = "svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP";

    fn publ(id: &str, rid: &str, version: u64, data: &str, source: &str) -> Arc<Publisher> {
        Arc::new(Publisher {
            register_id: rid.into(),
            data_info_id: id.into(),
            zone: "z".into(),
            data: vec![data.to_string()].into(),
            version,
            register_timestamp: 100,
            register_seq: 0,
            client_id: None,
            session_id: "s".into(),
            source: source.into(),
            owner: 1,
            principal: None,
        })
    }

    fn put(p: Arc<Publisher>) -> PublisherOp {
        PublisherOp::Put { publisher: p }
    }

    #[test]
    fn hybrid_version_is_monotonic_and_tracks_the_clock() {
        assert_eq!(next_version(5, 0), 6);
        assert_eq!(next_version(0, 1_700_000_000_000), 1_700_000_000_000_000);
        let ahead = 1_700_000_000_000_500;
        assert_eq!(next_version(ahead, 1_700_000_000_000), ahead + 1);
        // Stays exact for JSON (below 2^53) for centuries.
        assert!(next_version(0, 4_000_000_000_000) < (1u64 << 53));
    }

    #[tokio::test]
    async fn version_moves_on_change_only() {
        let store = DatumStore::new(StoreConfig::default());
        assert_eq!(store.fetch(ID).version, 0);
        store.apply(vec![put(publ(ID, "r1", 1, "a", "n"))]).await;
        let v1 = store.fetch(ID).version;
        assert!(v1 > 0);
        store.apply(vec![put(publ(ID, "r1", 1, "a", "n"))]).await;
        assert_eq!(
            store.fetch(ID).version,
            v1,
            "no-op must not move the version"
        );
        store.apply(vec![put(publ(ID, "r1", 2, "b", "n"))]).await;
        let v2 = store.fetch(ID).version;
        assert!(v2 > v1);
        store
            .apply(vec![PublisherOp::Remove {
                data_info_id: ID.into(),
                register_id: "r1".into(),
                version: 2,
                register_timestamp: 100,
                register_seq: 0,
                source: "n".into(),
                owner: 1,
            }])
            .await;
        let snap = store.fetch(ID);
        assert!(snap.version > v2);
        assert!(snap.publishers.is_empty());
        assert_eq!(store.publisher_count(), 0);
        assert_eq!(store.datum_count(), 0);
    }

    #[tokio::test]
    async fn notifies_real_changes_batched_and_not_no_ops() {
        let store = DatumStore::new(StoreConfig::default());
        let (tx, mut rx) = mpsc::channel(16);
        store.watch_changes(tx);
        store
            .apply(vec![
                put(publ(ID, "r1", 1, "a", "n")),
                put(publ(ID, "r2", 1, "b", "n")),
            ])
            .await;
        let batch = rx.try_recv().expect("notice after apply resolves");
        assert_eq!(
            batch.len(),
            1,
            "two writes to one datum merge into one change"
        );
        assert_eq!(batch[0].version, store.fetch(ID).version);
        store.apply(vec![put(publ(ID, "r1", 1, "a", "n"))]).await;
        assert!(rx.try_recv().is_err(), "a no-op must not notify");
    }

    #[tokio::test]
    async fn remove_source_drops_that_session_nodes_publishers_everywhere() {
        let store = DatumStore::new(StoreConfig::default());
        let other = "other#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP";
        store
            .apply(vec![
                put(publ(ID, "r1", 1, "a", "node-a")),
                put(publ(ID, "r2", 1, "b", "node-b")),
                put(publ(other, "r3", 1, "c", "node-a")),
            ])
            .await;
        assert_eq!(store.publisher_count(), 3);
        assert_eq!(store.datum_count(), 2);
        assert_eq!(store.remove_source("node-a").await, 2);
        let snap = store.fetch(ID);
        assert_eq!(snap.publishers.len(), 1);
        assert_eq!(&*snap.publishers[0].register_id, "r2");
        assert!(store.fetch(other).publishers.is_empty());
        assert_eq!(store.publisher_count(), 1);
        assert_eq!(store.datum_count(), 1);
    }

    #[tokio::test]
    async fn services_lists_live_datums_by_prefix_sorted_and_limited() {
        let store = DatumStore::new(StoreConfig::default());
        let ids = [
            "b.svc#@#i#@#g",
            "a.svc#@#i#@#g",
            "a.other#@#i#@#g",
            "c#@#i#@#g",
        ];
        store
            .apply(
                ids.iter()
                    .enumerate()
                    .map(|(i, id)| put(publ(id, &format!("r{i}"), 1, "x", "n")))
                    .collect(),
            )
            .await;
        let all: Vec<_> = store
            .services("", 10)
            .into_iter()
            .map(|s| s.data_info_id.to_string())
            .collect();
        assert_eq!(
            all,
            [
                "a.other#@#i#@#g",
                "a.svc#@#i#@#g",
                "b.svc#@#i#@#g",
                "c#@#i#@#g"
            ]
        );
        let a: Vec<_> = store
            .services("a.", 1)
            .into_iter()
            .map(|s| s.data_info_id.to_string())
            .collect();
        assert_eq!(a, ["a.other#@#i#@#g"]);
    }

    #[tokio::test]
    async fn compaction_drops_tombstones_and_empty_datums_after_the_ttl() {
        let store = DatumStore::new(StoreConfig {
            tombstone_ttl: Duration::from_millis(50),
            compaction_interval: Duration::from_millis(20),
            ..StoreConfig::default()
        });
        store.apply(vec![put(publ(ID, "r1", 1, "a", "n"))]).await;
        store
            .apply(vec![PublisherOp::Remove {
                data_info_id: ID.into(),
                register_id: "r1".into(),
                version: 1,
                register_timestamp: 100,
                register_seq: 0,
                source: "n".into(),
                owner: 1,
            }])
            .await;
        // The tombstone still blocks the old write right after removal.
        store.apply(vec![put(publ(ID, "r1", 1, "a", "n"))]).await;
        assert!(store.fetch(ID).publishers.is_empty());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut present = false;
            store.for_each_datum(|id, _| present |= &**id == ID);
            if !present {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "datum never compacted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(store.fetch(ID).version, 0);
    }

    #[tokio::test]
    async fn install_adopts_the_primary_version_and_merges_slots() {
        let primary = DatumStore::new(StoreConfig::default());
        primary
            .apply(vec![
                put(publ(ID, "r1", 1, "a", "n")),
                put(publ(ID, "r2", 1, "b", "n")),
            ])
            .await;
        primary
            .apply(vec![PublisherOp::Remove {
                data_info_id: ID.into(),
                register_id: "r2".into(),
                version: 1,
                register_timestamp: 100,
                register_seq: 0,
                source: "n".into(),
                owner: 1,
            }])
            .await;
        let image = primary.image(ID).expect("image");
        assert_eq!(image.tombstones.len(), 1);
        let backup = DatumStore::new(StoreConfig::default());
        // The backup had seen r2 before its removal.
        backup.apply(vec![put(publ(ID, "r2", 1, "b", "n"))]).await;
        backup.install(vec![image.clone()]).await;
        let snap = backup.fetch(ID);
        // At least the primary's version: equal when the image is ahead of everything the
        // backup did, above it when both changed within the same millisecond.
        assert!(snap.version >= image.version);
        assert_eq!(snap.publishers, primary.fetch(ID).publishers);
        // A backup that did nothing itself adopts the primary's version exactly.
        let fresh = DatumStore::new(StoreConfig::default());
        fresh.install(vec![image.clone()]).await;
        assert_eq!(fresh.fetch(ID).version, image.version);
        // Installing the same image again is a no-op.
        let (tx, mut rx) = mpsc::channel(4);
        backup.watch_changes(tx);
        backup.install(vec![image]).await;
        assert!(rx.try_recv().is_err());
    }
}
