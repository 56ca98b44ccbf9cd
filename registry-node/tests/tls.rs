//! TLS on every listener, with real processes and certificates made here: the public
//! listener speaks HTTPS only, a client that does not trust its CA is refused, a rotated
//! certificate is taken for new connections without a restart; between nodes, mutual TLS
//! under the cluster's CA: a peer without a certificate, or with one of another CA, gets
//! nothing of `/internal/*`, while probes still reach `/readyz`.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::{json, Value};
use testkit::http::Client;
use testkit::net::free_port;
use testkit::node::Node;
use testkit::tls::{Ca, SecretDir};
use testkit::{eventually, Spawn, DEADLINE};

const CLUSTER_TOKEN: &str = "cluster-secret";

/// Whether a plain-HTTP request to `addr` gets an HTTP answer of any kind.
fn answers_plain_http(addr: &str) -> bool {
    let Ok(mut tcp) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/")
}

/// `GET /internal/v1/status` of the node at `addr` over `http`, with the cluster token.
async fn get_status(
    http: &reqwest::Client,
    addr: &str,
) -> Result<(reqwest::StatusCode, Value), reqwest::Error> {
    Client::over(format!("https://{addr}"), http.clone())
        .with_token(CLUSTER_TOKEN)
        .try_get("/internal/v1/status")
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_public_listener_speaks_tls_only_and_takes_a_rotated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("registry test CA");
    let files = SecretDir::write(dir.path(), &ca.issue_loopback(), &ca);
    let mut node = Node::spawn_with(
        Spawn::registry_node("tls-standalone")
            .args(["--http-addr", "127.0.0.1:0"])
            .args(files.public_args()),
    );
    let https = format!("https://{}", node.addr);

    // A client that trusts the CA: the API works over HTTPS.
    let http = ca.client();
    let resp = http.get(format!("{https}/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = http
        .post(format!("{https}/api/v1/sessions"))
        .json(&json!({"clientId": "tls"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let sid = resp.json::<Value>().await.unwrap()["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = http
        .post(format!("{https}/api/v1/sessions/{sid}/publishers"))
        .json(&json!({"dataId": "svc.tls", "registerId": "r1", "data": ["10.0.0.1:1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    // Plain HTTP on that listener is refused: no HTTP answer at all.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let refused = plain
        .get(format!("http://{}/healthz", node.addr))
        .send()
        .await;
    assert!(refused.is_err(), "plain HTTP answered: {refused:?}");
    assert!(!answers_plain_http(&node.addr));

    // A client that does not trust the node's CA is refused.
    let stranger = Ca::new("another CA");
    let refused = stranger
        .client()
        .get(format!("{https}/healthz"))
        .send()
        .await;
    assert!(refused.is_err(), "a wrong CA was accepted: {refused:?}");

    // Rotation: the files now hold a certificate of another CA. New connections get it
    // without a restart; the old CA no longer verifies them.
    files.rotate(&stranger.issue_loopback(), &stranger);
    eventually("the rotated certificate in use", DEADLINE, || async {
        stranger
            .client()
            .get(format!("{https}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let old = ca.client().get(format!("{https}/healthz")).send().await;
    assert!(old.is_err(), "the old CA still verifies: {old:?}");
    // The node's state went through the rotation untouched.
    let data: Value = stranger
        .client()
        .get(format!("{https}/api/v1/data?dataId=svc.tls"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(data["publishers"][0]["registerId"], "r1", "{data}");

    // A broken file (a key that is not one) keeps the certificate in use. The node reports
    // the failed reload in its log: counted before the write, since the rotation above may
    // have met a certificate and a key of different CAs and reported that already.
    let log_path = node.process().log_path().to_owned();
    let not_reloaded = || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .matches("TLS files not reloaded")
            .count()
    };
    let reported_before = not_reloaded();
    std::fs::write(files.key(), "not a key").unwrap();
    eventually("the broken key reported", DEADLINE, || async {
        not_reloaded() > reported_before
    })
    .await;
    let resp = stranger
        .client()
        .get(format!("{https}/healthz"))
        .send()
        .await
        .expect("the previous certificate stays in use");
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_speak_mutual_tls_under_the_cluster_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster CA");
    let secret = |name: &str| SecretDir::write(&dir.path().join(name), &ca.issue_loopback(), &ca);
    let (d0, d1, s0) = (secret("data-0"), secret("data-1"), secret("session-0"));
    let ports = [
        free_port("127.0.0.1").unwrap(),
        free_port("127.0.0.1").unwrap(),
    ];
    let members = format!("127.0.0.1:{},127.0.0.1:{}", ports[0], ports[1]);
    let data_node = |i: usize, files: &SecretDir| {
        Node::spawn_with(
            Spawn::registry_node(&format!("tls-data-{i}"))
                .args(["--role", "data", "--data-addr"])
                .arg(format!("127.0.0.1:{}", ports[i]))
                .args(["--members", &members, "--cluster-token", CLUSTER_TOKEN])
                .args(["--replication-factor", "2", "--anti-entropy-ms", "500"])
                .args(files.internal_args()),
        )
    };
    let data = [data_node(0, &d0), data_node(1, &d1)];
    let session = Node::spawn_with(
        Spawn::registry_node("tls-session")
            .args(["--role", "session", "--http-addr", "127.0.0.1:0"])
            .args(["--members", &members, "--cluster-token", CLUSTER_TOKEN])
            .args(["--push-delay-ms", "50"])
            .args(s0.public_args())
            .args(s0.internal_args()),
    );
    let session_internal = session
        .listening()
        .get("internal")
        .and_then(Value::as_str)
        .expect("the internal listener")
        .to_owned();

    // Clients: of the public API (trusts the CA), an internal peer (also presents a
    // certificate of the CA), and peers without a certificate or with a foreign one.
    let client = ca.client();
    let peer = ca
        .client_builder()
        .identity(ca.issue_loopback().identity())
        .build()
        .unwrap();
    let stranger_ca = Ca::new("another CA");
    let foreign_peer = ca
        .client_builder()
        .identity(stranger_ca.issue_loopback().identity())
        .build()
        .unwrap();

    // The session node reaches the data layer over mutual TLS: it becomes ready, and a
    // publish through it lands on both data nodes (data nodes replicate to each other
    // over mutual TLS too).
    let public = format!("https://{}", session.addr);
    eventually("the session node ready", DEADLINE, || async {
        client
            .get(format!("{public}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let sid = client
        .post(format!("{public}/api/v1/sessions"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = client
        .post(format!("{public}/api/v1/sessions/{sid}/publishers"))
        .json(&json!({"dataId": "svc.mtls", "registerId": "r1", "data": ["10.0.0.1:1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    for node in &data {
        eventually("a data node holding the publisher", DEADLINE, || async {
            get_status(&peer, &node.addr)
                .await
                .is_ok_and(|(_, status)| status["data"]["publisherCount"] == 1)
        })
        .await;
    }

    // Every internal listener: a peer with no certificate gets 401 on /internal/* (in
    // the error shape) but probes reach /readyz; a certificate of another CA, a server
    // CA it does not trust, and plain HTTP get no answer.
    for addr in [
        data[0].addr.as_str(),
        data[1].addr.as_str(),
        &session_internal,
    ] {
        let status_url = format!("https://{addr}/internal/v1/status");
        assert_eq!(
            get_status(&peer, addr).await.ok().map(|(status, _)| status),
            Some(reqwest::StatusCode::OK)
        );
        let resp = client
            .get(&status_url)
            .bearer_auth(CLUSTER_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{addr}: no client certificate");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
        let resp = client
            .post(format!("https://{addr}/internal/v1/membership"))
            .bearer_auth(CLUSTER_TOKEN)
            .json(&json!({"epoch": 99, "members": ["127.0.0.1:1"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            401,
            "{addr}: membership without a certificate"
        );
        let ready = client.get(format!("https://{addr}/readyz")).send().await;
        assert_eq!(
            ready.map(|r| r.status()).ok(),
            Some(reqwest::StatusCode::OK)
        );
        let foreign = get_status(&foreign_peer, addr).await;
        assert!(
            foreign.is_err(),
            "{addr}: a foreign certificate: {foreign:?}"
        );
        let wrong_ca = stranger_ca
            .client_builder()
            .identity(ca.issue_loopback().identity())
            .build()
            .unwrap();
        let wrong = get_status(&wrong_ca, addr).await;
        assert!(
            wrong.is_err(),
            "{addr}: a server of an untrusted CA: {wrong:?}"
        );
        assert!(!answers_plain_http(addr), "{addr} answered plain HTTP");
    }
    // Nothing changed: the epoch is the static one, the publisher still there.
    let (_, status) = get_status(&peer, &data[0].addr).await.unwrap();
    assert_eq!(status["epoch"], 1, "{status}");

    // Rotation of an internal listener's certificate and CA: new connections are verified
    // under the new CA, without a restart.
    let new_ca = Ca::new("rotated cluster CA");
    d0.rotate(&new_ca.issue_loopback(), &new_ca);
    let new_peer = new_ca
        .client_builder()
        .identity(new_ca.issue_loopback().identity())
        .build()
        .unwrap();
    eventually(
        "the rotated internal certificate in use",
        DEADLINE,
        || async {
            get_status(&new_peer, &data[0].addr)
                .await
                .is_ok_and(|(status, _)| status == reqwest::StatusCode::OK)
        },
    )
    .await;
    let fresh_old_peer = ca
        .client_builder()
        .identity(ca.issue_loopback().identity())
        .build()
        .unwrap();
    let old = get_status(&fresh_old_peer, &data[0].addr).await;
    assert!(old.is_err(), "the old CA still accepted: {old:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_refuses_to_start_with_tls_files_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("CA");
    let files = SecretDir::write(dir.path(), &ca.issue_loopback(), &ca);
    let other = ca.issue_loopback();
    std::fs::write(files.key(), other.key_pem).unwrap();
    for (args, expected) in [
        (files.public_args(), "tls.key"),
        (
            vec![
                "--tls-cert".into(),
                dir.path().join("missing.crt").display().to_string(),
                "--tls-key".into(),
                files.key().display().to_string(),
            ],
            "missing.crt",
        ),
        (
            vec!["--tls-cert".into(), files.cert().display().to_string()],
            "--tls-key",
        ),
    ] {
        let out = std::process::Command::new(testkit::binary::REGISTRY_NODE.path())
            .args(["--http-addr", "127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
