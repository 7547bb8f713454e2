//! The standby's recovery ("startup process") as an IO-free core:
//! PostgreSQL's WaitForWALToBecomeAvailable made an explicit state machine.
//!
//! # Using the core (quinn-proto style)
//!
//! The runtime owns a [`Recovery`] and drives it from one thread:
//!
//! ```text
//! let mut core = Recovery::new(config)?;
//! core.handle(now, Event::RecoveryStarted { .. });
//! loop {
//!     while let Some(action) = core.poll_action() { executor.run(action) }
//!     while let Some(t) = core.poll_transition() { if t.is_notable() { append_jsonl(&t) } }
//!     if core.state().is_final() { break }
//!     select! {
//!         recv(events) -> ev => core.handle(clock.now(), ev?),
//!         recv(timer_at(core.poll_timeout())) -> _ => core.handle(clock.now(), Event::TimerFired),
//!     }
//! }
//! ```
//!
//! - Inputs: [`Recovery::handle`] with the time and an [`Event`]
//!   (the timer is the event [`Event::TimerFired`]).
//! - Outputs, drained after every `handle`, in this order:
//!   [`Recovery::poll_action`] (execute in order), [`Recovery::poll_transition`]
//!   (the trace), [`Recovery::poll_timeout`] (re-arm the one timer).
//! - Getters: [`Recovery::state`], [`Recovery::status`],
//!   [`Recovery::check_invariants`].
//!
//! Every request action has an answer the runtime must report (see
//! [`Action`]); walreceiver events carry their session so late events of an
//! old session are recognised and ignored.
//!
//! # Layout
//!
//! - [`machine`]: the statig machine, one handler per state.
//! - [`round`]: one round over archive and `wal/` (ARCHIVE and PG_WAL).
//! - [`round_state`]: a round's state: where it looks, what it waits for,
//!   why it ended.
//! - [`promotion`]: the steps of promotion.
//! - [`backup_wait`]: waiting for a two-phase base backup's bulk.
//! - [`timelines`]: the target timeline, rescan rules, candidates.
//! - [`shared`]: the machine's shared storage and bookkeeping.
//! - [`event`], [`action`], [`trace`], [`kind`], [`config`]: the vocabulary.
//! - [`explore`]: breadth-first exploration of the real machine.
//! - [`invariants`]: what must hold after every step.

pub mod action;
pub mod backup_wait;
pub mod config;
pub mod event;
pub mod explore;
pub mod invariants;
pub mod kind;
pub mod machine;
pub mod promotion;
pub mod round;
pub mod round_state;
pub mod shared;
pub mod timelines;
pub mod trace;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use statig::blocking::{IntoStateMachineExt, StateMachine};

pub use action::{Action, ActionKind, ExitReason, Report, Severity, WalSource};
pub use config::{ConfigError, RecoveryConfig, TargetTimeline};
pub use event::{Event, EventKind, PromoteTrigger, PromotionStep, RecordCheck, SessionId, WalFile};
pub use invariants::InvariantViolation;
pub use kind::StateKind;
pub use trace::Transition;

use crate::lsn::{Lsn, TimelineId};
use crate::time::Millis;
use invariants::violation;
use machine::State;
pub use shared::InlineLeave;
use shared::{Ctx, Machine, ReceiverStatus};

/// At most this many actions wait in the outbox; the runtime drains it
/// after every `handle`, so more means it does not (checked as an invariant).
pub const MAX_PENDING_ACTIONS: usize = 64;

/// At most this many transition records wait for `poll_transition`; older
/// ones are dropped (and counted) when the runtime does not drain them.
pub const MAX_PENDING_TRANSITIONS: usize = 1024;

/// The recovery core: the statig machine plus its outbox, trace and the
/// invariant bookkeeping that spans steps.
#[derive(Clone, Serialize, Deserialize)]
pub struct Recovery {
    /// The statig machine (shared storage + state).
    machine: StateMachine<Machine>,
    /// The latest time seen (time never goes back inside the core).
    now: Millis,
    /// Events handled so far.
    seq: u64,
    /// Actions not yet polled.
    outbox: VecDeque<Action>,
    /// Transition records not yet polled.
    transitions: VecDeque<Transition>,
    /// Transition records dropped because nobody polled them.
    transitions_dropped: u64,
    /// The highest replay position ever reported (replay never goes back).
    replay_high_water: Lsn,
    /// Set once `AcceptWrites` was emitted.
    writes_accepted: Option<TimelineId>,
    /// The last `Replay` asked for and the replay position then: asking
    /// for the same again without progress is a livelock.
    last_replay: Option<(Action, Lsn)>,
    /// The inline leave given to the walreceiver (see [`InlineLeave`]).
    #[serde(default)]
    inline: Option<GivenLeave>,
    /// The first invariant broken inside a step (seen by `check_invariants`).
    #[serde(skip)]
    broken: Option<InvariantViolation>,
}

