//! The `kubesim serve` binary: listening line, kubeconfig file, image-map errors, SIGTERM.

use std::process::Command;
use std::time::Duration;

use testkit::process::LISTENING_WITHIN;
use testkit::{eventually, Spawn};

#[tokio::test]
async fn serve_prints_url_writes_kubeconfig_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut sim = Spawn::new("kubesim", env!("CARGO_BIN_EXE_kubesim"))
        .args(["serve", "--addr", "127.0.0.1:0", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--kubeconfig-out")
        .arg(&kubeconfig)
        .listening(LISTENING_WITHIN)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let event = sim.listening();
    assert_eq!(event["event"], "listening");
    let url = event["url"].as_str().unwrap().to_string();
    assert!(std::fs::read_to_string(&kubeconfig)
        .unwrap()
        .contains(&format!("server: {url}")));

    let kube_config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    let client = kube::Client::try_from(kube_config).unwrap();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");

    sim.terminate();
    let status = eventually(
        "kubesim to stop on SIGTERM",
        Duration::from_secs(30),
        || std::future::ready(sim.exited()),
    )
    .await;
    assert!(status.success(), "{status:?}");
}

/// `kubesim serve --image-map MAP`, which must refuse to start; returns its stderr.
fn refused_image_map(map: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kubesim"))
        .args(["serve", "--addr", "127.0.0.1:0", "--image-map", map])
        .output()
        .unwrap();
    assert!(!out.status.success(), "--image-map {map} was taken");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_image_map_is_a_clear_error() {
    assert!(refused_image_map("registry-node").contains("expected IMAGE=PATH"));
    assert!(refused_image_map("x=/nonexistent/bin").contains("is not a file"));
}
