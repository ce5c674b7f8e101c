//! Networks: CIDR, gateway, DNS, MTU and a unique VNI each (overlay
//! networks), or a flat/VLAN segment of a physical network (provider
//! networks, admin only, each segment used once); external and shared
//! networks (admin only).
//!
//! Subnets may overlap, in one project too (as in Neutron): nothing on a
//! node is keyed by a project and an address. Each network has its own
//! bridge, DHCP socket and IPAM prefix; metadata knows a caller by (bridge,
//! address, MAC); a router lives in a namespace of its own and is the one
//! place two subnets meet, so [`super::routers::add_subnet`] refuses a
//! subnet overlapping one of the router's (and the agent's router spec
//! refuses it again); a floating IP goes through one router. Remote-group
//! rules match members by address, as Neutron's do, across networks.

use etcd_client::GetOptions;
use ipnet::Ipv4Net;
use nubo_common::keys::{self, NameKind};
use nubo_common::model::{self, Network, ProviderSegment, ProviderType, QuotaUsage, Subnet};
use nubo_common::{NetworkId, ProjectId, SubnetId};
use nubo_store::kv::{decode_or_skip, prefix_empty};
use nubo_store::TxnBuilder;
use rand::Rng;
use std::net::Ipv4Addr;

use super::{Page, PageRequest, Scope};
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;
use crate::validate;

/// A new network.
#[derive(Debug, Clone, Default)]
pub struct NewNetwork {
    /// Its name (unique in the project); empty = none, as Neutron allows:
    /// no name-index entry, the network is referenced by its id only.
    pub name: String,
    /// IPv4 CIDR, e.g. `10.20.0.0/24` (may overlap the project's other
    /// networks, as in Neutron: only a router refuses two overlapping
    /// subnets); empty = no subnet yet ([`set_subnet`] adds it).
    pub cidr: String,
    /// Gateway: empty = the first host address, `none` = no gateway.
    pub gateway: String,
    /// DNS servers handed out by DHCP.
    pub dns: Vec<String>,
    /// MTU: 0 = the cluster default, else 576-9000.
    pub mtu: u32,
    /// `flat` or `vlan` for a provider network; empty = an overlay network.
    pub provider_type: String,
    /// The physical network of a provider network.
    pub physical_network: String,
    /// The VLAN id of a `vlan` provider network (0 = none).
    pub segment: u32,
    /// An external network (admin only).
    pub external: bool,
    /// Usable by every project (admin only).
    pub shared: bool,
}

/// The provider segment a request asks for (`None`: an overlay network),
/// with a clear error for every malformed combination. Pure.
pub fn provider_segment(
    provider_type: &str,
    physical_network: &str,
    segment: u32,
) -> ApiResult<Option<ProviderSegment>> {
    let physnet = physical_network.trim();
    let kind = match provider_type.trim() {
        "" => {
            if !physnet.is_empty() || segment != 0 {
                return Err(ApiError::InvalidArgument(
                    "a physical network or segment needs --provider-type flat or vlan".into(),
                ));
            }
            return Ok(None);
        }
        "flat" => ProviderType::Flat,
        "vlan" => ProviderType::Vlan,
        other => {
            return Err(ApiError::InvalidArgument(format!(
                "unknown provider type {other:?}: use flat or vlan"
            )))
        }
    };
    if physnet.is_empty() {
        return Err(ApiError::InvalidArgument(
            "a provider network needs a physical network (--physical-network)".into(),
        ));
    }
    validate::name("physical network", physnet)?;
    let segment = match (kind, segment) {
        (ProviderType::Flat, 0) => None,
        (ProviderType::Flat, s) => {
            return Err(ApiError::InvalidArgument(format!(
                "a flat network has no segment (got {s}); use --provider-type vlan for a VLAN"
            )))
        }
        (ProviderType::Vlan, s @ 1..=4094) => Some(s as u16),
        (ProviderType::Vlan, 0) => {
            return Err(ApiError::InvalidArgument(
                "a vlan network needs a VLAN id (--segment 1-4094)".into(),
            ))
        }
        (ProviderType::Vlan, s) => {
            return Err(ApiError::InvalidArgument(format!(
                "VLAN id {s} is out of range 1-4094"
            )))
        }
    };
    Ok(Some(ProviderSegment {
        kind,
        physical_network: physnet.to_string(),
        segment,
    }))
}

