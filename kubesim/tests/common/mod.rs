//! What the simulator's integration tests share beyond the workspace's test kit.

use kubesim::Simulator;

/// A kube client of the simulator.
pub fn client(sim: &Simulator) -> kube::Client {
    let config = kube::Config::new(sim.url().parse().expect("url"));
    kube::Client::try_from(config).expect("client")
}
