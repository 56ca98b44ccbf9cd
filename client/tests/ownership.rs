//! A client that fails over keeps its publisher when its old session ends (API.md promise
//! 5): 3 data nodes (replication factor 3), the publishing client on session nodes 0 and 1,
//! a subscribing client on session node 2. Node 0 is SIGSTOPped until the client has moved
//! to node 1 and re-published there, then SIGCONTed: the old session expires on a live node.
//! For 20 s after, both session nodes list the publisher every 250 ms and the subscriber is
//! never handed a snapshot without it.

use registry_client::{Interest, Publication, RegistryClient};
use std::time::{Duration, Instant};
use testkit::client::try_publishers_on;
use testkit::net::loopback_addr;
use testkit::node::{wait_ready, Node};
use testkit::{eventually, DEADLINE};

/// Longer than the client needs to fail over, so the stopped node keeps its lease: the
/// publisher is never missing, not even between the stop and the re-publish.
const LEASE_MS: u64 = 10_000;
const TTL: Duration = Duration::from_secs(5);

fn data_node(addr: &str, members: &str, i: usize) -> Node {
    Node::spawn(
        [
            "--role",
            "data",
            "--data-addr",
            addr,
            "--members",
            members,
            "--node-name",
            &format!("data-{i}"),
            "--session-lease-ms",
            &LEASE_MS.to_string(),
            "--anti-entropy-ms",
            "500",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    )
}

fn session_node(name: &str, members: &str) -> Node {
    Node::start_at(
        &loopback_addr(),
        &[
            "--role",
            "session",
            "--node-name",
            name,
            "--members",
            members,
            "--session-lease-ms",
            &LEASE_MS.to_string(),
            "--reconcile-ms",
            "500",
        ],
    )
}

/// Fails over faster than the node's lease and the session's TTL.
fn client(urls: &[String]) -> RegistryClient {
    let mut config = testkit::client::config(urls)
        .session_ttl(TTL)
        .request_timeout(Duration::from_secs(2));
    config.connect_timeout = Duration::from_secs(1);
    RegistryClient::new(config).expect("client")
}

struct Resume(nix::unistd::Pid);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_failed_over_keeps_its_publisher_when_the_old_session_expires() {
    let addrs: Vec<String> = (0..3).map(|_| loopback_addr()).collect();
    let members = addrs.join(",");
    let _data: Vec<Node> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| data_node(a, &members, i))
        .collect();
    let sessions: Vec<Node> = (0..3)
        .map(|i| session_node(&format!("session-{i}"), &members))
        .collect();
    for s in &sessions {
        wait_ready(&s.url()).await;
    }
    let (first, second, third) = (&sessions[0], &sessions[1], &sessions[2]);
    let data_id = "svc.ownership.client";
    let want = vec![("pay-1".to_owned(), vec!["10.2.0.1:8080".to_owned()])];

    let owner = client(&[first.url(), second.url()]);
    let watcher = client(&[third.url()]);
    let _publisher = owner
        .publish(Publication::new(data_id, ["10.2.0.1:8080"]).register_id("pay-1"))
        .await
        .unwrap();
    assert_eq!(owner.session().unwrap().0, first.url());
    let mut subscription = watcher.subscribe(Interest::new(data_id)).await.unwrap();
    let first_view = subscription
        .wait_for(DEADLINE, |s| s.all_data().any(|d| d == "10.2.0.1:8080"))
        .await;
    assert!(
        first_view.is_some(),
        "the subscriber never saw the publisher"
    );
    let mut snapshots = subscription.watch();
    snapshots.mark_unchanged();
    let checker = tokio::spawn(async move {
        // Every snapshot the subscriber is handed from now on holds the publisher.
        let mut seen = 0usize;
        while snapshots.changed().await.is_ok() {
            let Some(s) = snapshots.borrow_and_update().clone() else {
                continue;
            };
            seen += 1;
            let data: Vec<&str> = s.all_data().collect();
            assert_eq!(
                data,
                ["10.2.0.1:8080"],
                "snapshot {seen} (version {}) lost the publisher",
                s.version
            );
        }
    });

    // Node 0 hangs: the client fails over to node 1 and re-publishes pay-1 there.
    nix::sys::signal::kill(first.pid(), nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let resume = Resume(first.pid());
    let second_url = second.url();
    eventually("the client moved to session node 1", DEADLINE, || {
        let session = owner.session();
        let second_url = second_url.clone();
        async move { session.filter(|(url, _)| *url == second_url) }
    })
    .await;
    eventually(
        "pay-1 re-published through session node 1",
        DEADLINE,
        || async { (try_publishers_on(&second.url(), data_id).await.ok()? == want).then_some(()) },
    )
    .await;
    // Stopped beyond the old session's TTL, so that it expires as soon as node 0 runs.
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    drop(resume);

    let start = Instant::now();
    let mut samples = 0;
    while start.elapsed() < Duration::from_secs(20) {
        for node in [first, second] {
            let got = try_publishers_on(&node.url(), data_id).await.ok();
            assert_eq!(
                got.as_ref(),
                Some(&want),
                "{} at {:?} after the resume (sample {samples})",
                node.url(),
                start.elapsed()
            );
        }
        if checker.is_finished() {
            break;
        }
        samples += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if checker.is_finished() {
        if let Err(e) = checker.await {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("the subscriber's snapshots ended");
    }
    checker.abort();
    assert_eq!(owner.session().unwrap().0, second.url());
    drop(subscription);
    owner.close().await;
    watcher.close().await;
}
