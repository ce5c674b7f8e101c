//! Live migration of a nubo domain to another host's libvirtd, peer to
//! peer ([`LibvirtDriver::migrate`]).
//!
//! Why through the raw C API: `virDomainMigrateToURI3` takes typed
//! parameters and blocks for the whole job, while the job must be steered
//! from another thread (`virDomainMigrateStartPostCopy`,
//! `virDomainAbortJob`, `virDomainGetJobStats`); the `virt` crate cannot be
//! used here (see [`crate::ffi`]), so the calls are wrapped there like the
//! rest of the driver's.
//!
//! How a migration runs:
//! - the source's libvirtd connects to the destination's
//!   ([`MigrateOptions::destination_uri`]: `qemu+tls://<host>/system` in
//!   production, `qemu+tcp://…` in test labs) and QEMU streams memory (and,
//!   for [`MigrateOptions::block`], the local disks over NBD) to
//!   [`MigrateOptions::migration_uri`] (`tcp://<destination underlay IP>`;
//!   with [`MigrateOptions::tls`] QEMU's native TLS protects the stream);
//! - flags: live, peer to peer, persistent on the destination, undefined
//!   on the source, auto-converge (vCPUs throttled when memory is dirtied
//!   faster than it moves), post-copy allowed;
//! - when the destination host has the domain *defined* (the destination
//!   agent defines it while preparing, with its own paths: console log,
//!   kernel, local disk), that definition is passed as the destination XML
//!   (`VIR_MIGRATE_PARAM_DEST_XML`): node-local paths may differ between
//!   hosts, libvirt checks that the guest ABI is the same; the disks the
//!   running source has and that definition lacks (volumes hot-plugged
//!   here) are added to it unchanged, but for their libvirt secret's UUID,
//!   which is the destination's secret of the same usage
//!   ([`carry_disks`]): the volumes move with the guest, and with
//!   `VIR_MIGRATE_PERSIST_DEST` the destination's persistent definition
//!   has them too;
//! - after [`MigrateOptions::postcopy_after`] of pre-copy, the job switches
//!   to post-copy (the guest runs on the destination, which pulls the
//!   remaining pages; QEMU refuses the switch while a block migration
//!   still copies the disks, so a refused switch is tried again every
//!   second); after [`MigrateOptions::budget`] without having
//!   switched, or when asked to ([`LibvirtDriver::migrate`]'s `abort`), the
//!   job is aborted and the guest keeps running on the source. A job in
//!   post-copy cannot be aborted (the guest already runs on the
//!   destination) and is waited for;
//! - the downtime is libvirt's (`VIR_DOMAIN_JOB_DOWNTIME` of the completed
//!   job, read on the destination, where the domain now lives).

use std::collections::BTreeMap;
use std::ffi::c_uint;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use virt_sys as sys;

use crate::disk::{disk_elements, disk_secret_uuid, parse_disks};
use crate::driver::LibvirtDriver;
use crate::error::DriverError;
use crate::ffi::{Conn, Dom, MigrateParam, VirError};
use crate::xml::NUBO_METADATA_NS;

/// How to migrate a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateOptions {
    /// The destination's libvirtd, as the source's libvirtd reaches it
    /// (peer to peer): `qemu+tls://<host>/system`, or `qemu+tcp://…` in
    /// test labs.
    pub destination_uri: String,
    /// Where QEMU sends the migration stream (`tcp://<ip>`: the
    /// destination's underlay or migration network address). `None`: the
    /// destination libvirtd's own choice (its host name).
    pub migration_uri: Option<String>,
    /// Copy the local disks too (block migration: only the top image of
    /// each disk, `VIR_MIGRATE_NON_SHARED_INC`; the destination must have
    /// created it, over the same backing image).
    pub block: bool,
    /// Encrypt the migration stream with QEMU's native TLS
    /// (`VIR_MIGRATE_TLS`; needs `migrate_tls_x509_cert_dir` on both hosts).
    pub tls: bool,
    /// Switch to post-copy after this long in pre-copy (`None`: never).
    pub postcopy_after: Option<Duration>,
    /// Abort after this long, unless the job is in post-copy by then.
    pub budget: Duration,
    /// Bandwidth cap in MiB/s (`None`: unlimited).
    pub bandwidth_mib_s: Option<u64>,
}

/// Why a migration was aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// The caller asked for it.
    Requested,
    /// The budget ran out before the job completed or switched to post-copy.
    Budget,
}

