//! Authorization: the role model as one pure function.
//!
//! - a cloud **admin** (role `admin` assigned cloud-wide) may do anything in
//!   any project, and is the only one who may list across projects
//!   (`all_projects`) or use [`Verb::Admin`] (nodes, flavors, projects,
//!   users, quotas, evacuation);
//! - a **member** reads and changes the resources of its token's project;
//! - a **reader** only reads them;
//! - a **node** (an agent's service credential) may only read image data
//!   (of any project: the agent boots every project's instances) and
//!   manage its own application credentials ([`NODE_ACTIONS`]), so a
//!   stolen node credential cannot touch tenant resources.
//!
//! A resource of another project must look exactly like a missing one, so
//! cross-project access is [`Denied::Hidden`] (the API answers `NotFound`,
//! with the same message as for a missing resource), while a reader's
//! mutation in its own project is [`Denied::Forbidden`] (`PermissionDenied`).

use std::fmt;

use nubo_common::model::{Role, RoleAssignment, UserName};
use nubo_common::ProjectId;

use crate::token::Claims;

/// What kind of access a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Get and list.
    Read,
    /// Create, update, delete, start/stop, ...
    Mutate,
    /// Cloud-wide administration.
    Admin,
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Mutate => "change",
            Self::Admin => "administer",
        })
    }
}

/// A call's access: the verb and the resource kind (plural, for messages,
/// e.g. "servers").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    /// Access needed.
    pub verb: Verb,
    /// Resource kind, e.g. "servers".
    pub kind: &'static str,
}

impl Action {
    /// Shorthand for [`Verb::Read`].
    pub const fn read(kind: &'static str) -> Self {
        Self {
            verb: Verb::Read,
            kind,
        }
    }
    /// Shorthand for [`Verb::Mutate`].
    pub const fn mutate(kind: &'static str) -> Self {
        Self {
            verb: Verb::Mutate,
            kind,
        }
    }
    /// Shorthand for [`Verb::Admin`].
    pub const fn admin(kind: &'static str) -> Self {
        Self {
            verb: Verb::Admin,
            kind,
        }
    }
}

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The resource belongs to another project: answer `NotFound`, exactly
    /// as if it did not exist.
    #[error("{kind} not found in project {project}")]
    Hidden {
        /// Resource kind.
        kind: &'static str,
        /// The caller's project (never the resource's).
        project: ProjectId,
    },
    /// The caller sees the resource but its role does not allow the verb:
    /// answer `PermissionDenied`.
    #[error("user {user} ({}) may not {verb} {kind}", role_text(role, project))]
    Forbidden {
        /// The caller.
        user: UserName,
        /// Its strongest role in its project, if any.
        role: Option<Role>,
        /// The caller's project.
        project: ProjectId,
        /// The verb refused.
        verb: Verb,
        /// Resource kind.
        kind: &'static str,
    },
    /// `all_projects` was asked for by someone who is not a cloud admin:
    /// answer `PermissionDenied`.
    #[error(
        "user {user} may not list {kind} across all projects: that needs the cloud admin role"
    )]
    AllProjects {
        /// The caller.
        user: UserName,
        /// Resource kind.
        kind: &'static str,
    },
}

fn role_text(role: &Option<Role>, project: &ProjectId) -> String {
    match role {
        Some(r) => format!("{r} in project {project}"),
        None => format!("no role in project {project}"),
    }
}

impl From<Denied> for tonic::Status {
    fn from(d: Denied) -> Self {
        match d {
            Denied::Hidden { .. } => tonic::Status::not_found(d.to_string()),
            _ => tonic::Status::permission_denied(d.to_string()),
        }
    }
}

/// The only actions the `node` role allows: downloading image data, and
/// its own application credentials (how an agent gets its credential).
pub const NODE_ACTIONS: [Action; 2] = [
    Action::read("image data"),
    Action::read("application credentials"),
];

