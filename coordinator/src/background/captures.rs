//! The leader's capture loop: brings every capture of a local root disk
//! ([`crate::operations::local_capture`]) to its end.
//!
//! Every [`PERIOD`] the leader lists the capture jobs
//! (`private/captures/`, few at a time) and, for each, reads the node's
//! report, the image, the server's spec and the node's liveness, and
//! decides with [`step`] (pure):
//!
//! - the node reports the copy ready → read it through the node API (a
//!   stream ticket for exactly that capture, issued to the coordinator and
//!   audited) into the image store, the same path as an upload
//!   ([`crate::operations::image_data::upload`]: hashed, size checked
//!   against the node's report, `active`); a failed read is tried again
//!   up to [`MAX_READS`] times;
//! - the node reports a failure, the server is deleted before the copy
//!   was made, the node is down longer than [`NODE_DOWN_GRACE`], or no end
//!   within [`CAPTURE_TIMEOUT`] → the image goes to `error` with the
//!   reason;
//! - the image is gone (deleted by its owner) or no longer `queued` →
//!   nothing more to do.
//!
//! At the end the job and the node's order are deleted in one transaction
//! guarded by the leader's lease; the agent then removes its copy and its
//! report. A new leader picks up where its predecessor left: a read that
//! was under way is started again (the image store keeps nothing of an
//! unfinished upload).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Txn, TxnOp};
use futures::StreamExt;
use nubo_common::keys;
use nubo_common::model::{CaptureJob, CapturePhase, CaptureReport, Image, ImageStatus, Timestamp};
use nubo_common::ImageId;
use nubo_store::kv::decode_or_skip;
use tokio::sync::watch;
use tracing::Instrument;

use crate::error::{ApiError, ApiResult};
use crate::image_store::MAX_CHUNK;
use crate::state::Ctx;

/// How often the leader looks at the captures.
pub const PERIOD: Duration = Duration::from_secs(1);

/// How long a capture's node may be down (no alive key) before the
/// capture fails.
pub const NODE_DOWN_GRACE: Duration = Duration::from_secs(30);

/// The longest a capture may take from its request to its end.
pub const CAPTURE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Reads of a ready copy tried before the capture fails.
pub const MAX_READS: u32 = 3;

/// What the leader does next with a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing yet.
    Wait,
    /// Read the node's copy into the image store.
    Read {
        /// The size the node reported.
        size: Option<u64>,
    },
    /// The image goes to `error` with this reason; the job ends.
    Fail(String),
    /// The job ends (the image is stored, or gone, or no longer queued).
    Finish,
}

/// What the leader knows about one capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen<'a> {
    /// The job.
    pub job: &'a CaptureJob,
    /// The node's report.
    pub report: Option<&'a CaptureReport>,
    /// The image's status (`None`: the image is gone).
    pub image: Option<ImageStatus>,
    /// Whether the server's spec exists.
    pub server_exists: bool,
    /// How long the node has been seen down (`None`: alive).
    pub node_down_for: Option<Duration>,
    /// A read of the copy is under way here.
    pub reading: bool,
    /// Reads of the copy that failed so far, the last error.
    pub failed_reads: Option<(u32, String)>,
    /// Now.
    pub now: Timestamp,
}

/// The next step of a capture (module docs). Pure.
pub fn step(s: &Seen<'_>) -> Step {
    match s.image {
        None => return Step::Finish,
        Some(ImageStatus::Queued) => {}
        Some(_) => return Step::Finish,
    }
    if s.reading {
        return Step::Wait;
    }
    let what = format!(
        "capture of the root disk of server {} on node {}",
        s.job.instance, s.job.node
    );
    if let Some((n, e)) = &s.failed_reads {
        if *n >= MAX_READS {
            return Step::Fail(format!("{what}: reading the copy failed {n} times: {e}"));
        }
    }
    match s.report.map(|r| (r.phase, r)) {
        Some((CapturePhase::Failed, r)) => {
            return Step::Fail(format!(
                "{what} failed: {}",
                r.detail.as_deref().unwrap_or("no reason given")
            ))
        }
        Some((CapturePhase::Ready, r)) => return Step::Read { size: r.size_bytes },
        Some((CapturePhase::Copying, _)) | None => {}
    }
    if !s.server_exists {
        return Step::Fail(format!(
            "{what}: the server was deleted before its disk was copied"
        ));
    }
    if let Some(d) = s.node_down_for.filter(|d| *d >= NODE_DOWN_GRACE) {
        return Step::Fail(format!("{what}: the node is down (for {}s)", d.as_secs()));
    }
    let age = (s.now - s.job.created_at).to_std().unwrap_or_default();
    if age >= CAPTURE_TIMEOUT {
        return Step::Fail(format!("{what}: not done after {}s", age.as_secs()));
    }
    Step::Wait
}

