//! The data layer: publisher merge rules, the sharded datum store with its change-event queues, the in-process `DataPlane`, the data-node role and the session side of the distributed data plane.

pub mod local;
pub mod merge;
pub mod node;
pub mod protocol;
pub mod remote;
pub mod ring;
pub mod store;

pub use local::{LocalDataPlane, LocalDataPlaneConfig};
pub use node::{DataNode, DataNodeConfig};
pub use remote::{RemoteConfig, RemoteDataPlane};
pub use store::{DatumStore, StoreConfig};
