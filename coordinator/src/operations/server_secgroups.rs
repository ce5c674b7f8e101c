//! A server's security groups: the groups of its ports, added to or
//! removed from all of them at once (Nova's addSecurityGroup and
//! removeSecurityGroup). The ports change in one transaction; the agents'
//! firewalls converge on the new port specs.

use nubo_common::keys;
use nubo_common::model::Port;
use nubo_common::{ProjectId, SecurityGroupId};
use nubo_store::TxnBuilder;

use super::servers::ServerView;
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;

/// Adding or removing a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Add it to every port that lacks it.
    Add,
    /// Remove it from every port that has it.
    Remove,
}

/// The ports that change (new specs), for `change` of group `g` on
/// `ports`. Pure: errors for a server without ports, a port whose port
/// security is off (it cannot carry groups) when adding, and a group no
/// port has when removing.
pub fn plan(ports: &[Port], g: SecurityGroupId, change: Change) -> ApiResult<Vec<Port>> {
    if ports.is_empty() {
        return Err(ApiError::FailedPrecondition(
            "the server has no ports to carry security groups".into(),
        ));
    }
    let mut out = Vec::new();
    for p in ports {
        let has = p.security_groups.contains(&g);
        match change {
            Change::Add if !has => {
                if !p.port_security {
                    return Err(ApiError::FailedPrecondition(format!(
                        "port {} has port security disabled and cannot carry security groups",
                        p.id
                    )));
                }
                let mut n = p.clone();
                n.security_groups.push(g);
                out.push(n);
            }
            Change::Remove if has => {
                let mut n = p.clone();
                n.security_groups.retain(|x| *x != g);
                out.push(n);
            }
            _ => {}
        }
    }
    if change == Change::Remove && out.is_empty() {
        return Err(ApiError::InvalidArgument(format!(
            "security group {g} is not associated with the server"
        )));
    }
    Ok(out)
}

/// Adds (or removes) security group `group` (id or name) to (from) every
/// port of server `server` (id or name) of `project`; the server as it
/// is then.
pub async fn change(
    ctx: &Ctx,
    project: &ProjectId,
    server: &str,
    group: &str,
    change: Change,
) -> ApiResult<ServerView> {
    let g = super::lookup::secgroup(ctx, project, group).await?.value.id;
    for _ in 0..8 {
        let inst = super::lookup::server(ctx, project, server).await?;
        let mut ports = Vec::with_capacity(inst.value.ports.len());
        let mut t = TxnBuilder::new();
        t.unchanged(&keys::instance(&inst.value.id), inst.mod_rev);
        for id in &inst.value.ports {
            let p = super::lookup::port(ctx, project, &id.to_string()).await?;
            t.unchanged(&keys::port(&p.value.id), p.mod_rev);
            ports.push(p.value);
        }
        let changed = plan(&ports, g, change)?;
        if changed.is_empty() {
            return super::servers::get(ctx, project, &inst.value.id.to_string()).await;
        }
        for p in &changed {
            t.put(&keys::port(&p.id), p);
        }
        if ctx.store.commit(&t).await?.succeeded() {
            tracing::info!(instance = %inst.value.id, secgroup = %g, ?change, ports = changed.len(), "server security groups changed");
            return super::servers::get(ctx, project, &inst.value.id.to_string()).await;
        }
    }
    Err(ApiError::Unavailable(
        "the server's ports changed concurrently too often; retry".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_common::model;
    use nubo_common::{NetworkId, PortId};

    fn port(groups: &[SecurityGroupId]) -> Port {
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
            security_groups: groups.to_vec(),
            port_security: true,
            device: None,
            node: None,
            router: None,
            host: None,
            created_at: model::now(),
        }
    }

    #[test]
    fn groups_are_added_and_removed_on_every_port() {
        let (a, b) = (SecurityGroupId::new_random(), SecurityGroupId::new_random());
        let ports = [port(&[a]), port(&[a, b])];
        let added = plan(&ports, b, Change::Add).unwrap();
        assert_eq!(added.len(), 1);
        assert_eq!(added[0].security_groups, vec![a, b]);
        let removed = plan(&ports, a, Change::Remove).unwrap();
        assert_eq!(
            removed
                .iter()
                .map(|p| p.security_groups.clone())
                .collect::<Vec<_>>(),
            vec![vec![], vec![b]]
        );
        // Removing a group no port has is refused; adding one all have is a no-op.
        let c = SecurityGroupId::new_random();
        assert!(matches!(
            plan(&ports, c, Change::Remove),
            Err(ApiError::InvalidArgument(_))
        ));
        assert!(plan(&ports, a, Change::Add).unwrap().is_empty());
        let mut off = port(&[]);
        off.port_security = false;
        assert!(matches!(
            plan(&[off], a, Change::Add),
            Err(ApiError::FailedPrecondition(_))
        ));
        assert!(plan(&[], a, Change::Add).is_err());
    }
}