/// An inline leave as given: the machine's leave, and whether its
/// withdrawal waits for `InlineApplyWithdrawn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GivenLeave {
    /// What was given.
    pub leave: InlineLeave,
    /// `WithdrawInlineApply` was emitted; not answered yet.
    pub withdrawing: bool,
}

impl std::fmt::Debug for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovery")
            .field("state", self.machine.state())
            .field("shared", self.shared())
            .field("now", &self.now)
            .field("seq", &self.seq)
            .field("outbox", &self.outbox)
            .finish_non_exhaustive()
    }
}

/// A summary for status pages, INFO and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The current state.
    pub state: StateKind,
    /// End of the last record replayed.
    pub replay_lsn: Lsn,
    /// What the latest walreceiver session flushed, and on which timeline.
    pub receive_lsn: Lsn,
    /// Timeline of the received WAL.
    pub receive_tli: Option<TimelineId>,
    /// The recovery target timeline.
    pub target_tli: TimelineId,
    /// The highest timeline seen anywhere.
    pub highest_seen_tli: TimelineId,
    /// Replay reached the minimum recovery point (reads allowed).
    pub consistent: bool,
    /// restore_command failures in a row.
    pub restore_failures: u32,
    /// Invalid records found at the replay position (ping-pong counter).
    pub invalid_at_replay: u32,
    /// The walreceiver session, if one runs.
    pub receiver: Option<(SessionId, ReceiverStatus)>,
    /// The timeline chosen by promotion.
    pub promoted_tli: Option<TimelineId>,
}

impl Recovery {
    /// A core in `Starting`, waiting for [`Event::RecoveryStarted`].
    pub fn new(config: RecoveryConfig) -> Result<Recovery, ConfigError> {
        config.validate()?;
        Ok(Recovery {
            machine: Machine::new(config).state_machine(),
            now: Millis::ZERO,
            seq: 0,
            outbox: VecDeque::new(),
            transitions: VecDeque::new(),
            transitions_dropped: 0,
            replay_high_water: Lsn::INVALID,
            writes_accepted: None,
            last_replay: None,
            inline: None,
            broken: None,
        })
    }

    /// Handle one event at time `now` (a `now` earlier than the last one is
    /// taken as the last one).
    pub fn handle(&mut self, now: Millis, event: Event) {
        self.now = self.now.max(now);
        self.seq += 1;
        let mut ctx = Ctx::at(self.now);
        let from = self.state();
        if let Event::InlineApplyWithdrawn { session, .. } = &event {
            if self
                .inline
                .is_some_and(|g| g.withdrawing && g.leave.session == *session)
            {
                self.inline = None;
            }
        }
        self.machine.handle_with_context(&event, &mut ctx);
        self.sync_inline(&mut ctx.actions);
        let to = self.state();
        let record = Transition {
            seq: self.seq,
            at: self.now,
            from,
            to,
            event,
            actions: ctx.actions,
            replay_lsn: self.shared().replay_lsn,
            receive_lsn: self.receive_lsn(),
            target_tli: self.shared().timelines.target,
            cause: (!ctx.causes.is_empty()).then(|| ctx.causes.join("; ")),
        };
        self.track(&record);
        self.outbox.extend(record.actions.iter().cloned());
        if self.transitions.len() >= MAX_PENDING_TRANSITIONS {
            self.transitions.pop_front();
            self.transitions_dropped += 1;
        }
        self.transitions.push_back(record);
    }

