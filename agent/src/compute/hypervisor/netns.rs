//! The netns guest driver: an "instance" is a network namespace
//! `<prefix><first 8 hex digits of the instance id>` holding one veth end
//! per port (`eth0`, `eth1`, … in the order of the instance's ports, each
//! with its port's MAC) whose host end is the port's tap name, so the
//! overlay plugs it into the bridge like any VM tap. Guests are real enough
//! for DHCP clients, `curl`, `ping` and `nc`, with no hypervisor.
//!
//! What runs is discovered, not remembered: [`list`](super::Hypervisor::list) scans
//! `/run/netns` with [`nubo_overlay::list_netns_guests`]; a guest whose
//! namespace exists is running. A small state file
//! (`<state-dir>/netns-guests.json`) only holds what a namespace name cannot
//! tell: the full instance id, the NICs (guest name, tap, MAC) to recreate
//! it on start, the boot counter, and the "stopped" mark (stopping a guest
//! deletes its namespace). Existing namespaces are adopted as they are on
//! restart.
//!
//! Console: a netns guest has no kernel to print, so its console log
//! (`<state-dir>/console/<id>.log`, served by the node API like a domain's
//! serial log) holds timestamped lines of what the driver did to it: boot
//! (namespace, NIC) and stop.
//!
//! Disk: a netns guest has no block device, but so that images can be
//! made of it like of a VM ([`Hypervisor::capture_root`]), each guest has
//! a small raw "root disk" file, `<state-dir>/netns-disks/<id>.raw`
//! ([`DISK_BYTES`], sparse, starting with a text header naming the
//! instance), made on create (or on the first capture of a guest created
//! before disks existed) and removed on destroy. Nothing in the guest
//! writes it; whoever stands in for the guest (a test) may.
//!
//! NICs are hot-plugged ([`Hypervisor::attach_nic`]: one more veth, in the
//! guest under the lowest free `ethN`) and unplugged
//! ([`Hypervisor::detach_nic`]: the veth is deleted); a stopped guest only
//! has its record changed. A guest ends up with at most
//! [`MAX_NICS`] NICs.
//!
//! ## Pause and resume (self-fencing)
//!
//! A paused guest is cut off and cannot act: [`Hypervisor::pause`]
//! (1) saves the IPv4 main-table routes through `eth0` (the kernel drops them
//! when the link goes down), (2) marks the record `paused` with those routes
//! and persists it, (3) stops every process whose network namespace is the
//! guest's with `SIGSTOP` (the vCPUs of a netns guest) and (4) sets every
//! guest NIC administratively down, so their veth peers (the taps) have no
//! carrier and no frame passes either way. The host end is left alone: the
//! overlay reconciler owns its state (and would set it up again); the
//! guest end is inside the guest and nothing else touches it.
//! [`Hypervisor::resume`] undoes it in reverse: `eth0` up, the saved routes
//! that the kernel did not re-create itself are added back, `SIGCONT` to the
//! processes in the namespace, record unmarked. The namespace, addresses
//! (IPv4 addresses survive a link down), MAC and boot counter are unchanged.
//! Limits: IPv6 addresses other than link-local, routes in other tables and
//! routes through NICs other than `eth0` (beyond the prefix routes the
//! kernel re-creates) are not restored; a process entering the namespace while it is paused
//! is not stopped; `SIGCONT` also continues a process someone else had
//! stopped; stopping or destroying a paused guest leaves its stopped
//! processes alone.
//!
//! [`Hypervisor::pause`]: super::Hypervisor::pause
//! [`Hypervisor::resume`]: super::Hypervisor::resume
//! [`Hypervisor::attach_nic`]: super::Hypervisor::attach_nic
//! [`Hypervisor::capture_root`]: super::Hypervisor::capture_root
//! [`Hypervisor::detach_nic`]: super::Hypervisor::detach_nic

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use nubo_common::model::{self, PowerState, Timestamp};
use nubo_common::InstanceId;
use nubo_overlay::{
    create_empty_netns_guest, delete_netns_guest, list_netns_guests, netns_guest_exists,
    remove_netns_guest_nic, run_in_netns, Netlink, GUEST_IFNAME,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::{HypervisorError, ObservedInstance, ObservedPower};
use crate::state::desired::{DesiredInstance, DesiredPort};

/// File name of the driver's state inside the state directory.
pub const STATE_FILE: &str = "netns-guests.json";

/// The most NICs a guest has (`eth0` … `eth15`).
pub const MAX_NICS: usize = 16;

/// Size of a guest's disk file (sparse).
pub const DISK_BYTES: u64 = 1 << 20;

/// The text a new guest disk starts with. Pure.
pub fn disk_header(id: &InstanceId) -> String {
    format!("nubo netns guest disk\ninstance {id}\n")
}

/// One NIC of a guest: a veth pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNic {
    /// The veth end inside the guest (`eth0`, `eth1`, …).
    pub ifname: String,
    /// Host end of the veth (the port's tap name).
    pub tap: String,
    /// MAC of the guest end (the port's MAC).
    pub mac: String,
}

