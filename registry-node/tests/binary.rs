//! The registry-node binary: the `listening` line, env fallbacks, serving, SIGTERM.

use std::process::Command;
use std::time::Duration;

use testkit::{eventually, Spawn};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_registry-node"))
}

#[test]
fn help_explains_every_flag() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--role",
        "--http-addr",
        "--data-addr",
        "--advertise-addr",
        "--node-name",
        "--members",
        "--members-file",
        "--token",
        "--push-delay-ms",
        "--push-max-delay-ms",
        "--stop-push",
        "--replication-factor",
        "--virtual-nodes",
        "--session-lease-ms",
        "REGISTRY_HTTP_ADDR",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
    let bad = bin().args(["--push-delay-ms", "soon"]).output().unwrap();
    assert!(!bad.status.success());
}

#[tokio::test]
async fn serves_prints_listening_and_stops_on_sigterm() {
    let mut node = Spawn::registry_node("registry-node")
        .env("REGISTRY_HTTP_ADDR", "127.0.0.1:0")
        .env("REGISTRY_TOKEN", "t0k")
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let v = node.listening();
    assert_eq!(v["event"], "listening");
    let addr = v["http"].as_str().unwrap().to_owned();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );

    let http = reqwest::Client::new();
    let res = http
        .post(format!("http://{addr}/api/v1/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "the token came from REGISTRY_TOKEN");
    let res = http
        .post(format!("http://{addr}/api/v1/sessions"))
        .bearer_auth("t0k")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    // An open stream must not hold up shutdown.
    let sid = res.json::<serde_json::Value>().await.unwrap()["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let stream = http
        .get(format!("http://{addr}/api/v1/sessions/{sid}/events"))
        .bearer_auth("t0k")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);

    node.terminate();
    let status = eventually("an exit after SIGTERM", Duration::from_secs(10), || {
        std::future::ready(node.exited())
    })
    .await;
    assert!(status.success(), "{status:?}");
    drop(stream);
}

/// Starts the binary with `args`, SIGTERMs it the moment its listening line is out, and
/// returns how it exited.
fn sigterm_right_after_listening(args: &[&str]) -> std::process::ExitStatus {
    let mut node = Spawn::registry_node("registry-node")
        .args(args)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    node.terminate();
    node.wait_exit(Duration::from_secs(30))
        .expect("an exit within 30 s of SIGTERM")
}
/// A supervisor may stop a node as soon as it has started: the signal handlers are in place
/// before the listening line, so that is a clean exit 0, never the default action (143).
#[test]
fn sigterm_right_after_the_listening_line_is_a_clean_exit() {
    for _ in 0..10 {
        let status = sigterm_right_after_listening(&[
            "--http-addr",
            "127.0.0.1:0",
            "--data-addr",
            "127.0.0.1:0",
        ]);
        assert!(status.success(), "standalone: {status:?}");
        let status = sigterm_right_after_listening(&[
            "--role",
            "data",
            "--data-addr",
            "127.0.0.1:0",
            "--members",
            "127.0.0.1:1",
        ]);
        assert!(status.success(), "data: {status:?}");
    }
}
