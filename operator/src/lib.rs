//! The RegistryCluster operator: CRD types, pure planning (objects, membership, rollout,
//! conditions) and the thin Kubernetes and node-HTTP layers that carry the plans out.

pub mod conditions;
pub mod controller;
pub mod crd;
pub mod credentials;
pub mod error;
pub mod membership;
pub mod metrics;
pub mod nodes;
pub mod resources;
pub mod rollout;

pub use error::{Error, Result};
