//! TLS (rustls) of a node's listeners and of its internal client, from PEM files that are
//! re-read when they change: a rotated certificate takes effect for new connections
//! without a restart (open connections keep the one they started with).
//!
//! - The public listener (`--tls-cert`, `--tls-key`): the server is authenticated, clients
//!   are not (they hold the client token).
//! - The internal listeners and the node's internal client (`--internal-tls-cert`,
//!   `--internal-tls-key`, `--internal-tls-ca`): mutual TLS under the cluster's CA. The
//!   listener verifies every certificate a peer presents against the CA and serves
//!   `/internal/*` only to a peer that presented one ([`require_peer_certificate`]);
//!   `/healthz`, `/readyz` and `/metrics` stay open to probes that present none. The
//!   client presents this node's certificate and accepts a server only when its
//!   certificate chains to the CA, whatever its name (`registry_trust::tls`).
//!
//! A listener with TLS speaks nothing else: a plain-HTTP request fails the handshake and
//! the connection is closed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::{Mutex, RwLock};
/// A TLS file that cannot be used, with the file and why.
pub use registry_trust::tls::TlsError;
use registry_trust::tls::{certificates, private_key, provider, roots, ClusterCaVerifier};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

use crate::http::error::ApiError;

/// How often the files are compared with what is in use.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// A certificate, its key and (mutual TLS) the CA that peers' certificates must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM: the CA certificates; `None` for the public listener.
    pub ca: Option<PathBuf>,
}

fn file_error(path: &Path, what: impl std::fmt::Display) -> TlsError {
    TlsError(format!("{}: {what}", path.display()))
}

// === impl Material ===

/// What one reading of the files produced.
struct Material {
    server: Arc<ServerConfig>,
    /// Mutual TLS: this node's identity as a client, and the check of the servers it calls.
    client: Option<(Arc<CertifiedKey>, Arc<ClusterCaVerifier>)>,
}

/// The three files' contents, in order, for change detection.
#[derive(PartialEq, Eq)]
struct Contents(Vec<Vec<u8>>);

fn read(files: &TlsFiles) -> Result<Contents, TlsError> {
    let mut all = Vec::with_capacity(3);
    for path in [Some(&files.cert), Some(&files.key), files.ca.as_ref()]
        .into_iter()
        .flatten()
    {
        all.push(std::fs::read(path).map_err(|e| file_error(path, e))?);
    }
    Ok(Contents(all))
}

impl Material {
    fn build(files: &TlsFiles, contents: &Contents) -> Result<Material, TlsError> {
        let certs = certificates(&contents.0[0]).map_err(|e| file_error(&files.cert, e))?;
        let key = private_key(&contents.0[1]).map_err(|e| file_error(&files.key, e))?;
        let roots = match &files.ca {
            None => None,
            Some(path) => Some(roots(&contents.0[2]).map_err(|e| file_error(path, e))?),
        };
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?;
        let builder = match &roots {
            None => builder.with_no_client_auth(),
            Some(roots) => builder.with_client_cert_verifier(
                // Probes present no certificate: the handshake lets them in, and
                // `require_peer_certificate` keeps them out of `/internal/*`.
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TlsError(format!("CA: {e}")))?,
            ),
        };
        let mut server = builder
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| {
                TlsError(format!(
                    "{} and {}: {e}",
                    files.cert.display(),
                    files.key.display()
                ))
            })?;
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let client = match roots {
            None => None,
            Some(roots) => {
                let signing = provider()
                    .key_provider
                    .load_private_key(key)
                    .map_err(|e| file_error(&files.key, e))?;
                let verifier = ClusterCaVerifier::new(roots)?;
                Some((
                    Arc::new(CertifiedKey::new(certs, signing)),
                    Arc::new(verifier),
                ))
            }
        };
        Ok(Material {
            server: Arc::new(server),
            client,
        })
    }
}

// === impl TlsSource ===

/// The TLS configuration in use for one set of files, replaced when they change.
pub struct TlsSource {
    files: TlsFiles,
    current: RwLock<Arc<Material>>,
    /// The contents last read (used or refused), so that a bad file is reported once.
    seen: Mutex<Contents>,
}

impl std::fmt::Debug for TlsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSource")
            .field("files", &self.files)
            .finish()
    }
}

