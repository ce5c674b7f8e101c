//! Shared helpers for the agent's integration tests: write the objects the
//! coordinator would write, run agents, wait for conditions.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use nubo_agent::compute::hypervisor::fake::FakeState;
use nubo_agent::{AgentConfig, DriverKind, FakeHypervisor};
use nubo_common::keys;
use nubo_common::model::{
    self, Assignment, DiskFormat, Image, ImageStatus, Instance, InstanceStatus, Network, Port,
    PowerState, Resources,
};
use nubo_common::{FlavorName, ImageId, InstanceId, NetworkId, NodeName, PortId, ProjectId};
use nubo_netid::MacAddr;

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Writes a spec as the coordinator does: the spec and the copy its node
/// reads, in one transaction (one revision).
pub async fn put_spec(c: &Client, inst: &model::Instance) {
    use etcd_client::{Txn, TxnOp};
    let mut ops = vec![TxnOp::put(
        keys::instance(&inst.id),
        model::encode(inst),
        None,
    )];
    if let Some(n) = &inst.node {
        ops.push(TxnOp::put(
            keys::node_spec(n, &inst.id),
            model::encode(inst),
            None,
        ));
    }
    c.kv_client().txn(Txn::new().and_then(ops)).await.unwrap();
}

/// Reads a spec (panics without one).
pub async fn get_spec(c: &Client, id: &InstanceId) -> model::Instance {
    let r = c.kv_client().get(keys::instance(id), None).await.unwrap();
    model::decode("instance", r.kvs()[0].value()).unwrap()
}

pub async fn put<T: serde::Serialize>(c: &Client, key: &str, v: &T) {
    c.kv_client()
        .put(key, model::encode(v), None)
        .await
        .unwrap();
}

pub async fn put_raw(c: &Client, key: &str, v: &[u8]) {
    c.kv_client().put(key, v.to_vec(), None).await.unwrap();
}

pub async fn delete(c: &Client, key: &str) {
    c.kv_client().delete(key, None).await.unwrap();
}

/// A network and an image, as the coordinator would have created them.
pub struct World {
    pub network: NetworkId,
    pub image: ImageId,
    next: u32,
}

impl World {
    pub async fn create(c: &Client) -> Self {
        let net = Network {
            id: NetworkId::new_random(),
            name: "net".into(),
            project: ProjectId::default_project(),
            cidr: Some("10.10.0.0/16".parse().unwrap()),
            subnet_name: None,
            gateway: Some("10.10.0.1".parse().unwrap()),
            vni: 4242,
            mtu: 0,
            dns: vec![],
            provider: None,
            external: false,
            shared: false,
            dhcp_disabled: false,
            host_routes: Vec::new(),
            allocation_pools: Vec::new(),
            subnet_id: None,
            more_subnets: Vec::new(),
            created_at: model::now(),
        };
        put(c, &keys::network(&net.id), &net).await;
        let image = Image {
            id: ImageId::new_random(),
            name: "cirros".into(),
            project: ProjectId::default_project(),
            disk_format: DiskFormat::Qcow2,
            size_bytes: 1,
            checksum_sha256: None,
            min_disk_gb: 0,
            min_ram_mb: 0,
            status: ImageStatus::Active,
            created_at: model::now(),
            kernel_sha256: None,
            initrd_sha256: None,
            kernel_cmdline: None,
            status_reason: None,
            access: Default::default(),
            attrs: Default::default(),
        };
        put(c, &keys::image(&image.id), &image).await;
        Self {
            network: net.id,
            image: image.id,
            next: 10,
        }
    }

