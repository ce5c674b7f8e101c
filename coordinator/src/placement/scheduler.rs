//! Pure placement logic: filter the nodes that can take an instance, then
//! weigh them. The reservation itself is an etcd transaction (see `servers`).

use std::collections::HashSet;

use nubo_common::model::{
    Node, NodeAdmin, NodeHealth, NodeHealthState, NodeUsage, Resources, ServerGroupPolicy,
};
use nubo_common::NodeName;

use crate::config::Placement;

/// What the coordinator knows about one node (fed by the etcd watch).
#[derive(Debug, Clone, Default)]
pub struct NodeState {
    /// `/nodes/<n>`, when registered and readable.
    pub info: Option<Node>,
    /// `/nodes/<n>/alive` exists.
    pub alive: bool,
    /// `/nodes/<n>/admin` (default: enabled).
    pub admin: NodeAdmin,
    /// `/nodes/<n>/usage` (default: nothing used).
    pub usage: NodeUsage,
    /// mod_revision of the usage key; 0 when absent.
    pub usage_rev: i64,
    /// The usage key holds a value that does not decode: never place there
    /// (a transaction would overwrite what an operator must look at).
    pub usage_corrupt: bool,
    /// `/nodes/<n>/health` (failure handling), when written.
    pub health: Option<NodeHealth>,
}

impl NodeState {
    /// The node is fenced or evacuated: nothing is placed there until the
    /// leader has marked it `up` again (and unfenced it).
    pub fn fenced(&self) -> bool {
        self.health.as_ref().is_some_and(|h| {
            matches!(
                h.state,
                NodeHealthState::Fenced | NodeHealthState::Evacuated
            )
        })
    }
}

/// Overcommit ratios.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratios {
    /// vCPU ratio.
    pub cpu: f64,
    /// Memory ratio.
    pub ram: f64,
    /// Disk ratio.
    pub disk: f64,
}

impl Ratios {
    /// The capacity a node offers under these ratios.
    pub fn effective(&self, cap: Resources) -> Resources {
        // Float to integer casts saturate; capacities are far below 2^52.
        Resources {
            vcpus: (f64::from(cap.vcpus) * self.cpu).floor() as u32,
            ram_mb: (cap.ram_mb as f64 * self.ram).floor() as u64,
            disk_gb: (cap.disk_gb as f64 * self.disk).floor() as u64,
        }
    }
}

impl NodeState {
    /// Free resources under the ratios (zero when unregistered).
    pub fn free(&self, ratios: &Ratios) -> Resources {
        match &self.info {
            Some(n) => ratios.effective(n.capacity).saturating_sub(self.usage.used),
            None => Resources::default(),
        }
    }
}

/// Server-group constraint of a request.
#[derive(Debug, Clone, Copy)]
pub struct GroupConstraint<'a> {
    /// The policy.
    pub policy: ServerGroupPolicy,
    /// Nodes that already hold members.
    pub member_nodes: &'a HashSet<NodeName>,
}

/// One placement request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Resources to reserve.
    pub resources: Resources,
    /// Required availability zone.
    pub availability_zone: Option<&'a str>,
    /// Server-group constraint.
    pub group: Option<GroupConstraint<'a>>,
    /// Node constraints of the request's scheduler hints.
    pub hosts: HostHints<'a>,
}

/// Node constraints from scheduler hints (OpenStack `same_host` /
/// `different_host`): the nodes of the servers listed; a port bound to a
/// host by an admin (`binding:host_id`) narrows `same` to that node.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostHints<'a> {
    /// Only these nodes (`same_host`: a node holding one of the listed
    /// servers; empty set: none qualifies). `None`: no such hint.
    pub same: Option<&'a HashSet<NodeName>>,
    /// Never these nodes (`different_host`).
    pub different: Option<&'a HashSet<NodeName>>,
}

impl HostHints<'_> {
    /// True when `node` violates a hint. Pure.
    pub fn excludes(&self, node: &NodeName) -> bool {
        self.same.is_some_and(|s| !s.contains(node))
            || self.different.is_some_and(|d| d.contains(node))
    }
}

