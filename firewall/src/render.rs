//! Pure rendering of a [`FirewallSpec`] into nft text.
//!
//! # Why two tables
//!
//! Ports are filtered in `table bridge nubo`: only the bridge family sees
//! which tap a frame enters and leaves by. Stateful filtering needs
//! conntrack, and the bridge family's own conntrack (`nf_conntrack_bridge`,
//! kernel >= 5.3) is optional; it is not built into this project's kernels
//! (`ct` expressions in a bridge table fail with "Protocol error"). What is
//! available everywhere Neutron's linuxbridge agent runs is `br_netfilter`:
//! with `net.bridge.bridge-nf-call-ip{,6}tables=1`, bridged IP packets cross
//! the IPv4/IPv6 hooks where the normal conntrack tracks them. So:
//!
//! 1. `bridge nubo` prerouting (priority -200, before br_netfilter) sets the
//!    [`MARK_TRACKED`] bit on frames from nubo taps and `vx-*` devices and
//!    runs each port's anti-spoofing chain;
//! 2. `inet nubo` prerouting (priority -150, after conntrack) copies the
//!    conntrack state of tracked packets into the [`MARK_ESTABLISHED`] /
//!    [`MARK_INVALID`] bits;
//! 3. `bridge nubo` forward/input (priority 0) accept established packets,
//!    drop invalid ones, and dispatch new ones by tap through verdict maps to
//!    the per-port chains.
//!
//! Only these three bits of the packet mark are used, and only on traffic of
//! nubo taps, VXLAN devices, provider uplinks and router legs.
//!
//! # Router legs and distributed gateways
//!
//! A router namespace's legs are plugged into the bridges by veths whose
//! host ends are named `qr` + 11 hex digits
//! ([`ROUTER_LEG_PATTERN`], `nubo_netid::hashed_name`). They are not guest
//! ports: no anti-spoofing or security group applies to what they send (a
//! router forwards other hosts' addresses), and nothing here drops unknown
//! bridge ports (every base chain's policy is accept). They are marked
//! tracked like the wire, so the reply a router leg brings back to a guest
//! is recognised as established; without it a guest whose groups allow
//! only its own group's ingress could not even ping its gateway.
//!
//! Each node runs a copy of a routed subnet's gateway (same IP and MAC on
//! every node). At the network's VXLAN device, `gw_in_<dev>` (prerouting,
//! so before the bridge learns the source MAC) drops ARP for or from the
//! gateway IP and frames from the gateway MAC, and `gw_out_<dev>` (first in
//! forward, so before the established shortcut) drops the gateway's ARP and
//! non-IPv4 frames (its IPv6 link-local address is the same on every node,
//! so its neighbour discovery would collide) and rewrites the source MAC of
//! its routed IPv4 frames to the node's routing MAC. See
//! [`crate::spec::RoutedGateway`].
//!
//! # Ports that are down
//!
//! A port whose `admin_state_up` is false passes no traffic: its tap is
//! the first match of `prerouting` (whatever the guest sends, ARP and DHCP
//! included, is dropped before the bridge learns its MAC or the host sees
//! it), of `forward` (nothing from other ports or the wire reaches it) and
//! of `output` (nothing from the host — DHCP replies, metadata — either).
//! The tap itself stays up and plugged: the state lives in the same
//! atomic ruleset as anti-spoofing and security groups, so one pass
//! switches the port off or on for every driver (libvirt taps, netns
//! veths) alike, no other reconciler (the overlay's plug, libvirt's own
//! link handling) fights over a link state, and an agent restart renders
//! the same fingerprint and changes nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::compile::{compile, Compiled, GroupSide, PortPolicy, Side, ValidRemote, ValidRule};
use crate::interval::Range;
use crate::names::{fnv1a64, ident};
use crate::spec::{Direction, EtherType, FirewallSpec, GuestLimits, Rate, RoutedGateway};

/// Name of the tables nubo owns (in the `bridge` and `inet` families).
pub const TABLE: &str = "nubo";
/// Packet-mark bit: the packet entered the bridge from a nubo tap or a
/// `vx-*` device.
pub const MARK_TRACKED: u32 = 0x0100_0000;
/// Packet-mark bit: conntrack says established or related.
pub const MARK_ESTABLISHED: u32 = 0x0200_0000;
/// Packet-mark bit: conntrack says invalid.
pub const MARK_INVALID: u32 = 0x0400_0000;
/// The metadata address every node's bridge owns.
pub const METADATA_IP: &str = "169.254.169.254";
/// Prefix of the table comment that carries the fingerprint.
const COMMENT_PREFIX: &str = "nubo-firewall fp=";
/// Bumped when the rendering changes in a way the fingerprint must reflect.
const FORMAT_VERSION: &str = "nubo-firewall/3";
/// Host ends of router legs (`qr` + 11 hex digits): tracked like the wire,
/// never filtered as guest ports.
pub const ROUTER_LEG_PATTERN: &str = "qr*";

