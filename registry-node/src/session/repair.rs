//! Writes the data layer did not confirm, sent again until it takes them: the removals of
//! an ended session's publishers, and what a failed publish or unpublish leaves to put
//! right (see `SessionLayer::undo_publish`). One task sends them all; per registerId only
//! the newest op is kept (by [`WriteOrder`]; a removal beats a put of the same write), and
//! at most [`MAX_PENDING`] registerIds are held: beyond that an op is dropped and left to
//! reconciliation, which re-publishes what the data nodes lack and removes what this node
//! no longer holds, so a caller cannot grow this without bound.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::dataplane::DataPlane;
use crate::model::{DataInfoId, PublisherOp, WriteOrder};

/// The most registerIds with a pending op.
pub const MAX_PENDING: usize = 100_000;

type Key = (DataInfoId, Arc<str>);

/// See the module docs.
#[derive(Default)]
pub struct Repairs {
    pending: Mutex<HashMap<Key, PublisherOp>>,
    wake: Notify,
}

/// The write an op is about, and whether it removes it (a removal of a write beats the
/// write itself).
fn rank(op: &PublisherOp) -> (WriteOrder, bool) {
    match op {
        PublisherOp::Put { publisher } => (publisher.order(), false),
        PublisherOp::Remove {
            version,
            register_timestamp,
            register_seq,
            owner,
            ..
        } => (
            WriteOrder {
                register_timestamp: *register_timestamp,
                register_seq: *register_seq,
                owner: *owner,
                version: *version,
            },
            true,
        ),
    }
}

fn key(op: &PublisherOp) -> Key {
    let rid = match op {
        PublisherOp::Put { publisher } => publisher.register_id.clone(),
        PublisherOp::Remove { register_id, .. } => register_id.clone(),
    };
    (op.data_info_id().clone(), rid)
}

impl Repairs {
    /// Queues `ops` to be sent again.
    pub fn push(&self, ops: Vec<PublisherOp>) {
        let mut dropped = 0usize;
        {
            let mut pending = self.pending.lock();
            for op in ops {
                Self::insert(&mut pending, op, &mut dropped);
            }
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "too many unconfirmed writes pending; reconciliation repairs the rest"
            );
        }
        self.wake.notify_one();
    }

    fn insert(pending: &mut HashMap<Key, PublisherOp>, op: PublisherOp, dropped: &mut usize) {
        let k = key(&op);
        let full = pending.len() >= MAX_PENDING;
        match pending.get_mut(&k) {
            Some(existing) => {
                if rank(&op) > rank(existing) {
                    *existing = op;
                }
            }
            None if full => *dropped += 1,
            None => {
                pending.insert(k, op);
            }
        }
    }

    /// How many registerIds have an op pending.
    pub fn len(&self) -> usize {
        self.pending.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends what is pending, with backoff while the data layer refuses, until shutdown.
    pub async fn run(self: Arc<Self>, data: Arc<dyn DataPlane>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.wake.notified() => {}
                }
                backoff = Duration::from_millis(100);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            let ops: Vec<PublisherOp> = self.pending.lock().drain().map(|(_, op)| op).collect();
            if ops.is_empty() {
                continue;
            }
            match data.apply(ops.clone()).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(ops = ops.len(), error = %e, "sending unconfirmed writes again later");
                    // Back in, unless something newer for the same registerId came meanwhile.
                    let mut dropped = 0;
                    let mut pending = self.pending.lock();
                    for op in ops {
                        Self::insert(&mut pending, op, &mut dropped);
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Publisher;

    fn put(rid: &str, ts: u64) -> PublisherOp {
        PublisherOp::Put {
            publisher: Arc::new(Publisher {
                register_id: rid.into(),
                data_info_id: "svc#@#i#@#g".into(),
                zone: "z".into(),
                data: vec!["a".to_string()].into(),
                version: 1,
                register_timestamp: ts,
                register_seq: 0,
                client_id: None,
                session_id: "s".into(),
                source: "n".into(),
                owner: 7,
                principal: None,
            }),
        }
    }

    #[test]
    fn keeps_the_newest_op_per_register_id_and_a_removal_over_its_write() {
        let r = Repairs::default();
        r.push(vec![put("r1", 10), put("r1", 5)]);
        let PublisherOp::Put { publisher } = put("r1", 10) else {
            unreachable!()
        };
        r.push(vec![PublisherOp::remove_of(&publisher)]);
        r.push(vec![put("r1", 10)]);
        let pending = r.pending.lock();
        assert_eq!(pending.len(), 1);
        let op = pending.values().next().unwrap();
        assert!(
            matches!(
                op,
                PublisherOp::Remove {
                    register_timestamp: 10,
                    register_seq: 0,
                    ..
                }
            ),
            "{op:?}"
        );
    }

    #[test]
    fn holds_a_bounded_number_of_register_ids() {
        let r = Repairs::default();
        r.push(
            (0..MAX_PENDING + 10)
                .map(|i| put(&format!("r{i}"), 1))
                .collect(),
        );
        assert_eq!(r.len(), MAX_PENDING);
    }
}
