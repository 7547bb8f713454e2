//! What a standby shows of its recovery: replay and receive positions (read
//! by walsenders, the walreceiver's replies and INFO), the machine's state
//! and the last transition with its cause.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::states::recovery::{StateKind, Transition, WalSource};
use crate::{Lsn, TimelineId};

/// Positions and status of a standby's recovery, shared by its threads.
#[derive(Debug, Default)]
pub struct StandbyState {
    /// End of the last record replayed (= start of the next one).
    pub replay_lsn: AtomicU64,
    /// Start of the last record replayed (the prev-link of the first record
    /// a promoted node writes).
    pub last_record_lsn: AtomicU64,
    /// Timeline of the last record replayed.
    pub replay_tli: AtomicU32,
    /// What the walreceiver has flushed, and on which timeline.
    pub receive_lsn: AtomicU64,
    pub receive_tli: AtomicU32,
    /// Commit time of the last key-value record replayed (µs since the
    /// epoch): replay lag in time.
    pub last_replayed_commit_us: AtomicU64,
    /// Records replayed since start.
    pub records_replayed: AtomicU64,
    status: Mutex<StatusView>,
}

/// The parts of the status that are not plain numbers.
#[derive(Debug, Clone, Default)]
pub struct StatusView {
    /// The recovery machine's state.
    pub state: Option<StateKind>,
    /// Where the WAL being replayed comes from.
    pub source: Option<WalSource>,
    /// The timeline recovery follows.
    pub target_tli: Option<TimelineId>,
    /// The last notable transition: "from -> to", its event and cause.
    pub last_transition: Option<String>,
    pub last_transition_cause: Option<String>,
    /// Wall-clock time of the last notable transition (ms since the epoch).
    pub last_transition_at_ms: u64,
    /// The replay position at which recovery became consistent.
    pub consistent_at: Option<Lsn>,
    /// Transitions recorded since start.
    pub transitions: u64,
}

impl StandbyState {
    pub fn replay_lsn(&self) -> Lsn {
        Lsn(self.replay_lsn.load(Ordering::Acquire))
    }

    pub fn receive_lsn(&self) -> Lsn {
        Lsn(self.receive_lsn.load(Ordering::Acquire))
    }

    pub fn replay_tli(&self) -> TimelineId {
        TimelineId(self.replay_tli.load(Ordering::Acquire))
    }

    pub fn status(&self) -> StatusView {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut StatusView)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Record a notable transition for INFO.
    pub fn note_transition(&self, t: &Transition, now_ms: u64) {
        self.update(|s| {
            s.state = Some(t.to);
            s.target_tli = Some(t.target_tli);
            s.last_transition = Some(format!("{} -> {} on {}", t.from, t.to, t.event.kind()));
            s.last_transition_cause = t.cause.clone();
            s.last_transition_at_ms = now_ms;
            s.transitions += 1;
        });
    }
}
