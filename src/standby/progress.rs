//! What a standby shows of its recovery, each datum with exactly one owner
//! that publishes it on a [`Watch`]:
//!
//! - redo owns how far replay got ([`Replayed`]): the redo thread, or the
//!   startup thread for a short request (one at a time, see `redo`);
//! - the walreceiver owns what it flushed (in its [`ReceiverShared`]);
//! - the startup process owns the machine's status, published once per
//!   drain with the last notable transition ([`StandbyStatus`]).
//!
//! INFO replication, `/status`, `/metrics`, the walreceiver's replies, the
//! restartpoints and cascading walsenders all read these; nothing keeps a
//! second copy of a position.

use std::sync::Arc;

use super::receiver::ReceiverShared;
use super::replayed::Replayed;
use crate::replication::source::FlushPoint;
use crate::states::recovery::{StateKind, Status, Transition, WalSource};
use crate::watch::{Subscription, Watch};
use crate::{Lsn, TimelineId};

/// The last notable transition, for INFO and `/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastTransition {
    /// "from -> to on Event".
    pub summary: String,
    /// Why the machine did it.
    pub cause: Option<String>,
    /// Wall-clock time the event was handled (ms since the epoch).
    pub at_ms: u64,
}

impl LastTransition {
    /// The summary of `t`, handled at `at_ms`.
    pub fn of(t: &Transition, at_ms: u64) -> LastTransition {
        LastTransition {
            summary: format!("{} -> {} on {}", t.from, t.to, t.event.kind()),
            cause: t.cause.clone(),
            at_ms,
        }
    }
}

/// What the startup process publishes after each drain (the machine's
/// actions executed, its transitions logged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StandbyStatus {
    /// The machine's own status; `None` until it handled its first event.
    pub machine: Option<Status>,
    /// Where the WAL being replayed comes from (the last `Replay`'s source).
    pub source: Option<WalSource>,
    /// The replay position at which recovery became consistent.
    pub consistent_at: Option<Lsn>,
    /// The last notable transition (shared: the status is copied often).
    pub last_transition: Option<Arc<LastTransition>>,
    /// Notable transitions since start.
    pub transitions: u64,
}

/// What cascading walsenders must hear of besides new WAL: the machine's
/// state and timelines (a promotion ends the timeline they stream). It
/// changes a few times in a standby's life, where the status changes after
/// every event: waking the walsenders on the status woke them two or three
/// times per WAL flush for nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CascadeSignal {
    /// The machine's state; `None` before its first event.
    pub state: Option<StateKind>,
    /// The recovery target timeline.
    pub target_tli: Option<TimelineId>,
    /// The timeline chosen by promotion.
    pub promoted_tli: Option<TimelineId>,
}

impl CascadeSignal {
    /// The signal in the machine's `status`.
    pub fn of(status: Option<&Status>) -> CascadeSignal {
        CascadeSignal {
            state: status.map(|s| s.state),
            target_tli: status.map(|s| s.target_tli),
            promoted_tli: status.and_then(|s| s.promoted_tli),
        }
    }
}

/// A standby's progress: the watches its runtime publishes and the node
/// reads. Cheap to clone (a few `Arc`s).
#[derive(Debug, Clone)]
pub struct StandbyProgress {
    /// Published by the startup process after each drain.
    pub status: Arc<Watch<StandbyStatus>>,
    /// Published by the startup process when it changes (see
    /// [`CascadeSignal`]): what cascading walsenders wait on besides WAL.
    pub cascade: Arc<Watch<CascadeSignal>>,
    /// Owned by redo.
    pub replayed: Arc<Watch<Replayed>>,
    /// Owned by the walreceiver: what it flushed, its state; it reads
    /// `replayed` for the apply position of its replies.
    pub received: Arc<ReceiverShared>,
    /// Set while a base backup is still being copied into the data
    /// directory (until its snapshot is loaded): the store is empty and
    /// the control file not yet the copy's, so no restartpoint may run.
    pub base_pending: Arc<std::sync::atomic::AtomicBool>,
}

impl Default for StandbyProgress {
    fn default() -> Self {
        StandbyProgress::new()
    }
}

impl StandbyProgress {
    /// Nothing replayed, received or handled yet.
    pub fn new() -> StandbyProgress {
        let replayed = Arc::new(Watch::default());
        StandbyProgress {
            status: Arc::new(Watch::default()),
            cascade: Arc::new(Watch::default()),
            received: ReceiverShared::new(replayed.clone()),
            replayed,
            base_pending: Arc::default(),
        }
    }

    /// What cascading walsenders may send: the replay position, or the
    /// walreceiver's flush position when it is further on the same
    /// timeline (PostgreSQL's GetStandbyFlushRecPtr). Redo may apply
    /// streamed WAL before this node's own fsync of it (its upstream has
    /// it durably); a replay position this node has not made durable yet
    /// is not sent on.
    pub fn flush_point(&self) -> FlushPoint {
        let replayed = self.replayed.get();
        let received = self.received.flushed_point();
        let early = self.received.exposed_early();
        // A session publishes its start point as flushed when it starts
        // (see the session's `publish_start`), so streamed WAL exposed
        // early always lies past a flush position on its own timeline.
        let lsn = if received.tli == replayed.tli {
            // Replay past the flush position while the walreceiver exposes
            // past it too lies in the window not durable here yet (read
            // in this order: replay first, the early exposure last).
            if replayed.end > received.lsn && early > received.lsn {
                received.lsn
            } else {
                replayed.end.max(received.lsn)
            }
        } else {
            replayed.end
        };
        FlushPoint {
            tli: replayed.tli,
            lsn,
        }
    }

    /// Woken when [`flush_point`](Self::flush_point) may have moved, and
    /// when the machine's state or timelines change (a promotion ends the
    /// timeline cascading walsenders stream).
    pub fn subscribe(&self) -> Subscription {
        let sub = self.replayed.subscribe();
        sub.also(self.received.flushed_watch());
        sub.also(&self.cascade);
        sub
    }
}
