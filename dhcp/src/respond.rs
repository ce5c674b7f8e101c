//! The pure protocol core: one request in, at most one reply out.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode};
use nubo_netid::MacAddr;
use tracing::debug;

use crate::lease::Lease;

/// UDP port DHCP clients listen on.
pub const CLIENT_PORT: u16 = 68;

/// Why a request got no reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Silence {
    /// Not an Ethernet BOOTREQUEST (callers normally filter these earlier).
    NotEthernetRequest,
    /// Plain BOOTP: no DHCP message type option.
    NoMessageType,
    /// The MAC has no lease on this bridge.
    UnknownMac(MacAddr),
    /// Came through a relay (giaddr set); relays are not supported.
    Relayed(MacAddr),
    /// A REQUEST selecting another server.
    OtherServer(MacAddr, Ipv4Addr),
    /// A REQUEST with neither option 50 nor ciaddr.
    NoAddress(MacAddr),
    /// DHCPRELEASE of `ip`; the address stays reserved for the port.
    Released(MacAddr, Ipv4Addr),
    /// DHCPDECLINE of `ip`: the guest saw the address in use on the link.
    Declined(MacAddr, Ipv4Addr),
    /// A message type servers never answer (OFFER, ACK, ... from a guest).
    NotAnswered(MacAddr, MessageType),
}

impl std::fmt::Display for Silence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotEthernetRequest => write!(f, "not an Ethernet BOOTREQUEST"),
            Self::NoMessageType => write!(f, "BOOTP request without DHCP message type"),
            Self::UnknownMac(m) => write!(f, "unknown MAC {}", m),
            Self::Relayed(m) => write!(f, "relayed request from {} (relays unsupported)", m),
            Self::OtherServer(m, s) => write!(f, "{} selected another server ({s})", m),
            Self::NoAddress(m) => write!(f, "REQUEST from {} names no address", m),
            Self::Released(m, ip) => write!(f, "{} released {ip}", m),
            Self::Declined(m, ip) => {
                write!(f, "{} declined {ip} (in use on the link?)", m)
            }
            Self::NotAnswered(m, t) => {
                write!(f, "{t:?} from {} is not answered by servers", m)
            }
        }
    }
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Send this reply.
    Reply(Message),
    /// Send nothing, for this reason.
    Silent(Silence),
}

/// Answers one decoded client request; `None` means "send nothing".
///
/// Only MACs present in `leases` are answered. DISCOVER gets an OFFER,
/// REQUEST an ACK (or a NAK if it asks for an address that is not the
/// port's), INFORM an ACK without lease; RELEASE, DECLINE, requests meant
/// for another server, relayed requests and anything else get no reply.
/// See [`decide`] for the reason behind a silence.
pub fn respond(
    leases: &HashMap<MacAddr, Lease>,
    req: &Message,
    server_id: Ipv4Addr,
) -> Option<Message> {
    match decide(leases, req, server_id) {
        Decision::Reply(m) => Some(m),
        Decision::Silent(_) => None,
    }
}

/// Like [`respond`], but says why nothing is sent.
pub fn decide(leases: &HashMap<MacAddr, Lease>, req: &Message, server_id: Ipv4Addr) -> Decision {
    use Decision::Silent;
    // hlen is checked before chaddr(): dhcproto's chaddr() slices by hlen
    // and would panic on a hostile hlen > 16.
    if req.opcode() != Opcode::BootRequest || req.htype() != HType::Eth || req.hlen() != 6 {
        return Silent(Silence::NotEthernetRequest);
    }
    let mut octets = [0; 6];
    octets.copy_from_slice(&req.chaddr()[..6]);
    let mac = MacAddr(octets);
    let Some(msg_type) = req.opts().msg_type() else {
        return Silent(Silence::NoMessageType);
    };
    let Some(lease) = leases.get(&mac) else {
        return Silent(Silence::UnknownMac(mac));
    };
    if !req.giaddr().is_unspecified() {
        return Silent(Silence::Relayed(mac));
    }
    match msg_type {
        MessageType::Discover => Decision::Reply(reply(req, lease, server_id, MessageType::Offer)),
        MessageType::Request => handle_request(req, lease, server_id),
        MessageType::Inform => Decision::Reply(reply(req, lease, server_id, MessageType::Ack)),
        MessageType::Release => Silent(Silence::Released(mac, req.ciaddr())),
        MessageType::Decline => Silent(Silence::Declined(mac, requested_ip(req))),
        other => Silent(Silence::NotAnswered(mac, other)),
    }
}

