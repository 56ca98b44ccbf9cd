//! Service registry node: the session layer (public HTTP API, SSE push), the data layer
//! (merged, versioned datums) and the interface between them.

pub mod api;
pub mod cluster;
pub mod config;
pub mod console;
pub mod data;
pub mod dataplane;
pub mod internal;
pub mod membership;
pub mod metrics;
pub mod model;
pub mod node;
pub mod server;
pub mod session;