/// How per-port rules are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RenderMode {
    /// Interval + concatenation sets: a constant number of lookups per
    /// packet whatever the number of rules. The production mode.
    #[default]
    Sets,
    /// One nft rule per security-group rule. Only a benchmark baseline.
    Linear,
}

/// A rendered ruleset: both nubo tables as `nft -f` text, deterministic for a
/// given spec, with a fingerprint of its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    text: String,
    fingerprint: String,
}

impl Ruleset {
    /// The table definitions (`table bridge nubo {…}` and `table inet nubo
    /// {…}`), without the add/delete preamble.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Hex fingerprint of the rendered content, also stored as the comment
    /// of both tables so a live ruleset can be compared cheaply.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The complete `nft -f` input replacing nubo's tables atomically: `add
    /// table` + `delete table` (so it works whether or not they exist),
    /// then the full tables, in one transaction.
    pub fn transaction(&self) -> String {
        let mut out = String::new();
        for family in ["bridge", "inet"] {
            out.push_str(&format!(
                "add table {family} {TABLE}\ndelete table {family} {TABLE}\n"
            ));
        }
        out.push_str(&self.text);
        out
    }
}

/// Extracts the fingerprint from the comment of a listed nubo table.
pub fn fingerprint_of(listing: &str) -> Option<&str> {
    comment_value(listing, COMMENT_PREFIX)
}

/// What follows `prefix` in a listing, up to the closing quote of the
/// comment it is in.
pub(crate) fn comment_value<'a>(listing: &'a str, prefix: &str) -> Option<&'a str> {
    let start = listing.find(prefix)? + prefix.len();
    let rest = &listing[start..];
    let end = rest.find('"')?;
    Some(&rest[..end])
}

/// Renders the complete nubo ruleset for `spec` with interval sets.
pub fn ruleset(spec: &FirewallSpec) -> Ruleset {
    ruleset_with_mode(spec, RenderMode::Sets)
}

/// Renders the complete nubo ruleset for `spec` in the given mode.
pub fn ruleset_with_mode(spec: &FirewallSpec, mode: RenderMode) -> Ruleset {
    let compiled = compile(spec);
    let bridge = bridge_body(&compiled, &spec.limits, mode);
    let inet = inet_body();
    let mut material = String::from(FORMAT_VERSION);
    material.push_str(&bridge);
    material.push_str(&inet);
    let fingerprint = format!("{:016x}", fnv1a64(material.as_bytes()));
    let comment = format!("\tcomment \"{COMMENT_PREFIX}{fingerprint}\"\n");
    let text = format!(
        "table bridge {TABLE} {{\n{comment}{bridge}}}\ntable inet {TABLE} {{\n{comment}{inet}}}\n"
    );
    Ruleset { text, fingerprint }
}

/// Small line writer with nft's tab indentation.
#[derive(Default)]
pub(crate) struct Out(pub(crate) String);

impl Out {
    pub(crate) fn line(&mut self, depth: usize, s: &str) {
        for _ in 0..depth {
            self.0.push('\t');
        }
        self.0.push_str(s);
        self.0.push('\n');
    }

    /// `head {`, the lines one level deeper, `}`.
    pub(crate) fn block(&mut self, head: &str, lines: &[String]) {
        self.line(1, &format!("{head} {{"));
        for l in lines {
            self.line(2, l);
        }
        self.line(1, "}");
    }

    fn set(&mut self, name: &str, ty: &str, interval: bool, elements: &[String]) {
        self.line(1, &format!("set {name} {{"));
        self.line(2, &format!("type {ty}"));
        if interval {
            self.line(2, "flags interval");
        }
        if !elements.is_empty() {
            self.line(2, &format!("elements = {{ {} }}", elements.join(", ")));
        }
        self.line(1, "}");
    }

    fn chain(&mut self, name: &str, hook: Option<(&str, i32)>, rules: &[String]) {
        self.line(1, &format!("chain {name} {{"));
        if let Some((hook, prio)) = hook {
            self.line(
                2,
                &format!("type filter hook {hook} priority {prio}; policy accept;"),
            );
        }
        for r in rules {
            self.line(2, r);
        }
        self.line(1, "}");
    }
}

fn inet_body() -> String {
    let mut out = Out::default();
    let tracked = format!("meta mark & {MARK_TRACKED:#010x} == {MARK_TRACKED:#010x}");
    out.chain(
        "prerouting",
        Some(("prerouting", -150)),
        &[
            format!("{tracked} ct state established,related meta mark set meta mark | {MARK_ESTABLISHED:#010x}"),
            format!("{tracked} ct state invalid meta mark set meta mark | {MARK_INVALID:#010x}"),
        ],
    );
    out.0
}

/// Names of a port's chains and sets.
struct PortNames {
    base: String,
}

impl PortNames {
    fn new(port_id: &str) -> Self {
        PortNames {
            base: format!("p_{}", ident(port_id)),
        }
    }
    fn chain(&self, what: &str) -> String {
        format!("{}_{what}", self.base)
    }
    fn set(&self, dir: Direction, fam: EtherType, what: &str) -> String {
        format!("{}_{}{}_{what}", self.base, dir_tag(dir), fam_tag(fam))
    }
}