/// Why no node qualified, by filter (for the error message).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rejections {
    /// Nodes seen.
    pub total: usize,
    /// Not registered / unreadable usage.
    pub unusable: usize,
    /// No `alive` key.
    pub dead: usize,
    /// Disabled by an operator.
    pub disabled: usize,
    /// Other availability zone.
    pub zone: usize,
    /// Violates the server group policy.
    pub group: usize,
    /// Excluded by a `same_host` / `different_host` hint.
    pub hints: usize,
    /// Not enough free vCPU / RAM / disk.
    pub capacity: usize,
}

impl Rejections {
    /// A sentence explaining why nothing qualified.
    pub fn explain(&self, req: &Request<'_>) -> String {
        let r = req.resources;
        let mut s = format!(
            "no capacity: no node can take {} vCPUs, {} MiB RAM and {} GiB disk",
            r.vcpus, r.ram_mb, r.disk_gb
        );
        let mut why = Vec::new();
        for (n, what) in [
            (self.dead, "not alive"),
            (self.disabled, "disabled"),
            (self.zone, "in another availability zone"),
            (self.group, "excluded by the server group policy"),
            (
                self.hints,
                "excluded by the same_host/different_host hint or a port's binding:host_id",
            ),
            (self.capacity, "full"),
            (self.unusable, "unusable (unregistered or unreadable usage)"),
        ] {
            if n > 0 {
                why.push(format!("{n} {what}"));
            }
        }
        if self.total == 0 {
            s.push_str(" (no nodes are registered)");
        } else {
            s.push_str(&format!(" ({} nodes: {})", self.total, why.join(", ")));
        }
        s
    }
}

