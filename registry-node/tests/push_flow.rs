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
    let c = Client::new(&node);
    let s = c.session(30).await;
    let mut ev = c.events(&s).await;
    let sub = c.subscribe(&s, json!({"dataId": "flow.svc"})).await;

    let first = ev.wait_for(T, |_| true).await;
    assert_eq!(first.event, "push");
    assert_eq!(first.data["registerId"], sub.as_str());
    assert_eq!(first.data["dataInfoId"], service("flow.svc"));
    assert_eq!(first.data["dataId"], "flow.svc");
    assert_eq!(first.data["group"], "DEFAULT_GROUP");
    assert_eq!(first.data["instanceId"], "DEFAULT_INSTANCE_ID");
    assert_eq!(first.data["zones"], json!({}));
    let first_id: u64 = first.id.parse().unwrap();

    let (st, v) = c.publish(&s, json!({"dataId": "flow.svc", "data": ["10.0.0.1:80"], "registerId": "p1"})).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["version"], 1);
    let p = ev.wait_for(T, |p| items(&p.data) == ["10.0.0.1:80"]).await;
    assert!(p.id.parse::<u64>().unwrap() > first_id);
    assert!(p.data["version"].as_u64().unwrap() > first.data["version"].as_u64().unwrap());
    assert_eq!(p.data["zones"], json!({"DEFAULT_ZONE": ["10.0.0.1:80"]}));

    let (st, v) = c.publish(&s, json!({"dataId": "flow.svc", "data": ["10.0.0.2:80"], "registerId": "p1"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["version"], 2);
    ev.wait_for(T, |p| items(&p.data) == ["10.0.0.2:80"]).await;

    let (st, _) = c.delete(&format!("/api/v1/sessions/{s}/publishers/p1")).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let gone = ev.wait_for(T, |p| items(&p.data).is_empty()).await;
    assert_eq!(gone.data["zones"], json!({}));
    node.shutdown().await.unwrap();
}
