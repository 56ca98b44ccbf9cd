//! Access rules with static tokens, on real processes (README "Access rules", SECURITY.md):
//! every rule, every `401` and `403` of the public API, nothing changed by a refusal, the
//! services list filtered by subscribe rights, the audit metric, the access file re-read on
//! change (a bad one keeps the rules), and a registerId taken over only by its principal
//! across session nodes (3 data + 2 session processes).

mod cluster_kit;

use registry_types::access::sha256_hex;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use testkit::fs::replace_file;
use testkit::http::Client;
use testkit::node::Node;
use testkit::{always, eventually, DEADLINE};

const ROOT: &str = "root-secret";
const PAY: &str = "pay-secret";
const CHECKOUT: &str = "checkout-secret";
const READER: &str = "read-secret";
const ADMIN: &str = "admin-secret";
const OTHER: &str = "other-secret";

fn access_yaml(reader_may_publish: bool) -> String {
    let extra = if reader_may_publish {
        "    publish: [\"com.shop.pay.*\"]\n"
    } else {
        ""
    };
    format!(
        r#"tokens:
  - {{name: payments, sha256: "{}"}}
  - {{name: checkout, sha256: "{}"}}
  - {{name: reader, sha256: "{}"}}
  - {{name: ops, sha256: "{}"}}
  - {{name: other, sha256: "{}"}}
rules:
  - principals: ["token:payments", "serviceaccount:shop/checkout"]
    publish: ["com.shop.pay.*"]
    subscribe: ["com.shop.*"]
  - principals: ["token:checkout"]
    publish: ["com.shop.pay.*"]
    subscribe: ["com.shop.pay.*"]
  - principals: ["token:reader"]
    subscribe: ["com.shop.pay.*"]
{extra}  - principals: ["token:ops"]
    admin: true
  - principals: ["token:other"]
    publish: ["org.*"]
    subscribe: ["org.*"]
"#,
        sha256_hex(PAY.as_bytes()),
        sha256_hex(CHECKOUT.as_bytes()),
        sha256_hex(READER.as_bytes()),
        sha256_hex(ADMIN.as_bytes()),
        sha256_hex(OTHER.as_bytes())
    )
}

fn assert_error(
    what: &str,
    got: (StatusCode, Value),
    status: StatusCode,
    code: &str,
    says: &[&str],
) {
    let (s, v) = got;
    assert_eq!(s, status, "{what}: {v}");
    assert_eq!(v["error"]["code"], code, "{what}: {v}");
    let m = v["error"]["message"].as_str().unwrap_or_default();
    for word in says {
        assert!(m.contains(word), "{what}: {m:?} should name {word:?}");
    }
}

