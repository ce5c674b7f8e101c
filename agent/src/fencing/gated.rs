//! Wrappers that keep compute from booting anything while the node is
//! fenced: the [`GatedHypervisor`] (refuses boots and resumes) and the
//! [`GatedSubsystem`] (does not run at all unless the phase is normal).

use std::sync::Arc;

use async_trait::async_trait;
use nubo_common::InstanceId;

use super::gate::FenceGate;
use super::rules::Phase;
use crate::compute::hypervisor::{Hypervisor, HypervisorError, ObservedInstance};
use crate::reconciler::{Subsystem, SubsystemError};
use crate::state::desired::{DesiredInstance, DesiredNode};

/// A [`Hypervisor`] that refuses to create, start, reboot or resume anything
/// while the node is fenced (stop, destroy, pause and list pass through).
/// Compute drives it, so even an action planned just before the fence
/// cannot boot an instance after it.
pub struct GatedHypervisor {
    inner: Arc<dyn Hypervisor>,
    gate: Arc<FenceGate>,
}

impl GatedHypervisor {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Hypervisor>, gate: Arc<FenceGate>) -> Self {
        Self { inner, gate }
    }

    fn check(&self, id: InstanceId) -> Result<(), HypervisorError> {
        if self.gate.boots_allowed() {
            Ok(())
        } else {
            Err(HypervisorError::Fenced(id))
        }
    }
}

#[async_trait]
impl Hypervisor for GatedHypervisor {
    fn driver(&self) -> &'static str {
        self.inner.driver()
    }
    async fn list(&self) -> Result<Vec<ObservedInstance>, HypervisorError> {
        self.inner.list().await
    }
    async fn stats(
        &self,
    ) -> Result<Vec<crate::compute::hypervisor::InstanceStats>, HypervisorError> {
        self.inner.stats().await
    }
    async fn create(&self, spec: &DesiredInstance) -> Result<(), HypervisorError> {
        self.check(spec.id())?;
        self.inner.create(spec).await
    }
    async fn start(&self, id: InstanceId) -> Result<(), HypervisorError> {
        self.check(id)?;
        self.inner.start(id).await
    }
    async fn stop(&self, id: InstanceId) -> Result<(), HypervisorError> {
        self.inner.stop(id).await
    }
    async fn reboot(&self, id: InstanceId) -> Result<(), HypervisorError> {
        self.check(id)?;
        self.inner.reboot(id).await
    }
    async fn destroy(&self, id: InstanceId) -> Result<(), HypervisorError> {
        self.inner.destroy(id).await
    }
    async fn pause(&self, id: InstanceId) -> Result<(), HypervisorError> {
        self.inner.pause(id).await
    }
    async fn resume(&self, id: InstanceId) -> Result<(), HypervisorError> {
        self.check(id)?;
        self.inner.resume(id).await
    }
    // Migrations: forwarded (the migrations subsystem is gated like
    // compute; preparing starts nothing, migrating away boots nothing here).
    async fn prepare_incoming(&self, spec: &DesiredInstance) -> Result<(), HypervisorError> {
        self.inner.prepare_incoming(spec).await
    }
    async fn migrate_out(
        &self,
        id: InstanceId,
        request: &crate::compute::hypervisor::MigrationRequest,
        abort: tokio::sync::watch::Receiver<bool>,
    ) -> Result<crate::compute::hypervisor::MigrationDone, HypervisorError> {
        self.inner.migrate_out(id, request, abort).await
    }
    async fn arriving(&self) -> Result<Vec<InstanceId>, HypervisorError> {
        self.inner.arriving().await
    }
    async fn settle_arrived(&self, id: InstanceId) -> Result<(), HypervisorError> {
        self.inner.settle_arrived(id).await
    }
    // Volumes: forwarded as they are (compute, their only caller, does not
    // run while the node is fenced).
    async fn volumes(
        &self,
        id: InstanceId,
    ) -> Result<Vec<crate::compute::hypervisor::AttachedVolume>, HypervisorError> {
        self.inner.volumes(id).await
    }
    async fn attach_volume(
        &self,
        id: InstanceId,
        volume: &crate::compute::hypervisor::VolumeToAttach,
    ) -> Result<(), HypervisorError> {
        self.inner.attach_volume(id, volume).await
    }
    async fn detach_volume(
        &self,
        id: InstanceId,
        volume: nubo_common::VolumeId,
    ) -> Result<(), HypervisorError> {
        self.inner.detach_volume(id, volume).await
    }
    async fn set_disk_qos(
        &self,
        id: InstanceId,
        volume: nubo_common::VolumeId,
        qos: nubo_common::model::Qos,
    ) -> Result<(), HypervisorError> {
        self.inner.set_disk_qos(id, volume, qos).await
    }
    // Captures: forwarded (a copy boots nothing; the captures subsystem is
    // gated like compute).
    async fn capture_root(
        &self,
        id: InstanceId,
        dest: &std::path::Path,
        format: &str,
    ) -> Result<u64, HypervisorError> {
        self.inner.capture_root(id, dest, format).await
    }
    // NICs: forwarded as they are (the NICs subsystem is gated like compute).
    async fn nics(&self, id: InstanceId) -> Result<Vec<String>, HypervisorError> {
        self.inner.nics(id).await
    }
    async fn attach_nic(
        &self,
        id: InstanceId,
        port: &crate::state::desired::DesiredPort,
    ) -> Result<(), HypervisorError> {
        self.inner.attach_nic(id, port).await
    }
    async fn detach_nic(&self, id: InstanceId, tap: &str) -> Result<(), HypervisorError> {
        self.inner.detach_nic(id, tap).await
    }
}

