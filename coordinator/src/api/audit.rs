//! `Audit.List`: the gRPC adapter of [`crate::operations::audit`].

use nubo_common::model::{AuditOutcome, AuditRecord};
use nubo_common::proto::{self as pb, audit_server::Audit};
use tonic::Request;

use super::{page, reply, R};
use crate::operations::audit;
use crate::state::Ctx;

fn entry(r: AuditRecord) -> pb::AuditEntry {
    let (outcome, message) = match r.outcome {
        AuditOutcome::Ok => ("ok".to_string(), String::new()),
        AuditOutcome::Error { code, message } => (code, message),
    };
    pb::AuditEntry {
        time: r.time.to_rfc3339(),
        user: r.user.map(|u| u.to_string()).unwrap_or_default(),
        project: r.project.map(|p| p.to_string()).unwrap_or_default(),
        action: r.action,
        resource_kind: r.resource_kind,
        resource_id: r.resource_id.unwrap_or_default(),
        outcome,
        message,
        request_id: r.request_id,
        acted_in_project: r.acted_in.map(|p| p.to_string()).unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl Audit for Ctx {
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListAuditResponse> {
        let p = audit::list(self, &page(&r.into_inner())).await;
        reply(p.map(|p| pb::ListAuditResponse {
            records: p.items.into_iter().map(entry).collect(),
            next_page_token: p.next,
        }))
    }
}
