//! Ports and the address / MAC reservations behind them (IPAM).

use std::net::IpAddr;

use etcd_client::Txn;
use nubo_common::keys;
use nubo_common::model::{self, Port, QuotaUsage};
use nubo_common::{NodeName, PortId, ProjectId, SecurityGroupId};
use nubo_netid::MacAddr;
use nubo_store::kv::{put, unchanged};
use nubo_store::{Guard, TxnBuilder};

pub(crate) use super::ip_pool::{next_ip, reserve_ip, IpHolder, IpPool, MAX_ALLOC_ATTEMPTS};
use super::{Page, PageRequest, Scope};
use crate::error::{ApiError, ApiResult};
use crate::ipam;
use crate::state::Ctx;
use crate::validate;

/// Reserves a new port in `t`: its address and its MAC must be free (the
/// returned guards, in that order, tell which was taken when `t` fails),
/// and writes the port.
/// A port without an address reserves none (its address guard is `None`).
pub(crate) fn reserve_port(p: &Port, t: &mut TxnBuilder) -> (Option<Guard>, Guard) {
    let (ips, mac) = reserve_port_ips(p, t);
    (ips.into_iter().next(), mac)
}

/// [`reserve_port`] with a guard for each of the port's addresses
/// ([`Port::ips`] order).
pub(crate) fn reserve_port_ips(p: &Port, t: &mut TxnBuilder) -> (Vec<Guard>, Guard) {
    let ip = p
        .ips()
        .into_iter()
        .map(|ip| reserve_ip(t, &p.network, ip, IpHolder::Port(p.id)))
        .collect();
    if p.ip.is_none() {
        t.put(&keys::bare_port(&p.network, &p.id), &p.id);
    }
    let mac_key = keys::mac(&p.mac);
    let mac = t.absent(&mac_key);
    t.put(&mac_key, &p.id);
    t.put(&keys::port(&p.id), p);
    (ip, mac)
}

/// Deletes a port in `t` and releases its address, MAC and owner mark.
pub(crate) fn release_port(p: &Port, t: &mut TxnBuilder) {
    t.delete(&keys::port(&p.id));
    for ip in p.ips() {
        t.delete(&keys::ipam(&p.network, IpAddr::V4(ip)));
    }
    if p.ip.is_none() {
        t.delete(&keys::bare_port(&p.network, &p.id));
    }
    t.delete(&keys::mac(&p.mac));
    t.delete(&keys::port_owner(&p.id));
}

/// Adds to `t` (a transaction deleting `ports`) the disassociation of their
/// floating IPs: each one's record loses its port, its index goes, and the
/// indexes are guarded so that an association made meanwhile fails `t`.
pub(crate) async fn disassociate_ports_into(
    ctx: &Ctx,
    ports: &[PortId],
    t: &mut TxnBuilder,
) -> ApiResult<()> {
    let index: Vec<String> = ports.iter().map(keys::floating_ip_port).collect();
    let read = ctx.store.get_many(&index).await?;
    for (key, kv) in index.iter().zip(read) {
        let Some(kv) = kv else {
            t.absent(key);
            continue;
        };
        t.unchanged(key, kv.mod_revision());
        t.delete(key);
        let Ok(id) = nubo_store::kv::decode_kv::<nubo_common::FloatingIpId>(&kv) else {
            tracing::warn!(%key, "unreadable floating IP index removed with its port");
            continue;
        };
        let fkey = keys::floating_ip(&id);
        if let Some(f) = ctx.store.read::<model::FloatingIp>(&fkey).await? {
            let mut v = f.value;
            v.port = None;
            v.fixed_ip = None;
            v.router = None;
            t.unchanged(&fkey, f.mod_rev);
            t.put(&fkey, &v);
        }
    }
    Ok(())
}
/// Whether `port` can be plugged into a server: not plugged anywhere, not
/// a router's interface, and with an address (a port made before its
/// network had a subnet has none). Pure.
pub(crate) fn check_pluggable(port: &Port) -> ApiResult<()> {
    if let Some(dev) = port.device {
        return Err(ApiError::FailedPrecondition(format!(
            "port {} is already plugged into server {dev}",
            port.id
        )));
    }
    if let Some(r) = port.router {
        return Err(ApiError::FailedPrecondition(format!(
            "port {} is an interface of router {r}",
            port.id
        )));
    }
    if port.ip.is_none() {
        return Err(ApiError::FailedPrecondition(format!(
            "port {} has no fixed IP (it was made before its network had a subnet); a server's port needs one: make a new port",
            port.id
        )));
    }
    Ok(())
}

