//! Conversions between the stored model and the gRPC messages.

use std::collections::HashMap;

use ipnet::IpNet;
use nubo_common::model::{
    self, Direction, EtherType, IcmpMatch, Protocol, Remote, SecurityGroupRule, Timestamp,
};
use nubo_common::{proto as pb, NetworkId, NodeName, RuleId, SecurityGroupId};

use crate::error::{ApiError, ApiResult};
use crate::operations::routers::RouterView;
use crate::placement::scheduler::{NodeState, Ratios};

pub(crate) fn ts(t: &Timestamp) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn res(r: model::Resources) -> pb::Resources {
    pb::Resources {
        vcpus: r.vcpus,
        ram_mb: r.ram_mb,
        disk_gb: r.disk_gb,
    }
}

/// Flavor.
pub fn flavor(f: &model::Flavor) -> pb::Flavor {
    pb::Flavor {
        name: f.name.to_string(),
        vcpus: f.resources.vcpus,
        ram_mb: f.resources.ram_mb,
        disk_gb: f.resources.disk_gb,
        created_at: ts(&f.created_at),
        display_name: f.display_name.clone(),
        private: f.private,
        access_projects: f.access.iter().map(ToString::to_string).collect(),
    }
}

/// Image, without the caller's part (`owned`, `member_status`): only
/// through [`image_for`], so every answer says what the caller is to it.
fn image(i: &model::Image) -> pb::Image {
    pb::Image {
        id: i.id.to_string(),
        name: i.name.clone(),
        project: i.project.to_string(),
        disk_format: match i.disk_format {
            model::DiskFormat::Raw => "raw",
            model::DiskFormat::Qcow2 => "qcow2",
        }
        .into(),
        size_bytes: i.size_bytes,
        checksum_sha256: i.checksum_sha256.clone().unwrap_or_default(),
        min_disk_gb: i.min_disk_gb,
        min_ram_mb: i.min_ram_mb,
        status: match i.status {
            model::ImageStatus::Queued => "queued",
            model::ImageStatus::Active => "active",
            model::ImageStatus::Error => "error",
        }
        .into(),
        created_at: ts(&i.created_at),
        kernel_sha256: i.kernel_sha256.clone().unwrap_or_default(),
        initrd_sha256: i.initrd_sha256.clone().unwrap_or_default(),
        kernel_cmdline: i.kernel_cmdline.clone().unwrap_or_default(),
        status_reason: i.status_reason.clone().unwrap_or_default(),
        visibility: i.access.visibility.as_str().into(),
        tags: i.attrs.tags.iter().cloned().collect(),
        properties: i
            .attrs
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        protected: i.attrs.protected,
        hidden: i.attrs.hidden,
        deactivated: i.attrs.deactivated,
        member_status: String::new(),
        owned: false,
    }
}

/// An image as `project` sees it: whether it owns it, and its member
/// status when the image is shared with it.
pub fn image_for(i: &model::Image, project: &nubo_common::ProjectId) -> pb::Image {
    pb::Image {
        member_status: i
            .access
            .member_status(project)
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        owned: i.project == *project,
        ..image(i)
    }
}

/// A member of image `image`.
pub fn image_member(
    image: &nubo_common::ImageId,
    member: &nubo_common::ProjectId,
    m: &model::ImageMember,
) -> pb::ImageMember {
    pb::ImageMember {
        image: image.to_string(),
        member: member.to_string(),
        status: m.status.as_str().into(),
        created_at: ts(&m.created_at),
        updated_at: ts(&m.updated_at),
    }
}

