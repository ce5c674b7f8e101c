//! Errors of the side-effecting functions, and of router specs.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Why applying, listing or removing the firewall failed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// libnftables ran the commands and failed (a syntax or evaluation
    /// error, or the kernel refused the transaction, which then changed
    /// nothing). `message` is the library's error buffer: what `nft` would
    /// have printed on stderr.
    #[error("{what} failed (libnftables returned {code}): {message}")]
    Nft {
        /// The operation, e.g. "apply ruleset".
        what: &'static str,
        /// The return code of `nft_run_cmd_from_buffer`.
        code: i32,
        /// The library's error text.
        message: String,
    },
    /// The commands contain a NUL byte, which a C string cannot carry.
    #[error("{what}: command text contains a NUL byte at offset {position}")]
    NulInCommand {
        /// The operation.
        what: &'static str,
        /// Offset of the first NUL byte.
        position: usize,
    },
    /// nftables printed something that is not UTF-8.
    #[error("{what}: output is not UTF-8")]
    BadOutput {
        /// The operation.
        what: &'static str,
    },
    /// nftables printed JSON that cannot be read.
    #[error("{what}: unreadable JSON output: {reason}")]
    BadJson {
        /// The operation.
        what: &'static str,
        /// The parser's complaint.
        reason: String,
    },
    /// A libnftables context could not be set up.
    #[error("cannot set up a libnftables context: {0}")]
    Context(&'static str),
    /// No netfilter netlink socket can be opened in the namespace (no
    /// nf_tables support, no permission, out of descriptors); checked
    /// before creating a context because libnftables would exit the
    /// process instead of reporting it.
    #[error("cannot open a netfilter netlink socket: {source}")]
    Netlink {
        /// The socket(2) error.
        #[source]
        source: std::io::Error,
    },
    /// A network namespace could not be identified or entered.
    #[error("cannot enter network namespace {name}: {source}")]
    Netns {
        /// The namespace name (or the file that failed).
        name: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The helper thread that enters a named namespace failed.
    #[error("namespace helper thread: {0}")]
    Thread(String),
    /// The bridge netfilter sysctls are missing or not writable (is
    /// `br_netfilter` loaded?); stateful filtering cannot work without them.
    #[error("cannot enable bridge netfilter via {path} (is br_netfilter loaded?): {source}")]
    BridgeNetfilter {
        /// The sysctl file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A router namespace's NAT spec is invalid (nothing was applied).
    #[error("invalid router spec: {0}")]
    RouterSpec(#[from] RouterSpecError),
}

/// Why a router namespace's NAT spec (`crate::router::RouterNatSpec`)
/// cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouterSpecError {
    /// A leg name is not a valid interface name (1 to 15 printable
    /// characters, no quote, slash, backslash, star or space).
    #[error("leg name {leg:?} is not a valid interface name")]
    BadLegName {
        /// The name as given.
        leg: String,
    },
    /// Two legs (internal or external) have the same name.
    #[error("leg {leg:?} is given twice")]
    DuplicateLeg {
        /// The name.
        leg: String,
    },
    /// Two internal subnets overlap (or are the same).
    #[error("internal subnets {a} and {b} overlap")]
    OverlappingSubnets {
        /// One subnet.
        a: Ipv4Net,
        /// The other.
        b: Ipv4Net,
    },
    /// A floating IP appears twice.
    #[error("floating IP {floating} is given twice")]
    DuplicateFloating {
        /// The address.
        floating: Ipv4Addr,
    },
    /// A fixed IP has two floating IPs.
    #[error("fixed IP {fixed} has two floating IPs")]
    DuplicateFixed {
        /// The address.
        fixed: Ipv4Addr,
    },
    /// A floating IP is also the router's SNAT address.
    #[error("floating IP {floating} is also the SNAT address")]
    FloatingIsSnat {
        /// The address.
        floating: Ipv4Addr,
    },
    /// A fixed IP lies in none of the internal subnets: the router could
    /// not route to it.
    #[error("fixed IP {fixed} of floating IP {floating} is in none of the router's subnets")]
    FixedNotInternal {
        /// The fixed address.
        fixed: Ipv4Addr,
        /// Its floating address.
        floating: Ipv4Addr,
    },
}