impl std::fmt::Display for AbortReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AbortReason::Requested => "abort requested",
            AbortReason::Budget => "time budget exceeded",
        })
    }
}

/// What a completed migration measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MigrationStats {
    /// Guest downtime as libvirt measured it (ms).
    pub downtime_ms: Option<u64>,
    /// Duration of the job as libvirt measured it (ms).
    pub elapsed_ms: Option<u64>,
    /// Bytes transferred (memory and disks).
    pub data_total_bytes: Option<u64>,
    /// Whether the job switched to post-copy.
    pub postcopy: bool,
    /// Post-copy was allowed but QEMU could not enable it (no userfaultfd
    /// on these hosts): the job ran in pre-copy only.
    pub postcopy_unavailable: bool,
    /// Wall-clock duration of the call (ms).
    pub wall_ms: u64,
}

/// Why [`LibvirtDriver::migrate`] failed. In every case but
/// [`MigrationError::Failed`] after a switch to post-copy the guest still
/// runs on the source.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The domain cannot be migrated from here (not found, not nubo's, not
    /// running, connection lost).
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// The destination's libvirtd could not be reached.
    #[error("instance {instance_id}: cannot reach the destination libvirt at {uri}: {source}")]
    Destination {
        /// Instance concerned.
        instance_id: String,
        /// The destination URI.
        uri: String,
        /// libvirt's error.
        source: VirError,
    },
    /// The source's volumes cannot be carried to the destination (a
    /// volume's libvirt secret unknown on either side).
    #[error("instance {instance_id}: cannot carry its volumes to the destination: {detail}")]
    Volumes {
        /// Instance concerned.
        instance_id: String,
        /// Why.
        detail: String,
    },
    /// The domain already runs on the destination.
    #[error("instance {0}: already running on the destination")]
    AlreadyThere(String),
    /// The job was aborted; the guest runs on the source.
    #[error("instance {instance_id}: migration aborted ({reason}): {source}")]
    Aborted {
        /// Instance concerned.
        instance_id: String,
        /// Why.
        reason: AbortReason,
        /// libvirt's error for the aborted job.
        source: VirError,
    },
    /// libvirt failed the job.
    #[error("instance {instance_id}: migration failed{}: {source}", if *.postcopy { " in post-copy" } else { "" })]
    Failed {
        /// Instance concerned.
        instance_id: String,
        /// Whether it had switched to post-copy (then the guest may be
        /// lost on both sides: libvirt leaves it paused).
        postcopy: bool,
        /// libvirt's error.
        source: VirError,
    },
}

impl MigrationError {
    /// Whether the guest still runs on the source.
    pub fn guest_on_source(&self) -> bool {
        !matches!(self, MigrationError::Failed { postcopy: true, .. })
    }
}

/// The `virDomainMigrateFlags` for `opts`. Pure.
pub fn migrate_flags(opts: &MigrateOptions) -> u32 {
    let mut f = sys::VIR_MIGRATE_LIVE
        | sys::VIR_MIGRATE_PEER2PEER
        | sys::VIR_MIGRATE_PERSIST_DEST
        | sys::VIR_MIGRATE_UNDEFINE_SOURCE
        | sys::VIR_MIGRATE_AUTO_CONVERGE
        | sys::VIR_MIGRATE_ABORT_ON_ERROR;
    if opts.postcopy_after.is_some() {
        f |= sys::VIR_MIGRATE_POSTCOPY;
    }
    if opts.block {
        f |= sys::VIR_MIGRATE_NON_SHARED_INC;
    }
    if opts.tls {
        f |= sys::VIR_MIGRATE_TLS;
    }
    f
}

/// The typed parameters of the job. Pure.
pub(crate) fn migrate_params(opts: &MigrateOptions, dest_xml: Option<&str>) -> Vec<MigrateParam> {
    let mut p = Vec::new();
    if let Some(uri) = &opts.migration_uri {
        p.push(MigrateParam::Str(sys::VIR_MIGRATE_PARAM_URI, uri.clone()));
    }
    if let Some(xml) = dest_xml {
        p.push(MigrateParam::Str(
            sys::VIR_MIGRATE_PARAM_DEST_XML,
            xml.to_owned(),
        ));
    }
    if let Some(bw) = opts.bandwidth_mib_s {
        p.push(MigrateParam::ULLong(sys::VIR_MIGRATE_PARAM_BANDWIDTH, bw));
    }
    p
}

