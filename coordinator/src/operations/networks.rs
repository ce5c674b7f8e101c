//! Networks: CIDR, gateway, DNS, MTU and a unique VNI each.

use etcd_client::GetOptions;
use nubo_common::keys::{self, NameKind};
use nubo_common::model::{self, Network, QuotaUsage};
use nubo_common::{NetworkId, ProjectId};
use nubo_store::kv::{decode_or_skip, prefix_empty};
use nubo_store::TxnBuilder;
use rand::Rng;

use super::{Page, PageRequest, Scope};
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;
use crate::validate;

/// A new network.
#[derive(Debug, Clone, Default)]
pub struct NewNetwork {
    /// Its name (unique in the project).
    pub name: String,
    /// IPv4 CIDR, e.g. `10.20.0.0/24` (must not overlap the project's
    /// other networks).
    pub cidr: String,
    /// Gateway: empty = the first host address, `none` = no gateway.
    pub gateway: String,
    /// DNS servers handed out by DHCP.
    pub dns: Vec<String>,
    /// MTU: 0 = the cluster default, else 576-9000.
    pub mtu: u32,
}

/// Creates a network of `project` with a unique VNI.
pub async fn create(ctx: &Ctx, project: &ProjectId, r: NewNetwork) -> ApiResult<Network> {
    let project = project.clone();
    validate::name("network", &r.name)?;
    let cidr = validate::cidr(&r.cidr)?;
    let gateway = validate::gateway(&r.gateway, cidr)?;
    let dns = validate::dns(&r.dns)?;
    let mtu = match r.mtu {
        0 => 0,
        m @ 576..=9000 => m as u16,
        m => {
            return Err(ApiError::InvalidArgument(format!(
                "mtu {m} must be 0 (default) or 576-9000"
            )))
        }
    };
    let idx = keys::name_index(NameKind::Network, &project, &r.name);
    for _ in 0..16 {
        // The project's networks, read at a revision the txn then
        // compares against: a concurrent create forces a re-check.
        let rev = ctx.store.revision().await?;
        let existing = ctx
            .store
            .list_all(&keys::networks_prefix(), |kv| {
                decode_or_skip::<Network>(kv)
                    .filter(|n| n.project == project)
                    .map(|n| (n.name, n.cidr))
            })
            .await?;
        if existing.iter().any(|(n, _)| *n == r.name) {
            return Err(ApiError::AlreadyExists(format!(
                "network {:?} already exists in project {project}",
                r.name
            )));
        }
        if let Some((name, other)) = validate::find_overlap(cidr, &existing) {
            return Err(ApiError::InvalidArgument(format!(
                "network {cidr} overlaps network {name:?} ({other}) in project {project}"
            )));
        }
        let vni = rand::rng().random_range(1..16_000_000u32);
        let net = Network {
            id: NetworkId::new_random(),
            name: r.name.clone(),
            project: project.clone(),
            cidr,
            gateway,
            vni,
            mtu,
            dns: dns.clone(),
            provider: None,
            external: false,
            shared: false,
            created_at: model::now(),
        };
        let vkey = keys::vni(vni);
        let mut t = TxnBuilder::new();
        let name_free = t.absent(&idx);
        t.absent(&vkey);
        t.prefix_unchanged_since(&keys::networks_prefix(), rev);
        t.put(&idx, &net.id);
        t.put(&vkey, &net.id);
        t.put(&keys::network(&net.id), &net);
        let delta = QuotaUsage {
            networks: 1,
            ..Default::default()
        };
        super::quotas::add(ctx, &mut t, &project, &delta).await?;
        let a = ctx.store.commit(&t).await?;
        if a.succeeded() {
            tracing::info!(network = %net.id, project = %project, %cidr, vni, "network created");
            return Ok(net);
        }
        if !a.held(name_free) {
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

/// The network `r` (id or name) of `project`.
pub async fn get(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<Network> {
    Ok(super::lookup::network(ctx, project, r).await?.value)
}

/// One page of the networks `scope` sees.
pub async fn list(ctx: &Ctx, scope: &Scope, page: &PageRequest) -> ApiResult<Page<Network>> {
    super::lookup::list_scoped(ctx, &keys::networks_prefix(), scope, page).await
}

/// Deletes the network `r` of `project`; refused while ports use it.
pub async fn delete(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<()> {
    for attempt in 1..=16 {
        let net = super::lookup::network(ctx, project, r).await?;
        let n = net.value;
        let key = keys::network(&n.id);
        let ipam_prefix = keys::ipam_prefix(&n.id);
        let mut t = TxnBuilder::new();
        t.unchanged(&key, net.mod_rev);
        t.when(prefix_empty(&ipam_prefix));
        t.delete(&key);
        t.delete(&keys::name_index(NameKind::Network, project, &n.name));
        t.delete(&keys::vni(n.vni));
        let delta = QuotaUsage {
            networks: 1,
            ..Default::default()
        };
        let quota_on = super::quotas::release(ctx, &mut t, &n.project, &delta)
            .await?
            .is_some();
        if ctx.store.commit(&t).await?.succeeded() {
            tracing::info!(network = %n.id, "network deleted");
            return Ok(());
        }
        let used = ctx
            .store
            .get(
                ipam_prefix.as_str(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await?
            .count();
        if used > 0 {
            return Err(ApiError::FailedPrecondition(format!(
                "network {:?} still has {used} ports; delete them first",
                n.name
            )));
        }
        // Without quotas, only the port check can fail; with them, a
        // concurrent usage change is retried.
        if !quota_on || attempt == 16 {
            break;
        }
    }
    Err(ApiError::Unavailable(
        "the network changed concurrently too often; retry".into(),
    ))
}
