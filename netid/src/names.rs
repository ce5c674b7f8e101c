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

#[cfg(test)]
mod tests {
    use super::*;

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
