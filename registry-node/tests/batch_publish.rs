//! `POST /api/v1/sessions/{id}/publishers:batch` (an extension of API.md): several publishers
//! in one request, all or nothing, each one then behaving exactly like a single publish.

mod common;

use common::*;
use registry_node::model::now_millis;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

fn batch_path(session: &str) -> String {
    format!("/api/v1/sessions/{session}/publishers:batch")
}

#[tokio::test]
async fn a_batch_creates_replaces_and_pushes_like_single_publishes() {
    let node = start().await;
    let c = Client::new(node.http_addr);
    let s = c.session(30).await;
    let mut ev = c.events(&s).await;
    let sub = c.subscribe(&s, json!({"dataId": "batch.a"})).await;
    ev.wait_for(T, |p| p.data["registerId"] == sub.as_str())
        .await;

    let (st, v) = c
        .post(
            &batch_path(&s),
            json!({"publishers": [
                {"dataId": "batch.a", "registerId": "a1", "data": ["10.0.0.1:80"]},
                {"dataId": "batch.a", "registerId": "a2", "data": ["10.0.0.2:80"], "zone": "z2"},
                {"dataId": "batch.b", "data": ["10.0.1.1:80"]},
            ]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let answers = v["publishers"].as_array().expect("publishers list");
    assert_eq!(answers.len(), 3, "{v}");
    assert_eq!(answers[0]["registerId"], "a1");
    assert_eq!(answers[1]["registerId"], "a2");
    assert_eq!(answers[2]["dataInfoId"], data_info_id("batch.b"));
    assert!(answers[2]["registerId"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
    for a in answers {
        assert_eq!(a["version"], 1, "{a}");
        assert_eq!(a["created"], true, "{a}");
    }

    let push = ev
        .wait_for(T, |p| items(&p.data) == ["10.0.0.1:80", "10.0.0.2:80"])
        .await;
    assert_eq!(
        push.data["zones"],
        json!({"DEFAULT_ZONE": ["10.0.0.1:80"], "z2": ["10.0.0.2:80"]})
    );
    let (_, b) = c.get("/api/v1/data?dataId=batch.b").await;
    assert_eq!(items(&b), ["10.0.1.1:80"], "{b}");

    // A second batch replaces a1 (version 2, created false) and adds a3.
    let (st, v) = c
        .post(
            &batch_path(&s),
            json!({"publishers": [
                {"dataId": "batch.a", "registerId": "a1", "data": ["10.0.0.9:80"]},
                {"dataId": "batch.a", "registerId": "a3", "data": ["10.0.0.3:80"]},
            ]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["publishers"][0]["version"], 2);
    assert_eq!(v["publishers"][0]["created"], false);
    assert_eq!(v["publishers"][1]["created"], true);
    ev.wait_for(T, |p| {
        items(&p.data) == ["10.0.0.2:80", "10.0.0.3:80", "10.0.0.9:80"]
    })
    .await;

    // Batch-made publishers are ordinary ones: a single DELETE removes one.
    let (st, _) = c
        .delete(&format!("/api/v1/sessions/{s}/publishers/a2"))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    ev.wait_for(T, |p| items(&p.data) == ["10.0.0.3:80", "10.0.0.9:80"])
        .await;

    // Ending the session removes every publisher it made in batches.
    let (st, _) = c.delete(&format!("/api/v1/sessions/{s}")).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    eventually("batch publishers gone with their session", T, || async {
        let (_, a) = c.get("/api/v1/data?dataId=batch.a").await;
        let (_, b) = c.get("/api/v1/data?dataId=batch.b").await;
        (items(&a).is_empty() && items(&b).is_empty()).then_some(())
    })
    .await;
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_rejected_batch_changes_nothing() {
    let node = start().await;
    let c = Client::new(node.http_addr);
    let s = c.session(30).await;
    let other = c.session(30).await;
    let (st, v) = c
        .publish(
            &s,
            json!({"dataId": "keep.svc", "registerId": "k1", "data": ["keep"]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = c
        .publish(
            &other,
            json!({"dataId": "keep.svc", "registerId": "theirs", "data": ["theirs"]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (_, before) = c.get("/api/v1/data?dataId=keep.svc").await;
    let (_, services_before) = c.get("/api/v1/services").await;

    let ok = json!({"dataId": "new.svc", "registerId": "n1", "data": ["x"]});
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"dataId": "new.svc", "registerId": format!("m{i}"), "data": []}))
        .collect();
    let cases: Vec<(Value, StatusCode, &str, &str)> = vec![
        (
            json!({}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "publishers",
        ),
        (
            json!({"publishers": {}}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "publishers",
        ),
        (
            json!({"publishers": []}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "publishers",
        ),
        (
            json!({"publishers": too_many}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "1001",
        ),
        (
            json!({"publishers": [ok, 7]}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "publishers[1]",
        ),
        (
            json!({"publishers": [ok, {"data": ["a"]}]}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "publishers[1].dataId",
        ),
        (
            json!({"publishers": [ok, {"dataId": "new.svc", "data": [1]}]}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "publishers[1].data[0]",
        ),
        (
            json!({"publishers": [ok, {"dataId": "new.svc", "registerId": "n1", "data": []}]}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "twice",
        ),
        // k1 belongs to keep.svc: the whole batch is refused, n1 included.
        (
            json!({"publishers": [ok, {"dataId": "other.svc", "registerId": "k1", "data": []}]}),
            StatusCode::CONFLICT,
            "conflict",
            "k1",
        ),
        // "theirs" belongs to another session.
        (
            json!({"publishers": [ok, {"dataId": "keep.svc", "registerId": "theirs", "data": []}]}),
            StatusCode::CONFLICT,
            "conflict",
            "theirs",
        ),
    ];
    for (body, want, code, mentions) in cases {
        let (st, v) = c.post(&batch_path(&s), body.clone()).await;
        assert_eq!(st, want, "{body} → {v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(mentions),
            "message {msg:?} should mention {mentions:?}"
        );
    }
    let (st, v) = c
        .raw(
            reqwest::Method::POST,
            &batch_path(&s),
            Some(b"{not json".to_vec()),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, v) = c
        .post(&batch_path("no-such-session"), json!({"publishers": [ok]}))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");

    let (_, after) = c.get("/api/v1/data?dataId=keep.svc").await;
    assert_eq!(before["publishers"], after["publishers"]);
    let (_, new_svc) = c.get("/api/v1/data?dataId=new.svc").await;
    assert!(items(&new_svc).is_empty(), "{new_svc}");
    let (_, services_after) = c.get("/api/v1/services").await;
    assert_eq!(services_before, services_after);
    node.shutdown().await.unwrap();
}

/// Thousands of writes a second keep their `registerTimestamp` on the wall clock: writes
/// within one millisecond are ordered by a counter, not stamped into later milliseconds
/// (which ran a busy node's stamps minutes ahead until data nodes refused them).
#[tokio::test]
async fn write_stamps_stay_on_the_wall_clock_at_thousands_of_writes_a_second() {
    let node = start().await;
    let c = Client::new(node.http_addr);
    let s = c.session(30).await;
    let started = now_millis();
    for batch in 0..5 {
        let publishers: Vec<Value> = (0..1000)
            .map(|i| json!({"dataId": "stamps", "registerId": format!("r{batch}-{i}"), "data": ["x"]}))
            .collect();
        let (st, v) = c
            .post(&batch_path(&s), json!({ "publishers": publishers }))
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    let (_, d) = c.get("/api/v1/data?dataId=stamps").await;
    let read_at = now_millis();
    let stamps: Vec<u64> = d["publishers"]
        .as_array()
        .expect("publishers")
        .iter()
        .map(|p| p["registerTimestamp"].as_u64().expect("registerTimestamp"))
        .collect();
    assert_eq!(stamps.len(), 5000, "{d}");
    let (first, last) = (stamps.iter().min().unwrap(), stamps.iter().max().unwrap());
    // The node and the test read the same clock: every stamp lies within the run.
    assert!(
        *first + 50 >= started && *last <= read_at + 50,
        "stamps {first}..{last} outside the run {started}..{read_at}"
    );
}
