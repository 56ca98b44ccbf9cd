//! The test kit of the workspace: what every crate's tests and the bench need to run
//! registry nodes and watch them.
//!
//! # Layout
//! - [`binary`]: the workspace's binaries, named by an environment variable or built by cargo
//!   when missing or stale.
//! - [`process`]: a server process (a node, kubesim, an operator): clean environment, the
//!   `listening` line, drained output, logs kept on failure, SIGTERM/SIGKILL/SIGSTOP/SIGCONT.
//! - [`net`]: loopback prefixes and free ports.
//! - [`fs`]: files replaced as a volume update replaces them (write, then rename).
//! - [`netns`]: two network namespaces joined by a link, and a peer that vanishes.
//! - [`node`]: one registry-node process for tests of its clients (started, killed, restarted).
//! - [`poll`]: [`eventually`], the one way tests wait for a condition with a deadline, and
//!   [`always`], that a condition keeps holding through a window.
//! - [`sse`]: a session's event stream.
//! - [`tls`]: a CA, the certificates it issues, the cert-manager file layout, HTTPS clients.
//! - [`http`]: a small JSON client of the public API.
//! - [`client`]: the client library (`registry-client`) configured for test nodes.
//! - [`cluster`]: multi-process clusters (data and session nodes, membership files, kills and
//!   restarts) for registry-node's cluster tests.
//! - [`prelude`]: what a test of the public API imports.

pub mod binary;
pub mod client;
pub mod cluster;
pub mod fs;
pub mod http;
pub mod net;
pub mod netns;
pub mod node;
pub mod poll;
pub mod process;
pub mod sse;
pub mod tls;

pub use poll::{always, eventually, poll_until};
pub use process::{Process, Spawn};

/// Generous: the test machines are shared and loaded.
pub const DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Why the kit could not do what a test asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Binary(String),
    #[error("starting {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("{name} {why}; log {}:\n{tail}", log.display())]
    NotListening {
        name: String,
        why: String,
        log: std::path::PathBuf,
        tail: String,
    },
    #[error("event stream: {0}")]
    Stream(String),
}

/// What a test of the public API imports (`use testkit::prelude::*`).
pub mod prelude {
    pub use crate::http::Client;
    pub use crate::sse::{data_info_id, items, Event, Events};
    pub use crate::{always, eventually, DEADLINE};
}
