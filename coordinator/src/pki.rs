//! Certificates signed by the cluster CA (`nubo-coordinator node enroll`):
//! an EC P-256 key and a certificate whose CN is the etcd user (etcd's
//! `--client-cert-auth` maps the CN to the user), extended key usage
//! clientAuth; a node's also serves its node API (`nubo_nodeapi::tls`):
//! serverAuth too, and its node name as DNS name, which clients verify.

use std::path::{Path, PathBuf};

use chrono::{Datelike, Duration, Utc};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

/// What went wrong issuing a certificate.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The CA key does not belong to the CA certificate: what it signs
    /// would not verify.
    #[error("the CA key {key} does not belong to the CA certificate {cert}")]
    KeyMismatch {
        /// The CA certificate.
        cert: PathBuf,
        /// The CA key.
        key: PathBuf,
    },
    /// A certificate does not parse.
    #[error("{what}: {detail}")]
    Parse {
        /// Which certificate.
        what: &'static str,
        /// The parser's error.
        detail: String,
    },
    /// The CA certificate or key is unusable, or signing failed.
    #[error("{what}")]
    Cert {
        /// What was being done.
        what: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
}

fn cert_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Cert { what, source }
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A client certificate and its key, PEM.
pub struct ClientCert {
    /// The certificate (signed by the CA).
    pub cert_pem: String,
    /// The private key (PKCS#8). Never logged.
    pub key_pem: String,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<secret>")
            .finish()
    }
}

/// Issues a client certificate with `cn`, valid from yesterday (clock
/// skew) for `days` days, signed by the CA at `ca_cert`/`ca_key` (PEM,
/// e.g. `scripts/make-certs.sh`'s `ca.crt`/`ca.key`). With `server_name`,
/// it is a server certificate of that DNS name too.
pub fn issue_client_cert(
    ca_cert: &Path,
    ca_key: &Path,
    cn: &str,
    server_name: Option<&str>,
    days: u32,
) -> Result<ClientCert, PkiError> {
    let ca_pem = read(ca_cert)?;
    let ca_key_path = ca_key;
    let ca_key = KeyPair::from_pem(&read(ca_key)?).map_err(cert_err("reading the CA key"))?;
    let ca_params = CertificateParams::from_ca_cert_pem(&ca_pem)
        .map_err(cert_err("reading the CA certificate"))?;
    // The issuer as rcgen needs it: the CA's own name and key identifier,
    // re-signed in memory (only its subject and key are used).
    let issuer = ca_params
        .self_signed(&ca_key)
        .map_err(cert_err("the CA key does not fit its certificate"))?;
    let key = KeyPair::generate().map_err(cert_err("generating a key"))?;
    let sans: Vec<String> = server_name.iter().map(|n| n.to_string()).collect();
    let mut p = CertificateParams::new(sans).map_err(cert_err("parameters"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if server_name.is_some() {
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    p.use_authority_key_identifier_extension = true;
    let start = Utc::now() - Duration::days(1);
    let end = start + Duration::days(i64::from(days) + 1);
    let ymd = |d: chrono::DateTime<Utc>| {
        // Month and day always fit in a u8.
        rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
    };
    p.not_before = ymd(start);
    p.not_after = ymd(end);
    p.serial_number = Some(SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
    let cert = p
        .signed_by(&key, &issuer, &ca_key)
        .map_err(cert_err("signing the certificate"))?;
    if !signed_by(cert.der(), &ca_pem)? {
        return Err(PkiError::KeyMismatch {
            cert: ca_cert.to_path_buf(),
            key: ca_key_path.to_path_buf(),
        });
    }
    Ok(ClientCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Whether the certificate `der` carries a valid signature of the CA
/// certificate `ca_pem`'s key.
fn signed_by(der: &[u8], ca_pem: &str) -> Result<bool, PkiError> {
    let parse = |what| move |e: String| PkiError::Parse { what, detail: e };
    let (_, pem) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
        .map_err(|e| parse("the CA certificate")(e.to_string()))?;
    let ca = pem
        .parse_x509()
        .map_err(|e| parse("the CA certificate")(e.to_string()))?;
    let (_, leaf) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| parse("the new certificate")(e.to_string()))?;
    Ok(leaf.verify_signature(Some(ca.public_key())).is_ok())
}

/// Writes `text` to `path` with mode `mode` (set on an existing file too,
/// before anything is written into it).
pub fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)
}

/// The files `nubo-coordinator node enroll` writes into its `--out`
/// directory: what an agent's `--etcd-ca`, `--etcd-cert` and
/// `--etcd-key` name.
pub struct EnrolFiles {
    /// `ca.crt`, a copy of the cluster CA certificate.
    pub ca: PathBuf,
    /// `etcd-client.crt`.
    pub cert: PathBuf,
    /// `etcd-client.key` (0600).
    pub key: PathBuf,
}

impl EnrolFiles {
    /// The files in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.crt"),
            cert: dir.join("etcd-client.crt"),
            key: dir.join("etcd-client.key"),
        }
    }

    /// Writes `cert` (issued by [`issue_client_cert`] for the CA at
    /// `ca_cert`) and a copy of the CA certificate (the directory is
    /// created 0700 if missing; the key file is 0600).
    pub fn write(&self, cert: &ClientCert, ca_cert: &Path) -> Result<(), PkiError> {
        use std::os::unix::fs::DirBuilderExt;
        if let Some(dir) = self.key.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| PkiError::Io {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        write_file(&self.key, &cert.key_pem, 0o600)?;
        write_file(&self.cert, &cert.cert_pem, 0o644)?;
        write_file(&self.ca, &read(ca_cert)?, 0o644)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    fn openssl(args: &[&str]) -> std::process::Output {
        Command::new("openssl").args(args).output().unwrap()
    }

    #[test]
    fn issues_a_client_cert_openssl_verifies_against_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-certs.sh");
        let made = Command::new("bash")
            .arg(script)
            .arg(dir.path().join("pki"))
            .output()
            .unwrap();
        assert!(made.status.success());
        let (ca, ca_key) = (dir.path().join("pki/ca.crt"), dir.path().join("pki/ca.key"));
        let files = EnrolFiles::in_dir(&dir.path().join("out"));
        let cert = issue_client_cert(&ca, &ca_key, "nubo-node-n1", Some("n1"), 30).unwrap();
        files.write(&cert, &ca).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&files.key), 0o600);
        assert_eq!(mode(files.key.parent().unwrap()), 0o700);
        let v = openssl(&[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            ca.to_str().unwrap(),
            files.cert.to_str().unwrap(),
        ]);
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
        // It also serves the node API of n1, under that name only.
        for (name, ok) in [("n1", true), ("n2", false)] {
            let v = openssl(&[
                "verify",
                "-purpose",
                "sslserver",
                "-verify_hostname",
                name,
                "-CAfile",
                ca.to_str().unwrap(),
                files.cert.to_str().unwrap(),
            ]);
            assert_eq!(v.status.success(), ok, "{name}");
        }
        let s = openssl(&[
            "x509",
            "-noout",
            "-subject",
            "-in",
            files.cert.to_str().unwrap(),
        ]);
        assert!(String::from_utf8_lossy(&s.stdout).contains("CN = nubo-node-n1"));
        // Another CA's key is refused by name.
        let other = dir.path().join("other");
        assert!(Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-certs.sh"))
            .arg(&other)
            .output()
            .unwrap()
            .status
            .success());
        let err = issue_client_cert(&ca, &other.join("ca.key"), "x", None, 1).unwrap_err();
        assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
        let missing =
            issue_client_cert(&dir.path().join("nope"), &ca_key, "x", None, 1).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }
}