    /// Give, keep or withdraw the inline leave after a step: a leave the
    /// machine no longer gives (or gives differently) is withdrawn before
    /// the step's other actions run; a new one is given after them, once
    /// the last one's withdrawal was answered.
    fn sync_inline(&mut self, actions: &mut Vec<Action>) {
        let want = self.shared().inline_leave(self.state());
        match &mut self.inline {
            Some(g) if g.withdrawing => {}
            Some(g) if Some(g.leave) == want => {}
            Some(g) => {
                g.withdrawing = true;
                actions.insert(
                    0,
                    Action::WithdrawInlineApply {
                        session: g.leave.session,
                    },
                );
            }
            None => {
                if let Some(leave) = want {
                    self.inline = Some(GivenLeave {
                        leave,
                        withdrawing: false,
                    });
                    actions.push(Action::AllowInlineApply {
                        session: leave.session,
                        tli: leave.tli,
                        upto: leave.upto,
                    });
                }
            }
        }
    }

    /// The inline leave given, if any (see [`InlineLeave`]).
    pub fn inline_leave(&self) -> Option<GivenLeave> {
        self.inline
    }

    /// The next action to execute, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.outbox.pop_front()
    }

    /// The next transition record (one per handled event).
    pub fn poll_transition(&mut self) -> Option<Transition> {
        self.transitions.pop_front()
    }

    /// Transition records dropped because they were not polled in time.
    pub fn transitions_dropped(&self) -> u64 {
        self.transitions_dropped
    }

    /// When to deliver [`Event::TimerFired`], if the machine waits for time.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let m = self.shared();
        match self.machine.state() {
            State::RetryingArchive { retry } if m.replay_req.is_none() => {
                Some(m.retry_deadline(retry))
            }
            State::Promoting { promotion } => Machine::promotion_deadline(promotion),
            State::AwaitingBaseBackup { wait } => wait.retry_at,
            _ => None,
        }
    }

    /// The current state.
    pub fn state(&self) -> StateKind {
        self.machine.state().kind()
    }

    /// The current state with its data (for debugging and exploration).
    pub fn machine_state(&self) -> &State {
        self.machine.state()
    }

    /// The machine's shared storage (read-only).
    pub fn shared(&self) -> &Machine {
        self.machine.inner()
    }

    /// A summary for status pages.
    pub fn status(&self) -> Status {
        let m = self.shared();
        Status {
            state: self.state(),
            replay_lsn: m.replay_lsn,
            receive_lsn: self.receive_lsn(),
            receive_tli: m.received.as_ref().map(|r| r.tli),
            target_tli: m.timelines.target,
            highest_seen_tli: m.timelines.highest_seen,
            consistent: m.consistent,
            restore_failures: m.restore_failures,
            invalid_at_replay: if m.stall.at == m.replay_lsn {
                m.stall.count
            } else {
                0
            },
            receiver: m.receiver.as_ref().map(|r| (r.session, r.status)),
            promoted_tli: m.promoted_tli,
        }
    }

    fn receive_lsn(&self) -> Lsn {
        self.shared()
            .received
            .as_ref()
            .map_or(Lsn::INVALID, |r| r.upto)
    }

    /// Cross-step invariants, checked on each record.
    fn track(&mut self, t: &Transition) {
        let mut broken = Vec::new();
        if t.replay_lsn < self.replay_high_water {
            broken.push(violation(
                "replay-never-goes-back",
                format!("replay {} after {}", t.replay_lsn, self.replay_high_water),
            ));
        }
        for a in &t.actions {
            broken.extend(self.check_unconfirmed_replay(t, a));
            match a {
                Action::AcceptWrites { tli } if t.to != StateKind::Promoted => {
                    broken.push(violation(
                        "no-writes-before-promoted",
                        format!("AcceptWrites on {} in {}", tli.0, t.to),
                    ))
                }
                Action::AcceptWrites { tli } => self.writes_accepted = Some(*tli),
                Action::WriteHistoryFile { tli, .. } => {
                    broken.extend(self.check_new_timeline(*tli))
                }
                Action::Replay { .. } => {
                    // Redo's answer leading straight to the same request.
                    let from_redo = matches!(
                        t.event.kind(),
                        EventKind::EndOfWalReached
                            | EventKind::InvalidRecord
                            | EventKind::WalReplayed
                    );
                    let again = from_redo
                        && self
                            .last_replay
                            .as_ref()
                            .is_some_and(|(last, at)| last == a && *at == t.replay_lsn);
                    if again {
                        broken.push(violation(
                            "no-replay-livelock",
                            format!("{a} asked again at {} without progress", t.replay_lsn),
                        ));
                    }
                    self.last_replay = Some((a.clone(), t.replay_lsn));
                }
                _ => {}
            }
        }
        self.replay_high_water = self.replay_high_water.max(t.replay_lsn);
        if self.broken.is_none() {
            self.broken = broken.into_iter().next();
        }
    }

    /// WAL held unconfirmed (sent before the upstream flushed it) is read
    /// from `wal/` only by promotion.
    fn check_unconfirmed_replay(&self, t: &Transition, a: &Action) -> Option<InvariantViolation> {
        let Action::Replay { source, tli, upto } = a else {
            return None;
        };
        let u = self.shared().unconfirmed?;
        let read_held = *source == WalSource::Local && u.tli == *tli && *upto > u.from;
        (read_held && t.to != StateKind::Promoting).then(|| {
            violation(
                "unconfirmed-wal-not-replayed",
                format!(
                    "{a} in {} reads WAL held unconfirmed from {} on",
                    t.to, u.from
                ),
            )
        })
    }

    /// At the moment promotion picks its timeline.
    fn check_new_timeline(&self, tli: TimelineId) -> Option<InvariantViolation> {
        let m = self.shared();
        if tli <= m.timelines.highest_seen {
            return Some(violation(
                "new-timeline-highest",
                format!(
                    "new timeline {} but {} was seen",
                    tli.0, m.timelines.highest_seen.0
                ),
            ));
        }
        if m.unreplayed_received() || m.replay_req.is_some() || m.fetch_req.is_some() {
            return Some(violation(
                "promotion-replays-received-wal",
                format!(
                    "timeline chosen at replay {} with received WAL up to {} or a request outstanding",
                    m.replay_lsn,
                    self.receive_lsn()
                ),
            ));
        }
        None
    }

    /// Check every invariant: replay never goes back; nothing at or past a
    /// bad record is read again from its copy; no writes before `Promoted`;
    /// the new timeline is above every timeline seen; promotion replays the
    /// received WAL first; rounds and requests name no segment past the
    /// last one of the LSN space; the machine always waits for something (an
    /// outstanding request, a running walreceiver or a timer) unless final;
    /// and each state's shape.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        if let Some(v) = &self.broken {
            return Err(v.clone());
        }
        let m = self.shared();
        if self.writes_accepted.is_some()
            && !matches!(self.state(), StateKind::Promoted | StateKind::Stopped)
        {
            return Err(violation(
                "no-writes-before-promoted",
                format!("writes accepted in {}", self.state()),
            ));
        }
        if self.outbox.len() > MAX_PENDING_ACTIONS {
            return Err(violation(
                "bounded-outbox",
                format!("{} actions not polled", self.outbox.len()),
            ));
        }
        invariants::check_machine(m, self.machine.state())?;
        if let Some(g) = self.inline.filter(|g| !g.withdrawing) {
            if m.inline_leave(self.state()) != Some(g.leave) {
                return Err(violation(
                    "inline-apply-only-with-leave",
                    format!(
                        "session {} may apply inline up to {} in {}, which gives no such leave",
                        g.leave.session,
                        g.leave.upto,
                        self.state()
                    ),
                ));
            }
        }
        if self.waiting_for().is_none() && self.poll_timeout().is_none() {
            return Err(violation(
                "progress-or-timer",
                format!("{} waits for nothing and has no timer", self.state()),
            ));
        }
        Ok(())
    }

    /// What the machine waits for from the runtime, if anything.
    pub fn waiting_for(&self) -> Option<&'static str> {
        let m = self.shared();
        let receiving = m
            .receiver
            .as_ref()
            .is_some_and(|r| r.status != ReceiverStatus::Ended);
        Some(match self.machine.state() {
            State::Promoted { .. } | State::Stopped { .. } => "nothing (final)",
            State::Starting {} => "RecoveryStarted",
            State::AwaitingBaseBackup { .. } => "the base backup to complete",
            _ if self.inline.is_some_and(|g| g.withdrawing) => "the inline apply's withdrawal",
            _ if m.replay_req.is_some() => "redo",
            _ if m.fetch_req.is_some() => "the archive fetcher",
            State::Promoting { promotion } => match promotion.phase {
                promotion::Phase::StoppingReceiver { .. } => "the walreceiver to stop",
                promotion::Phase::WritingHistory { .. } => "the history file",
                promotion::Phase::WritingEndOfRecovery { .. } => "the end-of-recovery record",
                _ => return None,
            },
            _ if receiving => "the walreceiver",
            _ => return None,
        })
    }
}
