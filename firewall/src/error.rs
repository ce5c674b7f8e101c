//! Errors of the side-effecting functions.

/// Why applying, listing or removing the firewall failed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// A helper program (`nft`, `ip`, `tee`) could not be started or fed.
    #[error("could not run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A helper program ran and failed.
    #[error("{what} failed ({status}): {stderr}")]
    CommandFailed {
        /// The operation, e.g. "apply ruleset".
        what: &'static str,
        /// Exit status.
        status: String,
        /// What the program printed on stderr.
        stderr: String,
    },
    /// A helper program printed something that is not UTF-8.
    #[error("{what}: output is not UTF-8")]
    BadOutput {
        /// The operation.
        what: &'static str,
    },
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
}
