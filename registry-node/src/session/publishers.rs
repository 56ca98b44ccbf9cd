//! Publishers: the authoritative copy of this node's publishers, checked and written through
//! to the data layer as one batch (undone when the data layer refuses, and the data layer
//! put back in line with the undone copy: the write may have landed).

use std::sync::Arc;

use std::collections::HashSet;

use crate::dataplane::DataPlaneError;
use crate::model::{Publisher, PublisherOp};

use super::*;

impl SessionLayer {
    pub async fn publish(
        &self,
        session_id: &str,
        req: PublishRequest,
    ) -> Result<Published, SessionError> {
        let mut done = self.publish_many(session_id, vec![req]).await?;
        done.pop()
            .ok_or_else(|| SessionError::Internal("a publish produced no answer".into()))
    }

    /// Publishes several publishers of one session as one unit: every entry is checked
    /// before any is applied (a conflict anywhere changes nothing), and the data layer gets
    /// them in one batch. The answers are in the order of `reqs`.
    pub async fn publish_many(
        &self,
        session_id: &str,
        reqs: Vec<PublishRequest>,
    ) -> Result<Vec<Published>, SessionError> {
        let session = self.live_session(session_id).await?;
        // (new publisher, what it replaced)
        let mut written: Vec<(Arc<Publisher>, Option<Arc<Publisher>>)> =
            Vec::with_capacity(reqs.len());
        {
            let mut st = session.state.lock();
            if st.closed {
                return Err(SessionError::NotFound(format!(
                    "session {session_id:?} not found or expired"
                )));
            }
            let mut index = self.publishers.lock();
            // Check everything first so that a rejected batch leaves no trace.
            let mut planned = Vec::with_capacity(reqs.len());
            for req in reqs {
                let data_info_id = req.key.data_info_id();
                let register_id: Arc<str> = req.register_id.unwrap_or_else(new_id).into();
                let previous = index.get(&register_id).cloned();
                match &previous {
                    Some(p) if p.session_id != session.id && p.principal != session.principal => {
                        return Err(SessionError::Forbidden(format!(
                            "registerId {register_id:?} is held by another principal; only it can take the registerId over"
                        )))
                    }
                    Some(p) if p.session_id != session.id => {
                        return Err(SessionError::Conflict(format!(
                            "registerId {register_id:?} is used by another session"
                        )))
                    }
                    Some(p) if p.data_info_id != data_info_id => {
                        return Err(SessionError::Conflict(format!(
                            "registerId {register_id:?} is already used for dataInfoId {:?}",
                            p.data_info_id
                        )))
                    }
                    _ => {}
                }
                planned.push((register_id, data_info_id, req.zone, req.data, previous));
            }
            self.check_publish_limits(&st, &planned)?;
            for (register_id, data_info_id, zone, data, previous) in planned {
                let stamp = self.next_timestamp();
                let publisher = Arc::new(Publisher {
                    register_id: register_id.clone(),
                    data_info_id: previous
                        .as_ref()
                        .map(|p| p.data_info_id.clone())
                        .unwrap_or(data_info_id),
                    zone: self.intern_zone(&zone),
                    data: data.into(),
                    version: previous.as_ref().map_or(1, |p| p.version.saturating_add(1)),
                    register_timestamp: stamp.ms,
                    register_seq: stamp.seq,
                    client_id: session.client_id.clone(),
                    session_id: session.id.clone(),
                    source: self.node_name.clone(),
                    owner: session.owner,
                    principal: session.principal.clone(),
                });
                let replaced = index.insert(register_id.clone(), publisher.clone());
                self.account_datum_bytes(replaced.as_deref(), Some(&publisher));
                st.publishers.insert(register_id);
                written.push((publisher, previous));
            }
        }
        self.metrics
            .publishers
            .set(self.publishers.lock().len() as i64);
        let ops = written
            .iter()
            .map(|(publisher, _)| PublisherOp::Put {
                publisher: publisher.clone(),
            })
            .collect();
        if let Err(e) = self.data.apply(ops).await {
            // Writes a data node refused (another principal holds their registerId) did
            // not land: they are dropped, not repaired (a repair would remove the holder's).
            let refused: HashSet<Arc<str>> = match &e {
                DataPlaneError::Forbidden { register_ids, .. } => {
                    register_ids.iter().cloned().collect()
                }
                _ => HashSet::new(),
            };
            self.undo_publish(&session, written, &refused);
            return Err(e.into());
        }
        Ok(written
            .into_iter()
            .map(|(publisher, previous)| Published {
                created: previous.is_none(),
                publisher,
            })
            .collect())
    }

