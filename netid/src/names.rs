//! Deterministic interface names of ports.

/// How many hex digits of the port id a tap name carries: `tap` + 11 = 14
/// characters, within the 15-character `IFNAMSIZ` limit.
pub const TAP_HEX_DIGITS: usize = 11;

/// Tap name of a port: `tap` + the first [`TAP_HEX_DIGITS`] hex digits of
/// the port id with dashes removed, lower case. Non-hex characters are
/// dropped too, so the result is always a valid interface name of at most
/// 14 characters.
pub fn tap_name(port_id: &str) -> String {
    let hex: String = port_id
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_lowercase())
        .take(TAP_HEX_DIGITS)
        .collect();
    format!("tap{hex}")
}

/// The 64-bit FNV-1a hash of `data`: stable across versions and
/// machines, for names, MACs and fingerprints every node must derive alike.
/// Not cryptographic.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// [`fnv1a64`] of `parts`, each followed by a 0 byte (so `["ab","c"]` and
/// `["a","bc"]` differ).
pub fn stable_hash(parts: &[&str]) -> u64 {
    let mut bytes = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for part in parts {
        bytes.extend_from_slice(part.as_bytes());
        bytes.push(0);
    }
    fnv1a64(&bytes)
}

/// A device name: `prefix` (2 characters) + 11 hex digits of
/// [`stable_hash`] of `parts`: 13 characters, within `IFNAMSIZ`.
pub fn hashed_name(prefix: &str, parts: &[&str]) -> String {
    format!("{prefix}{:011x}", stable_hash(parts) >> 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_separates_parts_and_is_fixed() {
        assert_ne!(stable_hash(&["ab", "c"]), stable_hash(&["a", "bc"]));
        // FNV-1a of "a\0": fixed forever (names and MACs depend on it).
        assert_eq!(stable_hash(&["a"]), 0x089b_e207_b544_f1e4);
        let n = hashed_name("qr", &["r", "n"]);
        assert_eq!(n.len(), 13);
        assert!(n.starts_with("qr"));
        assert_eq!(n, hashed_name("qr", &["r", "n"]));
    }

    #[test]
    fn tap_name_from_uuid() {
        assert_eq!(
            tap_name("3f2a9c1e-7b4d-4e8a-9f00-1234567890ab"),
            "tap3f2a9c1e7b4"
        );
        assert_eq!(tap_name("ABCDEF01-2345"), "tapabcdef01234");
        assert!(tap_name("3f2a9c1e-7b4d-4e8a-9f00-1234567890ab").len() <= 15);
        assert_eq!(tap_name("12"), "tap12");
    }
}
