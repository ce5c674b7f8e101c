//! The production default end to end: an etcd that requires client
//! certificates with its authentication on (`nubo-coordinator etcd-auth
//! enable`: the coordinator is etcd user `coordinator`, each agent the
//! user its `nubo-coordinator node enroll` certificate names), a coordinator serving TLS with token authentication (no
//! `--insecure`) bootstrapped with `nubo-coordinator bootstrap`, CLIs that
//! trust the cluster CA and `nubo login`, and agents with an etcd client
//! certificate and a node application credential.
//!
//! ```no_run
//! # fn demo() -> anyhow::Result<()> {
//! let cloud = nubo_tests::secure::SecureCloud::start()?;
//! cloud.admin.json(&["flavor", "list"])?;
//! let cred = cloud.node_credential()?;
//! let agent = nubo_tests::Agent::start(cloud.agent_opts("node-1", &cred)?)?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};

use crate::agent::AgentOpts;
use crate::cli::Cli;
use crate::coordinator::{Coordinator, CoordinatorOpts, SecureOpts};
use crate::files::write_secret;
use crate::process::bin_path;
use crate::tls::{Certs, TlsEtcd};

/// The bootstrap admin's password.
pub const ADMIN_PASSWORD: &str = "nbt-admin-password";
/// The node service user made by [`SecureCloud::node_credential`].
pub const NODE_USER: &str = "nubo-node";

/// etcd with client-certificate auth + one secure coordinator + an admin
/// CLI. Everything is stopped (by pid) on drop, the coordinator first.
pub struct SecureCloud {
    /// The coordinator (TLS API, token authentication).
    pub coordinator: Coordinator,
    /// etcd (HTTPS, client certificates required, authentication on) and
    /// the certificates.
    pub etcd: TlsEtcd,
    /// A CLI logged in as the bootstrap admin.
    pub admin: Cli,
    dir: tempfile::TempDir,
}

/// A TOML basic string of a path.
fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

impl SecureCloud {
    /// Certificates, etcd, `nubo-coordinator etcd-auth enable`,
    /// `nubo-coordinator bootstrap` (as etcd user `coordinator`), the
    /// coordinator (waited for) and `nubo login` as the admin.
    pub fn start() -> Result<Self> {
        let etcd = TlsEtcd::start()?;
        etcd.enable_auth()?;
        let dir = tempfile::Builder::new().prefix("nbt-secure-").tempdir()?;
        let certs = etcd.certs();
        let (crt, key) = certs.client("coordinator");
        let config = dir.path().join("coordinator.toml");
        std::fs::write(
            &config,
            format!(
                "[etcd_tls]\nca = {}\ncert = {}\nkey = {}\n",
                toml_path(&certs.ca()),
                toml_path(&crt),
                toml_path(&key)
            ),
        )?;
        bootstrap(&etcd.endpoint(), Some(&config), dir.path())?;
        let (tls_cert, tls_key) = certs.coordinator_server();
        let coordinator = secure_coordinator(&etcd, dir.path(), "secure-1", tls_cert, tls_key)?;
        let ca = etcd.certs().ca();
        let admin = login_cli(
            &coordinator.endpoint(),
            &ca,
            dir.path(),
            "admin",
            ADMIN_PASSWORD,
        )?;
        Ok(Self {
            coordinator,
            etcd,
            admin,
            dir,
        })
    }

    /// A CLI trusting the cluster CA, with its own (empty) token store and
    /// no token: every call but `login` is refused until it logs in.
    pub fn anonymous_cli(&self, name: &str) -> Result<Cli> {
        anonymous_cli(
            &self.coordinator.endpoint(),
            &self.etcd.certs().ca(),
            self.dir.path(),
            name,
        )
    }

    /// A new project `project` and its member `user` (password
    /// `<user>-password`), logged in.
    pub fn member(&self, user: &str, project: &str) -> Result<Cli> {
        member_cli(
            &self.admin,
            &self.coordinator.endpoint(),
            &self.etcd.certs().ca(),
            self.dir.path(),
            user,
            project,
        )
    }

