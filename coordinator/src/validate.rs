//! Pure validation of API input: names, projects, CIDRs, gateways, SSH keys.
//! Every error is a sentence for a person, mapped to InvalidArgument.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use base64::Engine;
use ipnet::Ipv4Net;
use nubo_common::model::{check_server_metadata, ServerMetadataError, Timestamp};
use nubo_common::ProjectId;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};

/// An optional RFC 3339 time of a request (`field` names it in the error):
/// empty is `None`. Pure.
pub fn optional_time(field: &str, t: &str) -> ApiResult<Option<Timestamp>> {
    match t.trim() {
        "" => Ok(None),
        t => chrono::DateTime::parse_from_rfc3339(t)
            .map(|t| Some(t.with_timezone(&chrono::Utc)))
            .map_err(|e| {
                ApiError::InvalidArgument(format!("{field} {t:?} is not an RFC 3339 time: {e}"))
            }),
    }
}

/// Checks a complete set of metadata (a server's, a volume's, a
/// snapshot's): too many items is a quota refusal (ResourceExhausted, as
/// Nova's `metadata_items` quota), a bad key or value invalid input.
pub fn metadata(m: &BTreeMap<String, String>) -> ApiResult<()> {
    check_server_metadata(m).map_err(|e| match e {
        ServerMetadataError::TooMany { .. } => ApiError::ResourceExhausted(e.to_string()),
        _ => ApiError::InvalidArgument(e.to_string()),
    })
}

/// A description (volume, snapshot, port): at most 255 characters.
pub fn description(d: &str) -> ApiResult<()> {
    if d.chars().count() > 255 {
        return Err(ApiError::InvalidArgument(
            "description is longer than 255 characters".into(),
        ));
    }
    Ok(())
}

/// The project of a request: empty means "default".
///
/// With `auth = "token"`, under an authenticated caller (see
/// [`crate::caller`]): empty means the token's project, and the caller must
/// be allowed the call there (another project answers `NotFound`).
pub fn project(s: &str) -> ApiResult<ProjectId> {
    crate::caller::scope(s, ProjectId::default_project)
}

/// Checks a resource name: 1..=63 characters of letters, digits, `-`, `_`,
/// `.`, starting with a letter or digit, and not parseable as a UUID (so a
/// `ref` is never ambiguous between an id and a name).
pub fn name(kind: &str, s: &str) -> ApiResult<()> {
    let bad = |why: &str| {
        Err(ApiError::InvalidArgument(format!(
            "{kind} name {s:?} {why}"
        )))
    };
    if s.is_empty() {
        return Err(ApiError::InvalidArgument(format!(
            "{kind} name must not be empty"
        )));
    }
    if s.len() > 63 {
        return bad("is longer than 63 characters");
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return bad("must start with a letter or digit");
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return bad("may contain only letters, digits, '-', '_' and '.'");
    }
    if uuid::Uuid::parse_str(s).is_ok() {
        return bad("looks like an id; choose a name that is not a UUID");
    }
    Ok(())
}

/// Most characters of a volume snapshot name (Cinder's 255).
pub const MAX_SNAPSHOT_NAME: usize = 255;

