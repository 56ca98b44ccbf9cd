//! The internal data-plane protocol between session nodes and data nodes, and between data nodes (`/internal/v1/data/*`, JSON over HTTP): the one definition both sides use, the routes, bodies and the client call.
//!
//! Every route is a `POST` with a JSON body and a JSON answer, batched, and carries the
//! sender's membership document where it has one so that a node that missed an epoch
//! adopts it at the next contact (gossip; with `--membership-key` only a signed document is
//! adopted, and a request carrying a newer one that is not is refused `403`). With
//! `--cluster-token`, every route requires `Authorization: Bearer <cluster token>`; the
//! client token never opens them (SECURITY.md). The receiving data node checks every op and
//! image (`data/validate.rs`) and refuses a request over [`MAX_REQUEST_BYTES`]; senders
//! keep their batches under [`BATCH_BYTES`].
//!
//! | route | from → to | body → answer |
//! |---|---|---|
//! | `apply` | session → owner | [`ApplyRequest`] → [`ApplyAnswer`]: ops merged and queued-applied before the answer, except the `refused` ones (a write that would take a registerId from the principal holding it); renews the source's lease; `503` while the node drains (the session writes to the next owner) |
//! | `fetch` | session → owner | [`FetchRequest`] → [`FetchResponse`]: snapshots, plus whether this node has finished syncing under its epoch, and its membership when newer than the request's (the reader adopts it and reads again) |
//! | `services` | session → every data node | [`ServicesRequest`] → [`ServicesResponse`] |
//! | `changes` | session → every data node | [`ChangesRequest`] → [`ChangesResponse`]: long poll of the node's change log (batched `(dataInfoId, version)` notices); renews the source's lease; a session that fell behind the log gets `reset` with the current version of every datum |
//! | `reconcile` | session → primary | [`ReconcileRequest`] → [`ReconcileResponse`]: per-datum digest of the session's own publishers; the answer lists the datums that differ with what the node holds of that session |
//! | `digest` | data → data | [`DigestRequest`] → [`DigestResponse`]: `(version, hash)` of every datum the answering node holds that `for` owns; both sides send their session leases (each node keeps the newest renewal it hears of) |
//! | `images` | data → data | [`ImagesRequest`] → [`ImagesResponse`]: full datums (tombstones included) |
//! | `install` | data → data | [`InstallRequest`] → [`EpochAnswer`]: merge full datums (replication push, handover) |
//!
//! Replication: the node that applied a change pushes the datum to the other owners
//! (`install`, asynchronously, batched). Anti-entropy: each node periodically pulls from
//! every peer the `digest` of the datums it owns, and fetches the `images` of those where
//! the peer is ahead; datums a node no longer owns are pushed (`install`) to their owners
//! and, once accepted by all, dropped (handover).

use crate::clock::Stamp;
use crate::data::store::DatumImage;
use crate::membership::MembershipDoc;
use crate::model::{
    ChangeNotice, DataInfoId, DatumSnapshot, PublisherOp, ServiceSummary, WriteOrder,
};
use crate::tls::PeerTls;
use registry_types::SessionLease;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub const APPLY: &str = "/internal/v1/data/apply";
pub const FETCH: &str = "/internal/v1/data/fetch";
pub const SERVICES: &str = "/internal/v1/data/services";
pub const CHANGES: &str = "/internal/v1/data/changes";
pub const RECONCILE: &str = "/internal/v1/data/reconcile";
pub const DIGEST: &str = "/internal/v1/data/digest";
pub const IMAGES: &str = "/internal/v1/data/images";
pub const INSTALL: &str = "/internal/v1/data/install";

/// The largest request body a data node accepts.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;
/// Senders close a batch once its estimated size reaches this (one entry may exceed it;
/// the public API bounds a publisher to 1 MiB, so a batch stays under
/// [`MAX_REQUEST_BYTES`]).
pub const BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Roughly what a publisher weighs as JSON: its data and names plus field overhead.
pub fn publisher_bytes(p: &crate::model::Publisher) -> usize {
    // Escaping can grow a string in JSON; `2 *` keeps the estimate on the safe side.
    256 + 2
        * (p.data.iter().map(|d| d.len() + 3).sum::<usize>()
            + p.data_info_id.len()
            + p.register_id.len()
            + p.zone.len()
            + p.source.len())
}

/// Roughly what an op weighs as JSON.
pub fn op_bytes(op: &PublisherOp) -> usize {
    match op {
        PublisherOp::Put { publisher } => publisher_bytes(publisher),
        PublisherOp::Remove {
            data_info_id,
            register_id,
            ..
        } => 256 + 2 * (data_info_id.len() + register_id.len()),
    }
}