/// Filters `nodes` for `req` and returns up to `top` qualifying nodes, best
/// first (spread: most free RAM first; pack: least free RAM first), or the
/// rejection counts when none qualifies.
pub fn candidates<'n>(
    nodes: impl Iterator<Item = (&'n NodeName, &'n NodeState)>,
    req: &Request<'_>,
    ratios: &Ratios,
    placement: Placement,
    exclude: &HashSet<NodeName>,
    top: usize,
) -> Result<Vec<NodeName>, Rejections> {
    let mut rej = Rejections::default();
    let mut ok: Vec<(u64, &NodeName)> = Vec::new();
    for (name, st) in nodes {
        rej.total += 1;
        let Some(info) = &st.info else {
            rej.unusable += 1;
            continue;
        };
        if st.usage_corrupt {
            rej.unusable += 1;
        } else if !st.alive || st.fenced() {
            rej.dead += 1;
        } else if !st.admin.enabled {
            rej.disabled += 1;
        } else if req
            .availability_zone
            .is_some_and(|az| az != info.availability_zone)
        {
            rej.zone += 1;
        } else if req.group.is_some_and(|g| match g.policy {
            ServerGroupPolicy::Affinity => {
                !g.member_nodes.is_empty() && !g.member_nodes.contains(name)
            }
            ServerGroupPolicy::AntiAffinity => g.member_nodes.contains(name),
        }) {
            rej.group += 1;
        } else if req.hosts.excludes(name) {
            rej.hints += 1;
        } else {
            let free = st.free(ratios);
            if req.resources.fits_in(&free) {
                ok.push((free.ram_mb, name));
            } else {
                rej.capacity += 1;
            }
        }
    }
    if ok.is_empty() {
        return Err(rej);
    }
    let key = |e: &(u64, &NodeName)| match placement {
        Placement::Spread => std::cmp::Reverse(e.0),
        Placement::Pack => std::cmp::Reverse(u64::MAX - e.0),
    };
    // Excluded nodes are dropped after ranking (hashing every node name
    // against `exclude` would dominate the cost with 1000s of nodes): rank
    // `top + |exclude|`, which leaves `top` non-excluded ones whenever
    // that many exist.
    let top = top.max(1);
    let want = top.saturating_add(exclude.len()).min(ok.len());
    if want < ok.len() {
        ok.select_nth_unstable_by_key(want - 1, key);
        ok.truncate(want);
    }
    ok.sort_by_key(key);
    let fit = ok.len();
    let names: Vec<NodeName> = ok
        .into_iter()
        .filter(|(_, n)| exclude.is_empty() || !exclude.contains(*n))
        .take(top)
        .map(|(_, n)| n.clone())
        .collect();
    if names.is_empty() {
        // Every fitting node was excluded (all were ranked, see above).
        rej.capacity += fit;
        return Err(rej);
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn node(name: &str, vcpus: u32, ram: u64, used_ram: u64, az: &str) -> (NodeName, NodeState) {
        let n = NodeName::new(name).unwrap();
        let st = NodeState {
            info: Some(Node {
                name: n.clone(),
                underlay_ip: "10.0.0.1".parse().unwrap(),
                underlay_mtu: 1500,
                availability_zone: az.into(),
                labels: BTreeMap::new(),
                capacity: Resources {
                    vcpus,
                    ram_mb: ram,
                    disk_gb: 100,
                },
                agent_version: String::new(),
                registered_at: nubo_common::model::now(),
            }),
            alive: true,
            admin: NodeAdmin::default(),
            usage: NodeUsage {
                used: Resources {
                    vcpus: 0,
                    ram_mb: used_ram,
                    disk_gb: 0,
                },
                instances: 0,
            },
            usage_rev: 0,
            usage_corrupt: false,
            health: None,
        };
        (n, st)
    }

    const R: Ratios = Ratios {
        cpu: 4.0,
        ram: 1.0,
        disk: 1.0,
    };

    fn req(ram: u64) -> Request<'static> {
        Request {
            resources: Resources {
                vcpus: 1,
                ram_mb: ram,
                disk_gb: 10,
            },
            availability_zone: None,
            group: None,
            hosts: HostHints::default(),
        }
    }

    fn names(v: &[NodeName]) -> Vec<&str> {
        v.iter().map(NodeName::as_str).collect()
    }

    #[test]
    fn spread_prefers_free_ram_and_pack_the_opposite() {
        let nodes: BTreeMap<_, _> = [
            node("a", 4, 8192, 4096, "nova"),
            node("b", 4, 8192, 0, "nova"),
            node("c", 4, 8192, 6000, "nova"),
        ]
        .into();
        let none = HashSet::new();
        let s = candidates(nodes.iter(), &req(1024), &R, Placement::Spread, &none, 10).unwrap();
        assert_eq!(names(&s), ["b", "a", "c"]);
        let p = candidates(nodes.iter(), &req(1024), &R, Placement::Pack, &none, 10).unwrap();
        assert_eq!(names(&p), ["c", "a", "b"]);
        let top1 = candidates(nodes.iter(), &req(1024), &R, Placement::Spread, &none, 1).unwrap();
        assert_eq!(names(&top1), ["b"]);
    }

    #[test]
    fn filters_dead_disabled_zone_full_and_explains() {
        let mut dead = node("dead", 4, 8192, 0, "nova");
        dead.1.alive = false;
        let mut off = node("off", 4, 8192, 0, "nova");
        off.1.admin.enabled = false;
        let mut fenced = node("fenced", 4, 8192, 0, "nova");
        fenced.1.health = Some(nubo_common::model::NodeHealth {
            state: NodeHealthState::Fenced,
            since: nubo_common::model::now(),
            reason: String::new(),
        });
        let nodes: BTreeMap<_, _> = [
            dead,
            off,
            fenced,
            node("az2", 4, 8192, 0, "other"),
            node("full", 4, 8192, 8000, "nova"),
            node("ok", 4, 8192, 0, "nova"),
        ]
        .into();
        let none = HashSet::new();
        let mut r = req(1024);
        r.availability_zone = Some("nova");
        let s = candidates(nodes.iter(), &r, &R, Placement::Spread, &none, 10).unwrap();
        assert_eq!(names(&s), ["ok"]);
        let excl: HashSet<_> = [NodeName::new("ok").unwrap()].into();
        let rej = candidates(nodes.iter(), &r, &R, Placement::Spread, &excl, 10).unwrap_err();
        assert_eq!(
            rej,
            Rejections {
                total: 6,
                unusable: 0,
                dead: 2,
                disabled: 1,
                zone: 1,
                group: 0,
                hints: 0,
                capacity: 2
            }
        );
        let msg = rej.explain(&r);
        assert!(msg.starts_with("no capacity"), "{msg}");
        assert!(msg.contains("2 not alive"), "{msg}");
    }

    #[test]
    fn overcommit_ratios_apply() {
        let nodes: BTreeMap<_, _> = [node("a", 2, 8192, 0, "nova")].into();
        let none = HashSet::new();
        let mut r = req(1024);
        r.resources.vcpus = 8;
        assert!(candidates(nodes.iter(), &r, &R, Placement::Spread, &none, 10).is_ok());
        r.resources.vcpus = 9;
        assert!(candidates(nodes.iter(), &r, &R, Placement::Spread, &none, 10).is_err());
    }

    #[test]
    fn same_host_and_different_host_hints() {
        let nodes: BTreeMap<_, _> = [
            node("a", 4, 8192, 0, "nova"),
            node("b", 4, 8192, 0, "nova"),
            node("c", 4, 8192, 0, "nova"),
        ]
        .into();
        let none = HashSet::new();
        let a: HashSet<_> = [NodeName::new("a").unwrap()].into();
        let ab: HashSet<_> = [NodeName::new("a").unwrap(), NodeName::new("b").unwrap()].into();
        let mut r = req(1024);
        // same_host: only the nodes of the listed servers.
        r.hosts.same = Some(&ab);
        let mut s = candidates(nodes.iter(), &r, &R, Placement::Spread, &none, 10).unwrap();
        s.sort();
        assert_eq!(names(&s), ["a", "b"]);
        // different_host too: what is left of both.
        r.hosts.different = Some(&a);
        let s = candidates(nodes.iter(), &r, &R, Placement::Spread, &none, 10).unwrap();
        assert_eq!(names(&s), ["b"]);
        // different_host alone: any other node.
        r.hosts.same = None;
        let mut s = candidates(nodes.iter(), &r, &R, Placement::Spread, &none, 10).unwrap();
        s.sort();
        assert_eq!(names(&s), ["b", "c"]);
        // Contradicting hints: nothing, and the message says why.
        r.hosts.same = Some(&a);
        let rej = candidates(nodes.iter(), &r, &R, Placement::Spread, &none, 10).unwrap_err();
        assert_eq!(rej.hints, 3);
        assert!(
            rej.explain(&r)
                .contains("3 excluded by the same_host/different_host hint"),
            "{}",
            rej.explain(&r)
        );
        // same_host of servers placed nowhere: no node qualifies.
        let empty = HashSet::new();
        r.hosts = HostHints {
            same: Some(&empty),
            different: None,
        };
        assert!(candidates(nodes.iter(), &r, &R, Placement::Spread, &none, 10).is_err());
    }

    #[test]
    fn server_group_policies() {
        let nodes: BTreeMap<_, _> =
            [node("a", 4, 8192, 0, "nova"), node("b", 4, 8192, 0, "nova")].into();
        let none = HashSet::new();
        let members: HashSet<_> = [NodeName::new("a").unwrap()].into();
        let mut r = req(1024);
        r.group = Some(GroupConstraint {
            policy: ServerGroupPolicy::Affinity,
            member_nodes: &members,
        });
        let s = candidates(nodes.iter(), &r, &R, Placement::Spread, &none, 10).unwrap();
        assert_eq!(names(&s), ["a"]);
        r.group = Some(GroupConstraint {
            policy: ServerGroupPolicy::AntiAffinity,
            member_nodes: &members,
        });
        let s = candidates(nodes.iter(), &r, &R, Placement::Spread, &none, 10).unwrap();
        assert_eq!(names(&s), ["b"]);
        let empty = HashSet::new();
        r.group = Some(GroupConstraint {
            policy: ServerGroupPolicy::Affinity,
            member_nodes: &empty,
        });
        assert_eq!(
            candidates(nodes.iter(), &r, &R, Placement::Spread, &none, 10)
                .unwrap()
                .len(),
            2
        );
    }
}
