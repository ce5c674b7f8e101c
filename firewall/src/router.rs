//! The nftables table of one router namespace (`qrouter-…`): 1:1 NAT of
//! floating IPs, the node's SNAT address, and the router's forward filter.
//!
//! Each router namespace holds one table, `ip nubo-router`, replaced as a
//! whole in one transaction (`add table` + `delete table` + the full table,
//! the idiom of the host ruleset), and only when its fingerprint (the
//! table comment) differs from the desired one, so re-applying an
//! unchanged spec touches nothing (counters keep counting).
//!
//! Layout (`ip netns exec qrouter-… nft list table ip nubo-router`):
//!
//! - `raw_prerouting`: traffic between the router's own subnets is not
//!   tracked. Routing is distributed: a flow between two nodes' guests
//!   crosses one node's router going and the other's coming back, so each
//!   router's conntrack would see half a TCP handshake and call it
//!   invalid; it needs no NAT either.
//! - `nat_prerouting`: a packet entering by the external leg for a
//!   floating IP goes to its fixed IP (map `floating_dnat`).
//! - `nat_postrouting`: leaving by the external leg, a fixed IP with a
//!   floating IP takes it as source (map `floating_snat`); any other source
//!   of the router's subnets (set `internal_nets`) takes the node's SNAT
//!   address, when there is one.
//! - `forward` (policy drop): between internal legs (set `internal_legs`)
//!   everything passes; then established/related passes and invalid is
//!   dropped (an invalid packet is not NATed, so it would leave with its
//!   private source); from the external leg only DNATed connections pass
//!   (a host upstream routing the tenant CIDRs at the router gets
//!   nothing: guests are reachable from outside only by floating IP); from
//!   the internal legs to the external one, sources that get NATed pass.
//!
//! Named counters say what was dropped: [`COUNTER_INVALID`],
//! [`COUNTER_INBOUND`], [`COUNTER_OUTBOUND`], [`COUNTER_OTHER`] (read them
//! with [`router_counters`] or `nft list counters table ip nubo-router`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use tracing::info;

use crate::error::FirewallError;
pub use crate::error::RouterSpecError;
use crate::libnft::{in_named_netns, Nft};
use crate::names::{fnv1a64, valid_ifname};
use crate::nft::{has_table, table_counters, FirewallAction};
use crate::render::{comment_value, Out};

/// The table nubo owns in every router namespace (family `ip`).
pub const ROUTER_TABLE: &str = "nubo-router";
/// Counter: packets dropped because conntrack called them invalid.
pub const COUNTER_INVALID: &str = "invalid_dropped";
/// Counter: packets from the external leg that were neither part of a
/// known connection nor for a floating IP.
pub const COUNTER_INBOUND: &str = "inbound_dropped";
/// Counter: packets from an internal leg to the external one whose source
/// has no address to be NATed to (no SNAT address and no floating IP, or
/// a source outside the router's subnets).
pub const COUNTER_OUTBOUND: &str = "outbound_dropped";
/// Counter: anything else the forward policy dropped (e.g. an interface
/// that is no leg of the router).
pub const COUNTER_OTHER: &str = "forward_dropped";
/// Prefix of the table comment that carries the fingerprint.
const COMMENT_PREFIX: &str = "nubo-router fp=";
/// Bumped when the rendering changes in a way the fingerprint must reflect.
const FORMAT_VERSION: &str = "nubo-router/2";

/// What the nftables table of one router namespace must do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouterNatSpec {
    /// The leg on the external network (inside the router namespace);
    /// `None` when the router has no gateway.
    pub external: Option<ExternalLeg>,
    /// The tenant subnets this router routes, one leg each.
    pub internal: Vec<InternalLeg>,
}

/// The router's leg on its external network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalLeg {
    /// Interface name of the leg inside the router namespace.
    pub leg: String,
    /// This node's SNAT address for the router; `None`: traffic of guests
    /// without a floating IP does not leave (it is dropped, never sent out
    /// with its private source).
    pub snat: Option<Ipv4Addr>,
    /// Floating IPs of the ports on this node.
    pub floating: Vec<FloatingNat>,
}

/// One floating IP and the fixed IP it is translated to, both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FloatingNat {
    /// The address on the external network.
    pub floating: Ipv4Addr,
    /// The port's address in one of the router's subnets.
    pub fixed: Ipv4Addr,
}

