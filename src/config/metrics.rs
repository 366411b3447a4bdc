//! `"metrics": {...}`: the daemon's sampler of VM resource use
//! (docs/metrics.md).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Seconds between samples of every VM's host-side numbers (CPU, RSS,
    /// disk, tap); 0 turns the sampler off (`/stats` then reads on demand,
    /// without CPU percent or the guest's view).
    pub interval_secs: u64,
    /// Seconds between two asks of a guest's own view (memory, root file
    /// system) through its agent; at least `interval_secs`.
    pub guest_interval_secs: u64,
    /// How long a guest has to answer; a slower one is skipped this round.
    pub guest_timeout_secs: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            interval_secs: 2,
            guest_interval_secs: 10,
            guest_timeout_secs: 5,
        }
    }
}
