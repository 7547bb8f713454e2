//! What the HA loop last knew, for `INFO replication` and `walrep status`:
//! the leader, the sentence of the last cycle, and the fence deadline.

use std::time::{Duration, Instant};

/// The HA loop's view after its last cycle.
#[derive(Debug, Clone, Default)]
pub struct HaStatus {
    /// The member holding the leader key, as last read (`None`: no leader,
    /// or the read failed).
    pub leader: Option<String>,
    /// What the last cycle did and why.
    pub why: String,
    /// Until when the decision keeps the gate open (`None`: fenced).
    pub gate_until: Option<Instant>,
    /// The loop stopped for good (another cluster's keys, a system
    /// identifier mismatch): why.
    pub halted: Option<String>,
}

impl HaStatus {
    /// How long the gate stays open without another renewal.
    pub fn lease_remaining(&self) -> Duration {
        self.gate_until.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(Instant::now())
        })
    }
}