/// The loop's memory (this coordinator's, gone with it).
#[derive(Debug, Default)]
struct Memory {
    /// When each node was first seen down.
    down_since: BTreeMap<nubo_common::NodeName, std::time::Instant>,
    /// Reads under way.
    reading: BTreeSet<ImageId>,
    /// Failed reads per image, with the last error.
    failed_reads: BTreeMap<ImageId, (u32, String)>,
}

fn lock(m: &Mutex<Memory>) -> std::sync::MutexGuard<'_, Memory> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Runs until shutdown.
pub async fn run(ctx: Ctx, mut shutdown: watch::Receiver<bool>) {
    let memory = Arc::new(Mutex::new(Memory::default()));
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            () = tokio::time::sleep(PERIOD) => {}
        }
        let Some(lease) = ctx.leader.leader_lease() else {
            continue;
        };
        if let Err(e) = pass(&ctx, &memory, lease).await {
            tracing::warn!(error = %e, "capture pass failed");
        }
    }
}

/// One look at every capture.
async fn pass(ctx: &Ctx, memory: &Arc<Mutex<Memory>>, lease: i64) -> ApiResult<()> {
    let jobs: Vec<CaptureJob> = ctx
        .store
        .list_all(&keys::captures_prefix(), decode_or_skip)
        .await?;
    if jobs.is_empty() {
        lock(memory).down_since.clear();
        return Ok(());
    }
    for job in jobs {
        let span = tracing::info_span!("image.capture", image = %job.image, instance = %job.instance, node = %job.node);
        if let Err(e) = one(ctx, memory, lease, &job).instrument(span.clone()).await {
            span.in_scope(|| tracing::warn!(error = %e, "capture not brought forward"));
        }
    }
    Ok(())
}

async fn one(
    ctx: &Ctx,
    memory: &Arc<Mutex<Memory>>,
    lease: i64,
    job: &CaptureJob,
) -> ApiResult<()> {
    let report = ctx
        .store
        .read::<CaptureReport>(&keys::node_capture_report(&job.node, &job.image))
        .await
        .ok()
        .flatten()
        .map(|v| v.value);
    let image = ctx
        .store
        .read::<Image>(&keys::image(&job.image))
        .await?
        .map(|v| v.value.status);
    let server_exists = ctx
        .store
        .get_kv(&keys::instance(&job.instance))
        .await?
        .is_some();
    let alive = ctx
        .store
        .get_kv(&keys::node_alive(&job.node))
        .await?
        .is_some();
    let (node_down_for, reading, failed_reads) = {
        let mut m = lock(memory);
        let down = if alive {
            m.down_since.remove(&job.node);
            None
        } else {
            Some(
                m.down_since
                    .entry(job.node.clone())
                    .or_insert_with(std::time::Instant::now)
                    .elapsed(),
            )
        };
        (
            down,
            m.reading.contains(&job.image),
            m.failed_reads.get(&job.image).cloned(),
        )
    };
    let next = step(&Seen {
        job,
        report: report.as_ref(),
        image,
        server_exists,
        node_down_for,
        reading,
        failed_reads,
        now: nubo_common::model::now(),
    });
    match next {
        Step::Wait => Ok(()),
        Step::Finish => {
            end(ctx, lease, job).await?;
            lock(memory).failed_reads.remove(&job.image);
            Ok(())
        }
        Step::Fail(reason) => {
            tracing::warn!(%reason, "capture failed");
            let r = reason.clone();
            crate::operations::image_data::edit_image(ctx, &job.image, move |i| {
                if i.status == ImageStatus::Queued {
                    i.status = ImageStatus::Error;
                    i.status_reason = Some(r.clone());
                }
            })
            .await?;
            end(ctx, lease, job).await?;
            lock(memory).failed_reads.remove(&job.image);
            Ok(())
        }
        Step::Read { size } => {
            lock(memory).reading.insert(job.image);
            let (ctx, memory, job) = (ctx.clone(), memory.clone(), job.clone());
            tokio::spawn(
                async move {
                    let read = read_copy(&ctx, &job, size).await;
                    let mut m = lock(&memory);
                    m.reading.remove(&job.image);
                    match read {
                        Ok(img) => tracing::info!(bytes = img.size_bytes, status = ?img.status, "captured disk stored"),
                        Err(e) => {
                            tracing::warn!(error = %e, "reading the captured disk failed");
                            let entry = m.failed_reads.entry(job.image).or_insert((0, String::new()));
                            entry.0 += 1;
                            entry.1 = e.to_string();
                        }
                    }
                }
                .in_current_span(),
            );
            Ok(())
        }
    }
}