/// One of the router's legs on a tenant network.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InternalLeg {
    /// Interface name of the leg inside the router namespace.
    pub leg: String,
    /// The subnet routed through it.
    pub cidr: Ipv4Net,
}

/// A validated, sorted spec.
struct Valid {
    external: Option<(String, Option<Ipv4Addr>, Vec<FloatingNat>)>,
    legs: Vec<String>,
    nets: Vec<Ipv4Net>,
}

fn validate(spec: &RouterNatSpec) -> Result<Valid, RouterSpecError> {
    let mut legs = BTreeSet::new();
    let all_legs = spec
        .internal
        .iter()
        .map(|l| &l.leg)
        .chain(spec.external.iter().map(|e| &e.leg));
    for leg in all_legs {
        if !valid_ifname(leg) {
            return Err(RouterSpecError::BadLegName { leg: leg.clone() });
        }
        if !legs.insert(leg.as_str()) {
            return Err(RouterSpecError::DuplicateLeg { leg: leg.clone() });
        }
    }
    let mut nets: Vec<Ipv4Net> = spec.internal.iter().map(|l| l.cidr.trunc()).collect();
    nets.sort();
    for (i, a) in nets.iter().enumerate() {
        if let Some(b) = nets[i + 1..]
            .iter()
            .find(|b| a.contains(*b) || b.contains(a))
        {
            return Err(RouterSpecError::OverlappingSubnets { a: *a, b: *b });
        }
    }
    let external = match &spec.external {
        None => None,
        Some(ext) => {
            let mut floating = ext.floating.clone();
            floating.sort();
            let mut fixed = BTreeSet::new();
            for (i, f) in floating.iter().enumerate() {
                if i > 0 && floating[i - 1].floating == f.floating {
                    return Err(RouterSpecError::DuplicateFloating {
                        floating: f.floating,
                    });
                }
                if !fixed.insert(f.fixed) {
                    return Err(RouterSpecError::DuplicateFixed { fixed: f.fixed });
                }
                if ext.snat == Some(f.floating) {
                    return Err(RouterSpecError::FloatingIsSnat {
                        floating: f.floating,
                    });
                }
                if !nets.iter().any(|n| n.contains(&f.fixed)) {
                    return Err(RouterSpecError::FixedNotInternal {
                        fixed: f.fixed,
                        floating: f.floating,
                    });
                }
            }
            Some((ext.leg.clone(), ext.snat, floating))
        }
    };
    let mut internal_legs: Vec<String> = spec.internal.iter().map(|l| l.leg.clone()).collect();
    internal_legs.sort();
    Ok(Valid {
        external,
        legs: internal_legs,
        nets,
    })
}

fn elements(items: &[String]) -> Option<String> {
    (!items.is_empty()).then(|| format!("elements = {{ {} }}", items.join(", ")))
}