/// What the driver remembers about one guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRecord {
    /// The instance id.
    pub id: InstanceId,
    /// The NICs, in the instance's port order.
    #[serde(default)]
    pub nics: Vec<GuestNic>,
    /// State files written before multi-NIC: the single NIC's tap (moved
    /// into [`GuestRecord::nics`] as `eth0` on load, never written).
    #[serde(default, rename = "tap", skip_serializing)]
    pub legacy_tap: String,
    /// State files written before multi-NIC: the single NIC's MAC.
    #[serde(default, rename = "mac", skip_serializing)]
    pub legacy_mac: String,
    /// MTU both ends are created with.
    pub mtu: u32,
    /// Stopped by nubo: the namespace was deleted on purpose.
    #[serde(default)]
    pub stopped: bool,
    /// Boots (create, start, reboot).
    pub boot_count: u64,
    /// When the guest was first created.
    pub created_at: Timestamp,
    /// Paused by [`super::Hypervisor::pause`]: `eth0` down, processes stopped.
    #[serde(default)]
    pub paused: bool,
    /// Routes through `eth0` saved by the pause, restored by the resume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub saved_routes: Vec<SavedRoute>,
    /// The size it was defined with (vCPUs, MiB; `None`: a record from
    /// before sizes were kept, never resized): a netns guest has no real
    /// vCPUs or memory, but it is redefined like a domain
    /// ([`super::Resizer`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<(u32, u64)>,
}

/// An IPv4 route through the guest's `eth0`, as `/proc/net/route` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedRoute {
    /// Destination network.
    pub dst: Ipv4Addr,
    /// Destination mask.
    pub mask: Ipv4Addr,
    /// Gateway (`0.0.0.0` for an on-link route).
    pub gateway: Ipv4Addr,
    /// `RTF_*` flags (`RTF_GATEWAY`, `RTF_HOST`, …).
    pub flags: u16,
    /// Metric (priority).
    pub metric: u32,
}

/// The persisted state: guests by namespace name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsState {
    /// Guests by namespace name.
    pub guests: BTreeMap<String, GuestRecord>,
}

/// The netns driver.
pub struct NetnsHypervisor {
    prefix: String,
    path: PathBuf,
    mtu: u32,
    netlink: Netlink,
    state: Mutex<NetnsState>,
    /// Where the guests' console logs are (`<state-dir>/console`, served by
    /// the node API like a domain's serial log).
    console_dir: PathBuf,
    /// Where the guests' disk files are (`<state-dir>/netns-disks`).
    disk_dir: PathBuf,
}

impl std::fmt::Debug for NetnsHypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetnsHypervisor")
            .field("prefix", &self.prefix)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The namespace name of instance `id` under `prefix`.
pub fn guest_netns_name(prefix: &str, id: &InstanceId) -> String {
    format!("{prefix}{}", id.short_hex(8))
}

fn backend(what: &str, e: impl std::fmt::Display) -> HypervisorError {
    HypervisorError::Backend(format!("{what}: {e}"))
}

/// Observed power of a recorded guest whose namespace does or does not
/// exist. Pure.
pub fn observed_power(rec: &GuestRecord, exists: bool) -> ObservedPower {
    match (exists && !rec.stopped, rec.paused) {
        (true, false) => ObservedPower::Running,
        (true, true) => ObservedPower::Paused,
        (false, _) => ObservedPower::Stopped,
    }
}