/// Roughly what a datum image weighs as JSON.
pub fn image_bytes(image: &DatumImage) -> usize {
    256 + 2 * image.data_info_id.len()
        + image
            .publishers
            .iter()
            .map(|p| publisher_bytes(p))
            .sum::<usize>()
        + image
            .tombstones
            .iter()
            .map(|t| 128 + 2 * t.register_id.len())
            .sum::<usize>()
}

/// Splits `items` into consecutive batches of at most `max_count` items and, past the
/// first item of each, at most `max_bytes` by `bytes`.
pub fn batches<T>(
    items: Vec<T>,
    max_count: usize,
    max_bytes: usize,
    bytes: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut size = 0;
    for item in items {
        let w = bytes(&item);
        match out.last_mut() {
            Some(batch) if batch.len() < max_count.max(1) && size + w <= max_bytes => {
                size += w;
                batch.push(item);
            }
            _ => {
                size = w;
                out.push(vec![item]);
            }
        }
    }
    out
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyRequest {
    pub source: Arc<str>,
    pub ops: Vec<PublisherOp>,
    #[serde(default)]
    pub membership: Option<MembershipDoc>,
}

/// The answer of `apply`: the node's epoch, and the writes it refused (each would have
/// taken a registerId from the principal that holds it); every other op was applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyAnswer {
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<RefusedWrite>,
}

/// A write `apply` refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusedWrite {
    pub data_info_id: DataInfoId,
    pub register_id: Arc<str>,
}

