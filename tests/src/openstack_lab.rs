//! A real cluster behind the OpenStack API: a [`NetLab`] whose coordinator
//! runs as in production (TLS API, token authentication, bootstrapped;
//! [`NetLab::start_with_tokens`]), agents running real guests (network
//! namespaces with the netns driver, addresses from the agents' DHCP), and
//! `nubo-openstack` in front of the coordinator on a loopback port, over
//! HTTPS with a certificate of the lab's CA (as in production: tokens and
//! passwords cross it); plus the `clouds.yaml` the OpenStack clients read
//! (`cacert`: that CA) and [`FrontEnd::curl`].
//!
//! ```no_run
//! # fn demo() -> anyhow::Result<()> {
//! let os = nubo_tests::openstack_lab::OpenStackLab::start(1)?;
//! let alice = os.lab.member("alice", "team-a")?;
//! let clouds = os.front_end.clouds_yaml(&[("nubo", "alice", "alice-password", "team-a")])?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::net_e2e::NetLab;
use crate::process::{bin_path, Daemon};
use crate::tls::Certs;

/// How long `nubo-openstack` may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// `nubo-openstack` in front of a lab's coordinator, on a loopback port;
/// stopped (by pid) on drop.
pub struct FrontEnd {
    /// `nubo-openstack` (log in the lab's directory).
    pub daemon: Daemon,
    /// Its base URL, `https://127.0.0.1:<port>` (the catalog's root;
    /// Keystone at `<url>/identity/v3`).
    pub url: String,
    /// The CA its certificate is signed by (what clients trust).
    pub ca: PathBuf,
    /// Where `clouds.yaml` is written (the lab's directory).
    dir: PathBuf,
}

impl FrontEnd {
    /// Starts `nubo-openstack` in front of the coordinator at `coordinator`
    /// (trusting the CA of `certs`), serving HTTPS with a certificate of
    /// that CA for 127.0.0.1, logging to `dir/nubo-openstack.log`, and
    /// waits until it logs that it is ready. What every lab with the
    /// OpenStack API uses ([`OpenStackLab`], the VM labs of tests/tests).
    pub fn start(coordinator: &str, certs: &Certs, dir: &Path) -> Result<Self> {
        let listen = format!("127.0.0.1:{}", crate::ports::free_port());
        let ca = certs.ca();
        let (cert, key) = certs.server_cert_for("nubo-openstack", "IP:127.0.0.1")?;
        let mut daemon = Daemon::spawn(
            "nubo-openstack",
            Vec::new(),
            bin_path("nubo-openstack")?,
            vec![
                "--listen".into(),
                listen.clone(),
                "--coordinator".into(),
                coordinator.to_string(),
                "--ca-cert".into(),
                ca.display().to_string(),
                "--tls-cert".into(),
                cert.display().to_string(),
                "--tls-key".into(),
                key.display().to_string(),
            ],
            dir.join("nubo-openstack.log"),
            &[("RUST_LOG", "info")],
        )?;
        daemon.wait_for_log("nubo-openstack ready", START_TIMEOUT)?;
        Ok(Self {
            daemon,
            url: format!("https://{listen}"),
            ca,
            dir: dir.to_path_buf(),
        })
    }

    /// Keystone's v3 root of the front end (`auth_url`).
    pub fn auth_url(&self) -> String {
        format!("{}/identity/v3", self.url)
    }

