//! Deterministic interface names.

/// Name of the bridge of network `vni`: `nb-<vni>`.
pub fn bridge_name(vni: u32) -> String {
    format!("nb-{vni}")
}

/// Name of the VXLAN device of network `vni`: `vx-<vni>`.
pub fn vxlan_name(vni: u32) -> String {
    format!("vx-{vni}")
}

/// The VNI of a bridge named by [`bridge_name`], `None` for any other name.
pub fn parse_bridge_name(name: &str) -> Option<u32> {
    parse_vni_suffix(name, "nb-")
}

/// The VNI of a VXLAN device named by [`vxlan_name`], `None` for any other
/// name.
pub fn parse_vxlan_name(name: &str) -> Option<u32> {
    parse_vni_suffix(name, "vx-")
}

/// Only canonical decimal suffixes (no sign, no leading zero) are accepted,
/// so that `parse(name(vni)) == Some(vni)` and names we did not produce are
/// never mistaken for ours.
fn parse_vni_suffix(name: &str, prefix: &str) -> Option<u32> {
    let digits = name.strip_prefix(prefix)?;
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for vni in [1, 42, 16_777_215] {
            assert_eq!(parse_bridge_name(&bridge_name(vni)), Some(vni));
            assert_eq!(parse_vxlan_name(&vxlan_name(vni)), Some(vni));
        }
        assert_eq!(bridge_name(16_777_215).len(), 11);
    }

    #[test]
    fn foreign_names_are_not_ours() {
        for name in [
            "nb-",
            "nb-01",
            "nb-x",
            "nb-+1",
            "nb-1a",
            "vx-5",
            "br-5",
            "nb-99999999999",
        ] {
            assert_eq!(parse_bridge_name(name), None, "{name}");
        }
        assert_eq!(parse_vxlan_name("nb-5"), None);
    }
}
