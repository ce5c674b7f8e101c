//! Side effects: running `nft` to apply, list and remove nubo's tables.
//!
//! Every function works in the caller's current network namespace; the `_in`
//! variants take a [`Netns`] so tests (and tools) can target a named
//! namespace through `ip netns exec`.

use std::io::Write;
use std::process::{Command, Stdio};

use tracing::{debug, info};

use crate::error::FirewallError;
use crate::render::{fingerprint_of, Ruleset, TABLE};

/// Where to run `nft`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Netns {
    /// The calling thread's network namespace.
    #[default]
    Current,
    /// A namespace created with `ip netns add` (run via `ip netns exec`).
    Named(String),
}

/// What the agent has to do to converge the firewall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirewallAction {
    /// The live tables already are the desired ruleset.
    Noop,
    /// The live tables differ or are missing: apply the desired ruleset.
    Replace,
}

/// The sysctls that make bridged IP traffic visible to conntrack.
const BRIDGE_NF_SYSCTLS: [&str; 2] = [
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
];

/// Decides whether `desired` must be applied, given the listing returned by
/// [`current`]. Compares the fingerprint stored in the table comment: the
/// listing nft prints is not the text we feed it (it renames protocols,
/// priorities and reorders set elements), so comparing text would replace
/// the ruleset on every restart; the fingerprint is written by us, survives
/// any nft version, and the inet table must be present too.
///
/// Edits made behind nubo's back that leave the comment in place are not
/// detected; the agent re-applies on every spec change anyway.
pub fn plan(desired: &Ruleset, observed: Option<&str>) -> FirewallAction {
    let Some(listing) = observed else {
        return FirewallAction::Replace;
    };
    let both_tables = listing.contains(&format!("table bridge {TABLE} {{"))
        && listing.contains(&format!("table inet {TABLE} {{"));
    let same = listing.matches(desired.fingerprint()).count() >= 2
        && fingerprint_of(listing) == Some(desired.fingerprint());
    if both_tables && same {
        FirewallAction::Noop
    } else {
        FirewallAction::Replace
    }
}

/// Applies `rs` in the current network namespace, atomically.
pub fn apply(rs: &Ruleset) -> Result<(), FirewallError> {
    apply_in(&Netns::Current, rs)
}

/// Applies `rs` in `ns`: one `nft -f -` transaction that creates, flushes
/// and refills both nubo tables, so packets see either the old or the new
/// ruleset. Also turns on `bridge-nf-call-ip{,6}tables` in that namespace,
/// without which stateful filtering cannot work. No other table is touched.
pub fn apply_in(ns: &Netns, rs: &Ruleset) -> Result<(), FirewallError> {
    enable_bridge_netfilter(ns)?;
    run_nft(ns, &["-f", "-"], Some(&rs.transaction()), "apply ruleset")?;
    info!(fingerprint = rs.fingerprint(), "firewall ruleset applied");
    Ok(())
}

/// Lists nubo's live tables in the current namespace; `None` when the
/// bridge table does not exist.
pub fn current() -> Result<Option<String>, FirewallError> {
    current_in(&Netns::Current)
}

/// Lists nubo's live tables in `ns` (nft's own listing of `table bridge
/// nubo` followed by `table inet nubo`); `None` when the bridge table does
/// not exist.
pub fn current_in(ns: &Netns) -> Result<Option<String>, FirewallError> {
    let tables = run_nft(ns, &["list", "tables"], None, "list tables")?;
    let has = |family: &str| {
        tables
            .lines()
            .any(|l| l.trim() == format!("table {family} {TABLE}"))
    };
    if !has("bridge") {
        return Ok(None);
    }
    let mut out = run_nft(
        ns,
        &["list", "table", "bridge", TABLE],
        None,
        "list bridge table",
    )?;
    if has("inet") {
        out.push_str(&run_nft(
            ns,
            &["list", "table", "inet", TABLE],
            None,
            "list inet table",
        )?);
    }
    Ok(Some(out))
}

/// Deletes nubo's tables in the current namespace (a no-op if absent).
pub fn remove() -> Result<(), FirewallError> {
    remove_in(&Netns::Current)
}

/// Deletes nubo's tables in `ns` (a no-op if absent).
pub fn remove_in(ns: &Netns) -> Result<(), FirewallError> {
    let mut tx = String::new();
    for family in ["bridge", "inet"] {
        tx.push_str(&format!(
            "add table {family} {TABLE}\ndelete table {family} {TABLE}\n"
        ));
    }
    run_nft(ns, &["-f", "-"], Some(&tx), "remove tables")?;
    info!("firewall tables removed");
    Ok(())
}

fn command(ns: &Netns, program: &str) -> Command {
    match ns {
        Netns::Current => Command::new(program),
        Netns::Named(name) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", name, program]);
            c
        }
    }
}

/// Runs `program args` (in `ns`) with optional stdin; returns stdout.
fn run(
    ns: &Netns,
    program: &str,
    args: &[&str],
    input: Option<&str>,
    what: &'static str,
) -> Result<String, FirewallError> {
    let mut cmd = command(ns, program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    debug!(?cmd, "running");
    let spawn_err = |source| FirewallError::Spawn {
        program: program.to_owned(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(spawn_err)?;
    }
    let output = child.wait_with_output().map_err(spawn_err)?;
    if !output.status.success() {
        return Err(FirewallError::CommandFailed {
            what,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    String::from_utf8(output.stdout).map_err(|_| FirewallError::BadOutput { what })
}

fn run_nft(
    ns: &Netns,
    args: &[&str],
    input: Option<&str>,
    what: &'static str,
) -> Result<String, FirewallError> {
    run(ns, "nft", args, input, what)
}

fn enable_bridge_netfilter(ns: &Netns) -> Result<(), FirewallError> {
    for path in BRIDGE_NF_SYSCTLS {
        match ns {
            Netns::Current => {
                let value = std::fs::read_to_string(path).map_err(|source| {
                    FirewallError::BridgeNetfilter {
                        path: path.to_owned(),
                        source,
                    }
                })?;
                if value.trim() != "1" {
                    std::fs::write(path, "1\n").map_err(|source| {
                        FirewallError::BridgeNetfilter {
                            path: path.to_owned(),
                            source,
                        }
                    })?;
                    info!(path, "enabled bridge netfilter");
                }
            }
            Netns::Named(_) => {
                run(ns, "tee", &[path], Some("1\n"), "enable bridge netfilter")?;
            }
        }
    }
    Ok(())
}