impl NetnsHypervisor {
    /// Opens the driver: guests are namespaces named `prefix…`, state lives
    /// in `state_dir`, new guest links get `mtu`. Must be called inside a
    /// tokio runtime (it opens a netlink socket in the calling thread's
    /// network namespace, where the taps must appear).
    pub fn open(prefix: &str, state_dir: &Path, mtu: u32) -> Result<Self, HypervisorError> {
        if prefix.is_empty() || prefix.contains('/') {
            return Err(HypervisorError::Unsupported(format!(
                "netns prefix {prefix:?} must be non-empty and contain no '/'"
            )));
        }
        std::fs::create_dir_all(state_dir).map_err(|source| HypervisorError::State {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join(STATE_FILE);
        let state = load(&path)?;
        let netlink = Netlink::new().map_err(|e| backend("open netlink", e))?;
        Ok(Self {
            prefix: prefix.to_string(),
            path,
            mtu,
            netlink,
            state: Mutex::new(state),
            console_dir: state_dir.join("console"),
            disk_dir: state_dir.join("netns-disks"),
        })
    }

    /// The namespace name of an instance.
    pub fn netns_name(&self, id: &InstanceId) -> String {
        guest_netns_name(&self.prefix, id)
    }

    /// The disk file of an instance (see the module docs).
    pub fn disk_path(&self, id: &InstanceId) -> PathBuf {
        self.disk_dir.join(format!("{id}.raw"))
    }

    /// Makes the disk file of `id` unless it exists.
    async fn ensure_disk(&self, id: &InstanceId) -> Result<(), HypervisorError> {
        let path = self.disk_path(id);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(());
        }
        let state = |source| HypervisorError::State {
            path: path.clone(),
            source,
        };
        tokio::fs::create_dir_all(&self.disk_dir)
            .await
            .map_err(state)?;
        // Written aside and renamed: a crash never leaves half a header.
        let tmp = self.disk_dir.join(format!("{id}.raw.new"));
        let f = tokio::fs::File::create(&tmp).await.map_err(state)?;
        let mut f = f.into_std().await;
        let header = disk_header(id);
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            f.write_all(header.as_bytes())?;
            f.set_len(DISK_BYTES)?;
            f.sync_all()
        })
        .await
        .map_err(|e| backend("write guest disk", e))?
        .map_err(state)?;
        tokio::fs::rename(&tmp, &path).await.map_err(state)
    }

    async fn persist(&self, st: &NetnsState) -> Result<(), HypervisorError> {
        super::state_file::save(&self.path, st).await
    }

    /// Creates the namespace and veths of `rec` unless the namespace exists
    /// (then it is adopted as it is).
    async fn boot(&self, ns: &str, rec: &GuestRecord) -> Result<(), HypervisorError> {
        if netns_guest_exists(ns) {
            info!(netns = ns, "guest namespace exists; adopting it");
            return Ok(());
        }
        create_empty_netns_guest(ns)
            .await
            .map_err(|e| backend(&format!("create netns guest {ns}"), e))?;
        for nic in &rec.nics {
            let plugged = match self.clear_tap(nic).await {
                Ok(mac) => self.plug(ns, nic, mac, rec.mtu).await,
                Err(e) => Err(e),
            };
            if let Err(e) = plugged {
                if let Err(cleanup) = self.teardown(ns, rec).await {
                    warn!(netns = ns, error = %cleanup, "cleanup of half-booted guest failed");
                }
                return Err(e);
            }
        }
        let mut lines = vec![format!(
            "nubo netns guest {} booting in namespace {ns}",
            rec.id
        )];
        lines.extend(rec.nics.iter().map(|n| {
            format!(
                "{}: MAC {}, MTU {}, host end {}",
                n.ifname, n.mac, rec.mtu, n.tap
            )
        }));
        lines.push("NICs up: the guest is running".to_string());
        self.console(rec.id, &lines).await;
        Ok(())
    }

    /// Parses `nic`'s MAC and deletes a leftover host end (namespace
    /// deleted behind our back), which would make the veth creation fail.
    async fn clear_tap(&self, nic: &GuestNic) -> Result<nubo_netid::MacAddr, HypervisorError> {
        let mac: nubo_netid::MacAddr = nic
            .mac
            .parse()
            .map_err(|e| backend("guest MAC in state file", e))?;
        if self
            .netlink
            .link_exists(&nic.tap)
            .await
            .map_err(|e| backend("look up tap", e))?
        {
            self.netlink
                .delete_link(&nic.tap)
                .await
                .map_err(|e| backend("delete stale tap", e))?;
        }
        Ok(mac)
    }

    /// Adds `nic` to the existing namespace `ns`.
    async fn plug(
        &self,
        ns: &str,
        nic: &GuestNic,
        mac: nubo_netid::MacAddr,
        mtu: u32,
    ) -> Result<(), HypervisorError> {
        self.netlink
            .add_netns_guest_nic(ns, &nic.tap, &nic.ifname, mac, mtu)
            .await
            .map_err(|e| backend(&format!("add {} to netns guest {ns}", nic.ifname), e))
    }

    /// Deletes the guest's namespace with all its NICs (so every tap goes
    /// at once, not whenever the kernel frees the namespace).
    async fn teardown(&self, ns: &str, rec: &GuestRecord) -> Result<(), HypervisorError> {
        for nic in rec.nics.iter().filter(|n| n.ifname != GUEST_IFNAME) {
            if let Err(e) = remove_netns_guest_nic(ns, &nic.ifname).await {
                warn!(netns = ns, nic = %nic.ifname, error = %e, "could not delete a guest NIC; removing the namespace anyway");
            }
        }
        delete_netns_guest(ns)
            .await
            .map_err(|e| backend(&format!("delete netns guest {ns}"), e))
    }

    /// Deletes `tap` if it still exists (logged, never an error).
    async fn delete_leftover_tap(&self, tap: &str) {
        match self.netlink.link_exists(tap).await {
            Ok(true) => {
                if let Err(e) = self.netlink.delete_link(tap).await {
                    warn!(tap, error = %e, "could not delete leftover tap");
                }
            }
            Ok(false) => {}
            Err(e) => warn!(tap, error = %e, "could not look up tap"),
        }
    }

    /// Appends `lines` (timestamped) to the guest's console log: a netns
    /// guest has no kernel to print, so its console tells what the driver
    /// did to it (boot, NIC, stop). Best effort: a failure is logged.
    async fn console(&self, id: InstanceId, lines: &[String]) {
        use tokio::io::AsyncWriteExt;
        let path = self.console_dir.join(format!("{id}.log"));
        let now = model::now();
        let text: String = lines.iter().map(|l| format!("[{now}] {l}\n")).collect();
        let r = async {
            tokio::fs::create_dir_all(&self.console_dir).await?;
            let mut f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .await?;
            f.write_all(text.as_bytes()).await
        }
        .await;
        if let Err(e) = r {
            warn!(instance = %id, path = %path.display(), error = %e, "could not write the console log");
        }
    }

    fn record_of<'a>(
        st: &'a mut NetnsState,
        ns: &str,
        id: InstanceId,
    ) -> Result<&'a mut GuestRecord, HypervisorError> {
        st.guests
            .get_mut(ns)
            .filter(|r| r.id == id)
            .ok_or(HypervisorError::NotFound(id))
    }
}

fn load(path: &Path) -> Result<NetnsState, HypervisorError> {
    let mut st: NetnsState = super::state_file::load(path)?;
    for rec in st.guests.values_mut() {
        rec.migrate_legacy();
    }
    Ok(st)
}

impl GuestRecord {
    /// Moves a pre-multi-NIC record's single NIC into `nics` as `eth0`.
    pub fn migrate_legacy(&mut self) {
        let tap = std::mem::take(&mut self.legacy_tap);
        let mac = std::mem::take(&mut self.legacy_mac);
        if self.nics.is_empty() && !tap.is_empty() {
            self.nics.push(GuestNic {
                ifname: GUEST_IFNAME.to_string(),
                tap,
                mac,
            });
        }
    }
}

