//! The client library against real registry-node processes: publish/subscribe, typed
//! errors, failover between nodes, re-registration after session loss, monotonic snapshots.

use registry_client::{
    ConnectionState, Error, ErrorCode, HttpSettings, Interest, NodeApi, Publication, Registration,
    RegistryClient, ServiceId, Snapshot,
};
use std::time::Duration;
use testkit::client::{client, config, publishers_on};
use testkit::node::Node;
use testkit::{eventually, DEADLINE};

fn data_of(snapshot: &Snapshot) -> Vec<String> {
    let mut data: Vec<String> = snapshot.all_data().map(str::to_owned).collect();
    data.sort();
    data
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_update_remove() {
    let node = Node::start(&[]);
    let urls = [node.url()];
    let publisher_client = client(&urls);
    let subscriber_client = client(&urls);

    let mut subscription = subscriber_client
        .subscribe(Interest::new("svc.basic"))
        .await
        .unwrap();
    let first = subscription
        .wait_for(DEADLINE, |_| true)
        .await
        .expect("first push");
    assert!(first.zones.is_empty(), "{first:?}");

    let mut publisher = publisher_client
        .publish(Publication::new("svc.basic", ["10.0.0.1:80"]).register_id("basic-1"))
        .await
        .unwrap();
    assert_eq!(publisher.register_id(), "basic-1");
    assert_eq!(publisher.last_published().version, 1);
    assert_eq!(
        publisher.data_info_id(),
        "svc.basic#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP"
    );
    let seen = subscription
        .wait_for(DEADLINE, |s| data_of(s) == strings(&["10.0.0.1:80"]))
        .await
        .expect("push with the published data");
    assert!(seen.version > first.version);

    let updated = publisher
        .update(["10.0.0.1:80", "10.0.0.2:80"])
        .await
        .unwrap();
    assert_eq!(updated.version, 2);
    let after_update = subscription
        .wait_for(DEADLINE, |s| {
            data_of(s) == strings(&["10.0.0.1:80", "10.0.0.2:80"])
        })
        .await
        .expect("push with the updated data");
    assert!(after_update.version > seen.version);
    assert_eq!(
        publishers_on(&node.url(), "svc.basic").await,
        vec![(
            "basic-1".to_owned(),
            strings(&["10.0.0.1:80", "10.0.0.2:80"])
        )]
    );

    publisher.remove().await.unwrap();
    let emptied = subscription
        .wait_for(DEADLINE, |s| {
            s.zones.is_empty() && s.version > after_update.version
        })
        .await
        .expect("push without the removed publisher");
    assert!(emptied.zones.is_empty());
    assert!(publishers_on(&node.url(), "svc.basic").await.is_empty());

    // Closing a client ends its session: its publishers vanish without waiting for the TTL.
    publisher_client
        .publish(Publication::new("svc.basic", ["10.0.0.3:80"]))
        .await
        .unwrap();
    subscription
        .wait_for(DEADLINE, |s| data_of(s) == strings(&["10.0.0.3:80"]))
        .await
        .expect("push of the second publisher");
    publisher_client.close().await;
    subscription
        .wait_for(DEADLINE, |s| s.zones.is_empty())
        .await
        .expect("push after the publishing client closed");
    subscriber_client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_typed_and_change_nothing() {
    let node = Node::start(&[]);
    let client = client(&[node.url()]);

    let err = client
        .publish(Publication::new("", ["x"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::InvalidArgument), "{err}");
    assert!(err.to_string().contains("dataId"), "{err}");

    let too_many: Vec<String> = (0..1001).map(|i| format!("item-{i}")).collect();
    let err = client
        .publish(Publication::new("svc.errors", too_many))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::InvalidArgument), "{err}");

    let mut publisher = client
        .publish(Publication::new("svc.errors", ["ok"]).register_id("errors-1"))
        .await
        .unwrap();
    let err = client
        .publish(Publication::new("svc.other", ["x"]).register_id("errors-1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::Conflict), "{err}");
    assert!(!err.is_retryable());

    // A rejected update keeps the previous data.
    let err = publisher
        .update(vec!["y".repeat(17 * 1024)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            Some(ErrorCode::InvalidArgument | ErrorCode::PayloadTooLarge)
        ),
        "{err}"
    );
    assert_eq!(
        publishers_on(&node.url(), "svc.errors").await,
        vec![("errors-1".to_owned(), strings(&["ok"]))]
    );
    assert!(publishers_on(&node.url(), "svc.other").await.is_empty());

    let err = client.unpublish("never-published").await.unwrap_err();
    assert!(matches!(err, Error::NotHeld { .. }), "{err:?}");

    let err = client
        .subscribe(Interest::new("svc.errors").zone("bad#@#zone"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::InvalidArgument), "{err}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_sent_and_a_missing_one_is_unauthorized() {
    let node = Node::start(&["--token", "s3cret"]);
    let anonymous = client(&[node.url()]);
    let started = std::time::Instant::now();
    let err = anonymous
        .publish(Publication::new("svc.token", ["a"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::Unauthorized), "{err}");
    // Refused at once, not after the operation timeout.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    anonymous.close().await;

    let authorized = RegistryClient::new(config(&[node.url()]).token("s3cret")).unwrap();
    let publisher = authorized
        .publish(Publication::new("svc.token", ["a"]))
        .await
        .unwrap();
    let answer = authorized
        .endpoints()
        .data(&ServiceId::new("svc.token"), None)
        .await
        .unwrap();
    assert_eq!(answer.publishers.len(), 1);
    assert_eq!(answer.publishers[0].register_id, publisher.register_id());
    authorized.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_next_node_and_reregisters_everything() {
    // Two standalone nodes (each its own registry): the client must move its session,
    // publisher and subscriber to the second when the first dies.
    let mut first = Node::start(&[]);
    let second = Node::start(&[]);
    let urls = [first.url(), second.url()];
    let publisher_client = client(&urls);
    let subscriber_client = client(&urls);

    let mut publisher = publisher_client
        .publish(Publication::new("svc.failover", ["10.0.0.1:80"]).register_id("failover-pub"))
        .await
        .unwrap();
    let mut subscription = subscriber_client
        .subscribe(Interest::new("svc.failover").register_id("failover-sub"))
        .await
        .unwrap();
    let before = subscription
        .wait_for(DEADLINE, |s| data_of(s) == strings(&["10.0.0.1:80"]))
        .await
        .expect("push from the first node");
    assert_eq!(publisher_client.session().unwrap().0, first.url());
    assert_eq!(subscriber_client.session().unwrap().0, first.url());
    assert!(publishers_on(&second.url(), "svc.failover")
        .await
        .is_empty());

    first.kill();
    // While no node serves it, the last snapshot stays available.
    assert_eq!(subscription.latest().as_ref(), Some(&before));

    for (name, client) in [
        ("publisher", &publisher_client),
        ("subscriber", &subscriber_client),
    ] {
        let second_url = second.url();
        eventually(
            &format!("{name} client on the second node"),
            DEADLINE,
            || {
                let session = client.session();
                let second_url = second_url.clone();
                async move { session.filter(|(url, _)| *url == second_url) }
            },
        )
        .await;
    }
    // Re-registered with the same registerId and data.
    eventually(
        "publisher re-registered on the second node",
        DEADLINE,
        || async {
            let publishers = publishers_on(&second.url(), "svc.failover").await;
            (publishers == vec![("failover-pub".to_owned(), strings(&["10.0.0.1:80"]))])
                .then_some(())
        },
    )
    .await;

    // The re-registered subscriber gets pushes from the second node.
    publisher.update(["10.0.0.9:80"]).await.unwrap();
    let after = subscription
        .wait_for(DEADLINE, |s| data_of(s) == strings(&["10.0.0.9:80"]))
        .await
        .expect("push from the second node");
    assert_eq!(after.register_id, "failover-sub");
    assert!(after.version > before.version);
    publisher_client.close().await;
    subscriber_client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reregisters_after_the_server_drops_the_session() {
    let node = Node::start(&[]);
    let urls = [node.url()];
    let owner = client(&urls);
    let other = client(&urls);
    let mut connection = owner.connection();

    owner
        .publish(Publication::new("svc.expiry", ["a:1"]).register_id("expiry-pub"))
        .await
        .unwrap();
    let mut subscription = owner
        .subscribe(Interest::new("svc.expiry").register_id("expiry-sub"))
        .await
        .unwrap();
    subscription
        .wait_for(DEADLINE, |s| data_of(s) == strings(&["a:1"]))
        .await
        .expect("own data pushed");
    let (_, old_session) = owner.session().unwrap();

    // The node forgets the session, as on expiry: its publishers go everywhere.
    let api = NodeApi::new(
        reqwest::Client::new(),
        &node.url(),
        &HttpSettings::default(),
    )
    .unwrap();
    api.delete_session(&old_session).await.unwrap();

    let new_session = eventually("a new session", DEADLINE, || {
        let session = owner.session();
        let old_session = old_session.clone();
        async move { session.map(|(_, id)| id).filter(|id| *id != old_session) }
    })
    .await;
    assert_ne!(new_session, old_session);
    connection.mark_changed();
    assert!(matches!(
        &*connection.borrow_and_update(),
        ConnectionState::Connected { .. }
    ));
    eventually("publisher back under its registerId", DEADLINE, || async {
        let publishers = publishers_on(&node.url(), "svc.expiry").await;
        (publishers == vec![("expiry-pub".to_owned(), strings(&["a:1"]))]).then_some(())
    })
    .await;
    // The old session id is really gone on the node.
    assert_eq!(
        api.heartbeat(&old_session, std::time::Duration::from_secs(2))
            .await
            .unwrap_err()
            .code(),
        Some(&ErrorCode::NotFound)
    );

    // The re-registered subscriber gets further changes.
    other
        .publish(Publication::new("svc.expiry", ["b:2"]))
        .await
        .unwrap();
    subscription
        .wait_for(DEADLINE, |s| data_of(s) == strings(&["a:1", "b:2"]))
        .await
        .expect("push after re-registration");
    owner.close().await;
    other.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_gets_everything_back() {
    let mut node = Node::start(&[]);
    let urls = [node.url()];
    let owner = client(&urls);
    owner
        .publish(Publication::new("svc.restart", ["r:1"]).register_id("restart-pub"))
        .await
        .unwrap();
    let mut subscription = owner.subscribe(Interest::new("svc.restart")).await.unwrap();
    subscription
        .wait_for(DEADLINE, |s| data_of(s) == strings(&["r:1"]))
        .await
        .expect("push before restart");

    node.restart();
    eventually(
        "publisher re-registered on the restarted node",
        DEADLINE,
        || async {
            let api = NodeApi::new(
                reqwest::Client::new(),
                &node.url(),
                &HttpSettings::default(),
            )
            .ok()?;
            let answer = api.data(&ServiceId::new("svc.restart"), None).await.ok()?;
            (answer
                .publishers
                .iter()
                .map(|p| p.register_id.as_str())
                .collect::<Vec<_>>()
                == ["restart-pub"])
            .then_some(())
        },
    )
    .await;
    let other = client(&urls);
    other
        .publish(Publication::new("svc.restart", ["r:2"]))
        .await
        .unwrap();
    subscription
        .wait_for(DEADLINE, |s| data_of(s) == strings(&["r:1", "r:2"]))
        .await
        .expect("push from the restarted node");
    owner.close().await;
    other.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_only_move_forward() {
    let node = Node::start(&[]);
    let urls = [node.url()];
    let publisher_client = client(&urls);
    let subscriber_client = client(&urls);
    let subscription = subscriber_client
        .subscribe(Interest::new("svc.monotonic"))
        .await
        .unwrap();
    let mut watch = subscription.watch();
    let collector = tokio::spawn(async move {
        let mut versions = Vec::new();
        while watch.changed().await.is_ok() {
            let Some(snapshot) = watch.borrow_and_update().clone() else {
                continue;
            };
            versions.push(snapshot.version);
            if snapshot.all_data().any(|item| item == "last") {
                break;
            }
        }
        versions
    });
    let mut publisher = publisher_client
        .publish(Publication::new("svc.monotonic", ["0"]))
        .await
        .unwrap();
    for round in 1..40 {
        publisher.update([round.to_string()]).await.unwrap();
        if round % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(120)).await;
        }
    }
    publisher.update(["last"]).await.unwrap();
    let versions = tokio::time::timeout(DEADLINE, collector)
        .await
        .expect("the last update reached the subscriber")
        .unwrap();
    assert!(versions.len() >= 2, "{versions:?}");
    assert!(
        versions.windows(2).all(|pair| pair[0] < pair[1]),
        "{versions:?}"
    );
    drop(subscription);
    publisher_client.close().await;
    subscriber_client.close().await;
}

fn pause(node: &Node) {
    nix::sys::signal::kill(node.pid(), nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
}

fn resume(node: &Node) {
    nix::sys::signal::kill(node.pid(), nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
}

/// Resumes a paused node even when the test fails, so that it can be killed and reaped.
struct Resume<'a>(&'a Node);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        resume(self.0);
    }
}

fn impatient(urls: &[String]) -> RegistryClient {
    let config = config(urls).request_timeout(Duration::from_secs(2));
    RegistryClient::new(config).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_when_a_node_hangs() {
    // A hung node accepts connections but never answers: only the heartbeats notice.
    let first = Node::start(&[]);
    let second = Node::start(&[]);
    let urls = [first.url(), second.url()];
    let owner = impatient(&urls);
    owner
        .publish(Publication::new("svc.hang", ["h:1"]).register_id("hang-pub"))
        .await
        .unwrap();
    assert_eq!(owner.session().unwrap().0, first.url());

    pause(&first);
    let _resume = Resume(&first);
    let second_url = second.url();
    eventually("session moved to the second node", DEADLINE, || {
        let session = owner.session();
        let second_url = second_url.clone();
        async move { session.filter(|(url, _)| *url == second_url) }
    })
    .await;
    assert_eq!(
        publishers_on(&second.url(), "svc.hang").await,
        vec![("hang-pub".to_owned(), strings(&["h:1"]))]
    );
    owner.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_only_node_hanging_then_recovering_keeps_the_publisher() {
    // The client gives up on its session while the node hangs, opens a new one when it
    // recovers, and re-registers the same registerId: the node first refuses it (409, the
    // old session still holds it) until the old session is deleted or expires.
    let node = Node::start(&[]);
    let urls = [node.url()];
    let owner = impatient(&urls);
    let watcher = client(&urls);
    owner
        .publish(Publication::new("svc.recover", ["r:1"]).register_id("recover-pub"))
        .await
        .unwrap();
    let (_, old_session) = owner.session().unwrap();
    let mut connection = owner.connection();

    pause(&node);
    {
        let _resume = Resume(&node);
        tokio::time::timeout(
            DEADLINE,
            connection.wait_for(|state| matches!(state, ConnectionState::Connecting)),
        )
        .await
        .expect("the client noticed the hang")
        .unwrap();
    }
    let new_session = eventually("a new session after recovery", DEADLINE, || {
        let session = owner.session();
        let old_session = old_session.clone();
        async move { session.map(|(_, id)| id).filter(|id| *id != old_session) }
    })
    .await;
    assert_ne!(new_session, old_session);
    eventually(
        "the publisher held by the new session",
        DEADLINE,
        || async {
            let publishers = publishers_on(&node.url(), "svc.recover").await;
            if publishers != vec![("recover-pub".to_owned(), strings(&["r:1"]))] {
                return None;
            }
            // Held by the new session: a watcher sees it and it survives the old one's TTL.
            Some(())
        },
    )
    .await;
    let api = NodeApi::new(
        reqwest::Client::new(),
        &node.url(),
        &HttpSettings::default(),
    )
    .unwrap();
    eventually("the old session gone", DEADLINE, || async {
        api.heartbeat(&old_session, std::time::Duration::from_secs(2))
            .await
            .err()
            .filter(|err| err.code() == Some(&ErrorCode::NotFound))
    })
    .await;
    let mut subscription = watcher
        .subscribe(Interest::new("svc.recover"))
        .await
        .unwrap();
    subscription
        .wait_for(DEADLINE, |s| data_of(s) == strings(&["r:1"]))
        .await
        .expect("the re-registered publisher is pushed");
    owner.close().await;
    watcher.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_sees_every_change_until_its_guard_is_dropped() {
    let node = Node::start(&[]);
    let urls = [node.url()];
    let watcher = client(&urls);
    let publisher_client = client(&urls);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let guard = watcher
        .subscribe(Interest::new("svc.callback").register_id("callback-sub"))
        .await
        .unwrap()
        .on_snapshot(move |snapshot| {
            let _ = tx.send(snapshot);
        });
    let mut publisher = publisher_client
        .publish(Publication::new("svc.callback", ["cb:1"]))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let snapshot = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("callback called")
            .unwrap();
        if data_of(&snapshot) == strings(&["cb:1"]) {
            break;
        }
    }
    // Dropping the guard unsubscribes: the node forgets the subscriber.
    drop(guard);
    eventually("subscriber removed on the node", DEADLINE, || async {
        let api = NodeApi::new(
            reqwest::Client::new(),
            &node.url(),
            &HttpSettings::default(),
        )
        .ok()?;
        let services = api.services(Some("svc.callback"), None).await.ok()?;
        let row = services.services.into_iter().next()?;
        (row.subscriber_count == Some(0)).then_some(())
    })
    .await;
    publisher.update(["cb:2"]).await.unwrap();
    assert!(rx.recv().await.is_none(), "callback dropped with its guard");
    publisher_client.close().await;
    watcher.close().await;
}

/// How many requests `url` answered with 409, from its `/metrics`.
async fn conflicts_answered(url: &str) -> u64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter(|line| {
            line.starts_with("registry_http_requests") && line.contains("status=\"409\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reregistration_is_surfaced_and_not_retried() {
    // The owner publishes and subscribes on the first node; on the second, another client
    // already holds the same registerIds. When the first dies, the owner fails over and the
    // second node refuses those two for good (409): the owner must say so, not retry forever.
    let mut first = Node::start(&[]);
    let second = Node::start(&[]);
    let owner = client(&[first.url(), second.url()]);
    let thief = client(&[second.url()]);

    let mut publisher = owner
        .publish(Publication::new("svc.refused", ["mine:1"]).register_id("refused-pub"))
        .await
        .unwrap();
    let kept = owner
        .publish(Publication::new("svc.refused", ["kept:1"]).register_id("kept-pub"))
        .await
        .unwrap();
    let mut subscription = owner
        .subscribe(Interest::new("svc.refused").register_id("refused-sub"))
        .await
        .unwrap();
    subscription
        .wait_for(DEADLINE, |s| data_of(s) == strings(&["kept:1", "mine:1"]))
        .await
        .expect("push from the first node");
    assert!(publisher.registration().is_registered());
    assert!(subscription.registration().is_registered());
    assert_eq!(owner.session().unwrap().0, first.url());

    let theirs = thief
        .publish(Publication::new("svc.refused", ["theirs:1"]).register_id("refused-pub"))
        .await
        .unwrap();
    let _their_subscription = thief
        .subscribe(Interest::new("svc.refused").register_id("refused-sub"))
        .await
        .unwrap();

    let mut publisher_state = publisher.watch_registration();
    first.kill();
    let refusal = tokio::time::timeout(
        DEADLINE,
        publisher_state.wait_for(|state| state.refusal().is_some()),
    )
    .await
    .expect("the publisher's refusal surfaced")
    .expect("client alive")
    .refusal()
    .cloned()
    .unwrap();
    assert_eq!(refusal.code(), Some(&ErrorCode::Conflict), "{refusal}");
    assert!(refusal.to_string().contains(&second.url()), "{refusal}");
    // The subscription's stream ends, and says why.
    tokio::time::timeout(DEADLINE, async {
        // Pushes from the first node may still be unread; the refusal ends the stream.
        while subscription.next().await.is_some() {}
    })
    .await
    .expect("the subscription ended");
    let Registration::Refused(err) = subscription.registration() else {
        panic!("subscriber not refused: {:?}", subscription.registration());
    };
    assert_eq!(err.code(), Some(&ErrorCode::Conflict), "{err}");

    // The session itself is fine, and what was not refused is registered on it.
    let second_url = second.url();
    eventually("the session on the second node", DEADLINE, || {
        let session = owner.session();
        let second_url = second_url.clone();
        async move { session.filter(|(url, _)| *url == second_url) }
    })
    .await;
    eventually(
        "the other publisher registered on the second node",
        DEADLINE,
        || async { kept.registration().is_registered().then_some(()) },
    )
    .await;
    assert_eq!(
        publishers_on(&second.url(), "svc.refused").await,
        vec![
            ("kept-pub".to_owned(), strings(&["kept:1"])),
            ("refused-pub".to_owned(), strings(&["theirs:1"])),
        ]
    );

    // Refused ones are not retried: no further 409 over many retry intervals (300 ms).
    let conflicts = conflicts_answered(&second.url()).await;
    assert!(conflicts >= 2, "{conflicts} conflicts answered");
    let window = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < window {
        assert_eq!(
            conflicts_answered(&second.url()).await,
            conflicts,
            "a refused registration was retried"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(publisher.registration().refusal().is_some());

    // Once the registerId is free, an update offers the publisher again.
    theirs.remove().await.unwrap();
    publisher.update(["mine:2"]).await.unwrap();
    assert!(publisher.registration().is_registered());
    assert_eq!(
        publishers_on(&second.url(), "svc.refused").await,
        vec![
            ("kept-pub".to_owned(), strings(&["kept:1"])),
            ("refused-pub".to_owned(), strings(&["mine:2"])),
        ]
    );
    owner.close().await;
    thief.close().await;
}
