//! The session layer against data layers that misbehave in the two ways the data nodes can:
//!
//! - a write that times out but landed: the session layer rolls its own copy back, and must
//!   put the data layer back in line with it (a failed unpublish must not leave the
//!   publisher hidden behind its tombstone, a failed publish must not leave its data shown);
//! - a datum whose version goes backwards at its owner (a fresh owner whose clock is
//!   behind): subscribers, already pushed a higher version, must still get the new state
//!   within the push delay plus 1 s.
//!
//! In process, over data planes that wrap the standalone one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::Mutex;
use registry_node::dataplane::{DataPlane, DataPlaneError, DataPlaneStatus};
use registry_node::dataplane::{LocalDataPlane, LocalDataPlaneConfig};
use registry_node::metrics::Metrics;
use registry_node::model::{
    ChangeNotice, DatumSnapshot, Publisher, PublisherOp, ServiceKey, ServiceSummary,
};
use registry_node::session::{
    PublishRequest, Scope, SessionConfig, SessionLayer, SubscribeRequest,
};
use testkit::eventually;
use testkit::sse::{items, Events};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn key(data_id: &str) -> ServiceKey {
    ServiceKey {
        data_id: data_id.into(),
        group: "DEFAULT_GROUP".into(),
        instance_id: "DEFAULT_INSTANCE_ID".into(),
    }
}

fn publish(data_id: &str, rid: &str, data: &str) -> PublishRequest {
    PublishRequest {
        key: key(data_id),
        zone: "DEFAULT_ZONE".into(),
        register_id: Some(rid.into()),
        data: vec![data.into()],
    }
}

fn layer(data: Arc<dyn DataPlane>) -> Arc<SessionLayer> {
    let mut cfg = registry_node::config::Config::for_tests();
    cfg.push_delay_ms = 50;
    cfg.push_max_delay_ms = 200;
    let session = SessionLayer::new(
        SessionConfig::from_config(&cfg, "n1"),
        data,
        Arc::new(Metrics::new()),
        CancellationToken::new(),
    );
    session.start();
    session
}

/// The standalone data plane, except that while `lose_answers` is set every write is
/// applied and then reported as failed (a timeout after the owner applied it).
struct LandsButFails {
    inner: Arc<LocalDataPlane>,
    lose_answers: AtomicBool,
}

impl DataPlane for LandsButFails {
    fn apply(&self, ops: Vec<PublisherOp>) -> BoxFuture<'_, Result<(), DataPlaneError>> {
        async move {
            self.inner.apply(ops).await?;
            if self.lose_answers.load(Ordering::SeqCst) {
                return Err(DataPlaneError::Unavailable("timed out".into()));
            }
            Ok(())
        }
        .boxed()
    }
    fn fetch(&self, id: &str) -> BoxFuture<'_, Result<DatumSnapshot, DataPlaneError>> {
        self.inner.fetch(id)
    }
    fn services(
        &self,
        p: &str,
        l: usize,
    ) -> BoxFuture<'_, Result<Vec<ServiceSummary>, DataPlaneError>> {
        self.inner.services(p, l)
    }
    fn watch_changes(&self, tx: mpsc::Sender<Vec<ChangeNotice>>) {
        self.inner.watch_changes(tx)
    }
    fn status(&self) -> DataPlaneStatus {
        self.inner.status()
    }
}

async fn shown(data: &dyn DataPlane, data_id: &str) -> BTreeMap<String, Vec<String>> {
    let snap = data.fetch(&key(data_id).data_info_id()).await.unwrap();
    snap.publishers
        .iter()
        .map(|p| (p.register_id.to_string(), p.data.to_vec()))
        .collect()
}

async fn eventually_shown(data: &dyn DataPlane, data_id: &str, want: &[(&str, &str)], what: &str) {
    let want: BTreeMap<String, Vec<String>> = want
        .iter()
        .map(|(r, d)| (r.to_string(), vec![d.to_string()]))
        .collect();
    eventually(what, Duration::from_secs(5), || async {
        let got = shown(data, data_id).await;
        if got == want {
            Ok(())
        } else {
            Err(format!(
                "the data layer shows {got:?}, the session holds {want:?}"
            ))
        }
    })
    .await;
}