/// The NICs of a guest with `ports` (tap, MAC) in order: `eth0`, `eth1`, ….
/// Pure.
pub fn nics_for(ports: &[(String, String)]) -> Vec<GuestNic> {
    ports
        .iter()
        .enumerate()
        .map(|(i, (tap, mac))| GuestNic {
            ifname: format!("eth{i}"),
            tap: tap.clone(),
            mac: mac.clone(),
        })
        .collect()
}

/// The lowest `ethN` not used by `nics`, if under [`MAX_NICS`]. Pure.
pub fn free_ifname(nics: &[GuestNic]) -> Option<String> {
    (0..MAX_NICS)
        .map(|i| format!("eth{i}"))
        .find(|n| !nics.iter().any(|x| &x.ifname == n))
}

/// Parses `/proc/net/route` and keeps the routes through `ifname`. Pure.
///
/// Addresses are printed as the in-memory (network order) `u32` in hex, so
/// they are converted back with the native byte order.
pub fn parse_proc_routes(text: &str, ifname: &str) -> Vec<SavedRoute> {
    let addr = |h: &str| {
        u32::from_str_radix(h, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || f[0] != ifname {
                return None;
            }
            Some(SavedRoute {
                dst: addr(f[1])?,
                gateway: addr(f[2])?,
                flags: u16::from_str_radix(f[3], 16).ok()?,
                metric: f[6].parse().ok()?,
                mask: addr(f[7])?,
            })
        })
        .collect()
}

/// The saved routes that are not present (same destination, mask, gateway
/// and metric) in `now`: those the resume must add back. Pure.
pub fn routes_to_restore(saved: &[SavedRoute], now: &[SavedRoute]) -> Vec<SavedRoute> {
    let key = |r: &SavedRoute| (r.dst, r.mask, r.gateway, r.metric);
    saved
        .iter()
        .filter(|s| !now.iter().any(|n| key(n) == key(s)))
        .copied()
        .collect()
}

/// The routes through the guest's `eth0`; call on a thread inside the guest
/// namespace (`/proc/thread-self/net` is that thread's namespace).
fn read_guest_routes() -> std::io::Result<Vec<SavedRoute>> {
    let text = std::fs::read_to_string("/proc/thread-self/net/route")?;
    Ok(parse_proc_routes(&text, GUEST_IFNAME))
}

/// An `AF_INET` datagram socket in the calling thread's namespace, for
/// interface and route ioctls.
fn ioctl_socket() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2); the fd is owned by the returned OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// `ifname` as a NUL-terminated C buffer of `IFNAMSIZ`.
fn c_ifname(ifname: &str) -> std::io::Result<[libc::c_char; libc::IFNAMSIZ]> {
    let mut buf = [0 as libc::c_char; libc::IFNAMSIZ];
    if ifname.len() >= libc::IFNAMSIZ || ifname.bytes().any(|b| b == 0) {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    for (d, b) in buf.iter_mut().zip(ifname.bytes()) {
        *d = b as libc::c_char;
    }
    Ok(buf)
}

/// Sets `ifname` administratively up or down (SIOCGIFFLAGS/SIOCSIFFLAGS) in
/// the calling thread's namespace.
fn set_link_admin(ifname: &str, up: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let sock = ioctl_socket()?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name = c_ifname(ifname)?;
    // SAFETY: SIOCGIFFLAGS reads ifr_name and writes ifr_flags of `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    let up_flag = libc::IFF_UP as libc::c_short;
    req.ifr_ifru.ifru_flags = if up {
        flags | up_flag
    } else {
        flags & !up_flag
    };
    // SAFETY: SIOCSIFFLAGS reads ifr_name and ifr_flags of `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's `struct rtentry` (linux/route.h) for SIOCADDRT.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn sockaddr_v4(ip: Ipv4Addr) -> libc::sockaddr {
    // SAFETY: both are plain old data of the same size (16 bytes).
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_addr.s_addr = u32::from_ne_bytes(ip.octets());
    // SAFETY: sockaddr_in and sockaddr have the same size and alignment
    // requirements compatible with a by-value copy.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Adds `r` through `ifname` (SIOCADDRT) in the calling thread's namespace;
/// a route that exists already is not an error.
fn add_route(ifname: &str, r: &SavedRoute) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let sock = ioctl_socket()?;
    let mut dev = c_ifname(ifname)?;
    let entry = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_v4(r.dst),
        rt_gateway: sockaddr_v4(r.gateway),
        rt_genmask: sockaddr_v4(r.mask),
        // Only the flags SIOCADDRT understands: UP, GATEWAY, HOST.
        rt_flags: (r.flags & 0x7) | 0x1,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        // The ioctl API stores metric − 1 as the priority.
        rt_metric: libc::c_short::try_from(r.metric.saturating_add(1))
            .unwrap_or(libc::c_short::MAX),
        rt_dev: dev.as_mut_ptr(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: SIOCADDRT reads a struct rtentry; `dev` outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &entry) } < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

/// Pids of the processes whose network namespace is the named one.
fn pids_in_netns(ns: &str) -> std::io::Result<Vec<libc::pid_t>> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::metadata(Path::new("/run/netns").join(ns))?;
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // Processes exiting meanwhile (or kernel threads) are skipped.
        if let Ok(m) = std::fs::metadata(entry.path().join("ns/net")) {
            if m.dev() == target.dev() && m.ino() == target.ino() {
                pids.push(pid);
            }
        }
    }
    Ok(pids)
}