fn data_ids(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["dataId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn publishers(v: &Value) -> Vec<(String, Vec<String>)> {
    v["publishers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["registerId"].as_str().unwrap().to_owned(),
                p["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect()
}

async fn metric(c: &Client, reason: &str) -> u64 {
    let text = c
        .http
        .get(format!("{}/metrics", c.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = format!("registry_access_denied_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test]
async fn static_tokens_get_exactly_what_their_rules_grant() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.yaml");
    replace_file(&file, access_yaml(false));
    let mut node = Node::start(&["--token", ROOT, "--access-file", file.to_str().unwrap()]);
    let anon = Client::new(&node.addr);
    let root = anon.clone().with_token(ROOT);
    let pay = anon.clone().with_token(PAY);
    let checkout = anon.clone().with_token(CHECKOUT);
    let reader = anon.clone().with_token(READER);
    let ops = anon.clone().with_token(ADMIN);
    let other = anon.clone().with_token(OTHER);
    let wrong = anon.clone().with_token("not-a-token");
    // A hash of a token is not the token.
    let hash = anon.clone().with_token(&sha256_hex(PAY.as_bytes()));

    // 401 without a valid credential, on every kind of route; probes stay open.
    for c in [&anon, &wrong, &hash] {
        assert_error(
            "create",
            c.post("/api/v1/sessions", json!({})).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            &[],
        );
        assert_error(
            "data",
            c.get("/api/v1/data?dataId=com.shop.pay.card").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            &[],
        );
        assert_error(
            "services",
            c.get("/api/v1/services").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            &[],
        );
        assert_error(
            "admin",
            c.get("/api/v1/admin/push").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            &[],
        );
        assert_error(
            "cluster",
            c.get("/api/v1/cluster").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            &[],
        );
    }
    assert_eq!(anon.get("/healthz").await.0, StatusCode::OK);

    // Publish: only what the rules grant; a refusal names the right and the dataId.
    let ps = pay.session(60).await;
    let (s, v) = pay
        .publish(
            &ps,
            json!({"dataId": "com.shop.pay.card", "registerId": "pay-1", "data": ["10.0.0.1:1"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_error(
        "payments publishes outside its patterns",
        pay.publish(
            &ps,
            json!({"dataId": "com.shop.cart", "registerId": "cart-1", "data": ["x"]}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        &["token:payments", "publish", "com.shop.cart"],
    );
    // A batch with one entry without the right changes nothing.
    assert_error(
        "batch",
        pay.post(
            &format!("/api/v1/sessions/{ps}/publishers:batch"),
            json!({"publishers": [
                {"dataId": "com.shop.pay.batch", "registerId": "b-1", "data": ["x"]},
                {"dataId": "org.batch", "registerId": "b-2", "data": ["y"]}]}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        &["publishers[1]", "org.batch"],
    );
    let rs = reader.session(60).await;
    assert_error(
        "reader publishes",
        reader
            .publish(
                &rs,
                json!({"dataId": "com.shop.pay.card", "registerId": "r-1", "data": ["x"]}),
            )
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        &["token:reader", "publish"],
    );
    let os = other.session(60).await;
    let (s, v) = other
        .publish(
            &os,
            json!({"dataId": "org.thing", "registerId": "o-1", "data": ["o"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let rts = root.session(60).await;
    let (s, v) = root
        .publish(
            &rts,
            json!({"dataId": "com.shop.cart", "registerId": "cart-root", "data": ["c"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "--token publishes anything: {v}");

    // Nothing refused landed.
    for id in ["com.shop.pay.batch", "org.batch"] {
        let (s, v) = root.get(&format!("/api/v1/data?dataId={id}")).await;
        assert_eq!(s, StatusCode::OK);
        assert!(publishers(&v).is_empty(), "{id}: {v}");
    }
    let (_, v) = root.get("/api/v1/data?dataId=com.shop.cart").await;
    assert_eq!(
        publishers(&v),
        vec![("cart-root".to_owned(), vec!["c".to_owned()])]
    );
    let (_, v) = root.get("/api/v1/data?dataId=com.shop.pay.card").await;
    assert_eq!(
        publishers(&v),
        vec![("pay-1".to_owned(), vec!["10.0.0.1:1".to_owned()])]
    );

    // Subscribe rights govern subscribers, queries and blocking queries.
    let (s, v) = pay
        .post(
            &format!("/api/v1/sessions/{ps}/subscribers"),
            json!({"dataId": "com.shop.cart"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_error(
        "payments subscribes to org",
        pay.post(
            &format!("/api/v1/sessions/{ps}/subscribers"),
            json!({"dataId": "org.thing"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        &["subscribe", "org.thing"],
    );
    assert_eq!(
        reader.get("/api/v1/data?dataId=com.shop.pay.card").await.0,
        StatusCode::OK
    );
    assert_error(
        "reader queries cart",
        reader.get("/api/v1/data?dataId=com.shop.cart").await,
        StatusCode::FORBIDDEN,
        "forbidden",
        &["subscribe", "com.shop.cart"],
    );
    assert_error(
        "reader blocks on cart",
        reader
            .get("/api/v1/data?dataId=com.shop.cart&waitIndex=0&wait=1s")
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        &["subscribe"],
    );
    let (s, v) = reader
        .get("/api/v1/data?dataId=com.shop.pay.card&waitIndex=0&wait=1s")
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // The services list shows only what the caller may subscribe to.
    let (_, v) = root.get("/api/v1/services").await;
    assert_eq!(
        data_ids(&v),
        ["com.shop.cart", "com.shop.pay.card", "org.thing"]
    );
    let (_, v) = pay.get("/api/v1/services").await;
    assert_eq!(data_ids(&v), ["com.shop.cart", "com.shop.pay.card"]);
    let (_, v) = reader.get("/api/v1/services").await;
    assert_eq!(data_ids(&v), ["com.shop.pay.card"]);
    let (_, v) = reader
        .get("/api/v1/services?prefix=com.shop.&offset=0&sort=publisherCount")
        .await;
    assert_eq!(data_ids(&v), ["com.shop.pay.card"]);
    assert_eq!(v["total"], 1);
    let (_, v) = other.get("/api/v1/services?prefix=com.").await;
    assert_eq!(data_ids(&v), Vec::<String>::new());
    let (_, v) = ops.get("/api/v1/services").await;
    assert_eq!(data_ids(&v), Vec::<String>::new());

    // Admin routes need admin.
    for c in [&pay, &reader, &other] {
        assert_error(
            "admin get",
            c.get("/api/v1/admin/push").await,
            StatusCode::FORBIDDEN,
            "forbidden",
            &["admin"],
        );
        assert_error(
            "admin put",
            c.raw(
                Method::PUT,
                "/api/v1/admin/push",
                Some(br#"{"stopPush":true}"#.to_vec()),
            )
            .await,
            StatusCode::FORBIDDEN,
            "forbidden",
            &["admin"],
        );
    }
    let (_, v) = root.get("/api/v1/admin/push").await;
    assert_eq!(v["stopPush"], false, "a refused PUT changed nothing");
    let (s, v) = ops
        .raw(
            Method::PUT,
            "/api/v1/admin/push",
            Some(br#"{"stopPush":true}"#.to_vec()),
        )
        .await;
    assert_eq!((s, v["stopPush"].clone()), (StatusCode::OK, json!(true)));
    let (s, _) = root
        .raw(
            Method::PUT,
            "/api/v1/admin/push",
            Some(br#"{"stopPush":false}"#.to_vec()),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_error(
        "ops publishes",
        {
            let s = ops.session(60).await;
            ops.publish(&s, json!({"dataId": "com.shop.pay.x", "data": ["x"]}))
                .await
        },
        StatusCode::FORBIDDEN,
        "forbidden",
        &["publish"],
    );

    // A session is its creator's: another principal cannot use it, even with the right.
    let session_calls: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::POST,
            format!("/api/v1/sessions/{ps}/heartbeat"),
            None,
        ),
        (Method::GET, format!("/api/v1/sessions/{ps}/events"), None),
        (
            Method::POST,
            format!("/api/v1/sessions/{ps}/publishers"),
            Some(json!({"dataId": "com.shop.pay.card", "registerId": "pay-1", "data": ["stolen"]})),
        ),
        (
            Method::POST,
            format!("/api/v1/sessions/{ps}/subscribers"),
            Some(json!({"dataId": "com.shop.pay.card"})),
        ),
        (
            Method::DELETE,
            format!("/api/v1/sessions/{ps}/publishers/pay-1"),
            None,
        ),
        (Method::DELETE, format!("/api/v1/sessions/{ps}"), None),
    ];
    for (method, path, body) in &session_calls {
        let got = checkout
            .raw(
                method.clone(),
                path,
                body.as_ref().map(|b| b.to_string().into_bytes()),
            )
            .await;
        assert_error(
            &format!("{method} {path} by checkout"),
            got,
            StatusCode::FORBIDDEN,
            "forbidden",
            &["another principal"],
        );
    }
    let (s, _) = pay
        .post(&format!("/api/v1/sessions/{ps}/heartbeat"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "the session is still there");

    // Ownership: a registerId held by payments is not checkout's to take, though checkout
    // may publish that dataId; payments itself gets the usual 409 from another session.
    let cs = checkout.session(60).await;
    assert_error(
        "checkout takes pay-1",
        checkout
            .publish(
                &cs,
                json!({"dataId": "com.shop.pay.card", "registerId": "pay-1", "data": ["stolen"]}),
            )
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        &["pay-1", "another principal"],
    );
    let ps2 = pay.session(60).await;
    let (s, v) = pay
        .publish(
            &ps2,
            json!({"dataId": "com.shop.pay.card", "registerId": "pay-1", "data": ["x"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (_, v) = root.get("/api/v1/data?dataId=com.shop.pay.card").await;
    assert_eq!(
        publishers(&v),
        vec![("pay-1".to_owned(), vec!["10.0.0.1:1".to_owned()])]
    );
    // Once payments' session ends, the registerId is free.
    assert_eq!(
        pay.delete(&format!("/api/v1/sessions/{ps}")).await.0,
        StatusCode::NO_CONTENT
    );
    let (s, v) = checkout
        .publish(
            &cs,
            json!({"dataId": "com.shop.pay.card", "registerId": "pay-1", "data": ["c"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    // Every denial counted by reason, and logged with principal, route and reason.
    for reason in [
        "missing_credential",
        "invalid_credential",
        "publish",
        "subscribe",
        "admin",
        "session",
        "owner",
    ] {
        assert!(
            metric(&root, reason).await > 0,
            "no {reason} denial counted"
        );
    }
    let log = node.process().log_tail(10_000);
    assert!(
        log.lines().any(|l| {
            l.contains("access denied") && l.contains("token:checkout") && l.contains("owner")
        }),
        "no one line logs checkout's owner denial: {log}"
    );
    // The same denial again and again is logged once (rate-limited), counted every time.
    let before = metric(&root, "admin").await;
    for _ in 0..20 {
        reader.get("/api/v1/admin/push").await;
    }
    assert_eq!(metric(&root, "admin").await, before + 20);
    let log = node.process().log_tail(100_000);
    let lines = log
        .lines()
        .filter(|l| {
            l.contains("access denied") && l.contains("token:reader") && l.contains("admin right")
        })
        .count();
    assert_eq!(lines, 1, "{log}");
}

#[tokio::test]
async fn the_access_file_is_read_again_and_a_bad_one_keeps_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.yaml");
    replace_file(&file, access_yaml(false));
    let mut node = Node::start(&["--access-file", file.to_str().unwrap()]);
    let reader = Client::new(&node.addr).with_token(READER);
    let s = reader.session(60).await;
    let body = json!({"dataId": "com.shop.pay.card", "registerId": "r-1", "data": ["r"]});
    assert_eq!(
        reader.publish(&s, body.clone()).await.0,
        StatusCode::FORBIDDEN
    );
    // Without --token, an access file alone still requires a credential.
    assert_eq!(
        Client::new(&node.addr).get("/api/v1/services").await.0,
        StatusCode::UNAUTHORIZED
    );

    replace_file(&file, access_yaml(true));
    eventually("the new rules apply", DEADLINE, || async {
        reader.publish(&s, body.clone()).await.0 == StatusCode::CREATED
    })
    .await;

    // A bad file is logged and the rules in use stay.
    replace_file(
        &file,
        "rules: [{principals: ['token:nobody'], admin: true}]",
    );
    let log_path = node.process().log_path().to_owned();
    eventually("the bad file is reported", DEADLINE, || async {
        std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("cannot be used"))
    })
    .await;
    let (s2, v) = reader
        .publish(
            &s,
            json!({"dataId": "com.shop.pay.two", "registerId": "r-2", "data": ["r"]}),
        )
        .await;
    assert_eq!(s2, StatusCode::CREATED, "{v}");
    let log = node.process().log_tail(1000);
    assert!(log.contains("rules[0].principals[0]"), "{log}");

    // A node does not start on a bad file, and says why.
    let bad = dir.path().join("bad.yaml");
    replace_file(
        &bad,
        "rules: [{principals: ['serviceaccount:x/y'], publsh: ['a']}]",
    );
    let bad_log = dir.path().join("bad.log");
    let refused = testkit::process::Spawn::registry_node("bad-access")
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--access-file",
            bad.to_str().unwrap(),
        ])
        .log(&bad_log)
        .start();
    assert!(
        refused.is_err(),
        "a node must not start on a bad access file"
    );
    let said = std::fs::read_to_string(&bad_log).unwrap();
    assert!(
        said.contains("--access-file") && said.contains("rules[0].publsh: unknown field"),
        "{said}"
    );
}

#[tokio::test]
async fn a_register_id_is_taken_over_across_session_nodes_only_by_its_principal() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.yaml");
    replace_file(&file, access_yaml(false));
    let c = cluster_kit::Cluster::start_with(
        3,
        2,
        cluster_kit::Options {
            cluster_token: Some("cluster-secret".into()),
            session_args: vec!["--access-file".into(), file.to_str().unwrap().into()],
            ..Default::default()
        },
    )
    .await;
    let on = |i: usize, t: &str| Client::new(c.sessions[i].addr.clone()).with_token(t);
    let body =
        |data: &str| json!({"dataId": "com.shop.pay.card", "registerId": "pay-1", "data": [data]});
    let held = |want: &'static str| {
        let readers = [on(0, PAY), on(1, PAY)];
        async move {
            for r in &readers {
                let (s, v) = r.get("/api/v1/data?dataId=com.shop.pay.card").await;
                if s != StatusCode::OK
                    || publishers(&v) != vec![("pay-1".to_owned(), vec![want.to_owned()])]
                {
                    return false;
                }
            }
            true
        }
    };

    let p0 = on(0, PAY);
    let old = p0.session(60).await;
    assert_eq!(p0.publish(&old, body("old")).await.0, StatusCode::CREATED);
    eventually("pay-1 everywhere", DEADLINE, || held("old")).await;

    // Another principal with the publish right, through the other session node: 403, and
    // the holder's publisher is untouched on every node.
    let k1 = on(1, CHECKOUT);
    let ks = k1.session(60).await;
    assert_error(
        "checkout takes pay-1 on another session node",
        k1.publish(&ks, body("stolen")).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        &["pay-1", "another principal"],
    );
    assert_error(
        "in a batch too",
        k1.post(
            &format!("/api/v1/sessions/{ks}/publishers:batch"),
            json!({"publishers": [body("stolen")]}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        &["pay-1"],
    );
    // The refused write left nothing behind: checkout's node holds no such publisher, and
    // the holder's stays through reconciliation rounds.
    assert_eq!(
        k1.delete(&format!("/api/v1/sessions/{ks}/publishers/pay-1"))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    always(
        "the holder's publisher through reconciliation rounds (--reconcile-ms 500)",
        Duration::from_secs(2),
        || held("old"),
    )
    .await;

    // The holder fails over to the other session node: its takeover is accepted, and the
    // end of its old session removes nothing.
    let p1 = on(1, PAY);
    let new = p1.session(60).await;
    let (s, v) = p1.publish(&new, body("new")).await;
    assert!(s.is_success(), "{s} {v}");
    eventually("the takeover everywhere", DEADLINE, || held("new")).await;
    assert_eq!(
        p0.delete(&format!("/api/v1/sessions/{old}")).await.0,
        StatusCode::NO_CONTENT
    );
    always(
        "the new owner's publisher after the old session's end",
        Duration::from_secs(5),
        || held("new"),
    )
    .await;
    // Still not checkout's, on either node.
    let k0 = on(0, CHECKOUT);
    let ks0 = k0.session(60).await;
    assert_eq!(
        k0.publish(&ks0, body("stolen")).await.0,
        StatusCode::FORBIDDEN
    );
    assert!(held("new").await);
}
