//! Builders for unit tests: a [`World`] is a cache filled the way the
//! coordinator would fill etcd.

use nubo_common::keys;
use nubo_common::model::{
    self, Assignment, DiskFormat, FloatingIp, Image, ImageStatus, Instance, InstanceState,
    InstanceStatus, Network, Node, Port, PowerState, Qos, Resources, Router, RouterGateway,
    RouterSnat, SecurityGroup, Volume, VolumeAttachment, VolumeStatus, VolumeType,
};
use nubo_common::{
    FlavorName, FloatingIpId, ImageId, InstanceId, NetworkId, NodeName, PortId, ProjectId,
    RouterId, SecurityGroupId, VolumeId,
};
use nubo_netid::MacAddr;

use crate::compute::hypervisor::{ObservedInstance, ObservedPower};
use crate::state::cache::{Cache, Change};
use crate::state::desired::DesiredInstance;

pub fn node_name(s: &str) -> NodeName {
    NodeName::new(s).unwrap()
}

pub fn instance(ports: Vec<PortId>) -> Instance {
    Instance {
        id: InstanceId::new_random(),
        name: "vm".into(),
        project: ProjectId::default_project(),
        flavor: FlavorName::new("m1.tiny").unwrap(),
        resources: Resources {
            vcpus: 1,
            ram_mb: 512,
            disk_gb: 1,
        },
        image: ImageId::new_random(),
        ports,
        key_name: None,
        user_data_b64: None,
        power: PowerState::Running,
        reboot_generation: 0,
        availability_zone: None,
        server_group: None,
        node: None,
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
    }
}

pub fn assignment(n: &NodeName, id: InstanceId) -> Assignment {
    Assignment {
        instance: id,
        node: n.clone(),
        assigned_at: model::now(),
    }
}

pub fn status(n: &NodeName, state: InstanceState, reboot_generation: u64) -> InstanceStatus {
    InstanceStatus {
        state,
        node: n.clone(),
        updated_at: model::now(),
        last_error: None,
        reboot_generation,
        volumes: Vec::new(),
        size: None,
    }
}

/// A cache plus a revision counter.
pub struct World {
    pub cache: Cache,
    rev: i64,
    next_ip: u8,
}

/// Port number `n` of `net` (192.168.0.`n`), in no server or router.
fn free_port(net: NetworkId, sgs: &[SecurityGroupId], n: u8) -> Port {
    Port {
        id: PortId::new_random(),
        name: String::new(),
        description: String::new(),
        admin_state_up: true,
        project: ProjectId::default_project(),
        network: net,
        mac: MacAddr::port_mac([0, 0, n]),
        ip: Some(format!("192.168.0.{n}").parse().unwrap()),
        more_ips: Vec::new(),
        security_groups: sgs.to_vec(),
        port_security: true,
        device: None,
        node: None,
        router: None,
        host: None,
        created_at: model::now(),
    }
}

impl World {
    pub fn new() -> Self {
        Self {
            cache: Cache::default(),
            rev: 1,
            next_ip: 10,
        }
    }

    /// Puts `v` at `key` as the etcd mirror would see it.
    pub fn put<T: serde::Serialize>(&mut self, key: String, v: &T) -> Change {
        self.rev += 1;
        self.cache.apply(&key, Some(&model::encode(v)), self.rev)
    }

    /// Puts volume type `name` limiting write IOPS to `write_iops`.
    pub fn volume_type(&mut self, name: &str, write_iops: Option<u64>) -> Change {
        let t = VolumeType {
            name: name.into(),
            qos: Qos {
                write_iops_sec: write_iops,
                ..Qos::default()
            },
            created_at: model::now(),
        };
        self.put(keys::volume_type(name), &t)
    }

