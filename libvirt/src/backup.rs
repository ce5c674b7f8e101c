//! Point-in-time copies of a running domain's disk: a push-mode backup
//! job (`virDomainBackupBegin`). QEMU copies the disk into a new file
//! while the guest runs; a block the guest overwrites meanwhile is copied
//! first (copy-before-write), so the file holds the disk as it was when
//! the job started: crash-consistent, like a power cut, the guest never
//! paused. The copy is self-contained (the whole backing chain read into
//! it), in raw or qcow2.

use std::path::Path;
use std::time::Duration;

use crate::driver::{dom_err, owned};
use crate::escape::esc;
use crate::{DriverError, LibvirtDriver};

/// How often a running backup job is looked at.
const POLL: Duration = Duration::from_millis(200);

/// The `<domainbackup>` XML copying disk `target` (`vda`) into `dest` in
/// `format`, and no other of `all_targets`. Pure.
pub fn backup_xml(target: &str, dest: &Path, format: &str, all_targets: &[String]) -> String {
    let mut xml = String::from("<domainbackup mode='push'>\n  <disks>\n");
    xml.push_str(&format!(
        "    <disk name='{}' backup='yes' type='file'>\n      <target file='{}'/>\n      <driver type='{}'/>\n    </disk>\n",
        esc(target),
        esc(&dest.to_string_lossy()),
        esc(format)
    ));
    for t in all_targets.iter().filter(|t| *t != target) {
        xml.push_str(&format!("    <disk name='{}' backup='no'/>\n", esc(t)));
    }
    xml.push_str("  </disks>\n</domainbackup>\n");
    xml
}

impl LibvirtDriver {
    /// Copies disk `target` of running domain `instance_id` into `dest`
    /// (which must not exist; libvirt creates it) in `format` (`raw` or
    /// `qcow2`) with a push-mode backup job, and waits for the job to end.
    pub async fn backup_disk(
        &self,
        instance_id: &str,
        target: &str,
        dest: &Path,
        format: &str,
    ) -> Result<(), DriverError> {
        let id = instance_id.to_owned();
        let disks = self.disks(&id).await?;
        let targets: Vec<String> = disks.into_iter().map(|d| d.target).collect();
        let xml = backup_xml(target, dest, format, &targets);
        self.blocking(move |conn, _| {
            let dom = owned(conn, &id)?;
            dom.backup_begin(&xml)
                .map_err(dom_err(&id, "begin backup"))?;
            loop {
                std::thread::sleep(POLL);
                let (running, _) = dom
                    .job_outcome(false)
                    .map_err(dom_err(&id, "read backup job"))?;
                if running == 0 {
                    break;
                }
            }
            let (kind, message) = dom
                .job_outcome(true)
                .map_err(dom_err(&id, "read completed backup job"))?;
            // 3 = VIR_DOMAIN_JOB_COMPLETED.
            if kind == 3 {
                Ok(())
            } else {
                Err(DriverError::Domain {
                    instance_id: id.clone(),
                    op: "backup",
                    source: crate::VirError {
                        code: -1,
                        domain: -1,
                        message: message
                            .unwrap_or_else(|| format!("backup job ended with job type {kind}")),
                    },
                })
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_up_the_root_disk_only() {
        let xml = backup_xml(
            "vda",
            Path::new("/var/lib/nubo/captures/x.part"),
            "qcow2",
            &["vda".to_string(), "vdb".to_string()],
        );
        assert_eq!(
            xml,
            "<domainbackup mode='push'>\n  <disks>\n    <disk name='vda' backup='yes' type='file'>\n      <target file='/var/lib/nubo/captures/x.part'/>\n      <driver type='qcow2'/>\n    </disk>\n    <disk name='vdb' backup='no'/>\n  </disks>\n</domainbackup>\n"
        );
    }
}
