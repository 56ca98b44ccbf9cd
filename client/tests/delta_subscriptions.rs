//! Delta subscriptions (`Interest::delta`) against a real registry-node: the node sends
//! `event: delta` after a first full push, the library applies it, and the application
//! sees the same lists as a subscription of full pushes, also across a node restart (a new
//! session: full push first, deltas after).

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use registry_client::{Interest, Publication, Publisher, Snapshot, Subscription};
use testkit::client::client;
use testkit::node::Node;
use testkit::DEADLINE;

/// Every zone's items, sorted: a zone is a multiset (a delta-applied list may be in
/// another order than the full push).
fn multisets(snapshot: &Snapshot) -> BTreeMap<String, Vec<String>> {
    let mut zones = snapshot.zones.clone();
    zones.values_mut().for_each(|items| items.sort());
    zones
}

fn expected(live: &BTreeMap<usize, Vec<String>>) -> BTreeMap<String, Vec<String>> {
    let mut zones: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (p, data) in live {
        if !data.is_empty() {
            zones
                .entry(format!("z{}", p % 2))
                .or_default()
                .extend(data.iter().cloned());
        }
    }
    zones.values_mut().for_each(|items| items.sort());
    zones
}

async fn delta_pushes_sent(url: &str) -> u64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("registry_delta_pushes_sent_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the delta push counter")
}

async fn both_show(
    full: &mut Subscription,
    delta: &mut Subscription,
    want: &BTreeMap<String, Vec<String>>,
    what: &str,
) {
    for (name, sub) in [("full", full), ("delta", delta)] {
        sub.wait_for(DEADLINE, |s| multisets(s) == *want)
            .await
            .unwrap_or_else(|| {
                panic!(
                    "{name} subscription at {what}: {:?}, want {want:?}",
                    sub.latest()
                )
            });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_subscription_yields_the_same_lists_as_a_full_one() {
    let mut node = Node::start(&[]);
    let urls = [node.url()];
    let publishing = client(&urls);
    let watching = client(&urls);
    let mut full = watching
        .subscribe(Interest::new("svc.delta"))
        .await
        .unwrap();
    let mut delta = watching
        .subscribe(Interest::new("svc.delta").delta(true))
        .await
        .unwrap();

    let pool: Vec<String> = (0..6).map(|i| format!("10.0.0.{i}:80")).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let random_data = |rng: &mut rand::rngs::StdRng| -> Vec<String> {
        (0..rng.random_range(1..4))
            .map(|_| pool[rng.random_range(0..pool.len())].clone())
            .collect()
    };
    let mut live: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut publishers: BTreeMap<usize, Publisher> = BTreeMap::new();
    for p in 0..12 {
        let data = random_data(&mut rng);
        let publication = Publication::new("svc.delta", data.clone())
            .register_id(format!("p{p}"))
            .zone(format!("z{}", p % 2));
        publishers.insert(p, publishing.publish(publication).await.unwrap());
        live.insert(p, data);
    }
    both_show(&mut full, &mut delta, &expected(&live), "start").await;

    for round in 0..15 {
        let p = rng.random_range(0..12usize);
        let data = random_data(&mut rng);
        live.insert(p, data.clone());
        publishers.get_mut(&p).unwrap().update(data).await.unwrap();
        let what = format!("round {round}");
        both_show(&mut full, &mut delta, &expected(&live), &what).await;
    }
    let before_restart = delta_pushes_sent(&node.url()).await;
    assert!(before_restart >= 10, "{before_restart} deltas");

    // A restarted node: a new session, a full push first, then deltas again.
    node.restart();
    both_show(&mut full, &mut delta, &expected(&live), "after the restart").await;
    for round in 15..20 {
        let p = rng.random_range(0..12usize);
        let data = random_data(&mut rng);
        live.insert(p, data.clone());
        publishers.get_mut(&p).unwrap().update(data).await.unwrap();
        let what = format!("round {round}");
        both_show(&mut full, &mut delta, &expected(&live), &what).await;
    }
    assert!(delta_pushes_sent(&node.url()).await >= 3);
    watching.close().await;
    publishing.close().await;
}