    /// Puts a new available volume of type `vtype`.
    pub fn volume(&mut self, vtype: Option<&str>) -> VolumeId {
        let v = Volume {
            id: VolumeId::new_random(),
            name: "vol".into(),
            project: ProjectId::default_project(),
            size_gb: 1,
            volume_type: vtype.map(str::to_string),
            status: VolumeStatus::Available,
            attached_to: None,
            source_image: None,
            status_reason: None,
            created_by: None,
            created_at: model::now(),
            description: None,
            metadata: Default::default(),
            bootable: None,
            read_only: None,
            image_metadata: Default::default(),
            source_volume: None,
            source_snapshot: None,
            device: None,
            status_reset: None,
        };
        let id = v.id;
        self.put(keys::volume(&id), &v);
        id
    }

    /// Attaches `volume` to `instance` the way the coordinator does: the
    /// instance's spec lists it, the volume record points back.
    pub fn attach(&mut self, instance: InstanceId, volume: VolumeId) {
        if let Some(mut v) = self.cache.volumes.get(&volume).cloned() {
            v.attached_to = Some(instance);
            v.status = VolumeStatus::InUse;
            self.put(keys::volume(&volume), &v);
        }
        let mut spec = self.cache.instances[&instance].clone();
        spec.volumes.push(VolumeAttachment {
            volume,
            delete_on_termination: false,
        });
        let node = spec.node.clone().unwrap_or_else(|| node_name("n1"));
        self.put(keys::node_spec(&node, &instance), &spec);
    }

    pub fn node(&mut self, n: &NodeName, ip: &str) {
        let node = Node {
            name: n.clone(),
            underlay_ip: ip.parse().unwrap(),
            underlay_mtu: 1500,
            availability_zone: "nova".into(),
            labels: Default::default(),
            capacity: Resources::default(),
            agent_version: "t".into(),
            registered_at: model::now(),
        };
        self.put(keys::node(n), &node);
    }

    pub fn network(&mut self, vni: u32, mtu: u16) -> NetworkId {
        self.network_with(vni, mtu, None)
    }

    fn network_with(
        &mut self,
        vni: u32,
        mtu: u16,
        provider: Option<model::ProviderSegment>,
    ) -> NetworkId {
        let net = Network {
            id: NetworkId::new_random(),
            name: format!("net{vni}"),
            project: ProjectId::default_project(),
            cidr: Some("192.168.0.0/24".parse().unwrap()),
            subnet_name: None,
            gateway: Some("192.168.0.1".parse().unwrap()),
            vni,
            mtu,
            dns: vec![],
            provider,
            external: false,
            shared: false,
            dhcp_disabled: false,
            host_routes: Vec::new(),
            allocation_pools: Vec::new(),
            subnet_id: None,
            more_subnets: Vec::new(),
            created_at: model::now(),
        };
        let id = net.id;
        self.put(keys::network(&id), &net);
        id
    }

    /// A provider network on `segment` (no VNI).
    pub fn provider_network(&mut self, segment: model::ProviderSegment) -> NetworkId {
        self.network_with(0, 0, Some(segment))
    }

    pub fn secgroup_self_referencing(&mut self) -> SecurityGroupId {
        let id = SecurityGroupId::new_random();
        let sg = SecurityGroup {
            id,
            name: "default".into(),
            project: ProjectId::default_project(),
            description: String::new(),
            rules: SecurityGroup::default_rules(id),
            created_at: model::now(),
        };
        self.put(keys::secgroup(&id), &sg);
        id
    }

    /// An instance with one port on `net`, assigned to `n`.
    pub fn instance_on(
        &mut self,
        n: &NodeName,
        net: NetworkId,
        sgs: &[SecurityGroupId],
    ) -> (InstanceId, Port) {
        self.next_ip += 1;
        let port = free_port(net, sgs, self.next_ip);
        let mut inst = instance(vec![port.id]);
        let image = Image {
            id: inst.image,
            name: "img".into(),
            project: ProjectId::default_project(),
            disk_format: DiskFormat::Raw,
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
        inst.node = Some(n.clone());
        let port = Port {
            device: Some(inst.id),
            ..port
        };
        self.put(keys::image(&image.id), &image);
        self.put(keys::port(&port.id), &port);
        self.put(keys::node_spec(n, &inst.id), &inst);
        self.put(keys::assignment(n, &inst.id), &assignment(n, inst.id));
        (inst.id, port)
    }
}

impl World {
    /// An external (provider, flat on `physnet1`) network 10.77.0.0/24
    /// whose upstream router is 10.77.0.1.
    pub fn external_network(&mut self) -> NetworkId {
        let id = self.provider_network(model::ProviderSegment {
            kind: model::ProviderType::Flat,
            physical_network: "physnet1".into(),
            segment: None,
        });
        let mut net = self.cache.networks[&id].clone();
        net.cidr = Some("10.77.0.0/24".parse().unwrap());
        net.gateway = Some("10.77.0.1".parse().unwrap());
        net.external = true;
        self.put(keys::network(&id), &net);
        id
    }

