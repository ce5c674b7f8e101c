//! The agent's `[storage]` settings and the small pure parsers they need
//! (monitor addresses from `ceph.conf`, the key from a cephx keyring).

use std::path::PathBuf;

use serde::Deserialize;

/// Where instance root disks and volumes live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Per-node image cache + qcow2 overlays (single node, no Ceph, no
    /// volumes).
    #[default]
    Local,
    /// Ceph RBD: root disks are COW clones of the imported image, volumes
    /// are RBD images.
    Rbd,
}

/// The `[storage]` table of the agent's configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageFile {
    /// `local` (default) or `rbd`.
    pub backend: Option<BackendKind>,
    /// `ceph.conf` (default `/etc/ceph/ceph.conf`).
    pub ceph_conf: Option<PathBuf>,
    /// cephx user without `client.` (default `nubo-agent`).
    pub ceph_id: Option<String>,
    /// Keyring with that user's key (default
    /// `/etc/ceph/ceph.client.<ceph_id>.keyring`).
    pub keyring: Option<PathBuf>,
    /// Pool of imported images (default `images`).
    pub images_pool: Option<String>,
    /// Pool of instance root disks (default `vms`).
    pub disks_pool: Option<String>,
    /// Pool of volumes (default `volumes`).
    pub volumes_pool: Option<String>,
    /// Monitors QEMU connects to, `host:port` (default: the v1 addresses of
    /// `mon host` in `ceph_conf`).
    pub mon_hosts: Option<Vec<String>>,
}

/// The resolved storage settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSettings {
    /// Backend.
    pub backend: BackendKind,
    /// `ceph.conf`.
    pub ceph_conf: PathBuf,
    /// cephx user without `client.`.
    pub ceph_id: String,
    /// Keyring of that user.
    pub keyring: PathBuf,
    /// Pool of imported images.
    pub images_pool: String,
    /// Pool of root disks.
    pub disks_pool: String,
    /// Pool of volumes.
    pub volumes_pool: String,
    /// Monitors for QEMU (`None` = from `ceph_conf`).
    pub mon_hosts: Option<Vec<String>>,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings::from_file(StorageFile::default())
    }
}

impl StorageSettings {
    /// Fills the defaults in.
    pub fn from_file(f: StorageFile) -> Self {
        let ceph_id = f.ceph_id.unwrap_or_else(|| "nubo-agent".into());
        StorageSettings {
            backend: f.backend.unwrap_or_default(),
            ceph_conf: f
                .ceph_conf
                .unwrap_or_else(|| PathBuf::from("/etc/ceph/ceph.conf")),
            keyring: f.keyring.unwrap_or_else(|| {
                PathBuf::from(format!("/etc/ceph/ceph.client.{ceph_id}.keyring"))
            }),
            ceph_id,
            images_pool: f.images_pool.unwrap_or_else(|| "images".into()),
            disks_pool: f.disks_pool.unwrap_or_else(|| "vms".into()),
            volumes_pool: f.volumes_pool.unwrap_or_else(|| "volumes".into()),
            mon_hosts: f.mon_hosts,
        }
    }

    /// The usage name of the libvirt secret holding the key
    /// (`client.<id> secret`).
    pub fn secret_usage(&self) -> String {
        format!("client.{} secret", self.ceph_id)
    }
}

/// The msgr-v1 monitor addresses (`host`, `port`) of the `mon host` (or
/// `mon_host`) line of a `ceph.conf`: `v2:IP:3300,v1:IP:6789` gives the v1
/// address, a bare `IP` or `IP:port` is taken as is (default port 6789).
/// QEMU's librbd speaks v1 and v2; v1 is used because it is always there.
/// Pure.
pub fn mon_hosts_from_conf(conf: &str) -> Vec<(String, u16)> {
    let Some(value) = conf.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        let k = k.trim().replace('_', " ");
        (k == "mon host").then(|| v.trim().to_owned())
    }) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in value.split([',', ' ', ';']).filter(|e| !e.is_empty()) {
        let entry = entry.trim_matches(|c| c == '[' || c == ']');
        if entry.starts_with("v2:") {
            continue;
        }
        let addr = entry.strip_prefix("v1:").unwrap_or(entry);
        let addr = addr.split('/').next().unwrap_or(addr);
        out.push(split_host_port(addr));
    }
    out
}

