//! The data role: the publisher merge rules, the sharded datum store with its change-event queues, the consistent-hash ring, and the data node that serves them to session nodes and to its peers.

pub mod merge;
pub mod node;
pub mod ring;
pub mod store;
pub mod validate;

pub use node::{DataNode, DataNodeConfig};
pub use store::{DatumStore, StoreConfig};