/// Network.
pub fn network(n: &model::Network) -> pb::Network {
    pb::Network {
        id: n.id.to_string(),
        name: n.name.clone(),
        project: n.project.to_string(),
        cidr: n.cidr.map(|c| c.to_string()).unwrap_or_default(),
        subnet_name: n.subnet_name.clone().unwrap_or_default(),
        dhcp_disabled: n.dhcp_disabled,
        allocation_pools: n
            .allocation_pools
            .iter()
            .map(|(a, b)| pb::IpRange {
                start: a.to_string(),
                end: b.to_string(),
            })
            .collect(),
        host_routes: n
            .host_routes
            .iter()
            .map(|r| pb::HostRoute {
                destination: r.destination.to_string(),
                nexthop: r.nexthop.to_string(),
            })
            .collect(),
        gateway: n.gateway.map(|g| g.to_string()).unwrap_or_default(),
        vni: n.vni,
        mtu: u32::from(n.mtu),
        dns: n.dns.iter().map(ToString::to_string).collect(),
        created_at: ts(&n.created_at),
        provider_type: n
            .provider
            .as_ref()
            .map(|p| match p.kind {
                model::ProviderType::Flat => "flat".to_string(),
                model::ProviderType::Vlan => "vlan".to_string(),
            })
            .unwrap_or_default(),
        physical_network: n
            .provider
            .as_ref()
            .map(|p| p.physical_network.clone())
            .unwrap_or_default(),
        segment: n
            .provider
            .as_ref()
            .and_then(|p| p.segment)
            .map_or(0, u32::from),
        external: n.external,
        shared: n.shared,
        subnets: n.subnets().iter().map(subnet).collect(),
    }
}

/// Subnet.
pub fn subnet(s: &model::Subnet) -> pb::Subnet {
    pb::Subnet {
        id: s.id.to_string(),
        name: s.name.clone().unwrap_or_default(),
        cidr: s.cidr.to_string(),
        gateway: s.gateway.map(|g| g.to_string()).unwrap_or_default(),
        dns: s.dns.iter().map(ToString::to_string).collect(),
        dhcp_disabled: s.dhcp_disabled,
        host_routes: s
            .host_routes
            .iter()
            .map(|r| pb::HostRoute {
                destination: r.destination.to_string(),
                nexthop: r.nexthop.to_string(),
            })
            .collect(),
        allocation_pools: s
            .allocation_pools
            .iter()
            .map(|(a, b)| pb::IpRange {
                start: a.to_string(),
                end: b.to_string(),
            })
            .collect(),
    }
}

/// Port, its fixed addresses with the subnet of each when its network
/// `net` is known.
pub fn port_on(p: &model::Port, net: Option<&model::Network>) -> pb::Port {
    pb::Port {
        fixed_ips: p
            .ips()
            .into_iter()
            .map(|ip| pb::FixedIp {
                subnet_id: net
                    .and_then(|n| n.subnet_of_ip(ip))
                    .map(|s| s.id.to_string())
                    .unwrap_or_default(),
                ip: ip.to_string(),
            })
            .collect(),
        ..port(p)
    }
}

/// Port.
pub fn port(p: &model::Port) -> pb::Port {
    pb::Port {
        fixed_ips: p
            .ips()
            .into_iter()
            .map(|ip| pb::FixedIp {
                subnet_id: String::new(),
                ip: ip.to_string(),
            })
            .collect(),
        id: p.id.to_string(),
        name: p.name.clone(),
        project: p.project.to_string(),
        network_id: p.network.to_string(),
        mac: p.mac.to_string(),
        ip: p.ip.map(|ip| ip.to_string()).unwrap_or_default(),
        security_group_ids: p.security_groups.iter().map(ToString::to_string).collect(),
        device_id: p.device.map(|d| d.to_string()).unwrap_or_default(),
        node: p.node.as_ref().map(ToString::to_string).unwrap_or_default(),
        requested_host: p.host.as_ref().map(ToString::to_string).unwrap_or_default(),
        router_id: p.router.map(|r| r.to_string()).unwrap_or_default(),
        description: p.description.clone(),
        admin_state_up: p.admin_state_up,
        tap: p.tap_name(),
        port_security: p.port_security,
        created_at: ts(&p.created_at),
    }
}

