//! Service registry node: the session layer (public HTTP API, SSE push), the data layer
//! (merged, versioned datums) and the interface between them.

pub mod data;
pub mod dataplane;
pub mod model;
