//! The node's limits, black-box against the binary: every limit of the session layer
//! answered `429 resource_exhausted` naming it and changing nothing; HTTP connections that
//! never finish their request head closed while clients are still served; the connection
//! cap; request bodies that stall.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use testkit::http::Client;
use testkit::{eventually, Spawn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A registry-node process on an ephemeral loopback port, killed on drop, with a client of
/// its public API that keeps no idle connections (the tests count the node's sockets).
struct Node {
    node: testkit::node::Node,
    api: Client,
}

impl Node {
    async fn start(args: &[&str]) -> Node {
        Node::of(
            Spawn::registry_node("registry-node")
                .args(["--http-addr", "127.0.0.1:0"])
                .args(args),
        )
    }

    fn of(spawn: Spawn) -> Node {
        let node = testkit::node::Node::spawn_with(spawn);
        let api = Client {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
            ..Client::new(&node.addr)
        };
        Node { node, api }
    }

    fn addr(&self) -> &str {
        &self.node.addr
    }

    async fn data_of(&self, data_id: &str) -> Vec<String> {
        let (status, body) = self
            .api
            .get(&format!("/api/v1/data?dataId={data_id}"))
            .await;
        assert_eq!(status, 200, "{body}");
        let mut ids: Vec<String> = body["publishers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["registerId"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    }

    async fn subscribe(&self, sid: &str, body: Value) -> (StatusCode, Value) {
        self.api
            .post(&format!("/api/v1/sessions/{sid}/subscribers"), body)
            .await
    }

    /// The value of an unlabelled metric in `/metrics`.
    async fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = self.api.get("/metrics").await;
        let text = text.as_str()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Open TCP sockets of the node process, counted in /proc.
    fn open_sockets(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.node.pid()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count()
    }
}

/// A 429 in API.md's error shape whose message names `flag`.
fn assert_exhausted(status: StatusCode, body: &Value, flag: &str) {
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "resource_exhausted", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains(flag), "message must name {flag}: {body}");
}

#[tokio::test]
async fn sessions_beyond_the_limit_are_refused_and_change_nothing() {
    let node = Node::start(&["--max-sessions", "3"]).await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(node.api.session(30).await);
    }
    let (status, body) = node.api.post("/api/v1/sessions", json!({})).await;
    assert_exhausted(status, &body, "--max-sessions");
    // The refused one does not exist; freeing a slot lets a new one in.
    let (status, _) = node
        .api
        .delete(&format!("/api/v1/sessions/{}", sessions[0]))
        .await;
    assert_eq!(status, 204);
    node.api.session(30).await;
    let (status, body) = node.api.post("/api/v1/sessions", json!({})).await;
    assert_exhausted(status, &body, "--max-sessions");
}

#[tokio::test]
async fn the_env_fallback_sets_a_limit() {
    let node = Node::of(
        Spawn::registry_node("registry-node")
            .args(["--http-addr", "127.0.0.1:0"])
            .env("REGISTRY_MAX_SESSIONS", "1"),
    );
    let (status, body) = node.api.post("/api/v1/sessions", json!({})).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = node.api.post("/api/v1/sessions", json!({})).await;
    assert_exhausted(status, &body, "--max-sessions");
}

#[tokio::test]
async fn publishers_per_session_count_a_batch_all_or_nothing() {
    let node = Node::start(&["--max-publishers-per-session", "3"]).await;
    let sid = node.api.session(30).await;
    for rid in ["p1", "p2"] {
        let (status, body) = node
            .api
            .publish(
                &sid,
                json!({"dataId": "svc", "registerId": rid, "data": ["x"]}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    // Two new in a batch where only one fits: neither is taken.
    let (status, body) = node
        .api
        .post(
            &format!("/api/v1/sessions/{sid}/publishers:batch"),
            json!({"publishers": [
                {"dataId": "svc", "registerId": "p3", "data": ["y"]},
                {"dataId": "svc", "registerId": "p4", "data": ["y"]},
            ]}),
        )
        .await;
    assert_exhausted(status, &body, "--max-publishers-per-session");
    assert_eq!(node.data_of("svc").await, ["p1", "p2"]);
    // A replacement is no new publisher; one more new one fits.
    let (status, body) = node
        .api
        .publish(
            &sid,
            json!({"dataId": "svc", "registerId": "p1", "data": ["z"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = node
        .api
        .publish(
            &sid,
            json!({"dataId": "svc", "registerId": "p3", "data": ["y"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = node
        .api
        .publish(
            &sid,
            json!({"dataId": "svc", "registerId": "p4", "data": ["y"]}),
        )
        .await;
    assert_exhausted(status, &body, "--max-publishers-per-session");
    assert_eq!(node.data_of("svc").await, ["p1", "p2", "p3"]);
    // The limit is per session: another session still publishes.
    let other = node.api.session(30).await;
    let (status, body) = node
        .api
        .publish(
            &other,
            json!({"dataId": "svc", "registerId": "q1", "data": ["y"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn subscribers_per_session_are_bounded() {
    let node = Node::start(&["--max-subscribers-per-session", "2"]).await;
    let sid = node.api.session(30).await;
    for rid in ["s1", "s2"] {
        let (status, body) = node
            .subscribe(&sid, json!({"dataId": "svc", "registerId": rid}))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = node
        .subscribe(&sid, json!({"dataId": "svc", "registerId": "s3"}))
        .await;
    assert_exhausted(status, &body, "--max-subscribers-per-session");
    // Subscribing an existing registerId again is no new subscriber.
    let (status, body) = node
        .subscribe(&sid, json!({"dataId": "svc", "registerId": "s1"}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(node.metric("registry_subscribers").await, Some(2.0));
}

#[tokio::test]
async fn blocking_queries_are_bounded() {
    let node = Node::start(&["--max-blocking-queries", "2"]).await;
    let path = "/api/v1/data?dataId=svc&waitIndex=0&wait=60s";
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let req = node.api.http.get(format!("{}{path}", node.api.base)).send();
        waiting.push(tokio::spawn(req));
    }
    eventually("both queries parked", Duration::from_secs(10), || async {
        node.metric("registry_blocking_queries").await == Some(2.0)
    })
    .await;
    let (status, refused) = node.api.get(path).await;
    assert_exhausted(status, &refused, "--max-blocking-queries");
    // A plain query is no blocking query.
    let (status, _) = node.api.get("/api/v1/data?dataId=svc").await;
    assert_eq!(status, 200);
    // A change answers the parked ones and frees their slots.
    let sid = node.api.session(30).await;
    let (status, _) = node
        .api
        .publish(&sid, json!({"dataId": "svc", "data": ["x"]}))
        .await;
    assert_eq!(status, 201);
    for w in waiting {
        let res = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("the parked query answered")
            .unwrap()
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let (status, body) = node
        .api
        .get("/api/v1/data?dataId=svc&waitIndex=0&wait=1s")
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_datum_is_bounded_in_bytes() {
    let node = Node::start(&["--max-datum-bytes", "100"]).await;
    let a = node.api.session(30).await;
    let b = node.api.session(30).await;
    let (status, body) = node
        .api
        .publish(
            &a,
            json!({"dataId": "svc", "registerId": "a", "data": ["x".repeat(60)]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = node
        .api
        .publish(
            &b,
            json!({"dataId": "svc", "registerId": "b", "data": ["y".repeat(50)]}),
        )
        .await;
    assert_exhausted(status, &body, "--max-datum-bytes");
    assert_eq!(node.data_of("svc").await, ["a"]);
    // Other datums have their own budget; a replacement counts what it replaces.
    let (status, body) = node
        .api
        .publish(
            &b,
            json!({"dataId": "other", "registerId": "b", "data": ["y".repeat(50)]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = node
        .api
        .publish(
            &a,
            json!({"dataId": "svc", "registerId": "a", "data": ["x".repeat(100)]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Bytes leave with their publisher (here: with its session).
    let (status, _) = node.api.delete(&format!("/api/v1/sessions/{a}")).await;
    assert_eq!(status, 204);
    let (status, body) = node
        .api
        .publish(
            &b,
            json!({"dataId": "svc", "registerId": "c", "data": ["y".repeat(90)]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// With the default settings, 3,000 connections that never finish their request head are
/// closed within 30 s, and a normal client is served while they are open.
#[tokio::test]
async fn half_open_connections_are_closed() {
    let node = Node::start(&[]).await;
    let baseline = node.open_sockets();
    let mut held = Vec::new();
    for _ in 0..3000 {
        let mut conn = TcpStream::connect(node.addr()).await.unwrap();
        conn.write_all(b"GET /api/v1/services HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        held.push(conn);
    }
    eventually(
        "the node to accept them",
        Duration::from_secs(10),
        || async { node.open_sockets() >= baseline + 2900 },
    )
    .await;
    let opened = Instant::now();
    let (status, _) = node.api.get("/api/v1/services").await;
    assert_eq!(status, 200, "a normal client is served beside them");
    eventually(
        "half-open connections closed",
        Duration::from_secs(30),
        || async { node.open_sockets() <= baseline + 5 },
    )
    .await;
    assert!(opened.elapsed() <= Duration::from_secs(30));
    // The client side sees them closed too.
    for conn in held.iter_mut().take(50) {
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("closed, not hanging")
            .unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    let (status, _) = node.api.get("/api/v1/services").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once() {
    let node = Node::start(&["--max-connections", "20"]).await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(node.addr()).await.unwrap());
    }
    // The node has taken all 20 once a 21st is refused; then it closes at once.
    let mut extra = TcpStream::connect(node.addr()).await.unwrap();
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("the 21st connection is closed, not left hanging")
        .unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf[..n]));
    drop(held);
    eventually("a slot freed", Duration::from_secs(10), || async {
        node.api
            .http
            .get(format!("{}/healthz", node.api.base))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

#[tokio::test]
async fn a_stalled_request_body_is_cut_off() {
    let node = Node::start(&["--http-idle-timeout", "1s"]).await;
    let mut conn = TcpStream::connect(node.addr()).await.unwrap();
    conn.write_all(
        b"POST /api/v1/sessions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"ttl",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("the stalled request is answered and closed");
    assert!(started.elapsed() < Duration::from_secs(10));
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 4"),
        "a 4xx or a close: {text}"
    );
    let (status, _) = node.api.get("/api/v1/services").await;
    assert_eq!(status, 200);
}
