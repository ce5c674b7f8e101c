//! `ApplicationCredentials`: the gRPC adapter of
//! [`crate::operations::app_creds`] (served only with `auth = "token"`).

use nubo_common::model::ApplicationCredential;
use nubo_common::proto::{self as pb, application_credentials_server::ApplicationCredentials};
use nubo_identity::Claims;
use tonic::Request;

use super::{reply, R};
use crate::error::{ApiError, ApiResult};
use crate::operations::app_creds::{self, NewAppCred};
use crate::state::Ctx;

/// The caller's claims (application credentials need a caller).
fn claims() -> ApiResult<Claims> {
    crate::caller::caller().map(|c| c.claims).ok_or_else(|| {
        ApiError::FailedPrecondition("application credentials need auth = \"token\"".into())
    })
}

fn cred_pb(c: &ApplicationCredential, secret: String) -> pb::ApplicationCredential {
    pb::ApplicationCredential {
        id: c.id.to_string(),
        name: c.name.clone(),
        user: c.user.to_string(),
        project: c.project.to_string(),
        roles: c.roles.iter().map(|r| r.as_str().to_string()).collect(),
        expires_at: c.expires_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
        secret,
        created_at: c.created_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl ApplicationCredentials for Ctx {
    async fn create(
        &self,
        r: Request<pb::CreateApplicationCredentialRequest>,
    ) -> R<pb::ApplicationCredential> {
        let r = r.into_inner();
        let go = async {
            let new = NewAppCred {
                name: r.name,
                roles: r.roles,
                expires_at: r.expires_at,
            };
            app_creds::create(self, &claims()?, new).await
        };
        reply(go.await.map(|(c, secret)| cred_pb(&c, secret)))
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListApplicationCredentialsResponse> {
        let r = r.into_inner();
        let go = async { app_creds::list(self, &claims()?, r.all_projects).await };
        reply(
            go.await
                .map(|creds| pb::ListApplicationCredentialsResponse {
                    application_credentials: creds
                        .iter()
                        .map(|c| cred_pb(c, String::new()))
                        .collect(),
                }),
        )
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go = async { app_creds::delete(self, &claims()?, &r.r#ref).await };
        reply(go.await.map(|()| pb::Empty {}))
    }
}
