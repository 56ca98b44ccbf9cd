//! Service registry node.
fn main() {}