/// Security group rule.
pub fn rule(r: &SecurityGroupRule) -> pb::SecurityGroupRule {
    let (port_min, port_max) = r
        .ports
        .map(|(a, b)| (u32::from(a), u32::from(b)))
        .unwrap_or((0, 0));
    let (remote_cidr, remote_group_id) = match &r.remote {
        Remote::Any => (String::new(), String::new()),
        Remote::Cidr(c) => (c.to_string(), String::new()),
        Remote::Group(g) => (String::new(), g.to_string()),
    };
    pb::SecurityGroupRule {
        id: r.id.to_string(),
        direction: match r.direction {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
        .into(),
        ethertype: match r.ethertype {
            EtherType::Ipv4 => "ipv4",
            EtherType::Ipv6 => "ipv6",
        }
        .into(),
        protocol: match r.protocol {
            Protocol::Any => "any".into(),
            Protocol::Tcp => "tcp".into(),
            Protocol::Udp => "udp".into(),
            Protocol::Icmp => "icmp".into(),
            Protocol::Number(n) => n.to_string(),
        },
        port_min,
        port_max,
        remote_cidr,
        remote_group_id,
        icmp_type: r.icmp.map(|m| u32::from(m.icmp_type)),
        icmp_code: r.icmp.and_then(|m| m.code).map(u32::from),
    }
}

/// Parses and validates a rule from the API (the remote group's existence
/// is checked by the caller).
pub fn rule_from_proto(r: &pb::SecurityGroupRule) -> ApiResult<SecurityGroupRule> {
    let bad = |m: String| Err(ApiError::InvalidArgument(m));
    let direction = match r.direction.to_ascii_lowercase().as_str() {
        "ingress" => Direction::Ingress,
        "egress" => Direction::Egress,
        other => {
            return bad(format!(
                "rule direction {other:?} must be \"ingress\" or \"egress\""
            ))
        }
    };
    let ethertype = match r.ethertype.to_ascii_lowercase().as_str() {
        "" | "ipv4" => EtherType::Ipv4,
        "ipv6" => EtherType::Ipv6,
        other => {
            return bad(format!(
                "rule ethertype {other:?} must be \"ipv4\" or \"ipv6\""
            ))
        }
    };
    let protocol = match r.protocol.to_ascii_lowercase().as_str() {
        "" | "any" => Protocol::Any,
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "icmp" => Protocol::Icmp,
        // A number stays a number (shown as given, as Neutron does); the
        // firewall matches it as that IP protocol.
        other => match other.parse::<u8>() {
            Ok(n) => Protocol::Number(n),
            Err(_) => {
                return bad(format!(
                    "rule protocol {other:?} must be any, tcp, udp, icmp or a number 0-255"
                ))
            }
        },
    };
    let ports = match (r.port_min, r.port_max) {
        (0, 0) => None,
        (a, b) if !protocol.has_ports() => {
            return bad(format!(
                "rule ports {a}-{b} need protocol tcp or udp (or the number of a protocol with ports: 6, 17, 33, 132, 136)"
            ))
        }
        (a, b) if a == 0 || a > b || b > 65535 => {
            return bad(format!(
                "rule port range {a}-{b} is not valid (1 <= min <= max <= 65535)"
            ))
        }
        (a, b) => Some((a as u16, b as u16)),
    };
    let icmp_byte = |what: &str, v: u32| {
        u8::try_from(v)
            .map_err(|_| ApiError::InvalidArgument(format!("rule ICMP {what} {v} is not 0-255")))
    };
    let icmp = match (r.icmp_type, r.icmp_code) {
        (None, None) => None,
        (None, Some(c)) => return bad(format!("rule ICMP code {c} needs an ICMP type")),
        (Some(t), c) => {
            if protocol != Protocol::Icmp {
                return bad(format!("rule ICMP type {t} needs protocol icmp"));
            }
            Some(IcmpMatch {
                icmp_type: icmp_byte("type", t)?,
                code: c.map(|c| icmp_byte("code", c)).transpose()?,
            })
        }
    };
    let remote = match (r.remote_cidr.trim(), r.remote_group_id.trim()) {
        ("", "") => Remote::Any,
        (c, "") => {
            let net: IpNet = c.parse().map_err(|_| {
                ApiError::InvalidArgument(format!("rule remote_cidr {c} is not a valid network"))
            })?;
            let v4 = matches!(net, IpNet::V4(_));
            if v4 != (ethertype == EtherType::Ipv4) {
                return bad(format!(
                    "rule remote_cidr {c} does not match ethertype {}",
                    r.ethertype
                ));
            }
            Remote::Cidr(net.trunc())
        }
        ("", g) => Remote::Group(g.parse::<SecurityGroupId>()?),
        _ => return bad("a rule may set remote_cidr or remote_group_id, not both".into()),
    };
    Ok(SecurityGroupRule {
        id: RuleId::new_random(),
        direction,
        ethertype,
        protocol,
        ports,
        icmp,
        remote,
    })
}

/// Security group.
pub fn secgroup(g: &model::SecurityGroup) -> pb::SecurityGroup {
    pb::SecurityGroup {
        id: g.id.to_string(),
        name: g.name.clone(),
        project: g.project.to_string(),
        description: g.description.clone(),
        rules: g.rules.iter().map(rule).collect(),
        created_at: ts(&g.created_at),
    }
}

/// Keypair.
pub fn keypair(k: &model::Keypair) -> pb::Keypair {
    pb::Keypair {
        name: k.name.clone(),
        project: k.project.to_string(),
        public_key: k.public_key.clone(),
        fingerprint: k.fingerprint.clone(),
        created_at: ts(&k.created_at),
    }
}

/// Server group policy name.
pub fn policy_name(p: model::ServerGroupPolicy) -> &'static str {
    match p {
        model::ServerGroupPolicy::Affinity => "affinity",
        model::ServerGroupPolicy::AntiAffinity => "anti-affinity",
    }
}

