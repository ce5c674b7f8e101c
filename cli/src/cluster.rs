//! `nubo cluster …`: the coordinators' view of the cluster (leader,
//! automatic evacuation switch) and the evacuation switch itself.

use anyhow::Result;
use clap::Subcommand;
use nubo_common::proto::{ClusterStatus, Empty, SetEvacuationEnabledRequest};
use serde_json::{json, Value};

use crate::api::Call;
use crate::ctx::{opt, Ctx};
use crate::output;

/// Cluster commands.
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// The answering coordinator, the leader and the evacuation switch.
    Status,
    /// The cluster-wide switch of automatic evacuation of failed nodes.
    #[command(subcommand)]
    Evacuation(EvacuationCmd),
}

/// `nubo cluster evacuation …`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum EvacuationCmd {
    /// Failed nodes' instances are moved automatically (the default).
    Enable,
    /// Failed nodes are still fenced, but nothing moves until enabled again.
    Disable,
}

/// The API request of `cluster evacuation enable|disable`.
pub fn evacuation_request(c: EvacuationCmd) -> SetEvacuationEnabledRequest {
    SetEvacuationEnabledRequest {
        enabled: c == EvacuationCmd::Enable,
    }
}

/// The JSON (and table) form of the cluster status.
pub fn status_json(s: &ClusterStatus) -> Value {
    json!({
        "coordinator_id": s.coordinator_id,
        "is_leader": s.is_leader,
        "leader_id": opt(&s.leader_id),
        "version": s.version,
        "evacuation_enabled": s.evacuation_enabled,
    })
}

/// Runs a cluster command.
pub async fn run(cmd: ClusterCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    match cmd {
        ClusterCmd::Status => {
            let s = api.cluster().status(Empty {}).await.or_fail(api)?;
            output::show(ctx.format, &status_json(&s))
        }
        ClusterCmd::Evacuation(c) => {
            let r = api
                .nodes()
                .set_evacuation_enabled(evacuation_request(c))
                .await
                .or_fail(api)?;
            output::show(ctx.format, &json!({ "evacuation_enabled": r.enabled }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ClusterCmd, clap::Error> {
        crate::testutil::parse_cmd(args)
    }

    #[test]
    fn evacuation_switch_maps_to_enabled() {
        for (word, enabled) in [("enable", true), ("disable", false)] {
            match parse(&["evacuation", word]).unwrap() {
                ClusterCmd::Evacuation(c) => assert_eq!(evacuation_request(c).enabled, enabled),
                other => panic!("{other:?}"),
            }
        }
        assert!(parse(&["evacuation", "maybe"]).is_err());
        assert!(parse(&["evacuation"]).is_err());
        assert!(matches!(parse(&["status"]).unwrap(), ClusterCmd::Status));
    }

    #[test]
    fn status_shows_leader_and_switch() {
        let v = status_json(&ClusterStatus {
            coordinator_id: "c2".into(),
            is_leader: false,
            leader_id: "c1".into(),
            version: "0.1.0".into(),
            evacuation_enabled: false,
        });
        assert_eq!(v["leader_id"], "c1");
        assert_eq!(v["evacuation_enabled"], false);
        let none = status_json(&ClusterStatus::default());
        assert!(none["leader_id"].is_null());
    }
}
