//! A registry-node process for tests of its clients: a standalone node (or any role) on
//! `127.0.0.1:0` with short push timings, killed, paused and restarted on the address it had.

use nix::unistd::Pid;
use serde_json::Value;

use crate::process::{Process, Spawn};
use crate::{eventually, DEADLINE};

/// A registry-node process; killed when dropped.
pub struct Node {
    process: Process,
    /// `HOST:PORT` of its listening line (`http`, else `data`).
    pub addr: String,
}

impl Node {
    /// A standalone node with short push timings, plus `extra` flags.
    pub fn start(extra: &[&str]) -> Node {
        Node::start_at("127.0.0.1:0", extra)
    }

    /// [`Node::start`] on `http_addr`.
    pub fn start_at(http_addr: &str, extra: &[&str]) -> Node {
        let mut args: Vec<String> = [
            "--http-addr",
            http_addr,
            "--push-delay-ms",
            "50",
            "--push-max-delay-ms",
            "300",
            "--ping-interval-ms",
            "1000",
            "--version-scan-ms",
            "1000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Node::spawn(args)
    }

    /// Starts the binary with exactly `args` and waits for its listening line.
    pub fn spawn(args: Vec<String>) -> Node {
        Node::spawn_with(Spawn::registry_node("registry-node").args(args))
    }

    /// Starts `spawn` (a [`Spawn::registry_node`] with its arguments and environment) and
    /// waits for its listening line.
    pub fn spawn_with(spawn: Spawn) -> Node {
        let process = spawn.start().unwrap_or_else(|e| panic!("{e}"));
        Node::of(process)
    }

    fn of(process: Process) -> Node {
        let addr = process
            .listening_addr("http")
            .or_else(|| process.listening_addr("data"))
            .unwrap_or_else(|| panic!("a listening address in {}", process.listening()))
            .to_owned();
        Node { process, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening line.
    pub fn listening(&self) -> &Value {
        self.process.listening()
    }

    /// The process id; panics once the node was killed.
    pub fn pid(&self) -> Pid {
        self.process.pid().expect("the node runs")
    }

    /// The process, for signals and its log.
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Kills the node and starts a fresh process with the same arguments on the address it
    /// had (its state is lost).
    pub fn restart(&mut self) {
        self.process.restart().unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Waits until `GET {url}/readyz` answers 200.
pub async fn wait_ready(url: &str) {
    let http = reqwest::Client::new();
    eventually(&format!("{url} ready"), DEADLINE, || async {
        http.get(format!("{url}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
}
