//! The client library and registryctl against a node that speaks HTTPS only: with the
//! registry's CA (`--ca-file`, `ClientConfig::ca_file`) they work, without it or with
//! another CA they are refused, and a CA file that cannot be read is a usage error.

mod ctlkit;

use std::time::Duration;

use ctlkit::{ctl, ctl_with, Run};
use registry_client::{Interest, Publication, RegistryClient};
use testkit::node::Node;
use testkit::tls::{Ca, SecretDir};
use testkit::Spawn;

#[tokio::test(flavor = "multi_thread")]
async fn clients_reach_an_https_node_with_its_ca_file_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("registry CA");
    let files = SecretDir::write(&dir.path().join("tls"), &ca.issue_loopback(), &ca);
    let other = Ca::new("another CA");
    let other_ca = dir.path().join("other-ca.crt");
    std::fs::write(&other_ca, other.pem()).unwrap();
    let node = Node::spawn_with(
        Spawn::registry_node("tls-node")
            .args(["--http-addr", "127.0.0.1:0", "--push-delay-ms", "50"])
            .args(files.public_args()),
    );
    let url = format!("https://{}", node.addr);
    let ca_file = files.ca().display().to_string();

    // The library: publish and subscribe over HTTPS.
    let mut config = testkit::client::config(std::slice::from_ref(&url)).ca_file(files.ca());
    config.client_id = Some("tls-client".into());
    let client = RegistryClient::new(config).unwrap();
    let publisher = client
        .publish(Publication::new("svc.tls", ["10.0.0.9:80"]).register_id("tls-1"))
        .await
        .unwrap();
    let mut subscription = client.subscribe(Interest::new("svc.tls")).await.unwrap();
    let seen = subscription
        .wait_for(Duration::from_secs(20), |s| {
            s.zones.values().flatten().any(|d| d == "10.0.0.9:80")
        })
        .await;
    assert!(seen.is_some(), "no push over HTTPS");

    // registryctl with the CA file sees the publisher.
    let Run {
        code,
        stdout,
        stderr,
    } = ctl(&[
        "--url",
        &url,
        "--ca-file",
        &ca_file,
        "-o",
        "json",
        "get",
        "svc.tls",
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("tls-1"), "{stdout}");
    // The same through REGISTRY_CA_FILE.
    let run = ctl_with(
        &["--url", &url, "-o", "json", "services"],
        &[("REGISTRY_CA_FILE", &ca_file)],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);

    // Without the CA (built-in web roots) or with another CA: no node could be reached.
    for args in [
        vec!["--url", url.as_str(), "services"],
        vec![
            "--url",
            url.as_str(),
            "--ca-file",
            other_ca.to_str().unwrap(),
            "services",
        ],
    ] {
        let Run {
            code,
            stdout,
            stderr,
        } = ctl(&args);
        assert_eq!(code, 3, "{args:?}: {stdout}{stderr}");
    }
    // Plain HTTP to the HTTPS listener is refused too.
    let plain = format!("http://{}", node.addr);
    let Run { code, stderr, .. } = ctl(&["--url", &plain, "services"]);
    assert_eq!(code, 3, "{stderr}");
    // A CA file that is missing or holds no certificate: a usage error naming it.
    let junk = dir.path().join("junk.crt");
    std::fs::write(&junk, "no certificate here").unwrap();
    for path in [dir.path().join("missing.crt"), junk] {
        let path = path.display().to_string();
        let Run { code, stderr, .. } = ctl(&["--url", &url, "--ca-file", &path, "services"]);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(&path), "{stderr}");
    }

    publisher.remove().await.unwrap();
    client.close().await;
}
