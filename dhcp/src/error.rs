//! Error types of the DHCP server.

use std::io;

/// Errors returned by the public API of this crate.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// The interface name cannot name a Linux network device.
    #[error("{0:?} is not a valid interface name (1-15 bytes, no '/', ':', NUL or whitespace)")]
    InvalidInterfaceName(String),

    /// A socket option or the socket itself could not be set up.
    #[error("cannot set up the DHCP socket on {iface} ({step}): {source}")]
    Socket {
        /// The bridge the socket was meant for.
        iface: String,
        /// What was being done (e.g. "SO_BINDTODEVICE").
        step: &'static str,
        /// The underlying OS error.
        #[source]
        source: io::Error,
    },

    /// The socket could not be registered with the tokio runtime
    /// (typically: `spawn`/`run` called outside a runtime).
    #[error("cannot register the DHCP socket of {iface} with the tokio runtime: {source}")]
    Runtime {
        /// The bridge the socket serves.
        iface: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A lease handed to the lease table is not usable.
    #[error("invalid lease for {mac}: {reason}")]
    InvalidLease {
        /// The MAC address of the lease, as `aa:bb:cc:dd:ee:ff`.
        mac: String,
        /// Why the lease was rejected.
        reason: String,
    },

    /// The server task ended abnormally (panicked or was aborted).
    #[error("the DHCP server task of {iface} ended abnormally: {reason}")]
    Task {
        /// The bridge the server served.
        iface: String,
        /// What happened to the task.
        reason: String,
    },
}

/// Why a received datagram was dropped before any protocol processing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the fixed BOOTP header plus the magic cookie.
    #[error("datagram of {0} bytes is shorter than a DHCP header (240 bytes)")]
    TooShort(usize),
    /// Longer than any legitimate DHCP client message.
    #[error("datagram of {0} bytes or more exceeds the accepted maximum")]
    TooLong(usize),
    /// The DHCP magic cookie is missing (plain BOOTP or garbage).
    #[error("missing DHCP magic cookie")]
    NoMagicCookie,
    /// `dhcproto` could not parse the message.
    #[error("malformed DHCP message: {0}")]
    Malformed(String),
    /// An option is truncated or has a length its definition forbids.
    #[error("option {code} with length {len}: {reason}")]
    BadOption {
        /// The option code.
        code: u8,
        /// Its (concatenated) length.
        len: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The DHCP parser panicked on this datagram (a parser bug; contained).
    #[error("the DHCP parser panicked on this datagram")]
    ParserPanic,
    /// The message is a BOOTREPLY: clients never send those.
    #[error("BOOTREPLY received from a client port")]
    NotARequest,
    /// Hardware type/length is not Ethernet/6.
    #[error("hardware type/length is not Ethernet/6 (htype {htype}, hlen {hlen})")]
    NotEthernet {
        /// The `htype` field of the message.
        htype: u8,
        /// The `hlen` field of the message.
        hlen: u8,
    },
}
