//! `Audit.List`: the audit trail, oldest first (see [`crate::audit`]).

use nubo_common::keys;
use nubo_common::model::{AuditOutcome, AuditRecord};
use nubo_common::proto::{self as pb, audit_server::Audit};
use tonic::{Request, Response, Status};

use crate::state::Ctx;
use nubo_store::kv::decode_or_skip;

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
    }
}

#[tonic::async_trait]
impl Audit for Ctx {
    async fn list(
        &self,
        r: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let r = r.into_inner();
        let (records, next) = crate::paging::list_page(
            &self.store,
            &keys::audit_prefix(),
            r.page_size,
            &r.page_token,
            |kv| decode_or_skip::<AuditRecord>(kv).map(entry),
        )
        .await?;
        Ok(Response::new(pb::ListAuditResponse {
            records,
            next_page_token: next,
        }))
    }
}