    /// A router routing `subnets`, with a gateway on `external` if given.
    pub fn router(&mut self, subnets: &[NetworkId], external: Option<NetworkId>) -> RouterId {
        let r = Router {
            id: RouterId::new_random(),
            name: "r".into(),
            project: ProjectId::default_project(),
            gateway: external.map(|network| RouterGateway {
                network,
                ip: "10.77.0.2".parse().unwrap(),
            }),
            subnets: subnets.to_vec(),
            disabled: false,
            interface_ports: Vec::new(),
            created_at: model::now(),
        };
        self.put(keys::router(&r.id), &r);
        r.id
    }

    /// Makes router `r` join `net` by a new port with address `ip`: the
    /// port (its `router` set) and the router's interface record.
    pub fn router_port(&mut self, r: RouterId, net: NetworkId, ip: &str) -> Port {
        self.next_ip += 1;
        let port = Port {
            mac: MacAddr::port_mac([0, 1, self.next_ip]),
            ip: Some(ip.parse().unwrap()),
            router: Some(r),
            ..free_port(net, &[], self.next_ip)
        };
        let mut rt = self.cache.routers[&r].clone();
        rt.subnets.retain(|n| *n != net);
        rt.subnets.push(net);
        rt.interface_ports.push(model::RouterPort {
            network: net,
            port: port.id,
            ip: ip.parse().unwrap(),
            mac: port.mac,
        });
        self.put(keys::port(&port.id), &port);
        self.put(keys::router(&r), &rt);
        port
    }

    /// Floating IP `address` of `external`, on `port` through `router`.
    pub fn floating_ip(
        &mut self,
        external: NetworkId,
        address: &str,
        port: &Port,
        router: RouterId,
    ) {
        let f = FloatingIp {
            id: FloatingIpId::new_random(),
            project: ProjectId::default_project(),
            network: external,
            address: address.parse().unwrap(),
            port: Some(port.id),
            fixed_ip: port.ip,
            router: Some(router),
            created_at: model::now(),
        };
        self.put(keys::floating_ip(&f.id), &f);
    }

    /// The SNAT address of `router` on `node`.
    pub fn router_snat(&mut self, node: &NodeName, router: RouterId, network: NetworkId, ip: &str) {
        let s = RouterSnat {
            router,
            node: node.clone(),
            network,
            ip: ip.parse().unwrap(),
        };
        self.put(keys::router_snat(node, &router), &s);
    }
}

/// The desired state of one instance on node `n1` (on a fresh network,
/// no ports), with `power` asked for.
pub fn desired_instance(power: PowerState) -> DesiredInstance {
    let mut w = World::new();
    let n = node_name("n1");
    w.node(&n, "10.0.0.1");
    let net = w.network(1, 0);
    let (id, _) = w.instance_on(&n, net, &[]);
    let mut d = crate::state::desired::build(&w.cache, &n, 1500)
        .instances
        .remove(&id)
        .unwrap();
    d.spec.power = power;
    d
}

/// An instance as a hypervisor shows it (booted once, created now).
pub fn observed_instance(id: InstanceId, power: ObservedPower, managed: bool) -> ObservedInstance {
    ObservedInstance {
        id,
        power,
        boot_count: 1,
        created_at: model::now(),
        managed,
    }
}
