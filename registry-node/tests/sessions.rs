//! Session lifetime: heartbeat, delete, TTL expiry, and an open event stream keeping a
//! session alive; removal of a session's publishers is pushed to everyone else.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn heartbeat_and_delete() {
    let node = start().await;
    let c = Client::new(node.http_addr);
    let watcher = c.session(30).await;
    let mut ev = c.events(&watcher).await;
    c.subscribe(&watcher, json!({"dataId": "hb.svc"})).await;
    ev.wait_for(Duration::from_secs(10), |_| true).await;

    let (st, v) = c
        .post(
            "/api/v1/sessions",
            json!({"ttlSeconds": 20, "clientId": "app-7"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let s = v["sessionId"].as_str().unwrap().to_owned();
    let (st, v) = c
        .post(&format!("/api/v1/sessions/{s}/heartbeat"), json!(null))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["sessionId"], s.as_str());
    assert_eq!(v["ttlSeconds"], 20);
    let left = v["expiresInMs"].as_u64().unwrap();
    assert!(left > 15_000 && left <= 20_000, "{v}");

    c.publish(&s, json!({"dataId": "hb.svc", "data": ["a"]}))
        .await;
    c.subscribe(&s, json!({"dataId": "hb.svc"})).await;
    ev.wait_for(Duration::from_secs(10), |p| items(&p.data) == ["a"])
        .await;
    let (_, d) = c.get("/api/v1/data?dataId=hb.svc").await;
    assert_eq!(d["publishers"][0]["clientId"], "app-7", "{d}");
    assert_eq!(d["publishers"][0]["zone"], "DEFAULT_ZONE");
    assert_eq!(d["publishers"][0]["data"], json!(["a"]));
    assert_eq!(d["publishers"][0]["version"], 1);
    assert!(d["publishers"][0]["registerId"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
    let (_, svcs) = c.get("/api/v1/services?prefix=hb.").await;
    assert_eq!(svcs["services"][0]["subscriberCount"], 2);

    let (st, _) = c.delete(&format!("/api/v1/sessions/{s}")).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    // Publishers are gone at once from queries, and the removal is pushed.
    let (_, d) = c.get("/api/v1/data?dataId=hb.svc").await;
    assert_eq!(d["publishers"], json!([]));
    ev.wait_for(Duration::from_secs(10), |p| items(&p.data).is_empty())
        .await;
    let (_, svcs) = c.get("/api/v1/services?prefix=hb.").await;
    assert!(svcs["services"].as_array().unwrap().is_empty(), "{svcs}");
    assert_eq!(node.session.subscriber_count(&data_info_id("hb.svc")), 1);
    let (st, _) = c
        .post(&format!("/api/v1/sessions/{s}/heartbeat"), json!(null))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn sessions_expire_after_their_ttl_unless_a_stream_is_open() {
    let node = start().await;
    let c = Client::new(node.http_addr);
    let watcher = c.session(60).await;
    let mut ev = c.events(&watcher).await;
    c.subscribe(&watcher, json!({"dataId": "ttl.svc"})).await;

    let streaming = c.session(5).await;
    let idle = c.session(5).await;
    let held = c.events(&streaming).await;
    c.publish(
        &streaming,
        json!({"dataId": "ttl.svc", "registerId": "streaming", "data": ["s"]}),
    )
    .await;
    let t0 = Instant::now();
    c.publish(
        &idle,
        json!({"dataId": "ttl.svc", "registerId": "idle", "data": ["i"]}),
    )
    .await;
    ev.wait_for(Duration::from_secs(10), |p| items(&p.data) == ["i", "s"])
        .await;

    // The idle session expires within ttl + 2 s and its publisher's removal is pushed.
    ev.wait_for(Duration::from_secs(10), |p| items(&p.data) == ["s"])
        .await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "expired too early: {took:?}"
    );
    assert!(
        took <= Duration::from_secs(7) + Duration::from_millis(500),
        "expired too late: {took:?}"
    );
    let (st, _) = c
        .post(&format!("/api/v1/sessions/{idle}/heartbeat"), json!(null))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Same TTL, but its stream is open: still alive.
    let (st, _) = c
        .post(
            &format!("/api/v1/sessions/{streaming}/heartbeat"),
            json!(null),
        )
        .await;
    assert_eq!(st, StatusCode::OK);

    // Once the stream closes, its TTL runs.
    held.close();
    eventually(
        "the stream to be seen closed",
        Duration::from_secs(5),
        || async { (node.session.stream_open(&streaming) == Some(false)).then_some(()) },
    )
    .await;
    let closed_at = Instant::now();
    ev.wait_for(Duration::from_secs(12), |p| items(&p.data).is_empty())
        .await;
    let took = closed_at.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "expired too early after the stream closed: {took:?}"
    );
    assert!(
        took <= Duration::from_secs(7) + Duration::from_millis(500),
        "{took:?}"
    );
    let (_, d) = c.get("/api/v1/data?dataId=ttl.svc").await;
    assert_eq!(d["publishers"], json!([]));
    node.shutdown().await.unwrap();
}
