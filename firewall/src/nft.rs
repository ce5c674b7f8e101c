//! Side effects: applying, listing and removing nubo's tables through
//! libnftables, in process (see [`crate::libnft`]).
//!
//! Every function works in the caller's current network namespace; the `_in`
//! variants take a [`Netns`] so tests (and tools) can target a named
//! namespace.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use tracing::info;

use crate::error::FirewallError;
use crate::libnft::{in_named_netns, NetnsId, Nft};
use crate::render::{fingerprint_of, Ruleset, TABLE};

/// Where to act.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Netns {
    /// The calling thread's network namespace.
    #[default]
    Current,
    /// A namespace created with `ip netns add` (a file under `/run/netns`),
    /// entered with `setns` on a short-lived helper thread.
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

/// Applies `rs` in `ns`: one libnftables command buffer, hence one netlink
/// batch and one kernel transaction, that creates, deletes and refills both
/// nubo tables, so packets see either the old or the new ruleset (exactly
/// what `nft -f` of the same text does). Also turns on
/// `bridge-nf-call-ip{,6}tables` in that namespace, without which stateful
/// filtering cannot work. No other table is touched.
pub fn apply_in(ns: &Netns, rs: &Ruleset) -> Result<(), FirewallError> {
    let transaction = rs.transaction();
    with_nft(ns, |nft| {
        enable_bridge_netfilter()?;
        nft.run("apply ruleset", &transaction).map(drop)
    })?;
    info!(fingerprint = rs.fingerprint(), "firewall ruleset applied");
    Ok(())
}

/// Lists nubo's live tables in the current namespace; `None` when the
/// bridge table does not exist.
pub fn current() -> Result<Option<String>, FirewallError> {
    current_in(&Netns::Current)
}

/// Lists nubo's live tables in `ns` (nft's own listing of `table bridge
/// nubo` followed by `table inet nubo`, as `nft list table …` prints them);
/// `None` when the bridge table does not exist.
pub fn current_in(ns: &Netns) -> Result<Option<String>, FirewallError> {
    with_nft(ns, |nft| {
        let tables = nft.run("list tables", "list tables")?;
        let has = |family: &str| {
            tables
                .lines()
                .any(|l| l.trim() == format!("table {family} {TABLE}"))
        };
        if !has("bridge") {
            return Ok(None);
        }
        let mut out = nft.run("list bridge table", &format!("list table bridge {TABLE}"))?;
        if has("inet") {
            out.push_str(&nft.run("list inet table", &format!("list table inet {TABLE}"))?);
        }
        Ok(Some(out))
    })
}

/// The named counters of nubo's bridge table in the current namespace, by
/// name (packets counted): among them the per-port limit counters named by
/// [`crate::limit_counter`]. Empty when the table does not exist.
pub fn limit_counters() -> Result<BTreeMap<String, u64>, FirewallError> {
    limit_counters_in(&Netns::Current)
}

/// Like [`limit_counters`], in `ns`.
pub fn limit_counters_in(ns: &Netns) -> Result<BTreeMap<String, u64>, FirewallError> {
    with_nft(ns, |nft| table_counters(nft, "bridge", TABLE))
}

/// Whether the namespace `nft` acts on has table `family name`.
pub(crate) fn has_table(nft: &mut Nft, family: &str, name: &str) -> Result<bool, FirewallError> {
    let tables = nft.run("list tables", "list tables")?;
    let wanted = format!("table {family} {name}");
    Ok(tables.lines().any(|l| l.trim() == wanted))
}

/// The named counters of table `family name` by name (packets); empty when
/// the table does not exist.
pub(crate) fn table_counters(
    nft: &mut Nft,
    family: &str,
    name: &str,
) -> Result<BTreeMap<String, u64>, FirewallError> {
    if !has_table(nft, family, name)? {
        return Ok(BTreeMap::new());
    }
    nft.set_json(true);
    let listed = nft.run(
        "list counters",
        &format!("list counters table {family} {name}"),
    );
    nft.set_json(false);
    parse_counters(&listed?)
}