/// Option 50, or 0.0.0.0 when absent.
fn requested_ip(req: &Message) -> Ipv4Addr {
    match req.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => *ip,
        _ => Ipv4Addr::UNSPECIFIED,
    }
}

/// RFC 2131 section 4.3.2: SELECTING (server id + requested address),
/// INIT-REBOOT (requested address only), RENEWING/REBINDING (ciaddr).
fn handle_request(req: &Message, lease: &Lease, server_id: Ipv4Addr) -> Decision {
    if let Some(DhcpOption::ServerIdentifier(chosen)) = req.opts().get(OptionCode::ServerIdentifier)
    {
        if *chosen != server_id {
            return Decision::Silent(Silence::OtherServer(lease.mac, *chosen));
        }
    }
    let requested = match requested_ip(req) {
        ip if ip.is_unspecified() => req.ciaddr(),
        ip => ip,
    };
    if requested.is_unspecified() {
        Decision::Silent(Silence::NoAddress(lease.mac))
    } else if requested == lease.ip {
        Decision::Reply(reply(req, lease, server_id, MessageType::Ack))
    } else {
        debug!(mac = %lease.mac, %requested, assigned = %lease.ip, "REQUEST for a foreign address");
        Decision::Reply(nak(req, server_id))
    }
}

/// The reply skeleton shared by every answer: same xid, flags, giaddr, chaddr.
fn skeleton(req: &Message, msg_type: MessageType, server_id: Ipv4Addr) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_htype(req.htype())
        .set_xid(req.xid())
        .set_flags(req.flags())
        .set_giaddr(req.giaddr())
        .set_chaddr(req.chaddr());
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(msg_type));
    opts.insert(DhcpOption::ServerIdentifier(server_id));
    // RFC 6842: echo the client identifier.
    if let Some(DhcpOption::ClientIdentifier(id)) = req.opts().get(OptionCode::ClientIdentifier) {
        opts.insert(DhcpOption::ClientIdentifier(id.clone()));
    }
    m
}

fn nak(req: &Message, server_id: Ipv4Addr) -> Message {
    let mut m = skeleton(req, MessageType::Nak, server_id);
    // A NAK is always broadcast (RFC 2131 4.3.2).
    m.set_flags(Flags::default().set_broadcast());
    m
}

/// OFFER/ACK carrying the lease. For INFORM (ciaddr set, no yiaddr), the
/// lease-time options are left out as RFC 2131 requires.
fn reply(req: &Message, lease: &Lease, server_id: Ipv4Addr, msg_type: MessageType) -> Message {
    let inform = req.opts().msg_type() == Some(MessageType::Inform);
    let mut m = skeleton(req, msg_type, server_id);
    m.set_ciaddr(req.ciaddr());
    if !inform {
        m.set_yiaddr(lease.ip);
    }
    let opts = m.opts_mut();
    opts.insert(DhcpOption::SubnetMask(lease.netmask()));
    if let Some(bcast) = lease.broadcast() {
        opts.insert(DhcpOption::BroadcastAddr(bcast));
    }
    if let Some(router) = lease.router {
        opts.insert(DhcpOption::Router(vec![router]));
    }
    if !lease.dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(lease.dns.clone()));
    }
    if let Some(hostname) = &lease.hostname {
        opts.insert(DhcpOption::Hostname(hostname.clone()));
    }
    if let Some(domain) = &lease.domain {
        opts.insert(DhcpOption::DomainName(domain.clone()));
    }
    if let Some(mtu) = lease.mtu {
        opts.insert(DhcpOption::InterfaceMtu(mtu));
    }
    if !inform {
        opts.insert(DhcpOption::AddressLeaseTime(lease.lease_secs));
        if lease.lease_secs != u32::MAX {
            let secs = u64::from(lease.lease_secs);
            opts.insert(DhcpOption::Renewal(
                u32::try_from(secs / 2).unwrap_or(u32::MAX),
            ));
            opts.insert(DhcpOption::Rebinding(
                u32::try_from(secs * 7 / 8).unwrap_or(u32::MAX),
            ));
        }
    }
    opts.insert(DhcpOption::ClasslessStaticRoute(lease.classless_routes()));
    m
}

