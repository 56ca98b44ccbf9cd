//! Multi-process scenarios of the distributed data plane (issue 3): real session and data node processes on loopback, killed with SIGKILL and restarted, each test asserting the exact final set of publishers.

mod cluster_kit;

use cluster_kit::*;
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_on_one_session_node_is_pushed_and_queried_on_another() {
    let c = Cluster::start(3, 2).await;
    let sid_b = c.create_session(1).await;
    let mut sub = Subscriber {
        rx: open_stream(&c.http, &c.session_url(1), &sid_b),
        latest: BTreeMap::new(),
    };
    c.subscribe(1, &sid_b, "echo").await;
    wait_subscriber(&mut sub, "echo", &[], Duration::from_secs(5)).await;

    let sid_a = c.create_session(0).await;
    assert!(c.publish(0, &sid_a, "echo", "p1", &["10.0.0.1:8080"]).await);
    let took = wait_subscriber(
        &mut sub,
        "echo",
        &["10.0.0.1:8080".to_string()],
        Duration::from_secs(1),
    )
    .await;
    eprintln!("publish on A to push on B: {took:?}");
    assert_eq!(
        c.query(1, "echo").await,
        Some(set(&[("p1", "10.0.0.1:8080")]))
    );
    // Every data node holds a copy (replication factor 3 over 3 nodes).
    poll(
        "replicated to all data nodes",
        Duration::from_secs(10),
        || async {
            let mut n = 0;
            for i in 0..3 {
                if let Some(s) = c.status(i).await {
                    n += s["data"]["publisherCount"].as_u64().unwrap_or(0);
                }
            }
            n == 3
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_data_nodes_restarted_empty_get_everything_back_from_the_sessions() {
    let mut c = Cluster::start(3, 2).await;
    let mut expected = ServiceSets::new();
    for s in 0..2 {
        let sid = c.create_session(s).await;
        let publishers = (0..25).map(|k| {
            (
                format!("svc-{}", k % 10),
                format!("s{s}-{k}"),
                format!("10.{s}.0.{k}:80"),
            )
        });
        c.publish_recorded(s, &sid, publishers, &mut expected).await;
    }
    for i in 0..3 {
        c.data[i].kill();
    }
    for i in 0..3 {
        c.start_data(i);
    }
    c.wait_all_sessions_show_each(&expected, Duration::from_secs(15))
        .await;
    poll(
        "every data node holds every datum again",
        Duration::from_secs(15),
        || async {
            let mut ok = true;
            for i in 0..3 {
                ok &= c
                    .status(i)
                    .await
                    .is_some_and(|s| s["data"]["publisherCount"] == 50);
            }
            ok
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adding_two_data_nodes_moves_datums_and_loses_nothing() {
    let mut c = Cluster::start(3, 2).await;
    let n_services = 60;
    let mut expected = ServiceSets::new();
    let sid = c.create_session(0).await;
    let publishers = (0..n_services).map(|k| {
        (
            format!("svc-{k}"),
            format!("p-{k}"),
            format!("10.1.0.{k}:80"),
        )
    });
    c.publish_recorded(0, &sid, publishers, &mut expected).await;
    let a = c.add_data_proc();
    let b = c.add_data_proc();
    c.start_data(a);
    c.start_data(b);
    let members: Vec<String> = c.data.iter().map(|d| d.addr.clone()).collect();
    c.set_membership(&members, &[]);
    // Copies settle at exactly replication factor × datums, spread over all five nodes.
    poll(
        "datums moved to the new owners",
        Duration::from_secs(20),
        || async {
            let mut total = 0;
            let mut all_synced = true;
            let mut counts = Vec::new();
            for i in 0..5 {
                let s = c.status(i).await.unwrap_or(Value::Null);
                all_synced &= s["data"]["synced"] == true && s["epoch"] == 2;
                let n = s["data"]["datumCount"].as_u64().unwrap_or(0);
                counts.push(n);
                total += n;
            }
            total == 3 * n_services as u64 && all_synced && counts[3] > 0 && counts[4] > 0
        },
    )
    .await;
    let mut counts = Vec::new();
    for i in 0..5 {
        counts.push(
            c.status(i)
                .await
                .map(|s| s["data"]["datumCount"].as_u64().unwrap_or(0)),
        );
    }
    eprintln!("datums per node after adding two: {counts:?}");
    for n in &counts[..3] {
        assert!(
            n.unwrap_or(0) < n_services as u64,
            "old nodes must shed datums: {counts:?}"
        );
    }
    c.wait_all_sessions_show_each(&expected, Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_session_nodes_publishers_vanish_within_the_lease() {
    let mut c = Cluster::start(3, 2).await;
    let sid_a = c.create_session(0).await;
    let sid_b = c.create_session(1).await;
    let mut survivors = ServiceSets::new();
    for k in 0..6 {
        let svc = format!("svc-{}", k % 3);
        let a = (format!("a-{k}"), format!("10.0.0.{k}:80"));
        assert!(c.publish(0, &sid_a, &svc, &a.0, &[&a.1]).await);
        let b = (svc, format!("b-{k}"), format!("10.0.1.{k}:80"));
        c.publish_recorded(1, &sid_b, [b], &mut survivors).await;
    }
    for (svc, want) in &survivors {
        let mut with_a = want.clone();
        for (r, d) in c.query(0, svc).await.unwrap_or_default() {
            with_a.insert(r, d);
        }
        assert_eq!(
            with_a.len(),
            4,
            "both nodes' publishers present before the kill"
        );
        c.wait_all_sessions_show(svc, &with_a, Duration::from_secs(5))
            .await;
    }
    c.sessions[0].kill();
    let killed = Instant::now();
    for (svc, want) in &survivors {
        let left = Duration::from_millis(LEASE_MS + 2_000).saturating_sub(killed.elapsed());
        c.wait_all_sessions_show(svc, want, left.max(Duration::from_millis(1)))
            .await;
    }
    eprintln!(
        "killed session node's publishers gone after {:?}",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_data_node_restarted_at_the_same_address_rejoins_and_serves() {
    let mut c = Cluster::start(3, 1).await;
    let sid = c.create_session(0).await;
    let mut expected = ServiceSets::new();
    let publishers = (0..30).map(|k| {
        (
            format!("svc-{}", k % 10),
            format!("p-{k}"),
            format!("10.2.0.{k}:80"),
        )
    });
    c.publish_recorded(0, &sid, publishers, &mut expected).await;
    c.restart_data(1);
    c.wait_synced_holding(1, 30, Duration::from_secs(15)).await;
    // Now it alone serves: the other two die.
    c.data[0].kill();
    c.data[2].kill();
    c.wait_all_sessions_show_each(&expected, Duration::from_secs(10))
        .await;
    // And it takes writes.
    assert!(
        c.publish(0, &sid, "svc-new", "p-new", &["10.9.9.9:80"])
            .await
    );
    c.wait_all_sessions_show(
        "svc-new",
        &set(&[("p-new", "10.9.9.9:80")]),
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_endpoint_adopts_only_newer_epochs_and_rejects_bad_documents() {
    let c = Cluster::start(1, 0).await;
    let url = format!("{}/internal/v1/membership", c.data_url(0));
    let post = |body: &'static str| {
        let (http, url) = (c.http.clone(), url.clone());
        async move {
            let r = http.post(url).body(body).send().await.expect("post");
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (code, body) = post(r#"{"epoch": "x"}"#).await;
    assert_eq!(code, 400);
    assert_eq!(body["error"]["code"], "invalid_argument");
    let me = c.data[0].addr.clone();
    let doc5: &'static str =
        Box::leak(format!(r#"{{"epoch":5,"members":["{me}"]}}"#).into_boxed_str());
    assert_eq!(post(doc5).await, (200, serde_json::json!({"epoch": 5})));
    let (code, body) = post(r#"{"epoch":3,"members":["10.0.0.1:1"]}"#).await;
    assert_eq!((code, &body["epoch"]), (200, &serde_json::json!(5)));
    let status = c.status(0).await.expect("status");
    assert_eq!(status["epoch"], 5);
    assert_eq!(status["members"], serde_json::json!([me]));
    assert_eq!(status["roles"], serde_json::json!(["data"]));
    poll("single member synced", Duration::from_secs(10), || async {
        c.status(0)
            .await
            .is_some_and(|s| s["data"]["synced"] == true)
    })
    .await;
}

/// Sum of `data.datumCount` over data nodes `nodes`, and whether each is synced under `epoch`.
async fn settled(c: &Cluster, nodes: &[usize], epoch: u64) -> (u64, bool) {
    let mut total = 0;
    let mut synced = true;
    for &i in nodes {
        let s = c.status(i).await.unwrap_or(Value::Null);
        synced &= s["data"]["synced"] == true && s["epoch"] == epoch;
        total += s["data"]["datumCount"].as_u64().unwrap_or(0);
    }
    (total, synced)
}

/// What the readers of [`reads_stay_whole_during_ring_changes`] saw.
#[derive(Default)]
struct ReadLog {
    reads: AtomicUsize,
    errors: AtomicUsize,
    /// The epoch last written (for the report).
    epoch: AtomicUsize,
    wrong: Mutex<Vec<String>>,
}

/// A stable set of publishers on both session nodes; while two data nodes join (one
/// epoch) and then one leaves (a newer epoch, then gone), every query on both session
/// nodes and every push to a subscriber on each shows exactly that set.
async fn reads_stay_whole_during_ring_changes(rf: usize) {
    let options = Options {
        replication_factor: Some(rf),
        ..Options::default()
    };
    let mut c = Cluster::start_with(3, 2, options).await;
    let services: Vec<String> = (0..12).map(|i| format!("svc-{i}")).collect();
    let mut expected = ServiceSets::new();
    for s in 0..2 {
        let sid = c.create_session(s).await;
        let publishers = services.iter().enumerate().flat_map(|(k, svc)| {
            (0..2).map(move |j| {
                (
                    svc.clone(),
                    format!("s{s}-{k}-{j}"),
                    format!("10.{s}.{k}.{j}:80"),
                )
            })
        });
        c.publish_recorded(s, &sid, publishers, &mut expected).await;
    }
    let mut subs = Vec::new();
    for s in 0..2 {
        let sid = c.create_session(s).await;
        let rx = c.stream(s, &sid);
        for svc in &services {
            c.subscribe(s, &sid, svc).await;
        }
        subs.push(Subscriber {
            rx,
            latest: BTreeMap::new(),
        });
    }
    for sub in &mut subs {
        for svc in &services {
            wait_subscriber(sub, svc, &items(&expected[svc]), Duration::from_secs(10)).await;
        }
    }
    let expected = Arc::new(expected);
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(ReadLog::default());
    let mut readers = Vec::new();
    for r in 0..4usize {
        let (http, base) = (c.http.clone(), c.session_url(r % 2));
        let (expected, stop, log) = (expected.clone(), stop.clone(), log.clone());
        readers.push(tokio::spawn(async move {
            let mut k = r;
            while !stop.load(Ordering::Relaxed) {
                let (svc, want) = expected.iter().nth(k % expected.len()).expect("service");
                k += 1;
                match query_at(&http, &base, svc).await {
                    None => {
                        log.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(got) if &got != want => log.wrong.lock().push(format!(
                        "{base} {svc}: {} of {} publishers at epoch {}",
                        got.len(),
                        want.len(),
                        log.epoch.load(Ordering::Relaxed)
                    )),
                    Some(_) => {}
                }
                log.reads.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let push_checker = {
        let (expected, stop) = (expected.clone(), stop.clone());
        tokio::spawn(async move {
            let mut pushes = 0usize;
            let mut wrong = Vec::new();
            loop {
                let last_round = stop.load(Ordering::Relaxed);
                for sub in &mut subs {
                    while let Ok(p) = sub.rx.try_recv() {
                        pushes += 1;
                        let want = expected
                            .iter()
                            .find(|(svc, _)| data_info_id(svc) == p.data_info_id)
                            .map(|(_, w)| items(w))
                            .unwrap_or_default();
                        if p.items != want {
                            wrong.push(format!(
                                "push of {} v{}: {} of {} items",
                                p.data_info_id,
                                p.version,
                                p.items.len(),
                                want.len()
                            ));
                        }
                    }
                }
                if last_round {
                    return (pushes, wrong);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let copies = |members: usize| (rf.min(members) * services.len()) as u64;

    // Two data nodes join under epoch 2.
    let a = c.add_data_proc();
    let b = c.add_data_proc();
    c.start_data(a);
    c.start_data(b);
    let members: Vec<String> = c.data.iter().map(|d| d.addr.clone()).collect();
    c.set_membership(&members, &[]);
    log.epoch.store(c.epoch as usize, Ordering::Relaxed);
    let all: Vec<usize> = (0..5).collect();
    poll(
        "two joined nodes synced, datums moved",
        Duration::from_secs(30),
        || async { settled(&c, &all, 2).await == (copies(5), true) },
    )
    .await;
    let reads_after_join = log.reads.load(Ordering::Relaxed);

    // Data node 0 leaves under epoch 3: it hands its datums over, then it is stopped and
    // dropped from the document (epoch 4).
    let rest: Vec<usize> = (1..5).collect();
    let members: Vec<String> = rest.iter().map(|&i| c.data[i].addr.clone()).collect();
    c.set_membership(&members, &[c.data[0].addr.clone()]);
    log.epoch.store(c.epoch as usize, Ordering::Relaxed);
    poll(
        "leaving node handed over",
        Duration::from_secs(30),
        || async {
            let left = c.status(0).await.unwrap_or(Value::Null);
            left["epoch"] == 3
                && left["data"]["handoverComplete"] == true
                && settled(&c, &rest, 3).await == (copies(4), true)
        },
    )
    .await;
    c.data[0].kill();
    c.set_membership(&members, &[]);
    log.epoch.store(c.epoch as usize, Ordering::Relaxed);
    poll(
        "remaining nodes synced",
        Duration::from_secs(30),
        || async { settled(&c, &rest, 4).await == (copies(4), true) },
    )
    .await;
    // Some more reads on the final ring, then stop.
    let target = log.reads.load(Ordering::Relaxed) + 50;
    poll(
        "reads on the final ring",
        Duration::from_secs(20),
        || async { log.reads.load(Ordering::Relaxed) >= target },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.expect("reader");
    }
    let (pushes, wrong_pushes) = push_checker.await.expect("push checker");
    let reads = log.reads.load(Ordering::Relaxed);
    let wrong = log.wrong.lock().clone();
    eprintln!(
        "rf {rf}: {reads} reads ({reads_after_join} by the end of the join), {} errors, {} wrong, {pushes} pushes, {} wrong",
        log.errors.load(Ordering::Relaxed),
        wrong.len(),
        wrong_pushes.len()
    );
    if !wrong.is_empty() || !wrong_pushes.is_empty() {
        c.dump_logs();
    }
    assert!(
        wrong.is_empty(),
        "partial or empty answers: {:?}",
        &wrong[..wrong.len().min(10)]
    );
    assert!(
        wrong_pushes.is_empty(),
        "partial or empty pushes: {:?}",
        &wrong_pushes[..wrong_pushes.len().min(10)]
    );
    assert_eq!(
        log.errors.load(Ordering::Relaxed),
        0,
        "queries failed during the ring change"
    );
    c.wait_all_sessions_show_each(&expected, Duration::from_secs(5))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_stay_whole_during_ring_changes_rf3() {
    reads_stay_whole_during_ring_changes(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_stay_whole_during_ring_changes_rf1() {
    reads_stay_whole_during_ring_changes(1).await;
}

async fn readyz(c: &Cluster, session: usize) -> (u16, Value) {
    match c
        .http
        .get(format!("{}/readyz", c.session_url(session)))
        .send()
        .await
    {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_node_is_ready_only_with_a_membership_and_reachable_owners() {
    // No members file yet.
    let options = Options {
        membership: false,
        wait_ready: false,
        ..Options::default()
    };
    let mut c = Cluster::start_with(2, 1, options).await;
    let (code, body) = readyz(&c, 0).await;
    assert_eq!(code, 503, "no membership: {body}");
    assert_eq!(body["error"]["code"], "unavailable");

    // A membership whose data nodes are all down.
    for d in &mut c.data {
        d.kill();
    }
    let members: Vec<String> = c.data.iter().map(|d| d.addr.clone()).collect();
    c.set_membership(&members, &[]);
    let cluster_url = format!("{}/api/v1/cluster", c.session_url(0));
    poll("membership adopted", Duration::from_secs(10), || async {
        let v: Value = match c.http.get(&cluster_url).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        v["epoch"] == 1
    })
    .await;
    // Unreachable owners keep it unready, however often it is asked.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let (code, body) = readyz(&c, 0).await;
        assert_eq!(code, 503, "owners unreachable: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The data nodes come up: ready, and it serves.
    for i in 0..2 {
        c.start_data(i);
    }
    poll("session ready", Duration::from_secs(15), || async {
        readyz(&c, 0).await.0 == 200
    })
    .await;
    let sid = c.create_session(0).await;
    assert!(c.publish(0, &sid, "svc", "p1", &["10.0.0.1:80"]).await);
    assert_eq!(c.query(0, "svc").await, Some(set(&[("p1", "10.0.0.1:80")])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_token_internal_routes_reject_strangers_and_the_cluster_works() {
    let token = "s3cret-token";
    let options = Options {
        token: Some(token.into()),
        cluster_token: Some("cluster-s3cret".into()),
        ..Options::default()
    };
    let c = Cluster::start_with(3, 2, options).await;
    let stranger = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let data = c.data_url(0);
    let session = c.session_url(0);
    let session_internal = c.session_internal_url(0);
    let me = c.data[0].addr.clone();
    let newer = serde_json::json!({"epoch": 9, "members": [me]});
    let probes: Vec<(reqwest::Method, String, Option<Value>)> = vec![
        (
            reqwest::Method::GET,
            format!("{data}/internal/v1/status"),
            None,
        ),
        (
            reqwest::Method::POST,
            format!("{data}/internal/v1/membership"),
            Some(newer.clone()),
        ),
        (
            reqwest::Method::POST,
            format!("{data}/internal/v1/data/fetch"),
            Some(serde_json::json!({"ids": [data_info_id("svc")]})),
        ),
        (
            reqwest::Method::POST,
            format!("{data}/internal/v1/data/apply"),
            Some(serde_json::json!({"source": "intruder", "ops": []})),
        ),
        (
            reqwest::Method::POST,
            format!("{data}/internal/v1/data/digest"),
            Some(serde_json::json!({"for": me})),
        ),
        (
            reqwest::Method::POST,
            format!("{session_internal}/internal/v1/membership"),
            Some(newer.clone()),
        ),
        (
            reqwest::Method::GET,
            format!("{session}/api/v1/cluster"),
            None,
        ),
    ];
    // The client token is just a wrong token on internal routes.
    for (method, url, body) in &probes {
        let client_token = format!("Bearer {token}");
        let internal = url.contains("/internal/");
        let mut tries = vec![None, Some("Bearer wrong-token"), Some("s3cret-token")];
        if internal {
            tries.push(Some(client_token.as_str()));
        }
        for auth in tries {
            let mut req = stranger.request(method.clone(), url);
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let r = req.send().await.expect("request");
            let code = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            assert_eq!(code, 401, "{method} {url} with {auth:?}: {v}");
            assert_eq!(v["error"]["code"], "unauthorized", "{method} {url}: {v}");
            assert!(v["error"]["message"].is_string(), "{v}");
        }
    }
    // The public listener has no internal routes at all, whatever the token.
    for auth in [None, Some(token), Some("cluster-s3cret")] {
        let mut req = stranger
            .post(format!("{session}/internal/v1/membership"))
            .json(&newer);
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        let r = req.send().await.expect("request");
        assert_eq!(r.status().as_u16(), 404, "{auth:?}");
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(v["error"]["code"], "not_found", "{v}");
    }
    // Nothing the strangers sent was taken.
    for i in 0..3 {
        assert_eq!(c.status(i).await.expect("status")["epoch"], 1);
    }
    // With the token: the internal routes answer, and the whole cluster works.
    let r = c
        .internal
        .post(format!("{data}/internal/v1/data/fetch"))
        .json(&serde_json::json!({"ids": [data_info_id("svc")]}))
        .send()
        .await
        .expect("fetch");
    assert_eq!(r.status().as_u16(), 200);
    let sid_b = c.create_session(1).await;
    let mut sub = Subscriber {
        rx: c.stream(1, &sid_b),
        latest: BTreeMap::new(),
    };
    c.subscribe(1, &sid_b, "svc").await;
    wait_subscriber(&mut sub, "svc", &[], Duration::from_secs(5)).await;
    let sid_a = c.create_session(0).await;
    assert!(c.publish(0, &sid_a, "svc", "p1", &["10.0.0.1:80"]).await);
    assert!(c.publish(1, &sid_b, "svc", "p2", &["10.0.0.2:80"]).await);
    let want = set(&[("p1", "10.0.0.1:80"), ("p2", "10.0.0.2:80")]);
    wait_subscriber(&mut sub, "svc", &items(&want), Duration::from_secs(5)).await;
    c.wait_all_sessions_show("svc", &want, Duration::from_secs(5))
        .await;
    // Data nodes replicate to each other with the token too.
    poll(
        "replicated to every data node",
        Duration::from_secs(10),
        || async {
            let mut n = 0;
            for i in 0..3 {
                n += c
                    .status(i)
                    .await
                    .map_or(0, |s| s["data"]["publisherCount"].as_u64().unwrap_or(0));
            }
            n == 6
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_data_node_syncs_although_a_dead_member_remains() {
    let mut c = Cluster::start(3, 1).await;
    let sid = c.create_session(0).await;
    let mut expected = ServiceSets::new();
    let publishers = (0..12).map(|k| {
        (
            format!("svc-{}", k % 4),
            format!("p-{k}"),
            format!("10.3.0.{k}:80"),
        )
    });
    c.publish_recorded(0, &sid, publishers, &mut expected).await;
    // Node 2 dies and stays in the membership; node 1 restarts empty.
    c.data[2].kill();
    c.restart_data(1);
    c.wait_synced_holding(1, 12, Duration::from_secs(20)).await;
    let status = c.status(1).await.expect("status");
    assert_eq!(status["epoch"], 1);
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
    // It serves alone once node 0 dies too.
    c.data[0].kill();
    c.wait_all_sessions_show_each(&expected, Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_data_node_stopped_with_sigterm_while_publishing_loses_nothing() {
    const PUBLISHERS: usize = 16;
    // The sessions do not reconcile during the test: whatever the stopped node accepted
    // must reach the other owners through its drain, not through re-publishing.
    let options = Options {
        replication_factor: Some(2),
        reconcile_ms: Some(600_000),
        ..Options::default()
    };
    let c = Cluster::start_with(3, 2, options).await;
    let services: Vec<String> = (0..20).map(|i| format!("svc-{i}")).collect();
    let c = Arc::new(tokio::sync::RwLock::new(c));
    let log = Arc::new(PublishLog::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..PUBLISHERS {
        let (c, log, stop, services) = (c.clone(), log.clone(), stop.clone(), services.clone());
        tasks.push(tokio::spawn(async move {
            let session = t % 2;
            let sid = c.read().await.create_session(session).await;
            let publish = |svc: String, rid: String, data: String| {
                let (c, sid) = (c.clone(), sid.clone());
                async move {
                    c.read()
                        .await
                        .publish(session, &sid, &svc, &rid, &[&data])
                        .await
                }
            };
            publish_until_stopped(t, PUBLISHERS, &services, &stop, &log, publish).await;
        }));
    }
    let published = || log.published();
    poll("publishing under way", Duration::from_secs(10), || async {
        published() >= 100
    })
    .await;
    c.write().await.data[0].terminate();
    let asked = Instant::now();
    let status = poll(
        "the data node to stop after SIGTERM",
        Duration::from_secs(25),
        || async { c.write().await.data[0].exited() },
    )
    .await;
    eprintln!(
        "data node stopped {:?} after SIGTERM: {status}",
        asked.elapsed()
    );
    assert!(status.success(), "graceful stop exits 0: {status}");
    let at_exit = published();
    poll(
        "publishing goes on without it",
        Duration::from_secs(10),
        || async { published() >= at_exit + 50 },
    )
    .await;
    {
        let mut cw = c.write().await;
        let members: Vec<String> = cw.data[1..].iter().map(|d| d.addr.clone()).collect();
        cw.set_membership(&members, &[]);
    }
    let at_removal = published();
    poll(
        "publishing on the new ring",
        Duration::from_secs(10),
        || async { published() >= at_removal + 50 },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("publisher task");
    }
    assert_eq!(
        log.failures(),
        0,
        "publishes failed while a data node stopped"
    );
    let expected = log.expected();
    eprintln!(
        "published {}",
        expected.values().map(|s| s.len()).sum::<usize>()
    );
    let c = c.read().await;
    for svc in &services {
        let want = expected.get(svc).cloned().unwrap_or_default();
        c.wait_all_sessions_show(svc, &want, Duration::from_secs(10))
            .await;
    }
}
