//! Looking resources up: by id or by their unique name (through the name
//! index), scoped to a project; by id or non-unique name (ports, servers);
//! pages of a project's resources.

use etcd_client::KeyValue;
use nubo_common::keys::{self, Key, NameKind};
use nubo_common::model::{
    self, Flavor, Image, Instance, Keypair, Network, Port, SecurityGroup, ServerGroup, Volume,
    VolumeSnapshot,
};
use nubo_common::{
    FlavorName, ImageId, InstanceId, NetworkId, PortId, ProjectId, SecurityGroupId, ServerGroupId,
    SnapshotId, VolumeId,
};
use nubo_store::kv::{decode_or_skip, kv_key};
use nubo_store::Versioned;
use serde::de::DeserializeOwned;

use super::{Page, PageRequest, Scope};
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;
use crate::validate;

/// The kinds of records a cloud admin may act on by id in their owner's
/// project (see [`acting_project`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ById {
    /// A server (instance).
    Server,
    /// A network.
    Network,
    /// A port.
    Port,
    /// A router.
    Router,
    /// A floating IP.
    FloatingIp,
    /// A volume.
    Volume,
    /// A security group.
    SecurityGroup,
    /// A server group.
    ServerGroup,
    /// An image.
    Image,
}

impl ById {
    /// The key of the record with id `u`.
    fn key(self, u: uuid::Uuid) -> String {
        match self {
            ById::Server => keys::instance(&InstanceId::from_uuid(u)),
            ById::Network => keys::network(&NetworkId::from_uuid(u)),
            ById::Port => keys::port(&PortId::from_uuid(u)),
            ById::Router => keys::router(&nubo_common::RouterId::from_uuid(u)),
            ById::FloatingIp => keys::floating_ip(&nubo_common::FloatingIpId::from_uuid(u)),
            ById::Volume => keys::volume(&VolumeId::from_uuid(u)),
            ById::SecurityGroup => keys::secgroup(&SecurityGroupId::from_uuid(u)),
            ById::ServerGroup => keys::server_group(&ServerGroupId::from_uuid(u)),
            ById::Image => keys::image(&ImageId::from_uuid(u)),
        }
    }
}

/// The one field [`acting_project`] reads of a record.
#[derive(serde::Deserialize)]
struct OwnerOnly {
    project: ProjectId,
}

/// The project a request naming the resource `r` acts in. Normally the
/// request's project (`requested`; empty = the caller's, see
/// [`crate::validate::project`]). But when `requested` is empty, the
/// caller is a cloud admin and `r` is the id of a `kind` record of another
/// project, it is that record's project: the admin acts in the owner's
/// project (its quotas, name index and records), as Nova, Neutron and
/// Cinder let an admin act on any project's resource by id. The override
/// is logged and noted for the audit record
/// ([`crate::caller::note_acting_in`]). Anyone else is unchanged: another
/// project's record stays not found for them.
pub(crate) async fn acting_project(
    ctx: &Ctx,
    requested: &str,
    kind: ById,
    r: &str,
) -> ApiResult<ProjectId> {
    let own = validate::project(requested)?;
    if !requested.trim().is_empty() || !crate::caller::is_cloud_admin() {
        return Ok(own);
    }
    let Ok(u) = uuid::Uuid::parse_str(r.trim()) else {
        return Ok(own);
    };
    let owner = match ctx.store.read::<OwnerOnly>(&kind.key(u)).await {
        Ok(Some(v)) => v.value.project,
        Ok(None) => return Ok(own),
        // An unreadable record: the operation's own lookup names it.
        Err(nubo_store::StoreError::Corrupt(_)) => return Ok(own),
        Err(e) => return Err(e.into()),
    };
    if owner == own {
        return Ok(own);
    }
    let p = validate::project(owner.as_str())?;
    tracing::info!(
        ?kind,
        id = %u,
        owner = %p,
        caller_project = %own,
        "cloud admin acting in the owner's project"
    );
    crate::caller::note_acting_in(&p);
    Ok(p)
}

/// A flavor name from a request.
pub(crate) fn flavor_name(s: &str) -> ApiResult<FlavorName> {
    FlavorName::new(s.trim()).map_err(|e| ApiError::InvalidArgument(e.to_string()))
}

