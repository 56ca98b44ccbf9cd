//! Data-node membership: the epoch'd document in use (`registry_types::MembershipDoc`, docs/INTERNAL.md), the ring built from it, and its sources (flags, file, HTTP, gossip).
//!
//! A node adopts a document only when its epoch is greater than the one in use, whatever
//! the source: `--members` (epoch 1), `--members-file` (polled), `POST
//! /internal/v1/membership`, or the document a peer attaches to its internal requests
//! (so a node that missed an update catches up at the next contact). With
//! `--membership-key`, every source but the command line must also carry the operator's
//! signature ([`Membership::offer`]; SECURITY.md): a forged or unsigned document changes
//! nothing, and an old one replayed is not newer.
//! The view keeps the previous document and ring too: during a ring change reads consult
//! the previous owners, so nothing is answered empty while the new owners fetch.

use crate::data::ring::Ring;
use parking_lot::RwLock;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use registry_trust::MembershipKey;
pub use registry_types::{MembershipDoc, MembershipError};

/// What an offered document did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adoption {
    /// The epoch in use afterwards.
    pub epoch: u64,
    /// Whether the document became the one in use (false: not newer).
    pub adopted: bool,
}

/// How often `--members-file` is re-read.
pub const MEMBERS_FILE_POLL: Duration = Duration::from_millis(500);

/// One adopted membership and its ring, plus the one before it.
#[derive(Debug)]
pub struct ClusterView {
    pub doc: MembershipDoc,
    pub ring: Ring,
    pub previous: Option<(MembershipDoc, Ring)>,
    pub replication_factor: usize,
}

impl ClusterView {
    pub fn epoch(&self) -> u64 {
        self.doc.epoch
    }

    /// Owners of a dataInfoId under this epoch, primary first.
    pub fn owners(&self, data_info_id: &str) -> Vec<&str> {
        self.ring.owners(data_info_id, self.replication_factor)
    }

    /// Owners under the previous epoch (empty when there is none).
    pub fn previous_owners(&self, data_info_id: &str) -> Vec<&str> {
        self.previous
            .as_ref()
            .map(|(_, r)| r.owners(data_info_id, self.replication_factor))
            .unwrap_or_default()
    }

