//! Service registry node: the session layer (public HTTP API, SSE push), the data layer
//! (merged, versioned datums) and the interface between them.
//!
//! # Layout
//! The tree says what runs where (docs/ARCHITECTURE.md walks one publish through it):
//! - [`roles`]: the one place that starts a role (`standalone`, `session`, `data`) from
//!   the [`config`]; `main.rs` only calls it.
//! - [`http`]: the HTTP edge, the only module that knows HTTP: the public API of API.md
//!   ([`http::api`]) and its request parsing ([`http::validate`]), the web console
//!   ([`http::console`]), the node endpoints and the data listener ([`http::internal`]),
//!   bearer authentication ([`http::auth`]) and the error envelope ([`http::error`]) that
//!   both listeners share.
//! - [`session`]: the session role, free of HTTP: sessions, the authoritative publishers,
//!   subscribers' interests and the push pipeline, with its own [`session::SessionError`].
//! - [`dataplane`]: the seam between the session and data layers: the
//!   [`dataplane::DataPlane`] trait, its in-process ([`dataplane::local`]) and remote
//!   ([`dataplane::remote`]) implementations, and [`dataplane::wire`], the one definition of
//!   the internal protocol that both sides speak.
//! - [`data`]: the data role: the merge rules, the sharded store, the ring, and the data
//!   node with one file per duty (change log, replication, leases, anti-entropy, handover,
//!   handlers).
//! - [`membership`]: the membership in use and its ring (the document itself is
//!   `registry_types::MembershipDoc`, shared with the operator).
//! - [`access`]: who is calling and what they may do: principals, the access rules of
//!   `--access-file` and their evaluation, TokenReview of ServiceAccount tokens, the audit
//!   of denials (free of HTTP; [`http::auth`] applies it).
//! - [`model`]: the domain types both layers pass around; [`metrics`]; [`server`]; [`tls`]
//!   (the listeners' and the internal client's TLS, reloaded when its files change).

pub mod access;
pub mod clock;
pub mod config;
pub mod data;
pub mod dataplane;
pub mod http;
pub mod membership;
pub mod metrics;
pub mod model;
pub mod roles;
pub mod server;
pub mod session;
pub mod tls;
