//! A synthetic DHCP client for health probes: one DHCPDISCOVER, sent as a
//! guest's client sends it (a raw frame to the broadcast MAC, IP source
//! 0.0.0.0, broadcast flag set), and the DHCPOFFER it gets back.
//!
//! No DHCPREQUEST ever follows: a probe only checks that the responder of
//! the link answers, it never takes or renews anything.

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{self, DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};
use nubo_netid::MacAddr;
use tokio::net::UdpSocket;

use crate::error::DhcpError;
use crate::l2::{ipv4_udp, L2Sender};
use crate::respond::CLIENT_PORT;
use crate::socket::{bind_device_port, validate_iface_name, SERVER_PORT};

/// The answer a probe got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeOffer {
    /// The address offered (`yiaddr`).
    pub yiaddr: Ipv4Addr,
    /// The server identifier (option 54), if the offer carried one.
    pub server_id: Option<Ipv4Addr>,
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The sockets could not be opened or used.
    #[error(transparent)]
    Dhcp(#[from] DhcpError),
    /// The DISCOVER could not be built or sent.
    #[error("sending the DISCOVER on {iface}: {reason}")]
    Send {
        /// The interface.
        iface: String,
        /// What failed.
        reason: String,
    },
    /// No OFFER for this transaction arrived in time.
    #[error("no DHCPOFFER on {iface} within {timeout:?}")]
    Timeout {
        /// The interface.
        iface: String,
        /// How long the probe waited.
        timeout: Duration,
    },
}

/// The DHCPDISCOVER a probe sends for `mac` with transaction id `xid`
/// (broadcast flag set: the offer comes back to the broadcast address).
/// Pure.
pub fn discover_message(mac: MacAddr, xid: u32) -> Message {
    let mut msg = Message::default();
    msg.set_opcode(Opcode::BootRequest)
        .set_xid(xid)
        .set_flags(Flags::default().set_broadcast())
        .set_chaddr(&mac.0);
    msg.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    msg
}

/// Whether `reply` is the OFFER answering the DISCOVER of `mac` / `xid`,
/// and what it offers. Pure.
pub fn offer_for(reply: &Message, mac: MacAddr, xid: u32) -> Option<ProbeOffer> {
    let matches = reply.opcode() == Opcode::BootReply
        && reply.xid() == xid
        && reply.chaddr().get(..6) == Some(&mac.0[..])
        && reply.opts().msg_type() == Some(MessageType::Offer);
    if !matches {
        return None;
    }
    let server_id = match reply.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    Some(ProbeOffer {
        yiaddr: reply.yiaddr(),
        server_id,
    })
}

/// Sends one DHCPDISCOVER for `mac` on `iface` (in the calling thread's
/// network namespace; needs a tokio runtime with IO) and waits up to
/// `timeout` for the matching DHCPOFFER. Replies to other transactions are
/// ignored.
pub async fn discover(
    iface: &str,
    mac: MacAddr,
    xid: u32,
    timeout: Duration,
) -> Result<ProbeOffer, ProbeError> {
    validate_iface_name(iface)?;
    let socket =
        UdpSocket::from_std(bind_device_port(iface, CLIENT_PORT, None)?).map_err(|source| {
            DhcpError::Runtime {
                iface: iface.to_string(),
                source,
            }
        })?;
    let sender = L2Sender::open(iface)?;
    let send_err = |reason: String| ProbeError::Send {
        iface: iface.to_string(),
        reason,
    };
    let bytes = discover_message(mac, xid)
        .to_vec()
        .map_err(|e| send_err(e.to_string()))?;
    let packet = ipv4_udp(
        Ipv4Addr::UNSPECIFIED,
        CLIENT_PORT,
        Ipv4Addr::BROADCAST,
        SERVER_PORT,
        &bytes,
    )
    .ok_or_else(|| send_err("DISCOVER too large".into()))?;
    sender
        .send(MacAddr([0xff; 6]), &packet)
        .map_err(|e| send_err(e.to_string()))?;
    let wait = async {
        let mut buf = vec![0u8; crate::MAX_PACKET + 1];
        loop {
            let Ok((len, _)) = socket.recv_from(&mut buf).await else {
                // A transient socket error: keep waiting for the deadline.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let Some(datagram) = buf.get(..len) else {
                continue;
            };
            if let Ok(reply) = v4::Message::decode(&mut v4::Decoder::new(datagram)) {
                if let Some(offer) = offer_for(&reply, mac, xid) {
                    return offer;
                }
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| ProbeError::Timeout {
            iface: iface.to_string(),
            timeout,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decide, decode_request, Decision, Lease, LeaseTable, METADATA_IP};

    const MAC: MacAddr = MacAddr([0x02, 0x6e, 0x62, 0, 0, 1]);

    #[test]
    fn the_responder_offers_the_probe_its_fixed_address_and_the_probe_recognises_it() {
        let table = LeaseTable::new();
        let ip = Ipv4Addr::new(169, 254, 169, 1);
        table.upsert(Lease::new(MAC, ip, 16)).unwrap();
        let bytes = discover_message(MAC, 0xabcd).to_vec().unwrap();
        let req = decode_request(&bytes).unwrap();
        let Decision::Reply(reply) = decide(&table.read(), &req, METADATA_IP) else {
            panic!("the responder must answer the probe's DISCOVER");
        };
        assert_eq!(
            offer_for(&reply, MAC, 0xabcd),
            Some(ProbeOffer {
                yiaddr: ip,
                server_id: Some(METADATA_IP)
            })
        );
        // Another transaction or another client: not this probe's answer.
        assert_eq!(offer_for(&reply, MAC, 0xabce), None);
        assert_eq!(offer_for(&reply, MacAddr([2, 0, 0, 0, 0, 2]), 0xabcd), None);
        // An unknown MAC gets no answer at all.
        let other = decode_request(
            &discover_message(MacAddr([2, 0, 0, 0, 0, 9]), 1)
                .to_vec()
                .unwrap(),
        )
        .unwrap();
        assert!(matches!(
            decide(&table.read(), &other, METADATA_IP),
            Decision::Silent(_)
        ));
    }
}
