//! MAC lookups in the kernel's neighbour (ARP) table over rtnetlink.
//!
//! The netlink socket is opened when the resolver is created, so lookups
//! see the network namespace of the thread that created it, whichever
//! thread later runs the request.

use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

use futures::StreamExt;
use nubo_netid::MacAddr;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use tokio::task::JoinHandle;

/// How long one neighbour query may take before the caller is refused.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a neighbour query failed (as opposed to finding no entry).
#[derive(Debug, thiserror::Error)]
pub enum NeighbourError {
    /// The request could not be sent (the netlink connection task is gone).
    #[error("netlink request could not be sent")]
    Send,
    /// The kernel answered with an error other than "no such entry".
    #[error("kernel refused the neighbour query: {0}")]
    Kernel(io::Error),
    /// No answer in time.
    #[error("neighbour query timed out")]
    Timeout,
}

/// Looks up MACs of neighbours on one interface.
#[derive(Debug, Clone)]
pub(crate) struct NeighbourResolver {
    handle: rtnetlink::Handle,
    ifindex: u32,
}

impl NeighbourResolver {
    /// Opens a netlink socket in the calling thread's network namespace and
    /// spawns its connection task (which ends when every resolver clone is
    /// dropped). Must run inside a tokio runtime context.
    pub(crate) fn new(ifindex: u32) -> io::Result<(Self, JoinHandle<()>)> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        let task = tokio::spawn(connection);
        Ok((NeighbourResolver { handle, ifindex }, task))
    }

    /// The MAC of `ip` on this interface, or `None` if the kernel has no
    /// entry with a usable link-layer address.
    ///
    /// The query runs in a task of its own: a guest closing its connection
    /// mid-request cancels the request, and a netlink answer arriving for a
    /// dropped receiver makes `netlink_proto` log a warning each time (a
    /// guest could trigger it at will); the task always reads its answer.
    pub(crate) async fn mac_of(&self, ip: Ipv4Addr) -> Result<Option<MacAddr>, NeighbourError> {
        let resolver = self.clone();
        let query = tokio::spawn(async move {
            tokio::time::timeout(QUERY_TIMEOUT, resolver.query(ip))
                .await
                .map_err(|_| NeighbourError::Timeout)?
        });
        query.await.map_err(|_| NeighbourError::Send)?
    }

    async fn query(&self, ip: Ipv4Addr) -> Result<Option<MacAddr>, NeighbourError> {
        let mut request = NeighbourMessage::default();
        request.header.family = AddressFamily::Inet;
        request.header.ifindex = self.ifindex;
        request
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        let mut message = NetlinkMessage::from(RouteNetlinkMessage::GetNeighbour(request));
        // A plain (non-dump) RTM_GETNEIGH: the kernel looks up exactly one entry.
        message.header.flags = NLM_F_REQUEST;

        let mut handle = self.handle.clone();
        let mut responses = handle.request(message).map_err(|_| NeighbourError::Send)?;
        let mut found = None;
        while let Some(response) = responses.next().await {
            match response.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(msg)) => {
                    found = found.or(usable_mac(&msg, self.ifindex, ip));
                }
                NetlinkPayload::Error(err) => {
                    return match err.code {
                        None => Ok(found),
                        Some(_) => {
                            let err = err.to_io();
                            if err.kind() == io::ErrorKind::NotFound {
                                Ok(None)
                            } else {
                                Err(NeighbourError::Kernel(err))
                            }
                        }
                    };
                }
                _ => {}
            }
        }
        Ok(found)
    }
}

/// The MAC in a neighbour entry, if the entry is for `ip` on `ifindex` and
/// in a state where its link-layer address is valid (not incomplete or
/// failed).
pub(crate) fn usable_mac(msg: &NeighbourMessage, ifindex: u32, ip: Ipv4Addr) -> Option<MacAddr> {
    if msg.header.ifindex != ifindex || !state_has_valid_lladdr(msg.header.state) {
        return None;
    }
    let is_ip = msg.attributes.iter().any(|attr| {
        matches!(attr, NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)) if *dst == ip)
    });
    if !is_ip {
        return None;
    }
    msg.attributes.iter().find_map(|attr| match attr {
        NeighbourAttribute::LinkLayerAddress(bytes) => MacAddr::from_slice(bytes),
        _ => None,
    })
}

/// The kernel's `NUD_VALID` states.
fn state_has_valid_lladdr(state: NeighbourState) -> bool {
    matches!(
        state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ifindex: u32, state: NeighbourState, ip: Ipv4Addr, mac: &[u8]) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = ifindex;
        msg.header.state = state;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        msg
    }

    const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 5];

    #[test]
    fn valid_states_yield_the_mac() {
        for state in [
            NeighbourState::Reachable,
            NeighbourState::Stale,
            NeighbourState::Delay,
            NeighbourState::Probe,
            NeighbourState::Permanent,
        ] {
            assert_eq!(
                usable_mac(&entry(7, state, IP, &MAC), 7, IP),
                Some(MacAddr(MAC)),
                "{state:?}"
            );
        }
    }

    #[test]
    fn incomplete_and_failed_entries_are_ignored() {
        for state in [
            NeighbourState::Incomplete,
            NeighbourState::Failed,
            NeighbourState::None,
        ] {
            assert_eq!(
                usable_mac(&entry(7, state, IP, &MAC), 7, IP),
                None,
                "{state:?}"
            );
        }
    }

    #[test]
    fn other_interface_or_address_is_ignored() {
        let msg = entry(7, NeighbourState::Reachable, IP, &MAC);
        assert_eq!(usable_mac(&msg, 8, IP), None);
        assert_eq!(usable_mac(&msg, 7, Ipv4Addr::new(10, 0, 0, 6)), None);
    }

    #[test]
    fn malformed_lladdr_is_ignored() {
        let msg = entry(7, NeighbourState::Reachable, IP, &[1, 2, 3]);
        assert_eq!(usable_mac(&msg, 7, IP), None);
    }
}
