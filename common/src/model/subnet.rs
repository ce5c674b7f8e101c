//! The subnets of a network and the fixed addresses of a port.
//!
//! A network keeps its first subnet in its own fields (`cidr`, `gateway`,
//! `dns`, `subnet_name`, …; id `subnet_id`, else the network's id), as every
//! network did before it could hold several: values written then load
//! unchanged, and readers that need only the first subnet (external
//! networks, router legs) keep reading those fields. Further subnets sit in
//! `more_subnets`. [`Network::subnets`] and [`Network::set_subnets`] convert
//! between that stored shape and the list every other reader uses. A port
//! likewise keeps its first address in `ip` and further ones in `more_ips`
//! ([`Port::ips`]).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{HostRoute, Network, Port};
use crate::SubnetId;

/// One IPv4 subnet of a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    /// Id (the first subnet of a network made before several subnets has
    /// the network's id).
    pub id: SubnetId,
    /// Its name, if it was given one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The address range.
    pub cidr: Ipv4Net,
    /// Default gateway handed out by DHCP, if any.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers handed out by DHCP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<Ipv4Addr>,
    /// No node answers DHCP for addresses of this subnet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dhcp_disabled: bool,
    /// Static routes handed to guests by DHCP (option 121).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_routes: Vec<HostRoute>,
    /// The ranges (first, last) IPAM allocates from; empty = every host
    /// address but the gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocation_pools: Vec<(Ipv4Addr, Ipv4Addr)>,
}

impl Network {
    /// The id of the subnet stored in the network's own fields.
    pub fn first_subnet_id(&self) -> SubnetId {
        self.subnet_id
            .unwrap_or_else(|| SubnetId::from_uuid(*self.id.as_uuid()))
    }

    /// Every subnet of the network, the first one first.
    pub fn subnets(&self) -> Vec<Subnet> {
        let first = self.cidr.map(|cidr| Subnet {
            id: self.first_subnet_id(),
            name: self.subnet_name.clone(),
            cidr,
            gateway: self.gateway,
            dns: self.dns.clone(),
            dhcp_disabled: self.dhcp_disabled,
            host_routes: self.host_routes.clone(),
            allocation_pools: self.allocation_pools.clone(),
        });
        first
            .into_iter()
            .chain(self.more_subnets.iter().cloned())
            .collect()
    }

    /// Stores `subnets` (the first one in the network's own fields); an
    /// empty list leaves the network without a subnet.
    pub fn set_subnets(&mut self, subnets: Vec<Subnet>) {
        let own = SubnetId::from_uuid(*self.id.as_uuid());
        let mut it = subnets.into_iter();
        let first = it.next();
        self.subnet_id = first.as_ref().map(|s| s.id).filter(|id| *id != own);
        self.cidr = first.as_ref().map(|s| s.cidr);
        self.gateway = first.as_ref().and_then(|s| s.gateway);
        self.subnet_name = first.as_ref().and_then(|s| s.name.clone());
        self.dhcp_disabled = first.as_ref().is_some_and(|s| s.dhcp_disabled);
        let first = first.unwrap_or_else(|| Subnet {
            id: own,
            name: None,
            cidr: Ipv4Net::default(),
            gateway: None,
            dns: Vec::new(),
            dhcp_disabled: false,
            host_routes: Vec::new(),
            allocation_pools: Vec::new(),
        });
        self.dns = first.dns;
        self.host_routes = first.host_routes;
        self.allocation_pools = first.allocation_pools;
        self.more_subnets = it.collect();
    }

    /// Its subnet `id`, if it has one.
    pub fn subnet(&self, id: &SubnetId) -> Option<Subnet> {
        self.subnets().into_iter().find(|s| s.id == *id)
    }

    /// The subnet holding address `ip` (subnets of one network never
    /// overlap; the first match of a hand-edited value wins).
    pub fn subnet_of_ip(&self, ip: Ipv4Addr) -> Option<Subnet> {
        self.subnets().into_iter().find(|s| s.cidr.contains(&ip))
    }
}

impl Port {
    /// Every fixed address of the port, `ip` first.
    pub fn ips(&self) -> Vec<Ipv4Addr> {
        self.ip
            .into_iter()
            .chain(self.more_ips.iter().copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A network value written before several subnets existed.
    const OLD: &str = r#"{"id":"0b6f4f4e-7c1e-4d5a-9a53-4c3f2d1e0a11","name":"n","project":"p",
        "cidr":"10.0.0.0/24","gateway":"10.0.0.1","vni":7,"dns":["10.0.0.53"],
        "created_at":"2026-01-01T00:00:00Z"}"#;

    #[test]
    fn an_old_network_has_one_subnet_with_its_id_and_round_trips() {
        let n: Network = serde_json::from_str(OLD).unwrap();
        let s = n.subnets();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].id.to_string(), n.id.to_string());
        assert_eq!(s[0].gateway, Some("10.0.0.1".parse().unwrap()));
        let mut m = n.clone();
        m.set_subnets(s);
        assert_eq!(m, n, "set_subnets(subnets()) changes nothing");
        let json = serde_json::to_value(&n).unwrap();
        assert!(json.get("more_subnets").is_none() && json.get("subnet_id").is_none());
    }

    #[test]
    fn subnets_are_added_found_and_removed_keeping_their_ids() {
        let mut n: Network = serde_json::from_str(OLD).unwrap();
        let second = Subnet {
            id: SubnetId::new_random(),
            name: Some("s2".into()),
            cidr: "10.1.0.0/24".parse().unwrap(),
            gateway: None,
            dns: Vec::new(),
            dhcp_disabled: true,
            host_routes: Vec::new(),
            allocation_pools: Vec::new(),
        };
        let mut all = n.subnets();
        all.push(second.clone());
        n.set_subnets(all);
        assert_eq!(n.subnets().len(), 2);
        assert_eq!(
            n.subnet_of_ip("10.1.0.9".parse().unwrap()),
            Some(second.clone())
        );
        assert_eq!(n.subnet(&second.id), Some(second.clone()));
        assert!(n.subnet_of_ip("10.2.0.9".parse().unwrap()).is_none());
        // The first goes: the second moves into the network's own fields
        // and keeps its id.
        n.set_subnets(vec![second.clone()]);
        assert_eq!(n.cidr, Some(second.cidr));
        assert_eq!(n.subnets(), vec![second]);
        let back: Network = serde_json::from_value(serde_json::to_value(&n).unwrap()).unwrap();
        assert_eq!(back, n);
        n.set_subnets(Vec::new());
        assert!(n.cidr.is_none() && n.subnets().is_empty() && n.dns.is_empty());
    }
}