/// Sends `signal` to every process in the named namespace; returns how many.
fn signal_netns(ns: &str, signal: libc::c_int) -> std::io::Result<usize> {
    let pids = pids_in_netns(ns)?;
    for pid in &pids {
        // SAFETY: kill(2) with a pid found above; ESRCH (gone) is ignored.
        unsafe { libc::kill(*pid, signal) };
    }
    Ok(pids.len())
}

/// Runs blocking `f` on a thread inside the guest namespace `ns`.
async fn in_guest<T: Send + 'static>(
    ns: &str,
    what: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, HypervisorError> {
    run_in_netns(ns, move |_netlink| async move { f() })
        .await
        .map_err(|e| backend(&format!("{what} in {ns}"), e))?
        .map_err(|e| backend(&format!("{what} in {ns}"), e))
}

#[async_trait]
impl super::Hypervisor for NetnsHypervisor {
    fn driver(&self) -> &'static str {
        "netns"
    }

    async fn list(&self) -> Result<Vec<ObservedInstance>, HypervisorError> {
        let present = list_netns_guests(&self.prefix).map_err(|e| backend("list netns", e))?;
        let st = self.state.lock().await;
        for ns in &present {
            if !st.guests.contains_key(ns) {
                tracing::debug!(netns = %ns, "namespace with the guest prefix but no record; ignored");
            }
        }
        Ok(st
            .guests
            .iter()
            .map(|(ns, r)| ObservedInstance {
                id: r.id,
                power: observed_power(r, present.binary_search(ns).is_ok()),
                boot_count: r.boot_count,
                created_at: r.created_at,
                managed: true,
            })
            .collect())
    }

    /// The counters of each running guest's veth, read from the host end
    /// (the tap) in this process's `/proc/self/net/dev` and turned to the
    /// guest's view. No CPU, memory or disk: a namespace has none of its
    /// own.
    async fn stats(&self) -> Result<Vec<super::InstanceStats>, HypervisorError> {
        let present = list_netns_guests(&self.prefix).map_err(|e| backend("list netns", e))?;
        let dev = tokio::fs::read_to_string("/proc/self/net/dev")
            .await
            .map_err(|e| backend("read /proc/self/net/dev", e))?;
        let mut counters = super::stats::parse_proc_net_dev(&dev);
        let st = self.state.lock().await;
        Ok(st
            .guests
            .iter()
            .filter(|(ns, r)| {
                observed_power(r, present.binary_search(ns).is_ok()) != ObservedPower::Stopped
            })
            .map(|(_, r)| super::InstanceStats {
                id: r.id,
                cpu_ns: None,
                memory_used_bytes: None,
                memory_available_bytes: None,
                disks: Vec::new(),
                nics: r
                    .nics
                    .iter()
                    .filter_map(|n| counters.remove(&n.tap))
                    .map(super::NicCounters::guest_view)
                    .collect(),
            })
            .collect())
    }

    async fn create(&self, spec: &DesiredInstance) -> Result<(), HypervisorError> {
        let id = spec.id();
        if spec.ports.len() > MAX_NICS {
            return Err(HypervisorError::Unsupported(format!(
                "the netns driver supports at most {MAX_NICS} ports per instance (got {})",
                spec.ports.len()
            )));
        }
        let ports: Vec<(String, String)> = spec
            .ports
            .iter()
            .map(|p| (p.tap.clone(), p.mac.to_string()))
            .collect();
        let ns = self.netns_name(&id);
        let mut st = self.state.lock().await;
        if let Some(other) = st.guests.get(&ns).filter(|r| r.id != id) {
            return Err(HypervisorError::Unsupported(format!(
                "namespace {ns} already belongs to instance {}",
                other.id
            )));
        }
        let running = spec.power() == PowerState::Running;
        let mut rec = GuestRecord {
            id,
            nics: nics_for(&ports),
            legacy_tap: String::new(),
            legacy_mac: String::new(),
            mtu: self.mtu,
            stopped: !running,
            boot_count: u64::from(running),
            created_at: model::now(),
            paused: false,
            saved_routes: Vec::new(),
            size: Some(size_of(spec)),
        };
        if let Some(prev) = st.guests.get(&ns) {
            rec.created_at = prev.created_at;
            rec.boot_count = prev.boot_count + u64::from(running);
        }
        self.ensure_disk(&id).await?;
        if running {
            self.boot(&ns, &rec).await?;
        }
        let mut next = st.clone();
        next.guests.insert(ns, rec);
        self.persist(&next).await?;
        *st = next;
        Ok(())
    }

    async fn start(&self, id: InstanceId) -> Result<(), HypervisorError> {
        let ns = self.netns_name(&id);
        let mut st = self.state.lock().await;
        let mut next = st.clone();
        let rec = Self::record_of(&mut next, &ns, id)?;
        self.boot(&ns, rec).await?;
        rec.stopped = false;
        rec.paused = false;
        rec.saved_routes.clear();
        rec.boot_count += 1;
        self.persist(&next).await?;
        *st = next;
        Ok(())
    }

    async fn stop(&self, id: InstanceId) -> Result<(), HypervisorError> {
        let ns = self.netns_name(&id);
        let mut st = self.state.lock().await;
        let mut next = st.clone();
        let rec = Self::record_of(&mut next, &ns, id)?;
        rec.stopped = true;
        // Mark first: a crash between the two steps leaves a stopped record
        // whose namespace is deleted again, never a resurrected guest.
        self.persist(&next).await?;
        *st = next;
        if let Some(rec) = st.guests.get(&ns) {
            self.teardown(&ns, rec).await?;
        }
        self.console(
            id,
            &[format!(
                "nubo netns guest {id} stopped: namespace {ns} deleted"
            )],
        )
        .await;
        Ok(())
    }

    async fn reboot(&self, id: InstanceId) -> Result<(), HypervisorError> {
        let ns = self.netns_name(&id);
        let mut st = self.state.lock().await;
        let mut next = st.clone();
        let rec = Self::record_of(&mut next, &ns, id)?;
        self.teardown(&ns, rec).await?;
        self.boot(&ns, rec).await?;
        rec.paused = false;
        rec.saved_routes.clear();
        rec.boot_count += 1;
        self.persist(&next).await?;
        *st = next;
        Ok(())
    }

    async fn destroy(&self, id: InstanceId) -> Result<(), HypervisorError> {
        let ns = self.netns_name(&id);
        let mut st = self.state.lock().await;
        let Some(rec) = st.guests.get(&ns).filter(|r| r.id == id) else {
            return Err(HypervisorError::NotFound(id));
        };
        self.teardown(&ns, rec).await?;
        let mut next = st.clone();
        if let Some(rec) = next.guests.remove(&ns) {
            // The veth host ends die with the guest ends; a tap left
            // behind would block a later guest with the same port.
            for nic in &rec.nics {
                self.delete_leftover_tap(&nic.tap).await;
            }
        }
        self.persist(&next).await?;
        *st = next;
        let disk = self.disk_path(&id);
        if let Err(e) = tokio::fs::remove_file(&disk).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(instance = %id, disk = %disk.display(), error = %e, "guest disk left behind");
            }
        }
        Ok(())
    }

    async fn capture_root(
        &self,
        id: InstanceId,
        dest: &Path,
        format: &str,
    ) -> Result<u64, HypervisorError> {
        let ns = self.netns_name(&id);
        // Held during the copy: no create, destroy or reboot of the guest
        // meanwhile, so the copy is of one point in time.
        let st = self.state.lock().await;
        if st.guests.get(&ns).is_none_or(|r| r.id != id) {
            return Err(HypervisorError::NotFound(id));
        }
        self.ensure_disk(&id).await?;
        let src = self.disk_path(&id);
        if format == "raw" {
            tokio::fs::copy(&src, dest)
                .await
                .map_err(|e| backend(&format!("copy {}", src.display()), e))?;
            super::disk_copy::file_size(dest).await
        } else {
            super::disk_copy::convert(&src, Some("raw"), dest, format, false).await
        }
    }

    async fn nics(&self, id: InstanceId) -> Result<Vec<String>, HypervisorError> {
        let ns = self.netns_name(&id);
        let st = self.state.lock().await;
        Ok(st
            .guests
            .get(&ns)
            .filter(|r| r.id == id)
            .ok_or(HypervisorError::NotFound(id))?
            .nics
            .iter()
            .map(|n| n.tap.clone())
            .collect())
    }

    /// A running guest gets one more veth at once (as `ethN`, the lowest
    /// free N); a stopped one gets it in its record, made on the next boot.
    async fn attach_nic(&self, id: InstanceId, port: &DesiredPort) -> Result<(), HypervisorError> {
        let ns = self.netns_name(&id);
        let mut st = self.state.lock().await;
        let mut next = st.clone();
        let rec = Self::record_of(&mut next, &ns, id)?;
        if rec.nics.iter().any(|n| n.tap == port.tap) {
            return Ok(());
        }
        let ifname = free_ifname(&rec.nics).ok_or_else(|| {
            HypervisorError::Unsupported(format!(
                "the netns driver supports at most {MAX_NICS} NICs per instance"
            ))
        })?;
        let nic = GuestNic {
            ifname,
            tap: port.tap.clone(),
            mac: port.mac.to_string(),
        };
        if !rec.stopped && netns_guest_exists(&ns) {
            let mac = self.clear_tap(&nic).await?;
            self.plug(&ns, &nic, mac, rec.mtu).await?;
        }
        info!(netns = %ns, instance = %id, nic = %nic.ifname, tap = %nic.tap, "NIC attached");
        rec.nics.push(nic);
        self.persist(&next).await?;
        *st = next;
        Ok(())
    }

    async fn detach_nic(&self, id: InstanceId, tap: &str) -> Result<(), HypervisorError> {
        let ns = self.netns_name(&id);
        let mut st = self.state.lock().await;
        let mut next = st.clone();
        let rec = Self::record_of(&mut next, &ns, id)?;
        let Some(pos) = rec.nics.iter().position(|n| n.tap == tap) else {
            return Ok(());
        };
        let nic = rec.nics.remove(pos);
        remove_netns_guest_nic(&ns, &nic.ifname)
            .await
            .map_err(|e| backend(&format!("remove {} from netns guest {ns}", nic.ifname), e))?;
        self.delete_leftover_tap(&nic.tap).await;
        info!(netns = %ns, instance = %id, nic = %nic.ifname, tap = %nic.tap, "NIC detached");
        self.persist(&next).await?;
        *st = next;
        Ok(())
    }

    async fn pause(&self, id: InstanceId) -> Result<(), HypervisorError> {
        let ns = self.netns_name(&id);
        let mut st = self.state.lock().await;
        let mut next = st.clone();
        let rec = Self::record_of(&mut next, &ns, id)?;
        if rec.stopped || !netns_guest_exists(&ns) {
            return Err(backend(&format!("cannot pause {id}"), "it is shut off"));
        }
        if !rec.paused {
            // Saved and persisted before the link goes down: a crash in
            // between leaves a paused record that a resume completes.
            rec.saved_routes = in_guest(&ns, "read routes", read_guest_routes).await?;
            rec.paused = true;
            self.persist(&next).await?;
            *st = next;
        }
        // Also on an already paused guest: catches anything that got in.
        let stopped = signal_netns(&ns, libc::SIGSTOP)
            .map_err(|e| backend(&format!("stop processes in {ns}"), e))?;
        let ifnames: Vec<String> = st
            .guests
            .get(&ns)
            .map(|r| r.nics.iter().map(|n| n.ifname.clone()).collect())
            .unwrap_or_default();
        in_guest(&ns, "set NICs down", move || {
            ifnames.iter().try_for_each(|n| set_link_admin(n, false))
        })
        .await?;
        info!(netns = %ns, processes = stopped, "netns guest paused (NICs down, processes stopped)");
        Ok(())
    }

    async fn resume(&self, id: InstanceId) -> Result<(), HypervisorError> {
        let ns = self.netns_name(&id);
        let mut st = self.state.lock().await;
        let mut next = st.clone();
        let rec = Self::record_of(&mut next, &ns, id)?;
        if rec.stopped || !netns_guest_exists(&ns) {
            return Err(backend(&format!("cannot resume {id}"), "it is shut off"));
        }
        if !rec.paused {
            return Ok(());
        }
        let saved = rec.saved_routes.clone();
        let ifnames: Vec<String> = rec.nics.iter().map(|n| n.ifname.clone()).collect();
        let restored = in_guest(&ns, "set NICs up and restore routes", move || {
            for n in &ifnames {
                set_link_admin(n, true)?;
            }
            // The kernel re-creates the prefix routes of the addresses at
            // once; add back what it does not (default, static routes).
            let missing = routes_to_restore(&saved, &read_guest_routes()?);
            for r in &missing {
                add_route(GUEST_IFNAME, r)?;
            }
            Ok(missing.len())
        })
        .await?;
        let continued = signal_netns(&ns, libc::SIGCONT)
            .map_err(|e| backend(&format!("continue processes in {ns}"), e))?;
        rec.paused = false;
        rec.saved_routes.clear();
        self.persist(&next).await?;
        *st = next;
        info!(netns = %ns, routes = restored, processes = continued, "netns guest resumed");
        Ok(())
    }
}