fn dir_tag(dir: Direction) -> &'static str {
    match dir {
        Direction::Ingress => "in",
        Direction::Egress => "out",
    }
}

fn fam_tag(fam: EtherType) -> &'static str {
    match fam {
        EtherType::V4 => "4",
        EtherType::V6 => "6",
    }
}

fn group_set(gid: &str, fam: EtherType) -> String {
    format!("g_{}_v{}", ident(gid), fam_tag(fam))
}

/// What a per-port limit counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LimitKind {
    /// DHCP client frames dropped over the port's DHCP rate.
    Dhcp,
    /// New metadata connections (SYNs) dropped over the port's rate.
    MetadataConnections,
}

impl LimitKind {
    /// Both kinds.
    pub const ALL: [LimitKind; 2] = [LimitKind::Dhcp, LimitKind::MetadataConnections];

    /// Short name, as used in counter names and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Dhcp => "dhcp",
            LimitKind::MetadataConnections => "metadata",
        }
    }
}

/// Name of the named nft counter (in `table bridge nubo`) of what the
/// per-port limit of `kind` dropped for port `port_id`; read them all with
/// [`crate::limit_counters`]. The counters restart at zero whenever the
/// ruleset is replaced.
pub fn limit_counter(port_id: &str, kind: LimitKind) -> String {
    format!("{}_{}_limited", PortNames::new(port_id).base, kind.as_str())
}

/// What a routed-gateway counter counts, per VXLAN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GatewayCounter {
    /// Frames entering from the VXLAN device that were dropped: ARP for or
    /// from a gateway IP, frames from a gateway MAC.
    InDropped,
    /// Frames leaving by the VXLAN device that were dropped: a gateway's
    /// ARP and non-IPv4 frames.
    OutDropped,
    /// Routed frames leaving by the VXLAN device whose source MAC was
    /// rewritten to the node MAC.
    Rewritten,
}

impl GatewayCounter {
    /// All kinds.
    pub const ALL: [GatewayCounter; 3] = [
        GatewayCounter::InDropped,
        GatewayCounter::OutDropped,
        GatewayCounter::Rewritten,
    ];

    /// Short name, as used in counter names.
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayCounter::InDropped => "in_dropped",
            GatewayCounter::OutDropped => "out_dropped",
            GatewayCounter::Rewritten => "rewritten",
        }
    }
}

/// Name of the named nft counter (in `table bridge nubo`) of `kind` for
/// the routed gateways behind VXLAN device `vxlan`; read with
/// [`crate::limit_counters`] (which returns every named counter of the
/// table). Restarts at zero whenever the ruleset is replaced.
pub fn gateway_counter(vxlan: &str, kind: GatewayCounter) -> String {
    format!("gw_{}_{}", ident(vxlan), kind.as_str())
}

fn gateway_chain(vxlan: &str, dir: &str) -> String {
    format!("gw_{dir}_{}", ident(vxlan))
}

fn limit_rate(rate: Rate) -> String {
    format!(
        "limit rate over {}/second burst {} packets",
        rate.per_second.max(1),
        rate.burst
    )
}

