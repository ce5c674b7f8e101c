//! Root-disk captures (the protocol is in `nubo_common::model::capture`):
//! for each [`CaptureOrder`] of this node the agent copies the instance's
//! root disk, at one point in time, into
//! `<state-dir>/captures/<image>.img` ([`Hypervisor::capture_root`]: a
//! backup job of a running libvirt domain, `qemu-img convert` of a shut-off
//! one, the guest's disk file on the netns driver) and reports
//! [`CapturePhase::Ready`] with its size, which the leader then reads
//! through the node API (`GET /v1/disk-capture/<image>`, with a ticket for
//! exactly that capture) into the image store.
//!
//! The copy runs as a background job (it takes as long as the disk is
//! large; the reconcile loop goes on) and is written as `<image>.part`,
//! renamed to `<image>.img` only when complete, so a file named `.img` is
//! always a whole copy. The job writes its outcome itself; the plan
//! ([`plan`], pure) brings everything else forward and is what makes
//! restarts safe:
//!
//! - an order without a job, a copy or a final report (new, or the agent
//!   restarted mid-copy: the half-written `.part` is discarded) → start;
//! - a complete copy whose report does not say so (the job's own report
//!   was lost) → report it ready; a failed job → report it failed;
//! - an order for an instance that is not on this hypervisor (deleted,
//!   moved) → report it failed with the reason;
//! - files and reports without an order (the leader finished or gave up)
//!   → removed.
//!
//! [`Hypervisor::capture_root`]: super::hypervisor::Hypervisor::capture_root

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use nubo_common::model::{self, CapturePhase, CaptureReport};
use nubo_common::{keys, ImageId, InstanceId, NodeName};
use nubo_store::Etcd;
use tracing::{info, info_span, warn, Instrument};

use super::hypervisor::{disk_copy, Hypervisor};
use crate::reconciler::{Subsystem, SubsystemError};
use crate::state::desired::DesiredNode;

/// Suffix of a complete copy.
const DONE: &str = "img";
/// Suffix of a copy being written.
const PART: &str = "part";

/// Where the copies of `state_dir`'s agent are (`<state-dir>/captures`).
pub fn captures_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("captures")
}

/// The complete copy for `image` in `dir`.
pub fn copy_path(dir: &Path, image: &ImageId) -> PathBuf {
    dir.join(format!("{image}.{DONE}"))
}

fn part_path(dir: &Path, image: &ImageId) -> PathBuf {
    dir.join(format!("{image}.{PART}"))
}

/// The image and whether the copy is complete, of a file name in the
/// captures directory. Pure.
pub fn parse_file_name(name: &str) -> Option<(ImageId, bool)> {
    let (stem, ext) = name.rsplit_once('.')?;
    let image = stem.parse().ok()?;
    match ext {
        DONE => Some((image, true)),
        PART => Some((image, false)),
        _ => None,
    }
}

/// What the captures subsystem observes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturesObserved {
    /// Complete copies, with their size in bytes.
    pub copies: BTreeMap<ImageId, u64>,
    /// Partial copies (`.part`) on disk.
    pub partial: BTreeSet<ImageId>,
    /// Jobs running now.
    pub running: BTreeSet<ImageId>,
    /// Jobs that failed, with the reason.
    pub failed: BTreeMap<ImageId, String>,
    /// The instances nubo manages on the hypervisor.
    pub instances: BTreeSet<InstanceId>,
}

/// One step of the captures subsystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureAction {
    /// Copy the instance's root disk (a `.part` left over is discarded).
    Start {
        /// The image.
        image: ImageId,
        /// The instance.
        instance: InstanceId,
        /// `raw` or `qcow2`.
        format: String,
    },
    /// Write this node's report.
    Report(CaptureReport),
    /// Remove the files of a capture that has no order.
    RemoveFiles(ImageId),
    /// Delete a report that has no order.
    DeleteReport(ImageId),
    /// Forget a failed job that has no order any more.
    Forget(ImageId),
}

