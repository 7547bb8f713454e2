//! What the HA loop last knew, for `INFO replication`, `walrep status`,
//! `/status` and `/metrics`: the leader, the sentence of the last cycle,
//! the fence deadline, whether the cluster is paused, and the loop's
//! counters (cycles, store errors, leader keys taken, promotions,
//! demotions).

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
    /// `config.paused` as last read: no automatic action.
    pub paused: bool,
    /// The loop's counters since the process started.
    pub counters: HaCounters,
}

/// What the HA loop counted since the process started (Prometheus
/// counters: they only grow).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HaCounters {
    /// HA cycles run.
    pub cycles: u64,
    /// Cycles stopped at a failed action (a lost compare-and-swap, a store
    /// error, a node action that failed).
    pub failed_cycles: u64,
    /// Calls to the consensus store that failed (renewals, reads, writes;
    /// a lost compare-and-swap is not an error).
    pub dcs_errors: u64,
    /// Times this node took the free leader key.
    pub leader_acquired: u64,
    /// Promotions this node started (it took over as leader).
    pub promotions: u64,
    /// Demotions: this node ran as a primary while another member led.
    pub demotions: u64,
}

impl HaStatus {
    /// How long the gate stays open without another renewal.
    pub fn lease_remaining(&self) -> Duration {
        self.gate_until.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(Instant::now())
        })
    }
}
