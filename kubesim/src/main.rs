//! Local Kubernetes simulator.
fn main() {}