/// The `<disk>` elements of the running source's definition
/// (`source_xml`) whose guest device the destination's definition
/// (`dest_xml`) lacks: the volumes hot-plugged on the source, which the
/// destination agent's definition (built from the instance's spec) does
/// not have. Pure.
pub(crate) fn disks_to_carry<'a>(source_xml: &'a str, dest_xml: &str) -> Vec<&'a str> {
    let there: Vec<String> = parse_disks(dest_xml)
        .into_iter()
        .map(|d| d.target)
        .collect();
    disk_elements(source_xml)
        .into_iter()
        .filter(|elem| {
            parse_disks(elem)
                .first()
                .is_some_and(|d| !there.contains(&d.target))
        })
        .collect()
}

/// `dest_xml` with `disks` (from [`disks_to_carry`]) added after its last
/// disk, unchanged (same device, serial, source, limits and PCI address:
/// libvirt checks that the guest ABI is the same) but for the libvirt
/// secret each authenticates with: a secret's UUID differs between hosts,
/// `secrets` maps the source's UUIDs to the destination's. `Err` names a
/// secret UUID `secrets` lacks (or a definition without devices). Pure.
pub(crate) fn carry_disks(
    dest_xml: &str,
    disks: &[&str],
    secrets: &BTreeMap<String, String>,
) -> Result<String, String> {
    let mut carried = String::new();
    for elem in disks {
        let mut elem = (*elem).to_owned();
        if let Some(uuid) = disk_secret_uuid(&elem) {
            let there = secrets
                .get(&uuid)
                .ok_or_else(|| format!("no destination secret for {uuid}"))?;
            elem = elem.replace(&uuid, there);
        }
        carried.push('\n');
        carried.push_str(&elem);
    }
    let at = match dest_xml.rfind("</disk>") {
        Some(end) => end + "</disk>".len(),
        None => dest_xml
            .find("</devices>")
            .ok_or_else(|| "the destination's definition has no <devices>".to_owned())?,
    };
    Ok(format!("{}{carried}{}", &dest_xml[..at], &dest_xml[at..]))
}

/// The destination's secret UUID for each secret `disks` authenticate
/// with on the source (looked up by usage: the same Ceph user has a
/// secret of the same usage on every host, defined by its agent at
/// start-up). `Err` says which is missing where.
fn secret_map(
    source: &Conn,
    dest: &Conn,
    disks: &[&str],
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for uuid in disks.iter().filter_map(|d| disk_secret_uuid(d)) {
        if out.contains_key(&uuid) {
            continue;
        }
        let usage = source
            .secret_by_uuid(&uuid)
            .map_err(|e| format!("secret {uuid} here: {e}"))?
            .ok_or_else(|| format!("secret {uuid} not defined here"))?
            .usage_id()
            .map_err(|e| format!("secret {uuid} here: {e}"))?;
        let there = dest
            .ceph_secret(&usage)
            .map_err(|e| format!("secret '{usage}' on the destination: {e}"))?
            .ok_or_else(|| format!("secret '{usage}' not defined on the destination"))?
            .uuid_string()
            .map_err(|e| format!("secret '{usage}' on the destination: {e}"))?;
        out.insert(uuid, there);
    }
    Ok(out)
}

/// What to do with a running job now. Pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Steer {
    /// Let it run.
    Wait,
    /// Switch to post-copy.
    PostCopy,
    /// Abort it.
    Abort(AbortReason),
}

/// Steers a job that has run for `elapsed`: abort on request or after the
/// budget (unless in post-copy, which cannot be aborted), switch to
/// post-copy once the pre-copy budget is spent. Pure.
pub(crate) fn steer(
    opts: &MigrateOptions,
    elapsed: Duration,
    in_postcopy: bool,
    abort_requested: bool,
) -> Steer {
    if in_postcopy {
        return Steer::Wait;
    }
    if abort_requested {
        return Steer::Abort(AbortReason::Requested);
    }
    if elapsed >= opts.budget {
        return Steer::Abort(AbortReason::Budget);
    }
    match opts.postcopy_after {
        Some(after) if elapsed >= after => Steer::PostCopy,
        _ => Steer::Wait,
    }
}