fn bridge_body(c: &Compiled, limits: &GuestLimits, mode: RenderMode) -> String {
    let mut out = Out::default();

    // Per-port counters of what the guest limits dropped.
    for p in &c.ports {
        for kind in LimitKind::ALL {
            out.line(
                1,
                &format!("counter {} {{", limit_counter(&p.port.port_id, kind)),
            );
            out.line(1, "}");
        }
    }

    for vxlan in c.routed.keys() {
        for kind in GatewayCounter::ALL {
            out.line(1, &format!("counter {} {{", gateway_counter(vxlan, kind)));
            out.line(1, "}");
        }
    }

    // Member sets of remote groups.
    for (gid, (v4, v6)) in &c.members {
        for (fam, members) in [(EtherType::V4, v4), (EtherType::V6, v6)] {
            let elems: Vec<String> = members.iter().map(IpAddr::to_string).collect();
            out.set(&group_set(gid, fam), addr_type(fam), false, &elems);
        }
    }
    // Per-port rule sets.
    if mode == RenderMode::Sets {
        for p in &c.ports {
            port_sets(&mut out, p);
        }
    }

    let secured: Vec<&PortPolicy> = c.ports.iter().filter(|p| p.port.port_security).collect();
    let vmap = |iface: &str, ports: &[&PortPolicy], target: &dyn Fn(&PortPolicy) -> String| {
        let entries: Vec<String> = ports
            .iter()
            .map(|p| format!("\"{}\" : {}", p.port.tap, target(p)))
            .collect();
        (!entries.is_empty()).then(|| format!("{iface} vmap {{ {} }}", entries.join(", ")))
    };

    let tracked = format!("meta mark set meta mark | {MARK_TRACKED:#010x}");
    let all: Vec<&PortPolicy> = c.ports.iter().collect();
    // Administratively down ports: dropped first, both ways (module docs).
    let down: Vec<String> = all
        .iter()
        .filter(|p| !p.port.admin_state_up)
        .map(|p| format!("\"{}\"", p.port.tap))
        .collect();
    let down_rule =
        |iface: &str| (!down.is_empty()).then(|| format!("{iface} {{ {} }} drop", down.join(", ")));
    // The wire: VXLAN devices and provider uplinks.
    let uplinks: Vec<String> = c.uplinks.iter().map(|u| format!("\"{u}\"")).collect();
    let mut wire = vec!["\"vx-*\"".to_string()];
    if !uplinks.is_empty() {
        wire.push(format!("{{ {} }}", uplinks.join(", ")));
    }
    let guard: Vec<String> = wire
        .iter()
        .map(|w| format!("oifname {w} jump overlay_guard"))
        .collect();
    // The gateway copies' confinement comes first (see the module docs).
    let routed_vmap = |iface: &str, dir: &str| {
        let entries: Vec<String> = c
            .routed
            .keys()
            .map(|v| format!("\"{v}\" : jump {}", gateway_chain(v, dir)))
            .collect();
        (!entries.is_empty()).then(|| format!("{iface} vmap {{ {} }}", entries.join(", ")))
    };
    let mut pre: Vec<String> = down_rule("iifname").into_iter().collect();
    pre.extend(routed_vmap("iifname", "in"));
    pre.extend(wire.iter().map(|w| format!("iifname {w} {tracked}")));
    // Router legs are not guest ports (no anti-spoofing, no groups) but
    // their replies to guests must count as established: tracked.
    pre.push(format!("iifname \"{ROUTER_LEG_PATTERN}\" {tracked}"));
    if !all.is_empty() {
        let taps: Vec<String> = all.iter().map(|p| format!("\"{}\"", p.port.tap)).collect();
        pre.push(format!("iifname {{ {} }} {tracked}", taps.join(", ")));
    }
    pre.extend(vmap("iifname", &secured, &|p| {
        format!("jump {}", PortNames::new(&p.port.port_id).chain("spoof"))
    }));
    // Then the guest's own rate limits towards the node's DHCP server and
    // metadata service (after anti-spoofing: forged frames are not counted).
    pre.extend(vmap("iifname", &all, &|p| {
        format!("jump {}", PortNames::new(&p.port.port_id).chain("limit"))
    }));
    out.chain("prerouting", Some(("prerouting", -200)), &pre);

    let est = format!("meta mark & {MARK_ESTABLISHED:#010x} == {MARK_ESTABLISHED:#010x} accept");
    let inv = format!("meta mark & {MARK_INVALID:#010x} == {MARK_INVALID:#010x} drop");
    let mut fwd: Vec<String> = down_rule("oifname").into_iter().collect();
    fwd.extend(routed_vmap("oifname", "out"));
    fwd.extend(guard.iter().cloned());
    fwd.extend([inv.clone(), est.clone()]);
    fwd.extend(vmap("iifname", &secured, &|p| {
        format!("jump {}", PortNames::new(&p.port.port_id).chain("egress"))
    }));
    fwd.extend(vmap("oifname", &secured, &|p| {
        format!("jump {}", PortNames::new(&p.port.port_id).chain("ingress"))
    }));
    out.chain("forward", Some(("forward", 0)), &fwd);

    let mut input = vec![inv, est];
    input.extend(vmap("iifname", &all, &|_| "jump guest_to_host".to_string()));
    out.chain("input", Some(("input", 0)), &input);
    let mut output: Vec<String> = down_rule("oifname").into_iter().collect();
    output.extend(guard.iter().cloned());
    out.chain("output", Some(("output", 0)), &output);

    // Metadata and DHCP stay on each node: never let them into the overlay.
    out.chain(
        "overlay_guard",
        None,
        &[
            format!("ip daddr {METADATA_IP} drop"),
            format!("ip saddr {METADATA_IP} drop"),
            format!("arp daddr ip {METADATA_IP} drop"),
            format!("arp saddr ip {METADATA_IP} drop"),
            "udp dport { 67, 68 } drop".to_string(),
            "udp dport { 546, 547 } drop".to_string(),
        ],
    );
    // What a guest may send to the host itself (DHCP server and metadata
    // live on the bridge): nothing else on the host is reachable.
    out.chain(
        "guest_to_host",
        None,
        &[
            "ether type arp accept".to_string(),
            "udp sport 68 udp dport 67 accept".to_string(),
            format!("ip daddr {METADATA_IP} tcp dport 80 accept"),
            format!("ip daddr {METADATA_IP} icmp type echo-request accept"),
            "icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-report, mld2-listener-report } accept"
                .to_string(),
            "drop".to_string(),
        ],
    );

    for (vxlan, gateways) in &c.routed {
        gateway_chains(&mut out, vxlan, gateways);
    }
    for p in &all {
        limit_chain(&mut out, p, limits);
    }
    for p in &secured {
        port_chains(&mut out, p, mode);
    }
    out.0
}

