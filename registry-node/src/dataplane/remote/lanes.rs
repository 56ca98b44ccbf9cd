//! The lanes: per data node of the view, queues that coalesce concurrent writes and primary
//! reads into one request each, with a few workers per queue.

use super::RemoteDataPlane;
use crate::dataplane::wire::{self, *};
use crate::membership::Membership;
use crate::model::{DataInfoId, PublisherOp};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

pub(super) fn mark(reachable: &Mutex<HashMap<String, Instant>>, node: &str, ok: bool) {
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

pub(super) struct ApplyJob {
    pub(super) ops: Vec<PublisherOp>,
    pub(super) done: oneshot::Sender<Result<(), ApplyFailure>>,
}

/// Why a write call did not succeed.
#[derive(Debug, Clone)]
pub(super) enum ApplyFailure {
    /// The node could not be reached or answered an error: try the next owner.
    Failed(String),
    /// The node applied the call but refused these writes (another principal holds their
    /// registerId): final, no other owner is asked.
    Refused(Vec<RefusedWrite>),
}

impl From<String> for ApplyFailure {
    fn from(e: String) -> Self {
        ApplyFailure::Failed(e)
    }
}

/// What of `answer` concerns `ops`: `Ok` when none of them was refused.
pub(super) fn outcome_for(ops: &[PublisherOp], answer: &ApplyAnswer) -> Result<(), ApplyFailure> {
    if answer.refused.is_empty() {
        return Ok(());
    }
    let mine: Vec<RefusedWrite> = answer
        .refused
        .iter()
        .filter(|r| {
            ops.iter().any(|op| match op {
                PublisherOp::Put { publisher } => {
                    publisher.register_id == r.register_id
                        && publisher.data_info_id == r.data_info_id
                }
                PublisherOp::Remove { .. } => false,
            })
        })
        .cloned()
        .collect();
    if mine.is_empty() {
        Ok(())
    } else {
        Err(ApplyFailure::Refused(mine))
    }
}

pub(super) struct FetchJob {
    pub(super) id: DataInfoId,
    pub(super) done: oneshot::Sender<Result<FetchResponse, String>>,
}

/// What a lane worker needs to call its data node.
#[derive(Clone)]
struct LaneContext {
    http: crate::dataplane::wire::PeerClient,
    token: Option<String>,
    source: Arc<str>,
    membership: Arc<Membership>,
    reachable: Arc<Mutex<HashMap<String, Instant>>>,
    node: String,
    clock: Arc<crate::clock::StampClock>,
}

/// The write and read queues of one data node. Each has a few workers; a free worker takes
/// everything queued (up to a batch) and sends it as one request, so batches grow with
/// the load and nothing waits for a timer.
pub(super) struct Lanes {
    pub(super) apply: mpsc::UnboundedSender<ApplyJob>,
    pub(super) fetch: mpsc::UnboundedSender<FetchJob>,
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
    // Weighed by ops and by bytes: a batch closes at LANE_MAX_BATCH ops or about
    // wire::BATCH_BYTES, so a request stays far below what a data node accepts.
    let per_op_bytes = wire::BATCH_BYTES / LANE_MAX_BATCH;
    let weight = |j: &ApplyJob| {
        let bytes: usize = j.ops.iter().map(wire::op_bytes).sum();
        j.ops.len().max(bytes / per_op_bytes)
    };
    while let Some(jobs) = next_batch(&rx, weight).await {
        let body = ApplyRequest {
            source: ctx.source.clone(),
            ops: jobs.iter().flat_map(|j| j.ops.iter().cloned()).collect(),
            membership: Some(ctx.membership.view().doc.clone()),
        };
        let r: Result<ApplyAnswer, _> = call(
            &ctx.http,
            ctx.token.as_deref(),
            &ctx.node,
            wire::APPLY,
            &body,
        )
        .await;
        mark(&ctx.reachable, &ctx.node, r.is_ok());
        let r = r.map_err(|e| e.to_string());
        for j in jobs {
            let outcome = match &r {
                Ok(answer) => outcome_for(&j.ops, answer),
                Err(e) => Err(ApplyFailure::Failed(e.clone())),
            };
            let _ = j.done.send(outcome);
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
        let r: Result<FetchResponse, _> = call(
            &ctx.http,
            ctx.token.as_deref(),
            &ctx.node,
            wire::FETCH,
            &body,
        )
        .await;
        mark(&ctx.reachable, &ctx.node, r.is_ok());
        if let Ok(resp) = &r {
            ctx.clock.observe(resp.clock_stamp());
        }
        match r {
            Ok(resp) if resp.datums.len() == jobs.len() => {
                for (j, snap) in jobs.into_iter().zip(resp.datums) {
                    let _ = j.done.send(Ok(FetchResponse {
                        epoch: resp.epoch,
                        synced: resp.synced,
                        datums: vec![snap],
                        membership: resp.membership.clone(),
                        clock: resp.clock,
                        clock_seq: resp.clock_seq,
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

impl RemoteDataPlane {
    /// The lanes of `node` when it is in the current view (created on first use); `None`
    /// for other nodes (previous owners), which are called directly.
    pub(super) fn lanes(&self, node: &str) -> Option<Arc<Lanes>> {
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
            clock: self.clock.clone(),
        };
        let lanes = self
            .lanes
            .lock()
            .entry(node.to_owned())
            .or_insert_with(|| Arc::new(Lanes::start(ctx)))
            .clone();
        Some(lanes)
    }
}
