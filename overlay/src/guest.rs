//! The netns guest driver primitives: an "instance" that is a network
//! namespace with one veth, so tests get real packets, real DHCP and HTTP
//! clients, and no hypervisor.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;

use nubo_netid::MacAddr;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth};
use tracing::{info, warn};

use crate::error::OverlayError;
use crate::netlink::Netlink;
use crate::netns::{create_netns, delete_netns, netns_path, run_in_netns, NETNS_DIR};
use crate::tap::validate_ifname;

/// Name of the guest's interface inside its namespace.
pub const GUEST_IFNAME: &str = "eth0";

impl Netlink {
    /// Creates a netns guest: the named namespace `ns_name` (as
    /// `ip netns add` does), a veth pair whose host end `host_ifname` (the
    /// port's tap name) is created in *this handle's* namespace, down, so
    /// the overlay attaches it like any tap, and whose other end is created
    /// directly inside the guest namespace as [`GUEST_IFNAME`] with the
    /// port's `mac`. Both ends get `mtu`; `lo` and `eth0` are set up.
    ///
    /// On failure everything created so far is removed again.
    pub async fn create_netns_guest(
        &self,
        ns_name: &str,
        host_ifname: &str,
        mac: MacAddr,
        mtu: u32,
    ) -> Result<(), OverlayError> {
        validate_ifname(host_ifname)?;
        netns_path(ns_name)?;
        if self.link_exists(host_ifname).await? {
            return Err(OverlayError::LinkExists(host_ifname.to_string()));
        }
        create_netns(ns_name).await?;
        match self
            .wire_guest(ns_name, host_ifname, GUEST_IFNAME, mac, mtu)
            .await
        {
            Ok(()) => {
                info!(netns = ns_name, host_ifname, %mac, "netns guest created");
                Ok(())
            }
            Err(e) => {
                if let Err(cleanup) = self.delete_link(host_ifname).await {
                    warn!(host_ifname, error = %cleanup, "cleanup of half-created guest veth failed");
                }
                if let Err(cleanup) = delete_netns(ns_name) {
                    warn!(netns = ns_name, error = %cleanup, "cleanup of half-created guest namespace failed");
                }
                Err(e)
            }
        }
    }

    /// Adds one more NIC to the existing netns guest `ns_name`: a veth pair
    /// whose host end `host_ifname` (the port's tap name) is created in
    /// *this handle's* namespace, down, and whose other end is created in
    /// the guest as `guest_ifname` (`eth1`, …) with `mac`, set up. The
    /// hot-plug of a NIC into a netns guest.
    ///
    /// On failure the host end is removed again; the guest is left as it was.
    pub async fn add_netns_guest_nic(
        &self,
        ns_name: &str,
        host_ifname: &str,
        guest_ifname: &str,
        mac: MacAddr,
        mtu: u32,
    ) -> Result<(), OverlayError> {
        validate_ifname(host_ifname)?;
        validate_ifname(guest_ifname)?;
        if !netns_guest_exists(ns_name) {
            return Err(OverlayError::sys(
                format!("add NIC {guest_ifname} to netns guest {ns_name}"),
                io::Error::from(io::ErrorKind::NotFound),
            ));
        }
        if self.link_exists(host_ifname).await? {
            return Err(OverlayError::LinkExists(host_ifname.to_string()));
        }
        match self
            .wire_guest(ns_name, host_ifname, guest_ifname, mac, mtu)
            .await
        {
            Ok(()) => {
                info!(netns = ns_name, host_ifname, guest_ifname, %mac, "NIC added to netns guest");
                Ok(())
            }
            Err(e) => {
                if let Err(cleanup) = self.delete_link(host_ifname).await {
                    warn!(host_ifname, error = %cleanup, "cleanup of half-created guest veth failed");
                }
                Err(e)
            }
        }
    }

    async fn wire_guest(
        &self,
        ns_name: &str,
        host_ifname: &str,
        guest_ifname: &str,
        mac: MacAddr,
        mtu: u32,
    ) -> Result<(), OverlayError> {
        let path = netns_path(ns_name)?;
        let ns_file = File::open(&path)
            .map_err(|e| OverlayError::sys(format!("open {}", path.display()), e))?;
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(guest_ifname)
            .address(mac.octets().to_vec())
            .mtu(mtu)
            .setns_by_fd(ns_file.as_raw_fd())
            .build();
        let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host_ifname)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.handle()
            .link()
            .add(veth)
            .execute()
            .await
            .map_err(|e| {
                OverlayError::netlink(format!("create veth {host_ifname} for netns {ns_name}"), e)
            })?;
        drop(ns_file);
        let guest_ifname = guest_ifname.to_string();
        run_in_netns(ns_name, |guest| async move {
            guest.set_up("lo").await?;
            guest.set_up(&guest_ifname).await
        })
        .await?
    }
}

/// Creates a netns guest without NICs: the named namespace `ns_name` with
/// `lo` up; [`Netlink::add_netns_guest_nic`] adds them. On failure the
/// namespace is removed again.
pub async fn create_empty_netns_guest(ns_name: &str) -> Result<(), OverlayError> {
    netns_path(ns_name)?;
    create_netns(ns_name).await?;
    let up = run_in_netns(ns_name, |guest| async move { guest.set_up("lo").await })
        .await
        .and_then(|r| r);
    if let Err(e) = up {
        if let Err(cleanup) = delete_netns(ns_name) {
            warn!(netns = ns_name, error = %cleanup, "cleanup of half-created guest namespace failed");
        }
        return Err(e);
    }
    Ok(())
}

/// Removes the NIC `guest_ifname` from the netns guest `ns_name` (its veth,
/// so the host end goes too): the hot-unplug of a NIC. A guest or NIC that
/// does not exist is not an error.
pub async fn remove_netns_guest_nic(ns_name: &str, guest_ifname: &str) -> Result<(), OverlayError> {
    validate_ifname(guest_ifname)?;
    if !netns_guest_exists(ns_name) {
        return Ok(());
    }
    let guest_ifname = guest_ifname.to_string();
    run_in_netns(ns_name, |guest| async move {
        if guest.link_exists(&guest_ifname).await? {
            guest.delete_link(&guest_ifname).await?;
            info!(guest_ifname, "NIC removed from netns guest");
        }
        Ok(())
    })
    .await?
}

/// Deletes a netns guest: its `eth0` (which removes the veth host end too,
/// wherever it is) and then the named namespace. A guest that does not
/// exist is not an error.
pub async fn delete_netns_guest(ns_name: &str) -> Result<(), OverlayError> {
    if !netns_guest_exists(ns_name) {
        return Ok(());
    }
    let removed = run_in_netns(ns_name, |guest| async move {
        guest.delete_link(GUEST_IFNAME).await
    })
    .await
    .and_then(|r| r);
    if let Err(e) = removed {
        warn!(netns = ns_name, error = %e, "could not delete the guest veth; removing the namespace anyway");
    }
    delete_netns(ns_name)?;
    info!(netns = ns_name, "netns guest deleted");
    Ok(())
}

/// Names of the named network namespaces starting with `prefix`, sorted.
pub fn list_netns_guests(prefix: &str) -> Result<Vec<String>, OverlayError> {
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(OverlayError::sys(format!("list {NETNS_DIR}"), e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| OverlayError::sys(format!("list {NETNS_DIR}"), e))?;
        if let Some(name) = entry.file_name().to_str() {
            if name.starts_with(prefix) {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Whether the named network namespace exists.
pub fn netns_guest_exists(ns_name: &str) -> bool {
    netns_path(ns_name).map(|p| p.exists()).unwrap_or(false)
}