/// `{"epoch": N}`: the answer of `install` (the same document as the answer of
/// `POST /internal/v1/membership`).
pub use registry_types::EpochAnswer;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FetchRequest {
    pub ids: Vec<DataInfoId>,
    #[serde(default)]
    pub membership: Option<MembershipDoc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FetchResponse {
    pub epoch: u64,
    /// False while this node is still fetching what it owns under `epoch`: the reader
    /// should also ask the previous owners.
    pub synced: bool,
    pub datums: Vec<DatumSnapshot>,
    /// This node's membership, when it is newer than the one the request carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership: Option<MembershipDoc>,
    /// The highest write stamp (`registerTimestamp`, with `clockSeq` its `registerSeq`) this
    /// node has applied or installed:
    /// session nodes keep their own stamps above it (a hybrid logical clock), so that a
    /// session taking a registerId over writes later than the session it takes it from
    /// even when their session nodes' clocks disagree.
    #[serde(default)]
    pub clock: u64,
    #[serde(default)]
    pub clock_seq: u32,
}

impl FetchResponse {
    /// The write stamp of [`FetchResponse::clock`] and `clock_seq`.
    pub fn clock_stamp(&self) -> Stamp {
        Stamp::new(self.clock, self.clock_seq)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicesRequest {
    pub prefix: String,
    pub limit: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicesResponse {
    pub services: Vec<ServiceSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangesRequest {
    /// The session node (lease identity).
    pub source: Arc<str>,
    /// Last sequence number seen; `None` for "from now".
    #[serde(default)]
    pub after: Option<u64>,
    /// How long to hold the answer when there is nothing new.
    pub wait_ms: u64,
    /// The incarnation `after` belongs to; another one means the node restarted.
    #[serde(default)]
    pub incarnation: Option<u64>,
    #[serde(default)]
    pub membership: Option<MembershipDoc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangesResponse {
    /// Sequence number of the last notice included (pass as `after` next time).
    pub seq: u64,
    /// Identifies one run of the data node; a different value means its log restarted.
    pub incarnation: u64,
    pub notices: Vec<ChangeNotice>,
    /// The session's `after` is no longer in the log (or from another incarnation):
    /// `notices` holds the current version of every datum instead.
    pub reset: bool,
    pub epoch: u64,
    /// See [`FetchResponse::clock`].
    #[serde(default)]
    pub clock: u64,
    #[serde(default)]
    pub clock_seq: u32,
}

impl ChangesResponse {
    /// See [`FetchResponse::clock_stamp`].
    pub fn clock_stamp(&self) -> Stamp {
        Stamp::new(self.clock, self.clock_seq)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileDatum {
    pub id: DataInfoId,
    /// [`write_set_hash`] of the session's publishers of this datum.
    pub hash: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileRequest {
    pub source: Arc<str>,
    pub datums: Vec<ReconcileDatum>,
    /// When true, the node also reports datums it is primary of that hold publishers of
    /// `source` not listed in `datums` (the session dropped them).
    pub complete: bool,
    #[serde(default)]
    pub membership: Option<MembershipDoc>,
}

/// A write's identity: what the merge rules compare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteKey {
    pub register_id: Arc<str>,
    pub version: u64,
    pub register_timestamp: u64,
    #[serde(default, skip_serializing_if = "crate::model::is_zero")]
    pub register_seq: u32,
    #[serde(default)]
    pub owner: u64,
}

impl WriteKey {
    pub fn order(&self) -> WriteOrder {
        WriteOrder {
            register_timestamp: self.register_timestamp,
            register_seq: self.register_seq,
            owner: self.owner,
            version: self.version,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileMismatch {
    pub id: DataInfoId,
    /// The live publishers of the session that the node holds in this datum.
    pub have: Vec<WriteKey>,
    /// The other writes this node holds in this datum: live publishers of other session
    /// nodes and tombstones. A session whose publisher is absent from `have` because a
    /// newer owner took its registerId over (or removed it since) finds that owner's write
    /// here and stops re-publishing its own older one.
    #[serde(default)]
    pub newer: Vec<WriteKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileResponse {
    pub epoch: u64,
    pub mismatched: Vec<ReconcileMismatch>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DigestRequest {
    /// The data node whose owned datums are wanted.
    #[serde(rename = "for")]
    pub for_node: String,
    #[serde(default)]
    pub membership: Option<MembershipDoc>,
    /// The asking node's session leases (see [`DigestResponse::leases`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<SessionLease>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DigestEntry {
    pub id: DataInfoId,
    pub version: u64,
    /// [`write_set_hash`] of all live publishers.
    pub hash: u64,
    /// Milliseconds since the datum last changed on the answering node (absent from older
    /// nodes): a datum that changed just now is likely still being replicated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DigestResponse {
    pub membership: MembershipDoc,
    pub entries: Vec<DigestEntry>,
    /// The answering node's session leases, each with the time since its latest renewal
    /// there: a data node that lost sight of a session node keeps its lease while a peer
    /// still hears from it (a partition between two nodes is not a session node's death).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<SessionLease>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImagesRequest {
    pub ids: Vec<DataInfoId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImagesResponse {
    pub images: Vec<DatumImage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstallRequest {
    pub images: Vec<DatumImage>,
    #[serde(default)]
    pub membership: Option<MembershipDoc>,
}

/// Why an internal call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{url}: {source}")]
    Transport { url: String, source: reqwest::Error },
    #[error("{url}: status {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

/// How long an idle pooled connection to a peer is kept. It must stay below the peers'
/// `--http-header-timeout` (10 s by default), after which a node closes an idle
/// connection: a request sent on a connection the peer is just closing fails.
pub const POOL_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);

/// The HTTP client for the internal protocol, one per node (session or data side), with
/// the scheme its peers speak: `https` under mutual TLS (`--internal-tls-*`).
#[derive(Debug, Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    scheme: &'static str,
}

impl PeerClient {
    /// `{scheme}://{node}{path}`.
    pub fn url(&self, node: &str, path: &str) -> String {
        format!("{}://{node}{path}", self.scheme)
    }
}

impl std::ops::Deref for PeerClient {
    type Target = reqwest::Client;

    fn deref(&self) -> &reqwest::Client {
        &self.http
    }
}

/// The internal client of a node: [`PeerClient`] speaking `tls`.
pub fn client(request_timeout: std::time::Duration, tls: &PeerTls) -> PeerClient {
    let builder = reqwest::Client::builder()
        .timeout(request_timeout)
        .connect_timeout(std::time::Duration::from_secs(2))
        .pool_idle_timeout(POOL_IDLE_TIMEOUT);
    let http = tls.apply(builder).build().unwrap_or_else(|e| {
        // Only a TLS configuration can make the build fail; a plain client would not reach
        // a TLS peer anyway, so say why every call fails.
        tracing::error!(error = %e, "cannot build the internal HTTP client");
        reqwest::Client::default()
    });
    PeerClient {
        http,
        scheme: tls.scheme(),
    }
}

/// POSTs `body` as JSON to `{scheme}://{node}{path}` and decodes the JSON answer.
pub async fn call<Req: Serialize, Resp: serde::de::DeserializeOwned>(
    http: &PeerClient,
    token: Option<&str>,
    node: &str,
    path: &str,
    body: &Req,
) -> Result<Resp, CallError> {
    call_with_timeout(http, token, node, path, body, None).await
}

/// [`call`] with a per-request timeout (long polls).
pub async fn call_with_timeout<Req: Serialize, Resp: serde::de::DeserializeOwned>(
    http: &PeerClient,
    token: Option<&str>,
    node: &str,
    path: &str,
    body: &Req,
    timeout: Option<std::time::Duration>,
) -> Result<Resp, CallError> {
    let url = http.url(node, path);
    let mut req = http.post(&url).json(body);
    if let Some(t) = timeout {
        req = req.timeout(t);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|source| CallError::Transport {
        url: url.clone(),
        source,
    })?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(CallError::Status {
            url,
            status: status.as_u16(),
            body,
        });
    }
    resp.json::<Resp>()
        .await
        .map_err(|source| CallError::Transport { url, source })
}

/// Order-independent hash of a set of writes `(registerId, order)`: equal exactly when both
/// sides hold the same winning writes (the same owner's included).
///
/// The sum of one hash per write, so it costs one pass and no sort: anti-entropy digests
/// hash every datum a node holds each round, and a sort of every registerId was the data
/// nodes' largest single cost under load (BENCHMARKS.md, "Issue 17 d and e").
/// The ids are hashed on their own and then with the order, so ids cannot run into the
/// numbers after them.
pub fn write_set_hash<'a>(writes: impl Iterator<Item = (&'a str, WriteOrder)>) -> u64 {
    writes.fold(0u64, |sum, (rid, o)| {
        let mut w = [0u8; 36];
        w[..8].copy_from_slice(&xxhash_rust::xxh3::xxh3_64(rid.as_bytes()).to_le_bytes());
        w[8..16].copy_from_slice(&o.version.to_le_bytes());
        w[16..24].copy_from_slice(&o.register_timestamp.to_le_bytes());
        w[24..32].copy_from_slice(&o.owner.to_le_bytes());
        // The counter only when set, so that a write stamped by a node that knows no
        // counter hashes as it did there (mixed versions during a rolling upgrade).
        let n = if o.register_seq == 0 {
            32
        } else {
            w[32..].copy_from_slice(&o.register_seq.to_le_bytes());
            36
        };
        sum.wrapping_add(xxhash_rust::xxh3::xxh3_64(&w[..n]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(version: u64, ts: u64) -> WriteOrder {
        WriteOrder {
            register_timestamp: ts,
            register_seq: 0,
            owner: 0,
            version,
        }
    }

    #[test]
    fn batches_respect_count_and_bytes() {
        let b = batches((1..=10).collect::<Vec<usize>>(), 4, 100, |_| 10);
        assert_eq!(b, vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10]]);
        let b = batches(vec![60usize, 50, 40, 200, 1], 10, 100, |w| *w);
        assert_eq!(b, vec![vec![60], vec![50, 40], vec![200], vec![1]]);
        assert!(batches(Vec::<usize>::new(), 4, 100, |_| 1).is_empty());
    }

    #[test]
    fn write_set_hash_ignores_order_and_sees_every_field() {
        let a = write_set_hash([("r1", w(1, 10)), ("r2", w(2, 20))].into_iter());
        let b = write_set_hash([("r2", w(2, 20)), ("r1", w(1, 10))].into_iter());
        assert_eq!(a, b);
        assert_ne!(
            a,
            write_set_hash([("r1", w(1, 10)), ("r2", w(3, 20))].into_iter())
        );
        assert_ne!(
            a,
            write_set_hash([("r1", w(1, 10)), ("r2", w(2, 21))].into_iter())
        );
        assert_ne!(a, write_set_hash([("r1", w(1, 10))].into_iter()));
        // Another owner's write of the same version and timestamp is another write.
        let other = WriteOrder {
            owner: 7,
            ..w(2, 20)
        };
        assert_ne!(
            a,
            write_set_hash([("r1", w(1, 10)), ("r2", other)].into_iter())
        );
        // Ids are hashed apart, so they cannot run into each other.
        assert_ne!(
            write_set_hash([("ab", w(1, 1)), ("c", w(1, 1))].into_iter()),
            write_set_hash([("a", w(1, 1)), ("bc", w(1, 1))].into_iter())
        );
        // A write's counter within its millisecond is part of it, and a write without one
        // hashes as a node that knows no counter hashes it (rolling upgrades).
        let counted = WriteOrder {
            register_seq: 3,
            ..w(2, 20)
        };
        assert_ne!(
            a,
            write_set_hash([("r1", w(1, 10)), ("r2", counted)].into_iter())
        );
        let single = write_set_hash([("r1", w(1, 10))].into_iter());
        let mut old = [0u8; 32];
        old[..8].copy_from_slice(&xxhash_rust::xxh3::xxh3_64(b"r1").to_le_bytes());
        old[8..16].copy_from_slice(&1u64.to_le_bytes());
        old[16..24].copy_from_slice(&10u64.to_le_bytes());
        assert_eq!(single, xxhash_rust::xxh3::xxh3_64(&old));
        // Two writes swapping their orders are another set.
        assert_ne!(
            a,
            write_set_hash([("r1", w(2, 20)), ("r2", w(1, 10))].into_iter())
        );
        assert_eq!(write_set_hash(std::iter::empty()), 0);
    }
}