/// The words naming a provider segment in messages: `VLAN 120 of
/// physical network "physnet1"`, `the flat segment of …`.
fn describe(p: &ProviderSegment) -> String {
    match p.segment {
        Some(v) => format!("VLAN {v} of physical network {:?}", p.physical_network),
        None => format!(
            "the flat segment of physical network {:?}",
            p.physical_network
        ),
    }
}

/// The subnet a request asks for, with its gateway and DNS servers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Requested {
    cidr: Ipv4Net,
    gateway: Option<Ipv4Addr>,
    dns: Vec<Ipv4Addr>,
}

/// The subnet a request asks for: `None` when `cidr` is empty (then the
/// gateway and DNS servers must be empty too). Pure.
fn requested_subnet(cidr: &str, gateway: &str, dns: &[String]) -> ApiResult<Option<Requested>> {
    if cidr.trim().is_empty() {
        if !gateway.trim().is_empty() || !dns.is_empty() {
            return Err(ApiError::InvalidArgument(
                "a gateway or DNS servers need a subnet (--cidr)".into(),
            ));
        }
        return Ok(None);
    }
    let cidr = validate::cidr(cidr)?;
    Ok(Some(Requested {
        cidr,
        gateway: validate::gateway(gateway, cidr)?,
        dns: validate::dns(dns)?,
    }))
}

pub use super::ip_pool::subnet_of;

/// Creates a network of `project` with a unique VNI.
pub async fn create(ctx: &Ctx, project: &ProjectId, r: NewNetwork) -> ApiResult<Network> {
    let project = project.clone();
    if !r.name.is_empty() {
        validate::name("network", &r.name)?;
    }
    let subnet = requested_subnet(&r.cidr, &r.gateway, &r.dns)?;
    let mtu = match r.mtu {
        0 => 0,
        m @ 576..=9000 => m as u16,
        m => {
            return Err(ApiError::InvalidArgument(format!(
                "mtu {m} must be 0 (default) or 576-9000"
            )))
        }
    };
    let provider = provider_segment(&r.provider_type, &r.physical_network, r.segment)?;
    if (provider.is_some() || r.external || r.shared) && !crate::caller::is_cloud_admin() {
        let what = [
            (provider.is_some(), "a provider network"),
            (r.external, "an external network"),
            (r.shared, "a shared network"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, w)| *w)
        .collect::<Vec<_>>()
        .join(", ");
        return Err(ApiError::PermissionDenied(format!(
            "only a cloud admin may create {what}"
        )));
    }
    let segment_key = provider
        .as_ref()
        .map(|p| keys::provider_segment(&p.physical_network, p.segment));
    let named = !r.name.is_empty();
    let shared_key = (r.shared && named).then(|| keys::shared_network_name(&r.name));
    let idx = named.then(|| keys::name_index(NameKind::Network, &project, &r.name));
    for _ in 0..16 {
        // Provider networks are on a physical segment: no VNI.
        let vni = if provider.is_some() {
            0
        } else {
            rand::rng().random_range(1..16_000_000u32)
        };
        let net = Network {
            id: NetworkId::new_random(),
            name: r.name.clone(),
            project: project.clone(),
            cidr: subnet.as_ref().map(|sn| sn.cidr),
            subnet_name: None,
            gateway: subnet.as_ref().and_then(|sn| sn.gateway),
            vni,
            mtu,
            dns: subnet.as_ref().map(|sn| sn.dns.clone()).unwrap_or_default(),
            provider: provider.clone(),
            external: r.external,
            shared: r.shared,
            dhcp_disabled: false,
            host_routes: Vec::new(),
            allocation_pools: Vec::new(),
            subnet_id: None,
            more_subnets: Vec::new(),
            created_at: model::now(),
        };
        let mut t = TxnBuilder::new();
        let name_free = idx.as_ref().map(|idx| {
            let g = t.absent(idx);
            t.put(idx, &net.id);
            g
        });
        if provider.is_none() {
            let vkey = keys::vni(vni);
            t.absent(&vkey);
            t.put(&vkey, &net.id);
        }
        let segment_free = segment_key.as_ref().map(|k| {
            let g = t.absent(k);
            t.put(k, &net.id);
            g
        });
        let shared_free = shared_key.as_ref().map(|k| {
            let g = t.absent(k);
            t.put(k, &net.id);
            g
        });
        t.put(&keys::network(&net.id), &net);
        let delta = QuotaUsage {
            networks: 1,
            ..Default::default()
        };
        super::quotas::add(ctx, &mut t, &project, &delta).await?;
        let a = ctx.store.commit(&t).await?;
        if a.succeeded() {
            tracing::info!(network = %net.id, project = %project, cidr = ?net.cidr, vni,
                provider = ?net.provider, external = net.external, shared = net.shared,
                "network created");
            return Ok(net);
        }
        if let (Some(g), Some(p)) = (segment_free, &provider) {
            if !a.held(g) {
                return Err(ApiError::AlreadyExists(format!(
                    "{} is already used by another network",
                    describe(p)
                )));
            }
        }
        if let Some(g) = shared_free {
            if !a.held(g) {
                return Err(ApiError::AlreadyExists(format!(
                    "a shared network named {:?} already exists; shared networks' names are unique across projects",
                    r.name
                )));
            }
        }
        if name_free.is_some_and(|g| !a.held(g)) {
            return Err(ApiError::AlreadyExists(format!(
                "network {:?} already exists in project {project}",
                r.name
            )));
        }
    }
    Err(ApiError::Unavailable(
        "too many concurrent network changes; retry".into(),
    ))
}