    pub async fn unpublish(&self, session_id: &str, register_id: &str) -> Result<(), SessionError> {
        let session = self.live_session(session_id).await?;
        let not_found = || {
            SessionError::NotFound(format!(
                "session has no publisher with registerId {register_id:?}"
            ))
        };
        let removed = {
            let mut st = session.state.lock();
            if !st.publishers.remove(register_id) {
                return Err(not_found());
            }
            let mut index = self.publishers.lock();
            let removed = match index.get(register_id) {
                Some(p) if p.session_id == session.id => index.remove(register_id),
                _ => None,
            };
            self.account_datum_bytes(removed.as_deref(), None);
            removed
        };
        let Some(removed) = removed else {
            return Err(not_found());
        };
        self.metrics
            .publishers
            .set(self.publishers.lock().len() as i64);
        if let Err(e) = self.data.apply(vec![self.remove_op(&removed)]).await {
            self.undo_unpublish(&session, removed);
            return Err(e.into());
        }
        Ok(())
    }

    /// A publish the data layer did not confirm may still have landed (a timeout after
    /// the owner applied it). The session goes back to what it held before, as a new write
    /// stamped now, so that it is newer than whatever landed, and that write (or, for a new
    /// publisher, the removal of the one that may have landed) is sent again until the data
    /// layer takes it: a failed publish never leaves the data layer showing a state the
    /// session does not hold. A newer write of the same registerId made meanwhile stays.
    fn undo_publish(
        &self,
        session: &Session,
        written: Vec<(Arc<Publisher>, Option<Arc<Publisher>>)>,
        refused: &HashSet<Arc<str>>,
    ) {
        let mut repair = Vec::new();
        {
            let mut st = session.state.lock();
            let mut index = self.publishers.lock();
            for (publisher, previous) in written {
                let register_id = &publisher.register_id;
                if !index
                    .get(register_id)
                    .is_some_and(|p| Arc::ptr_eq(p, &publisher))
                {
                    continue;
                }
                let landed = !refused.contains(register_id);
                match previous {
                    Some(prev) => {
                        let stamp = self.next_timestamp();
                        let restored = Arc::new(Publisher {
                            register_timestamp: stamp.ms,
                            register_seq: stamp.seq,
                            ..(*prev).clone()
                        });
                        self.account_datum_bytes(Some(&publisher), Some(&restored));
                        index.insert(register_id.clone(), restored.clone());
                        if landed {
                            repair.push(PublisherOp::Put {
                                publisher: restored,
                            });
                        }
                    }
                    None => {
                        self.account_datum_bytes(Some(&publisher), None);
                        index.remove(register_id);
                        st.publishers.remove(register_id);
                        if landed {
                            repair.push(self.remove_op(&publisher));
                        }
                    }
                }
            }
        }
        self.update_gauges();
        if !repair.is_empty() {
            self.retry_apply(repair);
        }
    }

    /// An unpublish the data layer did not confirm may still have landed. The client was
    /// told it failed and still holds the publisher, so the session keeps it as a new write
    /// stamped now (newer than the tombstone that may have landed, which would otherwise
    /// hide it until compaction) and sends that write again until the data layer takes it.
    /// If the session ended meanwhile, the removal is sent again instead.
    fn undo_unpublish(&self, session: &Session, removed: Arc<Publisher>) {
        let repair = {
            let mut st = session.state.lock();
            let mut index = self.publishers.lock();
            if st.closed {
                self.remove_op(&removed)
            } else if index.contains_key(&removed.register_id) {
                // Written again meanwhile: that write is newer than the removal.
                return;
            } else {
                let stamp = self.next_timestamp();
                let restored = Arc::new(Publisher {
                    register_timestamp: stamp.ms,
                    register_seq: stamp.seq,
                    ..(*removed).clone()
                });
                self.account_datum_bytes(None, Some(&restored));
                index.insert(restored.register_id.clone(), restored.clone());
                st.publishers.insert(restored.register_id.clone());
                PublisherOp::Put {
                    publisher: restored,
                }
            }
        };
        self.update_gauges();
        self.retry_apply(vec![repair]);
    }

