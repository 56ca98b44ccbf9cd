//! An HTTP server serving on its own task until asked to stop: what a running node of every role is built on.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// An axum server spawned in the background, with the token that asks it to stop.
pub struct BackgroundServer {
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl BackgroundServer {
    /// Serves `app` on `listener` until `stop` completes; `stop` is expected to wait for
    /// `shutdown` (which [`Self::shutdown_token`] hands out) and may do more work after it,
    /// while the server still serves.
    pub fn spawn(
        listener: TcpListener,
        app: axum::Router,
        shutdown: CancellationToken,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        });
        BackgroundServer { shutdown, task }
    }

    /// A token that, when cancelled, asks the server to stop.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Asks the server to stop and waits until it has.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the server stops (after the shutdown token is cancelled).
    pub async fn wait(self) -> std::io::Result<()> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// The `listening` line of docs/INTERNAL.md for a node whose one listener is `field`
/// (`http` or `data`).
pub fn listening_line(field: &str, addr: SocketAddr) -> String {
    serde_json::json!({"event": "listening", field: addr.to_string()}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line_names_the_listener() {
        let addr: SocketAddr = "127.0.0.1:41234".parse().unwrap();
        let http: serde_json::Value = serde_json::from_str(&listening_line("http", addr)).unwrap();
        assert_eq!(
            http,
            serde_json::json!({"event": "listening", "http": "127.0.0.1:41234"})
        );
        let data: serde_json::Value = serde_json::from_str(&listening_line("data", addr)).unwrap();
        assert_eq!(
            data,
            serde_json::json!({"event": "listening", "data": "127.0.0.1:41234"})
        );
    }

    #[tokio::test]
    async fn serves_until_stop_completes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "up" }));
        let shutdown = CancellationToken::new();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let asked = shutdown.clone();
        let server = BackgroundServer::spawn(listener, app, shutdown, async move {
            asked.cancelled().await;
            let _ = released.await;
        });
        server.shutdown_token().cancel();
        // Asked to stop, but `stop` has not completed: still serving.
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        assert!(answer.ends_with("up"), "{answer}");
        release.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(30), server.wait())
            .await
            .expect("server stopped")
            .unwrap();
    }
}
