//! Cluster connection, pools, mon commands and client blocklisting.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Context, Error, Result};
use crate::ffi;
use crate::image::Pool;
use crate::name::validate_name;

/// How to reach the cluster and as whom.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `ceph.conf` (mon addresses, …).
    pub conf_path: PathBuf,
    /// Keyring holding this client's cephx key; `None` uses the conf's.
    pub keyring_path: Option<PathBuf>,
    /// cephx user without the `client.` prefix, e.g. `"admin"`, `"nubo-node1"`.
    pub client_id: String,
    /// Gives up connecting and on mon/OSD operations after this long
    /// (`client_mount_timeout`, `rados_mon_op_timeout`,
    /// `rados_osd_op_timeout`); `None` keeps Ceph's defaults (wait forever
    /// for OSD ops).
    pub timeout: Option<Duration>,
}

impl ConnectOptions {
    /// Options for `client.<client_id>` with the given conf and keyring and a
    /// 30 s timeout.
    pub fn new(
        conf_path: impl Into<PathBuf>,
        keyring_path: impl Into<PathBuf>,
        client_id: impl Into<String>,
    ) -> Self {
        ConnectOptions {
            conf_path: conf_path.into(),
            keyring_path: Some(keyring_path.into()),
            client_id: client_id.into(),
            timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// A connected librados client (one cephx identity, one client address).
///
/// Cheap to clone (an `Arc`), `Send + Sync`. Every method blocks on the
/// network: from async code call it inside `tokio::task::spawn_blocking`.
/// The connection is shut down when the last clone, [`Pool`] and
/// [`crate::Image`] made from it are dropped.
#[derive(Clone)]
pub struct Cluster {
    rados: Arc<ffi::Rados>,
    client: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("client", &self.client)
            .finish()
    }
}

/// One entry of the OSD blocklist.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BlocklistEntry {
    /// Client address, `ip:port/nonce`.
    pub addr: String,
    /// Expiry time as Ceph prints it (`2026-11-22T19:20:00.000000+0000`).
    pub until: String,
}

impl Cluster {
    /// Reads the conf, sets the keyring, connects and authenticates.
    ///
    /// A wrong cephx key gives [`Error::PermissionDenied`]; unreachable mons
    /// give [`Error::Timeout`] after `opts.timeout`.
    pub fn connect(opts: &ConnectOptions) -> Result<Cluster> {
        let client = format!("client.{}", opts.client_id);
        let who = || format!("{client} via {}", opts.conf_path.display());
        if opts.client_id.is_empty() || opts.client_id.starts_with("client.") {
            return Err(Error::invalid(
                "connect",
                who(),
                "client_id must be the bare cephx id, e.g. \"admin\"",
            ));
        }
        let api = ffi::Api::get()?;
        let rados = ffi::Rados::create(api, &opts.client_id).ctx("create cluster handle", who)?;
        let conf = opts.conf_path.to_string_lossy();
        rados
            .conf_read_file(&conf)
            .ctx("read ceph.conf", || conf.to_string())?;
        if let Some(keyring) = &opts.keyring_path {
            let keyring = keyring.to_string_lossy();
            rados
                .conf_set("keyring", &keyring)
                .ctx("set keyring", || keyring.to_string())?;
        }
        if let Some(t) = opts.timeout {
            let secs = t.as_secs().max(1).to_string();
            for option in [
                "client_mount_timeout",
                "rados_mon_op_timeout",
                "rados_osd_op_timeout",
            ] {
                rados
                    .conf_set(option, &secs)
                    .ctx("set option", || option.to_owned())?;
            }
        }
        rados.connect().ctx("connect", who)?;
        tracing::debug!(%client, "connected to ceph");
        Ok(Cluster {
            rados: Arc::new(rados),
            client,
        })
    }

    /// The cephx entity, e.g. `client.admin`.
    pub fn client_name(&self) -> &str {
        &self.client
    }

    /// The cluster's fsid (a UUID string).
    pub fn fsid(&self) -> Result<String> {
        self.rados.fsid().ctx("get fsid", || self.client.clone())
    }

    /// This session's global id (`client.<instance_id>` in `rbd status`, the
    /// `id` of [`crate::Watcher`]).
    pub fn instance_id(&self) -> u64 {
        self.rados.instance_id()
    }

    /// This session's address as the OSD blocklist wants it (`ip:0/nonce`),
    /// i.e. what to pass to [`Cluster::blocklist_add`] to fence this client.
    pub fn client_addr(&self) -> Result<String> {
        let raw = self
            .rados
            .addrs()
            .ctx("get client address", || self.client.clone())?;
        parse_client_addr(&raw).ok_or_else(|| Error::Protocol {
            op: "get client address",
            object: self.client.clone(),
            reason: format!("cannot parse {raw:?}"),
        })
    }

    /// Waits until this client has the newest OSD map (e.g. so that its
    /// next op is judged against a blocklist entry just added).
    pub fn wait_for_latest_osdmap(&self) -> Result<()> {
        self.rados
            .wait_for_latest_osdmap()
            .ctx("wait for latest osdmap", || self.client.clone())
    }

