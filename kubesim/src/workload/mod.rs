//! The simulated workload layer: a StatefulSet controller and a kubelet that runs pods as
//! real local processes.

pub mod env;
pub mod kubelet;
pub mod statefulset;

pub use kubelet::{ContainerProcess, Kubelet, KubeletConfig, PodProcess};
pub use statefulset::StatefulSetController;