/// Stored resources that belong to a project and have a name and an id.
pub(crate) trait Owned {
    fn project(&self) -> &ProjectId;
    fn name(&self) -> &str;
    fn id_string(&self) -> String;
    /// True when `key` is the key of a record of this kind (not one of its
    /// sub-keys, like an instance's `/status`).
    fn is_record(key: &Key) -> bool;
}

macro_rules! owned {
    ($($t:ty => $k:ident),*) => {$(
        impl Owned for $t {
            fn project(&self) -> &ProjectId { &self.project }
            fn name(&self) -> &str { &self.name }
            fn id_string(&self) -> String { self.id.to_string() }
            fn is_record(key: &Key) -> bool { matches!(key, Key::$k(..)) }
        }
    )*};
}

owned!(
    model::Network => Network,
    model::Port => Port,
    model::SecurityGroup => SecurityGroup,
    model::Image => Image,
    model::ServerGroup => ServerGroup,
    model::Instance => Instance,
    model::Volume => Volume,
    model::Router => Router,
    model::VolumeTransfer => VolumeTransfer
);

/// False for keys under a kind's prefix that are known keys of another
/// kind (an instance's `/status`): those are never decoded as records.
/// Keys that do not parse at all are decoded (and, when unreadable, logged
/// and skipped), so a hand-written key never passes unnoticed.
fn may_be_record<T: Owned>(kv: &KeyValue) -> bool {
    Key::parse(kv_key(kv)).is_none_or(|k| T::is_record(&k))
}

/// The flavor named `r`.
pub(crate) async fn flavor(ctx: &Ctx, r: &str) -> ApiResult<Versioned<Flavor>> {
    let name = flavor_name(r)?;
    ctx.store
        .read(&keys::flavor(&name))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("flavor {:?} not found", name.as_str())))
}

/// The image `r` (id or name) of `project`.
pub(crate) async fn image(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<Versioned<Image>> {
    resolve(ctx, NameKind::Image, project, r, |u| {
        keys::image(&ImageId::from_uuid(u))
    })
    .await
}

/// True when `project` (or the calling cloud admin) may use another
/// project's image `img` by id.
pub(crate) fn may_use(img: &Image, project: &ProjectId) -> bool {
    img.access.usable_by(project) || crate::caller::is_cloud_admin()
}

/// The image `r` as `project` may use it: its own (by id or name), or
/// another project's by id when that image is public, community or
/// shared with `project` (see [`model::ImageAccess::usable_by`]); a cloud
/// admin uses any image by id. Others answer like a missing image.
pub(crate) async fn usable_image(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
) -> ApiResult<Versioned<Image>> {
    let own = image(ctx, project, r).await;
    or_by_id(
        ctx,
        own,
        r,
        |u| keys::image(&ImageId::from_uuid(u)),
        |i| may_use(i, project),
    )
    .await
}

/// The keypair `name` of `project`.
pub(crate) async fn keypair(
    ctx: &Ctx,
    project: &ProjectId,
    name: &str,
) -> ApiResult<Versioned<Keypair>> {
    validate::name("keypair", name)?;
    ctx.store
        .read(&keys::keypair(project, name))
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!("keypair {name:?} not found in project {project}"))
        })
}

/// What a user's reference to a project-scoped resource of `kind` names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reference {
    /// An id: its key.
    Key(String),
    /// A name: the key of its entry in the name index, which holds the id.
    NameIndex(String),
}

/// The reference `r` (trimmed) of a resource of `kind`: an id or a name.
/// An empty one is an InvalidArgument naming the kind.
pub(crate) fn reference(
    kind: NameKind,
    project: &ProjectId,
    r: &str,
    key_of: impl Fn(uuid::Uuid) -> String,
) -> ApiResult<Reference> {
    let r = r.trim();
    if r.is_empty() {
        return Err(ApiError::InvalidArgument(format!(
            "a {} id or name is required",
            kind.label()
        )));
    }
    Ok(match uuid::Uuid::parse_str(r) {
        Ok(u) => Reference::Key(key_of(u)),
        Err(_) => Reference::NameIndex(keys::name_index(kind, project, r)),
    })
}

