//! An in-memory hypervisor whose "VMs" survive the agent: every change is
//! persisted to `<state-dir>/fake-hypervisor.json` (temp file + rename), so a
//! `kill -9`'d agent finds its instances again as it would real VMs.
//!
//! Each record counts its boots and keeps its creation time: tests compare
//! them across agent restarts to prove a restart touched nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use nubo_common::model::{self, Timestamp};
use nubo_common::InstanceId;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{AttachedVolume, HypervisorError, ObservedInstance, ObservedPower, VolumeToAttach};
use crate::state::desired::{DesiredInstance, DesiredPort};
use nubo_common::model::PowerState;
use nubo_common::model::Qos;
use nubo_common::VolumeId;

/// File name of the persisted state inside the state directory.
pub const STATE_FILE: &str = "fake-hypervisor.json";

/// One fake instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FakeRecord {
    /// Display name at creation.
    pub name: String,
    /// Power state.
    pub power: ObservedPower,
    /// Number of boots (create-and-boot, start, reboot).
    pub boot_count: u64,
    /// Creation time.
    pub created_at: Timestamp,
    /// Created by nubo (false for instances planted by tests to stand for
    /// VMs someone else started on the host).
    pub managed: bool,
    /// Attached volumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<AttachedVolume>,
    /// The taps of its ports (NIC order), named as a real driver's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taps: Vec<String>,
}

/// The persisted state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FakeState {
    /// Instances by id.
    pub instances: BTreeMap<InstanceId, FakeRecord>,
}

impl FakeState {
    /// Reads a state file (an absent file is an empty state).
    pub fn load(path: &Path) -> Result<Self, HypervisorError> {
        super::state_file::load(path)
    }
}

/// The fake driver.
#[derive(Debug)]
pub struct FakeHypervisor {
    path: PathBuf,
    boot_time: Duration,
    state: Mutex<FakeState>,
}