/// A [`Subsystem`] that only runs while the node is not fenced or
/// recovering. A skipped pass counts as a failure, so the reconcile loop
/// retries it shortly after the fence is lifted.
pub struct GatedSubsystem<S> {
    inner: S,
    gate: Arc<FenceGate>,
}

impl<S> GatedSubsystem<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, gate: Arc<FenceGate>) -> Self {
        Self { inner, gate }
    }
}

#[async_trait]
impl<S: Subsystem> Subsystem for GatedSubsystem<S> {
    type Observed = S::Observed;
    type Plan = S::Plan;

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    /// Observes only while the phase is normal: a pass started while the
    /// node is fenced, held or recovering fails here, before any plan.
    async fn observe(&mut self, desired: &DesiredNode) -> Result<S::Observed, SubsystemError> {
        match self.gate.poll() {
            Phase::Normal => self.inner.observe(desired).await,
            Phase::Fenced { .. } => Err(SubsystemError::Other(
                "node is self-fenced (no etcd lease); not reconciling".into(),
            )),
            Phase::Recovering { .. } => Err(SubsystemError::Other(
                "returning from a self-fence; waiting for the fresh etcd list".into(),
            )),
            Phase::Held { .. } => Err(SubsystemError::Other(
                "etcd unreachable here and for every peer; holding (instances keep running)".into(),
            )),
        }
    }

    fn plan(&self, desired: &DesiredNode, observed: &S::Observed) -> S::Plan {
        self.inner.plan(desired, observed)
    }

    async fn apply(
        &mut self,
        desired: &DesiredNode,
        plan: S::Plan,
    ) -> Result<usize, SubsystemError> {
        self.inner.apply(desired, plan).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::hypervisor::{FakeHypervisor, ObservedPower};
    use crate::fencing::rules::{Clock, LeaseAck, ManualClock};
    use crate::reconciler::Reconcile;
    use crate::testutil::*;
    use std::time::{Duration, Instant};
    use tokio::sync::watch;

    #[tokio::test]
    async fn the_gated_driver_refuses_boots_while_fenced_and_allows_stops() {
        let clock = Arc::new(ManualClock::new(Instant::now()));
        let (tx, rx) = watch::channel(None);
        let gate = FenceGate::new(node_name("n1"), Duration::from_secs(4), clock.clone(), rx);
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeHypervisor::open(dir.path(), Duration::ZERO).unwrap());
        let hv = GatedHypervisor::new(fake.clone(), gate.clone());
        let mut w = World::new();
        let n = node_name("n1");
        w.node(&n, "10.0.0.1");
        let net = w.network(7, 0);
        let (a, _) = w.instance_on(&n, net, &[]);
        let (b, _) = w.instance_on(&n, net, &[]);
        let d = crate::state::desired::build(&w.cache, &n, 1500);
        hv.create(&d.instances[&a]).await.unwrap();

        clock.advance(Duration::from_secs(5));
        assert!(matches!(
            hv.create(&d.instances[&b]).await,
            Err(HypervisorError::Fenced(_))
        ));
        assert!(matches!(
            hv.reboot(a).await,
            Err(HypervisorError::Fenced(_))
        ));
        hv.pause(a).await.unwrap();
        assert!(matches!(
            hv.resume(a).await,
            Err(HypervisorError::Fenced(_))
        ));
        assert_eq!(gate.counters().fences, 1);

        // Acknowledged keep-alive sent after the fence: boots allowed for the
        // recovery, compute still held until recovered().
        tx.send_replace(Some(LeaseAck {
            sent: clock.now(),
            lease: 9,
        }));
        assert!(gate.boots_allowed());
        assert!(!gate.compute_allowed());
        hv.resume(a).await.unwrap();
        gate.recovered();
        assert!(gate.compute_allowed());
        let st = fake.snapshot().await;
        assert_eq!(st.instances[&a].power, ObservedPower::Running);
        assert_eq!(st.instances[&a].boot_count, 1);
    }

    struct CountingSubsystem(usize);

    #[async_trait]
    impl Subsystem for CountingSubsystem {
        type Observed = ();
        type Plan = Vec<()>;
        fn name(&self) -> &'static str {
            "counting"
        }
        async fn observe(&mut self, _: &DesiredNode) -> Result<(), SubsystemError> {
            self.0 += 1;
            Ok(())
        }
        fn plan(&self, _: &DesiredNode, _: &()) -> Vec<()> {
            Vec::new()
        }
        async fn apply(&mut self, _: &DesiredNode, _: Vec<()>) -> Result<usize, SubsystemError> {
            Ok(0)
        }
    }

    #[tokio::test]
    async fn a_gated_subsystem_does_not_run_while_fenced() {
        let clock = Arc::new(ManualClock::new(Instant::now()));
        let (_tx, rx) = watch::channel(None);
        let gate = FenceGate::new(node_name("n1"), Duration::from_secs(4), clock.clone(), rx);
        let mut s = GatedSubsystem::new(CountingSubsystem(0), gate);
        let d = DesiredNode::default();
        s.reconcile(&d).await.unwrap();
        clock.advance(Duration::from_secs(5));
        assert!(s.reconcile(&d).await.is_err());
        assert_eq!(s.inner.0, 1);
    }
}
