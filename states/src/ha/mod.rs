//! Automatic failover decisions: what one node does in one HA cycle, as a
//! pure function of what it reads from the consensus store and of its own
//! state.
//!
//! (The protocol description is written with the decisions.)

pub mod action;
pub mod input;
pub mod machine;
pub mod records;
pub mod view;

pub use action::{HaAction, HaDecision, Severity};
pub use input::{
    DcsReadError, HaConfig, HaConfigError, HaInput, Lease, LocalRole, LocalState, ReplicaProgress,
    ReplicaSyncState, MIN_TTL_MS,
};
pub use machine::{decide, HaState};
pub use records::{
    ClusterConfigRecord, FailoverKind, FailoverRecord, HistoryEntry, MemberRecord, MemberRole,
    SyncRecord,
};
pub use view::{keys, ClusterView, Versioned};
