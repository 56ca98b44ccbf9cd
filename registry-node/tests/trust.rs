//! Cluster trust with real processes (SECURITY.md): two credentials, each opening only its
//! own routes; membership adopted only when signed by the operator's key, whatever the
//! source; data nodes that check every write they are sent.
//!
//! Each cluster: 3 data + 2 session nodes started with `--token`, `--cluster-token` and
//! `--membership-key`, membership written (signed) into the members file.

mod cluster_kit;

use cluster_kit::*;
use registry_node::data::store::DatumImage;
use registry_node::dataplane::wire::{ApplyRequest, InstallRequest};
use registry_node::model::{Publisher, PublisherOp};
use registry_trust::MembershipSigner;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const CLIENT_TOKEN: &str = "client-s3cret";
const CLUSTER_TOKEN: &str = "cluster-s3cret";

async fn trusted_cluster() -> (Cluster, Arc<MembershipSigner>) {
    let signer = Arc::new(MembershipSigner::generate());
    let c = Cluster::start_with(
        3,
        2,
        Options {
            token: Some(CLIENT_TOKEN.into()),
            cluster_token: Some(CLUSTER_TOKEN.into()),
            signer: Some(signer.clone()),
            ..Options::default()
        },
    )
    .await;
    (c, signer)
}

fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Sends `method url` with `auth` (a whole Authorization value) and `body`; the status and
/// the JSON answer (`null` when there is none).
async fn send(
    http: &reqwest::Client,
    method: &reqwest::Method,
    url: &str,
    auth: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value, Option<String>) {
    let mut req = http.request(method.clone(), url);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, r.json().await.unwrap_or(Value::Null), challenge)
}

fn publisher(source: &str, register_id: &str, version: u64, timestamp: u64) -> Arc<Publisher> {
    Arc::new(Publisher {
        register_id: register_id.into(),
        data_info_id: data_info_id("trust.svc").into(),
        zone: "DEFAULT_ZONE".into(),
        data: vec!["10.9.9.9:80".to_owned()].into(),
        version,
        register_timestamp: timestamp,
        register_seq: 0,
        client_id: None,
        session_id: "forged-session".into(),
        source: source.into(),
        owner: 42,
        principal: None,
    })
}

fn apply_body(source: &str, ops: Vec<PublisherOp>, membership: Option<Value>) -> Value {
    let mut v = serde_json::to_value(ApplyRequest {
        source: source.into(),
        ops,
        membership: None,
    })
    .expect("json");
    if let Some(m) = membership {
        v["membership"] = m;
    }
    v
}

/// Publisher count and epoch of every data node.
async fn data_state(c: &Cluster) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for i in 0..c.data.len() {
        let s = c.status(i).await.expect("status with the cluster token");
        out.push((
            s["epoch"].as_u64().unwrap_or(0),
            s["data"]["publisherCount"].as_u64().unwrap_or(0),
        ));
    }
    out
}

/// The epoch each session node uses (its internal status).
async fn session_epochs(c: &Cluster) -> Vec<u64> {
    let mut out = Vec::new();
    for i in 0..c.sessions.len() {
        let v: Value = c
            .internal
            .get(format!("{}/internal/v1/status", c.session_internal_url(i)))
            .send()
            .await
            .expect("session status")
            .json()
            .await
            .expect("json");
        out.push(v["epoch"].as_u64().unwrap_or(0));
    }
    out
}