/// The table body (everything inside `table ip nubo-router { … }` but the
/// comment).
fn body(v: &Valid) -> String {
    let mut out = Out::default();
    for c in [
        COUNTER_INVALID,
        COUNTER_INBOUND,
        COUNTER_OUTBOUND,
        COUNTER_OTHER,
    ] {
        out.block(&format!("counter {c}"), &[]);
    }
    let quoted: Vec<String> = v.legs.iter().map(|l| format!("\"{l}\"")).collect();
    let mut set = vec!["type ifname".to_string()];
    set.extend(elements(&quoted));
    out.block("set internal_legs", &set);
    let nets: Vec<String> = v.nets.iter().map(Ipv4Net::to_string).collect();
    let mut set = vec!["type ipv4_addr".to_string(), "flags interval".to_string()];
    set.extend(elements(&nets));
    out.block("set internal_nets", &set);
    let floating = v.external.as_ref().map(|e| e.2.as_slice()).unwrap_or(&[]);
    let mut dnat_map: Vec<String> = floating
        .iter()
        .map(|f| format!("{} : {}", f.floating, f.fixed))
        .collect();
    let mut snat_map: Vec<String> = floating
        .iter()
        .map(|f| format!("{} : {}", f.fixed, f.floating))
        .collect();
    dnat_map.sort();
    snat_map.sort();
    for (name, items) in [("floating_dnat", dnat_map), ("floating_snat", snat_map)] {
        let mut map = vec!["type ipv4_addr : ipv4_addr".to_string()];
        map.extend(elements(&items));
        out.block(&format!("map {name}"), &map);
    }
    let mut fixed: Vec<String> = floating.iter().map(|f| f.fixed.to_string()).collect();
    fixed.sort();
    let mut set = vec!["type ipv4_addr".to_string()];
    set.extend(elements(&fixed));
    out.block("set floating_fixed", &set);

    let hook = |kind: &str, hook: &str, prio: &str, policy: &str| {
        format!("type {kind} hook {hook} priority {prio}; policy {policy};")
    };
    // Floating IPs are 1:1 and stateless: rewritten before conntrack
    // (`raw`) on the way in and after routing on the way out, and never
    // tracked here (the guest's security groups track them at its tap):
    // one conntrack lookup and NAT binding less per packet.
    let mut raw = vec![
        hook("filter", "prerouting", "raw", "accept"),
        "iifname @internal_legs ip daddr @internal_nets notrack".to_string(),
    ];
    let mut stateless_out = vec![hook("filter", "postrouting", "srcnat", "accept")];
    if let Some((leg, _, _)) = &v.external {
        raw.push(format!(
            "iifname \"{leg}\" ip daddr set ip daddr map @floating_dnat notrack"
        ));
        raw.push(
            "iifname @internal_legs ip saddr @floating_fixed ip daddr != @internal_nets notrack"
                .to_string(),
        );
        stateless_out.push(format!(
            "oifname \"{leg}\" ct state untracked ip saddr set ip saddr map @floating_snat"
        ));
    }
    out.block("chain raw_prerouting", &raw);
    out.block("chain floating_postrouting", &stateless_out);
    let mut snat = vec![hook("nat", "postrouting", "srcnat", "accept")];
    let mut fwd = vec![
        hook("filter", "forward", "filter", "drop"),
        "iifname @internal_legs oifname @internal_legs accept".to_string(),
        "ct state established,related accept".to_string(),
        format!("ct state invalid counter name \"{COUNTER_INVALID}\" drop"),
    ];
    if let Some((leg, snat_addr, _)) = &v.external {
        fwd.push(format!(
            "iifname \"{leg}\" oifname @internal_legs ct state untracked ip daddr @floating_fixed accept"
        ));
        fwd.push(format!(
            "iifname \"{leg}\" counter name \"{COUNTER_INBOUND}\" drop"
        ));
        let out_rule = format!("iifname @internal_legs oifname \"{leg}\"");
        fwd.push(format!(
            "{out_rule} ct state untracked ip saddr @floating_fixed accept"
        ));
        if let Some(addr) = snat_addr {
            snat.push(format!(
                "oifname \"{leg}\" ip saddr @internal_nets snat to {addr}"
            ));
            fwd.push(format!("{out_rule} ip saddr @internal_nets accept"));
        }
        fwd.push(format!(
            "{out_rule} counter name \"{COUNTER_OUTBOUND}\" drop"
        ));
    }
    fwd.push(format!("counter name \"{COUNTER_OTHER}\" drop"));
    out.block("chain nat_postrouting", &snat);
    out.block("chain forward", &fwd);
    out.0
}

/// The table definition and its fingerprint.
fn render(spec: &RouterNatSpec) -> Result<(String, String), RouterSpecError> {
    let v = validate(spec)?;
    let body = body(&v);
    let fingerprint = format!(
        "{:016x}",
        fnv1a64(format!("{FORMAT_VERSION}\n{body}").as_bytes())
    );
    let table = format!(
        "table ip {ROUTER_TABLE} {{\n\tcomment \"{COMMENT_PREFIX}{fingerprint}\"\n{body}}}\n"
    );
    Ok((table, fingerprint))
}

fn replace_script(table: &str) -> String {
    format!("add table ip {ROUTER_TABLE}\ndelete table ip {ROUTER_TABLE}\n{table}")
}

/// Renders the complete `nft -f` script of a router namespace: `add table
/// ip nubo-router` + `delete table` (so it works whether or not the table
/// exists) + the full table, one transaction. Pure and deterministic (the
/// order of legs and floating IPs in `spec` does not matter); the table
/// comment carries a fingerprint of the content.
///
/// Errors: [`FirewallError::RouterSpec`] with the first problem found.
pub fn router_ruleset(spec: &RouterNatSpec) -> Result<String, FirewallError> {
    let (table, _) = render(spec)?;
    Ok(replace_script(&table))
}

