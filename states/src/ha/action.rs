//! What one HA cycle tells the runtime to do, and why.
//!
//! The runtime executes [`HaDecision::actions`] in order and stops at the
//! first one that fails (a lost compare-and-swap or a store error); the next
//! cycle re-reads the cluster and decides again from what actually happened.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::records::{HistoryEntry, MemberRecord, SyncRecord};
use crate::Millis;

/// One step for the runtime: a store write or a change to the local node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HaAction {
    /// Put `members/{name}` = record under the node's lease.
    PublishMember(MemberRecord),
    /// Write `initialize` = the system identifier if absent (CREATE == 0).
    Initialize {
        /// The local data directory's system identifier.
        system_identifier: u64,
    },
    /// Take the leader key: CREATE == 0, put own name under own lease.
    /// Fails if someone else holds it.
    AcquireLeader,
    /// Re-attach the leader key to the current lease: VALUE == own name,
    /// put with the lease (else CREATE == 0, put). Fails if another member
    /// owns it.
    UpdateLeader,
    /// Give the leader key up: VALUE == own name, delete.
    ReleaseLeader,
    /// CAS-write `sync` (MOD == `expected_mod_revision`, 0 = must be absent).
    /// Fails if `sync` changed since it was read.
    WriteSync {
        /// The new value.
        record: SyncRecord,
        /// The `mod_revision` read, 0 if absent.
        expected_mod_revision: i64,
    },
    /// Let syncrep count confirmations only from these standbys (sorted).
    /// Local and immediate; never fails.
    SetSyncAllowed(Vec<String>),
    /// Open the write gate (or keep it open) until `until` on the monotonic
    /// clock; the node closes it by itself at that instant.
    OpenGate {
        /// The fence deadline: last keepalive sent + ttl - margin.
        until: Millis,
    },
    /// Close the write gate now: refuse writes, fail every waiting write.
    CloseGate,
    /// Promote the local standby to primary (new timeline). Runs in the
    /// background; the node reports [`super::LocalRole::Promoting`] meanwhile.
    Promote,
    /// Stop serving as primary, rejoin against `leader` (truncating the
    /// unacknowledged tail) and restart as its standby.
    Demote {
        /// The member to rejoin against, if one leads.
        leader: Option<String>,
        /// Its replication address, if known.
        repl_addr: Option<String>,
    },
    /// Stream from `leader` at `repl_addr` (the HA `primary_conninfo`
    /// override, then reload — no restart).
    Follow {
        /// The member that leads.
        leader: String,
        /// Where it accepts replication connections.
        repl_addr: String,
    },
    /// CAS-append to `history` (MOD == `expected_mod_revision`, 0 = absent).
    AppendHistory {
        /// The new entry.
        entry: HistoryEntry,
        /// The `mod_revision` read, 0 if absent.
        expected_mod_revision: i64,
    },
    /// CAS-delete `failover` (MOD == `expected_mod_revision`).
    ClearFailover {
        /// The `mod_revision` read.
        expected_mod_revision: i64,
    },
    /// Stop the HA loop for good: continuing could harm data (another
    /// cluster's keys). The node stays as it is, fenced if it is a primary.
    Halt {
        /// The error to report.
        reason: String,
    },
}

impl HaAction {
    /// Whether this action writes to the store (and so can fail).
    pub fn is_store_write(&self) -> bool {
        matches!(
            self,
            HaAction::PublishMember(_)
                | HaAction::Initialize { .. }
                | HaAction::AcquireLeader
                | HaAction::UpdateLeader
                | HaAction::ReleaseLeader
                | HaAction::WriteSync { .. }
                | HaAction::AppendHistory { .. }
                | HaAction::ClearFailover { .. }
        )
    }
}

impl fmt::Display for HaAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HaAction::PublishMember(m) => write!(
                f,
                "PublishMember {} {} tli {} flush {}",
                m.name,
                m.role.as_str(),
                m.timeline.0,
                m.flush_lsn
            ),
            HaAction::Initialize { system_identifier } => {
                write!(f, "Initialize {system_identifier}")
            }
            HaAction::AcquireLeader => f.write_str("AcquireLeader"),
            HaAction::UpdateLeader => f.write_str("UpdateLeader"),
            HaAction::ReleaseLeader => f.write_str("ReleaseLeader"),
            HaAction::WriteSync {
                record,
                expected_mod_revision,
            } => write!(
                f,
                "WriteSync {{{}: [{}]}} @{expected_mod_revision}",
                record.leader,
                record.sync_standbys.join(", ")
            ),
            HaAction::SetSyncAllowed(names) => write!(f, "SetSyncAllowed [{}]", names.join(", ")),
            HaAction::OpenGate { until } => write!(f, "OpenGate until {until}"),
            HaAction::CloseGate => f.write_str("CloseGate"),
            HaAction::Promote => f.write_str("Promote"),
            HaAction::Demote { leader, .. } => {
                write!(f, "Demote to {}", leader.as_deref().unwrap_or("(none)"))
            }
            HaAction::Follow { leader, repl_addr } => write!(f, "Follow {leader} at {repl_addr}"),
            HaAction::AppendHistory {
                entry,
                expected_mod_revision,
            } => write!(
                f,
                "AppendHistory tli {} at {} by {} @{expected_mod_revision}",
                entry.timeline.0, entry.switch_lsn, entry.leader
            ),
            HaAction::ClearFailover {
                expected_mod_revision,
            } => write!(f, "ClearFailover @{expected_mod_revision}"),
            HaAction::Halt { reason } => write!(f, "Halt: {reason}"),
        }
    }
}

/// How loudly to log a cycle's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Normal operation.
    Info,
    /// Something is degraded or unsafe to act on (store unreachable, an
    /// async failover allowed, a stranger's key).
    Warn,
    /// The node cannot take part (system identifier mismatch, halted).
    Error,
}

/// The outcome of one HA cycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaDecision {
    /// Execute in order; stop at the first failure.
    pub actions: Vec<HaAction>,
    /// One sentence for the log: what this cycle did and why.
    pub why: String,
    /// How loudly to log `why`.
    pub severity: Severity,
    /// Start the next cycle after this many milliseconds (0: at once, e.g.
    /// right after taking the leader key). On a failed action the runtime
    /// waits `ha_loop_wait` instead.
    pub next_cycle_ms: u64,
}
