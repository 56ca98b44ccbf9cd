//! Two network namespaces joined by one link, for tests of what the network does to a node:
//! a node in one, a peer in the other, and the peer's traffic dropped (iptables `DROP`: no
//! FIN, no RST) to make it vanish as a crashed machine or a cut cable does.
//!
//! Needs root, `ip` and `iptables` (CI has them; `.ci/run` installs them). Without them a
//! test fails with what is missing, unless `REGISTRY_SKIP_NETNS_TESTS=1` (then it is skipped
//! with a loud note). Everything is removed when the [`Link`] drops; namespaces left by a
//! killed test run are removed by the next run.

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Names of this kit's namespaces start with this, then the test process's pid.
const PREFIX: &str = "regpeer";

/// Why namespace tests cannot run here, if they cannot.
pub fn missing_tools() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("network namespace tests need root".into());
    }
    for tool in ["ip", "iptables"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!(
                "network namespace tests need `{tool}` (Debian: apt-get install iproute2 iptables)"
            ));
        }
    }
    None
}

/// True when the test should go on; false (with a loud note) when it is skipped on purpose.
pub fn can_run(test: &str) -> bool {
    match missing_tools() {
        None => true,
        Some(why) if std::env::var_os("REGISTRY_SKIP_NETNS_TESTS").is_some() => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
        Some(why) => panic!("{why} (set REGISTRY_SKIP_NETNS_TESTS=1 to skip)"),
    }
}

/// Runs `cmd`; panics with its stderr unless it succeeds.
pub fn checked(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip ARGS`; panics unless it succeeds.
pub fn ip(args: &[&str]) {
    checked(Command::new("ip").args(args));
}

/// `iptables ARGS` in namespace `ns`; panics unless it succeeds.
pub fn iptables_in(ns: &str, args: &[&str]) {
    checked(
        Command::new("ip")
            .args(["netns", "exec", ns, "iptables", "-w"])
            .args(args),
    );
}

/// One end of a [`Link`]: a namespace with loopback up and `eth0` at `ip`.
#[derive(Debug, Clone)]
pub struct Namespace {
    pub name: String,
    pub ip: String,
}

impl Namespace {
    /// Moves the calling thread (and the processes it starts from then on) into this
    /// namespace.
    pub fn enter(&self) {
        let f = std::fs::File::open(format!("/run/netns/{}", self.name)).expect("netns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    }

    /// A TCP connection to `addr` made from this namespace (a socket keeps the namespace
    /// it was made in, whichever thread uses it).
    pub fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let ns = self.clone();
        std::thread::spawn(move || {
            ns.enter();
            TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        })
        .join()
        .expect("connecting thread")
    }

    /// `iptables ARGS` in this namespace.
    pub fn iptables(&self, args: &[&str]) {
        iptables_in(&self.name, args);
    }

    /// Drops every packet in and out of `eth0`, silently: to everyone else, this
    /// namespace's processes vanished without a FIN.
    pub fn vanish(&self) {
        self.iptables(&["-A", "INPUT", "-i", "eth0", "-j", "DROP"]);
        self.iptables(&["-A", "OUTPUT", "-o", "eth0", "-j", "DROP"]);
    }

    /// A program run in this namespace through `ip netns exec` (the process's pid is the
    /// program's own).
    pub fn spawn(&self, name: &str, program: impl AsRef<std::path::Path>) -> crate::Spawn {
        crate::Spawn::new(name, "ip")
            .args(["netns", "exec", &self.name])
            .arg(program.as_ref())
    }
}

/// Two namespaces, `near` (10.78.0.1) and `far` (10.78.0.2), joined by a veth pair; both
/// are deleted on drop.
pub struct Link {
    pub near: Namespace,
    pub far: Namespace,
}

impl Link {
    pub fn new() -> Link {
        remove_leftovers(PREFIX);
        let tag = format!("{PREFIX}{}x{}", std::process::id(), rand::random::<u16>());
        let near = Namespace {
            name: format!("{tag}-a"),
            ip: "10.78.0.1".into(),
        };
        let far = Namespace {
            name: format!("{tag}-b"),
            ip: "10.78.0.2".into(),
        };
        let link = Link { near, far };
        for ns in [&link.near, &link.far] {
            ip(&["netns", "add", &ns.name]);
            ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n",
            &link.near.name,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &link.far.name,
        ]);
        for ns in [&link.near, &link.far] {
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{}/24", ns.ip),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns.name, "link", "set", "eth0", "up"]);
        }
        link
    }
}

impl Default for Link {
    fn default() -> Self {
        Link::new()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in [&self.near, &self.far] {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns.name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Namespaces named `PREFIX` + a pid (and more) whose process is gone: left by a test
/// binary killed mid-run.
pub fn remove_leftovers(prefix: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if pid.is_empty() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = Command::new("ip").args(["netns", "del", name]).status();
    }
}