/// Decides whether the bearer of `claims` may perform `action` on a
/// resource of `resource_project` (for list calls: the project listed,
/// with `all_projects` when the caller asked for every project).
pub fn authorize(
    claims: &Claims,
    action: Action,
    resource_project: &ProjectId,
    all_projects: bool,
) -> Result<(), Denied> {
    if claims.has(Role::Admin) {
        return Ok(());
    }
    if claims.has(Role::Node) && NODE_ACTIONS.contains(&action) {
        return Ok(());
    }
    if all_projects {
        return Err(Denied::AllProjects {
            user: claims.user.clone(),
            kind: action.kind,
        });
    }
    let role = if claims.has(Role::Member) {
        Some(Role::Member)
    } else if claims.has(Role::Reader) {
        Some(Role::Reader)
    } else {
        None
    };
    let forbidden = || Denied::Forbidden {
        user: claims.user.clone(),
        role,
        project: claims.project.clone(),
        verb: action.verb,
        kind: action.kind,
    };
    // Cloud-wide resources are visible to everyone: refuse openly.
    if action.verb == Verb::Admin {
        return Err(forbidden());
    }
    if resource_project != &claims.project {
        return Err(Denied::Hidden {
            kind: action.kind,
            project: claims.project.clone(),
        });
    }
    match (action.verb, role) {
        (Verb::Read, Some(_)) | (Verb::Mutate, Some(Role::Member)) => Ok(()),
        _ => Err(forbidden()),
    }
}

