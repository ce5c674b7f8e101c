//! The results of the node's health probe ([`crate::network::probe`]):
//! per check (`dhcp`, `metadata`) and network, whether the last probe
//! succeeded, how long it took, and when it last succeeded.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use nubo_metrics::prometheus_client::metrics::family::Family;
use nubo_metrics::prometheus_client::metrics::gauge::Gauge;
use nubo_metrics::prometheus_client::registry::Registry;

use super::node::{unix_now, Labels};

/// What a probe checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    /// A DHCPDISCOVER answered by an OFFER of the probe's address.
    Dhcp,
    /// A metadata GET answered 200 with the probe's identity.
    Metadata,
}

impl Check {
    /// Every check.
    pub const ALL: [Check; 2] = [Check::Dhcp, Check::Metadata];

    /// The `check` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Dhcp => "dhcp",
            Check::Metadata => "metadata",
        }
    }
}

/// The probe's gauges.
#[derive(Debug, Default)]
pub struct ProbeMetrics {
    success: Family<Labels, Gauge>,
    duration: Family<Labels, Gauge<f64, AtomicU64>>,
    last_success: Family<Labels, Gauge<f64, AtomicU64>>,
}

fn labels(check: Check, network: &str) -> Labels {
    vec![
        ("check", check.as_str().to_string()),
        ("network", network.to_string()),
    ]
}

impl ProbeMetrics {
    /// Registers the gauges in `reg` (the node-labelled sub-registry).
    pub fn register(reg: &mut Registry) -> Arc<Self> {
        let m = Self::default();
        reg.register(
            "agent_probe_success",
            "1 if the node's last health probe of this check and network succeeded",
            m.success.clone(),
        );
        reg.register(
            "agent_probe_duration_seconds",
            "Duration of the last health probe of this check and network",
            m.duration.clone(),
        );
        reg.register(
            "agent_probe_last_success_timestamp_seconds",
            "Unix time of the last successful health probe of this check and network",
            m.last_success.clone(),
        );
        Arc::new(m)
    }

    /// Records one probe's result.
    pub fn record(&self, check: Check, network: &str, ok: bool, elapsed: Duration) {
        let l = labels(check, network);
        self.success.get_or_create(&l).set(i64::from(ok));
        self.duration.get_or_create(&l).set(elapsed.as_secs_f64());
        if ok {
            self.last_success.get_or_create(&l).set(unix_now());
        }
    }

    /// Removes the series of a network no longer probed here.
    pub fn forget(&self, network: &str) {
        for check in Check::ALL {
            let l = labels(check, network);
            self.success.remove(&l);
            self.duration.remove(&l);
            self.last_success.remove(&l);
        }
    }
}