/// Server group.
pub fn server_group(g: &model::ServerGroup) -> pb::ServerGroup {
    pb::ServerGroup {
        id: g.id.to_string(),
        name: g.name.clone(),
        project: g.project.to_string(),
        policy: policy_name(g.policy).into(),
        created_at: ts(&g.created_at),
    }
}

/// Router, with its per-node SNAT addresses.
pub fn router(v: &RouterView) -> pb::Router {
    let r = &v.router;
    pb::Router {
        id: r.id.to_string(),
        name: r.name.clone(),
        project: r.project.to_string(),
        gateway_network_id: r
            .gateway
            .as_ref()
            .map(|g| g.network.to_string())
            .unwrap_or_default(),
        gateway_ip: r
            .gateway
            .as_ref()
            .map(|g| g.ip.to_string())
            .unwrap_or_default(),
        subnet_ids: r.subnets.iter().map(ToString::to_string).collect(),
        disabled: r.disabled,
        interface_ports: r
            .interface_ports
            .iter()
            .map(|p| pb::RouterInterfacePort {
                network_id: p.network.to_string(),
                port_id: p.port.to_string(),
                ip: p.ip.to_string(),
            })
            .collect(),
        created_at: ts(&r.created_at),
        snat_addresses: v
            .snat
            .iter()
            .map(|s| pb::RouterSnatAddress {
                node: s.node.to_string(),
                ip: s.ip.to_string(),
            })
            .collect(),
    }
}

/// Floating IP.
pub fn floating_ip(f: &model::FloatingIp) -> pb::FloatingIp {
    let s = |v: Option<String>| v.unwrap_or_default();
    pb::FloatingIp {
        id: f.id.to_string(),
        project: f.project.to_string(),
        network_id: f.network.to_string(),
        address: f.address.to_string(),
        port_id: s(f.port.map(|p| p.to_string())),
        fixed_ip: s(f.fixed_ip.map(|p| p.to_string())),
        router_id: s(f.router.map(|p| p.to_string())),
        created_at: ts(&f.created_at),
    }
}