/// The roles to put in a token for `user` scoped to `project`, from the
/// user's role assignments (`/nubo/v1/private/roles/<user>/`): cloud-wide
/// assignments apply in every project (cloud-wide `admin` = cloud admin);
/// project assignments only in theirs. An `admin` assignment scoped to one
/// project is not a cloud admin and counts as `member` there. Sorted,
/// without duplicates; empty means the user may not scope a token to the
/// project.
pub fn effective_roles(
    assignments: &[RoleAssignment],
    user: &UserName,
    project: &ProjectId,
) -> Vec<Role> {
    let mut roles: Vec<Role> = assignments
        .iter()
        .filter(|a| &a.user == user)
        .filter_map(|a| match (&a.project, a.role) {
            (None, r) => Some(r),
            (Some(p), Role::Admin) if p == project => Some(Role::Member),
            (Some(p), r) if p == project => Some(r),
            _ => None,
        })
        .collect();
    roles.sort();
    roles.dedup();
    roles
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn claims(project: &str, roles: &[Role]) -> Claims {
        Claims::new(
            UserName::new("u").unwrap(),
            ProjectId::new(project).unwrap(),
            roles.to_vec(),
            DateTime::from_timestamp(0, 0).unwrap(),
            60,
        )
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Want {
        Ok,
        Hidden,
        Forbidden,
        AllProjects,
    }

    #[test]
    fn every_case() {
        use Role::*;
        use Want::*;
        // (roles, verb, resource project, all_projects, expected)
        let cases: &[(&[Role], Verb, &str, bool, Want)] = &[
            // cloud admin: everything, everywhere
            (&[Admin], Verb::Read, "p1", false, Ok),
            (&[Admin], Verb::Mutate, "p2", false, Ok),
            (&[Admin], Verb::Admin, "p2", false, Ok),
            (&[Admin], Verb::Read, "p2", true, Ok),
            // member: read + mutate in its project
            (&[Member], Verb::Read, "p1", false, Ok),
            (&[Member], Verb::Mutate, "p1", false, Ok),
            (&[Member], Verb::Admin, "p1", false, Forbidden),
            (&[Member], Verb::Read, "p2", false, Hidden),
            (&[Member], Verb::Mutate, "p2", false, Hidden),
            (&[Member], Verb::Admin, "p2", false, Forbidden),
            (&[Member], Verb::Read, "p1", true, AllProjects),
            // reader: read-only in its project
            (&[Reader], Verb::Read, "p1", false, Ok),
            (&[Reader], Verb::Mutate, "p1", false, Forbidden),
            (&[Reader], Verb::Admin, "p1", false, Forbidden),
            (&[Reader], Verb::Read, "p2", false, Hidden),
            (&[Reader], Verb::Mutate, "p2", false, Hidden),
            (&[Reader], Verb::Read, "p1", true, AllProjects),
            // member + reader = member
            (&[Member, Reader], Verb::Mutate, "p1", false, Ok),
            // no role at all
            (&[], Verb::Read, "p1", false, Forbidden),
            (&[], Verb::Read, "p2", false, Hidden),
            (&[], Verb::Mutate, "p1", false, Forbidden),
            // node: nothing on servers, in any project
            (&[Node], Verb::Read, "p1", false, Forbidden),
            (&[Node], Verb::Mutate, "p1", false, Forbidden),
            (&[Node], Verb::Admin, "p1", false, Forbidden),
            (&[Node], Verb::Read, "p1", true, AllProjects),
        ];
        for (i, (roles, verb, project, all, want)) in cases.iter().enumerate() {
            let c = claims("p1", roles);
            let action = Action {
                verb: *verb,
                kind: "servers",
            };
            let got = match authorize(&c, action, &ProjectId::new(*project).unwrap(), *all) {
                Result::Ok(()) => Ok,
                Err(Denied::Hidden { .. }) => Hidden,
                Err(Denied::Forbidden { .. }) => Forbidden,
                Err(Denied::AllProjects { .. }) => AllProjects,
            };
            assert_eq!(
                got, *want,
                "case {i}: {roles:?} {verb:?} {project} all={all}"
            );
        }
    }

    #[test]
    fn node_only_reads_image_data_of_any_project() {
        let c = claims("admin", &[Role::Node]);
        for p in ["admin", "p1"] {
            let p = ProjectId::new(p).unwrap();
            for a in NODE_ACTIONS {
                authorize(&c, a, &p, false).unwrap();
            }
            for a in [
                Action::mutate("image data"),
                Action::read("images"),
                Action::mutate("servers"),
                Action::admin("nodes"),
            ] {
                assert!(authorize(&c, a, &p, false).is_err(), "{a:?}");
            }
        }
    }

    #[test]
    fn hidden_does_not_leak_the_other_project_and_maps_to_not_found() {
        let c = claims("p1", &[Role::Member]);
        let d = authorize(
            &c,
            Action::read("servers"),
            &ProjectId::new("secret-p").unwrap(),
            false,
        )
        .unwrap_err();
        assert_eq!(d.to_string(), "servers not found in project p1");
        assert_eq!(tonic::Status::from(d).code(), tonic::Code::NotFound);
    }

    #[test]
    fn forbidden_reads_well_and_maps_to_permission_denied() {
        let c = claims("p1", &[Role::Reader]);
        let d = authorize(
            &c,
            Action::mutate("servers"),
            &ProjectId::new("p1").unwrap(),
            false,
        )
        .unwrap_err();
        assert_eq!(
            d.to_string(),
            "user u (reader in project p1) may not change servers"
        );
        assert_eq!(tonic::Status::from(d).code(), tonic::Code::PermissionDenied);
        let d = authorize(
            &c,
            Action::read("servers"),
            &ProjectId::new("p1").unwrap(),
            true,
        )
        .unwrap_err();
        assert_eq!(tonic::Status::from(d).code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn effective_roles_combine_cloud_and_project_assignments() {
        let u = UserName::new("u").unwrap();
        let other = UserName::new("v").unwrap();
        let p1 = ProjectId::new("p1").unwrap();
        let p2 = ProjectId::new("p2").unwrap();
        let a = |user: &UserName, p: Option<&ProjectId>, role| RoleAssignment {
            user: user.clone(),
            project: p.cloned(),
            role,
        };
        let assignments = vec![
            a(&u, Some(&p1), Role::Reader),
            a(&u, Some(&p2), Role::Admin),
            a(&other, None, Role::Admin),
            a(&other, Some(&p1), Role::Member),
        ];
        assert_eq!(effective_roles(&assignments, &u, &p1), vec![Role::Reader]);
        assert_eq!(effective_roles(&assignments, &u, &p2), vec![Role::Member]);
        assert_eq!(
            effective_roles(&assignments, &other, &p1),
            vec![Role::Admin, Role::Member]
        );
        assert_eq!(
            effective_roles(&assignments, &other, &p2),
            vec![Role::Admin]
        );
        let p3 = ProjectId::new("p3").unwrap();
        assert!(effective_roles(&assignments, &u, &p3).is_empty());
    }
}
