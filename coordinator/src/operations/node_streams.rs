//! Console and capture streams, relayed from the node that has them, and
//! the disk captures the leader reads from a node ([`disk_capture`]).
//!
//! Tenants never talk to hypervisors: the caller asks a coordinator
//! (`Servers.Console`, `Ports.Capture`), which resolves the server or port
//! in the caller's project (someone who may not see it gets NotFound),
//! issues a single-use stream ticket for exactly that stream on that node
//! (lifetime [`TICKET_TTL`]), records the issue in the audit trail (who,
//! which instance or port, which node, the ticket id), opens the stream on
//! the node's API with it (mutual TLS in production) and relays the bytes.
//!
//! The tickets are signed with the coordinators' Ed25519 ticket key
//! ([`crate::tickets`]).

use std::time::Duration;

use nubo_common::keys;
use nubo_common::model::{AuditOutcome, AuditRecord, Node, UserName};
use nubo_common::{NodeName, ProjectId};
use nubo_nodeapi::{NodeStream, StreamTarget, TicketClaims};

use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;

/// Lifetime of a stream ticket: it is used at once by the coordinator
/// that issued it.
pub const TICKET_TTL: Duration = Duration::from_secs(15);

/// What a stream is opened on, resolved in the caller's project.
#[derive(Debug, Clone)]
struct Resolved {
    node: NodeName,
    target: StreamTarget,
    /// `servers` or `ports` (audit).
    kind: &'static str,
    /// What is opened, for the audit trail (`server <id> console`).
    what: String,
}

/// The caller as tickets and the audit trail name it.
fn caller() -> (Option<UserName>, Option<ProjectId>, String) {
    match crate::caller::caller() {
        Some(c) => {
            let to = format!("{}@{}", c.claims.user, c.claims.project);
            (Some(c.claims.user), Some(c.claims.project), to)
        }
        None => (None, None, "anonymous (auth = none)".into()),
    }
}

/// Issues the ticket, audits it and opens the stream on the node, for
/// the caller of the request.
async fn open(ctx: &Ctx, r: Resolved, path: &str) -> ApiResult<NodeStream> {
    open_for(ctx, r, path, caller()).await
}

/// [`open`] for `who` (user, project, issued-to text).
async fn open_for(
    ctx: &Ctx,
    r: Resolved,
    path: &str,
    (user, project, issued_to): (Option<UserName>, Option<ProjectId>, String),
) -> ApiResult<NodeStream> {
    let node: Node = ctx
        .store
        .read::<Node>(&keys::node(&r.node))
        .await?
        .ok_or_else(|| ApiError::FailedPrecondition(format!("node {} is not registered", r.node)))?
        .value;
    let api = node.node_api().ok_or_else(|| {
        ApiError::FailedPrecondition(format!(
            "node {} publishes no node API (agent too old, or its --node-api-listen is unusable)",
            r.node
        ))
    })?;
    let signer = ctx.tickets.signer(&ctx.store).await?;
    let issued = nubo_nodeapi::ticket::now_ms();
    let claims = TicketClaims {
        id: uuid::Uuid::new_v4().simple().to_string(),
        node: r.node.clone(),
        target: r.target.clone(),
        issued_to: issued_to.clone(),
        issued_at_ms: issued,
        expires_at_ms: issued + u64::try_from(TICKET_TTL.as_millis()).unwrap_or(u64::MAX),
    };
    let ticket = signer.sign(&claims);
    // The ticket id is the record's request id: the node logs it too.
    let rec = AuditRecord {
        time: chrono::Utc::now(),
        user,
        project,
        acted_in: None,
        action: format!("{}.stream-ticket", r.kind),
        resource_kind: r.kind.to_string(),
        resource_id: Some(format!(
            "{} on node {}, ticket {}",
            r.what, r.node, claims.id
        )),
        outcome: AuditOutcome::Ok,
        request_id: claims.id.clone(),
    };
    super::audit::write(&ctx.store, rec).await;
    tracing::info!(ticket = %claims.id, node = %r.node, target = %r.target, %issued_to,
        "stream ticket issued");
    ctx.node_api
        .get(&r.node, api, path, Some(&ticket))
        .await
        .map_err(|e| match e.status() {
            Some(404) => ApiError::NotFound(e.to_string()),
            _ => ApiError::Unavailable(e.to_string()),
        })
}

/// The console log of server `r` of `project` (followed while the caller
/// reads when `follow`).
pub async fn console(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    follow: bool,
) -> ApiResult<NodeStream> {
    let inst = super::lookup::server(ctx, project, r).await?.value;
    let node = inst.node.clone().ok_or_else(|| {
        ApiError::FailedPrecondition(format!("server {r} is not placed on a node yet"))
    })?;
    let resolved = Resolved {
        node,
        target: StreamTarget::Console { instance: inst.id },
        kind: "servers",
        what: format!("server {} console", inst.id),
    };
    open(ctx, resolved, &nubo_nodeapi::console_path(&inst.id, follow)).await
}

/// A packet capture on port `r` of `project` (`count` packets, else until
/// the caller leaves).
pub async fn capture(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    count: Option<u32>,
) -> ApiResult<NodeStream> {
    let port = super::ports::get(ctx, project, r).await?;
    let node = port.node.clone().ok_or_else(|| {
        ApiError::FailedPrecondition(format!(
            "port {r} is not plugged on a node: nothing to capture"
        ))
    })?;
    let tap = port.tap_name();
    let resolved = Resolved {
        node,
        target: StreamTarget::Capture { tap: tap.clone() },
        kind: "ports",
        what: format!("port {} capture on {tap}", port.id),
    };
    open(ctx, resolved, &nubo_nodeapi::capture_path(&tap, count)).await
}

/// The copy of a root disk that `node` made for image `image` (a capture
/// of a local disk, [`super::local_capture`]), opened by the leading
/// coordinator for the image's `project`: the ticket is issued to the
/// coordinator itself, and audited like any other.
pub async fn disk_capture(
    ctx: &Ctx,
    node: &NodeName,
    image: &nubo_common::ImageId,
    project: &ProjectId,
) -> ApiResult<NodeStream> {
    let resolved = Resolved {
        node: node.clone(),
        target: StreamTarget::DiskCapture { image: *image },
        kind: "images",
        what: format!("image {image} disk capture"),
    };
    let who = (
        None,
        Some(project.clone()),
        format!("coordinator {} (image capture)", ctx.leader.leader_id()),
    );
    open_for(ctx, resolved, &nubo_nodeapi::disk_capture_path(image), who).await
}