/// Node as seen by the scheduler.
pub fn node(name: &NodeName, st: &NodeState, _ratios: &Ratios) -> pb::Node {
    let info = st.info.as_ref();
    pb::Node {
        name: name.to_string(),
        underlay_ip: info.map(|i| i.underlay_ip.to_string()).unwrap_or_default(),
        availability_zone: info
            .map(|i| i.availability_zone.clone())
            .unwrap_or_default(),
        labels: info
            .map(|i| i.labels.clone().into_iter().collect())
            .unwrap_or_default(),
        capacity: info.map(|i| res(i.capacity)),
        usage: Some(res(st.usage.used)),
        instances: st.usage.instances,
        alive: st.alive,
        enabled: st.admin.enabled,
        registered_at: info.map(|i| ts(&i.registered_at)).unwrap_or_default(),
        health: st.health.as_ref().map_or("up", |h| h.state.as_str()).into(),
        health_reason: st
            .health
            .as_ref()
            .map(|h| h.reason.clone())
            .unwrap_or_default(),
        health_since: st.health.as_ref().map(|h| ts(&h.since)).unwrap_or_default(),
        observed_usage: None,
    }
}

/// A node's real usage, as its agent measured it.
pub fn node_observed_usage(u: &model::ObservedUsage) -> pb::NodeObservedUsage {
    pb::NodeObservedUsage {
        cpu_percent: u.cpu_percent,
        cpus: u.cpus,
        memory_used_bytes: u.memory_used_bytes,
        memory_total_bytes: u.memory_total_bytes,
        disk_used_bytes: u.disk_used_bytes,
        disk_total_bytes: u.disk_total_bytes,
        measured_at: ts(&u.at),
        instances: u32::try_from(u.instances.len()).unwrap_or(u32::MAX),
    }
}

/// A server's usage measured at `at`.
pub fn server_usage(at: &model::Timestamp, u: &model::InstanceUsage) -> pb::ServerUsage {
    pb::ServerUsage {
        cpu_percent: u.cpu_percent,
        memory_used_bytes: u.memory_used_bytes,
        memory_available_bytes: u.memory_available_bytes,
        disk_read_bytes_per_sec: u.disk_read_bytes_per_sec,
        disk_write_bytes_per_sec: u.disk_write_bytes_per_sec,
        net_rx_bytes_per_sec: u.net_rx_bytes_per_sec,
        net_tx_bytes_per_sec: u.net_tx_bytes_per_sec,
        measured_at: ts(at),
    }
}

/// Evacuation policy name.
pub fn evacuation_name(e: model::EvacuationPolicy) -> &'static str {
    match e {
        model::EvacuationPolicy::Auto => "auto",
        model::EvacuationPolicy::Manual => "manual",
        model::EvacuationPolicy::Never => "never",
    }
}

/// Server, from its view.
pub fn server(v: &crate::operations::servers::ServerView) -> pb::Server {
    let mut s = server_parts(&v.instance, v.status.as_ref(), &v.ports, &v.network_names);
    for a in &mut s.addresses {
        if let Some(f) = a
            .port_id
            .parse()
            .ok()
            .and_then(|p: nubo_common::PortId| v.floating_ips.get(&p))
        {
            a.floating_ip = f.to_string();
        }
    }
    s.security_groups = v
        .security_groups
        .iter()
        .map(|(id, name)| pb::ServerSecurityGroup {
            id: id.to_string(),
            name: name.clone(),
        })
        .collect();
    s.updated_at = ts(&v.updated_at());
    if v.deleted_at.is_some() {
        s.state = "deleted".into();
    }
    s
}