impl FakeHypervisor {
    /// Opens (or starts) the state kept in `state_dir`; every boot takes
    /// `boot_time`.
    pub fn open(state_dir: &Path, boot_time: Duration) -> Result<Self, HypervisorError> {
        std::fs::create_dir_all(state_dir).map_err(|source| HypervisorError::State {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join(STATE_FILE);
        let state = FakeState::load(&path)?;
        Ok(Self {
            path,
            boot_time,
            state: Mutex::new(state),
        })
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A copy of the current records.
    pub async fn snapshot(&self) -> FakeState {
        self.state.lock().await.clone()
    }

    /// Plants an instance nubo did not create (stands for a VM started by
    /// hand on the host); the agent must leave it alone.
    pub async fn insert_foreign(&self, id: InstanceId) -> Result<(), HypervisorError> {
        self.mutate(id, |st| {
            st.instances.insert(
                id,
                FakeRecord {
                    name: "foreign".into(),
                    power: ObservedPower::Running,
                    boot_count: 1,
                    created_at: model::now(),
                    managed: false,
                    volumes: Vec::new(),
                    taps: Vec::new(),
                },
            );
            Ok(())
        })
        .await
    }

    async fn boot_delay(&self) {
        if !self.boot_time.is_zero() {
            tokio::time::sleep(self.boot_time).await;
        }
    }

    /// Applies `f` under the lock and persists the result atomically.
    async fn mutate(
        &self,
        id: InstanceId,
        f: impl FnOnce(&mut FakeState) -> Result<(), HypervisorError>,
    ) -> Result<(), HypervisorError> {
        let mut st = self.state.lock().await;
        let mut next = st.clone();
        f(&mut next)?;
        self.persist(&next).await?;
        *st = next;
        tracing::trace!(instance = %id, "fake hypervisor state persisted");
        Ok(())
    }

    async fn persist(&self, st: &FakeState) -> Result<(), HypervisorError> {
        super::state_file::save(&self.path, st).await
    }

    fn managed(st: &mut FakeState, id: InstanceId) -> Result<&mut FakeRecord, HypervisorError> {
        let rec = st
            .instances
            .get_mut(&id)
            .ok_or(HypervisorError::NotFound(id))?;
        if !rec.managed {
            return Err(HypervisorError::Foreign(id));
        }
        Ok(rec)
    }
}

#[async_trait]
impl super::Hypervisor for FakeHypervisor {
    fn driver(&self) -> &'static str {
        "fake"
    }

    async fn list(&self) -> Result<Vec<ObservedInstance>, HypervisorError> {
        let st = self.state.lock().await;
        Ok(st
            .instances
            .iter()
            .map(|(id, r)| ObservedInstance {
                id: *id,
                power: r.power,
                boot_count: r.boot_count,
                created_at: r.created_at,
                managed: r.managed,
            })
            .collect())
    }

    /// Synthetic counters (see [`super::stats::synthetic`]) of every
    /// running managed instance, rising with its age: enough to carry
    /// hundreds of fake VMs through the metrics pipeline.
    async fn stats(&self) -> Result<Vec<super::InstanceStats>, HypervisorError> {
        let st = self.state.lock().await;
        let now = model::now();
        Ok(st
            .instances
            .iter()
            .filter(|(_, r)| r.managed && r.power == ObservedPower::Running)
            .map(|(id, r)| {
                let seed = u64::from_str_radix(&id.short_hex(8), 16).unwrap_or(0);
                let uptime_ms = u64::try_from((now - r.created_at).num_milliseconds()).unwrap_or(0);
                super::stats::synthetic(*id, seed, uptime_ms, r.taps.first().cloned())
            })
            .collect())
    }

    async fn create(&self, spec: &DesiredInstance) -> Result<(), HypervisorError> {
        let id = spec.id();
        if self.state.lock().await.instances.contains_key(&id) {
            return Err(HypervisorError::AlreadyExists(id));
        }
        let boot = spec.power() == PowerState::Running;
        if boot {
            self.boot_delay().await;
        }
        let name = spec.spec.name.clone();
        let taps = spec.ports.iter().map(|p| p.tap.clone()).collect();
        self.mutate(id, |st| {
            if st.instances.contains_key(&id) {
                return Err(HypervisorError::AlreadyExists(id));
            }
            st.instances.insert(
                id,
                FakeRecord {
                    name,
                    power: if boot {
                        ObservedPower::Running
                    } else {
                        ObservedPower::Stopped
                    },
                    boot_count: u64::from(boot),
                    created_at: model::now(),
                    managed: true,
                    volumes: Vec::new(),
                    taps,
                },
            );
            Ok(())
        })
        .await
    }

    async fn start(&self, id: InstanceId) -> Result<(), HypervisorError> {
        self.boot_delay().await;
        self.mutate(id, |st| {
            let r = Self::managed(st, id)?;
            if r.power != ObservedPower::Running {
                r.power = ObservedPower::Running;
                r.boot_count += 1;
            }
            Ok(())
        })
        .await
    }

    async fn stop(&self, id: InstanceId) -> Result<(), HypervisorError> {
        self.mutate(id, |st| {
            Self::managed(st, id)?.power = ObservedPower::Stopped;
            Ok(())
        })
        .await
    }

    async fn reboot(&self, id: InstanceId) -> Result<(), HypervisorError> {
        self.boot_delay().await;
        self.mutate(id, |st| {
            let r = Self::managed(st, id)?;
            r.power = ObservedPower::Running;
            r.boot_count += 1;
            Ok(())
        })
        .await
    }

    async fn destroy(&self, id: InstanceId) -> Result<(), HypervisorError> {
        self.mutate(id, |st| {
            Self::managed(st, id)?;
            st.instances.remove(&id);
            Ok(())
        })
        .await
    }

    async fn pause(&self, id: InstanceId) -> Result<(), HypervisorError> {
        self.mutate(id, |st| {
            let r = Self::managed(st, id)?;
            match r.power {
                ObservedPower::Running | ObservedPower::Paused => {
                    r.power = ObservedPower::Paused;
                    Ok(())
                }
                ObservedPower::Stopped => Err(HypervisorError::Backend(format!(
                    "cannot pause {id}: it is shut off"
                ))),
            }
        })
        .await
    }

    async fn resume(&self, id: InstanceId) -> Result<(), HypervisorError> {
        self.mutate(id, |st| {
            let r = Self::managed(st, id)?;
            match r.power {
                ObservedPower::Running | ObservedPower::Paused => {
                    r.power = ObservedPower::Running;
                    Ok(())
                }
                ObservedPower::Stopped => Err(HypervisorError::Backend(format!(
                    "cannot resume {id}: it is shut off"
                ))),
            }
        })
        .await
    }

    async fn volumes(&self, id: InstanceId) -> Result<Vec<AttachedVolume>, HypervisorError> {
        let mut st = self.state.lock().await;
        Ok(Self::managed(&mut st, id)?.volumes.clone())
    }

    async fn attach_volume(
        &self,
        id: InstanceId,
        volume: &VolumeToAttach,
    ) -> Result<(), HypervisorError> {
        self.mutate(id, |st| {
            let r = Self::managed(st, id)?;
            if r.volumes.iter().any(|v| v.volume == volume.volume) {
                return Ok(());
            }
            if r.volumes.iter().any(|v| v.target == volume.target) {
                return Err(HypervisorError::Backend(format!(
                    "{id}: device {} is in use",
                    volume.target
                )));
            }
            r.volumes.push(AttachedVolume {
                volume: volume.volume,
                target: volume.target.clone(),
                qos: volume.qos,
            });
            Ok(())
        })
        .await
    }

    async fn detach_volume(&self, id: InstanceId, volume: VolumeId) -> Result<(), HypervisorError> {
        self.mutate(id, |st| {
            Self::managed(st, id)?
                .volumes
                .retain(|v| v.volume != volume);
            Ok(())
        })
        .await
    }

    async fn nics(&self, id: InstanceId) -> Result<Vec<String>, HypervisorError> {
        let mut st = self.state.lock().await;
        Ok(Self::managed(&mut st, id)?.taps.clone())
    }

    async fn attach_nic(&self, id: InstanceId, port: &DesiredPort) -> Result<(), HypervisorError> {
        self.mutate(id, |st| {
            let r = Self::managed(st, id)?;
            if !r.taps.contains(&port.tap) {
                r.taps.push(port.tap.clone());
            }
            Ok(())
        })
        .await
    }

    async fn detach_nic(&self, id: InstanceId, tap: &str) -> Result<(), HypervisorError> {
        self.mutate(id, |st| {
            Self::managed(st, id)?.taps.retain(|t| t != tap);
            Ok(())
        })
        .await
    }

    async fn set_disk_qos(
        &self,
        id: InstanceId,
        volume: VolumeId,
        qos: Qos,
    ) -> Result<(), HypervisorError> {
        self.mutate(id, |st| {
            let r = Self::managed(st, id)?;
            let v = r
                .volumes
                .iter_mut()
                .find(|v| v.volume == volume)
                .ok_or_else(|| {
                    HypervisorError::Backend(format!("{id}: volume {volume} is not attached"))
                })?;
            v.qos = qos;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::hypervisor::Hypervisor;
    use crate::testutil::*;

    #[tokio::test]
    async fn state_survives_reopen_and_counts_boots() {
        let dir = tempfile::tempdir().unwrap();
        let hv = FakeHypervisor::open(dir.path(), Duration::ZERO).unwrap();
        let d = desired_instance(PowerState::Running);
        hv.create(&d).await.unwrap();
        assert!(matches!(
            hv.create(&d).await,
            Err(HypervisorError::AlreadyExists(_))
        ));
        hv.reboot(d.id()).await.unwrap();
        hv.stop(d.id()).await.unwrap();
        let before = hv.snapshot().await;
        assert_eq!(before.instances[&d.id()].boot_count, 2);

        let again = FakeHypervisor::open(dir.path(), Duration::ZERO).unwrap();
        assert_eq!(again.snapshot().await, before);
        again.start(d.id()).await.unwrap();
        let l = again.list().await.unwrap();
        assert_eq!(l[0].power, ObservedPower::Running);
        assert_eq!(l[0].boot_count, 3);
        again.destroy(d.id()).await.unwrap();
        assert!(again.list().await.unwrap().is_empty());
        assert!(!dir.path().join("fake-hypervisor.json.tmp").exists());
    }

    #[tokio::test]
    async fn foreign_instances_cannot_be_touched_and_stopped_create_does_not_boot() {
        let dir = tempfile::tempdir().unwrap();
        let hv = FakeHypervisor::open(dir.path(), Duration::ZERO).unwrap();
        let f = InstanceId::new_random();
        hv.insert_foreign(f).await.unwrap();
        assert!(matches!(
            hv.destroy(f).await,
            Err(HypervisorError::Foreign(_))
        ));
        let d = desired_instance(PowerState::Stopped);
        hv.create(&d).await.unwrap();
        let st = hv.snapshot().await;
        assert_eq!(st.instances[&d.id()].power, ObservedPower::Stopped);
        assert_eq!(st.instances[&d.id()].boot_count, 0);
    }

    #[tokio::test]
    async fn pause_and_resume_keep_the_boot_count_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let hv = FakeHypervisor::open(dir.path(), Duration::ZERO).unwrap();
        let d = desired_instance(PowerState::Running);
        hv.create(&d).await.unwrap();
        hv.pause(d.id()).await.unwrap();
        hv.pause(d.id()).await.unwrap();
        let again = FakeHypervisor::open(dir.path(), Duration::ZERO).unwrap();
        let st = again.snapshot().await;
        assert_eq!(st.instances[&d.id()].power, ObservedPower::Paused);
        again.resume(d.id()).await.unwrap();
        again.resume(d.id()).await.unwrap();
        let st = again.snapshot().await;
        assert_eq!(st.instances[&d.id()].power, ObservedPower::Running);
        assert_eq!(st.instances[&d.id()].boot_count, 1, "resume is not a boot");
        again.stop(d.id()).await.unwrap();
        assert!(again.pause(d.id()).await.is_err());
        assert!(again.resume(d.id()).await.is_err());
        let f = InstanceId::new_random();
        again.insert_foreign(f).await.unwrap();
        assert!(matches!(
            again.pause(f).await,
            Err(HypervisorError::Foreign(_))
        ));
    }

    #[tokio::test]
    async fn volumes_attach_retune_detach_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let hv = FakeHypervisor::open(dir.path(), Duration::ZERO).unwrap();
        let d = desired_instance(PowerState::Running);
        hv.create(&d).await.unwrap();
        let vol: VolumeId = "00000000-0000-4000-8000-000000000001".parse().unwrap();
        let a = VolumeToAttach {
            volume: vol,
            target: "vdb".into(),
            qos: Qos::default(),
            read_only: false,
        };
        hv.attach_volume(d.id(), &a).await.unwrap();
        hv.attach_volume(d.id(), &a).await.unwrap();
        let qos = Qos {
            write_iops_sec: Some(200),
            ..Qos::default()
        };
        hv.set_disk_qos(d.id(), vol, qos).await.unwrap();
        let hv = FakeHypervisor::open(dir.path(), Duration::ZERO).unwrap();
        let v = hv.volumes(d.id()).await.unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].target.as_str(), v[0].qos), ("vdb", qos));
        hv.detach_volume(d.id(), vol).await.unwrap();
        assert!(hv.volumes(d.id()).await.unwrap().is_empty());
    }

    #[test]
    fn corrupt_state_is_an_error_not_an_empty_hypervisor() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{oops").unwrap();
        assert!(FakeHypervisor::open(dir.path(), Duration::ZERO).is_err());
    }
}
