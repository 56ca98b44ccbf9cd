//! Black-box: 20,000 malformed requests (bad methods, paths, queries, headers, framing,
//! bodies, JSON, UTF-8 and sizes) over raw TCP to a real node process. No answer is a 5xx,
//! every answer is a 4xx in API.md's error shape (whether a handler, an extractor or hyper
//! itself refused the request), the node stays alive, and its state is exactly what it
//! was: the same publishers, the same services, the session still there.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::http::Client;
use testkit::node::Node;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REQUESTS: usize = 20_000;
const CONNECTIONS_AT_ONCE: usize = 16;

/// One request's bytes: a whole HTTP/1.1 message (the head always complete, so that the node
/// answers instead of waiting), asking the node to close after its answer.
fn request(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if !headers.iter().any(|(n, _)| {
        n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
    }) {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn json_post(target: &str, body: &[u8]) -> Vec<u8> {
    request(
        "POST",
        target,
        &[("Content-Type", "application/json")],
        body,
    )
}

fn junk(rng: &mut StdRng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.random::<u8>()).collect()
}

/// Percent-encodes every byte: any byte sequence becomes a valid request target piece.
fn pct(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

/// The `i`-th malformed request; `sid` is a live session whose state must not change.
fn malformed(i: usize, rng: &mut StdRng, sid: &str) -> (String, Vec<u8>) {
    let kinds = 40;
    let kind = i % kinds;
    let publishers = format!("/api/v1/sessions/{sid}/publishers");
    let subscribers = format!("/api/v1/sessions/{sid}/subscribers");
    let bad_utf8 = [0xffu8, 0xfe, 0xc3, 0x28, 0xed, 0xa0, 0x80];
    let name = |rng: &mut StdRng| pct(&junk(rng, 6));
    let req = match kind {
        // Methods.
        0 => request("G@T", "/api/v1/data?dataId=a", &[], b""),
        1 => request("FROB", "/api/v1/sessions", &[], b""),
        2 => request("PATCH", &publishers, &[], b"{}"),
        3 => request("PUT", "/api/v1/sessions", &[], b"{}"),
        4 => request("TRACE", "/api/v1/data", &[], b""),
        // Paths.
        5 => request("GET", &format!("/api/v1/{}", name(rng)), &[], b""),
        6 => request("GET", &format!("/ui/{}", pct(&bad_utf8)), &[], b""),
        7 => request(
            "DELETE",
            &format!(
                "/api/v1/sessions/{}/publishers/{}",
                pct(&bad_utf8),
                name(rng)
            ),
            &[],
            b"",
        ),
        8 => request(
            "DELETE",
            &format!("{publishers}/{}", "r".repeat(129 + rng.random_range(0..64))),
            &[],
            b"",
        ),
        9 => request("GET", "/internal/v1/status", &[], b""),
        10 => json_post(
            "/internal/v1/membership",
            br#"{"epoch":18446744073709551615,"members":["127.0.0.1:9999"]}"#,
        ),
        11 => request("GET", &format!("/{}", "a/".repeat(40_000)), &[], b""),
        // Queries.
        12 => request(
            "GET",
            &format!("/api/v1/data?dataId={}", pct(&bad_utf8)),
            &[],
            b"",
        ),
        13 => request("GET", "/api/v1/data?dataId=", &[], b""),
        14 => request("GET", "/api/v1/data?dataId=a%23%40%23b", &[], b""),
        15 => request(
            "GET",
            &format!("/api/v1/data?dataId=a&waitIndex={}", name(rng)),
            &[],
            b"",
        ),
        16 => request(
            "GET",
            "/api/v1/data?dataId=a&waitIndex=0&wait=forever",
            &[],
            b"",
        ),
        17 => request("GET", "/api/v1/services?limit=-1", &[], b""),
        18 => request(
            "GET",
            &format!("/api/v1/services?{}=1", pct(&bad_utf8)),
            &[],
            b"",
        ),
        // Headers and framing.
        19 => request("GET", "/api/v1/data?dataId=a", &[("Bad Header", "x")], b""),
        20 => request(
            "POST",
            "/api/v1/sessions",
            &[("Content-Length", "abc")],
            b"",
        ),
        21 => request(
            "POST",
            &publishers,
            &[("Transfer-Encoding", "chunked")],
            b"zz\r\n{}\r\n0\r\n\r\n",
        ),
        22 => request(
            "POST",
            &publishers,
            &[("Content-Length", "2"), ("Content-Length", "3")],
            b"{}",
        ),
        // A head over the node's buffer, now and then (they are large); else a header
        // value with a NUL byte.
        23 if (i / kinds).is_multiple_of(10) => request(
            "GET",
            "/api/v1/data?dataId=a",
            &[("X-Big", &"h".repeat(rng.random_range(600_000..700_000)))],
            b"",
        ),
        23 => request("GET", "/api/v1/data?dataId=a", &[("X-Nul", "a\0b")], b""),
        24 => {
            let many: Vec<(String, String)> =
                (0..150).map(|n| (format!("X-H{n}"), "v".into())).collect();
            let refs: Vec<(&str, &str)> =
                many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            request("GET", "/api/v1/data?dataId=a", &refs, b"")
        }
        25 => request(
            "GET",
            "/api/v1/data",
            &[("Authorization", "Bearer \u{1}")],
            b"",
        ),
        26 => {
            let mut r = request("GET", "/api/v1/data?dataId=", &[], b"");
            // A header value with raw non-UTF-8 bytes.
            let at = r.len() - 2;
            r.splice(at..at, b"X-Bytes: \xff\xfe\r\n".iter().copied());
            r
        }
        27 => {
            // A request line that is no HTTP at all.
            let mut r = junk(rng, 64);
            r.retain(|b| *b != b'\r' && *b != b'\n');
            r.extend_from_slice(b"\r\n\r\n");
            r
        }
        28 => b"GET / HTTP/1.2\r\nHost: x\r\n\r\n".to_vec(),
        // Bodies and JSON.
        29 => json_post(&publishers, &junk(rng, 200)),
        30 => json_post(&publishers, br#"{"dataId": "", "data": []}"#),
        31 => json_post(&publishers, br#"{"dataId": "a#@#b", "data": ["x"]}"#),
        32 => json_post(&publishers, br#"{"dataId": "a", "data": "not a list"}"#),
        33 => json_post(
            &publishers,
            &[
                br#"{"dataId": "a", "zone": ""#.as_slice(),
                &bad_utf8,
                br#"", "data": []}"#,
            ]
            .concat(),
        ),
        34 => {
            let items: Vec<String> = (0..1001).map(|n| format!("10.0.0.{n}")).collect();
            json_post(
                &publishers,
                json!({"dataId": "big", "data": items})
                    .to_string()
                    .as_bytes(),
            )
        }
        35 => json_post(
            &publishers,
            json!({"dataId": "a", "data": ["x".repeat(16 * 1024 + 1)]})
                .to_string()
                .as_bytes(),
        ),
        36 => json_post(&publishers, "[".repeat(200_000).as_bytes()),
        37 => json_post(&subscribers, br#"{"dataId": "a", "scope": "everywhere"}"#),
        38 => json_post("/api/v1/sessions", br#"{"ttlSeconds": 1}"#),
        _ => {
            // A body over 1 MiB, sometimes; else a trailing-garbage body.
            if (i / kinds).is_multiple_of(25) {
                json_post(&publishers, &vec![b' '; 1024 * 1024 + 16])
            } else {
                json_post(&publishers, br#"{"dataId": "a", "data": []} trailing"#)
            }
        }
    };
    (format!("kind {kind}"), req)
}

/// The status and body of the one answer on a connection the node closes after it.
async fn exchange(addr: &str, bytes: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    // The node may answer (and close) before it read everything, e.g. a head too large.
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .map_err(|_| "no answer within 20 s".to_owned())?
        .or_else(|e| {
            if out.is_empty() {
                Err(e.to_string())
            } else {
                Ok(0)
            }
        })?;
    let text = String::from_utf8_lossy(&out);
    let (head, _) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no complete answer: {:?}", &text[..text.len().min(200)]))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let body = out[head.len() + 4..].to_vec();
    Ok((status, body))
}

fn error_shaped(body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    v["error"]["code"].as_str().is_some_and(|c| !c.is_empty())
        && v["error"]["message"].as_str().is_some()
        && v.as_object().is_some_and(|o| o.len() == 1)
}

/// What must not change: every service with its exact publishers, and the session.
async fn state(c: &Client, sid: &str) -> (Value, Vec<(String, Value)>, u16) {
    let (st, services) = c.get("/api/v1/services").await;
    assert_eq!(st, 200, "{services}");
    let mut sets = Vec::new();
    for svc in ["svc.a", "svc.b", "big", "a"] {
        let (st, v) = c.get(&format!("/api/v1/data?dataId={svc}")).await;
        assert_eq!(st, 200, "{v}");
        sets.push((svc.to_owned(), v["publishers"].clone()));
    }
    let (hb, _) = c
        .post(&format!("/api/v1/sessions/{sid}/heartbeat"), json!(null))
        .await;
    (services["services"].clone(), sets, hb.as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_thousand_malformed_requests_change_nothing() {
    let mut node = Node::start(&[]);
    let c = Client::new(&node.addr);
    let sid = c.session(300).await;
    for (svc, rid, addr) in [
        ("svc.a", "a-1", "10.1.0.1:80"),
        ("svc.a", "a-2", "10.1.0.2:80"),
        ("svc.b", "b-1", "10.2.0.1:80"),
    ] {
        let (st, v) = c
            .publish(
                &sid,
                json!({"dataId": svc, "registerId": rid, "data": [addr]}),
            )
            .await;
        assert_eq!(st, 201, "{v}");
    }
    let before = state(&c, &sid).await;
    assert_eq!(before.2, 200);

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..CONNECTIONS_AT_ONCE)
        .map(|w| {
            let (next, addr, sid) = (next.clone(), node.addr.clone(), sid.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(w as u64);
                let mut failures = Vec::new();
                let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= REQUESTS {
                        break;
                    }
                    let (what, bytes) = malformed(i, &mut rng, &sid);
                    match exchange(&addr, &bytes).await {
                        Ok((status, body)) => {
                            *statuses.entry(status).or_default() += 1;
                            if !(400..500).contains(&status) || !error_shaped(&body) {
                                failures.push(format!(
                                    "request {i} ({what}): {status} {}",
                                    String::from_utf8_lossy(&body[..body.len().min(300)])
                                ));
                            }
                        }
                        Err(e) => failures.push(format!("request {i} ({what}): {e}")),
                    }
                }
                (failures, statuses)
            })
        })
        .collect();
    let mut failures = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for w in workers {
        let (f, s) = w.await.expect("worker");
        failures.extend(f);
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
    }
    eprintln!(
        "{REQUESTS} malformed requests in {:?}; answers by status: {statuses:?}",
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {REQUESTS} answers were not a 4xx in the error shape, e.g.:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        node.process().exited().is_none(),
        "the node is still running"
    );
    let after = state(&c, &sid).await;
    assert_eq!(after, before, "the malformed requests changed nothing");
}