impl TlsSource {
    /// Reads the files; an error names the file and what is wrong with it. The files are
    /// then watched for as long as the source lives.
    pub fn load(files: TlsFiles) -> Result<Arc<TlsSource>, TlsError> {
        let contents = read(&files)?;
        let material = Material::build(&files, &contents)?;
        let source = Arc::new(TlsSource {
            files,
            current: RwLock::new(Arc::new(material)),
            seen: Mutex::new(contents),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(watch(Arc::downgrade(&source)));
        }
        Ok(source)
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Whether peers are asked for a certificate (mutual TLS).
    pub fn mutual(&self) -> bool {
        self.files.ca.is_some()
    }

    /// The acceptor for the next connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().server.clone())
    }

    /// Re-reads the files; when they changed and are good, new connections use them.
    /// `Ok(true)` when the configuration was replaced; an error (a file missing, a key that
    /// does not fit its certificate) keeps the one in use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let contents = read(&self.files)?;
        let mut seen = self.seen.lock();
        if *seen == contents {
            return Ok(false);
        }
        let built = Material::build(&self.files, &contents);
        *seen = contents;
        *self.current.write() = Arc::new(built?);
        Ok(true)
    }

    /// The client side of mutual TLS: presents this node's certificate and accepts servers
    /// whose certificate chains to the CA, both as the files are now. `None` without a CA.
    pub fn client_config(self: &Arc<Self>) -> Option<ClientConfig> {
        if !self.mutual() {
            return None;
        }
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .ok()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ClusterCa(self.clone())))
            .with_client_cert_resolver(Arc::new(NodeIdentity(self.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Some(config)
    }

    fn client_material(&self) -> Option<(Arc<CertifiedKey>, Arc<ClusterCaVerifier>)> {
        self.current.read().client.clone()
    }
}

/// Reloads the files every [`RELOAD_INTERVAL`] until the source is dropped.
async fn watch(source: Weak<TlsSource>) {
    let mut last_error = None;
    loop {
        tokio::time::sleep(RELOAD_INTERVAL).await;
        let Some(source) = source.upgrade() else {
            return;
        };
        match source.reload() {
            Ok(true) => {
                last_error = None;
                tracing::info!(cert = %source.files.cert.display(), "TLS certificate reloaded");
            }
            Ok(false) => {}
            Err(e) => {
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "TLS files not reloaded; the previous certificate stays in use");
                }
                last_error = Some(e);
            }
        }
    }
}

// === impl ClusterCa ===

/// The cluster-CA check ([`ClusterCaVerifier`]) of the files as they are now.
#[derive(Debug)]
struct ClusterCa(Arc<TlsSource>);

impl ClusterCa {
    fn verifier(&self) -> Result<Arc<ClusterCaVerifier>, rustls::Error> {
        self.0
            .client_material()
            .map(|(_, v)| v)
            .ok_or_else(|| rustls::Error::General("no cluster CA".into()))
    }
}

impl ServerCertVerifier for ClusterCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

// === impl NodeIdentity ===

/// Presents the current certificate of this node to the servers it calls.
#[derive(Debug)]
struct NodeIdentity(Arc<TlsSource>);

impl ResolvesClientCert for NodeIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.client_material().map(|(key, _)| key)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

// === the peer's certificate on internal routes ===

/// Set on every request of a mutual-TLS connection: whether the peer presented a
/// certificate that chains to the CA (the handshake refuses any other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerCertificate {
    Verified,
    Missing,
}

/// Middleware of the internal listeners: `/internal/*` only for a peer with a certificate
/// when the listener speaks mutual TLS (401 in the error shape otherwise).
pub async fn require_peer_certificate(req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/internal/")
        && req.extensions().get::<PeerCertificate>() == Some(&PeerCertificate::Missing)
    {
        return ApiError::Unauthorized(
            "a client certificate signed by the cluster CA is required on /internal/*".into(),
        )
        .into_response();
    }
    next.run(req).await
}

/// The internal client's TLS: mutual TLS under `source`'s CA; plain HTTP without one.
#[derive(Debug, Clone, Default)]
pub struct PeerTls(Option<Arc<TlsSource>>);

impl PeerTls {
    pub fn new(source: Option<Arc<TlsSource>>) -> PeerTls {
        PeerTls(source.filter(|s| s.mutual()))
    }

    /// `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.0.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// `builder` speaking this TLS.
    pub fn apply(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        match self.0.as_ref().and_then(|s| s.client_config()) {
            Some(config) => builder.use_preconfigured_tls(config),
            None => builder,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: None,
        };
        let e = TlsSource::load(files.clone()).unwrap_err();
        assert!(e.0.contains("tls.crt"), "{e}");
        std::fs::write(&cert, "not pem").unwrap();
        std::fs::write(&key, "not pem").unwrap();
        let e = TlsSource::load(files).unwrap_err();
        assert!(
            e.0.contains("tls.crt") && e.0.contains("no PEM certificate"),
            "{e}"
        );
    }
}
