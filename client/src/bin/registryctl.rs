//! registryctl CLI.
fn main() {}