/// The (vCPUs, MiB) a spec asks for, as [`super::InstanceSize::of`]. Pure.
fn size_of(spec: &DesiredInstance) -> (u32, u64) {
    let s = super::InstanceSize::of(&spec.resources);
    (s.vcpus, s.ram_mb)
}

/// Resizing a netns guest rewrites the size in its record: what the
/// compute reconciler compares with the spec, so a running guest of
/// another size is stopped, redefined and started like a domain.
#[async_trait]
impl super::Resizer for NetnsHypervisor {
    async fn sizes(&self) -> Result<BTreeMap<InstanceId, super::InstanceSize>, HypervisorError> {
        let st = self.state.lock().await;
        Ok(st
            .guests
            .values()
            .filter_map(|r| {
                r.size
                    .map(|(vcpus, ram_mb)| (r.id, super::InstanceSize { vcpus, ram_mb }))
            })
            .collect())
    }

    async fn resize_stopped(&self, spec: &DesiredInstance) -> Result<(), HypervisorError> {
        let id = spec.id();
        let ns = self.netns_name(&id);
        let mut st = self.state.lock().await;
        let mut next = st.clone();
        let rec = Self::record_of(&mut next, &ns, id)?;
        if !rec.stopped {
            return Err(HypervisorError::Unsupported(format!(
                "resize of running netns guest {id}: stop it first"
            )));
        }
        rec.size = Some(size_of(spec));
        self.persist(&next).await?;
        *st = next;
        info!(instance = %id, size = ?size_of(spec), "netns guest redefined with the new size");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(stopped: bool) -> GuestRecord {
        GuestRecord {
            id: InstanceId::new_random(),
            nics: nics_for(&[("tap0123".into(), "fa:16:3e:00:00:01".into())]),
            legacy_tap: String::new(),
            legacy_mac: String::new(),
            mtu: 1450,
            stopped,
            boot_count: 1,
            created_at: model::now(),
            paused: false,
            saved_routes: Vec::new(),
            size: Some((1, 64)),
        }
    }

    #[test]
    fn names_use_eight_hex_digits() {
        let id = InstanceId::new_random();
        let n = guest_netns_name("nbtabcdg", &id);
        assert_eq!(n.len(), 16);
        assert!(n.starts_with("nbtabcdg"));
        assert_eq!(&n[8..], &id.short_hex(8));
    }

    #[test]
    fn power_follows_namespace_existence_and_stop_mark() {
        assert_eq!(observed_power(&rec(false), true), ObservedPower::Running);
        assert_eq!(observed_power(&rec(false), false), ObservedPower::Stopped);
        assert_eq!(observed_power(&rec(true), true), ObservedPower::Stopped);
        assert_eq!(observed_power(&rec(true), false), ObservedPower::Stopped);
    }

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        assert_eq!(load(&path).unwrap(), NetnsState::default());
        let mut st = NetnsState::default();
        st.guests.insert("nbtxg1".into(), rec(true));
        std::fs::write(&path, serde_json::to_vec(&st).unwrap()).unwrap();
        assert_eq!(load(&path).unwrap(), st);
    }