/// Where a reply goes (RFC 2131 section 4.1, without relay support): to
/// `ciaddr` when the client has a working address (renewal, INFORM) and the
/// reply is not a NAK; to `yiaddr` when the client did not set the
/// BROADCAST flag; otherwise (BROADCAST flag, NAK) to 255.255.255.255. The
/// frame itself always goes to the client's own MAC (`chaddr`, see
/// [`crate::l2`]), so no other guest of the network receives it.
pub fn reply_destination(reply: &Message) -> SocketAddrV4 {
    let is_nak = reply.opts().msg_type() == Some(MessageType::Nak);
    let ip = if is_nak {
        Ipv4Addr::BROADCAST
    } else if !reply.ciaddr().is_unspecified() {
        reply.ciaddr()
    } else if !reply.flags().broadcast() && !reply.yiaddr().is_unspecified() {
        reply.yiaddr()
    } else {
        Ipv4Addr::BROADCAST
    };
    SocketAddrV4::new(ip, CLIENT_PORT)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::METADATA_IP;
    use ipnet::Ipv4Net;

    pub(crate) const MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 1]);
    const IP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 5);
    const GW: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);

    pub(crate) fn table() -> HashMap<MacAddr, Lease> {
        let lease = Lease {
            router: Some(GW),
            dns: vec![Ipv4Addr::new(10, 9, 0, 2), Ipv4Addr::new(10, 9, 0, 3)],
            mtu: Some(1450),
            hostname: Some("vm-one".into()),
            domain: Some("nubo.internal".into()),
            lease_secs: 3600,
            routes: vec![(
                "10.200.0.0/16".parse().unwrap(),
                Ipv4Addr::new(10, 9, 0, 254),
            )],
            ..Lease::new(MAC, IP, 24)
        };
        HashMap::from([(MAC, lease)])
    }

    fn request(mac: MacAddr, t: MessageType) -> Message {
        let mut m = Message::new_with_id(
            0xdead_beef,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac.0,
        );
        m.opts_mut().insert(DhcpOption::MessageType(t));
        m
    }

    fn opt(m: &Message, code: OptionCode) -> Option<&DhcpOption> {
        m.opts().get(code)
    }

    #[test]
    fn discover_gets_full_offer() {
        let mut req = request(MAC, MessageType::Discover);
        req.opts_mut()
            .insert(DhcpOption::ClientIdentifier(vec![1, 2, 0, 0, 0, 0, 1]));
        let r = respond(&table(), &req, METADATA_IP).expect("offer");
        assert_eq!(r.opcode(), Opcode::BootReply);
        assert_eq!(r.xid(), 0xdead_beef);
        assert_eq!(r.chaddr(), &MAC.0);
        assert_eq!(r.yiaddr(), IP);
        assert_eq!(r.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(
            opt(&r, OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(METADATA_IP))
        );
        assert_eq!(
            opt(&r, OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
        );
        assert_eq!(
            opt(&r, OptionCode::BroadcastAddr),
            Some(&DhcpOption::BroadcastAddr(Ipv4Addr::new(10, 9, 0, 255)))
        );
        assert_eq!(
            opt(&r, OptionCode::Router),
            Some(&DhcpOption::Router(vec![GW]))
        );
        assert_eq!(
            opt(&r, OptionCode::DomainNameServer),
            Some(&DhcpOption::DomainNameServer(vec![
                Ipv4Addr::new(10, 9, 0, 2),
                Ipv4Addr::new(10, 9, 0, 3)
            ]))
        );
        assert_eq!(
            opt(&r, OptionCode::Hostname),
            Some(&DhcpOption::Hostname("vm-one".into()))
        );
        assert_eq!(
            opt(&r, OptionCode::DomainName),
            Some(&DhcpOption::DomainName("nubo.internal".into()))
        );
        assert_eq!(
            opt(&r, OptionCode::InterfaceMtu),
            Some(&DhcpOption::InterfaceMtu(1450))
        );
        assert_eq!(
            opt(&r, OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(3600))
        );
        assert_eq!(
            opt(&r, OptionCode::Renewal),
            Some(&DhcpOption::Renewal(1800))
        );
        assert_eq!(
            opt(&r, OptionCode::Rebinding),
            Some(&DhcpOption::Rebinding(3150))
        );
        assert_eq!(
            opt(&r, OptionCode::ClientIdentifier),
            Some(&DhcpOption::ClientIdentifier(vec![1, 2, 0, 0, 0, 0, 1]))
        );
        let routes: Vec<(Ipv4Net, Ipv4Addr)> = vec![
            (
                "10.200.0.0/16".parse().unwrap(),
                Ipv4Addr::new(10, 9, 0, 254),
            ),
            ("169.254.169.254/32".parse().unwrap(), Ipv4Addr::UNSPECIFIED),
            ("0.0.0.0/0".parse().unwrap(), GW),
        ];
        assert_eq!(
            opt(&r, OptionCode::ClasslessStaticRoute),
            Some(&DhcpOption::ClasslessStaticRoute(routes))
        );
        // No BROADCAST flag: IP unicast to the offered address.
        assert_eq!(reply_destination(&r), SocketAddrV4::new(IP, 68));
        // The reply survives an encode/decode round trip through the wire format.
        let bytes = crate::packet::encode(&r).unwrap();
        let mut back = bytes.clone();
        back[0] = 1; // pretend it is a request so decode_request accepts it
        assert_eq!(
            crate::packet::decode_request(&back).unwrap().opts(),
            r.opts()
        );
    }

    #[test]
    fn option_121_is_encoded_as_rfc_3442_says() {
        let req = request(MAC, MessageType::Discover);
        let r = respond(&table(), &req, METADATA_IP).expect("offer");
        let bytes = crate::packet::encode(&r).unwrap();
        // Options follow the 236-byte header and the 4-byte magic cookie.
        let mut i = 240;
        let mut found = None;
        while i < bytes.len() && bytes[i] != 255 {
            if bytes[i] == 0 {
                i += 1;
                continue;
            }
            let len = usize::from(bytes[i + 1]);
            if bytes[i] == 121 {
                found = Some(bytes[i + 2..i + 2 + len].to_vec());
            }
            i += 2 + len;
        }
        // Each route: prefix length, the significant octets of the
        // destination, then the router.
        let want: Vec<u8> = [
            &[16, 10, 200, 10, 9, 0, 254][..],
            &[32, 169, 254, 169, 254, 0, 0, 0, 0],
            &[0, 10, 9, 0, 1],
        ]
        .concat();
        assert_eq!(found, Some(want));
    }

    #[test]
    fn unknown_mac_gets_silence() {
        for t in [
            MessageType::Discover,
            MessageType::Request,
            MessageType::Inform,
        ] {
            let mut req = request(MacAddr([0x02, 0, 0, 0, 0, 2]), t);
            req.opts_mut().insert(DhcpOption::RequestedIpAddress(IP));
            assert!(respond(&table(), &req, METADATA_IP).is_none(), "{t:?}");
        }
    }

    #[test]
    fn selecting_request_for_our_address_is_acked() {
        let mut req = request(MAC, MessageType::Request);
        req.opts_mut()
            .insert(DhcpOption::ServerIdentifier(METADATA_IP));
        req.opts_mut().insert(DhcpOption::RequestedIpAddress(IP));
        let r = respond(&table(), &req, METADATA_IP).expect("ack");
        assert_eq!(r.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(r.yiaddr(), IP);
        // No BROADCAST flag: unicast to the offered address.
        assert_eq!(reply_destination(&r), SocketAddrV4::new(IP, 68));
        // With it, IP broadcast (still sent to the client's MAC only).
        req.set_flags(Flags::default().set_broadcast());
        let r = respond(&table(), &req, METADATA_IP).expect("ack");
        assert!(r.flags().broadcast());
        assert_eq!(reply_destination(&r).ip(), &Ipv4Addr::BROADCAST);
    }

    #[test]
    fn request_for_other_server_is_ignored() {
        let mut req = request(MAC, MessageType::Request);
        req.opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 9, 0, 99)));
        req.opts_mut().insert(DhcpOption::RequestedIpAddress(IP));
        assert!(respond(&table(), &req, METADATA_IP).is_none());
    }

    #[test]
    fn request_for_foreign_address_is_naked() {
        let mut req = request(MAC, MessageType::Request);
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 9, 0, 77)));
        req.opts_mut()
            .insert(DhcpOption::ClientIdentifier(vec![1, 2, 3]));
        let r = respond(&table(), &req, METADATA_IP).expect("nak");
        assert_eq!(r.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(r.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(r.flags().broadcast());
        assert!(opt(&r, OptionCode::SubnetMask).is_none());
        assert!(opt(&r, OptionCode::ClientIdentifier).is_some());
        assert_eq!(reply_destination(&r).ip(), &Ipv4Addr::BROADCAST);
    }

    #[test]
    fn renewal_is_acked_unicast_and_foreign_renewal_naked() {
        let mut req = request(MAC, MessageType::Request);
        req.set_ciaddr(IP);
        let r = respond(&table(), &req, METADATA_IP).expect("ack");
        assert_eq!(r.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(r.ciaddr(), IP);
        assert_eq!(r.yiaddr(), IP);
        assert_eq!(reply_destination(&r), SocketAddrV4::new(IP, 68));

        req.set_ciaddr(Ipv4Addr::new(10, 9, 0, 6));
        let r = respond(&table(), &req, METADATA_IP).expect("nak");
        assert_eq!(r.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(reply_destination(&r).ip(), &Ipv4Addr::BROADCAST);
    }

    #[test]
    fn request_without_any_address_is_ignored() {
        let req = request(MAC, MessageType::Request);
        assert!(respond(&table(), &req, METADATA_IP).is_none());
    }

    #[test]
    fn inform_gets_config_without_lease() {
        let mut req = request(MAC, MessageType::Inform);
        req.set_ciaddr(IP);
        let r = respond(&table(), &req, METADATA_IP).expect("ack");
        assert_eq!(r.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(r.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(opt(&r, OptionCode::AddressLeaseTime).is_none());
        assert!(opt(&r, OptionCode::Renewal).is_none());
        assert!(opt(&r, OptionCode::Router).is_some());
        assert_eq!(reply_destination(&r), SocketAddrV4::new(IP, 68));
    }

    #[test]
    fn release_decline_and_server_messages_get_no_reply() {
        for t in [
            MessageType::Release,
            MessageType::Decline,
            MessageType::Offer,
            MessageType::Ack,
            MessageType::Nak,
        ] {
            let mut req = request(MAC, t);
            req.set_ciaddr(IP);
            assert!(respond(&table(), &req, METADATA_IP).is_none(), "{t:?}");
        }
    }

    #[test]
    fn bootreply_relayed_and_bootp_requests_are_ignored() {
        let mut reply = request(MAC, MessageType::Discover);
        reply.set_opcode(Opcode::BootReply);
        assert!(respond(&table(), &reply, METADATA_IP).is_none());

        let mut relayed = request(MAC, MessageType::Discover);
        relayed.set_giaddr(Ipv4Addr::new(10, 9, 0, 1));
        assert!(respond(&table(), &relayed, METADATA_IP).is_none());

        let mut bootp = request(MAC, MessageType::Discover);
        bootp.opts_mut().remove(OptionCode::MessageType);
        assert!(respond(&table(), &bootp, METADATA_IP).is_none());
    }

    #[test]
    fn silences_carry_their_reason() {
        let t = table();
        let other = MacAddr([0x02, 0, 0, 0, 0, 9]);
        assert_eq!(
            decide(&t, &request(other, MessageType::Discover), METADATA_IP),
            Decision::Silent(Silence::UnknownMac(other))
        );
        let mut rel = request(MAC, MessageType::Release);
        rel.set_ciaddr(IP);
        assert_eq!(
            decide(&t, &rel, METADATA_IP),
            Decision::Silent(Silence::Released(MAC, IP))
        );
        let mut dec = request(MAC, MessageType::Decline);
        dec.opts_mut().insert(DhcpOption::RequestedIpAddress(IP));
        assert_eq!(
            decide(&t, &dec, METADATA_IP),
            Decision::Silent(Silence::Declined(MAC, IP))
        );
        let mut sel = request(MAC, MessageType::Request);
        sel.opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 9, 0, 99)));
        assert_eq!(
            decide(&t, &sel, METADATA_IP),
            Decision::Silent(Silence::OtherServer(MAC, Ipv4Addr::new(10, 9, 0, 99)))
        );
    }

    #[test]
    fn infinite_lease_has_no_timers() {
        let mut t = table();
        if let Some(l) = t.get_mut(&MAC) {
            l.lease_secs = u32::MAX;
        }
        let r = respond(&t, &request(MAC, MessageType::Discover), METADATA_IP).expect("offer");
        assert_eq!(
            opt(&r, OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(u32::MAX))
        );
        assert!(opt(&r, OptionCode::Renewal).is_none());
        assert!(opt(&r, OptionCode::Rebinding).is_none());
    }
}