/// What [`set_subnet`] gives a network.
#[derive(Debug, Clone, Default)]
pub struct NewSubnet {
    /// IPv4 CIDR (may overlap other networks' subnets; a router refuses
    /// two overlapping ones).
    pub cidr: String,
    /// Gateway: empty = the first host address, `none` = no gateway.
    pub gateway: String,
    /// DNS servers handed out by DHCP.
    pub dns: Vec<String>,
    /// The subnet's name (optional).
    pub name: String,
    /// No DHCP for its ports.
    pub dhcp_disabled: bool,
    /// Static routes `(destination, nexthop)` handed out by DHCP.
    pub host_routes: Vec<(String, String)>,
    /// Allocation pools `(first, last)`; empty = the whole subnet.
    pub allocation_pools: Vec<(String, String)>,
}

/// Adds a subnet to the network `r` of `project`: its first one takes the
/// network's id, a further one a new id; it must not overlap the network's
/// other subnets (other networks' may overlap it).
pub async fn set_subnet(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    sn: NewSubnet,
) -> ApiResult<Network> {
    let Some(subnet) = requested_subnet(&sn.cidr, &sn.gateway, &sn.dns)? else {
        return Err(ApiError::InvalidArgument(
            "a subnet needs a CIDR (--cidr)".into(),
        ));
    };
    let name = subnet_name(&sn.name)?;
    let host_routes = validate::host_routes(&sn.host_routes)?;
    let allocation_pools =
        validate::allocation_pools(&sn.allocation_pools, subnet.cidr, subnet.gateway)?;
    for _ in 0..16 {
        let net = super::lookup::network(ctx, project, r).await?;
        let mut n = net.value;
        let mut subnets = n.subnets();
        let others: Vec<(String, Ipv4Net)> =
            subnets.iter().map(|s| (s.id.to_string(), s.cidr)).collect();
        if let Some((id, other)) = validate::find_overlap(subnet.cidr, &others) {
            // Tempest looks for "overlaps with another subnet" to try the
            // next CIDR.
            return Err(ApiError::InvalidArgument(format!(
                "subnet {} overlaps with another subnet of network {:?}: {id} ({other})",
                subnet.cidr, n.name
            )));
        }
        let id = match subnets.is_empty() {
            true => SubnetId::from_uuid(*n.id.as_uuid()),
            false => SubnetId::new_random(),
        };
        subnets.push(Subnet {
            id,
            name: name.clone(),
            cidr: subnet.cidr,
            gateway: subnet.gateway,
            dns: subnet.dns.clone(),
            dhcp_disabled: sn.dhcp_disabled,
            host_routes: host_routes.clone(),
            allocation_pools: allocation_pools.clone(),
        });
        n.set_subnets(subnets);
        let mut t = TxnBuilder::new();
        t.unchanged(&keys::network(&n.id), net.mod_rev);
        t.put(&keys::network(&n.id), &n);
        if ctx.store.commit(&t).await?.succeeded() {
            tracing::info!(network = %n.id, subnet = %id, cidr = %subnet.cidr, "subnet added");
            return Ok(n);
        }
    }
    Err(ApiError::Unavailable(
        "the network changed concurrently too often; retry".into(),
    ))
}

