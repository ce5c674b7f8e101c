//! Wire decoding with the checks a hostile guest calls for, and encoding.

use dhcproto::v4::{HType, Message, Opcode};
use dhcproto::{Decodable, Decoder, Encodable};

use nubo_netid::MacAddr;

use crate::error::DecodeError;

/// Fixed BOOTP header (236 bytes) plus the 4-byte magic cookie.
pub const MIN_PACKET: usize = 240;
/// Largest datagram accepted; real clients stay far below an Ethernet MTU.
pub const MAX_PACKET: usize = 1500;
/// The DHCP magic cookie (RFC 2131 section 3).
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];

/// The client hardware address of what looks like an Ethernet BOOTREQUEST
/// (op 1, htype 1, hlen 6, at least [`MIN_PACKET`] bytes), read straight
/// from the fixed header without decoding anything: lets the server drop
/// requests of unknown or over-quota MACs for the cost of a lookup.
/// `None` for anything else (which then goes through [`decode_request`]).
pub fn peek_chaddr(bytes: &[u8]) -> Option<MacAddr> {
    if bytes.len() < MIN_PACKET || bytes.get(..3)? != [1, 1, 6] {
        return None;
    }
    MacAddr::from_slice(bytes.get(28..34)?)
}

/// Decodes a datagram received on port 67 into a client request.
///
/// Rejects (never panics on) short, oversized, non-DHCP and malformed
/// datagrams, BOOTREPLYs and non-Ethernet hardware addresses.
pub fn decode_request(bytes: &[u8]) -> Result<Message, DecodeError> {
    if bytes.len() < MIN_PACKET {
        return Err(DecodeError::TooShort(bytes.len()));
    }
    if bytes.len() > MAX_PACKET {
        return Err(DecodeError::TooLong(bytes.len()));
    }
    if bytes[236..240] != MAGIC_COOKIE {
        return Err(DecodeError::NoMagicCookie);
    }
    check_options(&bytes[MIN_PACKET..])?;
    // `check_options` rules out every input known to panic dhcproto 0.15 (in
    // debug builds); a parser bug still must not take the server down.
    let decoded = std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(bytes)))
        .map_err(|_| DecodeError::ParserPanic)?;
    let msg = decoded.map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if msg.opcode() != Opcode::BootRequest {
        return Err(DecodeError::NotARequest);
    }
    if msg.htype() != HType::Eth || msg.hlen() != 6 {
        return Err(DecodeError::NotEthernet {
            htype: u8::from(msg.htype()),
            hlen: msg.hlen(),
        });
    }
    Ok(msg)
}

/// Walks the option area (RFC 2132 TLVs, RFC 3396 concatenation of
/// consecutive same-code options) and rejects truncated options and the
/// lengths on which dhcproto 0.15 asserts or underflows.
fn check_options(mut area: &[u8]) -> Result<(), DecodeError> {
    // (code, concatenated length) of the option run being read.
    let mut run: Option<(u8, usize)> = None;
    loop {
        let code = match area.first() {
            None | Some(255) => break,
            Some(0) => {
                area = &area[1..];
                if let Some((c, len)) = run.take() {
                    check_length(c, len)?;
                }
                continue;
            }
            Some(&code) => code,
        };
        let Some(&len) = area.get(1) else {
            return Err(DecodeError::BadOption {
                code,
                len: 0,
                reason: "length byte missing",
            });
        };
        let len = usize::from(len);
        if area.len() < 2 + len {
            return Err(DecodeError::BadOption {
                code,
                len,
                reason: "runs past the end of the datagram",
            });
        }
        area = &area[2 + len..];
        run = match run {
            Some((c, total)) if c == code => Some((c, total + len)),
            Some((c, total)) => {
                check_length(c, total)?;
                Some((code, len))
            }
            None => Some((code, len)),
        };
    }
    match run {
        Some((c, len)) => check_length(c, len),
        None => Ok(()),
    }
}

/// Length rules of the options dhcproto cannot decode safely otherwise.
fn check_length(code: u8, len: usize) -> Result<(), DecodeError> {
    let ok = match code {
        80 => len == 0,        // rapid commit
        81 => len >= 3,        // client FQDN: flags, rcode1, rcode2, name
        94 => len == 3,        // client network interface id
        151 => len >= 1,       // bulk leasequery status code
        152..=155 => len == 4, // bulk leasequery times
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(DecodeError::BadOption {
            code,
            len,
            reason: "invalid length for this option",
        })
    }
}

