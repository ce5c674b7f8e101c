//! A real cluster behind the OpenStack API: a [`NetLab`] whose coordinator
//! runs as in production (TLS API, token authentication, bootstrapped;
//! [`NetLab::start_with_tokens`]), agents running real guests (network
//! namespaces with the netns driver, addresses from the agents' DHCP), and
//! `nubo-openstack` in front of the coordinator on a loopback port; plus
//! the `clouds.yaml` the OpenStack clients read.
//!
//! ```no_run
//! # fn demo() -> anyhow::Result<()> {
//! let os = nubo_tests::openstack_lab::OpenStackLab::start(1)?;
//! let alice = os.lab.member("alice", "team-a")?;
//! let clouds = os.clouds_yaml(&[("nubo", "alice", "alice-password", "team-a")])?;
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::net_e2e::NetLab;
use crate::process::{bin_path, Daemon};

/// How long `nubo-openstack` may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A [`NetLab`] with tokens plus `nubo-openstack`. The front end is
/// stopped (by pid) first on drop, then the lab.
pub struct OpenStackLab {
    /// `nubo-openstack` (log in the lab's directory).
    pub front_end: Daemon,
    /// Its base URL, `http://127.0.0.1:<port>` (the catalog's root;
    /// Keystone at `<url>/identity/v3`).
    pub url: String,
    /// The cluster: [`NetLab::cli`] is the cloud admin.
    pub lab: NetLab,
}

impl OpenStackLab {
    /// Starts a lab with `hosts` netns-driver hosts and tokens, and
    /// `nubo-openstack` in front of its coordinator (trusting the lab's CA),
    /// waited for until it logs that it is ready.
    pub fn start(hosts: u8) -> Result<Self> {
        let lab = NetLab::start_with_tokens(hosts)?;
        let ca = lab
            .certs
            .as_ref()
            .context("a lab with tokens has certificates")?
            .ca();
        let listen = format!("127.0.0.1:{}", crate::ports::free_port());
        let mut front_end = Daemon::spawn(
            "nubo-openstack",
            Vec::new(),
            bin_path("nubo-openstack")?,
            vec![
                "--listen".into(),
                listen.clone(),
                "--coordinator".into(),
                lab.coordinator.endpoint(),
                "--ca-cert".into(),
                ca.display().to_string(),
            ],
            lab.dir.path().join("nubo-openstack.log"),
            &[("RUST_LOG", "info")],
        )?;
        front_end.wait_for_log("nubo-openstack ready", START_TIMEOUT)?;
        Ok(Self {
            front_end,
            url: format!("http://{listen}"),
            lab,
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
        let path = self.lab.dir.path().join("clouds.yaml");
        std::fs::write(&path, clouds_yaml_text(&self.auth_url(), clouds))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// The text of a `clouds.yaml` for [`OpenStackLab::clouds_yaml`]. Pure.
pub fn clouds_yaml_text(auth_url: &str, clouds: &[(&str, &str, &str, &str)]) -> String {
    let mut text = String::from("clouds:\n");
    for (cloud, user, password, project) in clouds {
        text.push_str(&format!(
            "  {cloud}:\n    auth:\n      auth_url: {auth_url}\n      username: {user}\n      password: {password}\n      project_name: {project}\n      user_domain_name: Default\n      project_domain_name: Default\n    identity_api_version: 3\n    region_name: RegionOne\n    interface: public\n"
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
            "http://h:1/identity/v3",
            &[("a", "u1", "p1", "x"), ("b", "u2", "p2", "y")],
        );
        assert!(t.starts_with("clouds:\n  a:\n    auth:\n      auth_url: http://h:1/identity/v3\n"));
        assert!(t.contains("  b:\n    auth:\n      auth_url: http://h:1/identity/v3\n      username: u2\n      password: p2\n      project_name: y\n"));
        assert_eq!(t.matches("region_name: RegionOne").count(), 2);
    }
}
