//! Publisher ownership across session nodes (API.md promise 5): a client that fails over
//! re-publishes its registerId through a new session on another session node, and the end
//! of the old session (its `DELETE` or its expiry) removes nothing the new one holds.
//!
//! 3 data nodes, 3 session nodes: the old session on session node 0, the new one on 1, a
//! subscriber on 2. After the old session ends, both session nodes that held the publisher
//! are queried every 250 ms for 20 s: it is in every answer, and the subscriber is never
//! pushed a state without it.

mod cluster_kit;

use cluster_kit::*;
use std::time::{Duration, Instant};

const RID: &str = "pay-1";
const ADDR: &str = "10.1.0.1:8080";

/// How the old session ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    Delete,
    Expiry,
}

async fn delete_session(c: &Cluster, node: usize, sid: &str) -> u16 {
    c.http
        .delete(format!("{}/api/v1/sessions/{sid}", c.session_url(node)))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn heartbeat(c: &Cluster, node: usize, sid: &str) -> u16 {
    c.http
        .post(format!(
            "{}/api/v1/sessions/{sid}/heartbeat",
            c.session_url(node)
        ))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Samples `data_id` on session nodes `nodes` every 250 ms for `window`, and the pushes of
/// `sub`; panics at the first sample or push without `expected`.
async fn hold_for(
    c: &Cluster,
    nodes: &[usize],
    data_id: &str,
    expected: &PublisherSet,
    sub: &mut Subscriber,
    window: Duration,
    what: &str,
) {
    let want = items(expected);
    let start = Instant::now();
    let mut samples = 0;
    while start.elapsed() < window {
        for &n in nodes {
            let got = c.query(n, data_id).await;
            if got.as_ref() != Some(expected) {
                c.dump_logs();
                panic!(
                    "{what}: session node {n} answered {got:?} at {:?} (sample {samples}); expected {expected:?}",
                    start.elapsed()
                );
            }
        }
        while let Ok(p) = sub.rx.try_recv() {
            assert!(
                p.items == want,
                "{what}: subscriber pushed {:?} (version {}) at {:?}; expected {want:?}",
                p.items,
                p.version,
                start.elapsed()
            );
            sub.latest.insert(p.data_info_id.clone(), p);
        }
        samples += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn takeover_survives_the_old_session(rf: usize, end: End) {
    let c = Cluster::start_with(
        3,
        3,
        Options {
            replication_factor: Some(rf),
            ..Options::default()
        },
    )
    .await;
    let data_id = format!("svc.ownership.{rf}.{end:?}");
    let expected = set(&[(RID, ADDR)]);

    // The subscriber, on a third session node.
    let watcher = c.create_session(2).await;
    let mut sub = Subscriber {
        rx: c.stream(2, &watcher),
        latest: Default::default(),
    };
    c.subscribe(2, &watcher, &data_id).await;

    // Session A on node 0 publishes; its client then fails over to node 1 (session B) and
    // publishes the same registerId with the same data.
    let ttl = match end {
        End::Delete => 300,
        End::Expiry => 5,
    };
    let a = c.create_session_with_ttl(0, ttl).await;
    assert!(c.publish(0, &a, &data_id, RID, &[ADDR]).await);
    c.wait_all_sessions_show(&data_id, &expected, Duration::from_secs(10))
        .await;
    wait_subscriber(
        &mut sub,
        &data_id,
        &items(&expected),
        Duration::from_secs(10),
    )
    .await;
    let b = c.create_session(1).await;
    assert!(c.publish(1, &b, &data_id, RID, &[ADDR]).await);

    // A ends.
    let ended_at = match end {
        End::Delete => {
            assert_eq!(delete_session(&c, 0, &a).await, 204);
            Instant::now()
        }
        End::Expiry => {
            // Nobody heartbeats A any more; it expires within its TTL (+ the reaper's tick).
            // Hold from now until 20 s after it surely expired.
            Instant::now()
        }
    };
    let window = match end {
        End::Delete => Duration::from_secs(20),
        End::Expiry => Duration::from_secs(ttl + 2 + 20),
    };
    hold_for(
        &c,
        &[0, 1],
        &data_id,
        &expected,
        &mut sub,
        window,
        &format!("rf {rf}, old session ended by {end:?}"),
    )
    .await;
    if end == End::Expiry {
        assert_eq!(heartbeat(&c, 0, &a).await, 404, "A expired meanwhile");
    }
    assert_eq!(heartbeat(&c, 1, &b).await, 200, "B alive the whole time");
    assert!(ended_at.elapsed() >= Duration::from_secs(20));

    // B's own end still removes it everywhere (ownership is not stickiness).
    assert_eq!(delete_session(&c, 1, &b).await, 204);
    c.wait_all_sessions_show(&data_id, &PublisherSet::new(), Duration::from_secs(5))
        .await;
    wait_subscriber(&mut sub, &data_id, &[], Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rf3_a_takeover_survives_the_old_sessions_delete() {
    takeover_survives_the_old_session(3, End::Delete).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rf3_a_takeover_survives_the_old_sessions_expiry() {
    takeover_survives_the_old_session(3, End::Expiry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rf1_a_takeover_survives_the_old_sessions_delete() {
    takeover_survives_the_old_session(1, End::Delete).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rf1_a_takeover_survives_the_old_sessions_expiry() {
    takeover_survives_the_old_session(1, End::Expiry).await;
}

/// A takeover racing the old session's removal: in each round, session B (node 1) takes
/// over a registerId that session A (node 0) holds while A removes it (its publisher
/// `DELETE`, or its session's `DELETE`), both sent within a few milliseconds in either
/// order. The newest owner, B, must always win, on both session nodes, and stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_racing_the_old_owners_removal_always_leaves_the_new_owner() {
    let c = Cluster::start_with(
        3,
        3,
        Options {
            replication_factor: Some(3),
            ..Options::default()
        },
    )
    .await;
    const ROUNDS: usize = 24;
    let data_id = "svc.ownership.race";
    let b = c.create_session(1).await;
    let mut expected = PublisherSet::new();
    for round in 0..ROUNDS {
        let rid = format!("race-{round}");
        let a = c.create_session(0).await;
        assert!(
            c.publish(0, &a, data_id, &rid, &[&format!("a-{round}")])
                .await
        );
        let mut with_a = expected.clone();
        with_a.insert(rid.clone(), vec![format!("a-{round}")]);
        c.wait_all_sessions_show(data_id, &with_a, Duration::from_secs(10))
            .await;

        let b_data = format!("b-{round}");
        let takeover = async {
            if round % 3 == 1 {
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            assert!(c.publish(1, &b, data_id, &rid, &[&b_data]).await);
        };
        let removal = async {
            if round % 3 == 2 {
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            if round % 2 == 0 {
                let status = c
                    .http
                    .delete(format!(
                        "{}/api/v1/sessions/{a}/publishers/{rid}",
                        c.session_url(0)
                    ))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                assert_eq!(status, 204);
            } else {
                assert_eq!(delete_session(&c, 0, &a).await, 204);
            }
        };
        tokio::join!(takeover, removal);
        expected.insert(rid.clone(), vec![b_data]);
        c.wait_all_sessions_show(data_id, &expected, Duration::from_secs(5))
            .await;
        // And it stays (no late removal, no reconciliation undoing it).
        let deadline = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < deadline {
            for n in [0, 1] {
                let got = c.query(n, data_id).await;
                assert_eq!(
                    got.as_ref(),
                    Some(&expected),
                    "round {round}: session node {n} lost the new owner's {rid}"
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