/// The NotFound of reference `r` to a resource of `kind` in `project`.
pub(crate) fn not_found(kind: NameKind, project: &ProjectId, r: &str) -> ApiError {
    ApiError::NotFound(format!(
        "{} {:?} not found in project {project}",
        kind.label(),
        r.trim()
    ))
}

/// Looks a project-scoped resource up by id or by its unique name (via
/// the name index). Resources of other projects are not found.
pub(crate) async fn resolve<T: DeserializeOwned + Owned>(
    ctx: &Ctx,
    kind: NameKind,
    project: &ProjectId,
    r: &str,
    key_of: impl Fn(uuid::Uuid) -> String,
) -> ApiResult<Versioned<T>> {
    let key = match reference(kind, project, r, &key_of)? {
        Reference::Key(key) => key,
        Reference::NameIndex(idx) => match ctx.store.read::<uuid::Uuid>(&idx).await? {
            Some(id) => key_of(id.value),
            None => return Err(not_found(kind, project, r)),
        },
    };
    match ctx.store.read::<T>(&key).await? {
        Some(v) if v.value.project() == project => Ok(v),
        _ => Err(not_found(kind, project, r)),
    }
}

/// Finds resources of a kind whose names are not unique (ports, servers)
/// by id or name; an ambiguous name is a FailedPrecondition naming the
/// candidates.
pub(crate) async fn resolve_scan<T: DeserializeOwned + Owned>(
    ctx: &Ctx,
    label: &str,
    project: &ProjectId,
    r: &str,
    prefix: &str,
    key_of: impl Fn(uuid::Uuid) -> String,
) -> ApiResult<Versioned<T>> {
    let r = r.trim();
    if r.is_empty() {
        return Err(ApiError::InvalidArgument(format!(
            "a {label} id or name is required"
        )));
    }
    let not_found = || ApiError::NotFound(format!("{label} {r:?} not found in project {project}"));
    if let Ok(u) = uuid::Uuid::parse_str(r) {
        return match ctx.store.read::<T>(&key_of(u)).await? {
            Some(v) if v.value.project() == project => Ok(v),
            _ => Err(not_found()),
        };
    }
    let mut found: Vec<(String, Versioned<T>)> = ctx
        .store
        .list_all(prefix, |kv| {
            if !may_be_record::<T>(kv) {
                return None;
            }
            let v: T = decode_or_skip(kv)?;
            (v.project() == project && v.name() == r).then(|| {
                (
                    v.id_string(),
                    Versioned {
                        value: v,
                        mod_rev: kv.mod_revision(),
                    },
                )
            })
        })
        .await?;
    match found.len() {
        0 => Err(not_found()),
        1 => Ok(found.remove(0).1),
        _ => Err(ApiError::FailedPrecondition(format!(
            "{label} name {r:?} is ambiguous in project {project}: it matches {}; use an id",
            found
                .iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// One page of the resources under `prefix` that `scope` sees (its
/// project's; every project's with `all_projects`).
pub(crate) async fn list_scoped<T: DeserializeOwned + Owned>(
    ctx: &Ctx,
    prefix: &str,
    scope: &Scope,
    page: &PageRequest,
) -> ApiResult<Page<T>> {
    list_page(ctx, prefix, page, |kv| {
        if !may_be_record::<T>(kv) {
            return None;
        }
        decode_or_skip::<T>(kv).filter(|t| scope.sees(t.project()))
    })
    .await
}

/// One page of the keys under `prefix` that `keep` keeps (see
/// [`crate::paging::list_page`]).
pub(crate) async fn list_page<T>(
    ctx: &Ctx,
    prefix: &str,
    page: &PageRequest,
    keep: impl FnMut(&KeyValue) -> Option<T>,
) -> ApiResult<Page<T>> {
    let (items, next) =
        crate::paging::list_page(&ctx.store, prefix, page.size, &page.token, keep).await?;
    Ok(Page { items, next })
}

/// The network `r` (id or name) of `project`.
pub(crate) async fn network(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
) -> ApiResult<Versioned<Network>> {
    resolve(ctx, NameKind::Network, project, r, |u| {
        keys::network(&NetworkId::from_uuid(u))
    })
    .await
}

/// The network `r` (id or name) that `project` may use: its own, else a
/// shared network (by id, or by its name, unique among shared networks).
/// Changing or deleting a network goes through [`network`] (owner only).
pub(crate) async fn usable_network(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
) -> ApiResult<Versioned<Network>> {
    match network(ctx, project, r).await {
        Err(ApiError::NotFound(m)) => {
            let key = match reference(NameKind::Network, project, r, |u| {
                keys::network(&NetworkId::from_uuid(u))
            })? {
                Reference::Key(key) => key,
                Reference::NameIndex(_) => {
                    match ctx
                        .store
                        .read::<uuid::Uuid>(&keys::shared_network_name(r.trim()))
                        .await?
                    {
                        Some(id) => keys::network(&NetworkId::from_uuid(id.value)),
                        None => return Err(ApiError::NotFound(m)),
                    }
                }
            };
            match ctx.store.read::<Network>(&key).await? {
                Some(v) if v.value.shared => Ok(v),
                _ => Err(ApiError::NotFound(m)),
            }
        }
        other => other,
    }
}

/// The network `r` as `project` may see it: one it may use
/// ([`usable_network`]), else any project's external network by id (as in
/// Neutron, every project sees external networks: it may put a router's
/// gateway or a floating IP there; the list shows them too).
pub(crate) async fn visible_network(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
) -> ApiResult<Versioned<Network>> {
    let usable = usable_network(ctx, project, r).await;
    or_by_id(
        ctx,
        usable,
        r,
        |u| keys::network(&NetworkId::from_uuid(u)),
        |n: &Network| n.external,
    )
    .await
}

/// `first` (a lookup's answer), or, when it is NotFound and `r` is an
/// id, the record under `key_of(id)` if `keep` accepts it; otherwise
/// `first`'s NotFound.
async fn or_by_id<T: DeserializeOwned>(
    ctx: &Ctx,
    first: ApiResult<Versioned<T>>,
    r: &str,
    key_of: impl Fn(uuid::Uuid) -> String,
    keep: impl Fn(&T) -> bool,
) -> ApiResult<Versioned<T>> {
    let err = match first {
        Err(e @ ApiError::NotFound(_)) => e,
        other => return other,
    };
    let Ok(u) = uuid::Uuid::parse_str(r.trim()) else {
        return Err(err);
    };
    match ctx.store.read::<T>(&key_of(u)).await? {
        Some(v) if keep(&v.value) => Ok(v),
        _ => Err(err),
    }
}

/// The project a new port on network `network` belongs to: the request's
/// project when given (empty = the caller's); for a cloud admin creating
/// a port on another project's network that is not shared (which the
/// caller's project could use itself), the network's project, as
/// [`acting_project`] — a project's ports live on its own networks or on
/// shared ones, so the port is the network owner's (its quota, its
/// listing).
pub(crate) async fn new_port_project(
    ctx: &Ctx,
    requested: &str,
    network: &str,
) -> ApiResult<ProjectId> {
    let shared = match uuid::Uuid::parse_str(network.trim()) {
        Ok(u) => ctx
            .store
            .read::<Network>(&keys::network(&NetworkId::from_uuid(u)))
            .await?
            .is_some_and(|n| n.value.shared),
        Err(_) => false,
    };
    if shared {
        return validate::project(requested);
    }
    acting_project(ctx, requested, ById::Network, network).await
}

/// The port `r` (id or name) of `project`.
pub(crate) async fn port(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<Versioned<Port>> {
    resolve_scan(ctx, "port", project, r, &keys::ports_prefix(), |u| {
        keys::port(&PortId::from_uuid(u))
    })
    .await
}

/// The security group `r` (id or name) of `project`.
pub(crate) async fn secgroup(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
) -> ApiResult<Versioned<SecurityGroup>> {
    resolve(ctx, NameKind::SecurityGroup, project, r, |u| {
        keys::secgroup(&SecurityGroupId::from_uuid(u))
    })
    .await
}

/// The server group `r` (id or name) of `project`.
pub(crate) async fn server_group(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
) -> ApiResult<Versioned<ServerGroup>> {
    // Names are not unique: by id, or a name matching one group only.
    resolve_scan(
        ctx,
        "server group",
        project,
        r,
        &keys::server_groups_prefix(),
        |u| keys::server_group(&ServerGroupId::from_uuid(u)),
    )
    .await
}

/// The router `r` (id or name) of `project`.
pub(crate) async fn router(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
) -> ApiResult<Versioned<model::Router>> {
    resolve(ctx, NameKind::Router, project, r, |u| {
        keys::router(&nubo_common::RouterId::from_uuid(u))
    })
    .await
}

/// The server `r` (id or name) of `project`.
pub(crate) async fn server(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
) -> ApiResult<Versioned<Instance>> {
    resolve_scan(ctx, "server", project, r, &keys::instances_prefix(), |u| {
        keys::instance(&InstanceId::from_uuid(u))
    })
    .await
}

/// The volume `r` (id or name) of `project`; other projects' volumes
/// are not found.
pub(crate) async fn volume(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
) -> ApiResult<Versioned<Volume>> {
    resolve(ctx, NameKind::Volume, project, r, |u| {
        keys::volume(&VolumeId::from_uuid(u))
    })
    .await
}

/// The external network `r` (id or name) as `project` sees it: one of its
/// own, or any project's external network. A network that is not external
/// is refused with `what` in the message.
pub(crate) async fn external_network(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    what: &str,
) -> ApiResult<Network> {
    let net = match network(ctx, project, r).await {
        Ok(n) => n.value,
        Err(ApiError::NotFound(_)) => {
            let r = r.trim();
            let mut found: Vec<Network> = ctx
                .store
                .list_all(&keys::networks_prefix(), |kv| {
                    nubo_store::kv::decode_or_skip::<Network>(kv)
                        .filter(|n| n.external && (n.id.to_string() == r || n.name == r))
                })
                .await?;
            match found.len() {
                0 => {
                    return Err(ApiError::NotFound(format!(
                        "external network {r:?} not found"
                    )))
                }
                1 => found.remove(0),
                _ => {
                    return Err(ApiError::FailedPrecondition(format!(
                        "external network name {r:?} is ambiguous; use its id"
                    )))
                }
            }
        }
        Err(e) => return Err(e),
    };
    if !net.external {
        return Err(ApiError::InvalidArgument(format!(
            "network {:?} is not external: {what} must be on an external network (nubo network create … --external)",
            net.name
        )));
    }
    Ok(net)
}

/// Snapshot `id` of `project`'s volumes, with its record's mod_revision.
/// A malformed id is NotFound, as an unknown one.
pub(crate) async fn snapshot_by_id(
    ctx: &Ctx,
    project: &ProjectId,
    id: &str,
) -> ApiResult<(String, VolumeSnapshot, i64)> {
    let not_found = || ApiError::NotFound(format!("snapshot {id} not found"));
    let want: SnapshotId = id.trim().parse().map_err(|_| not_found())?;
    let found: Vec<(String, VolumeSnapshot, i64)> = ctx
        .store
        .list_all(&keys::volume_snapshots_root(), |kv| {
            let s = decode_or_skip::<VolumeSnapshot>(kv)?;
            (s.project == *project && s.snapshot_id() == want).then(|| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    s,
                    kv.mod_revision(),
                )
            })
        })
        .await?;
    found.into_iter().next().ok_or_else(not_found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_is_an_id_a_name_or_an_error_naming_the_kind() {
        let p = ProjectId::default_project();
        let key_of = |u: uuid::Uuid| format!("/k/{u}");
        let id = uuid::Uuid::new_v4();
        assert_eq!(
            reference(NameKind::Network, &p, &format!(" {id} "), key_of).unwrap(),
            Reference::Key(format!("/k/{id}"))
        );
        assert_eq!(
            reference(NameKind::SecurityGroup, &p, " web ", key_of).unwrap(),
            Reference::NameIndex(keys::name_index(NameKind::SecurityGroup, &p, "web"))
        );
        let err = reference(NameKind::SecurityGroup, &p, "  ", key_of).unwrap_err();
        assert!(
            matches!(&err, ApiError::InvalidArgument(m) if m == "a security group id or name is required"),
            "{err:?}"
        );
        let err = not_found(NameKind::ServerGroup, &p, " db ");
        assert!(
            matches!(&err, ApiError::NotFound(m) if m == &format!("server group \"db\" not found in project {p}")),
            "{err:?}"
        );
    }
}