/// A new port (not plugged into a server).
#[derive(Debug, Clone, Default)]
pub struct NewPort {
    /// Its name (optional, not unique).
    pub name: String,
    /// Its network (id or name).
    pub network: String,
    /// A fixed address; empty = allocated.
    pub ip: String,
    /// Fixed addresses (subnet and/or address each), instead of `ip`.
    pub fixed_ips: Vec<super::fixed_ips::FixedIpRequest>,
    /// Security groups (ids or names); empty = the project's `default`
    /// unless `no_security_groups`.
    pub security_groups: Vec<String>,
    /// No security group at all (Neutron's `security_groups: []`): with
    /// port security on, only DHCP and metadata pass.
    pub no_security_groups: bool,
    /// No anti-spoofing and no security groups.
    pub no_port_security: bool,
    /// Free-form description.
    pub description: String,
    /// Made administratively down (passes no traffic until enabled).
    pub disabled: bool,
    /// A chosen MAC (`aa:bb:cc:dd:ee:ff`, unicast, not all-zero, unique in
    /// the cluster); empty = a random `fa:16:3e` one.
    pub mac: String,
    /// Cloud admins: the node it is bound to before a server plugs it
    /// (Neutron's `binding:host_id`); empty = none.
    pub host: String,
}

/// Changes to a port's own fields; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct PortChanges {
    /// New name (empty clears it).
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// Administratively up (`true`) or down.
    pub admin_state_up: Option<bool>,
    /// New security groups (ids or names) when not empty.
    pub security_groups: Vec<String>,
    /// Remove every security group (exclusive with `security_groups`).
    pub no_security_groups: bool,
    /// Cloud admins: the requested host (`""` clears it), see
    /// [`requested_host`].
    pub host: Option<String>,
}

impl PortChanges {
    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.description.is_none()
            && self.admin_state_up.is_none()
            && self.security_groups.is_empty()
            && !self.no_security_groups
            && self.host.is_none()
    }
}

/// The host a cloud admin binds a port to (`""`: none), checked: admins
/// only (as Neutron's `binding:host_id` policy), and a registered node
/// (an unknown host is refused rather than shown as a binding that
/// cannot be).
async fn requested_host(ctx: &Ctx, host: &str) -> ApiResult<Option<NodeName>> {
    let host = host.trim();
    if host.is_empty() {
        return Ok(None);
    }
    if !crate::caller::is_cloud_admin() {
        return Err(ApiError::PermissionDenied(
            "only a cloud admin may bind a port to a host (binding:host_id)".into(),
        ));
    }
    let node = NodeName::new(host)
        .map_err(|e| ApiError::InvalidArgument(format!("host {host:?}: {e}")))?;
    if ctx
        .store
        .read::<serde_json::Value>(&keys::node(&node))
        .await?
        .is_none()
    {
        return Err(ApiError::InvalidArgument(format!(
            "host {node} is not a registered node (nubo node list)"
        )));
    }
    Ok(Some(node))
}

/// Whether port `p` may be plugged into a server on `node` (`None`: a
/// server not placed yet): refused when an admin bound it to another
/// host. Pure.
pub(crate) fn check_pluggable_on(p: &Port, node: Option<&NodeName>) -> ApiResult<()> {
    match (&p.host, node) {
        (Some(h), Some(n)) if h != n => Err(ApiError::FailedPrecondition(format!(
            "port {} is bound to host {h} (binding:host_id): only a server on that node may plug it, not one on {n}; clear or change its host first",
            p.id
        ))),
        (Some(h), None) => Err(ApiError::FailedPrecondition(format!(
            "port {} is bound to host {h} (binding:host_id): the server is on no node yet",
            p.id
        ))),
        _ => Ok(()),
    }
}

/// A chosen port MAC, checked: six hex octets, unicast, not all-zero, and
/// not in nubo's router OUI (gateway and node routing MACs live there: a
/// guest holding one could pose as a distributed gateway). Pure.
pub(crate) fn chosen_mac(s: &str) -> ApiResult<MacAddr> {
    let mac: MacAddr = s.trim().parse().map_err(|_| {
        ApiError::InvalidArgument(format!(
            "mac {s:?} is not a MAC address (six hex octets, aa:bb:cc:dd:ee:ff)"
        ))
    })?;
    if mac.is_zero() || mac.is_multicast() {
        return Err(ApiError::InvalidArgument(format!(
            "mac {mac} is not a unicast address: a port's MAC must be unicast and not all-zero"
        )));
    }
    if mac.octets()[..3] == nubo_netid::ROUTER_MAC_PREFIX {
        return Err(ApiError::InvalidArgument(format!(
            "mac {mac} is in nubo's router range (fa:16:3f:…), reserved for router gateways"
        )));
    }
    Ok(mac)
}

