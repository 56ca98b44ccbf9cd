//! The operator's calls to pods ignore `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY`: a proxy
//! set for the operator's egress cannot reach pod IPs. Its own test binary, because it sets
//! process-wide environment variables before anything else runs.

use axum::routing::get;
use axum::{Json, Router};
use operator::nodes::NodeClient;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn node_calls_do_not_go_through_the_proxy_from_the_environment() {
    // A "proxy" that counts connections and answers nothing useful.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let proxied = Arc::new(AtomicUsize::new(0));
    {
        let proxied = proxied.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = proxy.accept().await {
                proxied.fetch_add(1, Ordering::SeqCst);
                drop(conn);
            }
        });
    }
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        std::env::set_var(var, &proxy_url);
    }
    std::env::remove_var("NO_PROXY");
    std::env::remove_var("no_proxy");

    let node = Router::new().route(
        "/internal/v1/status",
        get(|| async { Json(serde_json::json!({"epoch": 7, "data": {"synced": true}})) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, node).await });

    let client = NodeClient::new(Duration::from_secs(5));
    let status = client
        .status(&base, None)
        .await
        .expect("status straight from the pod");
    assert_eq!(status.epoch, 7);
    assert_eq!(
        proxied.load(Ordering::SeqCst),
        0,
        "a node call went through the proxy"
    );
}
