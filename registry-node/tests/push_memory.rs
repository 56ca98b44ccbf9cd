//! Memory that does not multiply, black-box against the binary: a datum near 1 MiB pushed
//! to 1,024 subscribers on one event stream that is never read. The push is rendered once
//! per version and shared by every subscriber's frame, and the stream's outbox is bounded in
//! bytes, so the node's RSS stays far below what 1,024 copies would take (about 1 GiB).

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use testkit::http::Client;
use testkit::{eventually, DEADLINE};
use tokio::io::AsyncWriteExt;

const SUBSCRIBERS: usize = 1024;
/// RSS the node may reach in this test.
const RSS_BOUND: u64 = 300 * 1024 * 1024;

/// A field of /proc/PID/status in bytes (`VmRSS`, `VmHWM`).
fn status_bytes(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the node runs");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in {status}"));
    kib * 1024
}

/// The value of an unlabelled counter or gauge in `/metrics`.
async fn metric(api: &Client, name: &str) -> f64 {
    let (_, text) = api.get("/metrics").await;
    let text = text.as_str().unwrap_or_default().to_owned();
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = rest.strip_prefix("_total").unwrap_or(rest);
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}

#[tokio::test]
async fn a_large_datum_to_1024_subscribers_on_an_unread_stream_stays_small() {
    let node = testkit::node::Node::start(&[]);
    let pid = node.pid().as_raw();
    let api = Client::new(&node.addr);

    // The datum: 4 publishers of 16 items of 16,000 bytes = 1,024,000 bytes of data.
    let publisher = api.session(600).await;
    for p in 0..4 {
        let data: Vec<String> = (0..16)
            .map(|i| format!("{p:x}{i:x}{}", "x".repeat(16_000 - 2)))
            .collect();
        let (st, v) = api
            .publish(
                &publisher,
                json!({"dataId": "big.svc", "registerId": format!("big-{p}"), "data": data}),
            )
            .await;
        assert!(st.is_success(), "{v}");
    }

    // 1,024 subscribers of it on one session, registered before its stream opens.
    let stuck = api.session(600).await;
    let registered = futures::stream::iter(0..SUBSCRIBERS)
        .map(|i| {
            let (api, stuck) = (api.clone(), stuck.clone());
            async move {
                api.subscribe(
                    &stuck,
                    json!({"dataId": "big.svc", "registerId": format!("sub-{i}")}),
                )
                .await
            }
        })
        .buffer_unordered(16)
        .count()
        .await;
    assert_eq!(registered, SUBSCRIBERS);
    let before = status_bytes(pid, "VmRSS");

    // The stream: asked for with a small receive buffer, then never read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(node.addr.parse().unwrap()).await.unwrap();
    let req = format!(
        "GET /api/v1/sessions/{stuck}/events HTTP/1.1\r\nhost: {}\r\n\r\n",
        node.addr
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    // The full push of the stream's opening has reached every subscriber: each one's first
    // delivery either queued its push (sent) or found the outbox full (failed).
    eventually(
        "every subscriber's first push queued or refused",
        DEADLINE,
        || async {
            let sent = metric(&api, "registry_pushes_sent").await;
            let failed = metric(&api, "registry_pushes_failed").await;
            sent + failed >= SUBSCRIBERS as f64
        },
    )
    .await;

    // Watch the node's memory while the full push of every subscriber is due on it.
    let mut peak = 0;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(8) {
        peak = peak.max(status_bytes(pid, "VmRSS"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hwm = status_bytes(pid, "VmHWM");
    let mib = |b: u64| b / (1024 * 1024);
    eprintln!(
        "RSS before the stream {} MiB, peak while it was unread {} MiB, high-water mark {} MiB",
        mib(before),
        mib(peak),
        mib(hwm)
    );
    assert!(
        peak < RSS_BOUND && hwm < RSS_BOUND,
        "RSS reached {} MiB (high-water mark {} MiB); the bound is {} MiB",
        mib(peak),
        mib(hwm),
        mib(RSS_BOUND)
    );

    // Not vacuous: the stream was pushed to, and pushes were held back for want of room.
    assert!(metric(&api, "registry_pushes_failed").await >= 1.0);
    // The datum was rendered once per version, not once per subscriber.
    let renders = metric(&api, "registry_push_renders").await;
    assert!(
        renders < 10.0,
        "{renders} renderings of one datum version for {SUBSCRIBERS} subscribers"
    );

    // The node still serves a reader the whole datum, byte for byte.
    let reader = api.session(600).await;
    let mut events = api.events(&reader).await;
    api.subscribe(&reader, json!({"dataId": "big.svc"})).await;
    let push = events.wait_for(DEADLINE, |p| p.event == "push").await;
    let items = push.data["zones"]["DEFAULT_ZONE"].as_array().unwrap();
    assert_eq!(items.len(), 64);
    assert!(items.iter().all(|i| i.as_str().unwrap().len() == 16_000));
    drop(stream);
}