/// Server, from its spec, its status (if reported), its ports and the names
/// of their networks.
fn server_parts(
    i: &model::Instance,
    status: Option<&model::InstanceStatus>,
    ports: &[model::Port],
    net_names: &HashMap<NetworkId, String>,
) -> pb::Server {
    pb::Server {
        id: i.id.to_string(),
        name: i.name.clone(),
        project: i.project.to_string(),
        flavor: i.flavor.to_string(),
        image_id: i.image.to_string(),
        key_name: i.key_name.clone().unwrap_or_default(),
        desired_power: match i.power {
            model::PowerState::Running => "running",
            model::PowerState::Stopped => "stopped",
        }
        .into(),
        // An admin's error mark, then a rebuild not done yet, then the report.
        state: i.shown_state(status).into(),
        node: i.node.as_ref().map(ToString::to_string).unwrap_or_default(),
        last_error: i.shown_error(status),
        addresses: ports
            .iter()
            .map(|p| pb::ServerAddress {
                network_id: p.network.to_string(),
                network_name: net_names.get(&p.network).cloned().unwrap_or_default(),
                port_id: p.id.to_string(),
                ip: p.ip.map(|ip| ip.to_string()).unwrap_or_default(),
                mac: p.mac.to_string(),
                tap: p.tap_name(),
                floating_ip: String::new(),
            })
            .collect(),
        availability_zone: i.availability_zone.clone().unwrap_or_default(),
        server_group_id: i.server_group.map(|g| g.to_string()).unwrap_or_default(),
        resources: Some(res(i.resources)),
        created_at: ts(&i.created_at),
        updated_at: status
            .map(|s| ts(&s.updated_at))
            .unwrap_or_else(|| ts(&i.created_at)),
        launch_index: i.launch_index,
        evacuation_policy: evacuation_name(i.evacuation).into(),
        volume_ids: i.volumes.iter().map(|v| v.volume.to_string()).collect(),
        boot_volume_id: i
            .boot_volume
            .as_ref()
            .map(|v| v.volume.to_string())
            .unwrap_or_default(),
        metadata: i
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        access_ipv4: i.access_ipv4.map(|a| a.to_string()).unwrap_or_default(),
        access_ipv6: i.access_ipv6.map(|a| a.to_string()).unwrap_or_default(),
        observed_usage: None,
        locked: i.locked.is_some(),
        locked_reason: i.locked.clone().unwrap_or_default(),
        security_groups: Vec::new(),
        resized_from: i
            .resize
            .as_ref()
            .map(|r| r.old_flavor.to_string())
            .unwrap_or_default(),
        resize_phase: crate::operations::resize::phase(i, status).as_str().into(),
        applied_vcpus: status.and_then(|s| s.size).map_or(0, |g| g.vcpus),
        applied_ram_mb: status.and_then(|s| s.size).map_or(0, |g| g.ram_mb),
    }
}

/// The API name of a volume status (`in-use` as in OpenStack).
pub fn volume_status_name(s: model::VolumeStatus) -> &'static str {
    crate::operations::volumes::status_name(s)
}

/// Volume; `rbd_image` is `pool/vol-<id>` (empty when Ceph is not
/// configured), `attachment` the server's attachment record, if any.
pub fn volume(
    v: &model::Volume,
    rbd_image: String,
    attachment: Option<(&model::VolumeAttachment, bool)>,
) -> pb::Volume {
    pb::Volume {
        id: v.id.to_string(),
        name: v.name.clone(),
        project: v.project.to_string(),
        size_gb: v.size_gb,
        volume_type: v.volume_type.clone().unwrap_or_default(),
        status: volume_status_name(v.status).into(),
        attached_to: v.attached_to.map(|i| i.to_string()).unwrap_or_default(),
        source_image: v.source_image.map(|i| i.to_string()).unwrap_or_default(),
        status_reason: v.status_reason.clone().unwrap_or_default(),
        created_at: ts(&v.created_at),
        rbd_image,
        serial: model::volume_serial(&v.id),
        boot: attachment.is_some_and(|(_, boot)| boot),
        delete_on_termination: attachment.is_some_and(|(a, _)| a.delete_on_termination),
        created_by: v
            .created_by
            .as_ref()
            .map(|u| u.to_string())
            .unwrap_or_default(),
        description: v.description.clone().unwrap_or_default(),
        metadata: v
            .metadata
            .iter()
            .map(|(k, x)| (k.clone(), x.clone()))
            .collect(),
        bootable: v.is_bootable(),
        read_only: v.read_only,
        image_metadata: v
            .image_metadata
            .iter()
            .map(|(k, x)| (k.clone(), x.clone()))
            .collect(),
        source_volume: v.source_volume.map(|i| i.to_string()).unwrap_or_default(),
        source_snapshot: v.source_snapshot.map(|i| i.to_string()).unwrap_or_default(),
        device: v.device.clone().unwrap_or_default(),
        status_reset: v
            .status_reset
            .as_ref()
            .filter(|_| v.status_held_by_admin(volume_status_name(v.status)))
            .map(status_reset)
            .unwrap_or_default(),
    }
}

