//! The transition record: one per handled event, appended by the runtime
//! as JSON to `DATADIR/log/transitions.jsonl`, and rendered as one trace
//! line in snapshots and `walrep viz trace`:
//!
//! ```text
//! #3 SegmentNotInArchive(tli 1 seg 2) | ArchiveRecovery -> RetryingArchive | [StartWalReceiver 0/2000000 tli 1, ArmRetry 5000ms] (segment 2 is in neither archive nor wal/)
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

use super::action::Action;
use super::event::{Event, EventKind};
use super::kind::StateKind;
use crate::lsn::{Lsn, TimelineId};
use crate::time::Millis;

/// What one event did to the recovery machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// 1 for the first event the machine handled.
    pub seq: u64,
    /// When it was handled.
    pub at: Millis,
    /// State before.
    pub from: StateKind,
    /// State after (equal to `from` when the state did not change).
    pub to: StateKind,
    /// The event.
    pub event: Event,
    /// The actions it produced, in execution order.
    pub actions: Vec<Action>,
    /// Replay position after the event.
    pub replay_lsn: Lsn,
    /// Flush position of the latest walreceiver session after the event.
    pub receive_lsn: Lsn,
    /// Recovery target timeline after the event.
    pub target_tli: TimelineId,
    /// Why the machine did what it did, or why it ignored the event.
    pub cause: Option<String>,
}

impl Transition {
    /// Worth a line in `transitions.jsonl`: a state change, an action other
    /// than routine replay, or an event other than routine stream progress.
    /// (Streaming produces one `WalFlushed`/`Replay` pair per flush.)
    pub fn is_notable(&self) -> bool {
        let routine_event = matches!(
            self.event.kind(),
            EventKind::WalFlushed | EventKind::WalReplayed | EventKind::EndOfWalReached
        );
        let routine_actions = self
            .actions
            .iter()
            .all(|a| matches!(a, Action::Replay { .. }));
        self.from != self.to || !routine_event || !routine_actions
    }
}

/// The snapshot trace line.
impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} {} | {} -> {} | [",
            self.seq, self.event, self.from, self.to
        )?;
        for (i, a) in self.actions.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{a}")?;
        }
        f.write_str("]")?;
        if let Some(cause) = &self.cause {
            write!(f, " ({cause})")?;
        }
        Ok(())
    }
}
