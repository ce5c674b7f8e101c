//! `Tokens`: the gRPC adapter of [`crate::operations::tokens`].

use nubo_common::proto::{self as pb, tokens_server::Tokens};
use tonic::Request;

use super::{reply, R};
use crate::operations::tokens::{self, Issued, Login};
use crate::state::Ctx;

fn token_pb(t: Issued) -> pb::Token {
    claims_pb(t.token, t.claims)
}

fn claims_pb(token: String, c: nubo_identity::Claims) -> pb::Token {
    let ts = |s: i64| {
        chrono::DateTime::from_timestamp(s, 0)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default()
    };
    pb::Token {
        token,
        user: c.user.to_string(),
        project: c.project.to_string(),
        roles: c.roles.iter().map(|r| r.as_str().to_string()).collect(),
        issued_at: ts(c.issued_at),
        expires_at: ts(c.expires_at),
        application_credential_id: c.app_cred.unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl Tokens for Ctx {
    async fn issue(&self, r: Request<pb::IssueTokenRequest>) -> R<pb::Token> {
        let r = r.into_inner();
        let login = Login {
            user: r.user,
            password: r.password,
            project: r.project,
            application_credential_id: r.application_credential_id,
            application_credential_secret: r.application_credential_secret,
            ttl_secs: r.ttl_secs,
        };
        reply(tokens::issue(self, &login).await.map(token_pb))
    }
    async fn validate(&self, r: Request<pb::SubjectTokenRequest>) -> R<pb::Token> {
        let r = r.into_inner();
        reply(tokens::validate(self, &r.token).map(|c| claims_pb(r.token, c)))
    }
    async fn revoke(&self, r: Request<pb::SubjectTokenRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        reply(tokens::revoke(self, &r.token).await.map(|()| pb::Empty {}))
    }
}