/// "<from> -> <to> by <user> at <time>" of a status set by hand.
pub fn status_reset(r: &model::StatusReset) -> String {
    let by = r.by.as_ref().map(|u| u.to_string());
    format!(
        "{} -> {} by {} at {}",
        r.from,
        r.to,
        by.as_deref().unwrap_or("(no caller)"),
        ts(&r.at)
    )
}

/// Volume QoS to proto (absent = unlimited).
pub fn qos(q: &model::Qos) -> pb::VolumeQos {
    pb::VolumeQos {
        read_iops_sec: q.read_iops_sec,
        write_iops_sec: q.write_iops_sec,
        read_bytes_sec: q.read_bytes_sec,
        write_bytes_sec: q.write_bytes_sec,
    }
}

/// Volume type.
pub fn volume_type(t: &model::VolumeType) -> pb::VolumeType {
    pb::VolumeType {
        name: t.name.clone(),
        qos: Some(qos(&t.qos)),
        created_at: ts(&t.created_at),
    }
}

/// Volume snapshot.
pub fn volume_snapshot(s: &model::VolumeSnapshot) -> pb::VolumeSnapshot {
    pb::VolumeSnapshot {
        volume_id: s.volume.to_string(),
        name: s.name.clone(),
        project: s.project.to_string(),
        size_gb: s.size_gb,
        created_at: ts(&s.created_at),
        id: s.snapshot_id().to_string(),
        description: s.description.clone().unwrap_or_default(),
        metadata: s
            .metadata
            .iter()
            .map(|(k, x)| (k.clone(), x.clone()))
            .collect(),
        status: s.status.as_str().to_string(),
        progress: s.progress.clone().unwrap_or_default(),
        status_reset: s
            .status_reset
            .as_ref()
            .filter(|r| r.to == s.status.as_str())
            .map(status_reset)
            .unwrap_or_default(),
    }
}

/// The API form of a volume transfer (`auth_key` only when just created).
pub fn volume_transfer(t: &model::VolumeTransfer, auth_key: &str) -> pb::VolumeTransfer {
    pb::VolumeTransfer {
        id: t.id.to_string(),
        name: t.name.clone(),
        volume_id: t.volume.to_string(),
        project: t.project.to_string(),
        created_at: ts(&t.created_at),
        auth_key: auth_key.to_string(),
    }
}

