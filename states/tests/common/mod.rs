//! A small driver for scenario tests: feeds events to a recovery core at a
//! virtual time, checks the invariants after every step and keeps the trace.

#![allow(dead_code)]

use walrep_states::history::TimelineHistory;
use walrep_states::recovery::{
    Action, Event, PromoteTrigger, RecordCheck, Recovery, RecoveryConfig, SessionId, StateKind,
    Transition, WalFile,
};
use walrep_states::{Lsn, Millis, SegNo, TimelineId};

/// 16 MiB segments, as PostgreSQL's default.
pub const SEG: u64 = 16 << 20;

/// The first byte of segment `n`.
pub fn seg(n: u64) -> Lsn {
    Lsn(n * SEG)
}

/// A position `off` bytes into segment `n`.
pub fn at(n: u64, off: u64) -> Lsn {
    Lsn(n * SEG + off)
}

pub fn tli(n: u32) -> TimelineId {
    TimelineId(n)
}

/// A scenario being played: the core, the virtual clock and the trace.
pub struct Scenario {
    pub core: Recovery,
    pub now: Millis,
    pub trace: Vec<Transition>,
    pub actions: Vec<Action>,
}

impl Scenario {
    pub fn new(config: RecoveryConfig) -> Scenario {
        Scenario {
            core: Recovery::new(config).expect("valid config"),
            now: Millis::ZERO,
            trace: Vec::new(),
            actions: Vec::new(),
        }
    }

    /// Handle `event` now; panics with the trace on a broken invariant.
    pub fn ev(&mut self, event: Event) -> &mut Scenario {
        self.core.handle(self.now, event);
        self.actions.clear();
        while let Some(a) = self.core.poll_action() {
            self.actions.push(a);
        }
        while let Some(t) = self.core.poll_transition() {
            self.trace.push(t);
        }
        if let Err(v) = self.core.check_invariants() {
            panic!("{v}\n{}", self.render());
        }
        self
    }

    /// Advance the clock by `ms`.
    pub fn wait(&mut self, ms: u64) -> &mut Scenario {
        self.now = self.now.after_ms(ms);
        self
    }

    /// Advance to the machine's deadline and fire the timer.
    pub fn timer(&mut self) -> &mut Scenario {
        let deadline = self.core.poll_timeout().expect("a timer is armed");
        self.now = self.now.max(deadline);
        self.ev(Event::TimerFired)
    }

    pub fn state(&self) -> StateKind {
        self.core.state()
    }

    /// The trace, one line per event.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for t in &self.trace {
            out.push_str(&t.to_string());
            out.push('\n');
        }
        out
    }

    /// The last step's actions of this kind.
    pub fn emitted(&self, pred: impl Fn(&Action) -> bool) -> bool {
        self.actions.iter().any(pred)
    }

    /// The session of the last `StartWalReceiver`.
    pub fn session(&self) -> SessionId {
        self.core
            .shared()
            .receiver
            .as_ref()
            .map(|r| r.session)
            .expect("a walreceiver session")
    }
}

pub fn started(redo: Lsn, timeline: u32, min: Lsn, crash: bool) -> Event {
    Event::RecoveryStarted {
        redo_lsn: redo,
        tli: tli(timeline),
        history: TimelineHistory::root(tli(timeline)),
        min_recovery_point: min,
        crash_recovery_first: crash,
    }
}

pub fn restored(t: u32, n: u64) -> Event {
    Event::SegmentRestored {
        tli: tli(t),
        segno: SegNo(n),
    }
}

pub fn not_in_archive(t: u32, n: u64) -> Event {
    Event::SegmentNotInArchive {
        tli: tli(t),
        segno: SegNo(n),
    }
}

pub fn restore_failed(t: u32, n: u64) -> Event {
    Event::RestoreCommandFailed {
        file: WalFile::Segment {
            tli: tli(t),
            segno: SegNo(n),
        },
        reason: "restore_command killed by signal 9".into(),
    }
}

pub fn local(t: u32, n: u64) -> Event {
    Event::SegmentFoundLocally {
        tli: tli(t),
        segno: SegNo(n),
    }
}

pub fn not_local(t: u32, n: u64) -> Event {
    Event::SegmentNotFoundLocally {
        tli: tli(t),
        segno: SegNo(n),
    }
}

pub fn no_history(t: u32) -> Event {
    Event::HistoryNotInArchive { tli: tli(t) }
}

pub fn no_local_history(t: u32) -> Event {
    Event::HistoryNotFoundLocally { tli: tli(t) }
}

/// The history of timeline `t` forked from `t - 1` at `fork`, on top of
/// `parent`.
pub fn history_after(parent: &TimelineHistory, t: u32, fork: Lsn) -> TimelineHistory {
    parent.fork(tli(t), fork)
}

pub fn eow(lsn: Lsn) -> Event {
    Event::EndOfWalReached { at: lsn }
}

pub fn invalid(lsn: Lsn, check: RecordCheck) -> Event {
    Event::InvalidRecord { at: lsn, check }
}

pub fn connected(s: SessionId, t: u32, flush: Lsn) -> Event {
    Event::StreamConnected {
        session: s,
        upstream_tli: tli(t),
        upstream_flush: flush,
    }
}

pub fn flushed(s: SessionId, t: u32, upto: Lsn) -> Event {
    Event::WalFlushed {
        session: s,
        tli: tli(t),
        upto,
    }
}

pub fn lost(s: SessionId) -> Event {
    Event::StreamLost {
        session: s,
        reason: "connection reset by peer".into(),
    }
}

pub fn promote() -> Event {
    Event::PromoteRequested {
        trigger: PromoteTrigger::File,
    }
}

pub fn stopped(s: SessionId, upto: Lsn) -> Event {
    Event::WalReceiverStopped {
        session: s,
        flushed: upto,
    }
}

/// Archive-only standby.
pub fn archive_only() -> RecoveryConfig {
    RecoveryConfig {
        stream_configured: false,
        ..RecoveryConfig::default()
    }
}
