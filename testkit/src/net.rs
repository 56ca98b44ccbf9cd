//! Loopback addresses for tests: all of 127.0.0.0/8 routes to the machine, so each test
//! cluster gets its own random `127.x.y` prefix and test runs side by side do not collide on
//! the fixed ports a cluster uses.

use std::net::TcpListener;

/// A random `127.x.y` prefix (x, y in 1..=250); append `.z` for a host.
pub fn loopback_prefix() -> String {
    format!(
        "127.{}.{}",
        1 + rand::random::<u8>() % 250,
        1 + rand::random::<u8>() % 250
    )
}

/// A port that was free on `ip` a moment ago, for servers given a fixed address.
pub fn free_port(ip: &str) -> std::io::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// `127.x.y.1:PORT` on a random prefix, with a port that was free on it.
pub fn loopback_addr() -> String {
    let ip = format!("{}.1", loopback_prefix());
    let port = free_port(&ip).expect("a free port on loopback");
    format!("{ip}:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_on_loopback_and_bindable() {
        let addr: std::net::SocketAddr = loopback_addr().parse().unwrap();
        assert!(addr.ip().is_loopback());
        TcpListener::bind(addr).unwrap();
        let prefix = loopback_prefix();
        assert_eq!(prefix.split('.').count(), 3, "{prefix}");
    }
}