/// The confinement of the gateway copies behind one VXLAN device.
fn gateway_chains(out: &mut Out, vxlan: &str, gateways: &[RoutedGateway]) {
    let mut ips: Vec<String> = gateways.iter().map(|g| g.ip.to_string()).collect();
    ips.dedup();
    let mut macs: Vec<(String, String)> = gateways
        .iter()
        .map(|g| (g.mac.to_string(), g.node_mac.to_string()))
        .collect();
    macs.sort();
    macs.dedup();
    let gw_macs: Vec<String> = macs.iter().map(|(m, _)| m.clone()).collect();
    let (ips, gw_macs) = (anon_set(&ips), anon_set(&gw_macs));
    let count = |kind| format!("counter name \"{}\"", gateway_counter(vxlan, kind));
    let in_dropped = count(GatewayCounter::InDropped);
    out.chain(
        &gateway_chain(vxlan, "in"),
        None,
        &[
            // Guests behind other nodes ask their own node's copy.
            format!("arp daddr ip {ips} {in_dropped} drop"),
            format!("arp saddr ip {ips} {in_dropped} drop"),
            // Another copy's frames (its node should have rewritten or
            // dropped them): never let the bridge learn the MAC out there.
            format!("ether saddr {gw_macs} {in_dropped} drop"),
        ],
    );
    let out_dropped = count(GatewayCounter::OutDropped);
    let mut rules = vec![
        format!("ether saddr {gw_macs} ether type != ip {out_dropped} drop"),
        format!("arp saddr ip {ips} {out_dropped} drop"),
    ];
    for (mac, node_mac) in &macs {
        rules.push(format!(
            "ether saddr {mac} ether saddr set {node_mac} {}",
            count(GatewayCounter::Rewritten)
        ));
    }
    out.chain(&gateway_chain(vxlan, "out"), None, &rules);
}

/// The per-port rate limits: each rule keeps its own token bucket, so
/// every tap has its own budget; the excess is counted and dropped.
fn limit_chain(out: &mut Out, p: &PortPolicy, limits: &GuestLimits) {
    let names = PortNames::new(&p.port.port_id);
    let counter = |kind| limit_counter(&p.port.port_id, kind);
    out.chain(
        &names.chain("limit"),
        None,
        &[
            format!(
                "udp dport 67 {} counter name \"{}\" drop",
                limit_rate(limits.dhcp),
                counter(LimitKind::Dhcp)
            ),
            format!(
                "ip daddr {METADATA_IP} tcp dport 80 tcp flags & (fin|syn|rst|ack) == syn {} counter name \"{}\" drop",
                limit_rate(limits.metadata_connections),
                counter(LimitKind::MetadataConnections)
            ),
        ],
    );
}

fn addr_type(fam: EtherType) -> &'static str {
    match fam {
        EtherType::V4 => "ipv4_addr",
        EtherType::V6 => "ipv6_addr",
    }
}

fn addr_match(fam: EtherType, dir: Direction) -> &'static str {
    match (fam, dir) {
        (EtherType::V4, Direction::Ingress) => "ip saddr",
        (EtherType::V4, Direction::Egress) => "ip daddr",
        (EtherType::V6, Direction::Ingress) => "ip6 saddr",
        (EtherType::V6, Direction::Egress) => "ip6 daddr",
    }
}

fn port_sets(out: &mut Out, p: &PortPolicy) {
    let names = PortNames::new(&p.port.port_id);
    for (&(dir, fam), side) in &p.sides {
        let a = |r: &Range| fmt_range(fam, *r);
        if !side.ports.is_empty() {
            let elems: Vec<String> = side
                .ports
                .iter()
                .map(|(r, proto, ports)| format!("{} . {proto} . {}", a(r), fmt_ports(*ports)))
                .collect();
            let ty = format!("{} . inet_proto . inet_service", addr_type(fam));
            out.set(&names.set(dir, fam, "ports"), &ty, true, &elems);
        }
        if !side.proto.is_empty() {
            let elems: Vec<String> = side
                .proto
                .iter()
                .map(|(r, proto)| format!("{} . {proto}", a(r)))
                .collect();
            let ty = format!("{} . inet_proto", addr_type(fam));
            out.set(&names.set(dir, fam, "proto"), &ty, true, &elems);
        }
        if !side.any.is_empty() {
            let elems: Vec<String> = side.any.iter().map(a).collect();
            out.set(&names.set(dir, fam, "any"), addr_type(fam), true, &elems);
        }
        for (gid, g) in &side.groups {
            let gname = ident(gid);
            if !g.ports.is_empty() {
                let elems: Vec<String> = g
                    .ports
                    .iter()
                    .map(|(proto, r)| format!("{proto} . {}", fmt_ports(*r)))
                    .collect();
                out.set(
                    &names.set(dir, fam, &format!("g_{gname}_ports")),
                    "inet_proto . inet_service",
                    true,
                    &elems,
                );
            }
            if !g.proto.is_empty() {
                let elems: Vec<String> = g.proto.iter().map(u8::to_string).collect();
                out.set(
                    &names.set(dir, fam, &format!("g_{gname}_proto")),
                    "inet_proto",
                    false,
                    &elems,
                );
            }
        }
    }
}