/// Reads the node's copy into the image store.
async fn read_copy(ctx: &Ctx, job: &CaptureJob, size: Option<u64>) -> ApiResult<Image> {
    let stream =
        crate::operations::node_streams::disk_capture(ctx, &job.node, &job.image, &job.project)
            .await?;
    let chunks = futures::stream::unfold(stream, |mut s| async move {
        match s.next_chunk().await {
            None => None,
            Some(Ok(b)) => Some((Ok(b.to_vec()), s)),
            Some(Err(e)) => Some((Err(e.to_string()), s)),
        }
    })
    .flat_map(|c: Result<Vec<u8>, String>| {
        // The store takes chunks of at most MAX_CHUNK.
        let pieces: Vec<Result<Vec<u8>, String>> = match c {
            Ok(v) => v.chunks(MAX_CHUNK).map(|p| Ok(p.to_vec())).collect(),
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(pieces)
    })
    .boxed();
    crate::operations::image_data::upload(
        ctx,
        &job.project,
        &job.image.to_string(),
        "disk",
        size,
        chunks,
    )
    .await
}

/// Deletes the job and the node's order (the leader's lease guards it).
async fn end(ctx: &Ctx, lease: i64, job: &CaptureJob) -> ApiResult<()> {
    let txn = Txn::new()
        .when(vec![crate::election::leader_guard(lease)])
        .and_then(vec![
            TxnOp::delete(keys::capture_job(&job.image).as_str(), None),
            TxnOp::delete(
                keys::node_capture_order(&job.node, &job.image).as_str(),
                None,
            ),
        ]);
    let r = ctx.store.txn(txn).await?;
    if !r.succeeded() {
        return Err(ApiError::Unavailable("no longer the leader".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_common::{InstanceId, NodeName, ProjectId};

    fn job() -> CaptureJob {
        CaptureJob {
            image: ImageId::new_random(),
            project: ProjectId::default_project(),
            instance: InstanceId::new_random(),
            node: NodeName::new("n1").unwrap(),
            created_at: nubo_common::model::now(),
        }
    }

    fn seen<'a>(job: &'a CaptureJob, report: Option<&'a CaptureReport>) -> Seen<'a> {
        Seen {
            job,
            report,
            image: Some(ImageStatus::Queued),
            server_exists: true,
            node_down_for: None,
            reading: false,
            failed_reads: None,
            now: job.created_at,
        }
    }

    fn report(
        j: &CaptureJob,
        phase: CapturePhase,
        size: Option<u64>,
        detail: Option<&str>,
    ) -> CaptureReport {
        CaptureReport {
            size_bytes: size,
            ..CaptureReport::new(j.image, phase, detail.map(str::to_string))
        }
    }

    #[test]
    fn a_ready_copy_is_read_once_at_a_time() {
        let j = job();
        assert_eq!(step(&seen(&j, None)), Step::Wait);
        let copying = report(&j, CapturePhase::Copying, None, None);
        assert_eq!(step(&seen(&j, Some(&copying))), Step::Wait);
        let ready = report(&j, CapturePhase::Ready, Some(4096), None);
        assert_eq!(
            step(&seen(&j, Some(&ready))),
            Step::Read { size: Some(4096) }
        );
        let mut s = seen(&j, Some(&ready));
        s.reading = true;
        assert_eq!(step(&s), Step::Wait);
        // Stored: the image is active, the job ends.
        s.reading = false;
        s.image = Some(ImageStatus::Active);
        assert_eq!(step(&s), Step::Finish);
        // A ready copy is read even if the server is gone meanwhile.
        let mut s = seen(&j, Some(&ready));
        s.server_exists = false;
        assert_eq!(step(&s), Step::Read { size: Some(4096) });
        // Reads failing again and again end it.
        s.failed_reads = Some((MAX_READS - 1, "reset".into()));
        assert_eq!(step(&s), Step::Read { size: Some(4096) });
        s.failed_reads = Some((MAX_READS, "reset".into()));
        assert!(matches!(step(&s), Step::Fail(r) if r.contains("reset")));
    }

    #[test]
    fn failures_end_in_error_with_their_reason() {
        let j = job();
        let failed = report(&j, CapturePhase::Failed, None, Some("qemu-img: no space"));
        assert!(
            matches!(step(&seen(&j, Some(&failed))), Step::Fail(r) if r.contains("qemu-img: no space") && r.contains(&j.instance.to_string()))
        );
        let mut s = seen(&j, None);
        s.server_exists = false;
        assert!(matches!(step(&s), Step::Fail(r) if r.contains("deleted")));
        let mut s = seen(&j, None);
        s.node_down_for = Some(NODE_DOWN_GRACE - Duration::from_secs(1));
        assert_eq!(
            step(&s),
            Step::Wait,
            "a short outage (agent restart) is waited out"
        );
        s.node_down_for = Some(NODE_DOWN_GRACE);
        assert!(matches!(step(&s), Step::Fail(r) if r.contains("down")));
        let mut s = seen(&j, None);
        s.now = j.created_at + chrono::Duration::from_std(CAPTURE_TIMEOUT).unwrap();
        assert!(matches!(step(&s), Step::Fail(r) if r.contains("not done")));
    }

    #[test]
    fn a_deleted_or_settled_image_ends_the_job() {
        let j = job();
        let mut s = seen(&j, None);
        s.image = None;
        assert_eq!(step(&s), Step::Finish);
        s.image = Some(ImageStatus::Error);
        assert_eq!(step(&s), Step::Finish);
    }
}