    /// A CLI that ran `nubo login --user USER --password-file …`.
    pub fn login(&self, user: &str, password: &str) -> Result<Cli> {
        login_cli(
            &self.coordinator.endpoint(),
            &self.etcd.certs().ca(),
            self.dir.path(),
            user,
            password,
        )
    }

    /// Makes the service user [`NODE_USER`] with the cloud-wide `node`
    /// role, lets it create an application credential, and writes it as
    /// `<id>:<secret>` to a 0600 file: what `api_credential_file` of an
    /// agent names ([`node_credential`]).
    pub fn node_credential(&self) -> Result<PathBuf> {
        node_credential(
            &self.admin,
            &self.coordinator.endpoint(),
            &self.etcd.certs().ca(),
            self.dir.path(),
        )
    }

    /// A fake-driver agent talking TLS to etcd with the certificate
    /// `nubo-coordinator node enroll NODE` made (etcd user
    /// `nubo-node-NODE`, the node's role) and to the coordinator with
    /// `credential`.
    pub fn agent_opts(&self, node: &str, credential: &Path) -> Result<AgentOpts> {
        let files = self.etcd.enroll(node)?;
        let (crt, key) = (files.cert, files.key);
        let ca = self.etcd.certs().ca().display().to_string();
        let mut o = AgentOpts::fake(node, &self.etcd.endpoint());
        o.extra_args = vec![
            "--etcd-ca".into(),
            ca.clone(),
            "--etcd-cert".into(),
            crt.display().to_string(),
            "--etcd-key".into(),
            key.display().to_string(),
            "--api-endpoint".into(),
            self.coordinator.endpoint(),
            "--api-ca-cert".into(),
            ca,
            "--api-credential-file".into(),
            credential.display().to_string(),
        ];
        Ok(o)
    }

    /// One more coordinator of this cloud (same etcd, same configuration),
    /// serving the API with another certificate: e.g. one of the cluster
    /// CA for another name ([`crate::tls::Certs::server_cert_for`]).
    pub fn coordinator_with_cert(
        &self,
        id: &str,
        tls_cert: PathBuf,
        tls_key: PathBuf,
    ) -> Result<Coordinator> {
        secure_coordinator(&self.etcd, self.dir.path(), id, tls_cert, tls_key)
    }