#[tokio::test]
async fn writes_that_timed_out_but_landed_are_put_back_in_line_with_the_session() {
    let data = Arc::new(LandsButFails {
        inner: LocalDataPlane::new(LocalDataPlaneConfig::default()),
        lose_answers: AtomicBool::new(false),
    });
    let session = layer(data.clone());
    let s = session.create_session(None, 300).unwrap();
    session
        .publish(&s.id, publish("svc.unconfirmed", "p1", "v1"))
        .await
        .unwrap();
    eventually_shown(&*data, "svc.unconfirmed", &[("p1", "v1")], "first publish").await;

    // An unpublish that landed but was reported failed: the client was told the publisher
    // stays, so it must be shown (not hidden behind the tombstone that landed).
    data.lose_answers.store(true, Ordering::SeqCst);
    assert!(session.unpublish(&s.id, "p1").await.is_err());
    data.lose_answers.store(false, Ordering::SeqCst);
    assert_eq!(session.publisher_count(), 1);
    eventually_shown(
        &*data,
        "svc.unconfirmed",
        &[("p1", "v1")],
        "failed unpublish",
    )
    .await;

    // A replacement that landed but was reported failed: the session still holds v1, and so
    // must the data layer.
    data.lose_answers.store(true, Ordering::SeqCst);
    assert!(session
        .publish(&s.id, publish("svc.unconfirmed", "p1", "v2"))
        .await
        .is_err());
    data.lose_answers.store(false, Ordering::SeqCst);
    eventually_shown(
        &*data,
        "svc.unconfirmed",
        &[("p1", "v1")],
        "failed replacement",
    )
    .await;

    // A new publisher that landed but was reported failed is not held, so not shown.
    data.lose_answers.store(true, Ordering::SeqCst);
    assert!(session
        .publish(&s.id, publish("svc.unconfirmed", "p2", "new"))
        .await
        .is_err());
    data.lose_answers.store(false, Ordering::SeqCst);
    assert_eq!(session.publisher_count(), 1);
    eventually_shown(
        &*data,
        "svc.unconfirmed",
        &[("p1", "v1")],
        "failed new publish",
    )
    .await;

    // The client retries: the retry is accepted and shown, and later writes behave.
    let retried = session
        .publish(&s.id, publish("svc.unconfirmed", "p2", "new"))
        .await
        .unwrap();
    assert!(retried.created);
    session
        .publish(&s.id, publish("svc.unconfirmed", "p1", "v3"))
        .await
        .unwrap();
    eventually_shown(
        &*data,
        "svc.unconfirmed",
        &[("p1", "v3"), ("p2", "new")],
        "retries",
    )
    .await;
    assert!(session.remove_session(&s.id).await);
    eventually_shown(&*data, "svc.unconfirmed", &[], "session end").await;
}

/// A data layer whose one datum the test sets by hand, announcing each change.
#[derive(Default)]
struct HandSet {
    datum: Mutex<Option<DatumSnapshot>>,
    watchers: Mutex<Vec<mpsc::Sender<Vec<ChangeNotice>>>>,
}

impl HandSet {
    fn set(&self, id: &str, version: u64, items: &[&str], announce: bool) {
        let publishers = items
            .iter()
            .enumerate()
            .map(|(i, d)| {
                Arc::new(Publisher {
                    register_id: format!("r{i}").into(),
                    data_info_id: id.into(),
                    zone: "DEFAULT_ZONE".into(),
                    data: vec![d.to_string()].into(),
                    version: 1,
                    register_timestamp: version,
                    register_seq: 0,
                    client_id: None,
                    session_id: "s".into(),
                    source: "n".into(),
                    owner: 1,
                    principal: None,
                })
            })
            .collect();
        *self.datum.lock() = Some(DatumSnapshot {
            data_info_id: id.into(),
            version,
            publishers,
        });
        if announce {
            for tx in self.watchers.lock().iter() {
                let _ = tx.try_send(vec![ChangeNotice {
                    data_info_id: id.into(),
                    version,
                }]);
            }
        }
    }
}

