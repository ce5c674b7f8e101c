//! A server's ports after it was created (Nova's `os-interface`): a port
//! plugged into a running or stopped server (an existing unplugged port of
//! the project, or a new one on a network) and unplugged again. The
//! instance spec and the port change in one transaction; the node's agent
//! hot-plugs or unplugs the NIC and its firewall, DHCP and anti-spoofing
//! converge on the new spec.
//!
//! A port made here for a network is owned by the server (like the ports
//! of `server create --network`): removing it or deleting the server
//! deletes it. A port passed by id is only unplugged.

use nubo_common::keys;
use nubo_common::model::{Instance, Port, QuotaUsage};
use nubo_common::{InstanceId, ProjectId};
use nubo_store::TxnBuilder;

use super::ports::NewPort;
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;

/// The most ports a server has.
pub const MAX_SERVER_PORTS: usize = 16;

/// What to plug into a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plug {
    /// An existing, unplugged port of the project (id or name).
    Port(String),
    /// A new port on a network (id or name), at `fixed_ip` if not empty.
    Network {
        /// The network.
        network: String,
        /// Its address; empty: allocated.
        fixed_ip: String,
    },
}

/// The server and port after plugging `port` into `inst`. Pure: refuses a
/// port that cannot be plugged ([`super::ports::check_pluggable`]: plugged
/// anywhere, a router's interface, without an address) and a server that has
/// [`MAX_SERVER_PORTS`] already.
pub fn plug(inst: &Instance, port: &Port) -> ApiResult<(Instance, Port)> {
    super::ports::check_pluggable(port)?;
    if inst.ports.contains(&port.id) {
        return Err(ApiError::FailedPrecondition(format!(
            "port {} is already plugged into server {}",
            port.id, inst.id
        )));
    }
    if inst.ports.len() >= MAX_SERVER_PORTS {
        return Err(ApiError::ResourceExhausted(format!(
            "server {} has {MAX_SERVER_PORTS} ports, the most a server can have",
            inst.id
        )));
    }
    super::ports::check_pluggable_on(port, inst.node.as_ref())?;
    let mut i = inst.clone();
    i.ports.push(port.id);
    let mut p = port.clone();
    p.device = Some(inst.id);
    p.node = inst.node.clone();
    // Plugged, its binding follows the server (as Nova's replaces it).
    p.host = None;
    Ok((i, p))
}

/// The server without `port`. Pure: refuses a port the server does not
/// have.
pub fn unplug(inst: &Instance, port: &Port) -> ApiResult<Instance> {
    if !inst.ports.contains(&port.id) {
        return Err(ApiError::NotFound(format!(
            "port {} is not plugged into server {}",
            port.id, inst.id
        )));
    }
    let mut i = inst.clone();
    i.ports.retain(|p| *p != port.id);
    Ok(i)
}

/// Plugs `what` into server `server` (id or name) of `project`; the port.
pub async fn add(ctx: &Ctx, project: &ProjectId, server: &str, what: Plug) -> ApiResult<Port> {
    // Checked before a port is made for it.
    let inst = super::lookup::server(ctx, project, server).await?;
    check_changeable(ctx, &inst.value).await?;
    match what {
        Plug::Port(r) => {
            let p = super::lookup::port(ctx, project, &r).await?;
            plug_port(ctx, project, &inst.value.id, &p.value.id.to_string(), false).await
        }
        Plug::Network { network, fixed_ip } => {
            let new = super::ports::create(
                ctx,
                project,
                NewPort {
                    network,
                    ip: fixed_ip,
                    ..NewPort::default()
                },
            )
            .await?;
            let id = new.id.to_string();
            match plug_port(ctx, project, &inst.value.id, &id, true).await {
                Ok(p) => Ok(p),
                Err(e) => {
                    if let Err(cleanup) = super::ports::delete(ctx, project, &id).await {
                        tracing::warn!(port = %id, error = %cleanup, "could not delete the port made for a failed plug");
                    }
                    Err(e)
                }
            }
        }
    }
}

async fn check_changeable(ctx: &Ctx, inst: &Instance) -> ApiResult<()> {
    super::servers::ensure_unlocked(inst)?;
    super::migrations::ensure_not_migrating(ctx, inst).await
}

/// Plugs port `port` into instance `id` in one transaction (the port
/// owned by the server when `owned`).
async fn plug_port(
    ctx: &Ctx,
    project: &ProjectId,
    id: &InstanceId,
    port: &str,
    owned: bool,
) -> ApiResult<Port> {
    for _ in 0..16 {
        let inst = super::lookup::server(ctx, project, &id.to_string()).await?;
        check_changeable(ctx, &inst.value).await?;
        let p = super::lookup::port(ctx, project, port).await?;
        let (ni, np) = plug(&inst.value, &p.value)?;
        let mut t = TxnBuilder::new();
        t.unchanged(&keys::instance(&ni.id), inst.mod_rev);
        t.absent(&keys::instance_migration(&ni.id));
        t.unchanged(&keys::port(&np.id), p.mod_rev);
        super::specs::put_into(&mut t, &ni);
        t.put(&keys::port(&np.id), &np);
        if owned {
            t.put(&keys::port_owner(&np.id), &ni.id);
        }
        if ctx.store.commit(&t).await?.succeeded() {
            tracing::info!(instance = %ni.id, port = %np.id, network = %np.network, ip = ?np.ip, "port plugged into server");
            return Ok(np);
        }
    }
    Err(ApiError::Unavailable(
        "the server or port changed concurrently too often; retry".into(),
    ))
}