/// The network `r` names and the subnet meant: `r` is a subnet's id (a
/// network's first subnet may have the network's id), or a network (id or
/// name) with exactly one subnet.
pub(crate) async fn lookup_subnet(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
) -> ApiResult<(nubo_store::kv::Versioned<Network>, Subnet)> {
    if let Ok(id) = r.parse::<SubnetId>() {
        let holder = ctx
            .store
            .list_all(&keys::networks_prefix(), |kv| {
                decode_or_skip::<Network>(kv).filter(|n| n.subnet(&id).is_some())
            })
            .await?;
        if let Some(n) = holder.first() {
            let net = super::lookup::network(ctx, project, &n.id.to_string()).await?;
            if let Some(sn) = net.value.subnet(&id) {
                return Ok((net, sn));
            }
        }
    }
    let net = super::lookup::network(ctx, project, r).await?;
    match net.value.subnets().as_slice() {
        [one] => {
            let one = one.clone();
            Ok((net, one))
        }
        [] => Err(ApiError::NotFound(format!(
            "network {:?} has no subnet",
            net.value.name
        ))),
        many => Err(ApiError::InvalidArgument(format!(
            "network {:?} has {} subnets: name one by its id",
            net.value.name,
            many.len()
        ))),
    }
}

fn subnet_name(s: &str) -> ApiResult<Option<String>> {
    match s.trim() {
        "" => Ok(None),
        s => {
            validate::name("subnet", s)?;
            Ok(Some(s.to_string()))
        }
    }
}

/// What [`update`] changes in a network (`None`: unchanged).
#[derive(Debug, Clone, Default)]
pub struct NetworkChanges {
    /// A new name (unique in the project; "" = none, id only).
    pub name: Option<String>,
    /// `router:external` (cloud admins only): refused while the network
    /// is a router's subnet (making it external) or holds routers'
    /// gateways or floating IPs (making it internal), as Neutron's
    /// `ExternalNetworkInUse`.
    pub external: Option<bool>,
    /// The subnet the subnet attributes below change (its id; `None`: the
    /// network's first subnet).
    pub subnet: Option<String>,
    /// The subnet's name ("" = none).
    pub subnet_name: Option<String>,
    /// The gateway: a host address of the subnet, or "none".
    pub gateway: Option<String>,
    /// DNS servers.
    pub dns: Option<Vec<String>>,
    /// Static routes `(destination, nexthop)`.
    pub host_routes: Option<Vec<(String, String)>>,
    /// DHCP off (true) or on.
    pub dhcp_disabled: Option<bool>,
}

