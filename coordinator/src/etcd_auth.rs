//! etcd's own authentication for nubo (least privilege): the users and
//! roles, `auth enable`, a node's user and role ([`keys::node_grants`]),
//! and their removal. etcd takes the user from the CN of the client
//! certificate (`--client-cert-auth`), so no user has a password.
//!
//! Every function here is idempotent: it brings etcd to the wanted users,
//! roles and permissions (adding what is missing, revoking what is not
//! wanted) and may run again. User and role management needs etcd's `root`
//! role once auth is on: the operator runs these through
//! `nubo-coordinator etcd-auth enable` / `node enroll` / `node revoke` with
//! the `root` certificate; the coordinators themselves run as
//! [`keys::ETCD_COORDINATOR_USER`], which cannot change permissions.

use etcd_client::{AuthClient, Permission, PermissionType, RoleRevokePermissionOptions};
use nubo_common::keys::{self, Span};
use nubo_common::NodeName;

/// etcd's administrator: must exist with the `root` role before
/// `auth enable`; the certificate with this CN is the operator's.
pub const ROOT_USER: &str = "root";
/// etcd's built-in all-powerful role.
pub const ROOT_ROLE: &str = "root";

/// What went wrong talking to etcd's auth API.
#[derive(Debug, thiserror::Error)]
pub enum EtcdAuthError {
    /// An etcd request failed (`what` names it).
    #[error("etcd {what}")]
    Etcd {
        /// The request, with the user or role it was for.
        what: String,
        /// etcd's answer.
        #[source]
        source: etcd_client::Error,
    },
    /// The node store failed (reading or revoking the node's lease).
    #[error("etcd: {0}")]
    Store(#[from] nubo_store::StoreError),
}

fn etcd(what: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> EtcdAuthError {
    let what = what.into();
    move |source| EtcdAuthError::Etcd { what, source }
}

/// One permission as etcd stores it: type, key, range end (empty for one
/// key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Perm {
    /// Read, write or both.
    pub kind: PermissionType,
    /// The first key.
    pub key: Vec<u8>,
    /// The end of the range (exclusive), empty for exactly `key`.
    pub range_end: Vec<u8>,
}

impl Perm {
    fn of(kind: PermissionType, span: &Span) -> Self {
        match span {
            Span::Key(k) => Perm {
                kind,
                key: k.as_bytes().to_vec(),
                range_end: Vec::new(),
            },
            Span::Prefix(p) => Perm {
                kind,
                key: p.as_bytes().to_vec(),
                range_end: keys::prefix_end(p),
            },
        }
    }

    fn from_etcd(p: &Permission) -> Self {
        Perm {
            kind: PermissionType::try_from(p.get_type()).unwrap_or(PermissionType::Read),
            key: p.key().to_vec(),
            range_end: p.range_end().to_vec(),
        }
    }

