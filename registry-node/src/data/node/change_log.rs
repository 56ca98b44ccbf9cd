//! The change log: every change of the store, as `(dataInfoId, version)` notices, in a
//! bounded log that session nodes long-poll (`changes`). Session nodes are told of a change
//! by the datum's primary, or by whichever node applied a write itself (a backup taking
//! writes while the primary is down): one notice per change instead of one per replica. A
//! session node that fell behind the log, or polls another incarnation, is reset with the
//! current version of every datum.

use super::DataNode;
use crate::dataplane::wire::{ChangesRequest, ChangesResponse};
use crate::model::ChangeNotice;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::mpsc;

const MAX_NOTICES_PER_POLL: usize = 10_000;

pub(super) struct ChangeLog {
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

impl ChangeLog {
    pub(super) fn new(capacity: usize) -> ChangeLog {
        ChangeLog {
            first_seq: 1,
            entries: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }
}

impl DataNode {
    /// Session nodes are told of a change by the datum's primary, or by whichever node
    /// applied a write itself (a backup taking writes while the primary is down): one
    /// notice per change instead of one per replica.
    pub(super) async fn run_change_log(
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

    /// Answers a `changes` long poll: the notices after `req.after`, waiting up to
    /// `req.wait_ms` when there are none yet (renewing the poller's lease meanwhile). The
    /// handler has offered the request's membership.
    pub(super) async fn poll_changes(&self, req: ChangesRequest) -> ChangesResponse {
        let node = self;
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
                        if other_run || after > last || after.saturating_add(1) < log.first_seq {
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
                    let clock = node.clock.highest();
                    return ChangesResponse {
                        seq: last,
                        incarnation: node.incarnation,
                        notices,
                        reset: true,
                        epoch: epoch(),
                        clock: clock.ms,
                        clock_seq: clock.seq,
                    };
                }
                Some((seq, notices, reset)) => {
                    let waiting = notices.is_empty() && req.after.is_some();
                    if !waiting || tokio::time::Instant::now() >= deadline {
                        let clock = node.clock.highest();
                        return ChangesResponse {
                            seq,
                            incarnation: node.incarnation,
                            notices,
                            reset,
                            epoch: epoch(),
                            clock: clock.ms,
                            clock_seq: clock.seq,
                        };
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
}