    /// A scratch directory removed with the cloud.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A coordinator without `--insecure` (TLS API with `tls_cert`, token
/// authentication) on `etcd`, configured by `dir/coordinator.toml`.
fn secure_coordinator(
    etcd: &TlsEtcd,
    dir: &Path,
    id: &str,
    tls_cert: PathBuf,
    tls_key: PathBuf,
) -> Result<Coordinator> {
    let mut opts = CoordinatorOpts::new(&etcd.endpoint(), id);
    opts.secure = Some(SecureOpts {
        tls_cert,
        tls_key,
        config: Some(dir.join("coordinator.toml")),
    });
    Coordinator::start_with(opts, dir)
}

/// `nubo-coordinator --etcd-endpoints ETCD [--config CONFIG] bootstrap`
/// with [`ADMIN_PASSWORD`] (written to `dir/admin-password`): the cloud's
/// first admin, before any coordinator serves with token authentication.
pub fn bootstrap(etcd_endpoints: &str, config: Option<&Path>, dir: &Path) -> Result<()> {
    let pw = dir.join("admin-password");
    write_secret(&pw, &format!("{ADMIN_PASSWORD}\n"))?;
    let mut cmd = Command::new(bin_path("nubo-coordinator")?);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let out = cmd
        .args(["--etcd-endpoints", etcd_endpoints])
        .args(["bootstrap", "--admin-password-file"])
        .arg(&pw)
        .output()
        .context("running nubo-coordinator bootstrap")?;
    ensure!(
        out.status.success(),
        "nubo-coordinator bootstrap failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A CLI for the coordinator at `endpoint` trusting `ca`, with its own
/// (empty) token store under `dir/home-NAME` and no token.
pub fn anonymous_cli(endpoint: &str, ca: &Path, dir: &Path, name: &str) -> Result<Cli> {
    Cli::new(endpoint)?
        .with_env("NUBO_CA_CERT", &ca.display().to_string())
        .with_token_store(&dir.join(format!("home-{name}")))
}

/// [`anonymous_cli`] for `user`, logged in with `password`.
pub fn login_cli(endpoint: &str, ca: &Path, dir: &Path, user: &str, password: &str) -> Result<Cli> {
    let cli = anonymous_cli(endpoint, ca, dir, user)?;
    cli.login(user, password, dir)?;
    Ok(cli)
}

/// As `admin`: a new project `project` and its member `user` (password
/// `<user>-password`); returns `user`'s CLI, logged in.
pub fn member_cli(
    admin: &Cli,
    endpoint: &str,
    ca: &Path,
    dir: &Path,
    user: &str,
    project: &str,
) -> Result<Cli> {
    admin.json(&["project", "create", project])?;
    let pw = dir.join(format!("{user}-pw"));
    write_secret(&pw, &format!("{user}-password\n"))?;
    admin.json(&[
        "user",
        "create",
        user,
        "--password-file",
        &pw.display().to_string(),
    ])?;
    admin.json(&["role", "grant", "member", "--user", user, "--in", project])?;
    login_cli(endpoint, ca, dir, user, &format!("{user}-password"))
}

/// As `admin` of the coordinator at `endpoint` (trusting `ca`): makes the
/// service user [`NODE_USER`] with the cloud-wide `node` role, lets it
/// create an application credential, and writes it as `<id>:<secret>` to
/// the 0600 file `dir/node.credential` (returned): what an agent's
/// `--api-credential-file` names.
pub fn node_credential(admin: &Cli, endpoint: &str, ca: &Path, dir: &Path) -> Result<PathBuf> {
    let password = "nbt-node-password";
    let pw = dir.join("node-password");
    write_secret(&pw, &format!("{password}\n"))?;
    let pw_s = pw.display().to_string();
    admin.json(&["user", "create", NODE_USER, "--password-file", &pw_s])?;
    admin.json(&["role", "grant", "node", "--user", NODE_USER])?;
    let node = login_cli(endpoint, ca, dir, NODE_USER, password)?;
    let c = node.json(&["application", "credential", "create", "agents"])?;
    let (id, secret) = (
        c["id"].as_str().unwrap_or_default(),
        c["secret"].as_str().unwrap_or_default(),
    );
    ensure!(!id.is_empty() && !secret.is_empty(), "no id/secret in {c}");
    let path = dir.join("node.credential");
    write_secret(&path, &format!("{id}:{secret}\n"))?;
    Ok(path)
}

/// Starts a lab's coordinator (`copts`, on etcd `etcd_endpoints` without
/// client certificates, state in `dir`) and its CLI. With `tokens` it runs
/// as in production: its API over TLS with certificates of
/// `scripts/make-certs.sh` for `ip` (returned; `ca.crt` is what clients
/// trust) and token authentication, the cloud bootstrapped first
/// ([`bootstrap`]), the CLI the bootstrap admin, logged in
/// ([`lab_cli`]). What `NetLab::start_with_tokens` and `VmLab`'s token
/// option share.
pub fn lab_coordinator(
    mut copts: CoordinatorOpts,
    tokens: bool,
    ip: &str,
    etcd_endpoints: &str,
    dir: &Path,
) -> Result<(Coordinator, Cli, Option<Certs>)> {
    let certs = if tokens {
        let certs = Certs::generate(&[ip])?;
        let (tls_cert, tls_key) = certs.coordinator_server();
        copts.secure = Some(SecureOpts {
            tls_cert,
            tls_key,
            config: None,
        });
        bootstrap(etcd_endpoints, None, dir)?;
        Some(certs)
    } else {
        None
    };
    let coordinator = Coordinator::start_with(copts, dir)?;
    let cli = lab_cli(&coordinator.endpoint(), certs.as_ref(), dir)?;
    Ok((coordinator, cli, certs))
}

/// The CLI of a lab's coordinator at `endpoint`: with `certs` (a
/// [`lab_tokens`] coordinator) the bootstrap admin, logged in; without, a
/// plain CLI.
pub fn lab_cli(endpoint: &str, certs: Option<&Certs>, dir: &Path) -> Result<Cli> {
    match certs {
        Some(c) => login_cli(endpoint, &c.ca(), dir, "admin", ADMIN_PASSWORD),
        None => Cli::new(endpoint),
    }
}
