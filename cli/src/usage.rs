//! The `observed_usage` field of `server show` and `node show`: real usage
//! measured by the node's agent over its last collection period (rates
//! from two readings), `null` until the agent published some.

use nubo_common::proto as pb;
use serde_json::{json, Value};

/// Rounded to two decimals (what a person reads; JSON keeps it a number).
fn r2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// A server's usage.
pub fn server_json(u: Option<&pb::ServerUsage>) -> Value {
    let Some(u) = u else {
        return Value::Null;
    };
    json!({
        "cpu_percent": u.cpu_percent.map(r2),
        "memory_used_bytes": u.memory_used_bytes,
        "memory_available_bytes": u.memory_available_bytes,
        "disk_read_bytes_per_sec": r2(u.disk_read_bytes_per_sec),
        "disk_write_bytes_per_sec": r2(u.disk_write_bytes_per_sec),
        "net_rx_bytes_per_sec": r2(u.net_rx_bytes_per_sec),
        "net_tx_bytes_per_sec": r2(u.net_tx_bytes_per_sec),
        "measured_at": u.measured_at,
    })
}

/// A node's usage.
pub fn node_json(u: Option<&pb::NodeObservedUsage>) -> Value {
    let Some(u) = u else {
        return Value::Null;
    };
    json!({
        "cpu_percent": u.cpu_percent.map(r2),
        "cpus": u.cpus,
        "memory_used_bytes": u.memory_used_bytes,
        "memory_total_bytes": u.memory_total_bytes,
        "disk_used_bytes": u.disk_used_bytes,
        "disk_total_bytes": u.disk_total_bytes,
        "instances": u.instances,
        "measured_at": u.measured_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_usage_is_null_present_usage_is_rounded() {
        assert_eq!(server_json(None), Value::Null);
        assert_eq!(node_json(None), Value::Null);
        let s = server_json(Some(&pb::ServerUsage {
            cpu_percent: Some(12.3456),
            memory_used_bytes: Some(5),
            disk_read_bytes_per_sec: 1.005,
            measured_at: "t".into(),
            ..Default::default()
        }));
        assert_eq!(s["cpu_percent"], json!(12.35));
        assert_eq!(s["memory_used_bytes"], json!(5));
        assert_eq!(s["memory_available_bytes"], Value::Null);
        assert_eq!(s["measured_at"], "t");
        let n = node_json(Some(&pb::NodeObservedUsage {
            cpu_percent: None,
            cpus: 2,
            memory_total_bytes: 9,
            ..Default::default()
        }));
        assert_eq!(n["cpu_percent"], Value::Null);
        assert_eq!(
            (n["cpus"].clone(), n["memory_total_bytes"].clone()),
            (json!(2), json!(9))
        );
    }
}