/// Rules matching the allowed traffic of one side, each ending in `verdict`.
fn side_rules(
    names: &PortNames,
    dir: Direction,
    fam: EtherType,
    side: &Side,
    mode: RenderMode,
    verdict: &str,
) -> Vec<String> {
    let addr = addr_match(fam, dir);
    let mut rules = Vec::new();
    match mode {
        RenderMode::Sets => {
            if !side.ports.is_empty() {
                rules.push(format!(
                    "{addr} . meta l4proto . th dport @{} {verdict}",
                    names.set(dir, fam, "ports")
                ));
            }
            if !side.proto.is_empty() {
                rules.push(format!(
                    "{addr} . meta l4proto @{} {verdict}",
                    names.set(dir, fam, "proto")
                ));
            }
            if !side.any.is_empty() {
                rules.push(format!("{addr} @{} {verdict}", names.set(dir, fam, "any")));
            }
            for (gid, g) in &side.groups {
                rules.extend(group_rules(names, dir, fam, gid, g, verdict));
            }
            for rule in &side.icmp {
                rules.push(linear_rule(dir, fam, rule, verdict));
            }
        }
        RenderMode::Linear => {
            for rule in &side.rules {
                rules.push(linear_rule(dir, fam, rule, verdict));
            }
        }
    }
    rules
}

fn group_rules(
    names: &PortNames,
    dir: Direction,
    fam: EtherType,
    gid: &str,
    g: &GroupSide,
    verdict: &str,
) -> Vec<String> {
    let head = format!("{} @{}", addr_match(fam, dir), group_set(gid, fam));
    let gname = ident(gid);
    let mut rules = Vec::new();
    if g.any {
        rules.push(format!("{head} {verdict}"));
    }
    if !g.ports.is_empty() {
        let set = names.set(dir, fam, &format!("g_{gname}_ports"));
        rules.push(format!("{head} meta l4proto . th dport @{set} {verdict}"));
    }
    if !g.proto.is_empty() {
        let set = names.set(dir, fam, &format!("g_{gname}_proto"));
        rules.push(format!("{head} meta l4proto @{set} {verdict}"));
    }
    rules
}

fn linear_rule(dir: Direction, fam: EtherType, rule: &ValidRule, verdict: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    match &rule.remote {
        ValidRemote::Range(r) => {
            parts.push(format!("{} {}", addr_match(fam, dir), fmt_range(fam, *r)))
        }
        ValidRemote::Group(g) => {
            parts.push(format!("{} @{}", addr_match(fam, dir), group_set(g, fam)))
        }
    }
    if let Some(proto) = rule.proto {
        parts.push(format!("meta l4proto {proto}"));
    }
    if let Some(ports) = rule.ports {
        parts.push(format!("th dport {}", fmt_ports(ports)));
    }
    if let Some((icmp_type, code)) = rule.icmp {
        let kw = match fam {
            EtherType::V4 => "icmp",
            EtherType::V6 => "icmpv6",
        };
        parts.push(format!("{kw} type {icmp_type}"));
        if let Some(code) = code {
            parts.push(format!("{kw} code {code}"));
        }
    }
    parts.push(verdict.to_string());
    parts.join(" ")
}