    #[test]
    fn a_paused_guest_is_observed_paused_only_while_its_namespace_exists() {
        let mut r = rec(false);
        r.paused = true;
        assert_eq!(observed_power(&r, true), ObservedPower::Paused);
        assert_eq!(observed_power(&r, false), ObservedPower::Stopped);
        r.stopped = true;
        assert_eq!(observed_power(&r, true), ObservedPower::Stopped);
    }

    const PROC_ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t01014D0A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t00014D0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
eth0\tFEA9FEA9\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
lo\t0000007F\t00000000\t0001\t0\t0\t5\t000000FF\t0\t0\t0\n";

    #[test]
    fn proc_routes_are_parsed_for_one_interface() {
        let r = parse_proc_routes(PROC_ROUTE, "eth0");
        assert_eq!(r.len(), 3);
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        // Only meaningful on a little-endian host, where /proc prints the
        // network-order word reversed.
        if cfg!(target_endian = "little") {
            assert_eq!(
                (r[0].dst, r[0].gateway, r[0].mask),
                (ip("0.0.0.0"), ip("10.77.1.1"), ip("0.0.0.0"))
            );
            assert_eq!(r[0].flags, 0x3);
            assert_eq!(
                (r[1].dst, r[1].mask),
                (ip("10.77.1.0"), ip("255.255.255.0"))
            );
            assert_eq!((r[2].dst, r[2].flags), (ip("169.254.169.254"), 0x5));
        }
        assert!(parse_proc_routes(PROC_ROUTE, "eth1").is_empty());
        assert_eq!(parse_proc_routes(PROC_ROUTE, "lo")[0].metric, 5);
        assert!(parse_proc_routes("garbage\nnot a route line\n", "eth0").is_empty());
    }