    fn to_etcd(&self) -> Permission {
        let p = Permission::new(self.kind, self.key.clone());
        if self.range_end.is_empty() {
            p
        } else {
            p.with_range_end(self.range_end.clone())
        }
    }
}

/// The permissions of `node`'s role: [`keys::node_grants`] as etcd
/// permissions (read, and read-write on what the node owns).
pub fn node_perms(node: &NodeName) -> Vec<Perm> {
    let g = keys::node_grants(node);
    g.read
        .iter()
        .map(|s| Perm::of(PermissionType::Read, s))
        .chain(
            g.readwrite
                .iter()
                .map(|s| Perm::of(PermissionType::Readwrite, s)),
        )
        .collect()
}

/// The coordinators' role: read-write on everything under [`keys::ROOT`].
pub fn coordinator_perms() -> Vec<Perm> {
    vec![Perm::of(
        PermissionType::Readwrite,
        &Span::Prefix(keys::ROOT.to_string()),
    )]
}

/// Makes role `role` hold exactly `want` (creating it if needed).
async fn ensure_role(
    auth: &mut AuthClient,
    role: &str,
    want: &[Perm],
) -> Result<(), EtcdAuthError> {
    let roles = auth
        .role_list()
        .await
        .map_err(etcd("role list"))?
        .roles()
        .to_vec();
    let have: Vec<Perm> = if roles.iter().any(|r| r == role) {
        auth.role_get(role)
            .await
            .map_err(etcd(format!("role get {role}")))?
            .permissions()
            .iter()
            .map(Perm::from_etcd)
            .collect()
    } else {
        auth.role_add(role)
            .await
            .map_err(etcd(format!("role add {role}")))?;
        Vec::new()
    };
    for p in have.iter().filter(|p| !want.contains(p)) {
        let opts = RoleRevokePermissionOptions::new().with_range_end(p.range_end.clone());
        auth.role_revoke_permission(role, p.key.clone(), Some(opts))
            .await
            .map_err(etcd(format!("role revoke-permission {role}")))?;
    }
    for p in want.iter().filter(|p| !have.contains(p)) {
        auth.role_grant_permission(role, p.to_etcd())
            .await
            .map_err(etcd(format!("role grant-permission {role}")))?;
    }
    Ok(())
}

/// Makes user `user` exist (without a password: it authenticates by its
/// certificate's CN) holding exactly the roles `roles`.
async fn ensure_user(
    auth: &mut AuthClient,
    user: &str,
    roles: &[&str],
) -> Result<(), EtcdAuthError> {
    let users = auth
        .user_list()
        .await
        .map_err(etcd("user list"))?
        .users()
        .to_vec();
    let have: Vec<String> = if users.iter().any(|u| u == user) {
        auth.user_get(user)
            .await
            .map_err(etcd(format!("user get {user}")))?
            .roles()
            .to_vec()
    } else {
        auth.user_add(
            user,
            "",
            Some(etcd_client::UserAddOptions::new().with_no_pwd()),
        )
        .await
        .map_err(etcd(format!("user add {user}")))?;
        Vec::new()
    };
    for r in have.iter().filter(|r| !roles.contains(&r.as_str())) {
        auth.user_revoke_role(user, r.as_str())
            .await
            .map_err(etcd(format!("user revoke-role {user} {r}")))?;
    }
    for r in roles.iter().filter(|r| !have.iter().any(|h| h == *r)) {
        auth.user_grant_role(user, *r)
            .await
            .map_err(etcd(format!("user grant-role {user} {r}")))?;
    }
    Ok(())
}

/// Turns etcd authentication on for nubo: the `root` user (certificate
/// CN `root`, the operator's), the coordinators' user
/// [`keys::ETCD_COORDINATOR_USER`] with read-write on [`keys::ROOT`], then
/// `auth enable`. Idempotent (enabling an enabled etcd is a no-op).
pub async fn enable(auth: &mut AuthClient) -> Result<(), EtcdAuthError> {
    ensure_user(auth, ROOT_USER, &[ROOT_ROLE]).await?;
    ensure_role(auth, keys::ETCD_COORDINATOR_USER, &coordinator_perms()).await?;
    ensure_user(
        auth,
        keys::ETCD_COORDINATOR_USER,
        &[keys::ETCD_COORDINATOR_USER],
    )
    .await?;
    auth.auth_enable().await.map_err(etcd("auth enable"))?;
    Ok(())
}

/// Creates or updates `node`'s etcd user and role
/// ([`keys::node_etcd_user`], permissions [`node_perms`]).
pub async fn enroll_node(auth: &mut AuthClient, node: &NodeName) -> Result<(), EtcdAuthError> {
    let name = keys::node_etcd_user(node);
    ensure_role(auth, &name, &node_perms(node)).await?;
    ensure_user(auth, &name, &[name.as_str()]).await
}

/// What [`revoke_node`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked {
    /// The user existed and was deleted.
    pub user: bool,
    /// The role existed and was deleted.
    pub role: bool,
    /// The lease holding the node's alive key, revoked.
    pub lease: Option<i64>,
}

/// Deletes `node`'s etcd user and role, then revokes the lease of its
/// alive key (so the node is seen as gone at once; its agent can no
/// longer write a new one). Every new request with the node's certificate
/// is refused from then on; a watch the agent opened before keeps
/// streaming until its connection closes (etcd checks a watch's
/// permission only when it is created: docs/operator-guide.md, "Removing
/// a node"). Idempotent.
pub async fn revoke_node(
    auth: &mut AuthClient,
    store: &nubo_store::Etcd,
    node: &NodeName,
) -> Result<Revoked, EtcdAuthError> {
    let name = keys::node_etcd_user(node);
    let mut out = Revoked::default();
    let users = auth.user_list().await.map_err(etcd("user list"))?;
    if users.users().contains(&name) {
        auth.user_delete(name.as_str())
            .await
            .map_err(etcd(format!("user delete {name}")))?;
        out.user = true;
    }
    let roles = auth.role_list().await.map_err(etcd("role list"))?;
    if roles.roles().contains(&name) {
        auth.role_delete(name.as_str())
            .await
            .map_err(etcd(format!("role delete {name}")))?;
        out.role = true;
    }
    if let Some(kv) = store.get_kv(&keys::node_alive(node)).await? {
        if kv.lease() != 0 {
            store.lease_revoke(kv.lease()).await?;
            out.lease = Some(kv.lease());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_perms_follow_the_grants() {
        let n = NodeName::new("node-1").unwrap();
        let perms = node_perms(&n);
        let g = keys::node_grants(&n);
        assert_eq!(perms.len(), g.read.len() + g.readwrite.len());
        let alive = keys::node_alive(&n);
        assert!(perms.contains(&Perm {
            kind: PermissionType::Readwrite,
            key: alive.into_bytes(),
            range_end: Vec::new(),
        }));
        let a = keys::assignments_prefix(&n);
        assert!(perms.contains(&Perm {
            kind: PermissionType::Read,
            key: a.clone().into_bytes(),
            range_end: keys::prefix_end(&a),
        }));
        // Nothing under private/ and no spec is covered.
        for p in &perms {
            let key = String::from_utf8(p.key.clone()).unwrap();
            assert!(!key.starts_with(keys::PRIVATE), "{key}");
            assert!(
                !key.starts_with(&format!("{}instances/", keys::ROOT)),
                "{key}"
            );
        }
        assert_eq!(
            coordinator_perms()[0].range_end,
            keys::prefix_end(keys::ROOT)
        );
    }
}
