//! etcd over mutual TLS: certificates from `scripts/make-certs.sh` and an
//! etcd that requires a client certificate (`--client-cert-auth`).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let etcd = nubo_tests::tls::TlsEtcd::start()?;
//! etcd.etcdctl_as(Some("cli"), &["put", "/k", "v"])?;
//! let mut client = etcd.client("coordinator").await?;
//! client.get("/k", None).await?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

/// `scripts/make-certs.sh` of this workspace.
pub fn make_certs_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-certs.sh")
}

/// Runs `scripts/make-certs.sh DIR ARGS…`.
fn run_script(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("bash")
        .arg(make_certs_script())
        .arg(dir)
        .args(args)
        .output()
        .context("running scripts/make-certs.sh")?;
    if !out.status.success() {
        bail!(
            "make-certs.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A certificate directory made by `scripts/make-certs.sh` (removed on drop).
pub struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    /// Runs the script into a fresh temporary directory; `args` are passed
    /// on (extra SANs, `client:NAME`). Clients `coordinator` and `cli`
    /// always exist.
    pub fn generate(args: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("nbt-certs-").tempdir()?;
        run_script(dir.path(), args)?;
        Ok(Self { dir })
    }

    /// Runs the script again into the same directory (the CA is kept), e.g.
    /// `&["client:node-1"]` for one more client certificate.
    pub fn add(&self, args: &[&str]) -> Result<()> {
        run_script(self.dir.path(), args)
    }

    /// `(coordinator-server.crt, coordinator-server.key)`: the gRPC API's.
    pub fn coordinator_server(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("coordinator-server.crt"),
            self.dir.path().join("coordinator-server.key"),
        )
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ca.crt`.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// `(client-NAME.crt, client-NAME.key)`.
    pub fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join(format!("client-{name}.crt")),
            self.dir.path().join(format!("client-{name}.key")),
        )
    }

    /// Issues `NAME.crt`/`NAME.key`, a server certificate signed by this CA
    /// (CN=NAME, EKU serverAuth) for exactly `sans` (OpenSSL syntax, e.g.
    /// `DNS:other.example`): unlike `make-certs.sh`'s, without 127.0.0.1 or
    /// localhost, so that a client reaching it by those names must refuse
    /// it as a certificate for another name.
    pub fn server_cert_for(&self, name: &str, sans: &str) -> Result<(PathBuf, PathBuf)> {
        let dir = self.dir.path();
        let (crt, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        let (csr, ext) = (
            dir.join(format!("{name}.csr")),
            dir.join(format!("{name}.ext")),
        );
        std::fs::write(
            &ext,
            format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName={sans}\n"
            ),
        )?;
        let p = |x: &Path| x.display().to_string();
        let ca = self.ca();
        let ca_key = dir.join("ca.key");
        for args in [
            vec![
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &p(&key),
            ],
            vec![
                "req",
                "-new",
                "-key",
                &p(&key),
                "-subj",
                &format!("/CN={name}"),
                "-out",
                &p(&csr),
            ],
            vec![
                "x509",
                "-req",
                "-in",
                &p(&csr),
                "-CA",
                &p(&ca),
                "-CAkey",
                &p(&ca_key),
                "-set_serial",
                "0x1d2c3b4a",
                "-sha256",
                "-days",
                "2",
                "-extfile",
                &p(&ext),
                "-out",
                &p(&crt),
            ],
        ] {
            let out = Command::new("openssl")
                .args(&args)
                .output()
                .context("running openssl")?;
            if !out.status.success() {
                bail!(
                    "openssl {args:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok((crt, key))
    }
}

/// An etcd (one member, or a cluster on loopback: [`crate::etcd::Etcd`])
/// serving clients only over HTTPS and requiring a client certificate
/// signed by its CA. Every member is killed (by pid) on drop.
pub struct TlsEtcd {
    certs: Certs,
    etcd: crate::etcd::Etcd,
}

/// A client certificate and key of the cluster CA (e.g. the files
/// `nubo-coordinator node enroll` wrote).
#[derive(Debug, Clone)]
pub struct ClientFiles {
    /// The certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

impl TlsEtcd {
    /// Makes certificates and starts one member on 127.0.0.1.
    pub fn start() -> Result<Self> {
        Self::start_cluster(1)
    }

    /// Makes certificates and starts `members` members on 127.0.0.1
    /// (peers talk plain HTTP on loopback); returns once each is healthy.
    pub fn start_cluster(members: usize) -> Result<Self> {
        let certs = Certs::generate(&[])?;
        let (probe_cert, probe_key) = certs.client("cli");
        let etcd = crate::etcd::Etcd::start_with(crate::etcd::EtcdOpts {
            members,
            client_tls: Some(crate::etcd::ClientTls {
                ca: certs.ca(),
                server_cert: certs.dir().join("etcd-server.crt"),
                server_key: certs.dir().join("etcd-server.key"),
                probe_cert,
                probe_key,
            }),
            ..Default::default()
        })?;
        Ok(Self { certs, etcd })
    }

    /// Restarts every member, one at a time (kill -9, start again on the
    /// same data and ports, wait until it answers): quorum is kept, and
    /// every client connection, watch streams included, is cut.
    pub fn restart(&mut self) -> Result<()> {
        for i in 0..self.etcd.size() {
            self.etcd.restart_member(i)?;
        }
        Ok(())
    }

    /// The client URLs, comma-separated (`https://127.0.0.1:<port>,…`):
    /// what `--etcd-endpoints` and `etcdctl --endpoints` take.
    pub fn endpoint(&self) -> String {
        self.etcd.endpoint()
    }

    /// Number of members.
    pub fn size(&self) -> usize {
        self.etcd.size()
    }

    /// The certificates.
    pub fn certs(&self) -> &Certs {
        &self.certs
    }

    /// Every member's log so far.
    pub fn log(&self) -> String {
        self.etcd.log()
    }

    /// Runs `etcdctl` trusting the CA, presenting client `name`'s
    /// certificate (or none), with a short timeout; returns the raw output
    /// whatever the exit status.
    pub fn etcdctl_as(&self, client: Option<&str>, args: &[&str]) -> Result<Output> {
        let files = client.map(|name| {
            let (cert, key) = self.certs.client(name);
            ClientFiles { cert, key }
        });
        self.etcdctl_with(files.as_ref(), args)
    }

    /// Runs `etcdctl` like [`Self::etcdctl_as`] presenting `files`.
    pub fn etcdctl_with(&self, files: Option<&ClientFiles>, args: &[&str]) -> Result<Output> {
        self.etcdctl_command(files)
            .args(args)
            .output()
            .context("running etcdctl")
    }

    /// `etcdctl` trusting the CA and presenting `files` (or no
    /// certificate), with short timeouts; the caller adds the command,
    /// e.g. a `watch` to spawn.
    pub fn etcdctl_command(&self, files: Option<&ClientFiles>) -> Command {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .arg("--dial-timeout=2s")
            .arg("--command-timeout=3s")
            .arg(format!("--cacert={}", self.certs.ca().display()));
        if let Some(f) = files {
            cmd.arg(format!("--cert={}", f.cert.display()))
                .arg(format!("--key={}", f.key.display()));
        }
        cmd
    }

    /// An etcd client authenticated as client `name`.
    pub async fn client(&self, name: &str) -> Result<etcd_client::Client> {
        let (cert, key) = self.certs.client(name);
        self.client_with(&ClientFiles { cert, key }).await
    }

    /// An etcd client presenting `files`.
    pub async fn client_with(&self, files: &ClientFiles) -> Result<etcd_client::Client> {
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(&self.certs.ca())?))
            .identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?));
        let opts = ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(5));
        Ok(etcd_client::Client::connect(self.etcd.endpoints(), Some(opts)).await?)
    }

    /// The operator's credential: the client certificate with CN `root`
    /// (etcd's administrator once auth is on), made on first use.
    pub fn root(&self) -> Result<ClientFiles> {
        self.certs.add(&["client:root"])?;
        let (cert, key) = self.certs.client("root");
        Ok(ClientFiles { cert, key })
    }

    /// Runs `nubo-coordinator --etcd-endpoints … ARGS… --admin-cert
    /// <root> --admin-key <root> --etcd-ca <ca>` (an etcd-auth or node
    /// command); returns the raw output.
    pub fn admin_command(&self, args: &[&str]) -> Result<Output> {
        self.admin_command_as(&self.root()?, args)
    }

    /// [`Self::admin_command`] presenting `root` as the administrator's
    /// credential (e.g. a certificate that is not etcd's root).
    pub fn admin_command_as(&self, root: &ClientFiles, args: &[&str]) -> Result<Output> {
        Command::new(crate::process::bin_path("nubo-coordinator")?)
            .args(["--etcd-endpoints", &self.endpoint()])
            .args(args)
            .arg("--admin-cert")
            .arg(&root.cert)
            .arg("--admin-key")
            .arg(&root.key)
            .arg("--etcd-ca")
            .arg(self.certs.ca())
            .output()
            .context("running nubo-coordinator")
    }

    fn admin_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.admin_command(args)?;
        if !out.status.success() {
            bail!(
                "nubo-coordinator {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `nubo-coordinator etcd-auth enable`: users `root` and
    /// `coordinator`, then etcd authentication on. From then on client
    /// `coordinator` reads and writes `/nubo/v1/`, `root` administers, and
    /// any other certificate is refused until its user exists.
    pub fn enable_auth(&self) -> Result<()> {
        self.admin_ok(&["etcd-auth", "enable"]).map(drop)
    }

    /// `nubo-coordinator node enroll NODE`: its etcd user and role, and
    /// its certificate (CN `nubo-node-NODE`) in `<certs>/node-NODE/`.
    pub fn enroll(&self, node: &str) -> Result<ClientFiles> {
        let out = self.certs.dir().join(format!("node-{node}"));
        let ca_key = self.certs.dir().join("ca.key");
        self.admin_ok(&[
            "node",
            "enroll",
            node,
            "--ca-cert",
            &self.certs.ca().display().to_string(),
            "--ca-key",
            &ca_key.display().to_string(),
            "--out",
            &out.display().to_string(),
        ])?;
        Ok(ClientFiles {
            cert: out.join("etcd-client.crt"),
            key: out.join("etcd-client.key"),
        })
    }

    /// `nubo-coordinator node revoke NODE`; returns its output.
    pub fn revoke(&self, node: &str) -> Result<String> {
        self.admin_ok(&["node", "revoke", node])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stdout(o: &Output) -> String {
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    #[test]
    fn script_makes_verifiable_certs_with_the_requested_names() {
        let certs = Certs::generate(&["10.1.2.3", "etcd.example", "client:node-1"]).unwrap();
        for c in ["coordinator", "cli", "node-1"] {
            let (crt, key) = certs.client(c);
            assert!(key.exists());
            let v = Command::new("openssl")
                .arg("verify")
                .arg("-CAfile")
                .arg(certs.ca())
                .arg(&crt)
                .output()
                .unwrap();
            assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
            let subject = Command::new("openssl")
                .args(["x509", "-noout", "-subject", "-in"])
                .arg(&crt)
                .output()
                .unwrap();
            assert!(stdout(&subject).contains(&format!("CN = {c}")));
        }
        let text = Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(certs.dir().join("etcd-server.crt"))
            .output()
            .unwrap();
        let sans = stdout(&text);
        for want in [
            "IP Address:127.0.0.1",
            "IP Address:10.1.2.3",
            "DNS:etcd.example",
        ] {
            assert!(sans.contains(want), "{want} missing in {sans}");
        }
        assert!(Certs::generate(&["client:bad/name"]).is_err());
    }

    #[test]
    fn etcdctl_needs_a_client_cert_from_the_ca() {
        let etcd = TlsEtcd::start().unwrap();
        let put = etcd
            .etcdctl_as(Some("cli"), &["put", "/tls/k", "v"])
            .unwrap();
        assert!(
            put.status.success(),
            "{}",
            String::from_utf8_lossy(&put.stderr)
        );
        let get = etcd
            .etcdctl_as(Some("coordinator"), &["get", "/tls/k"])
            .unwrap();
        assert!(get.status.success());
        assert!(stdout(&get).contains("/tls/k\nv"), "{}", stdout(&get));

        let anonymous = etcd.etcdctl_as(None, &["get", "/tls/k"]).unwrap();
        assert!(!anonymous.status.success(), "accepted without a cert");
        assert!(!stdout(&anonymous).contains("/tls/k"));

        // A certificate from another CA is refused too.
        let foreign = Certs::generate(&[]).unwrap();
        let (crt, key) = foreign.client("cli");
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", etcd.endpoint()))
            .args(["--dial-timeout=2s", "--command-timeout=3s"])
            .arg(format!("--cacert={}", etcd.certs().ca().display()))
            .arg(format!("--cert={}", crt.display()))
            .arg(format!("--key={}", key.display()))
            .args(["get", "/tls/k"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "accepted a foreign client cert");
    }

    #[tokio::test]
    async fn etcd_client_connects_with_tls_and_a_client_cert() {
        let etcd = TlsEtcd::start().unwrap();
        let mut c = etcd.client("coordinator").await.unwrap();
        c.put("/tls/rust", "ok", None).await.unwrap();
        let resp = c.get("/tls/rust", None).await.unwrap();
        assert_eq!(resp.kvs()[0].value(), b"ok");
        let seen = etcd.etcdctl_as(Some("cli"), &["get", "/tls/rust"]).unwrap();
        assert!(stdout(&seen).contains("ok"));

        // Trusting the CA but presenting no certificate fails.
        let tls = TlsOptions::new().ca_certificate(Certificate::from_pem(
            std::fs::read(etcd.certs().ca()).unwrap(),
        ));
        let opts = ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(3));
        let refused = match etcd_client::Client::connect([etcd.endpoint()], Some(opts)).await {
            Err(_) => true,
            Ok(mut c) => c.get("/tls/rust", None).await.is_err(),
        };
        assert!(refused, "connected without a client cert");
    }
}
