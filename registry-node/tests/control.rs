//! Stop-push switch, blocking queries, a stuck stream client, and the operational endpoints.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const T: Duration = Duration::from_secs(10);

async fn version_of(c: &Client, data_id: &str) -> u64 {
    let (_, d) = c.get(&format!("/api/v1/data?dataId={data_id}")).await;
    d["version"].as_u64().unwrap()
}

#[tokio::test]
async fn stop_push_pauses_and_lifting_it_catches_everyone_up() {
    let node = start().await;
    let c = Client::new(node.http_addr);
    let s = c.session(30).await;
    let mut ev = c.events(&s).await;
    c.subscribe(&s, json!({"dataId": "stop.svc"})).await;
    ev.wait_for(T, |_| true).await;

    let (st, v) = c
        .raw(
            Method::PUT,
            "/api/v1/admin/push",
            Some(br#"{"stopPush": true}"#.to_vec()),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v, json!({"stopPush": true, "pushDelayMillis": 50}));
    let (_, v) = c.get("/api/v1/admin/push").await;
    assert_eq!(v["stopPush"], true);
    c.publish(&s, json!({"dataId": "stop.svc", "data": ["one"]}))
        .await;
    c.publish(&s, json!({"dataId": "stop.svc", "data": ["two"]}))
        .await;
    let late = c.subscribe(&s, json!({"dataId": "stop.other"})).await;
    // Queries still answer while pushes are stopped.
    let (_, d) = c.get("/api/v1/data?dataId=stop.svc").await;
    assert_eq!(d["publishers"].as_array().unwrap().len(), 2);
    // Several push delays and version scans pass without a push.
    let quiet = ev.drain(Duration::from_millis(1200)).await;
    assert!(quiet.is_empty(), "pushed while stopped: {quiet:?}");

    let (st, v) = c
        .raw(
            Method::PUT,
            "/api/v1/admin/push",
            Some(br#"{"stopPush": false, "pushDelayMillis": 20}"#.to_vec()),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v, json!({"stopPush": false, "pushDelayMillis": 20}));
    let mut seen = std::collections::HashMap::new();
    while seen.len() < 2 {
        let p = ev.wait_for(T, |_| true).await;
        seen.insert(p.data["dataId"].as_str().unwrap().to_owned(), p);
    }
    assert_eq!(items(&seen["stop.svc"].data), ["one", "two"]);
    assert_eq!(seen["stop.other"].data["registerId"], late.as_str());
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_stop_push_flag_starts_paused() {
    let node = start_with(|c| c.stop_push = true).await;
    let c = Client::new(node.http_addr);
    let (_, v) = c.get("/api/v1/admin/push").await;
    assert_eq!(v["stopPush"], true);
    let s = c.session(30).await;
    let mut ev = c.events(&s).await;
    c.subscribe(&s, json!({"dataId": "flag.svc"})).await;
    c.publish(&s, json!({"dataId": "flag.svc", "data": ["x"]}))
        .await;
    assert!(ev.drain(Duration::from_millis(800)).await.is_empty());
    c.raw(
        Method::PUT,
        "/api/v1/admin/push",
        Some(br#"{"stopPush": false}"#.to_vec()),
    )
    .await;
    let p = ev.wait_for(T, |_| true).await;
    assert_eq!(items(&p.data), ["x"]);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn blocking_queries_answer_on_change_or_at_the_end_of_wait() {
    let node = start().await;
    let c = Client::new(node.http_addr);
    let s = c.session(30).await;
    c.publish(
        &s,
        json!({"dataId": "block.svc", "registerId": "p", "data": ["v1"]}),
    )
    .await;
    let index = version_of(&c, "block.svc").await;

    // Times out with the current state.
    let t0 = Instant::now();
    let (st, d) = c
        .get(&format!(
            "/api/v1/data?dataId=block.svc&waitIndex={index}&wait=400ms"
        ))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        t0.elapsed() >= Duration::from_millis(350),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(d["version"], index);

    // Answers as soon as the version passes the index.
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let r = c
                .get(&format!(
                    "/api/v1/data?dataId=block.svc&waitIndex={index}&wait=1m"
                ))
                .await;
            (r, t0.elapsed())
        })
    };
    eventually("the blocking query to be waiting", T, || async {
        (!waiter.is_finished()).then_some(())
    })
    .await;
    c.publish(
        &s,
        json!({"dataId": "block.svc", "registerId": "p", "data": ["v2"]}),
    )
    .await;
    let ((st, d), took) = waiter.await.unwrap();
    assert_eq!(st, StatusCode::OK);
    assert!(d["version"].as_u64().unwrap() > index);
    assert_eq!(d["zones"], json!({"DEFAULT_ZONE": ["v2"]}));
    assert!(took < Duration::from_secs(30), "{took:?}");

    // An index already passed answers at once; an unknown service waits on version 0.
    let t0 = Instant::now();
    let (_, d) = c
        .get("/api/v1/data?dataId=block.svc&waitIndex=0&wait=1m")
        .await;
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert_eq!(d["zones"], json!({"DEFAULT_ZONE": ["v2"]}));
    let unknown = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get("/api/v1/data?dataId=block.new&waitIndex=0&wait=1m")
                .await
        })
    };
    c.publish(&s, json!({"dataId": "block.new", "data": ["n"]}))
        .await;
    let (_, d) = tokio::time::timeout(T, unknown)
        .await
        .expect("woken by the first publish")
        .unwrap();
    assert_eq!(d["zones"], json!({"DEFAULT_ZONE": ["n"]}));
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stuck_stream_client_neither_delays_others_nor_stays_open() {
    let node = start_with(|c| {
        c.stream_buffer = 4;
        c.stream_stall_ms = 300;
        c.push_delay_ms = 0;
        // The stream-stall rule is under test, not the dead-peer bounds (tests/dead_peers.rs)
        // that would cut this client off too.
        c.dead_peer_timeout = Duration::from_secs(600);
    })
    .await;
    let c = Client::new(node.http_addr);
    let stuck = c.session(60).await;
    c.subscribe(&stuck, json!({"dataId": "stuck.svc"})).await;
    // A client that asks for the stream and never reads a byte.
    let mut sock = tokio::net::TcpStream::connect(node.http_addr)
        .await
        .unwrap();
    sock.set_nodelay(true).unwrap();
    let req = format!("GET /api/v1/sessions/{stuck}/events HTTP/1.1\r\nhost: x\r\n\r\n");
    sock.write_all(req.as_bytes()).await.unwrap();
    eventually("the stuck stream to open", T, || async {
        (node.session.stream_open(&stuck) == Some(true)).then_some(())
    })
    .await;

    let good = c.session(60).await;
    let mut ev = c.events(&good).await;
    c.subscribe(&good, json!({"dataId": "stuck.svc"})).await;
    ev.wait_for(T, |_| true).await;

    // ~1 MB per push: a few fill the socket buffers and the stuck stream's queue.
    let publisher = c.session(60).await;
    let big = "x".repeat(16 * 1024);
    let mut slowest = Duration::ZERO;
    for round in 0..40 {
        let mut data = vec![big.clone(); 60];
        data[0] = format!("round-{round}");
        let t0 = Instant::now();
        let (st, _) = c
            .publish(
                &publisher,
                json!({"dataId": "stuck.svc", "registerId": "big", "data": data}),
            )
            .await;
        assert!(st.is_success());
        let marker = format!("round-{round}");
        ev.wait_for(T, |p| p.data["zones"]["DEFAULT_ZONE"][0] == marker.as_str())
            .await;
        slowest = slowest.max(t0.elapsed());
        if node.session.stream_open(&stuck) == Some(false) {
            break;
        }
    }
    eventually("the stuck stream to be closed", T, || async {
        (node.session.stream_open(&stuck) == Some(false)).then_some(())
    })
    .await;
    assert!(
        slowest < Duration::from_secs(5),
        "the reading client was held up: {slowest:?}"
    );
    let (_, m) = c.get("/metrics").await;
    let text = m.as_str().unwrap().to_owned();
    let failed = text
        .lines()
        .find(|l| l.starts_with("registry_pushes_failed_total "))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    assert!(failed >= 1.0, "{text}");
    drop(sock);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn operational_endpoints() {
    let node = start().await;
    let c = Client::new(node.http_addr);
    let (st, _) = c.get("/healthz").await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = c.get("/readyz").await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = c.get("/api/v1/cluster").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["nodeName"], "test-node");
    assert_eq!(v["roles"], json!(["session", "data"]));
    assert!(v["epoch"].as_u64().unwrap() >= 1);
    assert!(!v["members"].as_array().unwrap().is_empty());
    // The status is on the internal listener only.
    let (st, _) = c.get("/internal/v1/status").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let v: Value = reqwest::get(format!("http://{}/internal/v1/status", node.internal_addr))
        .await
        .expect("internal status")
        .json()
        .await
        .expect("json");
    assert_eq!(v["nodeName"], "test-node");
    assert_eq!(v["httpAddr"], node.http_addr.to_string());

    let s = c.session(30).await;
    for name in ["alpha.one", "alpha.two", "alpha.three", "beta.one"] {
        c.publish(&s, json!({"dataId": name, "data": ["x"]})).await;
    }
    c.publish(&s, json!({"dataId": "alpha.one", "data": ["y"]}))
        .await;
    c.subscribe(&s, json!({"dataId": "alpha.two"})).await;
    let (_, v) = c.get("/api/v1/services?prefix=alpha.").await;
    let rows = v["services"].as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["dataId"].as_str().unwrap()).collect();
    assert_eq!(ids, ["alpha.one", "alpha.three", "alpha.two"]);
    assert_eq!(rows[0]["publisherCount"], 2);
    assert_eq!(rows[0]["dataInfoId"], data_info_id("alpha.one"));
    assert_eq!(rows[0]["group"], "DEFAULT_GROUP");
    assert_eq!(rows[0]["instanceId"], "DEFAULT_INSTANCE_ID");
    assert_eq!(rows[2]["subscriberCount"], 1);
    let (_, v) = c.get("/api/v1/services?prefix=alpha.&limit=2").await;
    assert_eq!(v["services"].as_array().unwrap().len(), 2);
    let (_, v) = c.get("/api/v1/services").await;
    assert_eq!(v["services"].as_array().unwrap().len(), 4);
    let (_, d) = c.get("/api/v1/data?dataId=never.published").await;
    assert_eq!(
        d,
        json!({"dataInfoId": data_info_id("never.published"), "version": 0, "zones": {}, "publishers": []})
    );

    let res = c
        .http
        .get(format!("{}/metrics", c.base))
        .send()
        .await
        .unwrap();
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("text"));
    let text = res.text().await.unwrap();
    for metric in [
        "registry_http_requests_total{method=\"POST\",route=\"/api/v1/sessions/{session_id}/publishers\",status=\"201\"}",
        "registry_http_request_duration_seconds_bucket",
        "registry_sessions 1",
        "registry_publishers 5",
        "registry_subscribers 1",
        "registry_pushes_sent_total",
        "registry_pushes_failed_total",
        "registry_publish_to_push_seconds_bucket",
    ] {
        assert!(text.contains(metric), "missing {metric} in\n{text}");
    }
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let node = start().await;
    let c = Client::new(node.http_addr);
    let s = c.session(30).await;
    let mut ev = c.events(&s).await;
    let stop = node.shutdown_token();
    let done = tokio::spawn(node.wait());
    stop.cancel();
    assert!(
        ev.closed_within(T).await,
        "stream still open after shutdown"
    );
    tokio::time::timeout(T, done)
        .await
        .expect("server stopped")
        .unwrap()
        .unwrap();
}
