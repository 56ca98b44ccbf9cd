//! Replication on its own: with anti-entropy all but switched off, every write and removal
//! a primary applies reaches the other owners (delta images pushed by the primary).

mod cluster_kit;

use cluster_kit::*;
use std::time::Duration;

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
