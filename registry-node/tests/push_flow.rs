//! The publish → push path end to end against a real standalone node on 127.0.0.1:0.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_subscriber_gets_a_first_push_then_every_change() {
    let node = start().await;
    let c = Client::new(node.http_addr);
    let s = c.session(30).await;
    let mut ev = c.events(&s).await;
    let sub = c.subscribe(&s, json!({"dataId": "flow.svc"})).await;

    let first = ev.wait_for(T, |_| true).await;
    assert_eq!(first.event, "push");
    assert_eq!(first.data["registerId"], sub.as_str());
    assert_eq!(first.data["dataInfoId"], data_info_id("flow.svc"));
    assert_eq!(first.data["dataId"], "flow.svc");
    assert_eq!(first.data["group"], "DEFAULT_GROUP");
    assert_eq!(first.data["instanceId"], "DEFAULT_INSTANCE_ID");
    assert_eq!(first.data["zones"], json!({}));
    let first_id: u64 = first.id.parse().unwrap();

    let (st, v) = c
        .publish(
            &s,
            json!({"dataId": "flow.svc", "data": ["10.0.0.1:80"], "registerId": "p1"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["version"], 1);
    let p = ev.wait_for(T, |p| items(&p.data) == ["10.0.0.1:80"]).await;
    assert!(p.id.parse::<u64>().unwrap() > first_id);
    assert!(p.data["version"].as_u64().unwrap() > first.data["version"].as_u64().unwrap());
    assert_eq!(p.data["zones"], json!({"DEFAULT_ZONE": ["10.0.0.1:80"]}));

    let (st, v) = c
        .publish(
            &s,
            json!({"dataId": "flow.svc", "data": ["10.0.0.2:80"], "registerId": "p1"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["version"], 2);
    ev.wait_for(T, |p| items(&p.data) == ["10.0.0.2:80"]).await;

    let (st, _) = c
        .delete(&format!("/api/v1/sessions/{s}/publishers/p1"))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let gone = ev.wait_for(T, |p| items(&p.data).is_empty()).await;
    assert_eq!(gone.data["zones"], json!({}));
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn versions_strictly_increase_and_the_last_push_is_the_latest_state() {
    let node = start().await;
    let c = Client::new(node.http_addr);
    let s = c.session(30).await;
    let mut ev = c.events(&s).await;
    c.subscribe(&s, json!({"dataId": "mono.svc"})).await;
    let mut pushes = vec![ev.wait_for(T, |_| true).await];
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let c = c.clone();
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    let (st, _) = c
                        .publish(&s, json!({"dataId": "mono.svc", "registerId": format!("w{w}"), "data": [format!("{w}-{i}")]}))
                        .await;
                    assert!(st.is_success());
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let want = vec!["0-24", "1-24", "2-24", "3-24"];
    pushes.push(ev.wait_for(T, |p| items(&p.data) == want).await);
    pushes.extend(ev.drain(Duration::from_millis(300)).await);
    // Merged: far fewer pushes than the 100 writes.
    assert!(pushes.len() < 60, "{} pushes", pushes.len());
    let mut last_id = 0;
    let mut last_version = None;
    for p in &pushes {
        let id: u64 = p.id.parse().unwrap();
        assert!(id > last_id, "ids increase");
        last_id = id;
        let v = p.data["version"].as_u64().unwrap();
        if let Some(lv) = last_version {
            assert!(v > lv, "versions strictly increase: {lv} then {v}");
        }
        last_version = Some(v);
    }
    assert_eq!(items(&pushes.last().unwrap().data), want);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn zone_scope_sees_only_its_zone() {
    let node = start().await;
    let c = Client::new(node.http_addr);
    let s = c.session(30).await;
    let mut ev = c.events(&s).await;
    let zone_sub = c
        .subscribe(
            &s,
            json!({"dataId": "zone.svc", "zone": "z1", "scope": "zone"}),
        )
        .await;
    let dc_sub = c
        .subscribe(&s, json!({"dataId": "zone.svc", "zone": "z1"}))
        .await;
    let global_sub = c
        .subscribe(
            &s,
            json!({"dataId": "zone.svc", "zone": "z3", "scope": "global"}),
        )
        .await;
    c.publish(
        &s,
        json!({"dataId": "zone.svc", "zone": "z1", "data": ["a1"]}),
    )
    .await;
    c.publish(
        &s,
        json!({"dataId": "zone.svc", "zone": "z2", "data": ["b1", "b2"]}),
    )
    .await;
    c.publish(&s, json!({"dataId": "zone.svc", "zone": "z4", "data": []}))
        .await;
    let all = json!({"z1": ["a1"], "z2": ["b1", "b2"]});
    let mut latest = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + T;
    while !(latest.get(&zone_sub) == Some(&json!({"z1": ["a1"]}))
        && latest.get(&dc_sub) == Some(&all)
        && latest.get(&global_sub) == Some(&all))
    {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let p = ev
            .next(left)
            .await
            .expect("pushes for all three subscribers");
        let rid = p.data["registerId"].as_str().unwrap().to_owned();
        if rid == zone_sub {
            let zones = p.data["zones"].as_object().unwrap();
            assert!(
                zones.keys().all(|z| z == "z1"),
                "zone scope leaked {zones:?}"
            );
        }
        latest.insert(rid, p.data["zones"].clone());
    }
    let (_, q) = c.get("/api/v1/data?dataId=zone.svc").await;
    assert_eq!(q["zones"], all, "a zone with no data is absent");
    assert_eq!(q["publishers"].as_array().unwrap().len(), 3);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_reopened_stream_gets_a_full_push_of_the_latest_state() {
    let node = start().await;
    let c = Client::new(node.http_addr);
    let s = c.session(30).await;
    let other = c.session(30).await;
    let mut ev = c.events(&s).await;
    let a = c.subscribe(&s, json!({"dataId": "reopen.a"})).await;
    let b = c.subscribe(&s, json!({"dataId": "reopen.b"})).await;
    c.publish(&other, json!({"dataId": "reopen.a", "data": ["a1"]}))
        .await;
    let seen = ev
        .wait_for(T, |p| {
            p.data["registerId"] == a.as_str() && items(&p.data) == ["a1"]
        })
        .await;
    let last_id: u64 = seen.id.parse().unwrap();
    ev.close();
    eventually("the stream to close", T, || async {
        (node.session.stream_open(&s) == Some(false)).then_some(())
    })
    .await;

    c.publish(
        &other,
        json!({"dataId": "reopen.a", "registerId": "a2", "data": ["a2"]}),
    )
    .await;
    c.publish(&other, json!({"dataId": "reopen.b", "data": ["b1"]}))
        .await;
    let mut ev = c.events(&s).await;
    let mut got = std::collections::HashMap::new();
    while got.len() < 2 {
        let p = ev.wait_for(T, |_| true).await;
        assert!(
            p.id.parse::<u64>().unwrap() > last_id,
            "the sequence continues across streams"
        );
        got.insert(
            p.data["registerId"].as_str().unwrap().to_owned(),
            items(&p.data),
        );
    }
    assert_eq!(got[&a], vec!["a1", "a2"]);
    assert_eq!(got[&b], vec!["b1"]);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn subscribers_registered_before_the_stream_get_their_push_when_it_opens() {
    let node = start().await;
    let c = Client::new(node.http_addr);
    let s = c.session(30).await;
    c.publish(&s, json!({"dataId": "late.svc", "data": ["x"]}))
        .await;
    let sub = c.subscribe(&s, json!({"dataId": "late.svc"})).await;
    let mut ev = c.events(&s).await;
    let p = ev.wait_for(T, |_| true).await;
    assert_eq!(p.data["registerId"], sub.as_str());
    assert_eq!(items(&p.data), ["x"]);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn idle_streams_get_pings() {
    let node = start().await;
    let c = Client::new(node.http_addr);
    let s = c.session(30).await;
    let res = c
        .http
        .get(format!("{}/api/v1/sessions/{s}/events", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + T;
    use futures::StreamExt;
    while !text.contains(": ping\n\n") {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("a ping within the deadline");
        text.push_str(std::str::from_utf8(&chunk.unwrap().unwrap()).unwrap());
    }
    assert!(text.starts_with(": ping\n\n"), "{text:?}");
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_thousand_subscribers_over_fifty_sessions_all_receive_a_publish() {
    let node = start().await;
    let c = Client::new(node.http_addr);
    let mut streams = futures::future::join_all((0..50).map(|_| async {
        let s = c.session(60).await;
        let mut ev = c.events(&s).await;
        for _ in 0..20 {
            c.subscribe(&s, json!({"dataId": "wide.svc"})).await;
        }
        // Every subscriber's first push (empty) is in before the publish.
        let mut first = std::collections::HashSet::new();
        while first.len() < 20 {
            let p = ev.wait_for(Duration::from_secs(20), |_| true).await;
            first.insert(p.data["registerId"].as_str().unwrap().to_owned());
        }
        ev
    }))
    .await;
    let p = c.session(60).await;
    let fetches_before = node.metrics.push_fetches.get();
    let (st, _) = c
        .publish(&p, json!({"dataId": "wide.svc", "data": ["10.1.1.1:80"]}))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let mut total = 0;
    for ev in streams.iter_mut() {
        let mut subs = std::collections::HashSet::new();
        while subs.len() < 20 {
            let push = ev
                .wait_for(Duration::from_secs(20), |p| {
                    items(&p.data) == ["10.1.1.1:80"]
                })
                .await;
            subs.insert(push.data["registerId"].as_str().unwrap().to_owned());
        }
        total += subs.len();
    }
    assert_eq!(total, 1000);
    // One fetch per change of the dataInfoId (plus the odd version scan), not one per subscriber.
    let fetches = node.metrics.push_fetches.get() - fetches_before;
    assert!(
        fetches < 50,
        "{fetches} datum fetches for one publish to 1,000 subscribers"
    );
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn pushes_dropped_on_a_full_buffer_are_retried_until_everyone_is_current() {
    // A three-push buffer: a fan-out to ten subscribers of one session overflows it at once.
    let node = start_with(|c| {
        c.stream_buffer = 3;
        c.stream_stall_ms = 60_000;
        c.version_scan_ms = 1_000;
    })
    .await;
    let c = Client::new(node.http_addr);
    let s = c.session(30).await;
    let mut subs = Vec::new();
    for _ in 0..10 {
        subs.push(c.subscribe(&s, json!({"dataId": "retry.svc"})).await);
    }
    let mut ev = c.events(&s).await;
    c.publish(
        &s,
        json!({"dataId": "retry.svc", "registerId": "rp", "data": ["r"]}),
    )
    .await;
    let mut current = std::collections::HashSet::new();
    while current.len() < subs.len() {
        let p = ev.wait_for(T, |p| items(&p.data) == ["r"]).await;
        current.insert(p.data["registerId"].as_str().unwrap().to_owned());
    }
    assert_eq!(node.session.stream_open(&s), Some(true));
    assert!(
        node.metrics.pushes_failed.get() > 0,
        "the buffer never overflowed: the test proves nothing"
    );

    // Unsubscribed: 204, and no more pushes for it.
    let gone = subs.pop().unwrap();
    let (st, _) = c
        .delete(&format!("/api/v1/sessions/{s}/subscribers/{gone}"))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    c.publish(
        &s,
        json!({"dataId": "retry.svc", "registerId": "rp", "data": ["r2"]}),
    )
    .await;
    let mut current = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + T;
    while current.len() < subs.len() {
        let p = ev
            .next(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
            .expect("pushes");
        let rid = p.data["registerId"].as_str().unwrap().to_owned();
        assert_ne!(rid, gone, "pushed to a removed subscriber");
        if items(&p.data) == ["r2"] {
            current.insert(rid);
        }
    }
    node.shutdown().await.unwrap();
}
