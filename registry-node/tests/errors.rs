//! Every error case of API.md: status, `{"error": {"code", "message"}}` shape, the field
//! named in the message, and that a bad request changes nothing.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str, mentions: &str) {
    assert_eq!(status, want, "body: {body}");
    let obj = body.as_object().expect("error body is an object");
    assert_eq!(obj.len(), 1, "only the error field: {body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let msg = body["error"]["message"].as_str().expect("message");
    assert!(
        msg.contains(mentions),
        "message {msg:?} should mention {mentions:?}"
    );
}

#[tokio::test]
async fn publish_validation_errors_change_nothing() {
    let node = start().await;
    let c = Client::new(node.http_addr);
    let s = c.session(30).await;
    let path = format!("/api/v1/sessions/{s}/publishers");
    let (st, v) = c
        .publish(
            &s,
            json!({"dataId": "err.svc", "data": ["keep"], "registerId": "p1"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (_, before) = c.get("/api/v1/data?dataId=err.svc").await;

    let long = "x".repeat(257);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"data": ["a"]}), "dataId"),
        (json!({"dataId": "", "data": ["a"]}), "dataId"),
        (json!({"dataId": 7, "data": ["a"]}), "dataId"),
        (json!({"dataId": long, "data": ["a"]}), "dataId"),
        (json!({"dataId": "a#@#b", "data": ["a"]}), "dataId"),
        (json!({"dataId": "a\u{1}b", "data": ["a"]}), "dataId"),
        (
            json!({"dataId": "err.svc", "group": "", "data": ["a"]}),
            "group",
        ),
        (
            json!({"dataId": "err.svc", "group": "x".repeat(257), "data": ["a"]}),
            "group",
        ),
        (
            json!({"dataId": "err.svc", "group": "g#@#", "data": ["a"]}),
            "group",
        ),
        (
            json!({"dataId": "err.svc", "instanceId": "i\n", "data": ["a"]}),
            "instanceId",
        ),
        (
            json!({"dataId": "err.svc", "instanceId": "x".repeat(257), "data": ["a"]}),
            "instanceId",
        ),
        (
            json!({"dataId": "err.svc", "zone": "", "data": ["a"]}),
            "zone",
        ),
        (
            json!({"dataId": "err.svc", "zone": "#@#", "data": ["a"]}),
            "zone",
        ),
        (
            json!({"dataId": "err.svc", "zone": "x".repeat(257), "data": ["a"]}),
            "zone",
        ),
        (
            json!({"dataId": "err.svc", "registerId": "", "data": ["a"]}),
            "registerId",
        ),
        (
            json!({"dataId": "err.svc", "registerId": "r".repeat(129), "data": ["a"]}),
            "registerId",
        ),
        (
            json!({"dataId": "err.svc", "registerId": "a\u{7}", "data": ["a"]}),
            "registerId",
        ),
        (
            json!({"dataId": "err.svc", "registerId": 5, "data": ["a"]}),
            "registerId",
        ),
        (json!({"dataId": "err.svc"}), "data"),
        (json!({"dataId": "err.svc", "data": "10.0.0.1"}), "data"),
        (json!({"dataId": "err.svc", "data": [1]}), "data[0]"),
        (
            json!({"dataId": "err.svc", "data": vec!["a"; 1001]}),
            "data",
        ),
        (
            json!({"dataId": "err.svc", "data": ["a", "x".repeat(16 * 1024 + 1)]}),
            "data[1]",
        ),
    ];
    for (body, field) in cases {
        let (st, v) = c.publish(&s, body.clone()).await;
        assert_error(st, &v, StatusCode::BAD_REQUEST, "invalid_argument", field);
    }
    for raw in [&b"{"[..], b"not json", b"[1,2]", b"\"s\"", b""] {
        let (st, v) = c.raw(Method::POST, &path, Some(raw.to_vec())).await;
        assert_error(st, &v, StatusCode::BAD_REQUEST, "invalid_argument", "");
    }
    // Limits are inclusive.
    let (st, v) = c
        .publish(
            &s,
            json!({"dataId": "err.edge", "registerId": "r".repeat(128), "data": vec!["a"; 1000]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = c
        .publish(
            &s,
            json!({"dataId": "x".repeat(256), "data": ["x".repeat(16 * 1024)]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");

    let (_, after) = c.get("/api/v1/data?dataId=err.svc").await;
    assert_eq!(before, after, "bad requests changed the datum");
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversized_bodies_get_413_whether_or_not_the_length_is_announced() {
    let node = start().await;
    let c = Client::new(node.http_addr);
    let s = c.session(30).await;
    let item = "x".repeat(16 * 1024);
    let big = json!({"dataId": "big", "data": vec![item; 70]}).to_string();
    assert!(big.len() > 1024 * 1024);
    let path = format!("/api/v1/sessions/{s}/publishers");
    let (st, v) = c
        .raw(Method::POST, &path, Some(big.clone().into_bytes()))
        .await;
    assert_error(
        st,
        &v,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "1048576",
    );

    // Chunked, no Content-Length: the limit holds while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .into_bytes()
        .chunks(64 * 1024)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let res = c
        .http
        .post(format!("{}{}", c.base, path))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    let st = res.status();
    let v: Value = res.json().await.unwrap();
    assert_error(
        st,
        &v,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "",
    );
    let (_, d) = c.get("/api/v1/data?dataId=big").await;
    assert_eq!(d["publishers"], json!([]));
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn session_validation_and_unknown_sessions() {
    let node = start().await;
    let c = Client::new(node.http_addr);
    for (body, field) in [
        (json!({"ttlSeconds": 4}), "ttlSeconds"),
        (json!({"ttlSeconds": 601}), "ttlSeconds"),
        (json!({"ttlSeconds": "30"}), "ttlSeconds"),
        (json!({"ttlSeconds": 1.5}), "ttlSeconds"),
        (json!({"clientId": ""}), "clientId"),
        (json!({"clientId": "a#@#b"}), "clientId"),
        (json!({"clientId": "x".repeat(257)}), "clientId"),
        (json!({"clientId": "tab\there"}), "clientId"),
    ] {
        let (st, v) = c.post("/api/v1/sessions", body).await;
        assert_error(st, &v, StatusCode::BAD_REQUEST, "invalid_argument", field);
    }
    let (st, v) = c
        .raw(Method::POST, "/api/v1/sessions", Some(b"{oops".to_vec()))
        .await;
    assert_error(st, &v, StatusCode::BAD_REQUEST, "invalid_argument", "JSON");
    // An empty body is a session with defaults.
    let (st, v) = c.raw(Method::POST, "/api/v1/sessions", None).await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(v["ttlSeconds"], 30);
    let (st, v) = c
        .post(
            "/api/v1/sessions",
            json!({"ttlSeconds": 5, "clientId": "app-1"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(v["ttlSeconds"], 5);

    let ghost = "no-such-session";
    for (method, path, body) in [
        (
            Method::POST,
            format!("/api/v1/sessions/{ghost}/heartbeat"),
            None,
        ),
        (Method::DELETE, format!("/api/v1/sessions/{ghost}"), None),
        (
            Method::GET,
            format!("/api/v1/sessions/{ghost}/events"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/sessions/{ghost}/publishers"),
            Some(json!({"dataId": "a", "data": []})),
        ),
        (
            Method::POST,
            format!("/api/v1/sessions/{ghost}/subscribers"),
            Some(json!({"dataId": "a"})),
        ),
        (
            Method::DELETE,
            format!("/api/v1/sessions/{ghost}/publishers/p"),
            None,
        ),
        (
            Method::DELETE,
            format!("/api/v1/sessions/{ghost}/subscribers/p"),
            None,
        ),
    ] {
        let (st, v) = c
            .raw(method, &path, body.map(|b| b.to_string().into_bytes()))
            .await;
        assert_error(st, &v, StatusCode::NOT_FOUND, "not_found", "session");
    }
    let s = c.session(30).await;
    let (st, v) = c
        .delete(&format!("/api/v1/sessions/{s}/publishers/nope"))
        .await;
    assert_error(st, &v, StatusCode::NOT_FOUND, "not_found", "nope");
    let (st, v) = c
        .delete(&format!("/api/v1/sessions/{s}/subscribers/nope"))
        .await;
    assert_error(st, &v, StatusCode::NOT_FOUND, "not_found", "nope");
    let (st, _) = c.delete(&format!("/api/v1/sessions/{s}")).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, v) = c.delete(&format!("/api/v1/sessions/{s}")).await;
    assert_error(st, &v, StatusCode::NOT_FOUND, "not_found", "session");
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn subscriber_validation() {
    let node = start().await;
    let c = Client::new(node.http_addr);
    let s = c.session(30).await;
    for (body, field) in [
        (json!({}), "dataId"),
        (json!({"dataId": "a", "scope": "planet"}), "scope"),
        (json!({"dataId": "a", "scope": 1}), "scope"),
        (json!({"dataId": "a", "zone": "z\u{0}"}), "zone"),
        (
            json!({"dataId": "a", "registerId": "r".repeat(129)}),
            "registerId",
        ),
        (json!({"dataId": "a#@#b"}), "dataId"),
    ] {
        let (st, v) = c
            .post(&format!("/api/v1/sessions/{s}/subscribers"), body)
            .await;
        assert_error(st, &v, StatusCode::BAD_REQUEST, "invalid_argument", field);
    }
    let (_, v) = c.get("/api/v1/services").await;
    assert_eq!(v["services"], json!([]));
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn register_ids_conflict_across_services_and_sessions() {
    let node = start().await;
    let c = Client::new(node.http_addr);
    let a = c.session(30).await;
    let b = c.session(30).await;
    let (st, _) = c
        .publish(
            &a,
            json!({"dataId": "svc.a", "registerId": "shared", "data": ["1"]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, v) = c
        .publish(
            &a,
            json!({"dataId": "svc.b", "registerId": "shared", "data": ["2"]}),
        )
        .await;
    assert_error(st, &v, StatusCode::CONFLICT, "conflict", "shared");
    let (st, v) = c
        .publish(
            &b,
            json!({"dataId": "svc.a", "registerId": "shared", "data": ["3"]}),
        )
        .await;
    assert_error(st, &v, StatusCode::CONFLICT, "conflict", "another session");
    let (_, d) = c.get("/api/v1/data?dataId=svc.a").await;
    assert_eq!(d["zones"], json!({"DEFAULT_ZONE": ["1"]}));
    assert_eq!(d["publishers"][0]["version"], 1);
    let (_, d) = c.get("/api/v1/data?dataId=svc.b").await;
    assert_eq!(d["version"], 0);
    // Another session cannot delete it either.
    let (st, v) = c
        .delete(&format!("/api/v1/sessions/{b}/publishers/shared"))
        .await;
    assert_error(st, &v, StatusCode::NOT_FOUND, "not_found", "shared");

    c.subscribe(&a, json!({"dataId": "svc.a", "registerId": "sub-1"}))
        .await;
    let (st, v) = c
        .post(
            &format!("/api/v1/sessions/{a}/subscribers"),
            json!({"dataId": "svc.b", "registerId": "sub-1"}),
        )
        .await;
    assert_error(st, &v, StatusCode::CONFLICT, "conflict", "sub-1");
    let (st, v) = c
        .post(
            &format!("/api/v1/sessions/{b}/subscribers"),
            json!({"dataId": "svc.a", "registerId": "sub-1"}),
        )
        .await;
    assert_error(st, &v, StatusCode::CONFLICT, "conflict", "another session");
    // Re-registering the same subscriber is idempotent.
    assert_eq!(
        c.subscribe(&a, json!({"dataId": "svc.a", "registerId": "sub-1"}))
            .await,
        "sub-1"
    );

    // Once deleted, a registerId is free again and starts at version 1.
    let (st, _) = c
        .delete(&format!("/api/v1/sessions/{a}/publishers/shared"))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, v) = c
        .publish(
            &b,
            json!({"dataId": "svc.b", "registerId": "shared", "data": ["4"]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["version"], 1);
    let (_, d) = c.get("/api/v1/data?dataId=svc.b").await;
    assert_eq!(d["zones"], json!({"DEFAULT_ZONE": ["4"]}));
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn query_errors_routes_and_methods() {
    let node = start().await;
    let c = Client::new(node.http_addr);
    for (path, field) in [
        ("/api/v1/data", "dataId"),
        ("/api/v1/data?dataId=", "dataId"),
        ("/api/v1/data?dataId=a%23%40%23b", "dataId"),
        ("/api/v1/data?dataId=a&group=", "group"),
        ("/api/v1/data?dataId=a&instanceId=%01", "instanceId"),
        ("/api/v1/data?dataId=a&waitIndex=x&wait=1s", "waitIndex"),
        ("/api/v1/data?dataId=a&waitIndex=-1", "waitIndex"),
        ("/api/v1/data?dataId=a&waitIndex=1&wait=soon", "wait"),
        ("/api/v1/services?limit=0", "limit"),
        ("/api/v1/services?limit=abc", "limit"),
        ("/api/v1/services?limit=100001", "limit"),
    ] {
        let (st, v) = c.get(path).await;
        assert_error(st, &v, StatusCode::BAD_REQUEST, "invalid_argument", field);
    }
    let (st, v) = c.get("/api/v1/nothing-here").await;
    assert_error(
        st,
        &v,
        StatusCode::NOT_FOUND,
        "not_found",
        "/api/v1/nothing-here",
    );
    let (st, v) = c.get("/").await;
    assert_error(st, &v, StatusCode::NOT_FOUND, "not_found", "/");
    let (st, v) = c.raw(Method::PUT, "/api/v1/data", None).await;
    assert_error(
        st,
        &v,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "PUT",
    );
    let (st, v) = c.raw(Method::GET, "/api/v1/sessions", None).await;
    assert_error(
        st,
        &v,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "GET",
    );
    for (body, field) in [
        (json!({"stopPush": "yes"}), "stopPush"),
        (json!({"pushDelayMillis": -1}), "pushDelayMillis"),
        (json!({"pushDelayMillis": 1e12}), "pushDelayMillis"),
    ] {
        let (st, v) = c
            .raw(
                Method::PUT,
                "/api/v1/admin/push",
                Some(body.to_string().into_bytes()),
            )
            .await;
        assert_error(st, &v, StatusCode::BAD_REQUEST, "invalid_argument", field);
    }
    let (_, v) = c.get("/api/v1/admin/push").await;
    assert_eq!(v, json!({"stopPush": false, "pushDelayMillis": 50}));
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_token_guards_every_api_route() {
    let node = start_with(|c| c.token = Some("s3cret".into())).await;
    let anon = Client::new(node.http_addr);
    let wrong = Client::new(node.http_addr).with_token("s3creT");
    let good = Client::new(node.http_addr).with_token("s3cret");
    for (method, path) in [
        (Method::POST, "/api/v1/sessions"),
        (Method::GET, "/api/v1/data?dataId=a"),
        (Method::GET, "/api/v1/services"),
        (Method::GET, "/api/v1/cluster"),
        (Method::GET, "/api/v1/admin/push"),
        (Method::GET, "/api/v1/sessions/x/events"),
        (Method::DELETE, "/api/v1/sessions/x"),
        (Method::GET, "/api/v1/unknown"),
    ] {
        for c in [&anon, &wrong] {
            let (st, v) = c.raw(method.clone(), path, None).await;
            assert_error(st, &v, StatusCode::UNAUTHORIZED, "unauthorized", "token");
        }
    }
    // The public listener serves no internal route, whatever the token (SECURITY.md).
    for (method, path) in [
        (Method::GET, "/internal/v1/status"),
        (Method::POST, "/internal/v1/membership"),
        (Method::POST, "/internal/v1/data/apply"),
    ] {
        for c in [&anon, &wrong, &good] {
            let (st, v) = c.raw(method.clone(), path, None).await;
            assert_error(st, &v, StatusCode::NOT_FOUND, "not_found", "no route");
        }
    }
    let (st, v) = good.post("/api/v1/sessions", json!({})).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, _) = good.get("/api/v1/data?dataId=a").await;
    assert_eq!(st, StatusCode::OK);
    // Operational endpoints stay open for probes and scrapers.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (st, _) = anon.get(path).await;
        assert_eq!(st, StatusCode::OK, "{path}");
    }
    node.shutdown().await.unwrap();

    let open = start().await;
    let (st, _) = Client::new(open.http_addr)
        .post("/api/v1/sessions", json!({}))
        .await;
    assert_eq!(
        st,
        StatusCode::CREATED,
        "no token configured: no token needed"
    );
    open.shutdown().await.unwrap();
}
