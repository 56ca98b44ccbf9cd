//! The client against a real cluster: two session nodes over one data node, so that the
//! datum versions on both session nodes are the same registry's.

use registry_client::{HttpSettings, Interest, NodeApi, Publication, ServiceId};
use std::time::Duration;
use testkit::client::client;
use testkit::net::loopback_addr;
use testkit::node::{wait_ready, Node};
use testkit::{eventually, DEADLINE};

const LEASE_MS: u64 = 3000;

fn session_node(name: &str, data_addr: &str) -> Node {
    Node::start(&[
        "--role",
        "session",
        "--node-name",
        name,
        "--members",
        data_addr,
        "--session-lease-ms",
        &LEASE_MS.to_string(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_between_session_nodes_without_losing_or_rewinding_anything() {
    let data_addr = loopback_addr();
    let _data = Node::spawn(
        [
            "--role",
            "data",
            "--data-addr",
            &data_addr,
            "--members",
            &data_addr,
            "--node-name",
            "data-0",
            "--session-lease-ms",
            &LEASE_MS.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    );
    let mut first = session_node("session-0", &data_addr);
    let second = session_node("session-1", &data_addr);
    wait_ready(&first.url()).await;
    wait_ready(&second.url()).await;
    let urls = [first.url(), second.url()];
    let publisher_client = client(&urls);
    let subscriber_client = client(&urls);

    let mut publisher = publisher_client
        .publish(Publication::new("svc.cluster", ["c:1"]).register_id("cluster-pub"))
        .await
        .unwrap();
    let subscription = subscriber_client
        .subscribe(Interest::new("svc.cluster"))
        .await
        .unwrap();
    let mut watch = subscription.watch();
    let collector = tokio::spawn(async move {
        let mut seen = Vec::new();
        while watch.changed().await.is_ok() {
            let Some(snapshot) = watch.borrow_and_update().clone() else {
                continue;
            };
            let done = snapshot.all_data().any(|item| item == "c:2");
            seen.push(snapshot.version);
            if done {
                break;
            }
        }
        seen
    });
    assert_eq!(publisher_client.session().unwrap().0, first.url());
    let api = NodeApi::new(
        reqwest::Client::new(),
        &second.url(),
        &HttpSettings::default(),
    )
    .unwrap();
    // Published through the first session node, visible through the second.
    eventually(
        "the publisher visible on the second session node",
        DEADLINE,
        || async {
            let answer = api.data(&ServiceId::new("svc.cluster"), None).await.ok()?;
            (answer.publishers.len() == 1).then_some(())
        },
    )
    .await;

    first.kill();
    let second_url = second.url();
    for client in [&publisher_client, &subscriber_client] {
        let second_url = second_url.clone();
        eventually("client moved to the second session node", DEADLINE, || {
            let session = client.session();
            let second_url = second_url.clone();
            async move { session.filter(|(url, _)| *url == second_url) }
        })
        .await;
    }
    publisher.update(["c:2"]).await.unwrap();
    let versions = tokio::time::timeout(DEADLINE, collector)
        .await
        .expect("the update after failover reached the subscriber")
        .unwrap();
    assert!(
        versions.windows(2).all(|pair| pair[0] < pair[1]),
        "{versions:?}"
    );

    // The dead session node's lease runs out on the data node: the publisher, now held by
    // the second session node under the same registerId, must survive it. Blocking queries
    // follow every change until the lease has surely expired.
    let until = tokio::time::Instant::now() + Duration::from_millis(LEASE_MS * 2 + 1000);
    let mut later = api
        .data(&ServiceId::new("svc.cluster"), None)
        .await
        .unwrap();
    while let Some(left) = until.checked_duration_since(tokio::time::Instant::now()) {
        later = api
            .data(&ServiceId::new("svc.cluster"), Some((later.version, left)))
            .await
            .unwrap();
    }
    let publishers: Vec<_> = later
        .publishers
        .iter()
        .map(|p| (p.register_id.as_str(), p.data.clone()))
        .collect();
    assert_eq!(publishers, vec![("cluster-pub", vec!["c:2".to_owned()])]);
    drop(subscription);
    publisher_client.close().await;
    subscriber_client.close().await;
}