/// Checks a volume snapshot name: as [`name`] (it is part of the
/// snapshot's etcd key), but up to [`MAX_SNAPSHOT_NAME`] characters as in
/// Cinder (a name longer than 63 characters keeps its RBD snapshot under
/// `snapshot-<id>`).
pub fn snapshot_name(s: &str) -> ApiResult<()> {
    if s.len() <= 63 {
        return name("snapshot", s);
    }
    if s.len() > MAX_SNAPSHOT_NAME {
        return Err(ApiError::InvalidArgument(format!(
            "snapshot name {s:?} is longer than {MAX_SNAPSHOT_NAME} characters"
        )));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) || !s.chars().all(allowed) {
        return Err(ApiError::InvalidArgument(format!(
            "snapshot name {s:?} must start with a letter or digit and may contain only letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(())
}

/// Most characters of a server name (as Nova's display names).
pub const MAX_SERVER_NAME: usize = 255;

/// Checks a server name: a display name, not a hostname, so any Unicode
/// text as in Nova (1 to [`MAX_SERVER_NAME`] characters, no control
/// characters, no leading or trailing whitespace, not a UUID). Agents
/// derive the guest's hostname from it as a DNS label, falling back to
/// one made from the id when nothing of it is left.
pub fn server_name(s: &str) -> ApiResult<()> {
    let bad = |why: &str| {
        Err(ApiError::InvalidArgument(format!(
            "server name {s:?} {why}"
        )))
    };
    if s.is_empty() {
        return bad("must not be empty");
    }
    if s.chars().count() > MAX_SERVER_NAME {
        return bad(&format!("is longer than {MAX_SERVER_NAME} characters"));
    }
    if s.chars().any(char::is_control) {
        return bad("contains control characters");
    }
    if s.trim() != s {
        return bad("has leading or trailing whitespace");
    }
    if uuid::Uuid::parse_str(s).is_ok() {
        return bad("looks like an id; choose a name that is not a UUID");
    }
    Ok(())
}

/// Parses an IPv4 network in CIDR notation that can hold instances
/// (prefix /8 to /29, no host bits set).
pub fn cidr(s: &str) -> ApiResult<Ipv4Net> {
    let net: Ipv4Net = s
        .trim()
        .parse()
        .map_err(|_| ApiError::InvalidArgument(format!("cidr {s} is not a valid IPv4 network")))?;
    if net.prefix_len() > 29 {
        return Err(ApiError::InvalidArgument(format!(
            "cidr {s} is too small: use a prefix of /29 or shorter"
        )));
    }
    if net.prefix_len() < 8 {
        return Err(ApiError::InvalidArgument(format!(
            "cidr {s} is too large: use a prefix of /8 or longer"
        )));
    }
    if net.network() != net.addr() {
        return Err(ApiError::InvalidArgument(format!(
            "cidr {s} has host bits set; did you mean {}?",
            net.trunc()
        )));
    }
    Ok(net)
}

/// The first network in `existing` (name, cidr) that overlaps `new`.
pub fn find_overlap(new: Ipv4Net, existing: &[(String, Ipv4Net)]) -> Option<&(String, Ipv4Net)> {
    existing
        .iter()
        .find(|(_, c)| c.contains(&new.network()) || new.contains(&c.network()))
}

/// The gateway of a new network: empty = first host address, "none" = no
/// gateway, otherwise an address inside the network that is not its
/// network or broadcast address.
pub fn gateway(s: &str, net: Ipv4Net) -> ApiResult<Option<Ipv4Addr>> {
    match s.trim() {
        "" => Ok(net.hosts().next()),
        "none" => Ok(None),
        other => {
            let ip: Ipv4Addr = other.parse().map_err(|_| {
                ApiError::InvalidArgument(format!("gateway {other} is not an IPv4 address"))
            })?;
            if !net.contains(&ip) || ip == net.network() || ip == net.broadcast() {
                return Err(ApiError::InvalidArgument(format!(
                    "gateway {ip} is not a host address of {net}"
                )));
            }
            Ok(Some(ip))
        }
    }
}

/// Parses a list of DNS server addresses.
pub fn dns(list: &[String]) -> ApiResult<Vec<Ipv4Addr>> {
    list.iter()
        .map(|s| {
            s.trim().parse().map_err(|_| {
                ApiError::InvalidArgument(format!("dns server {s} is not an IPv4 address"))
            })
        })
        .collect()
}

/// Most static routes a subnet hands out (Neutron's default
/// `max_subnet_host_routes`; they fit DHCP option 121 with room to spare).
pub const MAX_HOST_ROUTES: usize = 20;

/// Parses a subnet's static routes `(destination CIDR, nexthop)`: IPv4,
/// destinations normalised and unique, at most [`MAX_HOST_ROUTES`].
pub fn host_routes(list: &[(String, String)]) -> ApiResult<Vec<nubo_common::model::HostRoute>> {
    if list.len() > MAX_HOST_ROUTES {
        return Err(ApiError::InvalidArgument(format!(
            "{} host routes: at most {MAX_HOST_ROUTES}",
            list.len()
        )));
    }
    let mut out: Vec<nubo_common::model::HostRoute> = Vec::with_capacity(list.len());
    for (dest, hop) in list {
        let destination: Ipv4Net = dest.trim().parse().map_err(|_| {
            ApiError::InvalidArgument(format!(
                "host route destination {dest} is not an IPv4 network"
            ))
        })?;
        if destination.trunc() != destination {
            return Err(ApiError::InvalidArgument(format!(
                "host route destination {dest} has host bits set (did you mean {}?)",
                destination.trunc()
            )));
        }
        let nexthop: Ipv4Addr = hop.trim().parse().map_err(|_| {
            ApiError::InvalidArgument(format!("host route nexthop {hop} is not an IPv4 address"))
        })?;
        if out.iter().any(|r| r.destination == destination) {
            return Err(ApiError::InvalidArgument(format!(
                "two host routes to {destination}"
            )));
        }
        out.push(nubo_common::model::HostRoute {
            destination,
            nexthop,
        });
    }
    Ok(out)
}

/// Parses a subnet's allocation pools `(first, last)`: each inside the
/// host addresses of `cidr`, first <= last, disjoint, the gateway in none.
/// Returned sorted.
pub fn allocation_pools(
    list: &[(String, String)],
    cidr: Ipv4Net,
    gateway: Option<Ipv4Addr>,
) -> ApiResult<Vec<(Ipv4Addr, Ipv4Addr)>> {
    let addr = |s: &str| -> ApiResult<Ipv4Addr> {
        s.trim().parse().map_err(|_| {
            ApiError::InvalidArgument(format!("allocation pool address {s} is not IPv4"))
        })
    };
    let host = |ip: Ipv4Addr| cidr.contains(&ip) && ip != cidr.network() && ip != cidr.broadcast();
    let mut out = Vec::with_capacity(list.len());
    for (a, b) in list {
        let (a, b) = (addr(a)?, addr(b)?);
        if a > b || !host(a) || !host(b) {
            return Err(ApiError::InvalidArgument(format!(
                "allocation pool {a}-{b} is not a range of host addresses of {cidr}"
            )));
        }
        if let Some(g) = gateway.filter(|g| (a..=b).contains(g)) {
            return Err(ApiError::InvalidArgument(format!(
                "allocation pool {a}-{b} holds the gateway {g}"
            )));
        }
        out.push((a, b));
    }
    out.sort();
    if let Some(w) = out.windows(2).find(|w| w[1].0 <= w[0].1) {
        return Err(ApiError::InvalidArgument(format!(
            "allocation pools {}-{} and {}-{} overlap",
            w[0].0, w[0].1, w[1].0, w[1].1
        )));
    }
    Ok(out)
}

/// Key types accepted in keypairs.
const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Validates an OpenSSH public key line (`type base64 [comment]`) and returns
/// it normalised (one line, trimmed) with its fingerprint as printed by
/// `ssh-keygen -l -E sha256` (`SHA256:` + unpadded base64 of the blob's SHA-256).
pub fn ssh_public_key(line: &str) -> ApiResult<(String, String)> {
    let line = line.trim();
    let bad = |why: String| {
        Err(ApiError::InvalidArgument(format!(
            "public key is not valid: {why}"
        )))
    };
    if line.contains('\n') {
        return bad("it must be a single line".into());
    }
    let mut parts = line.split_whitespace();
    let (Some(kind), Some(b64)) = (parts.next(), parts.next()) else {
        return bad(
            "expected \"<type> <base64> [comment]\", e.g. \"ssh-ed25519 AAAA... me@host\"".into(),
        );
    };
    if !SSH_KEY_TYPES.contains(&kind) {
        return bad(format!("unsupported key type {kind:?}"));
    }
    let Ok(blob) = base64::engine::general_purpose::STANDARD.decode(b64) else {
        return bad("the key data is not base64".into());
    };
    // The blob starts with the key type as an SSH string (u32 length + bytes).
    let embedded = blob
        .get(0..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .and_then(|n| blob.get(4..4 + n));
    if embedded != Some(kind.as_bytes()) {
        return bad(format!("the key data does not contain a {kind} key"));
    }
    let digest = Sha256::digest(&blob);
    let fp = format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    );
    Ok((line.to_string(), fp))
}

/// Longest accepted client token.
pub const MAX_CLIENT_TOKEN: usize = 128;

/// Checks an idempotency token of a create request: empty (no
/// idempotency) or 1..=128 characters of letters, digits, `-`, `_`, `.`
/// (it becomes an etcd key segment). Returns `None` when empty.
pub fn client_token(s: &str) -> ApiResult<Option<&str>> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() > MAX_CLIENT_TOKEN {
        return Err(ApiError::InvalidArgument(format!(
            "client_token is longer than {MAX_CLIENT_TOKEN} characters"
        )));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ApiError::InvalidArgument(format!(
            "client_token {s:?} may only contain letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(Some(s))
}

#[cfg(test)]
mod tests {

    #[test]
    fn snapshot_names_are_names_up_to_cinders_255_characters() {
        let long = format!("tempest-{}-Snapshot-1816793829", "A".repeat(40));
        assert!(long.len() > 63);
        assert!(snapshot_name(&long).is_ok());
        assert!(snapshot_name("s1").is_ok());
        assert!(snapshot_name(&"a".repeat(255)).is_ok());
        assert!(snapshot_name(&"a".repeat(256)).is_err());
        assert!(snapshot_name(&format!("{long}/x")).is_err());
        assert!(snapshot_name(&format!("-{long}")).is_err());
        assert!(snapshot_name("").is_err());
    }
    use super::*;

    #[test]
    fn projects_default_and_validate() {
        assert_eq!(project("").unwrap().as_str(), "default");
        assert_eq!(project("p1").unwrap().as_str(), "p1");
        assert!(project("a/b").is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(name("network", "net-1.a_b").is_ok());
        assert!(name("network", "").is_err());
        assert!(name("network", "has space").is_err());
        assert!(name("network", "-x").is_err());
        assert!(name("network", &uuid::Uuid::new_v4().to_string()).is_err());
    }

    #[test]
    fn server_names_are_display_names() {
        for ok in ["web-1", "tempest-₡-1", "Íñstáñcé", "my server"] {
            assert!(server_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", " x", "x ", "a\nb", &"x".repeat(256)] {
            assert!(server_name(bad).is_err(), "{bad:?}");
        }
        assert!(server_name(&uuid::Uuid::new_v4().to_string()).is_err());
        assert!(server_name(&"é".repeat(255)).is_ok());
    }

    #[test]
    fn cidrs_are_validated_with_readable_errors() {
        assert_eq!(cidr("10.0.0.0/24").unwrap().to_string(), "10.0.0.0/24");
        let e = cidr("10.0.0.0/33").unwrap_err().to_string();
        assert_eq!(e, "cidr 10.0.0.0/33 is not a valid IPv4 network");
        assert!(cidr("fd00::/64").is_err());
        assert!(cidr("10.0.0.0/30")
            .unwrap_err()
            .to_string()
            .contains("too small"));
        assert!(cidr("10.0.0.5/24")
            .unwrap_err()
            .to_string()
            .contains("10.0.0.0/24"));
    }

    #[test]
    fn overlaps_are_found_both_ways() {
        let existing = vec![
            ("a".to_string(), "10.1.0.0/16".parse().unwrap()),
            ("b".to_string(), "192.168.0.0/24".parse().unwrap()),
        ];
        let hit = find_overlap("10.1.0.0/24".parse().unwrap(), &existing).unwrap();
        assert_eq!(hit.0, "a");
        let hit = find_overlap("192.168.0.0/16".parse().unwrap(), &existing).unwrap();
        assert_eq!(hit.0, "b");
        assert!(find_overlap("10.2.0.0/16".parse().unwrap(), &existing).is_none());
    }

    #[test]
    fn allocation_pools_are_inside_disjoint_and_leave_the_gateway() {
        let net: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        let gw = Some("10.0.0.1".parse().unwrap());
        let p = |a: &str, b: &str| (a.to_string(), b.to_string());
        let ok = allocation_pools(
            &[p("10.0.0.100", "10.0.0.200"), p("10.0.0.2", "10.0.0.9")],
            net,
            gw,
        )
        .unwrap();
        assert_eq!(ok[0].0.to_string(), "10.0.0.2");
        assert!(allocation_pools(&[], net, gw).unwrap().is_empty());
        for bad in [
            vec![p("10.0.0.1", "10.0.0.9")],
            vec![p("10.0.0.9", "10.0.0.2")],
            vec![p("10.0.0.200", "10.0.0.255")],
            vec![p("10.0.1.2", "10.0.1.9")],
            vec![p("10.0.0.2", "10.0.0.9"), p("10.0.0.9", "10.0.0.20")],
            vec![p("x", "10.0.0.9")],
        ] {
            assert!(allocation_pools(&bad, net, gw).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_routes_are_parsed_and_checked() {
        let r = |d: &str, h: &str| (d.to_string(), h.to_string());
        let ok = host_routes(&[r("10.9.0.0/16", "10.0.0.5"), r("0.0.0.0/0", "10.0.0.1")]).unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].destination.to_string(), "10.9.0.0/16");
        for bad in [
            vec![r("10.9.0.1/16", "10.0.0.5")],
            vec![r("nope", "10.0.0.5")],
            vec![r("10.9.0.0/16", "x")],
            vec![r("10.9.0.0/16", "10.0.0.5"), r("10.9.0.0/16", "10.0.0.6")],
            (0..=MAX_HOST_ROUTES)
                .map(|i| r(&format!("10.{i}.0.0/16"), "10.0.0.5"))
                .collect(),
        ] {
            assert!(host_routes(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn gateways_default_and_are_checked() {
        let net: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        assert_eq!(gateway("", net).unwrap(), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(gateway("none", net).unwrap(), None);
        assert_eq!(
            gateway("10.0.0.254", net).unwrap(),
            Some("10.0.0.254".parse().unwrap())
        );
        assert!(gateway("10.0.0.255", net).is_err());
        assert!(gateway("10.0.1.1", net).is_err());
        assert!(gateway("bogus", net).is_err());
    }

    #[test]
    fn ssh_keys_are_validated_and_fingerprinted() {
        // Generated with ssh-keygen -t ed25519; fingerprint from ssh-keygen -l.
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMOF/1IwvkaqwaYxw5uqOXwU+yMz99O0NSqMQYWuHQD0 test@host";
        let (line, fp) = ssh_public_key(key).unwrap();
        assert_eq!(line, key);
        assert_eq!(fp, "SHA256:OdvSEa8Af8/xDsJIu8XQnvIr8tCQwVeX1Fkv4hkHNew");
        assert!(ssh_public_key("ssh-ed25519").is_err());
        assert!(ssh_public_key("ssh-foo AAAA").is_err());
        assert!(ssh_public_key("ssh-ed25519 !!!!").is_err());
        // Valid base64 but a key of another type inside.
        assert!(ssh_public_key(
            "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIMOF/1IwvkaqwaYxw5uqOXwU+yMz99O0NSqMQYWuHQD0"
        )
        .is_err());
    }

    #[test]
    fn client_tokens_are_key_safe() {
        assert_eq!(client_token("").unwrap(), None);
        assert_eq!(client_token("a-1_b.C").unwrap(), Some("a-1_b.C"));
        assert!(client_token("a/b").is_err());
        assert!(client_token("a b").is_err());
        assert!(client_token(&"x".repeat(129)).is_err());
        assert!(client_token(&"x".repeat(128)).is_ok());
    }
}
