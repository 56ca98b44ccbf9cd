//! Command-line and environment configuration of a registry node (docs/INTERNAL.md).

use clap::{Parser, ValueEnum};
use registry_trust::MembershipKey;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::tls::{TlsFiles, TlsSource};

/// A configuration that cannot run, with the flag to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Which layers this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Session and data layers in one process, talking in-process.
    Standalone,
    /// Client sessions, publishers, subscribers and SSE push; datums live on data nodes.
    Session,
    /// Sharded, replicated datums; serves session nodes over the internal protocol.
    Data,
}

impl Role {
    pub fn has_session(self) -> bool {
        matches!(self, Role::Standalone | Role::Session)
    }

    pub fn has_data(self) -> bool {
        matches!(self, Role::Standalone | Role::Data)
    }

    /// The role names as `/api/v1/cluster` and `/internal/v1/status` list them.
    pub fn names(self) -> Vec<&'static str> {
        match self {
            Role::Standalone => vec!["session", "data"],
            Role::Session => vec!["session"],
            Role::Data => vec!["data"],
        }
    }
}

/// A service registry node. Every flag has an environment fallback (`REGISTRY_` + the flag
/// name in upper case, `-` as `_`).
#[derive(Debug, Clone, Parser)]
#[command(name = "registry-node", version, about, long_about = None)]
pub struct Config {
    /// Which layers this process runs: `standalone` (both), `session` or `data`.
    #[arg(long, env = "REGISTRY_ROLE", value_enum, default_value = "standalone")]
    pub role: Role,

    /// Public HTTP API listener (session role). Port 0 binds an ephemeral port.
    #[arg(long, env = "REGISTRY_HTTP_ADDR", default_value = "127.0.0.1:9603")]
    pub http_addr: String,

    /// Internal data listener (data role): the data protocol, membership and status.
    /// Port 0 binds an ephemeral port.
    #[arg(long, env = "REGISTRY_DATA_ADDR", default_value = "127.0.0.1:9622")]
    pub data_addr: String,

    /// Internal listener of a session or standalone node: `/internal/v1/membership` and
    /// `/internal/v1/status` (the public listener serves no `/internal/*`). The default
    /// binds an ephemeral loopback port, reported in the `listening` line.
    #[arg(long, env = "REGISTRY_INTERNAL_ADDR", default_value = "127.0.0.1:0")]
    pub internal_addr: String,

    /// The address other nodes use for this data node, its identity on the ring
    /// (default: the bound data address).
    #[arg(long, env = "REGISTRY_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,

    /// This node's name; a session node's lease identity on data nodes
    /// (default: the hostname, else the bound address).
    #[arg(long, env = "REGISTRY_NODE_NAME")]
    pub node_name: Option<String>,

    /// Static data-node membership, comma separated, adopted as epoch 1
    /// (standalone default: itself).
    #[arg(long, env = "REGISTRY_MEMBERS", value_delimiter = ',')]
    pub members: Vec<String>,

    /// JSON membership document `{"epoch", "members", "leaving"?}`, re-read when it
    /// changes; a document with an older or equal epoch is ignored.
    #[arg(long, env = "REGISTRY_MEMBERS_FILE")]
    pub members_file: Option<std::path::PathBuf>,

    /// The client credential: bearer token required on `/api/v1/*` (none: no
    /// authentication). It never opens `/internal/*`.
    #[arg(long, env = "REGISTRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// The cluster credential: bearer token required on every `/internal/*` route, and sent
    /// by this node on its own internal calls (none: the internal protocol is open to
    /// anyone who reaches an internal listener). Must differ from `--token`.
    #[arg(long, env = "REGISTRY_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: Option<String>,

    /// The operator's membership public key: base64 of its 32 raw Ed25519 bytes, or `@FILE`
    /// naming a file that holds it. With it, a membership document from any source (POST,
    /// file, peers) is adopted only with a valid signature (SECURITY.md).
    #[arg(long, env = "REGISTRY_MEMBERSHIP_KEY")]
    pub membership_key: Option<String>,

    /// PEM certificate chain of the public listener (session and standalone roles). With
    /// `--tls-key` the listener speaks HTTPS only; the files are re-read when they change.
    #[arg(long, env = "REGISTRY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "REGISTRY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM certificate of this node on the internal listeners (`--data-addr`,
    /// `--internal-addr`) and for its own internal calls: mutual TLS under
    /// `--internal-tls-ca`. The files are re-read when they change.
    #[arg(long, env = "REGISTRY_INTERNAL_TLS_CERT", requires_all = ["internal_tls_key", "internal_tls_ca"])]
    pub internal_tls_cert: Option<PathBuf>,