    /// Every data node a node should talk to: members and leaving, sorted, deduplicated.
    pub fn all_nodes(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .doc
            .members
            .iter()
            .chain(self.doc.leaving.iter())
            .cloned()
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// The membership in use, shared by every part of a node.
pub struct Membership {
    replication_factor: usize,
    virtual_nodes: usize,
    /// With a key, [`Membership::offer`] adopts only documents signed with it.
    key: Option<MembershipKey>,
    current: RwLock<Arc<ClusterView>>,
    changes: watch::Sender<u64>,
}

impl Membership {
    pub fn new(replication_factor: usize, virtual_nodes: usize) -> Arc<Membership> {
        Membership::with_key(replication_factor, virtual_nodes, None)
    }

    /// A membership that adopts offered documents only when `key` verifies them.
    pub fn with_key(
        replication_factor: usize,
        virtual_nodes: usize,
        key: Option<MembershipKey>,
    ) -> Arc<Membership> {
        let (changes, _) = watch::channel(0);
        Arc::new(Membership {
            replication_factor: replication_factor.max(1),
            virtual_nodes,
            key,
            current: RwLock::new(Arc::new(ClusterView {
                doc: MembershipDoc::default(),
                ring: Ring::new::<String>(&[], virtual_nodes),
                previous: None,
                replication_factor: replication_factor.max(1),
            })),
            changes,
        })
    }

    /// The membership of `--members` (epoch 1) and `--members-file` (watched, about every
    /// [`MEMBERS_FILE_POLL`]).
    pub fn from_config(config: &crate::config::Config) -> std::io::Result<Arc<Membership>> {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let key = config
            .membership_key()
            .map_err(|e| invalid(e.to_string()))?;
        if key.is_none() {
            tracing::warn!("no --membership-key: any caller that reaches an internal listener (with the cluster token, if one is set) can replace the data ring (SECURITY.md)");
        }
        let membership = Membership::with_key(config.replication_factor, config.virtual_nodes, key);
        if !config.members.is_empty() {
            let doc = MembershipDoc::from_static(&config.members);
            if !doc.members.is_empty() {
                // The command line is as trusted as the key itself: no signature needed.
                doc.validate()
                    .map_err(|e| invalid(format!("--members: {e}")))?;
                membership.adopt(doc);
            }
        }
        if let Some(path) = &config.members_file {
            membership.watch_file(path.clone(), MEMBERS_FILE_POLL);
        }
        Ok(membership)
    }

    /// The view in use (epoch 0 and no members until a document is adopted).
    pub fn view(&self) -> Arc<ClusterView> {
        self.current.read().clone()
    }

    pub fn epoch(&self) -> u64 {
        self.current.read().doc.epoch
    }

    /// Adopts `doc` if its epoch is newer; returns the epoch in use afterwards. The caller
    /// validates first, and checks the signature ([`Membership::offer`] does both): only the
    /// command line's `--members` and tests adopt directly.
    pub fn adopt(&self, doc: MembershipDoc) -> u64 {
        self.adopt_if_newer(doc).epoch
    }

    fn adopt_if_newer(&self, doc: MembershipDoc) -> Adoption {
        let mut cur = self.current.write();
        if doc.epoch <= cur.doc.epoch {
            return Adoption {
                epoch: cur.doc.epoch,
                adopted: false,
            };
        }
        let ring = Ring::of(&doc, self.virtual_nodes);
        let previous = if cur.doc.epoch > 0 {
            Some((cur.doc.clone(), cur.ring.clone()))
        } else {
            None
        };
        let epoch = doc.epoch;
        tracing::info!(epoch, members = ?doc.members, leaving = ?doc.leaving, "adopted membership");
        *cur = Arc::new(ClusterView {
            doc,
            ring,
            previous,
            replication_factor: self.replication_factor,
        });
        drop(cur);
        self.changes.send_replace(epoch);
        Adoption {
            epoch,
            adopted: true,
        }
    }

    /// Validates, checks the signature (with a key), and adopts if newer; for documents
    /// from the outside. Refused documents change nothing.
    pub fn offer(&self, doc: MembershipDoc) -> Result<Adoption, MembershipError> {
        doc.validate()?;
        if let Some(key) = &self.key {
            doc.verify(key)?;
        }
        Ok(self.adopt_if_newer(doc))
    }

    /// Whether offered documents must be signed.
    pub fn requires_signature(&self) -> bool {
        self.key.is_some()
    }

    /// Resolves on every adoption (the value is the new epoch).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn replication_factor(&self) -> usize {
        self.replication_factor
    }

    /// Polls `path` (about every `every`) and adopts newer documents from it. A missing or
    /// malformed file is logged and retried; the node keeps the membership it has.
    pub fn watch_file(
        self: &Arc<Self>,
        path: PathBuf,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut last: Option<Vec<u8>> = None;
            loop {
                let Some(m) = me.upgrade() else { return };
                match tokio::fs::read(&path).await {
                    Ok(bytes) if last.as_deref() != Some(&bytes[..]) => {
                        match MembershipDoc::parse(&bytes).and_then(|doc| m.offer(doc)) {
                            Ok(Adoption { adopted: true, .. }) => {}
                            Ok(Adoption { epoch, .. }) => {
                                tracing::info!(path = %path.display(), epoch, "membership file: epoch not newer than the one in use, ignored");
                            }
                            Err(e) => {
                                tracing::warn!(path = %path.display(), error = %e, "membership file refused")
                            }
                        }
                        last = Some(bytes);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if last.is_some() {
                            tracing::warn!(path = %path.display(), error = %e, "membership file unreadable");
                        }
                        last = None;
                    }
                }
                drop(m);
                tokio::time::sleep(every).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(epoch: u64, members: &[&str]) -> MembershipDoc {
        MembershipDoc {
            epoch,
            members: members.iter().map(|s| s.to_string()).collect(),
            leaving: vec![],
            signature: None,
            ids: Default::default(),
        }
    }

    #[test]
    fn with_a_key_only_signed_newer_documents_are_adopted() {
        let signer = registry_trust::MembershipSigner::generate();
        let m = Membership::with_key(3, 10, Some(signer.public_key()));
        // The epoch attack: an unsigned u64::MAX would block every later epoch.
        let attack = doc(u64::MAX, &["127.0.0.1:9999"]);
        assert!(matches!(
            m.offer(attack),
            Err(MembershipError::Signature(_))
        ));
        let mut forged = doc(2, &["a:1"]).signed(&signer);
        forged.members.push("evil:1".into());
        assert!(matches!(
            m.offer(forged),
            Err(MembershipError::Signature(_))
        ));
        let foreign = doc(2, &["a:1"]).signed(&registry_trust::MembershipSigner::generate());
        assert!(matches!(
            m.offer(foreign),
            Err(MembershipError::Signature(_))
        ));
        assert_eq!(m.epoch(), 0, "nothing refused changed anything");

        let signed = doc(3, &["a:1", "b:1"]).signed(&signer);
        assert_eq!(
            m.offer(signed.clone()),
            Ok(Adoption {
                epoch: 3,
                adopted: true
            })
        );
        assert_eq!(
            m.view().doc,
            signed,
            "the signature is kept, so peers can check it"
        );
        // A replayed old document, validly signed, is not newer.
        let old = doc(2, &["a:1"]).signed(&signer);
        assert_eq!(
            m.offer(old),
            Ok(Adoption {
                epoch: 3,
                adopted: false
            })
        );
        assert_eq!(
            m.offer(signed),
            Ok(Adoption {
                epoch: 3,
                adopted: false
            })
        );
        assert_eq!(m.view().doc.members, ["a:1", "b:1"]);
        // Without a key, today's behaviour: any valid newer document.
        let open = Membership::new(3, 10);
        assert_eq!(open.offer(doc(9, &["x:1"])).map(|a| a.epoch), Ok(9));
    }

    #[test]
    fn adopts_only_newer_epochs_and_keeps_the_previous_ring() {
        let m = Membership::new(3, 10);
        assert_eq!(m.epoch(), 0);
        assert_eq!(m.adopt(doc(2, &["a:1", "b:1"])), 2);
        assert_eq!(m.adopt(doc(2, &["c:1"])), 2, "equal epoch ignored");
        assert_eq!(m.adopt(doc(1, &["c:1"])), 2, "older epoch ignored");
        assert_eq!(m.view().doc.members, ["a:1", "b:1"]);
        assert_eq!(m.adopt(doc(3, &["a:1", "b:1", "c:1"])), 3);
        let v = m.view();
        assert_eq!(v.previous.as_ref().map(|(d, _)| d.epoch), Some(2));
        assert_eq!(v.owners("x").len(), 3);
        assert_eq!(v.previous_owners("x").len(), 2);
    }

    #[tokio::test]
    async fn a_watched_file_needs_the_signature_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("members.json");
        let signer = registry_trust::MembershipSigner::generate();
        std::fs::write(&path, br#"{"epoch":5,"members":["evil:1"]}"#).expect("write");
        let m = Membership::with_key(3, 10, Some(signer.public_key()));
        let mut rx = m.subscribe();
        let _task = m.watch_file(path.clone(), Duration::from_millis(20));
        let signed = doc(4, &["a:1"]).signed(&signer);
        std::fs::write(&path, serde_json::to_vec(&signed).unwrap()).expect("write");
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|e| *e == 4))
            .await
            .expect("the signed document is adopted")
            .expect("watch");
        assert_eq!(
            m.view().doc.members,
            ["a:1"],
            "the unsigned epoch 5 never was"
        );
    }

    #[tokio::test]
    async fn file_changes_are_adopted_when_newer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("members.json");
        std::fs::write(&path, br#"{"epoch":5,"members":["a:1"]}"#).expect("write");
        let m = Membership::new(3, 10);
        let mut rx = m.subscribe();
        let _task = m.watch_file(path.clone(), Duration::from_millis(20));
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|e| *e == 5))
            .await
            .expect("adopted in time")
            .expect("watch");
        std::fs::write(&path, br#"{"epoch":4,"members":["old:1"]}"#).expect("write");
        std::fs::write(&path, br#"{"epoch":6,"members":["a:1","b:1"]}"#).expect("write");
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|e| *e == 6))
            .await
            .expect("adopted in time")
            .expect("watch");
        assert_eq!(m.view().doc.members, ["a:1", "b:1"]);
    }
}
