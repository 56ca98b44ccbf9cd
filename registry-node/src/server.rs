//! An HTTP server serving on its own task until asked to stop: what a running node of every
//! role is built on. Every connection is bounded: a deadline for its request head
//! (half-open connections go), a deadline between body bytes, a cap on open connections,
//! and TCP keepalive, `TCP_USER_TIMEOUT` and a write deadline so that a peer that vanished
//! without a FIN is dropped (its event stream closes and its session expires as promised).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::http::envelope::ErrorShapedIo;
use crate::tls::{PeerCertificate, TlsSource};

mod bind;
mod write_deadline;
pub use bind::bind_listener;
pub use write_deadline::WriteDeadline;

/// The bounds every connection of a listener gets (docs in `Config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpSettings {
    /// A connection's request head must be complete this long after the connection opened
    /// or its previous response went out (so this is also the keep-alive idle timeout).
    pub header_timeout: Duration,
    /// Longest pause between two pieces of a request body.
    pub idle_timeout: Duration,
    /// Open connections at most; beyond it a new connection is closed at once.
    pub max_connections: usize,
    /// A peer that acknowledges nothing for about this long is dropped.
    pub dead_peer_timeout: Duration,
}

impl HttpSettings {
    pub fn from_config(c: &crate::config::Config) -> Self {
        HttpSettings {
            header_timeout: c.http_header_timeout,
            idle_timeout: c.http_idle_timeout,
            max_connections: c.max_connections.max(1),
            dead_peer_timeout: c.dead_peer_timeout,
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings::from_config(&crate::config::Config::for_tests())
    }
}

/// An HTTP server spawned in the background, with the token that asks it to stop.
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
        settings: HttpSettings,
        shutdown: CancellationToken,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        Self::spawn_tls(listener, app, settings, None, shutdown, stop)
    }

    /// [`Self::spawn`] speaking TLS only when `tls` is given: every connection starts with
    /// a handshake under the configuration in use when it was accepted.
    pub fn spawn_tls(
        listener: TcpListener,
        app: axum::Router,
        settings: HttpSettings,
        tls: Option<Arc<TlsSource>>,
        shutdown: CancellationToken,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        let task = tokio::spawn(serve(listener, app, settings, tls, stop));
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

/// Accepts connections until `stop` completes, then lets the open ones finish (each is
/// asked to close after its current request).
async fn serve(
    listener: TcpListener,
    app: axum::Router,
    settings: HttpSettings,
    tls: Option<Arc<TlsSource>>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app
        .layer(RequestBodyTimeoutLayer::new(settings.idle_timeout))
        .layer(axum::middleware::map_response(
            crate::http::envelope::error_envelope,
        ));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(settings.dead_peer_timeout / 2)
        .keep_alive_timeout(settings.dead_peer_timeout / 2);
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    let mut refused: u64 = 0;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    max_connections = settings.max_connections,
                    refused,
                    "connection limit reached (--max-connections); closing new connections"
                );
            }
            drop(stream);
            continue;
        };
        watch_for_dead_peer(&stream, settings.dead_peer_timeout);
        let stream = WriteDeadline::new(stream, settings.dead_peer_timeout);
        let (builder, app, watcher) = (builder.clone(), app.clone(), graceful.watcher());
        match &tls {
            None => {
                tokio::spawn(async move {
                    serve_connection(builder, watcher, stream, app, None).await;
                    drop(permit);
                });
            }
            Some(tls) => {
                let (acceptor, mutual) = (tls.acceptor(), tls.mutual());
                let deadline = settings.header_timeout;
                tokio::spawn(async move {
                    // The handshake is part of the request head's time.
                    match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let peer =
                                mutual.then(|| match stream.get_ref().1.peer_certificates() {
                                    Some(certs) if !certs.is_empty() => PeerCertificate::Verified,
                                    _ => PeerCertificate::Missing,
                                });
                            serve_connection(builder, watcher, stream, app, peer).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Serves one connection (plain or TLS) until it ends or the graceful shutdown closes it;
/// `peer` is set on every request of a mutual-TLS connection.
async fn serve_connection<I>(
    builder: auto::Builder<TokioExecutor>,
    watcher: Watcher,
    io: I,
    app: axum::Router,
    peer: Option<PeerCertificate>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = tower::util::MapRequest::new(app, move |mut req: Request<Incoming>| {
        if let Some(peer) = peer {
            req.extensions_mut().insert(peer);
        }
        req
    });
    let service = TowerToHyperService::new(app);
    let conn = builder
        .serve_connection(TokioIo::new(ErrorShapedIo::new(io)), service)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// The kernel's bounds on a peer that vanished without a FIN, within about `timeout` in all:
/// keepalive probes after a quarter of it without a packet from the peer, and
/// `TCP_USER_TIMEOUT` at half of it, so that data the peer does not acknowledge (an SSE
/// push or ping on the way when it vanished: no keepalive probe goes out then) ends the
/// connection too, not only an idle one. Linux applies that timeout to a receive window
/// that stays closed as well: a peer that reads nothing for half of `timeout` while data
/// waits for it is cut off, as the write deadline ([`WriteDeadline`], at `timeout`) does
/// wherever the kernel does not.
fn watch_for_dead_peer(stream: &TcpStream, timeout: Duration) {
    let _ = stream.set_nodelay(true);
    let sock = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time((timeout / 4).max(Duration::from_secs(1)))
        .with_interval((timeout / 8).max(Duration::from_secs(1)))
        .with_retries(3);
    if let Err(e) = sock.set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = sock.set_tcp_user_timeout(Some((timeout / 2).max(Duration::from_secs(1)))) {
        tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
    }
}

/// The `listening` line of docs/INTERNAL.md for a node whose one listener is `field`
/// (`http` or `data`).
pub fn listening_line(field: &str, addr: SocketAddr) -> String {
    listening_line_of(&[(field, addr)])
}

/// The `listening` line naming every listener (`http`, `internal`, `data`).
pub fn listening_line_of(listeners: &[(&str, SocketAddr)]) -> String {
    let mut line = serde_json::Map::new();
    line.insert("event".into(), "listening".into());
    for (field, addr) in listeners {
        line.insert((*field).to_owned(), addr.to_string().into());
    }
    serde_json::Value::Object(line).to_string()
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
        let other: SocketAddr = "127.0.0.1:41235".parse().unwrap();
        let both: serde_json::Value =
            serde_json::from_str(&listening_line_of(&[("http", addr), ("internal", other)]))
                .unwrap();
        assert_eq!(
            both,
            serde_json::json!({"event": "listening", "http": "127.0.0.1:41234", "internal": "127.0.0.1:41235"})
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
        let server = BackgroundServer::spawn(
            listener,
            app,
            HttpSettings::default(),
            shutdown,
            async move {
                asked.cancelled().await;
                let _ = released.await;
            },
        );
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