/// Checks a port's name and description. Pure.
fn check_text(name: &str, description: &str) -> ApiResult<()> {
    if !name.is_empty() {
        validate::name("port", name)?;
    }
    validate::description(description)
}

/// The security groups asked for, resolved: `none` = no group, an empty
/// list = the project's `default`.
async fn resolve_groups(
    ctx: &Ctx,
    project: &ProjectId,
    refs: &[String],
    none: bool,
) -> ApiResult<Vec<SecurityGroupId>> {
    match (none, refs.is_empty()) {
        (true, true) => Ok(Vec::new()),
        (true, false) => Err(ApiError::InvalidArgument(
            "security groups and \"no security group\" exclude each other".into(),
        )),
        (false, _) => super::security_groups::secgroups(ctx, project, refs).await,
    }
}

/// Creates a port of `project` with a MAC of its own and, when its network
/// has a subnet, an address (a port of a network without a subnet has none).
pub async fn create(ctx: &Ctx, project: &ProjectId, r: NewPort) -> ApiResult<Port> {
    let project = project.clone();
    check_text(&r.name, &r.description)?;
    let chosen = match r.mac.trim() {
        "" => None,
        s => Some(chosen_mac(s)?),
    };
    let net = super::lookup::usable_network(ctx, &project, &r.network)
        .await?
        .value;
    // No subnet: the port has no address (Neutron's port on a bare network).
    let mut addresses = super::fixed_ips::Addresses::resolve(&net, &r.ip, &r.fixed_ips)?;
    let sgs = resolve_groups(ctx, &project, &r.security_groups, r.no_security_groups).await?;
    let host = requested_host(ctx, &r.host).await?;
    let net_name = net.name.clone();
    let mut port = Port {
        id: PortId::new_random(),
        name: r.name.clone(),
        description: r.description.clone(),
        admin_state_up: !r.disabled,
        project,
        network: net.id,
        mac: chosen.unwrap_or_else(|| ipam::random_mac(&mut rand::rng())),
        ip: None,
        more_ips: Vec::new(),
        security_groups: sgs,
        port_security: !r.no_port_security,
        device: None,
        node: None,
        router: None,
        host,
        created_at: model::now(),
    };
    for _ in 0..MAX_ALLOC_ATTEMPTS {
        let ips = addresses.pick(ctx).await?;
        port.ip = ips.first().copied();
        port.more_ips = ips.iter().skip(1).copied().collect();
        let mut t = TxnBuilder::new();
        let (ips_free, mac_free) = reserve_port_ips(&port, &mut t);
        let delta = QuotaUsage {
            ports: 1,
            ..Default::default()
        };
        super::quotas::add(ctx, &mut t, &port.project, &delta).await?;
        let a = ctx.store.commit(&t).await?;
        if a.succeeded() {
            tracing::info!(port = %port.id, network = %port.network, ips = ?port.ips(), "port created");
            return Ok(port);
        }
        let taken: Vec<bool> = ips_free.iter().map(|g| !a.held(*g)).collect();
        addresses.conflict(&ips, &taken)?;
        if !a.held(mac_free) {
            if let Some(mac) = chosen {
                return Err(ApiError::AlreadyExists(format!(
                    "mac {mac} is already in use by another port"
                )));
            }
            port.mac = ipam::random_mac(&mut rand::rng());
        }
    }
    Err(ApiError::Unavailable(format!(
        "could not reserve an address on network {net_name:?} after {MAX_ALLOC_ATTEMPTS} attempts (heavy contention); retry"
    )))
}