/// Encodes a reply for the wire.
pub fn encode(msg: &Message) -> Result<Vec<u8>, dhcproto::error::EncodeError> {
    msg.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::{DhcpOption, MessageType};
    use rand::rngs::StdRng;
    use rand::{Rng, RngCore, SeedableRng};
    use std::net::Ipv4Addr;

    fn discover() -> Vec<u8> {
        let mut m = Message::new_with_id(
            7,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[2, 0, 0, 0, 0, 1],
        );
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        m.opts_mut().insert(DhcpOption::Hostname("guest".into()));
        m.to_vec().unwrap()
    }

    #[test]
    fn valid_discover_decodes() {
        let msg = decode_request(&discover()).unwrap();
        assert_eq!(msg.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(msg.chaddr(), &[2, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn chaddr_is_peeked_only_from_ethernet_requests() {
        let d = discover();
        assert_eq!(peek_chaddr(&d), Some(MacAddr([2, 0, 0, 0, 0, 1])));
        let mut reply = d.clone();
        reply[0] = 2;
        assert_eq!(peek_chaddr(&reply), None);
        let mut long_hw = d.clone();
        long_hw[2] = 16;
        assert_eq!(peek_chaddr(&long_hw), None);
        assert_eq!(peek_chaddr(&d[..239]), None);
        assert_eq!(peek_chaddr(&[]), None);
    }

    #[test]
    fn rejects_structural_problems() {
        let good = discover();
        assert_eq!(
            decode_request(&good[..100]),
            Err(DecodeError::TooShort(100))
        );
        assert_eq!(
            decode_request(&vec![0u8; 2000]),
            Err(DecodeError::TooLong(2000))
        );

        let mut no_magic = good.clone();
        no_magic[237] = 0;
        assert_eq!(decode_request(&no_magic), Err(DecodeError::NoMagicCookie));

        let mut reply = good.clone();
        reply[0] = 2; // BOOTREPLY
        assert_eq!(decode_request(&reply), Err(DecodeError::NotARequest));

        let mut token_ring = good.clone();
        token_ring[1] = 6;
        assert!(matches!(
            decode_request(&token_ring),
            Err(DecodeError::NotEthernet { .. })
        ));

        let mut long_hlen = good;
        long_hlen[2] = 16;
        assert!(matches!(
            decode_request(&long_hlen),
            Err(DecodeError::NotEthernet { hlen: 16, .. })
        ));
    }

    #[test]
    fn truncated_option_is_rejected() {
        let mut bytes = discover()[..240].to_vec();
        bytes.extend_from_slice(&[53, 1, 1, 12, 200, b'x', b'y']); // hostname claims 200 bytes
        assert_eq!(
            decode_request(&bytes),
            Err(DecodeError::BadOption {
                code: 12,
                len: 200,
                reason: "runs past the end of the datagram"
            })
        );
        bytes.truncate(243);
        bytes.push(12); // code without length byte
        assert!(matches!(
            decode_request(&bytes),
            Err(DecodeError::BadOption { code: 12, .. })
        ));
    }

    #[test]
    fn options_dhcproto_would_panic_on_are_rejected() {
        for (code, len) in [(81u8, 2u8), (81, 0), (80, 1), (94, 2), (151, 0), (152, 3)] {
            let mut bytes = discover()[..240].to_vec();
            bytes.extend_from_slice(&[53, 1, 1, code, len]);
            bytes.extend(std::iter::repeat_n(0u8, usize::from(len)));
            bytes.push(255);
            assert!(
                matches!(decode_request(&bytes), Err(DecodeError::BadOption { code: c, .. }) if c == code),
                "option {code} len {len}"
            );
        }
        // A FQDN split over two concatenated options (RFC 3396) is fine.
        let mut bytes = discover()[..240].to_vec();
        bytes.extend_from_slice(&[53, 1, 1, 81, 2, 0, 0, 81, 2, 0, 0, 255]);
        assert!(decode_request(&bytes).is_ok());
    }

    #[test]
    fn huge_and_repeated_options_are_handled() {
        let mut bytes = discover()[..240].to_vec();
        bytes.extend_from_slice(&[53, 1, 1]);
        for _ in 0..4 {
            bytes.extend_from_slice(&[12, 255]);
            bytes.extend(std::iter::repeat_n(b'h', 255));
        }
        bytes.push(255);
        let msg = decode_request(&bytes).unwrap();
        match msg.opts().get(dhcproto::v4::OptionCode::Hostname) {
            Some(DhcpOption::Hostname(h)) => assert_eq!(h.len(), 1020),
            other => panic!("hostname not concatenated: {other:?}"),
        }
    }

    /// Random bytes, and random option areas behind a valid header, must
    /// never panic the decoder nor the responder.
    #[test]
    fn random_input_never_panics() {
        let mut rng = StdRng::seed_from_u64(0x6e75_626f);
        let header = discover()[..240].to_vec();
        let table = crate::respond::tests::table();
        let mut accepted = 0;
        for round in 0..200_000 {
            let mut bytes = if round % 2 == 0 {
                let mut b = vec![0u8; rng.random_range(0..1600)];
                rng.fill_bytes(&mut b);
                b
            } else {
                let mut b = header.clone();
                let mut opts = vec![0u8; rng.random_range(0..700)];
                rng.fill_bytes(&mut opts);
                // Bias towards known option codes so their parsers get exercised.
                for chunk in opts.chunks_mut(7) {
                    chunk[0] =
                        [1, 3, 6, 12, 50, 51, 53, 54, 55, 61, 81, 82, 121][chunk[0] as usize % 13];
                }
                b.extend_from_slice(&opts);
                b
            };
            if round % 5 == 0 && bytes.len() > 2 {
                bytes[0] = 1;
                bytes[1] = 1;
                bytes[2] = 6;
            }
            let decoded = decode_request(&bytes);
            assert_ne!(
                decoded.as_ref().err(),
                Some(&DecodeError::ParserPanic),
                "{bytes:?}"
            );
            if let Ok(msg) = decoded {
                accepted += 1;
                if let Some(reply) = crate::respond::respond(&table, &msg, crate::METADATA_IP) {
                    encode(&reply).unwrap();
                }
            }
        }
        assert!(
            accepted > 1000,
            "fuzzer reached the responder only {accepted} times"
        );
    }
}
