//! `nubo_coordinator_leader` and `nubo_coordinator_leader_transitions_total`,
//! read from the election state when scraped (a lock held for a copy,
//! never an etcd request).

use std::sync::Arc;

use nubo_metrics::prometheus_client::collector::Collector;
use nubo_metrics::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use nubo_metrics::prometheus_client::metrics::counter::ConstCounter;
use nubo_metrics::prometheus_client::metrics::gauge::ConstGauge;

use crate::election::LeaderState;

/// The leadership metrics of one coordinator.
#[derive(Debug)]
pub struct Leadership {
    leader: Arc<LeaderState>,
}

impl Leadership {
    /// Reads `leader` at each scrape.
    pub fn new(leader: Arc<LeaderState>) -> Self {
        Self { leader }
    }
}

impl Collector for Leadership {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(i64::from(self.leader.is_leader()));
        gauge.encode(encoder.encode_descriptor(
            "coordinator_leader",
            "1 while this coordinator is the leader, else 0",
            None,
            gauge.metric_type(),
        )?)?;
        let transitions = ConstCounter::new(self.leader.transitions());
        transitions.encode(encoder.encode_descriptor(
            "coordinator_leader_transitions",
            "Times this coordinator became or stopped being the leader",
            None,
            transitions.metric_type(),
        )?)?;
        Ok(())
    }
}