/// The steps that bring every capture of this node forward. Pure.
pub fn plan(desired: &DesiredNode, observed: &CapturesObserved) -> Vec<CaptureAction> {
    let mut out = Vec::new();
    for (image, order) in &desired.capture_orders {
        let report = desired.capture_reports.get(image);
        let phase = report.map(|r| r.phase);
        if phase == Some(CapturePhase::Failed) || observed.running.contains(image) {
            continue;
        }
        let report_as = |phase, size: Option<u64>, detail: Option<String>| {
            CaptureAction::Report(CaptureReport {
                size_bytes: size,
                ..CaptureReport::new(*image, phase, detail)
            })
        };
        if let Some(reason) = observed.failed.get(image) {
            out.push(report_as(CapturePhase::Failed, None, Some(reason.clone())));
            continue;
        }
        if let Some(size) = observed.copies.get(image) {
            let told = report
                .is_some_and(|r| r.phase == CapturePhase::Ready && r.size_bytes == Some(*size));
            if !told {
                out.push(report_as(CapturePhase::Ready, Some(*size), None));
            }
            continue;
        }
        let here = observed.instances.contains(&order.instance)
            && desired.instances.contains_key(&order.instance);
        if !here {
            out.push(report_as(
                CapturePhase::Failed,
                None,
                Some(format!(
                    "server {} is not on this node (deleted or moved during the capture)",
                    order.instance
                )),
            ));
        } else if desired.migrating(&order.instance) {
            out.push(report_as(
                CapturePhase::Failed,
                None,
                Some(format!("server {} is migrating", order.instance)),
            ));
        } else if !disk_copy::valid_format(&order.disk_format) {
            out.push(report_as(
                CapturePhase::Failed,
                None,
                Some(format!(
                    "disk format {:?}: a capture is raw or qcow2",
                    order.disk_format
                )),
            ));
        } else {
            out.push(CaptureAction::Start {
                image: *image,
                instance: order.instance,
                format: order.disk_format.clone(),
            });
        }
    }
    let ordered = |i: &ImageId| desired.capture_orders.contains_key(i);
    let files: BTreeSet<ImageId> = observed
        .copies
        .keys()
        .chain(&observed.partial)
        .copied()
        .collect();
    for image in files {
        if !ordered(&image) && !observed.running.contains(&image) {
            out.push(CaptureAction::RemoveFiles(image));
        }
    }
    for image in desired.capture_reports.keys() {
        if !ordered(image) {
            out.push(CaptureAction::DeleteReport(*image));
        }
    }
    for image in observed.failed.keys() {
        if !ordered(image) {
            out.push(CaptureAction::Forget(*image));
        }
    }
    out
}

/// The jobs of this node: running ones, and failed ones with the reason.
#[derive(Debug, Default)]
struct Jobs {
    running: BTreeSet<ImageId>,
    failed: BTreeMap<ImageId, String>,
}

/// The captures subsystem.
pub struct Captures {
    node: NodeName,
    hv: Arc<dyn Hypervisor>,
    etcd: Etcd,
    dir: PathBuf,
    jobs: Arc<Mutex<Jobs>>,
}

impl Captures {
    /// The captures of `node` on `hv`, kept in `<state_dir>/captures` and
    /// reported through `etcd`.
    pub fn new(node: NodeName, hv: Arc<dyn Hypervisor>, etcd: Etcd, state_dir: &Path) -> Self {
        Self {
            node,
            hv,
            etcd,
            dir: captures_dir(state_dir),
            jobs: Arc::default(),
        }
    }
}

fn lock(jobs: &Mutex<Jobs>) -> std::sync::MutexGuard<'_, Jobs> {
    match jobs.lock() {
        Ok(j) => j,
        Err(p) => p.into_inner(),
    }
}