/// Unplugs port `port` (id or name) from server `server` (id or name) of
/// `project`: deleted (address, MAC and quota released, floating IPs
/// disassociated) when the server owns it, else kept unplugged.
pub async fn remove(ctx: &Ctx, project: &ProjectId, server: &str, port: &str) -> ApiResult<()> {
    for _ in 0..16 {
        let inst = super::lookup::server(ctx, project, server).await?;
        check_changeable(ctx, &inst.value).await?;
        let p = super::lookup::port(ctx, project, port).await?;
        let ni = unplug(&inst.value, &p.value)?;
        let owner_key = keys::port_owner(&p.value.id);
        let owner = ctx.store.read::<InstanceId>(&owner_key).await?;
        let mut t = TxnBuilder::new();
        t.unchanged(&keys::instance(&ni.id), inst.mod_rev);
        t.absent(&keys::instance_migration(&ni.id));
        t.unchanged(&keys::port(&p.value.id), p.mod_rev);
        super::specs::put_into(&mut t, &ni);
        let owned = match &owner {
            Some(o) => {
                t.unchanged(&owner_key, o.mod_rev);
                o.value == ni.id
            }
            None => {
                t.absent(&owner_key);
                false
            }
        };
        if owned {
            super::ports::release_port(&p.value, &mut t);
            super::ports::disassociate_ports_into(ctx, &[p.value.id], &mut t).await?;
            let delta = QuotaUsage {
                ports: 1,
                ..Default::default()
            };
            super::quotas::release(ctx, &mut t, &p.value.project, &delta).await?;
        } else {
            let mut np = p.value.clone();
            np.device = None;
            np.node = None;
            t.put(&keys::port(&np.id), &np);
        }
        if ctx.store.commit(&t).await?.succeeded() {
            tracing::info!(instance = %ni.id, port = %p.value.id, deleted = owned, "port unplugged from server");
            return Ok(());
        }
    }
    Err(ApiError::Unavailable(
        "the server or port changed concurrently too often; retry".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_common::model;
    use nubo_common::{NetworkId, PortId};

    fn port() -> Port {
        Port {
            id: PortId::new_random(),
            name: String::new(),
            description: String::new(),
            admin_state_up: true,
            project: "p".parse().unwrap(),
            network: NetworkId::new_random(),
            mac: "fa:16:3e:00:00:01".parse().unwrap(),
            ip: Some("10.0.0.5".parse().unwrap()),
            more_ips: Vec::new(),
            security_groups: Vec::new(),
            port_security: true,
            device: None,
            node: None,
            router: None,
            host: None,
            created_at: model::now(),
        }
    }

    fn instance() -> Instance {
        serde_json::from_value(serde_json::json!({
            "id": InstanceId::new_random(),
            "name": "web",
            "project": "p",
            "flavor": "small",
            "resources": {"vcpus": 1, "ram_mb": 128, "disk_gb": 1},
            "image": nubo_common::ImageId::new_random(),
            "ports": [PortId::new_random()],
            "power": "running",
            "node": "hv-1",
            "created_at": model::now(),
        }))
        .unwrap()
    }

    #[test]
    fn a_port_is_plugged_at_the_end_and_unplugged_again() {
        let inst = instance();
        let p = port();
        let (i2, p2) = plug(&inst, &p).unwrap();
        assert_eq!(i2.ports.last(), Some(&p.id));
        assert_eq!(p2.device, Some(inst.id));
        assert_eq!(p2.node, inst.node);
        // Plugged now: refused, here or elsewhere.
        assert!(matches!(
            plug(&i2, &p2),
            Err(ApiError::FailedPrecondition(_))
        ));
        let back = unplug(&i2, &p2).unwrap();
        assert_eq!(back.ports, inst.ports);
        // A port the server does not have is not found.
        assert!(matches!(unplug(&inst, &p), Err(ApiError::NotFound(_))));
        // The cap.
        let mut full = inst.clone();
        full.ports = (0..MAX_SERVER_PORTS)
            .map(|_| PortId::new_random())
            .collect();
        assert!(matches!(
            plug(&full, &p),
            Err(ApiError::ResourceExhausted(_))
        ));
        // A port without an address, or a router's interface: refused.
        for bad in [
            Port {
                ip: None,
                ..p.clone()
            },
            Port {
                router: Some(nubo_common::RouterId::new_random()),
                ..p.clone()
            },
        ] {
            assert!(matches!(
                plug(&inst, &bad),
                Err(ApiError::FailedPrecondition(_))
            ));
        }
    }

    #[test]
    fn a_port_bound_to_a_host_is_plugged_only_on_that_node() {
        let inst = instance();
        let node = |n: &str| Some(nubo_common::NodeName::new(n).unwrap());
        let elsewhere = Port {
            host: node("hv-2"),
            ..port()
        };
        match plug(&inst, &elsewhere) {
            Err(ApiError::FailedPrecondition(m)) => assert!(m.contains("hv-2"), "{m}"),
            other => panic!("{other:?}"),
        }
        let unplaced = Instance {
            node: None,
            ..inst.clone()
        };
        assert!(matches!(
            plug(&unplaced, &elsewhere),
            Err(ApiError::FailedPrecondition(_))
        ));
        // On its host: plugged, the binding now follows the server.
        let here = Port {
            host: node("hv-1"),
            ..port()
        };
        let (_, p2) = plug(&inst, &here).unwrap();
        assert_eq!((p2.node, p2.host), (node("hv-1"), None));
    }
}
