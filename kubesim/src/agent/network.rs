//! Pod networking of the node agent: a Linux bridge on the host with the node's address,
//! and per pod a network namespace joined to it by a veth pair, with a private address of
//! the node's /24 and a default route through the host. The API server refuses loopback
//! addresses in EndpointSlices, so pods cannot live on 127.x.y.z as they do in kubesim.
//!
//! Everything is done with iproute2's `ip` (root is needed); names carry the network's
//! short id, so that several agents on one machine do not meet.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// The node's pod network: `10.a.b.0/24`, the host (and node) at `10.a.b.1`.
pub struct PodNetwork {
    /// Short id in every interface and namespace name (at most 6 characters).
    id: String,
    prefix: [u8; 3],
    bridge: String,
    /// Host octets in use.
    used: Mutex<BTreeSet<u8>>,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Error::Config(format!("cannot run `ip` (iproute2): {e}")))?;
    if !out.status.success() {
        return Err(Error::Config(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).output();
}

impl PodNetwork {
    /// Creates the bridge `kpb{id}` with `10.a.b.1/24` (replacing one left over by an agent
    /// of the same id that died), and removes left-over pod namespaces of that id.
    pub fn create(id: &str, prefix: [u8; 3]) -> Result<Self> {
        if id.is_empty() || id.len() > 6 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Error::Config(format!(
                "network id {id:?}: 1 to 6 letters or digits"
            )));
        }
        let net = Self {
            id: id.to_string(),
            prefix,
            bridge: format!("kpb{id}"),
            used: Mutex::new(BTreeSet::new()),
        };
        net.remove_leftovers();
        let host = format!("{}/24", net.host_ip());
        ip(&["link", "add", &net.bridge, "type", "bridge"])?;
        ip(&["addr", "add", &host, "dev", &net.bridge])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        Ok(net)
    }

    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], 1)
    }

    fn netns_name(&self, octet: u8) -> String {
        format!("kp{}-{octet}", self.id)
    }

    fn remove_leftovers(&self) {
        let prefix = format!("kp{}-", self.id);
        if let Ok(entries) = std::fs::read_dir("/run/netns") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with(&prefix) {
                    ip_quiet(&["netns", "del", &name]);
                }
            }
        }
        ip_quiet(&["link", "del", &self.bridge]);
    }

    /// A new pod sandbox: a namespace with `lo` up and `eth0` at a free address.
    pub fn add_pod(&self) -> Result<PodSandbox> {
        let octet = {
            let mut used = self.used.lock();
            let octet = (2..=254u8)
                .find(|o| !used.contains(o))
                .ok_or_else(|| Error::Config("pod network full (253 pods)".into()))?;
            used.insert(octet);
            octet
        };
        let sandbox = PodSandbox {
            ns: self.netns_name(octet),
            octet,
            ip: Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], octet),
        };
        if let Err(e) = self.wire(&sandbox) {
            self.remove_pod(&sandbox);
            return Err(e);
        }
        Ok(sandbox)
    }

    fn wire(&self, sb: &PodSandbox) -> Result<()> {
        let host_end = format!("kpv{}{:02x}", self.id, sb.octet);
        let addr = format!("{}/24", sb.ip);
        let gateway = self.host_ip().to_string();
        ip_quiet(&["netns", "del", &sb.ns]);
        ip_quiet(&["link", "del", &host_end]);
        ip(&["netns", "add", &sb.ns])?;
        ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &sb.ns,
        ])?;
        ip(&["link", "set", &host_end, "master", &self.bridge, "up"])?;
        ip(&["-n", &sb.ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &sb.ns, "addr", "add", &addr, "dev", "eth0"])?;
        ip(&["-n", &sb.ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &sb.ns, "route", "add", "default", "via", &gateway])?;
        Ok(())
    }

    /// Removes a pod's namespace (its veth pair goes with it) and frees its address.
    pub fn remove_pod(&self, sb: &PodSandbox) {
        ip_quiet(&["netns", "del", &sb.ns]);
        ip_quiet(&["link", "del", &format!("kpv{}{:02x}", self.id, sb.octet)]);
        self.used.lock().remove(&sb.octet);
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        self.remove_leftovers();
    }
}

/// One pod's network namespace and address.
#[derive(Debug, Clone)]
pub struct PodSandbox {
    ns: String,
    octet: u8,
    pub ip: Ipv4Addr,
}

impl PodSandbox {
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.ns)
    }
}