/// Reads `{"counter": {"name": …, "packets": …}}` objects out of an
/// `nft -j list counters` answer. Pure.
pub fn parse_counters(json: &str) -> Result<BTreeMap<String, u64>, FirewallError> {
    let doc: serde_json::Value =
        serde_json::from_str(json).map_err(|e| FirewallError::BadJson {
            what: "list counters",
            reason: e.to_string(),
        })?;
    let mut out = BTreeMap::new();
    let items = doc
        .get("nftables")
        .and_then(serde_json::Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for item in items {
        let Some(counter) = item.get("counter") else {
            continue;
        };
        let name = counter.get("name").and_then(serde_json::Value::as_str);
        let packets = counter.get("packets").and_then(serde_json::Value::as_u64);
        if let (Some(name), Some(packets)) = (name, packets) {
            out.insert(name.to_owned(), packets);
        }
    }
    Ok(out)
}

/// Deletes nubo's tables in the current namespace (a no-op if absent).
pub fn remove() -> Result<(), FirewallError> {
    remove_in(&Netns::Current)
}

/// Deletes nubo's tables in `ns` (a no-op if absent), in one transaction.
pub fn remove_in(ns: &Netns) -> Result<(), FirewallError> {
    let mut tx = String::new();
    for family in ["bridge", "inet"] {
        tx.push_str(&format!(
            "add table {family} {TABLE}\ndelete table {family} {TABLE}\n"
        ));
    }
    with_nft(ns, |nft| nft.run("remove tables", &tx).map(drop))?;
    info!("firewall tables removed");
    Ok(())
}

/// The context for [`Netns::Current`], kept for the life of the process
/// (one netlink socket, no set-up per call) together with the namespace it
/// acts on; replaced when the calling thread is in another namespace, and
/// dropped after a failed call so the next one starts afresh.
static CURRENT: Mutex<Option<Nft>> = Mutex::new(None);

/// Runs `f` with a libnftables context acting on `ns`, from the calling
/// thread ([`Netns::Current`]) or a helper thread inside the named
/// namespace (with a context of its own); either way one thread at a time.
fn with_nft<T: Send>(
    ns: &Netns,
    f: impl FnOnce(&mut Nft) -> Result<T, FirewallError> + Send,
) -> Result<T, FirewallError> {
    match ns {
        Netns::Current => {
            let here = NetnsId::of_current_thread()?;
            let mut slot = CURRENT.lock().unwrap_or_else(PoisonError::into_inner);
            let nft = match slot.take() {
                Some(nft) if nft.netns() == here => slot.insert(nft),
                stale => {
                    drop(stale);
                    slot.insert(Nft::new()?)
                }
            };
            let result = f(nft);
            if result.is_err() {
                *slot = None;
            }
            result
        }
        Netns::Named(name) => in_named_netns(name, || f(&mut Nft::new()?)),
    }
}

/// Turns on bridge netfilter in the calling thread's namespace
/// (`/proc/sys/net` is per network namespace).
fn enable_bridge_netfilter() -> Result<(), FirewallError> {
    for path in BRIDGE_NF_SYSCTLS {
        let io_err = |source| FirewallError::BridgeNetfilter {
            path: path.to_owned(),
            source,
        };
        let value = std::fs::read_to_string(path).map_err(io_err)?;
        if value.trim() != "1" {
            std::fs::write(path, "1\n").map_err(io_err)?;
            info!(path, "enabled bridge netfilter");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_parsed_from_nft_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"counter": {"family": "bridge", "name": "p_a_dhcp_limited", "table": "nubo", "handle": 2, "packets": 17, "bytes": 5780}},
            {"counter": {"family": "bridge", "name": "p_a_metadata_limited", "table": "nubo", "handle": 3, "packets": 0, "bytes": 0}}]}"#;
        let got = parse_counters(json).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got["p_a_dhcp_limited"], 17);
        assert_eq!(got["p_a_metadata_limited"], 0);
        assert!(parse_counters("not json").is_err());
        assert!(parse_counters("{}").unwrap().is_empty());
    }
}