/// Writes this node's report on a capture.
async fn put_report(etcd: &Etcd, node: &NodeName, r: &CaptureReport) -> Result<(), String> {
    etcd.put(
        keys::node_capture_report(node, &r.image),
        model::encode(r),
        None,
    )
    .await
    .map(|_| ())
    .map_err(|e| format!("report capture {}: {e}", r.image))
}

/// Removes `path`; a missing file is fine.
async fn remove(path: &Path) -> Result<(), String> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("remove {}: {e}", path.display())),
    }
}

/// The background job: copy, rename into place, report.
async fn run_job(
    hv: Arc<dyn Hypervisor>,
    etcd: Etcd,
    node: NodeName,
    dir: PathBuf,
    jobs: Arc<Mutex<Jobs>>,
    (image, instance, format): (ImageId, InstanceId, String),
) {
    let part = part_path(&dir, &image);
    let done = copy_path(&dir, &image);
    let copied = async {
        hv.capture_root(instance, &part, &format)
            .await
            .map_err(|e| e.to_string())?;
        tokio::fs::rename(&part, &done)
            .await
            .map_err(|e| format!("rename {}: {e}", part.display()))?;
        disk_copy::file_size(&done).await.map_err(|e| e.to_string())
    }
    .await;
    let report = match &copied {
        Ok(size) => {
            info!(bytes = size, "root disk copied; ready to be read");
            CaptureReport {
                size_bytes: Some(*size),
                ..CaptureReport::new(image, CapturePhase::Ready, None)
            }
        }
        Err(reason) => {
            warn!(%reason, "root disk capture failed");
            let _ = remove(&part).await;
            CaptureReport::new(image, CapturePhase::Failed, Some(reason.clone()))
        }
    };
    {
        // The outcome is visible (file renamed, failure recorded) before the
        // job stops counting as running: the plan never misses both.
        let mut j = lock(&jobs);
        if let Err(reason) = copied {
            j.failed.insert(image, reason);
        }
        j.running.remove(&image);
    }
    if let Err(e) = put_report(&etcd, &node, &report).await {
        warn!(error = %e, "capture report not written; the next pass writes it");
    }
}

#[async_trait]
impl Subsystem for Captures {
    type Observed = CapturesObserved;
    type Plan = Vec<CaptureAction>;