    /// Writes a port, an instance and its assignment to `node`.
    pub async fn add_instance(&mut self, c: &Client, node: &NodeName) -> Instance {
        self.next += 1;
        let n = self.next;
        let id = InstanceId::new_random();
        let port = Port {
            id: PortId::new_random(),
            name: String::new(),
            description: String::new(),
            admin_state_up: true,
            project: ProjectId::default_project(),
            network: self.network,
            mac: MacAddr::port_mac([0, (n >> 8) as u8, n as u8]),
            ip: Some(format!("10.10.{}.{}", n >> 8, n & 0xff).parse().unwrap()),
            more_ips: Vec::new(),
            security_groups: vec![],
            port_security: false,
            device: Some(id),
            node: Some(node.clone()),
            router: None,
            host: None,
            created_at: model::now(),
        };
        let inst = Instance {
            id,
            name: format!("vm-{n}"),
            project: ProjectId::default_project(),
            flavor: FlavorName::new("m1.tiny").unwrap(),
            resources: Resources {
                vcpus: 1,
                ram_mb: 256,
                disk_gb: 1,
            },
            image: self.image,
            ports: vec![port.id],
            key_name: None,
            user_data_b64: None,
            power: PowerState::Running,
            reboot_generation: 0,
            availability_zone: None,
            server_group: None,
            node: Some(node.clone()),
            launch_index: 0,
            evacuation: Default::default(),
            volumes: Vec::new(),
            boot_volume: None,
            metadata: Default::default(),
            access_ipv4: None,
            access_ipv6: None,
            locked: None,
            resize: None,
            error_mark: None,
            rebuild_generation: 0,
            created_at: model::now(),
            updated_at: None,
        };
        put(c, &keys::port(&port.id), &port).await;
        put_spec(c, &inst).await;
        let a = Assignment {
            instance: id,
            node: node.clone(),
            assigned_at: model::now(),
        };
        put(c, &keys::assignment(node, &id), &a).await;
        inst
    }
}

/// Every decodable status, with its mod revision.
pub async fn statuses(c: &Client) -> BTreeMap<InstanceId, (InstanceStatus, i64)> {
    let resp = c
        .kv_client()
        .get(
            keys::all_node_owned_prefix(),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for kv in resp.kvs() {
        let k = String::from_utf8_lossy(kv.key()).into_owned();
        if let Some(keys::Key::InstanceStatus(_, id)) = keys::parse(&k) {
            if let Ok(s) = model::decode::<InstanceStatus>(&k, kv.value()) {
                out.insert(id, (s, kv.mod_revision()));
            }
        }
    }
    out
}

pub async fn exists(c: &Client, key: String) -> bool {
    !c.kv_client().get(key, None).await.unwrap().kvs().is_empty()
}

/// Polls `f` every 100 ms until it returns true; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An agent running in this process on a fake hypervisor.
pub struct InProcessAgent {
    pub node: NodeName,
    pub hv: Arc<FakeHypervisor>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub fn config(endpoint: &str, node: &NodeName, state_dir: &Path) -> AgentConfig {
    let mut cfg = AgentConfig::new(node.clone(), vec![endpoint.to_string()]);
    cfg.driver = DriverKind::Fake;
    // Fake guests have no taps, and these tests run in the root namespace:
    // never touch its bridges or nftables.
    cfg.no_network = true;
    cfg.state_dir = state_dir.to_path_buf();
    cfg.lease_ttl = Duration::from_secs(2);
    cfg.capacity.vcpus = Some(64);
    cfg.capacity.ram_mb = Some(65536);
    cfg.capacity.disk_gb = Some(1000);
    cfg
}

impl InProcessAgent {
    pub fn start(cfg: AgentConfig, boot: Duration) -> Self {
        let hv = Arc::new(FakeHypervisor::open(&cfg.state_dir, boot).unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let node = cfg.node.clone();
        let hv2: Arc<dyn nubo_agent::Hypervisor> = hv.clone();
        let task = tokio::spawn(async move {
            nubo_agent::run_with_hypervisor(cfg, hv2, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            node,
            hv,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn snapshot(&self) -> FakeState {
        self.hv.snapshot().await
    }

    /// The agent task has not exited.
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

/// All given instances have a status in `state` written by `node`.
pub async fn all_in_state(
    c: &Client,
    ids: Vec<InstanceId>,
    node: &NodeName,
    state: model::InstanceState,
) -> bool {
    let st = statuses(c).await;
    ids.iter().all(|id| {
        st.get(id)
            .is_some_and(|(s, _)| s.state == state && &s.node == node)
    })
}