/// How long after an abort libvirt refused it is tried again.
const ABORT_RETRY: Duration = Duration::from_secs(1);
/// How long after a refused switch to post-copy it is tried again.
const POSTCOPY_RETRY: Duration = Duration::from_secs(1);
/// How often a running job is steered.
const STEER_EVERY: Duration = Duration::from_millis(100);

impl LibvirtDriver {
    /// Migrates the running domain of `instance_id` live to another host
    /// (see the module doc). `abort` turning true aborts the job (before
    /// post-copy). On success the domain runs, persistent, on the
    /// destination and is gone from here.
    pub async fn migrate(
        &self,
        instance_id: &str,
        opts: &MigrateOptions,
        mut abort: watch::Receiver<bool>,
    ) -> Result<MigrationStats, MigrationError> {
        let started = Instant::now();
        let id = instance_id.to_owned();
        let dest_uri = opts.destination_uri.clone();
        // The destination's connection (for its definition and, at the end,
        // the completed job's numbers) and the source domain's checks.
        let (dest, dest_xml) = {
            let id = id.clone();
            self.blocking_raw(move |conn| -> Result<_, MigrationError> {
                let dom = crate::driver::owned(conn, &id)?;
                let state = crate::driver::state_of(&dom, &id)?;
                if !state.is_active() {
                    return Err(DriverError::WrongState {
                        instance_id: id,
                        op: "migrate",
                        needed: "running",
                        state,
                    }
                    .into());
                }
                let dest_err = |source| MigrationError::Destination {
                    instance_id: id.clone(),
                    uri: dest_uri.clone(),
                    source,
                };
                let dest = Conn::open(&dest_uri).map_err(dest_err)?;
                let dest_xml = match dest.lookup_uuid(&id).map_err(dest_err)? {
                    None => None,
                    Some(d) => {
                        if d.is_active().map_err(dest_err)? {
                            return Err(MigrationError::AlreadyThere(id));
                        }
                        if d.metadata_element(NUBO_METADATA_NS)
                            .map_err(dest_err)?
                            .is_none()
                        {
                            return Err(DriverError::Foreign {
                                instance_id: id.clone(),
                                name: d.name().unwrap_or_default(),
                            }
                            .into());
                        }
                        let defined = d.migratable_xml(true).map_err(dest_err)?;
                        // Volumes hot-plugged here move with the guest.
                        let source_xml = dom
                            .migratable_xml(false)
                            .map_err(crate::driver::dom_err(&id, "get XML"))?;
                        let carried = disks_to_carry(&source_xml, &defined);
                        let volumes_err = |detail| MigrationError::Volumes {
                            instance_id: id.clone(),
                            detail,
                        };
                        let secrets = secret_map(conn, &dest, &carried).map_err(volumes_err)?;
                        let xml =
                            carry_disks(&defined, &carried, &secrets).map_err(volumes_err)?;
                        if !carried.is_empty() {
                            tracing::info!(instance = %id, disks = carried.len(), "the destination's definition carries the volumes");
                        }
                        Some(xml)
                    }
                };
                Ok((Arc::new(dest), dest_xml))
            })
            .await??
        };
        let first = self
            .run_job(&id, opts, dest_xml.as_deref(), started, &mut abort)
            .await;
        let (result, postcopy, aborted, postcopy_unavailable) = match first {
            (Ok(Err(MigrationError::Failed { source, .. })), _, None)
                if opts.postcopy_after.is_some() && is_postcopy_unsupported(&source) =>
            {
                // QEMU cannot do post-copy here (no userfaultfd for its
                // user: `vm.unprivileged_userfaultfd = 0` and no access to
                // /dev/userfaultfd). Pre-copy with auto-converge only.
                tracing::warn!(instance = %id, error = %source, "post-copy unavailable on these hosts; migrating with pre-copy only");
                let pre_only = MigrateOptions {
                    postcopy_after: None,
                    ..opts.clone()
                };
                let (r, p, a) = self
                    .run_job(&id, &pre_only, dest_xml.as_deref(), started, &mut abort)
                    .await;
                (r, p, a, true)
            }
            (r, p, a) => (r, p, a, false),
        };
        let wall_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match result {
            Ok(Ok(())) => {
                let id = id.clone();
                let stats = tokio::task::spawn_blocking(move || {
                    dest.lookup_uuid(&id)
                        .ok()
                        .flatten()
                        .and_then(|d| d.job_stats(true).ok())
                })
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
                Ok(MigrationStats {
                    downtime_ms: stats.downtime_ms,
                    elapsed_ms: stats.elapsed_ms,
                    data_total_bytes: stats.data_total,
                    postcopy,
                    postcopy_unavailable,
                    wall_ms,
                })
            }
            Ok(Err(MigrationError::Failed { source, .. })) => match aborted {
                Some(reason) if source.is_aborted() || !postcopy => Err(MigrationError::Aborted {
                    instance_id: id,
                    reason,
                    source,
                }),
                _ => Err(MigrationError::Failed {
                    instance_id: id,
                    postcopy,
                    source,
                }),
            },
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs one `virDomainMigrateToURI3` job to its end, steering it
    /// ([`steer`]). Returns its result, whether it switched to post-copy
    /// and why it was aborted, if it was.
    async fn run_job(
        &self,
        id: &str,
        opts: &MigrateOptions,
        dest_xml: Option<&str>,
        started: Instant,
        abort: &mut watch::Receiver<bool>,
    ) -> (
        Result<Result<(), MigrationError>, DriverError>,
        bool,
        Option<AbortReason>,
    ) {
        let id = id.to_owned();
        let flags: c_uint = migrate_flags(opts);
        let params = migrate_params(opts, dest_xml);
        let job = {
            let (id, uri) = (id.clone(), opts.destination_uri.clone());
            self.blocking_raw(move |conn| -> Result<(), MigrationError> {
                let dom = crate::driver::owned(conn, &id)?;
                dom.migrate_to_uri3(&uri, &params, flags)
                    .map_err(|source| MigrationError::Failed {
                        instance_id: id.clone(),
                        postcopy: false,
                        source,
                    })
            })
        };
        tokio::pin!(job);
        let mut postcopy = false;
        let mut postcopy_refused: Option<Instant> = None;
        let mut aborted: Option<AbortReason> = None;
        let mut abort_accepted = false;
        let mut last_abort: Option<Instant> = None;
        let mut tick = tokio::time::interval(STEER_EVERY);
        let result = loop {
            tokio::select! {
                r = &mut job => break r,
                _ = tick.tick() => {}
                _ = abort.changed() => {}
            }
            // An abort libvirt did not accept (its state lock held by a
            // monitor command that blocks, e.g. a stream that cannot
            // connect) is tried again.
            if aborted.is_some()
                && (abort_accepted || last_abort.is_some_and(|t| t.elapsed() < ABORT_RETRY))
            {
                continue;
            }
            let requested = *abort.borrow();
            let step = match aborted {
                Some(reason) => Steer::Abort(reason),
                None => steer(opts, started.elapsed(), postcopy, requested),
            };
            match step {
                Steer::Wait => {}
                // Refused (a block migration still copies its disks: QEMU
                // takes the switch only once memory moves; or the job is
                // ending): pre-copy goes on, the switch is tried again.
                Steer::PostCopy
                    if postcopy_refused.is_some_and(|t| t.elapsed() < POSTCOPY_RETRY) => {}
                Steer::PostCopy => {
                    match self
                        .job_call(&id, "start post-copy", Dom::migrate_start_postcopy)
                        .await
                    {
                        Ok(()) => {
                            postcopy = true;
                            tracing::info!(instance = %id, "migration switched to post-copy");
                        }
                        Err(e) if postcopy_refused.is_some() => {
                            postcopy_refused = Some(Instant::now());
                            tracing::debug!(instance = %id, error = %e, "post-copy refused again");
                        }
                        Err(e) => {
                            postcopy_refused = Some(Instant::now());
                            tracing::warn!(instance = %id, error = %e, "could not switch to post-copy yet; trying again every second")
                        }
                    }
                }
                Steer::Abort(reason) => {
                    aborted = Some(reason);
                    last_abort = Some(Instant::now());
                    let r = self.job_call(&id, "abort job", Dom::abort_job).await;
                    abort_accepted = r.is_ok();
                    match r {
                        Ok(()) => {
                            tracing::info!(instance = %id, %reason, "migration abort requested")
                        }
                        Err(e) => {
                            tracing::warn!(instance = %id, %reason, error = %e, "libvirt did not accept the abort yet; trying again")
                        }
                    }
                }
            }
        };
        (result, postcopy, aborted)
    }
}

impl LibvirtDriver {
    /// Calls `f` on the nubo domain `id` (its job: post-copy, abort) on
    /// the blocking pool.
    async fn job_call(
        &self,
        id: &str,
        op: &'static str,
        f: fn(&Dom) -> Result<(), VirError>,
    ) -> Result<(), DriverError> {
        let i = id.to_owned();
        self.blocking_raw(move |conn| {
            let dom = crate::driver::owned(conn, &i)?;
            f(&dom).map_err(crate::driver::dom_err(&i, op))
        })
        .await?
    }
}

/// QEMU refused the post-copy capability (no userfaultfd). Pure.
fn is_postcopy_unsupported(e: &VirError) -> bool {
    e.message.contains("Postcopy is not supported")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk element as libvirt prints it.
    fn disk(target: &str, image: &str, secret: &str, slot: &str) -> String {
        format!(
            r#"<disk type="network" device="disk">
      <driver name="qemu" type="raw" cache="writeback" discard="unmap"/>
      <auth username="nubo-agent">
        <secret type="ceph" uuid="{secret}"/>
      </auth>
      <source protocol="rbd" name="{image}">
        <host name="10.0.0.9" port="6789"/>
      </source>
      <target dev="{target}" bus="virtio"/>
      <serial>{image}</serial>
      <address type="pci" domain="0x0000" bus="0x00" slot="{slot}" function="0x0"/>
    </disk>"#
        )
    }

    fn domain(disks: &[String]) -> String {
        format!(
            "<domain type=\"qemu\">\n  <devices>\n    {}\n    <interface type=\"ethernet\"/>\n  </devices>\n</domain>\n",
            disks.join("\n    ")
        )
    }

    #[test]
    fn the_volumes_of_the_source_are_carried_with_the_destination_secret() {
        let (src_secret, dst_secret) = (
            "11111111-0000-4000-8000-000000000001",
            "22222222-0000-4000-8000-000000000002",
        );
        let root_src = disk("vda", "nubo/root-a", src_secret, "0x04");
        let root_dst = disk("vda", "nubo/root-a", dst_secret, "0x04");
        let vol = disk("vdb", "nubo/volume-b", src_secret, "0x09");
        let source = domain(&[root_src, vol.clone()]);
        let dest = domain(std::slice::from_ref(&root_dst));
        let carried = disks_to_carry(&source, &dest);
        assert_eq!(
            carried,
            vec![vol.as_str()],
            "only the volume is missing there"
        );
        let secrets = BTreeMap::from([(src_secret.to_owned(), dst_secret.to_owned())]);
        let xml = carry_disks(&dest, &carried, &secrets).unwrap();
        let disks = parse_disks(&xml);
        let targets: Vec<&str> = disks.iter().map(|d| d.target.as_str()).collect();
        assert_eq!(targets, ["vda", "vdb"]);
        assert_eq!(disks[1].serial.as_deref(), Some("nubo/volume-b"));
        assert_eq!(disks[1].source.as_deref(), Some("nubo/volume-b"));
        let elems = disk_elements(&xml);
        assert_eq!(disk_secret_uuid(elems[1]).as_deref(), Some(dst_secret));
        assert!(elems[1].contains(r#"slot="0x09""#), "same PCI address");
        assert!(!xml.contains(src_secret), "no source secret left");
        // The rest of the destination's definition is untouched.
        assert!(xml.starts_with(&dest[..dest.find(&root_dst).unwrap() + root_dst.len()]));
        assert!(xml.ends_with("    <interface type=\"ethernet\"/>\n  </devices>\n</domain>\n"));
        // A secret without a counterpart there: a clear error.
        let err = carry_disks(&dest, &carried, &BTreeMap::new()).unwrap_err();
        assert!(err.contains(src_secret), "{err}");
    }

    #[test]
    fn nothing_is_carried_when_the_destination_has_every_disk() {
        let s = "11111111-0000-4000-8000-000000000001";
        let source = domain(&[disk("vda", "nubo/root-a", s, "0x04")]);
        let dest = domain(&[disk("vda", "nubo/root-a", "other", "0x04")]);
        assert!(disks_to_carry(&source, &dest).is_empty());
        assert_eq!(carry_disks(&dest, &[], &BTreeMap::new()).unwrap(), dest);
        // A destination without disks: the carried ones go into <devices>.
        let bare = domain(&[]);
        let vol = disk("vdb", "nubo/volume-b", s, "0x09");
        let secrets = BTreeMap::from([(s.to_owned(), "d".to_owned())]);
        let xml = carry_disks(&bare, &[vol.as_str()], &secrets).unwrap();
        assert_eq!(parse_disks(&xml).len(), 1);
        assert!(xml.find("<disk ").unwrap() < xml.find("</devices>").unwrap());
    }

    fn opts() -> MigrateOptions {
        MigrateOptions {
            destination_uri: "qemu+tcp://10.0.0.2/system".into(),
            migration_uri: Some("tcp://10.0.0.2".into()),
            block: false,
            tls: false,
            postcopy_after: Some(Duration::from_secs(10)),
            budget: Duration::from_secs(60),
            bandwidth_mib_s: None,
        }
    }

    #[test]
    fn flags_follow_the_options() {
        let base = sys::VIR_MIGRATE_LIVE
            | sys::VIR_MIGRATE_PEER2PEER
            | sys::VIR_MIGRATE_PERSIST_DEST
            | sys::VIR_MIGRATE_UNDEFINE_SOURCE
            | sys::VIR_MIGRATE_AUTO_CONVERGE
            | sys::VIR_MIGRATE_ABORT_ON_ERROR;
        let mut o = opts();
        assert_eq!(migrate_flags(&o), base | sys::VIR_MIGRATE_POSTCOPY);
        o.postcopy_after = None;
        assert_eq!(migrate_flags(&o), base);
        o.block = true;
        o.tls = true;
        assert_eq!(
            migrate_flags(&o),
            base | sys::VIR_MIGRATE_NON_SHARED_INC | sys::VIR_MIGRATE_TLS
        );
        // Never the full-copy or tunnelled variants.
        assert_eq!(migrate_flags(&o) & sys::VIR_MIGRATE_NON_SHARED_DISK, 0);
        assert_eq!(migrate_flags(&o) & sys::VIR_MIGRATE_TUNNELLED, 0);
    }

    #[test]
    fn params_carry_the_stream_uri_the_destination_xml_and_the_cap() {
        let mut o = opts();
        assert_eq!(
            migrate_params(&o, None),
            vec![MigrateParam::Str(
                sys::VIR_MIGRATE_PARAM_URI,
                "tcp://10.0.0.2".into()
            )]
        );
        o.migration_uri = None;
        o.bandwidth_mib_s = Some(100);
        assert_eq!(
            migrate_params(&o, Some("<domain/>")),
            vec![
                MigrateParam::Str(sys::VIR_MIGRATE_PARAM_DEST_XML, "<domain/>".into()),
                MigrateParam::ULLong(sys::VIR_MIGRATE_PARAM_BANDWIDTH, 100),
            ]
        );
    }

    #[test]
    fn steering_switches_to_postcopy_then_never_aborts() {
        let o = opts();
        let s = Duration::from_secs;
        assert_eq!(steer(&o, s(1), false, false), Steer::Wait);
        assert_eq!(steer(&o, s(10), false, false), Steer::PostCopy);
        // In post-copy the guest runs on the destination: no abort, even
        // when asked or past the budget.
        assert_eq!(steer(&o, s(11), true, true), Steer::Wait);
        assert_eq!(steer(&o, s(61), true, false), Steer::Wait);
        // Before it: abort on request or budget.
        assert_eq!(
            steer(&o, s(1), false, true),
            Steer::Abort(AbortReason::Requested)
        );
        let mut pre_only = o.clone();
        pre_only.postcopy_after = None;
        assert_eq!(steer(&pre_only, s(59), false, false), Steer::Wait);
        assert_eq!(
            steer(&pre_only, s(60), false, false),
            Steer::Abort(AbortReason::Budget)
        );
    }

    #[test]
    fn recognises_qemu_without_postcopy() {
        let e = |message: &str| VirError {
            code: 1,
            domain: 10,
            message: message.into(),
        };
        assert!(is_postcopy_unsupported(&e(
            "internal error: unable to execute QEMU command 'migrate-set-capabilities': Postcopy is not supported"
        )));
        assert!(!is_postcopy_unsupported(&e(
            "operation aborted: migration out: canceled by client"
        )));
    }

    #[test]
    fn only_a_postcopy_failure_loses_the_source() {
        let e = |postcopy| MigrationError::Failed {
            instance_id: "x".into(),
            postcopy,
            source: VirError {
                code: 1,
                domain: 10,
                message: "boom".into(),
            },
        };
        assert!(e(false).guest_on_source());
        assert!(!e(true).guest_on_source());
        assert!(e(true).to_string().contains("in post-copy"));
    }
}
