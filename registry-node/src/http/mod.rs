//! The HTTP edge: everything that knows HTTP. The public listener serves the API of API.md
//! ([`api`], bodies parsed by [`validate`], event streams compressed on request by
//! [`stream_encoding`]) and the web console ([`console`]), and no
//! `/internal/*`; the internal listeners (a data node's data listener, a session node's
//! internal listener) serve the data protocol and the node endpoints ([`internal`]).
//! Authentication is one module ([`auth`]): on the public listener the caller's bearer
//! becomes a principal (the client token, a static token or a ServiceAccount token) that
//! the access rules check; on internal ones the cluster token, behind a peer certificate
//! under mutual TLS (`crate::tls`). All answer in the one error envelope ([`error`];
//! [`envelope`] gives the same shape to answers no handler made); the layers below return
//! their own errors, mapped here.

pub mod api;
pub mod auth;
pub mod console;
pub mod envelope;
pub mod error;
pub mod internal;
pub mod service_list;
pub mod stream_encoding;
pub mod validate;

/// Static facts about this node, as `/api/v1/cluster` and `/internal/v1/status` show them.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub node_name: String,
    pub roles: Vec<&'static str>,
    pub http_addr: Option<String>,
    pub data_addr: Option<String>,
    /// `--token` (never empty): with one, `/api/v1/*` requires it.
    pub token: Option<String>,
    /// `--cluster-token` (never empty): with one, `/internal/*` requires it.
    pub cluster_token: Option<String>,
}
