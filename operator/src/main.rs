//! RegistryCluster operator.
fn main() {}