/// `host[:port]`, port 6789 by default. Pure.
pub fn split_host_port(addr: &str) -> (String, u16) {
    match addr.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h.to_owned(), port),
            Err(_) => (addr.to_owned(), 6789),
        },
        _ => (addr.to_owned(), 6789),
    }
}

/// The base64 `key = …` of `[client.<id>]` in a keyring file (the first
/// key when the section is absent). Pure.
pub fn keyring_key(keyring: &str, ceph_id: &str) -> Option<String> {
    let want = format!("[client.{ceph_id}]");
    let mut in_section = None;
    let mut first = None;
    for line in keyring.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = Some(line == want);
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if k.trim() != "key" {
            continue;
        }
        let v = v.trim().trim_matches('"').to_owned();
        if in_section == Some(true) {
            return Some(v);
        }
        first.get_or_insert(v);
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mon_hosts_take_the_v1_addresses() {
        let conf = "[global]\nfsid = x\nmon host = v2:10.9.0.1:3300,v1:10.9.0.1:6789\n";
        assert_eq!(mon_hosts_from_conf(conf), vec![("10.9.0.1".into(), 6789)]);
        let conf = "mon_host = [v2:10.0.0.1:3300/0,v1:10.0.0.1:6789/0] 10.0.0.2, 10.0.0.3:6790";
        assert_eq!(
            mon_hosts_from_conf(conf),
            vec![
                ("10.0.0.1".into(), 6789),
                ("10.0.0.2".into(), 6789),
                ("10.0.0.3".into(), 6790)
            ]
        );
        assert!(mon_hosts_from_conf("[global]\n").is_empty());
    }

    #[test]
    fn keyring_key_of_the_right_section() {
        let k = "[client.admin]\n\tkey = AAAA==\n[client.nubo-agent]\n\tkey = BBBB==\n\tcaps mon = \"profile rbd\"\n";
        assert_eq!(keyring_key(k, "nubo-agent").as_deref(), Some("BBBB=="));
        assert_eq!(keyring_key(k, "other").as_deref(), Some("AAAA=="));
        assert_eq!(keyring_key("garbage", "x"), None);
    }

    #[test]
    fn storage_table_of_the_agent_file() {
        let f = crate::config::FileConfig::parse(
            "[storage]\nbackend = \"rbd\"\nceph_id = \"hv\"\nvolumes_pool = \"vols\"\n",
            std::path::Path::new("a.toml"),
        )
        .unwrap();
        let s = StorageSettings::from_file(f.storage.unwrap());
        assert_eq!(s.backend, BackendKind::Rbd);
        assert_eq!(s.keyring, PathBuf::from("/etc/ceph/ceph.client.hv.keyring"));
        assert_eq!(
            (s.images_pool.as_str(), s.volumes_pool.as_str()),
            ("images", "vols")
        );
        assert!(crate::config::FileConfig::parse(
            "[storage]\nbackend = \"nfs\"\n",
            std::path::Path::new("a.toml")
        )
        .is_err());
        assert!(crate::config::FileConfig::parse(
            "[storage]\npool = \"x\"\n",
            std::path::Path::new("a.toml")
        )
        .is_err());
    }

    #[test]
    fn defaults() {
        let s = StorageSettings::default();
        assert_eq!(s.backend, BackendKind::Local);
        assert_eq!(s.disks_pool, "vms");
        assert_eq!(
            s.keyring,
            PathBuf::from("/etc/ceph/ceph.client.nubo-agent.keyring")
        );
        assert_eq!(s.secret_usage(), "client.nubo-agent secret");
    }
}
