//! The workload layer: a StatefulSet controller and kubelets that run pods as real local
//! processes ([`pod`] is the part both kubesim's kubelet and the node agent use).

pub mod env;
pub mod kubelet;
pub mod pod;
pub mod statefulset;
pub mod volumes;

pub use kubelet::{Kubelet, KubeletConfig};
pub use pod::{ContainerProcess, PodProcess};
pub use statefulset::StatefulSetController;
