//! Mutual TLS of the node API with the cluster CA.
//!
//! The agent serves with the certificate `nubo-coordinator node enroll`
//! issued it (also its etcd client certificate: EKU serverAuth and
//! clientAuth, DNS name = the node name) and accepts only clients holding
//! a certificate of the same CA (coordinators, peer agents). Clients verify
//! the server against the CA *and the node name* they expect, not the
//! address they dialled: a node cannot answer for another.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The PEM files of one side: the cluster CA, and this side's certificate
/// (chain) and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA (what signs every node's and coordinator's
    /// certificate).
    pub ca: PathBuf,
    /// This side's certificate.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, SEC1 or PKCS#1 PEM).
    pub key: PathBuf,
}

/// What went wrong building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the material.
    #[error("{what}: {source}")]
    Rustls {
        /// What was being built.
        what: &'static str,
        /// rustls's error.
        #[source]
        source: rustls::Error,
    },
    /// The client verifier could not be built from the CA.
    #[error("client verifier: {0}")]
    Verifier(String),
}

fn pem_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// The crypto provider of every nubo TLS configuration (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in the PEM file at `path` (at least one).
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(pem_err(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The private key in the PEM file at `path`.
pub fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_err(path, e))
}

/// A root store holding every certificate of the PEM file `ca`.
pub fn roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca)? {
        roots.add(c).map_err(|e| pem_err(ca, e))?;
    }
    Ok(roots)
}

/// A server's side: serve with `cert` (chain) and `key`; with
/// `client_ca`, require a client certificate signed by it, else take any
/// client (an HTTPS endpoint such as the OpenStack front end or a metrics
/// endpoint without client certificates).
pub fn server_config(
    cert: &Path,
    key_path: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "protocol versions",
            source,
        })?;
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?,
        ),
        None => builder.with_no_client_auth(),
    };
    let cfg = builder
        .with_single_cert(certs(cert)?, key(key_path)?)
        .map_err(|source| TlsError::Rustls {
            what: "server certificate",
            source,
        })?;
    Ok(Arc::new(cfg))
}

impl TlsFiles {
    /// The files when all three are configured (a daemon's `[etcd_tls]`:
    /// the same certificate serves etcd and the node API).
    pub fn from_parts(
        ca: Option<&PathBuf>,
        cert: Option<&PathBuf>,
        key: Option<&PathBuf>,
    ) -> Option<Self> {
        Some(Self {
            ca: ca?.clone(),
            cert: cert?.clone(),
            key: key?.clone(),
        })
    }

    /// The agent's side: serve with `cert`, require a client certificate
    /// signed by `ca`.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        server_config(&self.cert, &self.key, Some(&self.ca))
    }

    /// A client's side: trust `ca` only, present `cert`.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let cfg = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                what: "protocol versions",
                source,
            })?
            .with_root_certificates(roots(&self.ca)?)
            .with_client_auth_cert(certs(&self.cert)?, key(&self.key)?)
            .map_err(|source| TlsError::Rustls {
                what: "client certificate",
                source,
            })?;
        Ok(Arc::new(cfg))
    }
}