    #[test]
    fn only_the_routes_the_kernel_did_not_recreate_are_restored() {
        let saved = parse_proc_routes(PROC_ROUTE, "eth0");
        // After `eth0 up` the kernel re-added the prefix route only.
        let now = vec![saved[1]];
        assert_eq!(routes_to_restore(&saved, &now), vec![saved[0], saved[2]]);
        assert!(routes_to_restore(&saved, &saved).is_empty());
        let mut other_metric = saved[0];
        other_metric.metric = 100;
        assert_eq!(
            routes_to_restore(&[other_metric], &saved),
            vec![other_metric]
        );
    }

    #[test]
    fn records_without_the_pause_fields_still_load() {
        let old = r#"{"guests":{"nbtxg1":{"id":"5f0c7a9e-8a53-4a7c-9d55-0d6ab4f5b3d1","tap":"tap1","mac":"fa:16:3e:00:00:01","mtu":1450,"boot_count":2,"created_at":"2024-01-01T00:00:00Z"}}}"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        std::fs::write(&path, old).unwrap();
        let st = load(&path).unwrap();
        let r = &st.guests["nbtxg1"];
        assert!(!r.paused && r.saved_routes.is_empty() && !r.stopped);
        // The single NIC of the old format is eth0.
        assert_eq!(
            r.nics,
            nics_for(&[("tap1".into(), "fa:16:3e:00:00:01".into())])
        );
        assert!(r.legacy_tap.is_empty() && r.legacy_mac.is_empty());
        let mut paused = r.clone();
        paused.paused = true;
        paused.saved_routes = parse_proc_routes(PROC_ROUTE, "eth0");
        let json = serde_json::to_string(&paused).unwrap();
        assert_eq!(serde_json::from_str::<GuestRecord>(&json).unwrap(), paused);
    }

    #[test]
    fn nics_are_named_in_port_order_and_the_lowest_free_name_is_reused() {
        let ports: Vec<(String, String)> = (0..3)
            .map(|i| (format!("tap{i}"), format!("fa:16:3e:00:00:0{i}")))
            .collect();
        let mut nics = nics_for(&ports);
        let names: Vec<&str> = nics.iter().map(|n| n.ifname.as_str()).collect();
        assert_eq!(names, ["eth0", "eth1", "eth2"]);
        assert_eq!(nics[1].tap, "tap1");
        assert_eq!(free_ifname(&nics).as_deref(), Some("eth3"));
        nics.remove(1);
        assert_eq!(free_ifname(&nics).as_deref(), Some("eth1"));
        let full = nics_for(&vec![(String::new(), String::new()); MAX_NICS]);
        assert_eq!(free_ifname(&full), None);
        // Written without the legacy fields.
        let json = serde_json::to_value(rec(false)).unwrap();
        assert!(
            json.get("tap").is_none() && json.get("mac").is_none(),
            "{json}"
        );
        assert_eq!(json["nics"][0]["tap"], "tap0123");
    }

    #[test]
    fn interface_names_must_fit_ifnamsiz() {
        assert!(c_ifname("eth0").is_ok());
        assert!(c_ifname("0123456789abcdef").is_err());
        assert!(c_ifname("a\0b").is_err());
    }
}