    /// Every publisher this node holds (the authoritative copy, for reconciliation).
    pub fn publishers(&self) -> Vec<Arc<Publisher>> {
        self.publishers.lock().values().cloned().collect()
    }

    /// Calls `f` on every publisher this node holds, without copying the set.
    pub fn for_each_publisher(&self, mut f: impl FnMut(&Arc<Publisher>)) {
        for p in self.publishers.lock().values() {
            f(p);
        }
    }

    pub fn publisher_count(&self) -> usize {
        self.publishers.lock().len()
    }

    /// Refuses a planned publish (registerId, dataInfoId, zone, data, what it replaces)
    /// that would pass the session's publisher limit or a datum's byte limit. Called with
    /// the session's state and the publisher index locked, so nothing passes in between.
    fn check_publish_limits(
        &self,
        st: &SessionState,
        planned: &[PlannedPublish],
    ) -> Result<(), SessionError> {
        let limits = &self.cfg.limits;
        let new = planned.iter().filter(|p| p.4.is_none()).count();
        let max = limits.max_publishers_per_session;
        if new > 0 && st.publishers.len() + new > max {
            return Err(SessionError::ResourceExhausted(format!(
                "a session holds at most {max} publishers (--max-publishers-per-session); it holds {} and this adds {new}",
                st.publishers.len()
            )));
        }
        let mut growth: HashMap<&str, (usize, usize)> = HashMap::new();
        for (_, data_info_id, _, data, previous) in planned {
            let id = previous
                .as_ref()
                .map_or(data_info_id.as_ref(), |p| p.data_info_id.as_ref());
            let entry = growth.entry(id).or_default();
            entry.0 += data_bytes(data);
            entry.1 += previous.as_ref().map_or(0, |p| data_bytes(&p.data));
        }
        let max = limits.max_datum_bytes;
        let held = self.datum_bytes.lock();
        for (id, (added, replaced)) in growth {
            let now = held.get(id).copied().unwrap_or(0);
            let after = (now + added).saturating_sub(replaced);
            if added > replaced && after > max {
                return Err(SessionError::ResourceExhausted(format!(
                    "the data of {id:?} would reach {after} bytes; a datum holds at most {max} bytes (--max-datum-bytes)"
                )));
            }
        }
        Ok(())
    }

    /// Keeps the per-datum byte tally in step with the publisher index: `old` left it,
    /// `new` entered it.
    pub(super) fn account_datum_bytes(&self, old: Option<&Publisher>, new: Option<&Publisher>) {
        let mut held = self.datum_bytes.lock();
        if let Some(old) = old {
            if let Some(n) = held.get_mut(&old.data_info_id) {
                *n = n.saturating_sub(data_bytes(&old.data));
                if *n == 0 {
                    held.remove(&old.data_info_id);
                }
            }
        }
        if let Some(new) = new {
            let bytes = data_bytes(&new.data);
            if bytes > 0 {
                *held.entry(new.data_info_id.clone()).or_default() += bytes;
            }
        }
    }

    /// The removal of exactly this session's write `p`: it removes nothing newer, so a
    /// session that took the registerId over (on this or another session node) keeps it.
    pub(super) fn remove_op(&self, p: &Publisher) -> PublisherOp {
        PublisherOp::remove_of(p)
    }
}

/// A checked publish: registerId, dataInfoId, zone, data, the publisher it replaces.
type PlannedPublish = (
    Arc<str>,
    DataInfoId,
    String,
    Vec<String>,
    Option<Arc<Publisher>>,
);

fn data_bytes(data: &[String]) -> usize {
    data.iter().map(String::len).sum()
}
