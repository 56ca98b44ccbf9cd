//! `--token-file` (library and registryctl) against a node with access rules: the token in
//! the file is what the node sees, a rotated file is picked up without a restart, and a
//! caller whose principal lacks the right gets the 403 (exit code 1) naming it.

mod ctlkit;

use ctlkit::{ctl, Run, CTL};
use registry_client::{ClientConfig, Endpoints, Publication, RegistryClient, ServiceId};
use registry_types::access::sha256_hex;
use std::path::Path;
use std::time::Duration;
use testkit::fs::replace_file;
use testkit::node::Node;
use testkit::{eventually, Spawn, DEADLINE};

fn node(dir: &Path) -> Node {
    let access = dir.join("access.yaml");
    replace_file(
        &access,
        format!(
            r#"tokens:
  - {{name: payments, sha256: "{}"}}
  - {{name: reader, sha256: "{}"}}
rules:
  - principals: ["token:payments"]
    publish: ["com.shop.pay.*"]
    subscribe: ["com.shop.*"]
  - principals: ["token:reader"]
    subscribe: ["com.shop.*"]
"#,
            sha256_hex(b"pay-secret"),
            sha256_hex(b"read-secret")
        ),
    );
    Node::start(&["--access-file", access.to_str().unwrap()])
}

#[tokio::test]
async fn the_library_sends_the_newest_token_of_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path());
    let token = dir.path().join("token");
    replace_file(&token, "not-a-valid-token\n");
    let config = ClientConfig::new([node.url()]).token_file(&token);
    let endpoints = Endpoints::new(&config.urls, &config.http_settings()).unwrap();
    let service = ServiceId::new("com.shop.pay.card");
    let err = endpoints.data(&service, None).await.unwrap_err();
    assert!(err.to_string().contains("unauthorized"), "{err}");

    // The file rotates: the next calls carry the new token.
    replace_file(&token, "read-secret");
    eventually("the rotated token is sent", DEADLINE, || async {
        endpoints.data(&service, None).await.is_ok()
    })
    .await;

    // A publisher whose file holds a principal with the right.
    replace_file(&token, "pay-secret");
    let client = RegistryClient::new(ClientConfig::new([node.url()]).token_file(&token)).unwrap();
    let publisher = client
        .publish(Publication::new("com.shop.pay.card", ["10.0.0.1:80"]))
        .await
        .unwrap();
    let answer = endpoints.data(&service, None).await.unwrap();
    assert_eq!(answer.publishers.len(), 1);
    drop(publisher);
    client.close().await;

    // A missing file is a configuration error, up front.
    let missing = ClientConfig::new([node.url()]).token_file(dir.path().join("missing"));
    assert!(RegistryClient::new(missing).is_err());
}

#[tokio::test]
async fn registryctl_takes_a_token_file_and_reports_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path());
    let url = node.url();
    let pay = dir.path().join("pay");
    let read = dir.path().join("read");
    replace_file(&pay, "pay-secret\n");
    replace_file(&read, "read-secret\n");

    // The reader may not publish: 403 naming the right, exit code 1.
    let Run { code, stderr, .. } = ctl(&[
        "--url",
        &url,
        "--token-file",
        read.to_str().unwrap(),
        "publish",
        "com.shop.pay.card",
        "10.0.0.9:80",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("publish") && stderr.contains("token:reader"),
        "{stderr}"
    );

    // The payments token publishes (held until the process ends); the reader sees it.
    let publisher = Spawn::new("registryctl", CTL)
        .args([
            "--url",
            &url,
            "--token-file",
            pay.to_str().unwrap(),
            "-o",
            "json",
        ])
        .args(["publish", "com.shop.pay.card", "10.0.0.1:80"])
        .env("RUST_LOG", "warn")
        .stdout_lines()
        .start()
        .unwrap();
    let line = publisher
        .next_line(Duration::from_secs(30))
        .expect("published line");
    assert!(line.contains("registerId"), "{line}");
    let Run {
        code,
        stdout,
        stderr,
    } = ctl(&[
        "--url",
        &url,
        "--token-file",
        read.to_str().unwrap(),
        "-o",
        "json",
        "get",
        "com.shop.pay.card",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("10.0.0.1:80"), "{stdout}");
    // Without a token: 401; both --token and --token-file: a usage error.
    let Run { code, stderr, .. } = ctl(&["--url", &url, "get", "com.shop.pay.card"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("unauthorized"), "{stderr}");
    let Run { code, .. } = ctl(&[
        "--url",
        &url,
        "--token",
        "x",
        "--token-file",
        pay.to_str().unwrap(),
        "get",
        "com.shop.pay.card",
    ]);
    assert_eq!(code, 2);
    publisher.terminate();
}