/// Applies `c` to network `r` of `project` in one transaction guarded by
/// its revision. Subnet attributes need a subnet; a new gateway must be a
/// free host address of it, and is refused while a router answers on the
/// old one. The agents converge from the record (leases change on the
/// guests' next renewal).
pub async fn update(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    c: NetworkChanges,
) -> ApiResult<Network> {
    if let Some(n) = c.name.as_deref().filter(|n| !n.is_empty()) {
        validate::name("network", n)?;
    }
    if c.external.is_some() && !crate::caller::is_cloud_admin() {
        return Err(ApiError::PermissionDenied(
            "only a cloud admin may change whether a network is external".into(),
        ));
    }
    let subnet_name = c.subnet_name.as_deref().map(subnet_name).transpose()?;
    let dns = c.dns.as_deref().map(validate::dns).transpose()?;
    let host_routes = c
        .host_routes
        .as_deref()
        .map(validate::host_routes)
        .transpose()?;
    for _ in 0..16 {
        let net = super::lookup::network(ctx, project, r).await?;
        let old = net.value;
        if old.project != *project && !crate::caller::is_cloud_admin() {
            return Err(ApiError::PermissionDenied(format!(
                "network {:?} belongs to project {}",
                old.name, old.project
            )));
        }
        let mut n = old.clone();
        let mut t = TxnBuilder::new();
        t.unchanged(&keys::network(&n.id), net.mod_rev);
        let subnet_change = subnet_name.is_some()
            || c.gateway.is_some()
            || dns.is_some()
            || host_routes.is_some()
            || c.dhcp_disabled.is_some();
        if subnet_change && n.cidr.is_none() {
            subnet_of(&n)?;
        }
        let mut subnets = n.subnets();
        let which = match c.subnet.as_deref().map(str::trim) {
            None | Some("") => 0,
            Some(s) => {
                let id: SubnetId = s.parse().map_err(|_| {
                    ApiError::InvalidArgument(format!("subnet {s:?} is not a subnet id"))
                })?;
                subnets.iter().position(|x| x.id == id).ok_or_else(|| {
                    ApiError::NotFound(format!("network {:?} has no subnet {id}", n.name))
                })?
            }
        };
        let (mut name_free, mut shared_free) = (None, None);
        if let Some(name) = c.name.as_ref().filter(|x| **x != n.name) {
            if !n.name.is_empty() {
                t.delete(&keys::name_index(NameKind::Network, &n.project, &n.name));
                if n.shared {
                    t.delete(&keys::shared_network_name(&n.name));
                }
            }
            if !name.is_empty() {
                let idx = keys::name_index(NameKind::Network, &n.project, name);
                name_free = Some(t.absent(&idx));
                t.put(&idx, &n.id);
                if n.shared {
                    let shared = keys::shared_network_name(name);
                    shared_free = Some(t.absent(&shared));
                    t.put(&shared, &n.id);
                }
            }
            n.name = name.clone();
        }
        let external_guard = match c.external.filter(|x| *x != n.external) {
            None => None,
            Some(x) => {
                n.external = x;
                Some(external_change(ctx, &mut t, &n).await?)
            }
        };
        let mut gateway_guards = None;
        if let (Some(g), Some(sn)) = (&c.gateway, subnets.get_mut(which)) {
            let cidr = sn.cidr;
            let gw = match g.trim() {
                "" => {
                    return Err(ApiError::InvalidArgument(
                        "gateway: give an address or \"none\"".into(),
                    ))
                }
                other => validate::gateway(other, cidr)?,
            };
            if let Some(ip) = gw.filter(|ip| {
                sn.allocation_pools
                    .iter()
                    .any(|(a, b)| (*a..=*b).contains(ip))
            }) {
                return Err(ApiError::InvalidArgument(format!(
                    "gateway {ip} is inside an allocation pool of network {:?}",
                    n.name
                )));
            }
            if gw != sn.gateway {
                // A router answers on the first subnet's gateway.
                let unrouted = (which == 0).then(|| t.absent(&keys::router_interface(&n.id)));
                let free = gw.map(|ip| t.absent(&keys::ipam(&n.id, std::net::IpAddr::V4(ip))));
                gateway_guards = Some((unrouted, free, gw));
                sn.gateway = gw;
            }
        }
        if let Some(sn) = subnets.get_mut(which) {
            if let Some(s) = subnet_name.clone() {
                sn.name = s;
            }
            if let Some(d) = dns.clone() {
                sn.dns = d;
            }
            if let Some(h) = host_routes.clone() {
                sn.host_routes = h;
            }
            if let Some(d) = c.dhcp_disabled {
                sn.dhcp_disabled = d;
            }
        }
        n.set_subnets(subnets);
        if n == old {
            return Ok(n);
        }
        t.put(&keys::network(&n.id), &n);
        let a = ctx.store.commit(&t).await?;
        if a.succeeded() {
            tracing::info!(network = %n.id, "network updated");
            return Ok(n);
        }
        if name_free.is_some_and(|g| !a.held(g)) {
            return Err(ApiError::AlreadyExists(format!(
                "network {:?} already exists in project {}",
                n.name, n.project
            )));
        }
        if shared_free.is_some_and(|g| !a.held(g)) {
            return Err(ApiError::AlreadyExists(format!(
                "a shared network named {:?} already exists; shared networks' names are unique across projects",
                n.name
            )));
        }
        if let Some(ExternalGuard::Unrouted(g)) = external_guard {
            if !a.held(g) {
                return Err(ApiError::FailedPrecondition(format!(
                    "network {} is a router's subnet: remove it from the router before making it external",
                    n.id
                )));
            }
        }
        if let Some((unrouted, free, gw)) = gateway_guards {
            if unrouted.is_some_and(|g| !a.held(g)) {
                return Err(ApiError::FailedPrecondition(format!(
                    "network {:?} is attached to a router, which answers on its gateway; remove it from the router first",
                    old.name
                )));
            }
            if free.is_some_and(|f| !a.held(f)) {
                return Err(ApiError::FailedPrecondition(format!(
                    "gateway {} is allocated on network {:?}",
                    gw.map(|g| g.to_string()).unwrap_or_default(),
                    old.name
                )));
            }
        }
    }
    Err(ApiError::Unavailable(
        "the network changed concurrently too often; retry".into(),
    ))
}

