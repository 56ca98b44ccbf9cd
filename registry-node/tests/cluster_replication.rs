//! Replication on its own: with anti-entropy all but switched off, every write and removal
//! a primary applies reaches the other owners (delta images pushed by the primary). And
//! the reverse: with every replication push dropped (`--replication-queue 0`), anti-entropy
//! alone brings each change to every owner within a bounded number of rounds, even on a
//! datum that never stops changing.

mod cluster_kit;

use cluster_kit::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn publisher_counts(cluster: &Cluster, n_data: usize) -> Vec<u64> {
    let mut out = Vec::new();
    for i in 0..n_data {
        let count = cluster
            .status(i)
            .await
            .and_then(|s| s["data"]["publisherCount"].as_u64())
            .unwrap_or(u64::MAX);
        out.push(count);
    }
    out
}

#[tokio::test]
async fn writes_and_removals_reach_every_owner_without_anti_entropy() {
    // Anti-entropy runs at start (and on membership changes) but not again within the test,
    // and sessions do not reconcile: only replication can bring the writes to the backups.
    let cluster = Cluster::start_with(
        3,
        1,
        Options {
            replication_factor: Some(3),
            anti_entropy_ms: Some(600_000),
            reconcile_ms: Some(600_000),
            ..Options::default()
        },
    )
    .await;
    let sid = cluster.create_session(0).await;
    for i in 0..40 {
        let service = format!("repl.svc-{}", i % 8);
        let rid = format!("p{i}");
        let addr = format!("10.0.0.{i}:80");
        assert!(cluster.publish(0, &sid, &service, &rid, &[&addr]).await);
    }
    poll(
        "every owner holds the 40 publishers",
        Duration::from_secs(10),
        || async { publisher_counts(&cluster, 3).await == vec![40, 40, 40] },
    )
    .await;

    // Removals travel as tombstones in the deltas.
    for i in 0..10 {
        let r = cluster
            .http
            .delete(format!(
                "{}/api/v1/sessions/{sid}/publishers/p{i}",
                cluster.session_url(0)
            ))
            .send()
            .await
            .expect("delete");
        assert!(r.status().is_success(), "{}", r.status());
    }
    poll(
        "every owner dropped the 10 removed publishers",
        Duration::from_secs(10),
        || async { publisher_counts(&cluster, 3).await == vec![30, 30, 30] },
    )
    .await;

    // Replaced data replicates too: every owner answers a fetch with the new address.
    let service = "repl.svc-3";
    assert!(
        cluster
            .publish(0, &sid, service, "p11", &["10.9.9.9:80"])
            .await
    );
    let id = data_info_id(service);
    for i in 0..3 {
        let url = format!("{}/internal/v1/data/fetch", cluster.data_url(i));
        poll(
            "the replaced publisher on every owner",
            Duration::from_secs(10),
            || {
                let url = url.clone();
                let id = id.clone();
                let http = cluster.http.clone();
                async move {
                    let Ok(r) = http
                        .post(url)
                        .json(&serde_json::json!({"ids": [id]}))
                        .send()
                        .await
                    else {
                        return false;
                    };
                    let v: serde_json::Value = r.json().await.unwrap_or_default();
                    v.to_string().contains("10.9.9.9:80") && !v.to_string().contains("10.0.0.11:80")
                }
            },
        )
        .await;
    }
}

/// Anti-entropy interval of the dropped-replication test.
const ROUND_MS: u64 = 500;

/// How long a change dropped from replication may take to reach every owner: a datum that
/// keeps changing on its primary is put off for at most four rounds in a row (it is
/// probably in flight), and pulled at the fifth; one more round for the round under way
/// when the change was made, plus the time the machine takes to run them.
fn repair_bound() -> Duration {
    Duration::from_millis(6 * ROUND_MS) + Duration::from_secs(3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_dropped_from_replication_reach_every_owner_within_a_bounded_time() {
    let cluster = Arc::new(
        Cluster::start_with(
            3,
            1,
            Options {
                replication_factor: Some(3),
                anti_entropy_ms: Some(ROUND_MS),
                reconcile_ms: Some(600_000),
                data_args: vec!["--replication-queue".into(), "0".into()],
                ..Options::default()
            },
        )
        .await,
    );
    let sid = cluster.create_session(0).await;
    // A datum that never stops changing: one more publisher every 150 ms for 8 s. Each
    // publisher must be on every owner within the bound after its publish was answered.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<parking_lot::Mutex<Vec<Instant>>> = Arc::default();
    let writer = {
        let (cluster, sid, stop, acked) =
            (cluster.clone(), sid.clone(), stop.clone(), acked.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let addr = format!("10.9.0.{i}:80");
                assert!(
                    cluster
                        .publish(0, &sid, "repl.busy", &format!("b{i}"), &[&addr])
                        .await
                );
                acked.lock().push(Instant::now());
                i += 1;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(8) {
        let counts = publisher_counts(&cluster, 3).await;
        let now = Instant::now();
        let acks = acked.lock().clone();
        // Publishers acknowledged longer than the bound ago must be everywhere.
        let due = acks.iter().filter(|t| now - **t > repair_bound()).count() as u64;
        for (node, count) in counts.iter().enumerate() {
            assert!(
                *count >= due,
                "data node {node} holds {count} publishers; {due} were acknowledged more than {:?} ago",
                repair_bound()
            );
            // How far behind this node is, in time.
            let held = (*count as usize).min(acks.len());
            if held < acks.len() {
                worst = worst.max(now - acks[held]);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let total = acked.lock().len() as u64;
    let settled = Instant::now();
    poll(
        "every owner holds every publisher",
        repair_bound(),
        || async { publisher_counts(&cluster, 3).await == vec![total; 3] },
    )
    .await;
    eprintln!(
        "replication off: worst lag while changing {worst:?}, settled {:?} after the last write",
        settled.elapsed()
    );

    // Removals (tombstones) travel the same way.
    for i in 0..10 {
        let r = cluster
            .http
            .delete(format!(
                "{}/api/v1/sessions/{sid}/publishers/b{i}",
                cluster.session_url(0)
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    poll(
        "every owner dropped the removed publishers",
        repair_bound(),
        || async { publisher_counts(&cluster, 3).await == vec![total - 10; 3] },
    )
    .await;
}