/// The API form of a migration.
pub fn migration(v: &crate::operations::migrations::MigrationView) -> pb::Migration {
    use crate::operations::migrations::{mode_str, state_str};
    use nubo_common::model::MigrationPhase;
    let phase = |r: &Option<nubo_common::model::MigrationReport>| {
        r.as_ref()
            .map(|r| match r.phase {
                MigrationPhase::Prepared => "prepared",
                MigrationPhase::Running => "running",
                MigrationPhase::Migrated => "migrated",
                MigrationPhase::Failed => "failed",
            })
            .unwrap_or_default()
            .to_string()
    };
    let m = &v.migration;
    let detail = [&v.source_report, &v.destination_report]
        .into_iter()
        .flatten()
        .filter_map(|r| r.detail.clone())
        .collect::<Vec<_>>()
        .join("; ");
    pb::Migration {
        id: m.id.to_string(),
        server_id: m.instance.to_string(),
        server_name: v.server_name.clone(),
        project: v
            .project
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        source: m.source.to_string(),
        destination: m.destination.to_string(),
        mode: mode_str(m.mode).into(),
        state: state_str(v.state).into(),
        error: m.error.clone().unwrap_or_default(),
        downtime_ms: m.downtime_ms,
        postcopy: m.postcopy,
        block: m.block,
        created_at: ts(&m.created_at),
        updated_at: ts(&m.updated_at),
        source_phase: phase(&v.source_report),
        destination_phase: phase(&v.destination_report),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(dir: &str, proto: &str, min: u32, max: u32, cidr: &str) -> pb::SecurityGroupRule {
        pb::SecurityGroupRule {
            direction: dir.into(),
            protocol: proto.into(),
            port_min: min,
            port_max: max,
            remote_cidr: cidr.into(),
            ..Default::default()
        }
    }

    #[test]
    fn rules_parse_and_round_trip() {
        let m = rule_from_proto(&r("ingress", "tcp", 22, 22, "10.0.0.0/8")).unwrap();
        assert_eq!(m.ports, Some((22, 22)));
        let back = rule(&m);
        assert_eq!(back.protocol, "tcp");
        assert_eq!(back.remote_cidr, "10.0.0.0/8");
        assert_eq!((back.port_min, back.port_max), (22, 22));
    }

    #[test]
    fn numbers_stay_numbers_and_icmp_types_round_trip() {
        let udp = rule_from_proto(&r("ingress", "17", 50, 55, "")).unwrap();
        assert_eq!(udp.protocol, Protocol::Number(17));
        assert_eq!(rule(&udp).protocol, "17");
        assert_eq!(udp.ports, Some((50, 55)));
        let mut echo = r("ingress", "icmp", 0, 0, "");
        echo.icmp_type = Some(0);
        echo.icmp_code = Some(0);
        let m = rule_from_proto(&echo).unwrap();
        assert_eq!(
            m.icmp,
            Some(IcmpMatch {
                icmp_type: 0,
                code: Some(0)
            })
        );
        let back = rule(&m);
        assert_eq!((back.icmp_type, back.icmp_code), (Some(0), Some(0)));
        let mut any_code = r("ingress", "icmp", 0, 0, "");
        any_code.icmp_type = Some(11);
        let back = rule(&rule_from_proto(&any_code).unwrap());
        assert_eq!((back.icmp_type, back.icmp_code), (Some(11), None));
        let plain = rule(&rule_from_proto(&r("ingress", "icmp", 0, 0, "")).unwrap());
        assert_eq!((plain.icmp_type, plain.icmp_code), (None, None));
        for (proto, t, c) in [
            ("tcp", Some(3), None),
            ("icmp", None, Some(1)),
            ("icmp", Some(256), None),
            ("icmp", Some(3), Some(300)),
        ] {
            let mut bad = r("ingress", proto, 0, 0, "");
            bad.icmp_type = t;
            bad.icmp_code = c;
            assert!(rule_from_proto(&bad).is_err(), "{proto} {t:?} {c:?}");
        }
    }

    #[test]
    fn bad_rules_are_rejected_with_reasons() {
        assert!(rule_from_proto(&r("sideways", "", 0, 0, "")).is_err());
        assert!(rule_from_proto(&r("ingress", "icmp", 1, 2, "")).is_err());
        assert!(rule_from_proto(&r("ingress", "tcp", 100, 10, "")).is_err());
        assert!(rule_from_proto(&r("ingress", "tcp", 1, 70000, "")).is_err());
        assert!(rule_from_proto(&r("ingress", "gre?", 0, 0, "")).is_err());
        assert!(rule_from_proto(&r("ingress", "", 0, 0, "fd00::/8")).is_err());
        let mut both = r("ingress", "", 0, 0, "10.0.0.0/8");
        both.remote_group_id = SecurityGroupId::new_random().to_string();
        assert!(rule_from_proto(&both).is_err());
    }
}