fn port_chains(out: &mut Out, p: &PortPolicy, mode: RenderMode) {
    let names = PortNames::new(&p.port.port_id);
    let port = &p.port;
    let mac = port.mac.to_string();
    let v4: Vec<String> = port
        .ips
        .iter()
        .filter(|ip| ip.is_ipv4())
        .map(IpAddr::to_string)
        .collect();
    let mut v6: Vec<String> = port
        .ips
        .iter()
        .filter(|ip| ip.is_ipv6())
        .map(IpAddr::to_string)
        .collect();
    v6.push(port.mac.ipv6_link_local().to_string());
    v6.sort();
    v6.dedup();

    // Anti-spoofing: runs in prerouting for every frame the guest sends,
    // whether it is bridged to another port or delivered to the host.
    let mut spoof = vec![
        format!("ether saddr != {mac} drop"),
        "ether type != { ip, arp, ip6 } drop".to_string(),
        format!("arp saddr ether != {mac} drop"),
    ];
    let mut arp_ips = vec![Ipv4Addr::UNSPECIFIED.to_string()];
    arp_ips.extend(v4.iter().cloned());
    spoof.push(format!("arp saddr ip != {} drop", anon_set(&arp_ips)));
    spoof.push(
        "ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 return".to_string(),
    );
    if v4.is_empty() {
        spoof.push("ether type ip drop".to_string());
    } else {
        spoof.push(format!("ip saddr != {} drop", anon_set(&v4)));
    }
    spoof.push(format!(
        "ip6 saddr {} icmpv6 type {{ nd-neighbor-solicit, mld-listener-report, mld2-listener-report }} return",
        Ipv6Addr::UNSPECIFIED
    ));
    spoof.push(format!("ip6 saddr != {} drop", anon_set(&v6)));
    spoof.push("udp sport { 67, 547 } drop".to_string());
    spoof.push("icmpv6 type { nd-router-advert, nd-redirect } drop".to_string());
    out.chain(&names.chain("spoof"), None, &spoof);

    // Egress: what the guest may send to other ports (and the overlay).
    let mut egress = vec![
        "ether type arp return".to_string(),
        "udp sport 68 udp dport 67 return".to_string(),
        "icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-report, mld2-listener-report } return"
            .to_string(),
    ];
    for fam in [EtherType::V4, EtherType::V6] {
        if let Some(side) = p.sides.get(&(Direction::Egress, fam)) {
            egress.extend(side_rules(
                &names,
                Direction::Egress,
                fam,
                side,
                mode,
                "return",
            ));
        }
    }
    egress.push("drop".to_string());
    out.chain(&names.chain("egress"), None, &egress);

    // Ingress: what may reach the guest from other ports.
    let mut ingress = vec![
        "ether type arp accept".to_string(),
        "icmpv6 type { nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-query } accept".to_string(),
    ];
    for fam in [EtherType::V4, EtherType::V6] {
        if let Some(side) = p.sides.get(&(Direction::Ingress, fam)) {
            ingress.extend(side_rules(
                &names,
                Direction::Ingress,
                fam,
                side,
                mode,
                "accept",
            ));
        }
    }
    ingress.push("drop".to_string());
    out.chain(&names.chain("ingress"), None, &ingress);
}

fn anon_set(items: &[String]) -> String {
    match items {
        [one] => one.clone(),
        _ => format!("{{ {} }}", items.join(", ")),
    }
}

fn fmt_ports((lo, hi): (u16, u16)) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

fn fmt_addr(fam: EtherType, a: u128) -> String {
    match fam {
        // IPv4 ranges are built from u32 values, so this never truncates.
        EtherType::V4 => Ipv4Addr::from(u32::try_from(a).unwrap_or(u32::MAX)).to_string(),
        EtherType::V6 => Ipv6Addr::from(a).to_string(),
    }
}

