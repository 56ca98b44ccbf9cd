//! The data layer: publisher merge rules, the sharded datum store with its change-event queues, and the in-process `DataPlane`.

pub mod local;
pub mod merge;
pub mod ring;
pub mod store;

pub use local::{LocalDataPlane, LocalDataPlaneConfig};
pub use store::{DatumStore, StoreConfig};