/// Publishes on session 0, subscribes on session 1, and checks replication: the cluster
/// works end to end.
async fn the_cluster_works(c: &Cluster, tag: &str) {
    let sid_b = c.create_session(1).await;
    let mut sub = Subscriber {
        rx: c.stream(1, &sid_b),
        latest: BTreeMap::new(),
    };
    let svc = format!("works.{tag}");
    c.subscribe(1, &sid_b, &svc).await;
    wait_subscriber(&mut sub, &svc, &[], Duration::from_secs(10)).await;
    let sid_a = c.create_session(0).await;
    assert!(c.publish(0, &sid_a, &svc, "p1", &["10.0.0.1:80"]).await);
    let want = set(&[("p1", "10.0.0.1:80")]);
    wait_subscriber(&mut sub, &svc, &items(&want), Duration::from_secs(10)).await;
    c.wait_all_sessions_show(&svc, &want, Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_credential_opens_only_its_own_routes() {
    let (c, _signer) = trusted_cluster().await;
    let http = plain_client();
    let data = c.data_url(0);
    let me = c.data[0].addr.clone();
    let session_internal = c.session_internal_url(0);
    let forged = json!({"epoch": u64::MAX, "members": ["127.0.0.1:9999"]});
    let op = apply_body(
        "session-0",
        vec![PublisherOp::Put {
            publisher: publisher(
                "session-0",
                "intruder",
                1,
                registry_node::model::now_millis(),
            ),
        }],
        None,
    );
    let post = reqwest::Method::POST;
    let internal_routes: Vec<(reqwest::Method, String, Option<Value>)> = vec![
        (
            reqwest::Method::GET,
            format!("{data}/internal/v1/status"),
            None,
        ),
        (
            post.clone(),
            format!("{data}/internal/v1/membership"),
            Some(forged.clone()),
        ),
        (
            post.clone(),
            format!("{data}/internal/v1/data/apply"),
            Some(op.clone()),
        ),
        (
            post.clone(),
            format!("{data}/internal/v1/data/fetch"),
            Some(json!({"ids": [data_info_id("trust.svc")]})),
        ),
        (
            post.clone(),
            format!("{data}/internal/v1/data/services"),
            Some(json!({"prefix": "", "limit": 10})),
        ),
        (
            post.clone(),
            format!("{data}/internal/v1/data/changes"),
            Some(json!({"source": "x", "waitMs": 0})),
        ),
        (
            post.clone(),
            format!("{data}/internal/v1/data/reconcile"),
            Some(json!({"source": "x", "datums": [], "complete": true})),
        ),
        (
            post.clone(),
            format!("{data}/internal/v1/data/digest"),
            Some(json!({"for": me})),
        ),
        (
            post.clone(),
            format!("{data}/internal/v1/data/images"),
            Some(json!({"ids": [data_info_id("trust.svc")]})),
        ),
        (
            post.clone(),
            format!("{data}/internal/v1/data/install"),
            Some(json!({"images": []})),
        ),
        (
            reqwest::Method::GET,
            format!("{session_internal}/internal/v1/status"),
            None,
        ),
        (
            post.clone(),
            format!("{session_internal}/internal/v1/membership"),
            Some(forged.clone()),
        ),
    ];
    let client_bearer = format!("Bearer {CLIENT_TOKEN}");
    for (method, url, body) in &internal_routes {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some(client_bearer.as_str()),
            Some(CLUSTER_TOKEN),
        ] {
            let (status, v, challenge) = send(&http, method, url, auth, body.as_ref()).await;
            assert_eq!(status, 401, "{method} {url} with {auth:?}: {v}");
            assert_eq!(v["error"]["code"], "unauthorized", "{method} {url}: {v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{v}"
            );
            assert_eq!(challenge.as_deref(), Some("Bearer"));
        }
    }
    // The public listener serves no /internal/* at all: 404 in the error shape, whatever
    // the token, on every session node.
    let cluster_bearer = format!("Bearer {CLUSTER_TOKEN}");
    for s in 0..2 {
        let public = c.session_url(s);
        for (method, path, body) in [
            (reqwest::Method::GET, "/internal/v1/status", None),
            (post.clone(), "/internal/v1/membership", Some(&forged)),
            (post.clone(), "/internal/v1/data/apply", Some(&op)),
            (post.clone(), "/internal/v1/data/fetch", Some(&forged)),
        ] {
            for auth in [
                None,
                Some(client_bearer.as_str()),
                Some(cluster_bearer.as_str()),
            ] {
                let url = format!("{public}{path}");
                let (status, v, _) = send(&http, &method, &url, auth, body).await;
                assert_eq!(status, 404, "{method} {url} with {auth:?}: {v}");
                assert_eq!(v["error"]["code"], "not_found", "{v}");
            }
        }
    }
    // The cluster token does not open the public API either.
    let (status, v, _) = send(
        &http,
        &post,
        &format!("{}/api/v1/sessions", c.session_url(0)),
        Some(&cluster_bearer),
        Some(&json!({})),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );

    // Nothing any of it sent changed anything.
    assert_eq!(data_state(&c).await, vec![(1, 0); 3]);
    assert_eq!(session_epochs(&c).await, vec![1, 1]);
    // With the right credentials the whole cluster works.
    the_cluster_works(&c, "credentials").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_membership_changes_nothing_on_any_route_file_or_gossip() {
    let (c, signer) = trusted_cluster().await;
    let http = plain_client();
    let cluster_bearer = format!("Bearer {CLUSTER_TOKEN}");
    let members: Vec<String> = c.data.iter().map(|d| d.addr.clone()).collect();
    let unsigned_max = json!({"epoch": u64::MAX, "members": ["127.0.0.1:9999"]});
    let foreign = serde_json::to_value(
        registry_types::MembershipDoc {
            epoch: 50,
            members: vec!["127.0.0.1:9999".into()],
            leaving: vec![],
            signature: None,
            ids: Default::default(),
        }
        .signed(&MembershipSigner::generate()),
    )
    .expect("json");
    let mut tampered = c.membership_doc(50, &members, &[]);
    tampered["members"] = json!(["127.0.0.1:9999"]);
    let mut garbled = c.membership_doc(50, &members, &[]);
    garbled["signature"] = json!("not base64 at all");
    let forgeries = [&unsigned_max, &foreign, &tampered, &garbled];

    // Every route that takes a document.
    let membership_routes = [
        format!("{}/internal/v1/membership", c.data_url(0)),
        format!("{}/internal/v1/membership", c.data_url(2)),
        format!("{}/internal/v1/membership", c.session_internal_url(1)),
    ];
    for url in &membership_routes {
        for doc in forgeries {
            let (status, v, _) = send(
                &http,
                &reqwest::Method::POST,
                url,
                Some(&cluster_bearer),
                Some(doc),
            )
            .await;
            assert_eq!(status, 403, "{url} {doc}: {v}");
            assert_eq!(v["error"]["code"], "forbidden", "{v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("sign"),
                "{v}"
            );
        }
    }
    // Gossip: a forged document attached to a data-protocol request refuses the request.
    let now = registry_node::model::now_millis();
    let me = c.data[0].addr.clone();
    for doc in forgeries {
        let op = PublisherOp::Put {
            publisher: publisher("session-0", "via-gossip", 1, now),
        };
        let bodies = [
            (
                "apply",
                apply_body("session-0", vec![op], Some(doc.clone())),
            ),
            (
                "fetch",
                json!({"ids": [data_info_id("trust.svc")], "membership": doc}),
            ),
            (
                "changes",
                json!({"source": "session-0", "waitMs": 0, "membership": doc}),
            ),
            (
                "reconcile",
                json!({"source": "session-0", "datums": [], "complete": false, "membership": doc}),
            ),
            ("digest", json!({"for": me, "membership": doc})),
            ("install", json!({"images": [], "membership": doc})),
        ];
        for (route, body) in &bodies {
            let url = format!("{}/internal/v1/data/{route}", c.data_url(1));
            let (status, v, _) = send(
                &http,
                &reqwest::Method::POST,
                &url,
                Some(&cluster_bearer),
                Some(body),
            )
            .await;
            assert_eq!(status, 403, "{route} carrying {doc}: {v}");
            assert_eq!(v["error"]["code"], "forbidden", "{v}");
        }
    }
    // The members file every node watches: an unsigned newer document is refused by each.
    c.write_members_file(&unsigned_max);
    poll(
        "every node refused the unsigned members file",
        Duration::from_secs(20),
        || async {
            c.data
                .iter()
                .chain(c.sessions.iter())
                .all(|p| p.log_text().contains("membership file refused"))
        },
    )
    .await;
    // A replay of the document in use, validly signed, is not newer: nothing changes.
    let current = c.membership_doc(1, &members, &[]);
    let (status, v, _) = send(
        &http,
        &reqwest::Method::POST,
        &membership_routes[0],
        Some(&cluster_bearer),
        Some(&current),
    )
    .await;
    assert_eq!((status, &v), (200, &json!({"epoch": 1})));

    assert_eq!(
        data_state(&c).await,
        vec![(1, 0); 3],
        "nothing forged was adopted or applied"
    );
    assert_eq!(session_epochs(&c).await, vec![1, 1]);
    the_cluster_works(&c, "forged").await;

    // What the operator signed is adopted from any source: POST to one data node, and
    // gossip carries it to the others and to the session nodes.
    let next = c.membership_doc(2, &members, &[]);
    let (status, v, _) = send(
        &http,
        &reqwest::Method::POST,
        &membership_routes[0],
        Some(&cluster_bearer),
        Some(&next),
    )
    .await;
    assert_eq!((status, &v), (200, &json!({"epoch": 2})));
    poll(
        "the signed epoch 2 reached every node by gossip",
        Duration::from_secs(20),
        || async {
            // A read makes a session node meet the newer epoch in a data node's answer.
            for s in 0..2 {
                c.query(s, "works.forged").await;
            }
            data_state(&c).await.iter().all(|(e, _)| *e == 2) && session_epochs(&c).await == [2, 2]
        },
    )
    .await;
    // And once in use, a replay of the older signed document is refused as not newer.
    let (status, v, _) = send(
        &http,
        &reqwest::Method::POST,
        &membership_routes[1],
        Some(&cluster_bearer),
        Some(&current),
    )
    .await;
    assert_eq!((status, &v), (200, &json!({"epoch": 2})));
    assert_eq!(
        data_state(&c).await.iter().map(|s| s.0).collect::<Vec<_>>(),
        [2, 2, 2]
    );
    drop(signer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_nodes_refuse_forged_writes_and_never_hold_session_ids() {
    let (c, _signer) = trusted_cluster().await;
    let http = plain_client();
    let bearer = format!("Bearer {CLUSTER_TOKEN}");
    let now = registry_node::model::now_millis();
    let apply = format!("{}/internal/v1/data/apply", c.data_url(0));
    let mut big = (*publisher("session-0", "big", 1, now)).clone();
    big.data = vec!["x".repeat(16 * 1024 + 1)].into();
    let mut ten_minutes_ahead = (*publisher("session-0", "future", 1, now)).clone();
    ten_minutes_ahead.register_timestamp = now + 11 * 60 * 1000;
    let forged: Vec<(&str, Value)> = vec![
        (
            "version",
            apply_body(
                "session-0",
                vec![PublisherOp::Put {
                    publisher: publisher("session-0", "max", u64::MAX, now),
                }],
                None,
            ),
        ),
        (
            "registerTimestamp",
            apply_body(
                "session-0",
                vec![PublisherOp::Put {
                    publisher: Arc::new(ten_minutes_ahead),
                }],
                None,
            ),
        ),
        (
            "source",
            apply_body(
                "session-0",
                vec![PublisherOp::Put {
                    publisher: publisher("session-1", "other", 1, now),
                }],
                None,
            ),
        ),
        (
            "data[0]",
            apply_body(
                "session-0",
                vec![PublisherOp::Put {
                    publisher: Arc::new(big),
                }],
                None,
            ),
        ),
        (
            "version",
            apply_body(
                "session-0",
                vec![PublisherOp::Remove {
                    data_info_id: data_info_id("trust.svc").into(),
                    register_id: "r".into(),
                    version: u64::MAX,
                    register_timestamp: now,
                    register_seq: 0,
                    source: "session-0".into(),
                    owner: 42,
                }],
                None,
            ),
        ),
        (
            // A removal stamped far ahead would leave a tombstone that owns the registerId.
            "ops[0].registerTimestamp",
            apply_body(
                "session-0",
                vec![PublisherOp::Remove {
                    data_info_id: data_info_id("trust.svc").into(),
                    register_id: "r".into(),
                    version: 1,
                    register_timestamp: now + 11 * 60 * 1000,
                    register_seq: 0,
                    source: "session-0".into(),
                    owner: 42,
                }],
                None,
            ),
        ),
    ];
    for (field, body) in &forged {
        let (status, v, _) = send(
            &http,
            &reqwest::Method::POST,
            &apply,
            Some(&bearer),
            Some(body),
        )
        .await;
        assert_eq!(status, 400, "{field}: {v}");
        assert_eq!(v["error"]["code"], "invalid_argument", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap_or("").contains(field),
            "{field}: {v}"
        );
    }
    // A forged full datum (replication, handover) at u64::MAX.
    let image = DatumImage {
        data_info_id: data_info_id("trust.svc").into(),
        version: u64::MAX,
        publishers: vec![publisher("session-0", "img", 1, now)],
        tombstones: vec![],
    };
    let install = serde_json::to_value(InstallRequest {
        images: vec![image],
        membership: None,
    })
    .expect("json");
    let url = format!("{}/internal/v1/data/install", c.data_url(0));
    let (status, v, _) = send(
        &http,
        &reqwest::Method::POST,
        &url,
        Some(&bearer),
        Some(&install),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_argument")),
        "{v}"
    );
    // Bodies are bounded.
    let huge = vec![b' '; 65 * 1024 * 1024];
    let r = http
        .post(&apply)
        .header("authorization", &bearer)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("huge body");
    assert_eq!(r.status().as_u16(), 413);
    assert_eq!(
        data_state(&c).await,
        vec![(1, 0); 3],
        "nothing forged was applied"
    );

    // Real writes through the public API: data nodes hold them without any sessionId.
    let sid = c.create_session(0).await;
    assert!(
        c.publish(0, &sid, "trust.svc", "real", &["10.0.0.7:80"])
            .await
    );
    c.wait_all_sessions_show(
        "trust.svc",
        &set(&[("real", "10.0.0.7:80")]),
        Duration::from_secs(10),
    )
    .await;
    for i in 0..3 {
        for (route, body) in [
            ("fetch", json!({"ids": [data_info_id("trust.svc")]})),
            ("images", json!({"ids": [data_info_id("trust.svc")]})),
        ] {
            let url = format!("{}/internal/v1/data/{route}", c.data_url(i));
            let (status, v, _) = send(
                &http,
                &reqwest::Method::POST,
                &url,
                Some(&bearer),
                Some(&body),
            )
            .await;
            assert_eq!(status, 200, "{v}");
            let text = v.to_string();
            assert!(
                !text.contains(&sid),
                "data node {i} {route} exposes the sessionId: {text}"
            );
            assert!(!text.contains("sessionId"), "data node {i} {route}: {text}");
        }
    }
}

#[test]
fn a_node_refuses_to_start_with_credentials_that_do_not_fit() {
    let bin = std::env::var("REGISTRY_NODE_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_registry-node").to_owned());
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&bin)
            .args([
                "--http-addr",
                "127.0.0.1:0",
                "--internal-addr",
                "127.0.0.1:0",
            ])
            .args(args)
            .env_clear()
            .output()
            .expect("run registry-node");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--token", "same", "--cluster-token", "same"]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("--token and --cluster-token must differ"),
        "{err}"
    );
    let (code, err) = run(&["--membership-key", "not-a-key"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("--membership-key"), "{err}");
    let (code, err) = run(&["--membership-key", "@/nonexistent/membership.pub"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("/nonexistent/membership.pub"), "{err}");
}