/// An address range as nft text: a single address, a prefix, or `a-b`.
pub(crate) fn fmt_range(fam: EtherType, (lo, hi): Range) -> String {
    let bits = match fam {
        EtherType::V4 => 32,
        EtherType::V6 => 128,
    };
    if lo == hi {
        return fmt_addr(fam, lo);
    }
    let span = hi.wrapping_sub(lo);
    let is_prefix = hi >= lo && span & span.wrapping_add(1) == 0 && lo & span == 0;
    if is_prefix {
        let len = bits - span.count_ones();
        format!("{}/{len}", fmt_addr(fam, lo))
    } else {
        format!("{}-{}", fmt_addr(fam, lo), fmt_addr(fam, hi))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_render_as_prefixes_when_possible() {
        let v4 = |s: &str| u128::from(u32::from(s.parse::<Ipv4Addr>().unwrap()));
        assert_eq!(
            fmt_range(EtherType::V4, (0, u128::from(u32::MAX))),
            "0.0.0.0/0"
        );
        assert_eq!(
            fmt_range(EtherType::V4, (v4("10.1.0.0"), v4("10.1.255.255"))),
            "10.1.0.0/16"
        );
        assert_eq!(
            fmt_range(EtherType::V4, (v4("10.0.0.7"), v4("10.0.0.7"))),
            "10.0.0.7"
        );
        assert_eq!(
            fmt_range(EtherType::V4, (v4("10.0.0.1"), v4("10.0.0.5"))),
            "10.0.0.1-10.0.0.5"
        );
        assert_eq!(fmt_range(EtherType::V6, (0, u128::MAX)), "::/0");
    }

    #[test]
    fn fingerprint_is_read_back_from_a_listing() {
        let rs = ruleset(&FirewallSpec::default());
        assert_eq!(fingerprint_of(rs.text()), Some(rs.fingerprint()));
        assert_eq!(fingerprint_of("table bridge nubo {\n}"), None);
    }

    #[test]
    fn every_port_gets_its_own_limits_and_counters() {
        use crate::spec::PortSpec;
        use nubo_netid::MacAddr;
        let port = |id: &str, tap: &str, secured: bool| PortSpec {
            port_id: id.into(),
            tap: tap.into(),
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            ips: vec!["10.0.0.5".parse().unwrap()],
            groups: vec![],
            port_security: secured,
            admin_state_up: true,
        };
        let mut spec = FirewallSpec {
            ports: vec![port("p1", "tap1", true), port("p2", "tap2", false)],
            ..FirewallSpec::default()
        };
        spec.ports[1].mac = MacAddr([2, 0, 0, 0, 0, 2]);
        spec.limits.dhcp = Rate {
            per_second: 7,
            burst: 9,
        };
        let text = ruleset(&spec).text().to_string();
        for id in ["p1", "p2"] {
            assert!(
                text.contains(&format!("counter p_{id}_dhcp_limited {{")),
                "{text}"
            );
            assert!(
                text.contains(&format!("counter p_{id}_metadata_limited {{")),
                "{text}"
            );
            assert!(text.contains(&format!("chain p_{id}_limit {{")), "{text}");
        }
        assert_eq!(limit_counter("p1", LimitKind::Dhcp), "p_p1_dhcp_limited");
        assert!(text.contains(
            "udp dport 67 limit rate over 7/second burst 9 packets counter name \"p_p1_dhcp_limited\" drop"
        ));
        // Unsecured ports are limited too, after the anti-spoofing jump.
        let spoof = text
            .find("iifname vmap { \"tap1\" : jump p_p1_spoof }")
            .unwrap();
        let limit = text
            .find("iifname vmap { \"tap1\" : jump p_p1_limit, \"tap2\" : jump p_p2_limit }")
            .unwrap();
        assert!(spoof < limit);
        // The limits are part of the fingerprint.
        let mut other = spec.clone();
        other.limits.dhcp.per_second = 8;
        assert_ne!(ruleset(&other).fingerprint(), ruleset(&spec).fingerprint());
    }

    #[test]
    fn transaction_replaces_both_tables() {
        let rs = ruleset(&FirewallSpec::default());
        let tx = rs.transaction();
        assert!(tx.starts_with(
            "add table bridge nubo\ndelete table bridge nubo\nadd table inet nubo\ndelete table inet nubo\n"
        ));
        assert!(tx.ends_with(rs.text()));
    }

    #[test]
    fn provider_uplinks_are_guarded_and_tracked_like_vxlan() {
        let plain = ruleset(&FirewallSpec::default());
        assert!(!plain.text().contains("eth1.120"));
        let rs = ruleset(&FirewallSpec {
            uplinks: vec!["eth1.120".into(), "bad name".into()],
            ..Default::default()
        });
        let t = rs.text();
        assert!(t.contains("iifname \"vx-*\" meta mark set"), "{t}");
        assert!(t.contains("iifname { \"eth1.120\" } meta mark set"), "{t}");
        // forward and output both guard it.
        assert_eq!(
            t.matches("oifname { \"eth1.120\" } jump overlay_guard")
                .count(),
            2,
            "{t}"
        );
        assert!(!t.contains("bad name"), "{t}");
        assert_ne!(rs.fingerprint(), plain.fingerprint());
    }

    #[test]
    fn a_down_port_is_dropped_first_both_ways_and_only_it() {
        use crate::spec::PortSpec;
        use nubo_netid::MacAddr;
        let port = |id: &str, tap: &str, n: u8, secured: bool| PortSpec {
            port_id: id.into(),
            tap: tap.into(),
            mac: MacAddr([2, 0, 0, 0, 0, n]),
            ips: vec![format!("10.0.0.{n}").parse().unwrap()],
            groups: vec![],
            port_security: secured,
            admin_state_up: true,
        };
        let up = FirewallSpec {
            ports: vec![port("p1", "tap1", 1, true), port("p2", "tap2", 2, false)],
            ..FirewallSpec::default()
        };
        let t = ruleset(&up).text().to_string();
        assert!(
            !t.contains("\"tap1\" } drop") && !t.contains("\"tap2\" } drop"),
            "{t}"
        );
        for (i, tap) in [(0, "tap1"), (1, "tap2")] {
            let mut spec = up.clone();
            spec.ports[i].admin_state_up = false;
            let rs = ruleset(&spec);
            let t = rs.text();
            let other = if tap == "tap1" { "tap2" } else { "tap1" };
            for (chain, iface) in [
                ("prerouting", "iifname"),
                ("forward", "oifname"),
                ("output", "oifname"),
            ] {
                let body = chain_body(t, chain);
                let first = body
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with("type "))
                    .unwrap();
                assert_eq!(
                    first,
                    format!("{iface} {{ \"{tap}\" }} drop"),
                    "{chain}: {body}"
                );
                assert!(
                    !body.contains(&format!("{{ \"{other}\" }} drop")),
                    "{chain}: {body}"
                );
            }
            assert_ne!(rs.fingerprint(), ruleset(&up).fingerprint());
            // Deterministic: the same spec renders the same ruleset.
            assert_eq!(rs, ruleset(&spec));
        }
    }

    /// The rules of chain `name` of the bridge table, one a line.
    fn chain_body(text: &str, name: &str) -> String {
        let bridge = &text[text.find("table bridge nubo").unwrap()..];
        let start = bridge.find(&format!("chain {name} {{")).unwrap();
        bridge[start..]
            .lines()
            .skip(1)
            .take_while(|l| l.trim() != "}")
            .collect::<Vec<_>>()
            .join("\n")
    }
}
