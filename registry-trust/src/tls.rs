//! TLS between the cluster's peers (nodes and the operator) under the cluster's CA: PEM
//! parsing, and the server check every peer's client makes.
//!
//! A peer is whoever shows a certificate that chains to the CA. Names are not compared:
//! peers dial each other by pod IP or advertise address, which certificates issued for
//! Services and pods do not list, so the CA must be the registry's own (SECURITY.md).
//! Everything else of the chain is checked as usual (signatures, validity, key usage).
//!
//! All crypto comes from rustls' `ring` provider, the one reqwest and kube use too.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// PEM that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// rustls' `ring` provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM text; at least one.
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// The private key of a PEM text (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError(format!("no PEM private key: {e}")))
}

/// The CA certificates of a PEM text as trust anchors.
pub fn roots(pem: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in certificates(pem)? {
        roots
            .add(ca)
            .map_err(|e| TlsError(format!("not a CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

// === impl ClusterCaVerifier ===

/// Accepts a server whose certificate chains to the cluster's CA, whatever its name.
#[derive(Debug)]
pub struct ClusterCaVerifier(Arc<WebPkiServerVerifier>);

impl ClusterCaVerifier {
    pub fn new(roots: Arc<RootCertStore>) -> Result<ClusterCaVerifier, TlsError> {
        WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map(ClusterCaVerifier)
            .map_err(|e| TlsError(format!("CA: {e}")))
    }
}

impl ServerCertVerifier for ClusterCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name: a name error means the chain was good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A peer's client configuration from PEM texts: presents `cert` and `key`, accepts servers
/// under the CA of `ca` (HTTP/1.1).
pub fn peer_client_config(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<ClientConfig, TlsError> {
    let verifier = Arc::new(ClusterCaVerifier::new(roots(ca)?)?);
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(certificates(cert)?, private_key(key)?)
        .map_err(|e| TlsError(format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_that_is_not_there_is_refused() {
        assert!(certificates(b"")
            .unwrap_err()
            .0
            .contains("no PEM certificate"));
        assert!(certificates(b"junk").is_err());
        assert!(private_key(b"junk").is_err());
        assert!(roots(b"").is_err());
        assert!(peer_client_config(b"", b"", b"").is_err());
    }
}
