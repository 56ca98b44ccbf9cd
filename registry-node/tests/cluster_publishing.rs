//! The issue 3 scenario with a throughput floor: a data node SIGKILLed during continuous publishing (≥ 200 publishes/s from concurrent clients) loses nothing. Its own test binary, so that cargo runs it alone rather than beside the other cluster scenarios.

mod cluster_kit;

use cluster_kit::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Publishes/s the data-node-kill scenario must sustain (issue 3: 200);
/// `REGISTRY_TEST_MIN_RATE` lowers or raises it.
fn min_publish_rate() -> f64 {
    std::env::var("REGISTRY_TEST_MIN_RATE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(200.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_data_node_during_continuous_publishing_loses_nothing() {
    const PUBLISHERS: usize = 32;
    let c = Cluster::start(3, 2).await;
    // Many services, as in a real registry: each datum stays small, so every change costs
    // the data plane about the same throughout the run.
    let services: Vec<String> = (0..100).map(|i| format!("svc-{i}")).collect();
    // Subscribers of every service on both session nodes.
    let mut subs = Vec::new();
    for s in 0..2 {
        let sid = c.create_session(s).await;
        let rx = c.stream(s, &sid);
        futures::future::join_all(services.iter().map(|svc| c.subscribe(s, &sid, svc))).await;
        subs.push(Subscriber {
            rx,
            latest: BTreeMap::new(),
        });
    }
    let mut c = c;
    let log = Arc::new(PublishLog::default());
    let stop = Arc::new(AtomicBool::new(false));
    // Every client has its session before the clock starts.
    let ready = Arc::new(tokio::sync::Barrier::new(PUBLISHERS + 1));
    let mut tasks = Vec::new();
    for t in 0..PUBLISHERS {
        let session = t % 2;
        // The clients hold no lock on the cluster: killing a node never pauses them.
        let (http, base, sid) = (
            c.http.clone(),
            c.session_url(session),
            c.create_session(session).await,
        );
        let (log, stop, services, ready) =
            (log.clone(), stop.clone(), services.clone(), ready.clone());
        tasks.push(tokio::spawn(async move {
            ready.wait().await;
            let publish = |svc: String, rid: String, data: String| {
                let (http, base, sid) = (http.clone(), base.clone(), sid.clone());
                async move { publish_at(&http, &base, &sid, &svc, &rid, &[&data]).await }
            };
            publish_until_stopped(t, PUBLISHERS, &services, &stop, &log, publish).await;
        }));
    }
    ready.wait().await;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.data[0].kill();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let members: Vec<String> = c.data[1..].iter().map(|d| d.addr.clone()).collect();
    c.set_membership(&members, &[]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("publisher task");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let expected = log.expected();
    let published: usize = expected.values().map(|s| s.len()).sum();
    let rate = published as f64 / elapsed;
    eprintln!(
        "published {published} in {elapsed:.1}s ({rate:.0}/s) from {PUBLISHERS} clients, {} failed, data node killed {:?} in",
        log.failures(),
        killed_at.duration_since(started)
    );
    let min_rate = min_publish_rate();
    assert!(
        rate >= min_rate,
        "publishing rate {rate:.0}/s is below {min_rate}/s (REGISTRY_TEST_MIN_RATE overrides)"
    );
    assert_eq!(log.failures(), 0, "publishes failed while a data node died");
    let c = &c;
    let converge_from = Instant::now();
    let within = Duration::from_secs(5);
    futures::future::join_all(services.iter().map(|svc| {
        let want = expected.get(svc).cloned().unwrap_or_default();
        async move { c.wait_all_sessions_show(svc, &want, within).await }
    }))
    .await;
    for sub in &mut subs {
        for svc in &services {
            let want = items(&expected.get(svc).cloned().unwrap_or_default());
            let left = within.saturating_sub(converge_from.elapsed());
            wait_subscriber(sub, svc, &want, left.max(Duration::from_millis(1))).await;
        }
    }
    eprintln!(
        "converged {:?} after publishing stopped",
        converge_from.elapsed()
    );
}
