//! Version discovery documents: every service root lists its versions,
//! every version root describes itself, as the clients' discovery expects.

use serde_json::{json, Value};

/// The newest Compute microversion this front end speaks (see
/// docs/openstack-compatibility.md); requests asking for more get 406.
pub const COMPUTE_MAX_MICROVERSION: &str = "2.1";

/// One version entry.
pub fn version(id: &str, url: &str, extra: Value) -> Value {
    let mut v = json!({
        "id": id,
        "status": "CURRENT",
        "updated": "2026-12-05T00:00:00Z",
        "links": [{"rel": "self", "href": format!("{url}/")}],
    });
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

/// Keystone v3.
pub fn identity_v3(base: &str) -> Value {
    version(
        "v3.14",
        &format!("{base}/identity/v3"),
        json!({"media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}]}),
    )
}

/// Nova v2.1.
pub fn compute_v21(base: &str) -> Value {
    version(
        "v2.1",
        &format!("{base}/compute/v2.1"),
        json!({"version": COMPUTE_MAX_MICROVERSION, "min_version": "2.1"}),
    )
}

/// Neutron v2.0.
pub fn network_v20(base: &str) -> Value {
    version("v2.0", &format!("{base}/network/v2.0"), json!({}))
}

/// Glance v2.
pub fn image_v2(base: &str) -> Value {
    version("v2.0", &format!("{base}/image/v2"), json!({}))
}

/// Cinder v3.
pub fn volume_v3(base: &str) -> Value {
    version(
        "v3.0",
        &format!("{base}/volume/v3"),
        json!({"version": "3.0", "min_version": "3.0",
            "media-types": [{"base": "application/json", "type": "application/vnd.openstack.volume+json;version=3"}]}),
    )
}
