//! Binding a listener with an accept queue sized for reconnect storms. The standard
//! library's bind listens with a queue of 128: when a node restarts or a session node fails
//! over, thousands of clients connect within milliseconds, and every SYN past a full queue
//! is dropped and retried by the client a whole second later. The kernel caps the queue at
//! `net.core.somaxconn`.

use std::io;

use tokio::net::{TcpListener, TcpSocket};

/// Binds the first address `addr` resolves to that can be bound, listening with an accept
/// queue of `backlog` connections (at least 1).
pub async fn bind_listener(addr: &str, backlog: u32) -> io::Result<TcpListener> {
    let mut last_error = None;
    for candidate in tokio::net::lookup_host(addr).await? {
        let socket = if candidate.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // As the standard library's bind does: a restarted node rebinds its port at once,
        // whatever connections of its previous life linger in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        match socket.bind(candidate) {
            Ok(()) => return socket.listen(backlog.max(1)),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr} resolves to no address"),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_accept_queue_holds_the_backlog_asked_for() {
        let listener = bind_listener("127.0.0.1:0", 1000).await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Nothing accepts: connections complete only while the queue has room (the kernel
        // keeps backlog + 1, capped by somaxconn). The standard library's 128 would stop at
        // 129.
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096);
        let mut held = Vec::new();
        for _ in 0..somaxconn.min(600) {
            let conn = tokio::time::timeout(
                std::time::Duration::from_millis(500),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            .expect("the queue has room")
            .unwrap();
            held.push(conn);
        }
    }

    #[tokio::test]
    async fn an_address_in_use_is_an_error() {
        let first = bind_listener("127.0.0.1:0", 16).await.unwrap();
        let addr = first.local_addr().unwrap().to_string();
        assert!(bind_listener(&addr, 16).await.is_err());
    }

    #[tokio::test]
    async fn an_unresolvable_address_is_an_error() {
        assert!(bind_listener("not an address", 16).await.is_err());
    }
}
