//! Certificates made by the tests: a CA, certificates it issues for loopback, the
//! cert-manager file layout (`tls.crt`, `tls.key`, `ca.crt`), and HTTPS clients that trust a
//! CA and present a certificate.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// A certificate authority of its own.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    /// A fresh self-signed CA named `name`.
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("a CA key");
        let cert = params.self_signed(&key).expect("a CA certificate");
        Ca { cert, key }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses), good for server and client
    /// authentication.
    pub fn issue(&self, names: &[&str]) -> Issued {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("certificate params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let key = KeyPair::generate().expect("a key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("a signed certificate");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A certificate for `127.0.0.1` and `localhost`.
    pub fn issue_loopback(&self) -> Issued {
        self.issue(&["127.0.0.1", "localhost"])
    }

    /// A reqwest client trusting this CA only.
    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().expect("an HTTPS client")
    }

    /// A reqwest client builder trusting this CA only (no built-in roots).
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.pem().as_bytes()).expect("the CA as PEM"),
            )
    }
}

impl Issued {
    /// A client as the cluster's peers make them: presents this certificate, accepts a
    /// server whose certificate chains to `ca` whatever its name (pods dialled by IP).
    pub fn peer_client(&self, ca: &Ca) -> reqwest::Client {
        let config = registry_trust::tls::peer_client_config(
            self.cert_pem.as_bytes(),
            self.key_pem.as_bytes(),
            ca.pem().as_bytes(),
        )
        .expect("a peer's TLS configuration");
        reqwest::Client::builder()
            .no_proxy()
            .use_preconfigured_tls(config)
            .build()
            .expect("a peer client")
    }

    /// The certificate and key as a reqwest client identity.
    pub fn identity(&self) -> reqwest::Identity {
        reqwest::Identity::from_pem(format!("{}{}", self.cert_pem, self.key_pem).as_bytes())
            .expect("an identity")
    }
}

/// The cert-manager layout in a directory: `tls.crt`, `tls.key` and `ca.crt`.
#[derive(Debug, Clone)]
pub struct SecretDir {
    pub dir: PathBuf,
}

impl SecretDir {
    pub fn cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Writes `issued` and `ca` into `dir` (created), each file replaced atomically.
    pub fn write(dir: &Path, issued: &Issued, ca: &Ca) -> SecretDir {
        std::fs::create_dir_all(dir).expect("the secret directory");
        let out = SecretDir {
            dir: dir.to_owned(),
        };
        out.rotate(issued, ca);
        out
    }

    /// Replaces the files (each by a rename, as a Secret volume's update is seen).
    pub fn rotate(&self, issued: &Issued, ca: &Ca) {
        for (path, contents) in [
            (self.cert(), issued.cert_pem.clone()),
            (self.key(), issued.key_pem.clone()),
            (self.ca(), ca.pem()),
        ] {
            crate::fs::replace_file(path, contents);
        }
    }

    /// `--tls-cert FILE --tls-key FILE`.
    pub fn public_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert().display().to_string(),
            "--tls-key".into(),
            self.key().display().to_string(),
        ]
    }

    /// `--internal-tls-cert FILE --internal-tls-key FILE --internal-tls-ca FILE`.
    pub fn internal_args(&self) -> Vec<String> {
        vec![
            "--internal-tls-cert".into(),
            self.cert().display().to_string(),
            "--internal-tls-key".into(),
            self.key().display().to_string(),
            "--internal-tls-ca".into(),
            self.ca().display().to_string(),
        ]
    }
}
