//! Dead peers, black-box against the binary: a client holding its session's event stream
//! vanishes without a FIN (every packet of its network namespace dropped, so the node gets
//! no RST either) while a push to it is on the way, or stops reading its stream for good
//! (a hung process: its kernel still acknowledges, with a closed window). The node must
//! notice within its dead-peer bounds, end the stream, and expire the session as API.md
//! promises: its publishers gone within the session's TTL + 10 s (before, the stream and
//! the session lived until TCP gave up, about 15 minutes, or for ever).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::json;
use testkit::http::Client;
use testkit::netns::Link;
use testkit::{eventually, DEADLINE};

const TTL: u64 = 5;

/// The registerIds listed for `data_id`.
async fn publishers(api: &Client, data_id: &str) -> Vec<String> {
    let (st, v) = api.get(&format!("/api/v1/data?dataId={data_id}")).await;
    assert_eq!(st, 200, "{v}");
    v["publishers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["registerId"].as_str().unwrap().to_owned())
        .collect()
}

/// A session of `TTL` seconds with publisher `register_id` of `data_id` and a subscriber of
/// it, so that pushes go to its stream.
async fn doomed_session(api: &Client, data_id: &str, register_id: &str) -> String {
    let (st, v) = api
        .post("/api/v1/sessions", json!({"ttlSeconds": TTL}))
        .await;
    assert_eq!(st, 201, "{v}");
    let sid = v["sessionId"].as_str().unwrap().to_owned();
    let (st, v) = api
        .publish(
            &sid,
            json!({"dataId": data_id, "registerId": register_id, "data": ["10.0.0.1:80"]}),
        )
        .await;
    assert!(st.is_success(), "{v}");
    api.subscribe(&sid, json!({"dataId": data_id})).await;
    sid
}

/// Reads `sock` until `needle` has arrived.
fn read_until(sock: &mut std::net::TcpStream, needle: &str) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + DEADLINE;
    while !String::from_utf8_lossy(&seen).contains(needle) {
        assert!(Instant::now() < deadline, "no {needle:?} in {seen:?}");
        match sock.read(&mut buf) {
            Ok(0) => panic!("stream ended before {needle:?}: {seen:?}"),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("reading the stream: {e}"),
        }
    }
}

async fn vanished_peer(link: &Link) {
    let node = link
        .near
        .spawn("registry-node", testkit::binary::REGISTRY_NODE.path())
        .args(["--http-addr", &format!("{}:0", link.near.ip)])
        .args(["--push-delay-ms", "50"])
        .env("RUST_LOG", "info")
        .listening(Duration::from_secs(60))
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = node
        .listening_addr("http")
        .expect("http address")
        .to_owned();
    let api = Client::new(&addr);

    // The session whose client will vanish.
    let sid = doomed_session(&api, "vanish.svc", "doomed").await;

    // Its stream, held by a peer in the other namespace.
    let mut peer = link
        .far
        .connect(addr.parse().unwrap())
        .expect("connect from the peer's namespace");
    peer.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    write!(
        peer,
        "GET /api/v1/sessions/{sid}/events HTTP/1.1\r\nhost: {addr}\r\n\r\n"
    )
    .unwrap();
    read_until(&mut peer, "event: push");

    // The open stream keeps the session alive past its TTL.
    tokio::time::sleep(Duration::from_secs(TTL + 2)).await;
    assert_eq!(publishers(&api, "vanish.svc").await, ["doomed"]);

    // The peer vanishes; a change is pushed to it at once (data in flight: no keepalive
    // probe is sent while it is unacknowledged).
    link.far.vanish();
    let vanished = Instant::now();
    let other = api.session(60).await;
    let (st, v) = api
        .publish(
            &other,
            json!({"dataId": "vanish.svc", "registerId": "change", "data": ["10.0.0.2:80"]}),
        )
        .await;
    assert!(st.is_success(), "{v}");

    let bound = Duration::from_secs(TTL + 10);
    eventually(
        "the vanished peer's publisher to be gone",
        bound,
        || async { publishers(&api, "vanish.svc").await == ["change"] },
    )
    .await;
    let took = vanished.elapsed();
    eprintln!("the vanished peer's session expired {took:?} after it vanished (TTL {TTL} s)");
    assert!(took <= bound, "{took:?}");
    let (st, _) = api
        .post(&format!("/api/v1/sessions/{sid}/heartbeat"), json!({}))
        .await;
    assert_eq!(st, 404, "the session expired");
    drop(peer);
    drop(node);
}

#[test]
fn a_vanished_stream_peer_is_dropped_and_its_session_expires_within_ttl_plus_10s() {
    let test = "a_vanished_stream_peer_is_dropped_and_its_session_expires_within_ttl_plus_10s";
    if !testkit::netns::can_run(test) {
        return;
    }
    let link = Link::new();
    // The test thread lives in the node's namespace: its HTTP calls are not cut.
    std::thread::scope(|s| {
        s.spawn(|| {
            link.near.enter();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(vanished_peer(&link))
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
}

#[tokio::test]
async fn a_client_that_stops_reading_its_stream_loses_it_and_its_session_expires() {
    let mut node = testkit::node::Node::start(&[]);
    let api = Client::new(&node.addr);
    let sid = doomed_session(&api, "hung.svc", "hung").await;

    // The stream, on a socket with a small receive buffer, read up to its first push.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = node.addr.parse().unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut peer: std::net::TcpStream = socket.into();
    peer.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    write!(
        peer,
        "GET /api/v1/sessions/{sid}/events HTTP/1.1\r\nhost: {}\r\n\r\n",
        node.addr
    )
    .unwrap();
    read_until(&mut peer, "event: push");

    // From now on the client reads nothing; a few pushes of ~1 MB fill its window (far
    // fewer than its stream's buffer holds: the stream-stall rule is not what ends it).
    let other = api.session(60).await;
    let big = "x".repeat(16_000);
    let mut stopped = None;
    for round in 0..4 {
        let mut data = vec![big.clone(); 60];
        data[0] = format!("round-{round}");
        let (st, v) = api
            .publish(
                &other,
                json!({"dataId": "hung.svc", "registerId": "big", "data": data}),
            )
            .await;
        assert!(st.is_success(), "{v}");
        // The clock starts once the first push is due on the stream no one reads, not
        // before the time the four publishes of ~1 MB take.
        stopped.get_or_insert_with(Instant::now);
    }
    let stopped = stopped.expect("the first publish acknowledged");
    let bound = Duration::from_secs(TTL + 10);
    eventually("the hung client's publisher to be gone", bound, || async {
        publishers(&api, "hung.svc").await == ["big"]
    })
    .await;
    let took = stopped.elapsed();
    eprintln!("the hung client's session expired {took:?} after it stopped reading (TTL {TTL} s)");
    assert!(took <= bound, "{took:?}");
    let log = node.process().log_tail(10_000);
    assert!(
        !log.contains("took no push for --stream-stall-ms"),
        "the stall rule closed the stream: {log}"
    );
    drop(peer);
}
