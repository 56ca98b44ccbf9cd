//! Test kit: real registry-node processes on 127.0.0.1:0 (started, killed, restarted) and
//! polling with deadlines.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Generous: the test machine is shared and loaded.
pub const DEADLINE: Duration = Duration::from_secs(30);

fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the client crate lives in the workspace")
        .to_path_buf()
}

pub fn node_bin() -> PathBuf {
    match std::env::var_os("REGISTRY_NODE_BIN") {
        Some(path) => PathBuf::from(path),
        None => workspace_dir().join("target/debug/registry-node"),
    }
}

/// A registry-node process; killed when dropped.
pub struct Node {
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub log: PathBuf,
    args: Vec<String>,
    /// The node's `listening` line.
    pub listening: serde_json::Value,
}

impl Node {
    /// A standalone node with short push timings, plus `extra` flags.
    pub fn start(extra: &[&str]) -> Node {
        Node::start_at("127.0.0.1:0", extra)
    }

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

    /// Starts the binary with exactly `args` and waits for its `listening` line.
    pub fn spawn(args: Vec<String>) -> Node {
        let bin = node_bin();
        assert!(
            bin.exists(),
            "registry-node binary not found at {} (build it, or set REGISTRY_NODE_BIN)",
            bin.display()
        );
        let log = std::env::temp_dir().join(format!(
            "registry-client-test-node-{}-{}.log",
            std::process::id(),
            rand_suffix()
        ));
        let log_file = std::fs::File::create(&log).expect("node log file");
        let mut child = Command::new(&bin)
            .args(&args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", bin.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so that the node never blocks on a full pipe.
            let mut rest = String::new();
            while reader.read_line(&mut rest).map(|n| n > 0).unwrap_or(false) {
                rest.clear();
            }
        });
        let line = match rx.recv_timeout(DEADLINE) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "registry-node printed no listening line; log: {}",
                    log.display()
                );
            }
        };
        let listening: serde_json::Value = match serde_json::from_str(line.trim()) {
            Ok(value) => value,
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("bad listening line {line:?}: {err}; log: {}", log.display());
            }
        };
        assert_eq!(listening["event"], "listening", "{line}");
        let addr = listening["http"]
            .as_str()
            .or_else(|| listening["data"].as_str())
            .expect("a listening address")
            .to_owned();
        Node {
            child,
            addr,
            log,
            args,
            listening,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the node and starts a fresh process with the same arguments and, for an
    /// ephemeral port, on the address it had (its state is lost).
    pub fn restart(&mut self) {
        self.kill();
        let mut args = self.args.clone();
        if let Some(pos) = args.iter().position(|a| a == "--http-addr") {
            if let Some(http) = self.listening["http"].as_str() {
                args[pos + 1] = http.to_owned();
            }
        }
        let deadline = Instant::now() + DEADLINE;
        // The port was just released; retry briefly in case the kernel has not freed it.
        loop {
            let attempt = args.clone();
            match std::panic::catch_unwind(move || Node::spawn(attempt)) {
                Ok(node) => {
                    let old = std::mem::replace(self, node);
                    drop(old);
                    return;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        // Keep the node's log only when a test failed, for the post-mortem.
        if std::thread::panicking() {
            eprintln!("registry-node log kept at {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish()
}

/// Polls `check` until it returns `Some`, or panics with `what` after the deadline.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A random loopback address (127.x.y.1) and a port that was free on it, so that test runs
/// on the same machine do not collide on fixed addresses.
pub fn loopback_addr() -> String {
    let x = 1 + (rand_suffix() % 250) as u8;
    let y = 1 + (rand_suffix() % 250) as u8;
    let ip = format!("127.{x}.{y}.1");
    let port = std::net::TcpListener::bind((ip.as_str(), 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port on loopback");
    format!("{ip}:{port}")
}

/// Waits until `GET {url}/readyz` answers 200.
pub async fn wait_ready(url: &str) {
    let http = reqwest::Client::new();
    eventually(&format!("{url} ready"), || {
        let request = http.get(format!("{url}/readyz")).send();
        async move {
            request
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(drop)
        }
    })
    .await;
}