    fn name(&self) -> &'static str {
        "captures"
    }

    async fn observe(&mut self, desired: &DesiredNode) -> Result<CapturesObserved, SubsystemError> {
        let (running, failed) = {
            let j = lock(&self.jobs);
            (j.running.clone(), j.failed.clone())
        };
        let mut observed = CapturesObserved {
            running,
            failed,
            ..CapturesObserved::default()
        };
        match tokio::fs::read_dir(&self.dir).await {
            Ok(mut entries) => loop {
                let entry = match entries.next_entry().await {
                    Ok(Some(e)) => e,
                    Ok(None) => break,
                    Err(e) => {
                        return Err(SubsystemError::Other(format!(
                            "read {}: {e}",
                            self.dir.display()
                        )))
                    }
                };
                let name = entry.file_name();
                let Some((image, complete)) = name.to_str().and_then(parse_file_name) else {
                    continue;
                };
                if complete {
                    let size = entry.metadata().await.map(|m| m.len()).unwrap_or(0);
                    observed.copies.insert(image, size);
                } else {
                    observed.partial.insert(image);
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(SubsystemError::Other(format!(
                    "read {}: {e}",
                    self.dir.display()
                )))
            }
        }
        if !desired.capture_orders.is_empty() {
            observed.instances = super::hypervisor::managed_ids(self.hv.as_ref()).await?;
        }
        Ok(observed)
    }

    fn plan(&self, desired: &DesiredNode, observed: &CapturesObserved) -> Vec<CaptureAction> {
        plan(desired, observed)
    }

    async fn apply(
        &mut self,
        _desired: &DesiredNode,
        plan: Vec<CaptureAction>,
    ) -> Result<usize, SubsystemError> {
        let n = plan.len();
        let mut errors = Vec::new();
        for action in plan {
            match action {
                CaptureAction::Start {
                    image,
                    instance,
                    format,
                } => {
                    let span = info_span!("capture", %image, %instance);
                    let prepared = async {
                        tokio::fs::create_dir_all(&self.dir)
                            .await
                            .map_err(|e| format!("create {}: {e}", self.dir.display()))?;
                        remove(&part_path(&self.dir, &image)).await?;
                        put_report(
                            &self.etcd,
                            &self.node,
                            &CaptureReport::new(image, CapturePhase::Copying, None),
                        )
                        .await
                    }
                    .await;
                    if let Err(e) = prepared {
                        errors.push(e);
                        continue;
                    }
                    span.in_scope(|| info!(%format, "copying the root disk"));
                    lock(&self.jobs).running.insert(image);
                    tokio::spawn(
                        run_job(
                            self.hv.clone(),
                            self.etcd.clone(),
                            self.node.clone(),
                            self.dir.clone(),
                            self.jobs.clone(),
                            (image, instance, format),
                        )
                        .instrument(span),
                    );
                }
                CaptureAction::Report(r) => {
                    info!(image = %r.image, phase = ?r.phase, detail = ?r.detail, "capture report");
                    if let Err(e) = put_report(&self.etcd, &self.node, &r).await {
                        errors.push(e);
                    }
                }
                CaptureAction::RemoveFiles(image) => {
                    for p in [copy_path(&self.dir, &image), part_path(&self.dir, &image)] {
                        if let Err(e) = remove(&p).await {
                            errors.push(e);
                        }
                    }
                    info!(%image, "capture over; copy removed");
                }
                CaptureAction::DeleteReport(image) => {
                    if let Err(e) = self
                        .etcd
                        .delete(keys::node_capture_report(&self.node, &image), None)
                        .await
                    {
                        errors.push(format!("delete capture report {image}: {e}"));
                    }
                }
                CaptureAction::Forget(image) => {
                    lock(&self.jobs).failed.remove(&image);
                }
            }
        }
        if errors.is_empty() {
            Ok(n)
        } else {
            Err(SubsystemError::Other(errors.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_common::model::{CaptureOrder, PowerState};

    fn order(instance: InstanceId) -> CaptureOrder {
        CaptureOrder {
            image: ImageId::new_random(),
            instance,
            disk_format: "raw".into(),
            created_at: model::now(),
        }
    }

    /// A node running one instance with one capture order for it.
    fn node_with_order() -> (DesiredNode, CapturesObserved, ImageId, InstanceId) {
        let inst = crate::testutil::desired_instance(PowerState::Running);
        let id = inst.id();
        let o = order(id);
        let image = o.image;
        let mut d = DesiredNode::default();
        d.instances.insert(id, inst);
        d.capture_orders.insert(image, o);
        let obs = CapturesObserved {
            instances: BTreeSet::from([id]),
            ..CapturesObserved::default()
        };
        (d, obs, image, id)
    }

    fn report(image: ImageId, phase: CapturePhase, size: Option<u64>) -> CaptureReport {
        CaptureReport {
            size_bytes: size,
            ..CaptureReport::new(image, phase, None)
        }
    }

    fn phases(p: &[CaptureAction]) -> Vec<(ImageId, CapturePhase, Option<u64>)> {
        p.iter()
            .filter_map(|a| match a {
                CaptureAction::Report(r) => Some((r.image, r.phase, r.size_bytes)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_order_starts_one_copy_then_reports_it_ready_once() {
        let (mut d, mut obs, image, id) = node_with_order();
        assert_eq!(
            plan(&d, &obs),
            vec![CaptureAction::Start {
                image,
                instance: id,
                format: "raw".into()
            }]
        );
        // Running: nothing more, whatever the report says.
        obs.running.insert(image);
        d.capture_reports
            .insert(image, report(image, CapturePhase::Copying, None));
        assert!(plan(&d, &obs).is_empty());
        // Done but its own report was lost: reported from the file.
        obs.running.clear();
        obs.copies.insert(image, 4096);
        assert_eq!(
            phases(&plan(&d, &obs)),
            vec![(image, CapturePhase::Ready, Some(4096))]
        );
        d.capture_reports
            .insert(image, report(image, CapturePhase::Ready, Some(4096)));
        assert!(plan(&d, &obs).is_empty(), "converged");
    }

    #[test]
    fn a_restart_mid_copy_starts_over() {
        let (mut d, mut obs, image, id) = node_with_order();
        d.capture_reports
            .insert(image, report(image, CapturePhase::Copying, None));
        obs.partial.insert(image);
        assert_eq!(
            plan(&d, &obs),
            vec![CaptureAction::Start {
                image,
                instance: id,
                format: "raw".into()
            }],
            "no job, no complete copy: copy again (Start discards the .part)"
        );
    }

    #[test]
    fn failures_are_reported_once_with_their_reason() {
        let (mut d, mut obs, image, _) = node_with_order();
        obs.failed.insert(image, "disk gone".into());
        let p = plan(&d, &obs);
        assert!(
            matches!(&p[..], [CaptureAction::Report(r)] if r.phase == CapturePhase::Failed && r.detail.as_deref() == Some("disk gone")),
            "{p:?}"
        );
        d.capture_reports
            .insert(image, report(image, CapturePhase::Failed, None));
        assert!(plan(&d, &obs).is_empty());
        // The leader gave up: order gone → report deleted, job forgotten.
        d.capture_orders.clear();
        assert_eq!(
            plan(&d, &obs),
            vec![
                CaptureAction::DeleteReport(image),
                CaptureAction::Forget(image)
            ]
        );
    }

    #[test]
    fn an_instance_not_here_fails_the_capture() {
        let (mut d, mut obs, image, id) = node_with_order();
        obs.instances.clear();
        let p = phases(&plan(&d, &obs));
        assert_eq!(p, vec![(image, CapturePhase::Failed, None)]);
        // On the hypervisor but no longer assigned here (deleted).
        obs.instances.insert(id);
        d.instances.clear();
        assert_eq!(
            phases(&plan(&d, &obs)),
            vec![(image, CapturePhase::Failed, None)]
        );
        // A bad format is refused, not attempted.
        let (mut d, obs, image, _) = node_with_order();
        if let Some(o) = d.capture_orders.get_mut(&image) {
            o.disk_format = "vmdk".into();
        }
        assert_eq!(
            phases(&plan(&d, &obs)),
            vec![(image, CapturePhase::Failed, None)]
        );
    }

    #[test]
    fn files_and_reports_without_an_order_are_removed_unless_a_job_writes_them() {
        let d = DesiredNode::default();
        let (a, b, c) = (
            ImageId::new_random(),
            ImageId::new_random(),
            ImageId::new_random(),
        );
        let mut obs = CapturesObserved::default();
        obs.copies.insert(a, 10);
        obs.partial.insert(b);
        obs.partial.insert(c);
        obs.running.insert(c);
        let mut p = plan(&d, &obs);
        p.sort_by_key(|x| format!("{x:?}"));
        let mut want = vec![CaptureAction::RemoveFiles(a), CaptureAction::RemoveFiles(b)];
        want.sort_by_key(|x| format!("{x:?}"));
        assert_eq!(p, want);
    }

    #[test]
    fn file_names() {
        let i = ImageId::new_random();
        assert_eq!(parse_file_name(&format!("{i}.img")), Some((i, true)));
        assert_eq!(parse_file_name(&format!("{i}.part")), Some((i, false)));
        assert_eq!(parse_file_name(&format!("{i}.tmp")), None);
        assert_eq!(parse_file_name("x.img"), None);
        assert_eq!(parse_file_name("noext"), None);
    }
}