    /// Writes `clouds.yaml` in the lab's directory with one cloud per
    /// `(cloud, user, password, project)` (domain `Default`, region
    /// `RegionOne`, public interface); returns its path (for
    /// `OS_CLIENT_CONFIG_FILE`).
    pub fn clouds_yaml(&self, clouds: &[(&str, &str, &str, &str)]) -> Result<PathBuf> {
        let path = self.dir.join("clouds.yaml");
        std::fs::write(&path, clouds_yaml_text(&self.auth_url(), &self.ca, clouds))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// `curl --cacert <the CA>`: a request to the front end that verifies
    /// its certificate (the caller adds the rest).
    pub fn curl(&self) -> Command {
        let mut c = Command::new("curl");
        c.arg("--cacert").arg(&self.ca);
        c
    }
}

/// A [`NetLab`] with tokens plus `nubo-openstack`. The front end is
/// stopped (by pid) first on drop, then the lab.
pub struct OpenStackLab {
    /// `nubo-openstack` ([`FrontEnd::url`] is the catalog's root).
    pub front_end: FrontEnd,
    /// The cluster: [`NetLab::cli`] is the cloud admin.
    pub lab: NetLab,
}

impl OpenStackLab {
    /// Starts a lab with `hosts` netns-driver hosts and tokens, and
    /// `nubo-openstack` in front of its coordinator ([`FrontEnd::start`]).
    pub fn start(hosts: u8) -> Result<Self> {
        Self::with_lab(NetLab::start_with_tokens(hosts)?)
    }

    /// [`OpenStackLab::start`] with a Ceph cluster behind the volume API
    /// ([`NetLab::start_with_tokens_and_ceph`]).
    pub fn start_with_ceph(hosts: u8) -> Result<Self> {
        Self::with_lab(NetLab::start_with_tokens_and_ceph(hosts)?)
    }

    fn with_lab(lab: NetLab) -> Result<Self> {
        let certs = lab
            .certs
            .as_ref()
            .context("a lab with tokens has certificates")?;
        let front_end = FrontEnd::start(&lab.coordinator.endpoint(), certs, lab.dir.path())?;
        Ok(Self { front_end, lab })
    }
}

/// `openstack --os-cloud CLOUD ARGS` with `OS_CLIENT_CONFIG_FILE=clouds`:
/// its JSON output when `args` ask for `-f json`, else its text as a JSON
/// string; a failed command is an error with its output.
pub fn openstack(clouds: &Path, cloud: &str, args: &[&str]) -> Result<Value> {
    let out = Command::new("openstack")
        .env("OS_CLIENT_CONFIG_FILE", clouds)
        .args(["--os-cloud", cloud])
        .args(args)
        .output()
        .context("running openstack")?;
    anyhow::ensure!(
        out.status.success(),
        "`openstack {}` failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if !args.contains(&"json") {
        return Ok(Value::String(text.into_owned()));
    }
    serde_json::from_str(&text).with_context(|| format!("openstack output: {text}"))
}

/// The text of a `clouds.yaml` for [`FrontEnd::clouds_yaml`] (clients
/// verify the front end against `ca`). Pure.
pub fn clouds_yaml_text(auth_url: &str, ca: &Path, clouds: &[(&str, &str, &str, &str)]) -> String {
    let ca = ca.display();
    let mut text = String::from("clouds:\n");
    for (cloud, user, password, project) in clouds {
        text.push_str(&format!(
            "  {cloud}:\n    auth:\n      auth_url: {auth_url}\n      username: {user}\n      password: {password}\n      project_name: {project}\n      user_domain_name: Default\n      project_domain_name: Default\n    identity_api_version: 3\n    region_name: RegionOne\n    interface: public\n    cacert: {ca}\n"
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clouds_yaml_names_every_cloud() {
        let t = clouds_yaml_text(
            "https://h:1/identity/v3",
            Path::new("/x/ca.crt"),
            &[("a", "u1", "p1", "x"), ("b", "u2", "p2", "y")],
        );
        assert!(
            t.starts_with("clouds:\n  a:\n    auth:\n      auth_url: https://h:1/identity/v3\n")
        );
        assert!(t.contains("  b:\n    auth:\n      auth_url: https://h:1/identity/v3\n      username: u2\n      password: p2\n      project_name: y\n"));
        assert_eq!(t.matches("region_name: RegionOne").count(), 2);
        assert_eq!(t.matches("    cacert: /x/ca.crt\n").count(), 2);
    }
}