    /// Creates a replicated pool with the cluster's default PG count and
    /// tags it for RBD (`rbd pool init`). [`Error::AlreadyExists`] if present.
    pub fn create_pool(&self, pool: &str) -> Result<()> {
        validate_name("create pool", pool)?;
        self.rados
            .pool_create(pool)
            .ctx("create pool", || pool.to_owned())?;
        self.pool(pool)?
            .io()
            .pool_init()
            .ctx("rbd pool init", || pool.to_owned())
    }

    /// True when the pool exists.
    pub fn pool_exists(&self, pool: &str) -> Result<bool> {
        match self.rados.pool_lookup(pool) {
            Ok(_) => Ok(true),
            Err(ffi::Errno(libc::ENOENT)) => Ok(false),
            Err(e) => Err(Error::from_errno(e, "look up pool", pool, "")),
        }
    }

    /// Opens an I/O context on `pool`, the handle for its RBD images.
    pub fn pool(&self, pool: &str) -> Result<Pool> {
        let io = ffi::IoCtx::create(&self.rados, pool).ctx("open pool", || pool.to_owned())?;
        Ok(Pool::new(io, pool.to_owned()))
    }

    /// Runs a mon command given as a JSON object (`{"prefix": "...", ...}`)
    /// and returns its output buffer (JSON when the command had
    /// `"format": "json"`). Errors carry the monitor's message.
    pub fn mon_command(&self, cmd: &serde_json::Value) -> Result<Vec<u8>> {
        self.mon_command_with_input(cmd, &[])
    }

    /// [`Cluster::mon_command`] with an input buffer (`-i` of the CLI).
    pub fn mon_command_with_input(&self, cmd: &serde_json::Value, input: &[u8]) -> Result<Vec<u8>> {
        let prefix = cmd
            .get("prefix")
            .and_then(|p| p.as_str())
            .unwrap_or("?")
            .to_owned();
        self.rados
            .mon_command(&cmd.to_string(), input)
            .map(|(out, _status)| out)
            .map_err(|(e, status)| Error::from_errno(e, "mon command", prefix, status))
    }

    /// Blocklists (fences) a client address for `expire_secs` seconds: the
    /// OSDs then reject every op from it with EBLOCKLISTED, and its watches
    /// and exclusive locks become breakable. Returns once the new OSD map is
    /// committed.
    pub fn blocklist_add(&self, client_addr: &str, expire_secs: u32) -> Result<()> {
        validate_addr("blocklist add", client_addr)?;
        self.mon_command(&serde_json::json!({
            "prefix": "osd blocklist",
            "blocklistop": "add",
            "addr": client_addr,
            "expire": f64::from(expire_secs.max(1)),
        }))
        .map(drop)
    }

    /// Removes a blocklist entry ([`Error::NotFound`]-free: removing an
    /// address that is not listed succeeds, as in Ceph).
    pub fn blocklist_rm(&self, client_addr: &str) -> Result<()> {
        validate_addr("blocklist rm", client_addr)?;
        self.mon_command(&serde_json::json!({
            "prefix": "osd blocklist",
            "blocklistop": "rm",
            "addr": client_addr,
        }))
        .map(drop)
    }

    /// Lists the current blocklist.
    pub fn blocklist_ls(&self) -> Result<Vec<BlocklistEntry>> {
        let out = self.mon_command(&serde_json::json!({
            "prefix": "osd blocklist ls",
            "format": "json",
        }))?;
        // Ceph 16.2.11+ prints two JSON arrays back to back: single
        // addresses, then address ranges. Both are entries.
        let mut entries = Vec::new();
        for list in serde_json::Deserializer::from_slice(&out).into_iter::<Vec<BlocklistEntry>>() {
            entries.extend(list.map_err(|e| Error::Protocol {
                op: "blocklist ls",
                object: self.client.clone(),
                reason: format!("{e} in {:?}", String::from_utf8_lossy(&out)),
            })?);
        }
        Ok(entries)
    }
}

/// `rados_getaddrs` answers `[v2:127.0.0.1:0/123,v1:127.0.0.1:0/123]` or a
/// bare `127.0.0.1:0/123`; the blocklist wants the legacy `ip:port/nonce`.
fn parse_client_addr(raw: &str) -> Option<String> {
    let first = raw
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .next()?;
    let addr = first
        .strip_prefix("v2:")
        .or_else(|| first.strip_prefix("v1:"))
        .or_else(|| first.strip_prefix("any:"))
        .unwrap_or(first);
    (addr.contains('/') && !addr.is_empty()).then(|| addr.to_owned())
}

fn validate_addr(op: &'static str, addr: &str) -> Result<()> {
    let ok = addr
        .rsplit_once('/')
        .is_some_and(|(ip, nonce)| !ip.is_empty() && nonce.parse::<u64>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            addr,
            "expected a client address ip:port/nonce",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addr_forms() {
        assert_eq!(
            parse_client_addr("[v2:127.0.0.1:0/2385739617,v1:127.0.0.1:0/2385739617]").as_deref(),
            Some("127.0.0.1:0/2385739617")
        );
        assert_eq!(
            parse_client_addr("127.0.0.1:0/42").as_deref(),
            Some("127.0.0.1:0/42")
        );
        assert_eq!(parse_client_addr("garbage"), None);
    }

    #[test]
    fn address_validation() {
        assert!(validate_addr("x", "127.0.0.1:0/42").is_ok());
        assert!(matches!(
            validate_addr("x", "127.0.0.1"),
            Err(Error::InvalidArgument { .. })
        ));
    }
}