    /// PEM private key of `--internal-tls-cert`.
    #[arg(
        long,
        env = "REGISTRY_INTERNAL_TLS_KEY",
        requires = "internal_tls_cert"
    )]
    pub internal_tls_key: Option<PathBuf>,

    /// PEM CA certificates of the cluster: an internal peer (node or operator) is accepted,
    /// as client or server, only with a certificate that chains to one of them.
    #[arg(long, env = "REGISTRY_INTERNAL_TLS_CA", requires = "internal_tls_cert")]
    pub internal_tls_ca: Option<PathBuf>,

    /// Access rules (YAML or JSON; README "Access rules"): static tokens by SHA-256 and who
    /// may publish, subscribe and administer. With a file, every `/api/v1/*` call needs a
    /// credential (`--token`, a static token, or a ServiceAccount token) and everything not
    /// granted is denied (`403`); without one, today's behaviour. Re-read every second; a
    /// bad new file keeps the rules in use (and is logged).
    #[arg(long, env = "REGISTRY_ACCESS_FILE")]
    pub access_file: Option<PathBuf>,

    /// The audience ServiceAccount tokens must be bound to (with `--access-file`).
    #[arg(
        long,
        env = "REGISTRY_TOKEN_REVIEW_AUDIENCE",
        default_value = "sofaregistry.dev"
    )]
    pub token_review_audience: String,

    /// Check ServiceAccount tokens with the Kubernetes TokenReview API (with
    /// `--access-file`), using the in-cluster configuration (or `KUBECONFIG`). `false`:
    /// only `--token` and static tokens are accepted.
    #[arg(
        long,
        env = "REGISTRY_TOKEN_REVIEW",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub token_review: bool,

    /// Push debounce: changes to one service within this many milliseconds reach a
    /// subscriber as one push.
    #[arg(long, env = "REGISTRY_PUSH_DELAY_MS", default_value_t = 200)]
    pub push_delay_ms: u64,

    /// A debounced push never waits longer than this many milliseconds after the first
    /// change it carries.
    #[arg(long, env = "REGISTRY_PUSH_MAX_DELAY_MS", default_value_t = 1000)]
    pub push_max_delay_ms: u64,

    /// Start with pushes paused (lift with `PUT /api/v1/admin/push {"stopPush": false}`).
    #[arg(long, env = "REGISTRY_STOP_PUSH", default_value_t = false)]
    pub stop_push: bool,

    /// Copies of every datum: primary + backups, capped at the member count.
    #[arg(long, env = "REGISTRY_REPLICATION_FACTOR", default_value_t = 3)]
    pub replication_factor: usize,

    /// Points on the consistent-hash ring per data node.
    #[arg(long, env = "REGISTRY_VIRTUAL_NODES", default_value_t = 1000)]
    pub virtual_nodes: usize,

    /// Data nodes drop a session node's publishers after this many milliseconds without
    /// a lease renewal.
    #[arg(long, env = "REGISTRY_SESSION_LEASE_MS", default_value_t = 10_000)]
    pub session_lease_ms: u64,

    /// Data role: milliseconds between anti-entropy rounds (pull what this node owns from
    /// its peers, hand over what it no longer owns). A membership change starts one at once.
    #[arg(long, env = "REGISTRY_ANTI_ENTROPY_MS", default_value_t = 3_000)]
    pub anti_entropy_ms: u64,

    /// Data role: batches of applied writes queued for replication to the other owners;
    /// beyond that, a batch is dropped and left to anti-entropy (a dropped change reaches
    /// every owner within six anti-entropy rounds; see the README). 0 sends none: every
    /// change reaches the other owners by anti-entropy alone.
    #[arg(long, env = "REGISTRY_REPLICATION_QUEUE", default_value_t = 1024)]
    pub replication_queue: usize,

    /// Session role: milliseconds between reconciliations of this node's publishers with
    /// the data nodes (re-publish what they lack).
    #[arg(long, env = "REGISTRY_RECONCILE_MS", default_value_t = 5_000)]
    pub reconcile_ms: u64,

    /// Milliseconds between `: ping` comments on an idle event stream.
    #[arg(long, env = "REGISTRY_PING_INTERVAL_MS", default_value_t = 15_000)]
    pub ping_interval_ms: u64,

    /// Milliseconds between version scans that re-push to subscribers left behind.
    #[arg(long, env = "REGISTRY_VERSION_SCAN_MS", default_value_t = 10_000)]
    pub version_scan_ms: u64,

    /// Pushes queued per event stream at most. A push that does not fit is not queued: the
    /// subscriber gets the newest state once the client has read enough (push retries, the
    /// version scan), never a backlog of old ones.
    #[arg(long, env = "REGISTRY_STREAM_BUFFER", default_value_t = 1024)]
    pub stream_buffer: usize,

    /// Bytes of pushes queued per event stream at most, at their size on the wire (a push
    /// larger than this still goes out alone). A datum's push is encoded once per version
    /// and shared by every stream, so this bounds how far a client may fall behind.
    #[arg(long, env = "REGISTRY_STREAM_BUFFER_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub stream_buffer_bytes: usize,

    /// Event streams sent gzip-compressed at once at most (a client asks with
    /// `Accept-Encoding: gzip`; each compressor holds a few hundred KiB); beyond it, streams
    /// go out uncompressed. 0: never compress.
    #[arg(long, env = "REGISTRY_MAX_COMPRESSED_STREAMS", default_value_t = 1_000)]
    pub max_compressed_streams: usize,

    /// Milliseconds an event stream may take no push while pushes for it are refused (its
    /// buffer full) before it is closed; the client reopens it and gets a full push.
    #[arg(long, env = "REGISTRY_STREAM_STALL_MS", default_value_t = 5_000)]
    pub stream_stall_ms: u64,

    /// Live sessions this node holds at most; a new session beyond it is refused with
    /// `429 resource_exhausted`.
    #[arg(long, env = "REGISTRY_MAX_SESSIONS", default_value_t = 100_000)]
    pub max_sessions: usize,

    /// Publishers one session holds at most (a batch publish counts all or nothing).
    #[arg(
        long,
        env = "REGISTRY_MAX_PUBLISHERS_PER_SESSION",
        default_value_t = 10_000
    )]
    pub max_publishers_per_session: usize,

    /// Subscribers one session holds at most.
    #[arg(
        long,
        env = "REGISTRY_MAX_SUBSCRIBERS_PER_SESSION",
        default_value_t = 10_000
    )]
    pub max_subscribers_per_session: usize,

    /// Blocking queries (`GET /api/v1/data?waitIndex=`) open at once on this node.
    #[arg(long, env = "REGISTRY_MAX_BLOCKING_QUERIES", default_value_t = 10_000)]
    pub max_blocking_queries: usize,

    /// Bytes of data items one datum (one dataInfoId) holds at most across the publishers
    /// of this session node; a publish that would pass it is refused.
    #[arg(long, env = "REGISTRY_MAX_DATUM_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_datum_bytes: usize,

    /// A connection that has not sent a complete request head within this time (after it
    /// opened, or after its previous request on a keep-alive connection) is closed.
    #[arg(long, env = "REGISTRY_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub http_header_timeout: Duration,

    /// A request whose body stalls for this long (no bytes arriving) is aborted and its
    /// connection closed.
    #[arg(long, env = "REGISTRY_HTTP_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http_idle_timeout: Duration,

    /// Open HTTP connections per listener; connections beyond it are closed at once.
    #[arg(long, env = "REGISTRY_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// Connections each listener's kernel accept queue holds before the node takes them
    /// (capped by `net.core.somaxconn`). A reconnect storm (a node restarting, clients
    /// failing over to this node) beyond it has its SYNs dropped and retried a second later.
    #[arg(long, env = "REGISTRY_LISTEN_BACKLOG", default_value_t = 4096)]
    pub listen_backlog: u32,

    /// A peer that vanished without a FIN is dropped within about this long, whether its
    /// connection was idle or had data on the way (an event stream's push or ping): TCP
    /// keepalive after a quarter of it, unacknowledged data ends the connection after half
    /// of it (`TCP_USER_TIMEOUT`), and a write that makes no progress for all of it fails.
    /// So a peer that reads nothing for that long while data waits for it is cut off too.
    /// Its event stream ends, and its session expires `ttlSeconds` later.
    #[arg(long, env = "REGISTRY_DEAD_PEER_TIMEOUT", default_value = "8s", value_parser = humantime::parse_duration)]
    pub dead_peer_timeout: Duration,
}

