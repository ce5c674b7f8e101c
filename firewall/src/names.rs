//! nft identifiers derived from cloud ids, and the ruleset fingerprint hash.

/// Longest cloud id used verbatim inside an nft identifier.
const MAX_VERBATIM: usize = 64;

/// Turns a cloud id (port or group id) into a fragment that is safe inside an
/// nft identifier. Ids made of `[A-Za-z0-9_-]` (UUIDs, slugs) of at most 64
/// characters are kept as they are, so operators recognise them in
/// `nft list`; anything else becomes `h` + a 64-bit hash of the id, which is
/// deterministic and cannot contain characters nft would misparse.
pub fn ident(id: &str) -> String {
    let verbatim = !id.is_empty()
        && id.len() <= MAX_VERBATIM
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if verbatim {
        id.to_owned()
    } else {
        format!("h{:016x}", fnv1a64(id.as_bytes()))
    }
}

/// Whether `name` is acceptable as a Linux interface name inside an nft
/// string literal (1..=15 bytes, printable ASCII, no quote, slash or space).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'/' && b != b'\\' && b != b'*')
}

pub use nubo_netid::fnv1a64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_kept() {
        let id = "3f2a1c9e-7b1d-4e2a-9c3b-0a1b2c3d4e5f";
        assert_eq!(ident(id), id);
    }

    #[test]
    fn odd_ids_are_hashed_deterministically() {
        let a = ident("web servers");
        assert!(a.starts_with('h') && a.len() == 17, "{a}");
        assert_eq!(a, ident("web servers"));
        assert_ne!(a, ident("web-servers"));
        assert!(ident("").starts_with('h'));
        assert!(ident(&"x".repeat(65)).starts_with('h'));
    }

    #[test]
    fn ifnames_are_checked() {
        assert!(valid_ifname("tap3f2a1c9e-7b"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("a-very-long-interface"));
        assert!(!valid_ifname("tap\"x"));
        assert!(!valid_ifname("tap x"));
        assert!(!valid_ifname("vx-*"));
    }

    #[test]
    fn fnv_known_vector() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