/// The port `r` (id or name) of `project`.
pub async fn get(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<Port> {
    Ok(super::lookup::port(ctx, project, r).await?.value)
}

/// One page of the ports `scope` sees.
pub async fn list(ctx: &Ctx, scope: &Scope, page: &PageRequest) -> ApiResult<Page<Port>> {
    super::lookup::list_scoped(ctx, &keys::ports_prefix(), scope, page).await
}

/// Changes the name, description, administrative state and/or security
/// groups of port `r` of `project` (one guarded write; the agents of the
/// port's node follow the record).
pub async fn update(ctx: &Ctx, project: &ProjectId, r: &str, c: PortChanges) -> ApiResult<Port> {
    check_text(
        c.name.as_deref().unwrap_or_default(),
        c.description.as_deref().unwrap_or_default(),
    )?;
    let sgs = match (c.no_security_groups, c.security_groups.is_empty()) {
        (false, true) => None,
        (none, _) => Some(resolve_groups(ctx, project, &c.security_groups, none).await?),
    };
    let host = match &c.host {
        Some(h) => Some(requested_host(ctx, h).await?),
        None => None,
    };
    for _ in 0..8 {
        let mut p = super::lookup::port(ctx, project, r).await?;
        let v = &mut p.value;
        if let Some(sgs) = &sgs {
            v.security_groups = sgs.clone();
        }
        if let Some(name) = &c.name {
            v.name = name.clone();
        }
        if let Some(d) = &c.description {
            v.description = d.clone();
        }
        if let Some(up) = c.admin_state_up {
            v.admin_state_up = up;
        }
        if let Some(h) = &host {
            if v.router.is_some() && h.is_some() {
                return Err(ApiError::FailedPrecondition(format!(
                    "port {} is a router's interface, routed on every node: it has no host",
                    v.id
                )));
            }
            if let (Some(node), Some(want)) = (&v.node, h) {
                if node != want {
                    return Err(ApiError::FailedPrecondition(format!(
                        "port {} is plugged into a server on node {node}: its binding follows the server (migrate the server instead)",
                        v.id
                    )));
                }
            }
            v.host = h.clone();
        }
        let key = keys::port(&p.value.id);
        let resp = ctx
            .store
            .txn(
                Txn::new()
                    .when([unchanged(&key, p.mod_rev)])
                    .and_then([put(&key, &p.value)]),
            )
            .await?;
        if resp.succeeded() {
            tracing::info!(port = %p.value.id, admin_state_up = p.value.admin_state_up, "port updated");
            return Ok(p.value);
        }
    }
    Err(ApiError::Unavailable(
        "the port changed concurrently too often; retry".into(),
    ))
}

/// Deletes port `r` of `project` and releases its address and MAC;
/// refused while it is plugged into a server.
pub async fn delete(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<()> {
    for _ in 0..32 {
        let p = super::lookup::port(ctx, project, r).await?;
        if let Some(dev) = p.value.device {
            return Err(ApiError::FailedPrecondition(format!(
                "port {} is plugged into server {dev}; delete the server first",
                p.value.id
            )));
        }
        if let Some(r) = p.value.router {
            return Err(ApiError::FailedPrecondition(format!(
                "port {} is an interface of router {r}; remove it from the router (which deletes it)",
                p.value.id
            )));
        }
        let mut t = TxnBuilder::new();
        t.unchanged(&keys::port(&p.value.id), p.mod_rev);
        release_port(&p.value, &mut t);
        disassociate_ports_into(ctx, &[p.value.id], &mut t).await?;
        let delta = QuotaUsage {
            ports: 1,
            ..Default::default()
        };
        super::quotas::release(ctx, &mut t, &p.value.project, &delta).await?;
        if ctx.store.commit(&t).await?.succeeded() {
            tracing::info!(port = %p.value.id, "port deleted");
            return Ok(());
        }
    }
    Err(ApiError::Unavailable(
        "the port changed concurrently too often; retry".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chosen_mac_is_a_unicast_non_zero_non_router_address() {
        assert_eq!(
            chosen_mac(" FA:16:3E:00:00:0A ").unwrap().to_string(),
            "fa:16:3e:00:00:0a"
        );
        assert!(chosen_mac("02:00:00:00:00:01").is_ok());
        for (bad, why) in [
            ("00:00:00:00:00:00", "unicast"),
            ("01:00:5e:00:00:01", "unicast"),
            ("ff:ff:ff:ff:ff:ff", "unicast"),
            ("fa:16:3f:00:00:01", "router range"),
            ("fa:16:3e:00:00", "not a MAC"),
            ("fa-16-3e-00-00-01", "not a MAC"),
            ("zz:16:3e:00:00:01", "not a MAC"),
        ] {
            match chosen_mac(bad) {
                Err(ApiError::InvalidArgument(m)) => assert!(m.contains(why), "{bad}: {m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