/// The fingerprint in the comment of a listed `nubo-router` table.
fn listed_fingerprint(listing: &str) -> Option<&str> {
    comment_value(listing, COMMENT_PREFIX)
}

/// Makes the router table of namespace `netns` (a name under `/run/netns`)
/// what `spec` says: [`FirewallAction::Noop`] when the live table already
/// carries the desired fingerprint (nothing is touched, counters go on),
/// else one atomic replacement ([`FirewallAction::Replace`]). Nothing is
/// applied when the spec is invalid.
pub fn apply_router_ruleset(
    netns: &str,
    spec: &RouterNatSpec,
) -> Result<FirewallAction, FirewallError> {
    let (table, fingerprint) = render(spec)?;
    let script = replace_script(&table);
    let action = in_named_netns(netns, || {
        let mut nft = Nft::new()?;
        if has_table(&mut nft, "ip", ROUTER_TABLE)? {
            let live = nft.run(
                "list router table",
                &format!("list table ip {ROUTER_TABLE}"),
            )?;
            if listed_fingerprint(&live) == Some(fingerprint.as_str()) {
                return Ok(FirewallAction::Noop);
            }
        }
        nft.run("apply router ruleset", &script)?;
        Ok(FirewallAction::Replace)
    })?;
    if action == FirewallAction::Replace {
        info!(netns, fingerprint, "router ruleset applied");
    }
    Ok(action)
}

/// The fingerprint [`apply_router_ruleset`] stores for `spec` (to compare
/// with [`loaded_router_fingerprint`] in a pure plan).
pub fn router_fingerprint(spec: &RouterNatSpec) -> Result<String, FirewallError> {
    Ok(render(spec)?.1)
}

/// The fingerprint of the router table loaded in namespace `netns`
/// (`None`: no table, or one without a fingerprint).
pub fn loaded_router_fingerprint(netns: &str) -> Result<Option<String>, FirewallError> {
    in_named_netns(netns, || {
        let mut nft = Nft::new()?;
        if !has_table(&mut nft, "ip", ROUTER_TABLE)? {
            return Ok(None);
        }
        let live = nft.run(
            "list router table",
            &format!("list table ip {ROUTER_TABLE}"),
        )?;
        Ok(listed_fingerprint(&live).map(str::to_string))
    })
}