impl DataPlane for HandSet {
    fn apply(&self, _ops: Vec<PublisherOp>) -> BoxFuture<'_, Result<(), DataPlaneError>> {
        async { Ok(()) }.boxed()
    }
    fn fetch(&self, id: &str) -> BoxFuture<'_, Result<DatumSnapshot, DataPlaneError>> {
        let snap = self.datum.lock().clone().unwrap_or(DatumSnapshot {
            data_info_id: id.into(),
            version: 0,
            publishers: vec![],
        });
        async move { Ok(snap) }.boxed()
    }
    fn services(
        &self,
        _p: &str,
        _l: usize,
    ) -> BoxFuture<'_, Result<Vec<ServiceSummary>, DataPlaneError>> {
        async { Ok(vec![]) }.boxed()
    }
    fn watch_changes(&self, tx: mpsc::Sender<Vec<ChangeNotice>>) {
        self.watchers.lock().push(tx);
    }
    fn status(&self) -> DataPlaneStatus {
        DataPlaneStatus {
            epoch: 1,
            members: vec![],
            ready: true,
        }
    }
}

/// The next push of `events` as (version, data items), or `None` when none comes within
/// `within`.
async fn next_push(events: &mut Events, within: Duration) -> Option<(u64, Vec<String>)> {
    let push = events.next(within).await?;
    let version = push.data["version"].as_u64().expect("a push has a version");
    Some((version, items(&push.data)))
}

#[tokio::test]
async fn a_datum_renumbered_lower_by_a_fresh_owner_is_still_pushed() {
    let data = Arc::new(HandSet::default());
    let id = key("svc.renumbered").data_info_id();
    data.set(&id, 1_700_000_000_000_000, &["old:1"], false);
    let session = layer(data.clone());
    let s = session.create_session(None, 300).unwrap();
    let mut rx = Events::reading_bytes(session.open_stream(&s.id).await.unwrap());
    session
        .subscribe(
            &s.id,
            SubscribeRequest {
                key: key("svc.renumbered"),
                zone: "DEFAULT_ZONE".into(),
                scope: Scope::DataCenter,
                register_id: Some("sub".into()),
                delta: false,
            },
        )
        .await
        .unwrap();
    let (v1, items) = next_push(&mut rx, Duration::from_secs(5))
        .await
        .expect("first push");
    assert_eq!(
        (v1, items),
        (1_700_000_000_000_000, vec!["old:1".to_string()])
    );

    // A lagging read (no change announced) is not pushed, as before.
    data.set(&id, 1_600_000_000_000_000, &["lagging:1"], false);
    session.version_scan().await;
    assert_eq!(next_push(&mut rx, Duration::from_millis(500)).await, None);

    // The datum's new owner, its clock an hour behind, changes it and announces the change
    // at its own (lower) version: pushed within the push delay plus 1 s, above what the
    // subscriber has.
    let behind = 1_700_000_000_000_000 - 3_600_000_000;
    data.set(&id, behind, &["new:1"], true);
    let (v2, items) = next_push(&mut rx, Duration::from_millis(50 + 1000))
        .await
        .expect("the fresh owner's state was never pushed");
    assert_eq!(items, vec!["new:1".to_string()]);
    assert!(v2 > v1, "pushed version {v2} is not above {v1}");

    // And its next change too.
    data.set(&id, behind + 1, &["new:1", "new:2"], true);
    let (v3, items) = next_push(&mut rx, Duration::from_millis(50 + 1000))
        .await
        .expect("the fresh owner's next change was never pushed");
    assert_eq!(items, vec!["new:1".to_string(), "new:2".to_string()]);
    assert!(v3 > v2);
}
