//! The recovery machine's states as plain names, for traces, diagrams,
//! status pages and exploration.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A leaf state of the recovery machine, without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum StateKind {
    /// Built, waiting for `RecoveryStarted`.
    Starting,
    /// A base backup's bulk is still being copied: WAL is received, made
    /// durable and reported upstream, nothing is replayed, promotion is
    /// refused (seed 001's two-phase backup).
    AwaitingBaseBackup,
    /// Replaying local `wal/` only (PostgreSQL's crash recovery before
    /// archive recovery).
    CrashRecovery,
    /// Fetching segments from the archive, then `wal/`, and replaying them.
    ArchiveRecovery,
    /// Every source failed at the replay position: the walreceiver tries to
    /// connect while the archive waits for its retry time.
    RetryingArchive,
    /// Replaying WAL as the walreceiver flushes it.
    Streaming,
    /// Ending recovery: stop the walreceiver, replay what is here, pick the
    /// new timeline, write its history and the end-of-recovery record.
    Promoting,
    /// Recovery is over; the node accepts writes.
    Promoted,
    /// Recovery stopped (shutdown or fatal error); the startup process exits.
    Stopped,
}

impl StateKind {
    /// Every state, in the order of the diagrams.
    pub const ALL: [StateKind; 9] = [
        StateKind::Starting,
        StateKind::AwaitingBaseBackup,
        StateKind::CrashRecovery,
        StateKind::ArchiveRecovery,
        StateKind::RetryingArchive,
        StateKind::Streaming,
        StateKind::Promoting,
        StateKind::Promoted,
        StateKind::Stopped,
    ];

    /// Whether this state is under the `Recovering` superstate.
    pub fn is_recovering(self) -> bool {
        matches!(
            self,
            StateKind::CrashRecovery
                | StateKind::ArchiveRecovery
                | StateKind::RetryingArchive
                | StateKind::Streaming
        )
    }

    /// Whether the machine is done (no event changes it but a shutdown, or
    /// none at all).
    pub fn is_final(self) -> bool {
        matches!(self, StateKind::Promoted | StateKind::Stopped)
    }
}

impl fmt::Display for StateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