/// Deletes the router table of namespace `netns`. Idempotent: no table, or
/// no such namespace any more (the table went with it), is success.
pub fn remove_router_ruleset(netns: &str) -> Result<(), FirewallError> {
    let script = format!("add table ip {ROUTER_TABLE}\ndelete table ip {ROUTER_TABLE}\n");
    match in_named_netns(netns, || Nft::new()?.run("remove router table", &script)) {
        Ok(_) => {
            info!(netns, "router ruleset removed");
            Ok(())
        }
        Err(FirewallError::Netns { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The named counters of the router table of `netns` by name (packets):
/// [`COUNTER_INVALID`], [`COUNTER_INBOUND`], [`COUNTER_OUTBOUND`],
/// [`COUNTER_OTHER`]. Empty when the table does not exist.
pub fn router_counters(netns: &str) -> Result<BTreeMap<String, u64>, FirewallError> {
    in_named_netns(netns, || {
        table_counters(&mut Nft::new()?, "ip", ROUTER_TABLE)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn spec() -> RouterNatSpec {
        RouterNatSpec {
            external: Some(ExternalLeg {
                leg: "qg0123456789a".into(),
                snat: Some(ip("10.78.0.10")),
                floating: vec![FloatingNat {
                    floating: ip("10.78.0.20"),
                    fixed: ip("10.77.0.5"),
                }],
            }),
            internal: vec![
                InternalLeg {
                    leg: "qi0123456789a".into(),
                    cidr: "10.77.0.0/24".parse().unwrap(),
                },
                InternalLeg {
                    leg: "qi0123456789b".into(),
                    cidr: "10.77.1.0/24".parse().unwrap(),
                },
            ],
        }
    }

    fn err(spec: &RouterNatSpec) -> RouterSpecError {
        match router_ruleset(spec) {
            Err(FirewallError::RouterSpec(e)) => e,
            other => panic!("expected a spec error, got {other:?}"),
        }
    }

    #[test]
    fn valid_spec_renders_and_order_does_not_matter() {
        let a = router_ruleset(&spec()).unwrap();
        let mut shuffled = spec();
        shuffled.internal.reverse();
        assert_eq!(a, router_ruleset(&shuffled).unwrap());
        assert!(a.starts_with("add table ip nubo-router\ndelete table ip nubo-router\n"));
        let (table, fp) = render(&spec()).unwrap();
        assert_eq!(listed_fingerprint(&table), Some(fp.as_str()));
    }

    #[test]
    fn bad_specs_get_precise_errors() {
        let mut s = spec();
        s.internal[0].leg = "bad name".into();
        assert_eq!(
            err(&s),
            RouterSpecError::BadLegName {
                leg: "bad name".into()
            }
        );
        let mut s = spec();
        s.external.as_mut().unwrap().leg = "".into();
        assert_eq!(err(&s), RouterSpecError::BadLegName { leg: "".into() });
        let mut s = spec();
        s.internal[1].leg = s.internal[0].leg.clone();
        assert!(matches!(err(&s), RouterSpecError::DuplicateLeg { .. }));
        let mut s = spec();
        s.external.as_mut().unwrap().leg = s.internal[0].leg.clone();
        assert!(matches!(err(&s), RouterSpecError::DuplicateLeg { .. }));
        let mut s = spec();
        s.internal[1].cidr = "10.77.0.128/25".parse().unwrap();
        assert_eq!(
            err(&s),
            RouterSpecError::OverlappingSubnets {
                a: "10.77.0.0/24".parse().unwrap(),
                b: "10.77.0.128/25".parse().unwrap()
            }
        );
        let mut s = spec();
        let ext = s.external.as_mut().unwrap();
        ext.floating.push(FloatingNat {
            floating: ip("10.78.0.20"),
            fixed: ip("10.77.0.6"),
        });
        assert_eq!(
            err(&s),
            RouterSpecError::DuplicateFloating {
                floating: ip("10.78.0.20")
            }
        );
        let mut s = spec();
        let ext = s.external.as_mut().unwrap();
        ext.floating.push(FloatingNat {
            floating: ip("10.78.0.21"),
            fixed: ip("10.77.0.5"),
        });
        assert_eq!(
            err(&s),
            RouterSpecError::DuplicateFixed {
                fixed: ip("10.77.0.5")
            }
        );
        let mut s = spec();
        s.external.as_mut().unwrap().snat = Some(ip("10.78.0.20"));
        assert_eq!(
            err(&s),
            RouterSpecError::FloatingIsSnat {
                floating: ip("10.78.0.20")
            }
        );
        let mut s = spec();
        s.external.as_mut().unwrap().floating[0].fixed = ip("10.99.0.5");
        assert_eq!(
            err(&s),
            RouterSpecError::FixedNotInternal {
                fixed: ip("10.99.0.5"),
                floating: ip("10.78.0.20")
            }
        );
        // The error says what is wrong.
        let msg = FirewallError::from(RouterSpecError::DuplicateLeg { leg: "qr1".into() });
        assert_eq!(
            msg.to_string(),
            "invalid router spec: leg \"qr1\" is given twice"
        );
    }

    #[test]
    fn without_snat_address_only_floating_sources_leave() {
        let with = router_ruleset(&spec()).unwrap();
        assert!(with.contains("snat to 10.78.0.10"), "{with}");
        assert!(with.contains("ip saddr @internal_nets accept"), "{with}");
        let mut s = spec();
        s.external.as_mut().unwrap().snat = None;
        let without = router_ruleset(&s).unwrap();
        assert!(!without.contains("snat to 10.78"), "{without}");
        assert!(
            !without.contains("ip saddr @internal_nets accept"),
            "{without}"
        );
        assert!(
            without.contains("ct state untracked ip saddr @floating_fixed accept"),
            "{without}"
        );
        assert!(without.contains("counter name \"outbound_dropped\" drop"));
    }

    #[test]
    fn fingerprints_differ_with_the_spec() {
        let (_, a) = render(&spec()).unwrap();
        let mut s = spec();
        s.external.as_mut().unwrap().floating.clear();
        let (_, b) = render(&s).unwrap();
        let (_, c) = render(&RouterNatSpec::default()).unwrap();
        assert!(a != b && b != c && a != c);
    }
}