/// Removes subnet `r` (a subnet id, or a network with one subnet) of
/// `project`: refused while addresses of it are allocated (ports, floating
/// IPs, router gateways), and for the first subnet while the network is
/// attached to a router (which answers on its gateway). When the first
/// subnet goes, the next one takes its place, keeping its id.
pub async fn delete_subnet(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<Network> {
    for _ in 0..16 {
        let (net, gone) = lookup_subnet(ctx, project, r).await?;
        let mut n = net.value;
        let ipam_prefix = keys::ipam_prefix(&n.id);
        let rev = ctx.store.revision().await?;
        let taken = super::ip_pool::load_taken(ctx, &n.id).await?;
        let held = taken.iter().filter(|ip| gone.cidr.contains(*ip)).count();
        if held > 0 {
            return Err(ApiError::FailedPrecondition(format!(
                "subnet {} ({}) of network {:?} still has {held} ports or other addresses (floating IPs, router gateways); delete them first",
                gone.id, gone.cidr, n.name
            )));
        }
        let first = n.first_subnet_id() == gone.id;
        let subnets: Vec<Subnet> = n
            .subnets()
            .into_iter()
            .filter(|s| s.id != gone.id)
            .collect();
        n.set_subnets(subnets);
        let mut t = TxnBuilder::new();
        t.unchanged(&keys::network(&n.id), net.mod_rev);
        let unrouted = first.then(|| t.absent(&keys::router_interface(&n.id)));
        t.prefix_unchanged_since(&ipam_prefix, rev);
        t.put(&keys::network(&n.id), &n);
        let a = ctx.store.commit(&t).await?;
        if a.succeeded() {
            tracing::info!(network = %n.id, subnet = %gone.id, "subnet removed");
            return Ok(n);
        }
        if unrouted.is_some_and(|g| !a.held(g)) {
            return Err(ApiError::FailedPrecondition(format!(
                "network {:?} is attached to a router; remove it from the router first (nubo router remove subnet)",
                n.name
            )));
        }
    }
    Err(ApiError::Unavailable(
        "the network changed concurrently too often; retry".into(),
    ))
}

/// The network holding subnet `r` (a subnet id, or a network with one
/// subnet) of `project`.
pub async fn subnet_network(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<Network> {
    Ok(lookup_subnet(ctx, project, r).await?.0.value)
}

/// The network `r` (id or name) of `project`, a shared network, or any
/// project's external network by id.
pub async fn get(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<Network> {
    Ok(super::lookup::visible_network(ctx, project, r).await?.value)
}

/// One page of the networks `scope` sees: its project's (every project's
/// for an admin's `all_projects`), the shared ones and the external ones
/// (every project may put a router's gateway or a floating IP there, so
/// every project sees them, as in Neutron).
pub async fn list(ctx: &Ctx, scope: &Scope, page: &PageRequest) -> ApiResult<Page<Network>> {
    super::lookup::list_page(ctx, &keys::networks_prefix(), page, |kv| {
        decode_or_skip::<Network>(kv).filter(|n| n.shared || n.external || scope.sees(&n.project))
    })
    .await
}

/// Deletes the network `r` of `project`; refused while ports, routers'
/// gateways or associated floating IPs use it. An external network's
/// unassociated floating IPs go with it (as in Neutron), each released
/// to its project's quota in the same transaction.
pub async fn delete(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<()> {
    for attempt in 1..=16 {
        let net = super::lookup::network(ctx, project, r).await?;
        let n = net.value;
        let key = keys::network(&n.id);
        let ipam_prefix = keys::ipam_prefix(&n.id);
        let rev = ctx.store.revision().await?;
        let fips = if n.external {
            floating_ips_on(ctx, &n.id).await?
        } else {
            Vec::new()
        };
        if let Some((f, _)) = fips.iter().find(|(f, _)| f.port.is_some()) {
            return Err(ApiError::FailedPrecondition(format!(
                "network {} holds floating IP {} ({}), associated with a port; disassociate it first",
                n.id, f.id, f.address
            )));
        }
        let mut t = TxnBuilder::new();
        t.unchanged(&key, net.mod_rev);
        let unrouted = t.absent(&keys::router_interface(&n.id));
        let mut releases: Vec<(ProjectId, QuotaUsage)> = Vec::new();
        if fips.is_empty() {
            t.when(prefix_empty(&ipam_prefix));
        } else {
            // Its only addresses must be these floating IPs': the count
            // read after `rev`, the addresses unchanged since.
            let taken = ctx
                .store
                .get(
                    ipam_prefix.as_str(),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await?
                .count();
            let taken = usize::try_from(taken).unwrap_or(usize::MAX);
            if taken != fips.len() {
                return Err(ApiError::FailedPrecondition(format!(
                    "network {} still has {} ports or other addresses besides its {} floating IPs (routers' gateways, routers' per-node SNAT addresses); delete them first",
                    label(&n),
                    taken.saturating_sub(fips.len()),
                    fips.len()
                )));
            }
            t.prefix_unchanged_since(&ipam_prefix, rev);
            for (f, mod_rev) in &fips {
                t.unchanged(&keys::floating_ip(&f.id), *mod_rev);
                t.delete(&keys::floating_ip(&f.id));
                t.delete(&keys::ipam(&f.network, std::net::IpAddr::V4(f.address)));
                add_usage(
                    &mut releases,
                    &f.project,
                    &QuotaUsage {
                        floating_ips: 1,
                        ..Default::default()
                    },
                );
            }
        }
        let bare_prefix = keys::bare_ports_prefix(&n.id);
        t.when(prefix_empty(&bare_prefix));
        t.delete(&key);
        if !n.name.is_empty() {
            t.delete(&keys::name_index(NameKind::Network, &n.project, &n.name));
        }
        match &n.provider {
            None => t.delete(&keys::vni(n.vni)),
            Some(p) => t.delete(&keys::provider_segment(&p.physical_network, p.segment)),
        };
        if n.shared && !n.name.is_empty() {
            t.delete(&keys::shared_network_name(&n.name));
        }
        add_usage(
            &mut releases,
            &n.project,
            &QuotaUsage {
                networks: 1,
                ..Default::default()
            },
        );
        let mut quota_on = false;
        for (p, delta) in &releases {
            quota_on |= super::quotas::release(ctx, &mut t, p, delta)
                .await?
                .is_some();
        }
        let a = ctx.store.commit(&t).await?;
        if a.succeeded() {
            tracing::info!(network = %n.id, floating_ips = fips.len(), "network deleted");
            return Ok(());
        }
        if !a.held(unrouted) {
            return Err(ApiError::FailedPrecondition(format!(
                "network {} is attached to a router; remove it from the router first (nubo router remove subnet)",
                label(&n)
            )));
        }
        let mut used = 0;
        for prefix in [&ipam_prefix, &bare_prefix] {
            used += ctx
                .store
                .get(
                    prefix.as_str(),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await?
                .count();
        }
        if used > 0 && fips.is_empty() {
            return Err(ApiError::FailedPrecondition(format!(
                "network {} still has {used} ports or other addresses (floating IPs, router gateways, routers' per-node SNAT addresses); delete them first",
                label(&n)
            )));
        }
        // Without quotas or floating IPs, only the port check can fail;
        // otherwise a concurrent change is retried.
        if (!quota_on && fips.is_empty()) || attempt == 16 {
            break;
        }
    }
    Err(ApiError::Unavailable(
        "the network changed concurrently too often; retry".into(),
    ))
}

/// What guards a change of `router:external` in [`update`]'s transaction.
enum ExternalGuard {
    /// Becoming external: the network must not be a router's subnet.
    Unrouted(nubo_store::Guard),
    /// Becoming internal: checked against the routers and floating IPs
    /// read, the network's addresses unchanged since.
    Unused,
}

/// Adds to `t` what makes `n` (its new `external` already set) safe to
/// commit: becoming internal is refused at once while routers' gateways
/// or floating IPs are on it (Neutron's `ExternalNetworkInUse`, 409), and
/// `t` then requires its addresses unchanged since they were read (a
/// gateway or floating IP allocated meanwhile makes the commit fail and
/// [`update`] read again).
async fn external_change(ctx: &Ctx, t: &mut TxnBuilder, n: &Network) -> ApiResult<ExternalGuard> {
    if n.external {
        return Ok(ExternalGuard::Unrouted(
            t.absent(&keys::router_interface(&n.id)),
        ));
    }
    let rev = ctx.store.revision().await?;
    let gateways: Vec<model::Router> = ctx
        .store
        .list_all(&keys::routers_prefix(), |kv| {
            decode_or_skip::<model::Router>(kv)
                .filter(|r| r.gateway.as_ref().is_some_and(|g| g.network == n.id))
        })
        .await?;
    let fips: Vec<model::FloatingIp> = ctx
        .store
        .list_all(&keys::floating_ips_prefix(), |kv| {
            decode_or_skip::<model::FloatingIp>(kv).filter(|f| f.network == n.id)
        })
        .await?;
    if !gateways.is_empty() || !fips.is_empty() {
        return Err(ApiError::FailedPrecondition(format!(
            "network {} cannot be made internal: it holds {} routers' gateways ({}) and {} floating IPs; remove them first",
            n.id,
            gateways.len(),
            gateways
                .iter()
                .map(|r| r.id.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            fips.len()
        )));
    }
    t.prefix_unchanged_since(&keys::ipam_prefix(&n.id), rev);
    Ok(ExternalGuard::Unused)
}

/// The floating IPs on network `net`, with their records' mod revisions.
async fn floating_ips_on(ctx: &Ctx, net: &NetworkId) -> ApiResult<Vec<(model::FloatingIp, i64)>> {
    Ok(ctx
        .store
        .list_all(&keys::floating_ips_prefix(), |kv| {
            decode_or_skip::<model::FloatingIp>(kv)
                .filter(|f| f.network == *net)
                .map(|f| (f, kv.mod_revision()))
        })
        .await?)
}

/// Adds `delta` to `project`'s entry of `acc` (one quota write per
/// project in a transaction). Pure.
fn add_usage(acc: &mut Vec<(ProjectId, QuotaUsage)>, project: &ProjectId, delta: &QuotaUsage) {
    match acc.iter_mut().find(|(p, _)| p == project) {
        Some((_, u)) => {
            u.networks += delta.networks;
            u.floating_ips += delta.floating_ips;
        }
        None => acc.push((project.clone(), *delta)),
    }
}

/// How messages name network `n`: its name quoted, or its id when it has
/// none. Pure.
pub fn label(n: &Network) -> String {
    if n.name.is_empty() {
        n.id.to_string()
    } else {
        format!("{:?}", n.name)
    }
}

/// Adds to `t` that network `net` is unchanged since read now, after
/// checking that it still is external (`external`) or internal: what
/// allocates on an external network (floating IPs, routers' gateways) or
/// joins an internal one to a router commits only while a concurrent
/// `router:external` change ([`update`]) has not flipped it.
pub(crate) async fn guard_external(
    ctx: &Ctx,
    t: &mut TxnBuilder,
    net: &NetworkId,
    external: bool,
) -> ApiResult<()> {
    let key = keys::network(net);
    let Some(n) = ctx.store.read::<Network>(&key).await? else {
        return Err(ApiError::NotFound(format!("network {net} not found")));
    };
    if n.value.external != external {
        return Err(ApiError::FailedPrecondition(format!(
            "network {} is {} now",
            label(&n.value),
            if n.value.external {
                "external"
            } else {
                "no longer external"
            }
        )));
    }
    t.unchanged(&key, n.mod_rev);
    Ok(())
}
