//! `Identity`: the gRPC adapter of [`crate::operations::identity`].

use nubo_common::model::{Project, RoleAssignment, User};
use nubo_common::proto as pb;
use tonic::Request;

use super::{page, reply, R};
use crate::operations::identity;
use crate::state::Ctx;

fn project_pb(p: &Project) -> pb::Project {
    pb::Project {
        id: p.id.to_string(),
        name: p.name.clone(),
        description: p.description.clone(),
        enabled: p.enabled,
        created_at: p.created_at.to_rfc3339(),
    }
}

fn user_pb(u: &User) -> pb::User {
    pb::User {
        name: u.name.to_string(),
        enabled: u.enabled,
        created_at: u.created_at.to_rfc3339(),
    }
}

fn assignment_pb(a: &RoleAssignment) -> pb::RoleAssignment {
    pb::RoleAssignment {
        user: a.user.to_string(),
        project: a
            .project
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        role: a.role.as_str().to_string(),
    }
}

#[tonic::async_trait]
impl pb::identity_server::Identity for Ctx {
    async fn create_project(&self, r: Request<pb::CreateProjectRequest>) -> R<pb::Project> {
        let r = r.into_inner();
        let p = identity::create_project(self, &r.id, r.name, r.description).await;
        reply(p.map(|p| project_pb(&p)))
    }
    async fn list_projects(&self, r: Request<pb::ListRequest>) -> R<pb::ListProjectsResponse> {
        let p = identity::list_projects(self, &page(&r.into_inner())).await;
        reply(p.map(|p| pb::ListProjectsResponse {
            projects: p.items.iter().map(project_pb).collect(),
            next_page_token: p.next,
        }))
    }
    async fn delete_project(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        let done = identity::delete_project(self, &r.into_inner().r#ref).await;
        reply(done.map(|()| pb::Empty {}))
    }
    async fn create_user(&self, r: Request<pb::CreateUserRequest>) -> R<pb::User> {
        let r = r.into_inner();
        let u = identity::create_user(self, &r.name, r.password).await;
        reply(u.map(|u| user_pb(&u)))
    }
    async fn list_users(&self, r: Request<pb::ListRequest>) -> R<pb::ListUsersResponse> {
        let p = identity::list_users(self, &page(&r.into_inner())).await;
        reply(p.map(|p| pb::ListUsersResponse {
            users: p.items.iter().map(user_pb).collect(),
            next_page_token: p.next,
        }))
    }
    async fn delete_user(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        let done = identity::delete_user(self, &r.into_inner().r#ref).await;
        reply(done.map(|()| pb::Empty {}))
    }
    async fn grant(&self, r: Request<pb::RoleAssignment>) -> R<pb::RoleAssignment> {
        let r = r.into_inner();
        let go = async {
            let a = identity::assignment(&r.user, &r.project, &r.role)?;
            identity::grant(self, a).await
        };
        reply(go.await.map(|a| assignment_pb(&a)))
    }
    async fn revoke(&self, r: Request<pb::RoleAssignment>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go = async {
            let a = identity::assignment(&r.user, &r.project, &r.role)?;
            identity::revoke(self, &a).await
        };
        reply(go.await.map(|()| pb::Empty {}))
    }
    async fn list_role_assignments(
        &self,
        r: Request<pb::GetRequest>,
    ) -> R<pb::ListRoleAssignmentsResponse> {
        let caller = crate::caller::caller().map(|c| c.claims.user);
        let list = identity::role_assignments(self, caller.as_ref(), &r.into_inner().r#ref).await;
        reply(list.map(|a| pb::ListRoleAssignmentsResponse {
            assignments: a.iter().map(assignment_pb).collect(),
        }))
    }
}