impl Config {
    pub fn push_delay(&self) -> Duration {
        Duration::from_millis(self.push_delay_ms)
    }

    pub fn push_max_delay(&self) -> Duration {
        Duration::from_millis(self.push_max_delay_ms)
    }

    /// The client token, when one is set.
    pub fn client_token(&self) -> Option<&str> {
        self.token.as_deref().filter(|t| !t.is_empty())
    }

    /// The cluster token, when one is set.
    pub fn cluster_token(&self) -> Option<&str> {
        self.cluster_token.as_deref().filter(|t| !t.is_empty())
    }

    /// The membership key of `--membership-key`, read and checked; `None` without one.
    pub fn membership_key(&self) -> Result<Option<MembershipKey>, ConfigError> {
        match self.membership_key.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(arg) => MembershipKey::from_arg(arg)
                .map(Some)
                .map_err(|e| ConfigError(format!("--membership-key: {e}"))),
        }
    }

    /// The public listener's TLS (`--tls-cert`, `--tls-key`), loaded; `None` without.
    pub fn public_tls(&self) -> Result<Option<Arc<TlsSource>>, ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => TlsSource::load(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: None,
            })
            .map(Some)
            .map_err(|e| ConfigError(format!("--tls-cert/--tls-key: {e}"))),
            _ => Ok(None),
        }
    }

    /// The internal listeners' and client's mutual TLS (`--internal-tls-*`), loaded; `None`
    /// without.
    pub fn internal_tls(&self) -> Result<Option<Arc<TlsSource>>, ConfigError> {
        match (
            &self.internal_tls_cert,
            &self.internal_tls_key,
            &self.internal_tls_ca,
        ) {
            (Some(cert), Some(key), Some(ca)) => TlsSource::load(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: Some(ca.clone()),
            })
            .map(Some)
            .map_err(|e| ConfigError(format!("--internal-tls-*: {e}"))),
            _ => Ok(None),
        }
    }

    /// Checks the credentials fit together: a client token that also opened the internal
    /// protocol would let every client change the cluster.
    pub fn check_credentials(&self) -> Result<(), ConfigError> {
        if let (Some(client), Some(cluster)) = (self.client_token(), self.cluster_token()) {
            if registry_trust::constant_time_eq(client.as_bytes(), cluster.as_bytes()) {
                return Err(ConfigError(
                    "--token and --cluster-token must differ: the client token must never open /internal/*".into(),
                ));
            }
        }
        self.membership_key()?;
        Ok(())
    }

    /// Defaults with the HTTP listener on an ephemeral loopback port: for tests and tools.
    pub fn for_tests() -> Self {
        let mut c = Config::parse_from(["registry-node"]);
        c.http_addr = "127.0.0.1:0".into();
        c.data_addr = "127.0.0.1:0".into();
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Config::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_internal_contract() {
        let c = Config::try_parse_from(["registry-node"]).unwrap();
        assert_eq!(c.role, Role::Standalone);
        assert_eq!(c.http_addr, "127.0.0.1:9603");
        assert_eq!(c.data_addr, "127.0.0.1:9622");
        assert_eq!(c.push_delay_ms, 200);
        assert_eq!(c.push_max_delay_ms, 1000);
        assert!(!c.stop_push);
        assert_eq!(c.replication_factor, 3);
        assert_eq!(c.virtual_nodes, 1000);
        assert_eq!(c.session_lease_ms, 10_000);
        assert_eq!(c.stream_buffer, 1024);
        assert_eq!(c.stream_buffer_bytes, 8 * 1024 * 1024);
        assert!(c.token.is_none());
    }

    #[test]
    fn flags_parse() {
        let c = Config::try_parse_from([
            "registry-node",
            "--role",
            "session",
            "--members",
            "10.0.0.1:9622,10.0.0.2:9622",
            "--stop-push",
            "--token",
            "s3cret",
        ])
        .unwrap();
        assert_eq!(c.role, Role::Session);
        assert_eq!(c.members, vec!["10.0.0.1:9622", "10.0.0.2:9622"]);
        assert!(c.stop_push);
        assert_eq!(c.token.as_deref(), Some("s3cret"));
        assert!(Config::try_parse_from(["registry-node", "--role", "bogus"]).is_err());
    }

    #[test]
    fn credentials_must_differ_and_the_key_must_parse() {
        let parse = |args: &[&str]| {
            let mut all = vec!["registry-node"];
            all.extend_from_slice(args);
            Config::try_parse_from(all).unwrap()
        };
        assert_eq!(parse(&[]).check_credentials(), Ok(()));
        assert_eq!(
            parse(&["--token", "a", "--cluster-token", "b"]).check_credentials(),
            Ok(())
        );
        let same = parse(&["--token", "a", "--cluster-token", "a"]).check_credentials();
        assert!(same.unwrap_err().0.contains("must differ"));
        let bad = parse(&["--membership-key", "not-a-key"]).check_credentials();
        assert!(bad.unwrap_err().0.starts_with("--membership-key: "));
        let key = registry_trust::MembershipSigner::generate().public_key();
        let good = parse(&["--membership-key", &key.to_base64()]);
        assert_eq!(good.membership_key(), Ok(Some(key)));
        assert_eq!(parse(&[]).internal_addr, "127.0.0.1:0");
    }
}
