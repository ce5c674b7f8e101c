//! Wire decoding with the checks a hostile guest calls for, and encoding.

use dhcproto::v4::{HType, Message, Opcode};
use dhcproto::{Decodable, Decoder, Encodable};

use crate::error::DecodeError;

/// Fixed BOOTP header (236 bytes) plus the 4-byte magic cookie.
pub const MIN_PACKET: usize = 240;
/// Largest datagram accepted; real clients stay far below an Ethernet MTU.
pub const MAX_PACKET: usize = 1500;
/// The DHCP magic cookie (RFC 2131 section 3).
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];

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
    let msg = Message::decode(&mut Decoder::new(bytes))
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
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
        m.opts_mut().insert(DhcpOption::MessageType(MessageType::Discover));
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
    fn rejects_structural_problems() {
        let good = discover();
        assert_eq!(decode_request(&good[..100]), Err(DecodeError::TooShort(100)));
        assert_eq!(decode_request(&vec![0u8; 2000]), Err(DecodeError::TooLong(2000)));

        let mut no_magic = good.clone();
        no_magic[237] = 0;
        assert_eq!(decode_request(&no_magic), Err(DecodeError::NoMagicCookie));

        let mut reply = good.clone();
        reply[0] = 2; // BOOTREPLY
        assert_eq!(decode_request(&reply), Err(DecodeError::NotARequest));

        let mut token_ring = good.clone();
        token_ring[1] = 6;
        assert!(matches!(decode_request(&token_ring), Err(DecodeError::NotEthernet { .. })));

        let mut long_hlen = good;
        long_hlen[2] = 16;
        assert!(matches!(
            decode_request(&long_hlen),
            Err(DecodeError::NotEthernet { hlen: 16, .. })
        ));
    }

    #[test]
    fn truncated_option_is_malformed() {
        let mut bytes = discover()[..240].to_vec();
        bytes.extend_from_slice(&[12, 200, b'x', b'y']); // hostname claims 200 bytes
        assert!(matches!(decode_request(&bytes), Err(DecodeError::Malformed(_))));
    }

    /// Random bytes, and random option areas behind a valid header, must
    /// never panic the decoder nor the responder.
    #[test]
    fn random_input_never_panics() {
        let mut rng = StdRng::seed_from_u64(0x6e75_626f);
        let header = discover()[..240].to_vec();
        let table = crate::respond::tests::table();
        let mut decoded = 0;
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
                    chunk[0] = [1, 3, 6, 12, 50, 51, 53, 54, 55, 61, 81, 82, 121][chunk[0] as usize % 13];
                }
                b.extend_from_slice(&opts);
                b
            };
            if round % 5 == 0 && bytes.len() > 2 {
                bytes[0] = 1;
                bytes[1] = 1;
                bytes[2] = 6;
            }
            if let Ok(msg) = decode_request(&bytes) {
                decoded += 1;
                if let Some(reply) = crate::respond::respond(&table, &msg, crate::METADATA_IP) {
                    encode(&reply).unwrap();
                }
            }
        }
        assert!(decoded > 1000, "fuzzer reached the responder only {decoded} times");
    }
}
