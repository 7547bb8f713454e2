//! The standby's recovery state machine, written with statig: PostgreSQL's
//! WaitForWALToBecomeAvailable (xlogrecovery.c) made explicit.
//!
//! ```text
//! Running ─┬─ Starting
//!          ├─ AwaitingBaseBackup (WAL received, redo waits for the copy)
//!          ├─ Recovering ─┬─ CrashRecovery    (wal/ only)
//!          │              ├─ ArchiveRecovery  (archive, then wal/)
//!          │              ├─ RetryingArchive  (walreceiver connecting, archive waits)
//!          │              └─ Streaming        (replay what the walreceiver flushes)
//!          ├─ Promoting
//!          └─ Promoted
//! Stopped
//! ```
//!
//! `Running` handles `ShutdownRequested` for every state but `Stopped`;
//! `Recovering` handles `PromoteRequested` for the four recovering states.
//! Handlers write actions into the [`Ctx`] outbox; entry actions only emit
//! actions (a machine restored with serde re-runs them on `init`).

// statig 0.4's `#[state_machine]` generates `State`, its variants and their fields (the handlers' state-local arguments) without docs and has no way to add them.
#![allow(missing_docs)]

use serde::{Deserialize, Serialize};
use statig::prelude::*;

use super::action::{Action, ExitReason, Report};
use super::backup_wait::{BackupWait, NOT_COMPLETE};
use super::event::Event;
use super::kind::StateKind;
use super::promotion::{Next, Promotion};
use super::round_state::{Exhaustion, RoundMode, RoundOutcome};
use super::shared::{Ctx, Machine, ReceiverStatus, ReplayEnd};
use crate::history::TimelineHistory;
use crate::lsn::{SegNo, TimelineId};
use crate::time::Millis;

/// `RetryingArchive`'s data: when the next round over the archive may begin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// The earliest time of the next round.
    pub deadline: Millis,
}

#[state_machine(
    initial = "State::starting()",
    state(derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)),
    superstate(derive(Debug)),
    context_identifier = "ctx",
    after_transition = "Self::after_transition"
)]
impl Machine {
    /// Built; waiting for the runtime to report `RecoveryStarted`.
    ///
    /// Exits:
    /// - `RecoveryStarted` with `crash_recovery_first` → `CrashRecovery`;
    /// - `RecoveryStarted` → `ArchiveRecovery` (or `RetryingArchive` if no
    ///   source can be asked at all);
    /// - `RecoveryStarted` after an early `PromoteRequested` → `Promoting`;
    /// - `ShutdownRequested` → `Stopped` (from `Running`).
    #[state(superstate = "running")]
    fn starting(&mut self, ctx: &mut Ctx, event: &Event) -> Outcome<State> {
        match event {
            Event::RecoveryStarted {
                redo_lsn,
                tli,
                history,
                min_recovery_point,
                crash_recovery_first,
            } => {
                let history = if history.timeline() == *tli && history.is_consistent() {
                    history.clone()
                } else {
                    ctx.report(Report::HistoryIgnored { tli: *tli });
                    TimelineHistory::root(*tli)
                };
                self.start(ctx, *redo_lsn, &history, *min_recovery_point);
                if self.promote_pending {
                    return self.promote(ctx);
                }
                if *crash_recovery_first {
                    return self.crash_round(ctx);
                }
                self.archive_round(ctx)
            }
            Event::BaseBackupPending { start, tli } => {
                let wait = self.await_base_backup(ctx, *start, *tli);
                Transition(State::awaiting_base_backup(wait))
            }
            Event::PromoteRequested { .. } => {
                self.promote_pending = true;
                ctx.because("promotion starts once recovery has started");
                Handled
            }
            _ => Super,
        }
    }

    /// The bulk of a base backup is still being copied (two-phase): the
    /// walreceiver streams from the copy's start and reports its flush
    /// position upstream; nothing is replayed (see [`super::backup_wait`]).
    ///
    /// Exits:
    /// - `RecoveryStarted` (the copy is complete and loaded) → `Streaming`
    ///   if the session streams, else `ArchiveRecovery` (or
    ///   `RetryingArchive`), as from `Starting`;
    /// - `PromoteRequested`: refused ("base backup not complete"), stays;
    /// - `StreamLost` / `TimerFired`: the session is started again after
    ///   wal_retrieve_retry_interval, stays;
    /// - `ShutdownRequested` → `Stopped` (from `Running`).
    #[state(superstate = "running")]
    fn awaiting_base_backup(
        &mut self,
        ctx: &mut Ctx,
        wait: &mut BackupWait,
        event: &Event,
    ) -> Outcome<State> {
        match event {
            Event::RecoveryStarted {
                redo_lsn,
                tli,
                history,
                min_recovery_point,
                crash_recovery_first,
            } => {
                if *redo_lsn != wait.start || *tli != self.timelines.target {
                    let message = format!(
                        "the completed copy starts at {redo_lsn} on timeline {}, but the base \
                         backup being waited for starts at {} on timeline {}",
                        tli.0, wait.start, self.timelines.target.0
                    );
                    let reason = self.exit(ctx, ExitReason::Fatal { message });
                    return Transition(State::stopped(reason));
                }
                let streaming =
                    self.base_backup_complete(ctx, *redo_lsn, history, *min_recovery_point);
                if *crash_recovery_first {
                    self.stop_receiver(ctx);
                    return self.crash_round(ctx);
                }
                if streaming {
                    return self.stream_news(ctx, false);
                }
                self.stop_receiver(ctx);
                self.archive_round(ctx)
            }
            Event::StreamConnected {
                session,
                upstream_tli,
                ..
            } => {
                self.backup_wait_connected(ctx, wait, *session, *upstream_tli);
                Handled
            }
            Event::WalFlushed { session, tli, upto } => {
                if !self.stale(ctx, *session) {
                    self.note_flush(ctx, *session, *tli, *upto);
                }
                Handled
            }
            Event::TimelineEnded {
                session,
                tli,
                next_tli,
                switch_point,
            } => {
                if !self.stale(ctx, *session) {
                    self.note_timeline_end(ctx, *session, *tli, *next_tli, *switch_point);
                    ctx.because("the new timeline is followed once redo starts");
                }
                Handled
            }
            Event::StreamLost { session, .. } | Event::WalReceiverStopped { session, .. } => {
                if !self.stale(ctx, *session) {
                    ctx.because(format!("{} while the copy is incomplete", event.kind()));
                    self.backup_wait_retry(ctx, wait);
                }
                Handled
            }
            Event::TimerFired => {
                self.backup_wait_timer(ctx, wait);
                Handled
            }
            Event::PromoteRequested { .. } => {
                ctx.report(Report::PromotionRefused {
                    why: NOT_COMPLETE.into(),
                });
                ctx.because(NOT_COMPLETE);
                Handled
            }
            _ => Super,
        }
    }

    /// Crash recovery: replay local `wal/` alone, segment by segment, until
    /// a segment is missing or a record is invalid (PostgreSQL replays
    /// pg_wal before archive recovery when the control file says crashed).
    ///
    /// Exits:
    /// - local WAL exhausted → `ArchiveRecovery` (minimum recovery point
    ///   raised to where crash recovery ended);
    /// - `PromoteRequested` → `Promoting` (from `Recovering`);
    /// - `ShutdownRequested` → `Stopped` (from `Running`).
    #[state(superstate = "recovering")]
    fn crash_recovery(&mut self, ctx: &mut Ctx, event: &Event) -> Outcome<State> {
        match self.on_round_event(ctx, event) {
            Some(RoundOutcome::Waiting) => Handled,
            Some(RoundOutcome::Exhausted(why)) => self.end_crash_recovery(ctx, why),
            None => Super,
        }
    }

    /// Archive recovery: each round optionally rescans for newer timelines,
    /// then fetches the next segment with restore_command, falling back to
    /// `wal/`, on each candidate timeline newest first, and replays it.
    ///
    /// Exits:
    /// - segment in neither archive nor `wal/`, or an invalid record →
    ///   `RetryingArchive`, starting the walreceiver if configured;
    /// - `PromoteRequested` → `Promoting` (from `Recovering`);
    /// - `ShutdownRequested` → `Stopped` (from `Running`).
    #[state(superstate = "recovering")]
    fn archive_recovery(&mut self, ctx: &mut Ctx, event: &Event) -> Outcome<State> {
        match self.on_round_event(ctx, event) {
            Some(RoundOutcome::Waiting) => Handled,
            Some(RoundOutcome::Exhausted(why)) => self.sources_failed(ctx, why),
            None => Super,
        }
    }

    /// No source had the WAL at the replay position. The walreceiver (if
    /// configured) tries to connect; the archive waits until the retry time
    /// (wal_retrieve_retry_interval, longer after restore_command failures
    /// or a ping-pong).
    ///
    /// Exits:
    /// - `StreamConnected` or `WalFlushed` of the current session →
    ///   `Streaming` (an upstream behind our timeline is refused: stays);
    /// - `TimelineEnded` at the replay position with a newer timeline to
    ///   follow → `ArchiveRecovery`;
    /// - `TimerFired` at the retry time (after redo is idle; a walreceiver
    ///   still connecting past its connect timeout is stopped) →
    ///   `ArchiveRecovery`;
    /// - `PromoteRequested` → `Promoting` (from `Recovering`), also while
    ///   backing off;
    /// - `UpstreamReloaded`: stays; the walreceiver stops, and starts now
    ///   with the new settings if there is an upstream and redo is idle
    ///   (else at the next round);
    /// - `ShutdownRequested` → `Stopped` (from `Running`).
    #[state(superstate = "recovering")]
    fn retrying_archive(
        &mut self,
        ctx: &mut Ctx,
        retry: &mut Retry,
        event: &Event,
    ) -> Outcome<State> {
        match event {
            Event::StreamConnected {
                session,
                upstream_tli,
                ..
            } => self.stream_connected(ctx, *session, *upstream_tli),
            Event::WalFlushed { session, tli, upto } => {
                if self.stale(ctx, *session) || !self.note_flush(ctx, *session, *tli, *upto) {
                    return Handled;
                }
                self.stream_news(ctx, false)
            }
            Event::TimelineEnded {
                session,
                tli,
                next_tli,
                switch_point,
            } => {
                if self.stale(ctx, *session)
                    || !self.note_timeline_end(ctx, *session, *tli, *next_tli, *switch_point)
                {
                    return Handled;
                }
                self.stream_news(ctx, false)
            }
            Event::UpstreamReloaded { stream_configured } => {
                self.upstream_reloaded(ctx, *stream_configured);
                self.stop_receiver(ctx);
                // Received WAL still being replayed: the next round starts it.
                if *stream_configured && self.replay_req.is_none() {
                    self.start_receiver(ctx, None);
                }
                Handled
            }
            Event::TimerFired => {
                if ctx.now < self.retry_deadline(retry) {
                    ctx.because("timer not due");
                    return Handled;
                }
                self.leave_retry(ctx)
            }
            Event::EndOfWalReached { .. } | Event::InvalidRecord { .. } => {
                match self.finish_replay(ctx, event) {
                    None => return Handled,
                    Some(ReplayEnd::Invalid(req))
                        if req.session.is_some_and(|s| self.is_current(s)) =>
                    {
                        self.stop_receiver(ctx);
                    }
                    Some(_) => {}
                }
                if ctx.now < self.retry_deadline(retry) {
                    return Handled;
                }
                self.leave_retry(ctx)
            }
            _ => Super,
        }
    }

    /// Replaying WAL as the walreceiver flushes it (PostgreSQL's STREAM
    /// source): one `Replay` at a time, up to the flush position, never past
    /// the end of the streamed timeline.
    ///
    /// Exits:
    /// - `StreamLost` → `RetryingArchive` (walreceiver gone);
    /// - `UpstreamReloaded` → `RetryingArchive`, the walreceiver stopped (the
    ///   next round connects to the new upstream, if there is one);
    /// - an invalid record from the stream → `RetryingArchive` (walreceiver
    ///   stopped, as after a disconnect);
    /// - replay reached the end of a timeline the upstream ended, and a
    ///   newer timeline can be followed → `ArchiveRecovery` (no wait);
    ///   otherwise → `RetryingArchive`;
    /// - `PromoteRequested` → `Promoting` (from `Recovering`);
    /// - `ShutdownRequested` → `Stopped` (from `Running`).
    #[state(superstate = "recovering")]
    fn streaming(&mut self, ctx: &mut Ctx, event: &Event) -> Outcome<State> {
        match event {
            Event::WalFlushed { session, tli, upto } => {
                if self.stale(ctx, *session) {
                    return Handled;
                }
                self.note_flush(ctx, *session, *tli, *upto);
                self.stream_news(ctx, true)
            }
            Event::TimelineEnded {
                session,
                tli,
                next_tli,
                switch_point,
            } => {
                if self.stale(ctx, *session)
                    || !self.note_timeline_end(ctx, *session, *tli, *next_tli, *switch_point)
                {
                    return Handled;
                }
                self.stream_news(ctx, true)
            }
            Event::StreamLost { session, reason } => {
                if self.stale(ctx, *session) {
                    return Handled;
                }
                self.receiver = None;
                ctx.because(format!("stream lost: {reason}"));
                self.wait_for_retry(ctx, None)
            }
            Event::StreamConnected { .. } => {
                ctx.because("already streaming");
                Handled
            }
            Event::UpstreamReloaded { stream_configured } => {
                self.upstream_reloaded(ctx, *stream_configured);
                self.stop_receiver(ctx);
                // As after a lost stream: what was received is replayed,
                // then the next round connects to the new upstream.
                self.wait_for_retry(ctx, None)
            }
            Event::EndOfWalReached { .. } | Event::InvalidRecord { .. } => {
                match self.finish_replay(ctx, event) {
                    None => Handled,
                    Some(ReplayEnd::Done(_)) => self.stream_news(ctx, true),
                    Some(ReplayEnd::Invalid(_)) => {
                        self.stop_receiver(ctx);
                        ctx.because("invalid record on the stream: treated as a disconnect");
                        self.wait_for_retry(ctx, None)
                    }
                }
            }
            _ => Super,
        }
    }

    /// The states that are still recovering WAL. Handles promotion requests
    /// and the bookkeeping of events its states do not handle themselves.
    ///
    /// Exits: `PromoteRequested` → `Promoting`. `UpstreamReloaded` stops
    /// a walreceiver running with stale settings (the next round starts
    /// one if there is an upstream).
    #[superstate(superstate = "running")]
    fn recovering(&mut self, ctx: &mut Ctx, event: &Event) -> Outcome<State> {
        match event {
            Event::PromoteRequested { .. } => self.promote(ctx),
            Event::UpstreamReloaded { stream_configured } => {
                self.upstream_reloaded(ctx, *stream_configured);
                self.stop_receiver(ctx);
                Handled
            }
            Event::WalFlushed { session, tli, upto } => {
                if !self.stale(ctx, *session) {
                    self.note_flush(ctx, *session, *tli, *upto);
                }
                Handled
            }
            Event::TimelineEnded {
                session,
                tli,
                next_tli,
                switch_point,
            } => {
                if !self.stale(ctx, *session) {
                    self.note_timeline_end(ctx, *session, *tli, *next_tli, *switch_point);
                }
                Handled
            }
            Event::StreamLost { session, reason } => {
                if !self.stale(ctx, *session) {
                    self.receiver = None;
                    ctx.because(format!("walreceiver ended: {reason}"));
                }
                Handled
            }
            Event::WalReplayed { upto } => {
                self.note_replayed(ctx, *upto);
                Handled
            }
            Event::EndOfWalReached { .. } | Event::InvalidRecord { .. } => {
                self.finish_replay(ctx, event);
                Handled
            }
            _ => Super,
        }
    }

    /// Ending recovery (see [`super::promotion`]): stop the walreceiver and
    /// wait for it; replay what was received, then what archive and `wal/`
    /// hold; probe for timelines in use; write the history file and the
    /// end-of-recovery record.
    ///
    /// Exits:
    /// - `EndOfRecoveryWritten` → `Promoted`;
    /// - WAL ends before the minimum recovery point, or
    ///   `PromotionStepFailed` → `Stopped` (fatal);
    /// - `ShutdownRequested` → `Stopped` (from `Running`).
    #[state(superstate = "running")]
    fn promoting(
        &mut self,
        ctx: &mut Ctx,
        promotion: &mut Promotion,
        event: &Event,
    ) -> Outcome<State> {
        let next = match event {
            Event::WalReplayed { upto } => {
                self.note_replayed(ctx, *upto);
                Next::Wait
            }
            Event::EndOfWalReached { .. } | Event::InvalidRecord { .. } => {
                match self.finish_replay(ctx, event) {
                    Some(end) if end.request().for_round => {
                        self.round_on_replay(ctx, end);
                        self.promotion_advance(ctx, promotion)
                    }
                    Some(_) => self.promotion_advance(ctx, promotion),
                    None => Next::Wait,
                }
            }
            Event::WalFlushed { session, tli, upto } => {
                self.promotion_on_flush(ctx, promotion, *session, *tli, *upto)
            }
            Event::WalReceiverStopped { session, flushed } => {
                self.promotion_on_receiver_stopped(ctx, promotion, *session, *flushed)
            }
            Event::TimerFired => self.promotion_on_timer(ctx, promotion),
            Event::HistoryFileWritten { tli } => {
                self.promotion_on_history_written(ctx, promotion, *tli)
            }
            Event::EndOfRecoveryWritten { tli, .. } => {
                self.promotion_on_end_written(ctx, promotion, *tli)
            }
            Event::PromotionStepFailed { step, reason } => {
                self.promotion_on_step_failed(ctx, promotion, *step, reason)
            }
            Event::PromoteRequested { .. } => {
                ctx.because("already promoting");
                Next::Wait
            }
            _ if super::shared::is_fetch_answer(event) => match self.take_fetch(ctx, event) {
                Some((req, outcome)) => self.promotion_on_fetch(ctx, promotion, req, outcome),
                None => Next::Wait,
            },
            _ => return Super,
        };
        self.after_promotion_step(ctx, next)
    }

    /// Recovery is over and the node accepts writes on timeline `tli`.
    ///
    /// Exits: `ShutdownRequested` → `Stopped` (from `Running`).
    #[state(superstate = "running", entry_action = "enter_promoted")]
    fn promoted(&mut self, ctx: &mut Ctx, tli: &mut TimelineId, event: &Event) -> Outcome<State> {
        match event {
            Event::PromoteRequested { .. } => {
                ctx.because(format!("already promoted to timeline {}", tli.0));
                Handled
            }
            _ => Super,
        }
    }

    #[action]
    fn enter_promoted(&mut self, ctx: &mut Ctx, tli: &mut TimelineId) {
        ctx.act(Action::AcceptWrites { tli: *tli });
    }

    /// Recovery stopped (shutdown or a fatal error); the startup process
    /// exits. Final: every event is ignored.
    ///
    /// Exits: none.
    #[state(entry_action = "enter_stopped")]
    fn stopped(&mut self, ctx: &mut Ctx, reason: &mut ExitReason, event: &Event) -> Outcome<State> {
        ctx.because(format!(
            "{} ignored: recovery stopped ({reason})",
            event.kind()
        ));
        Handled
    }

    #[action]
    fn enter_stopped(&mut self, ctx: &mut Ctx, reason: &mut ExitReason) {
        ctx.act(Action::Exit {
            reason: reason.clone(),
        });
    }

    /// Every state but `Stopped`: handles shutdown and records WAL held
    /// unconfirmed (or truncated); ignores what no state below handled. `UpstreamReloaded` only records whether the stream is
    /// a source (`Starting`; `Promoting` stops the walreceiver itself).
    ///
    /// Exits: `ShutdownRequested` → `Stopped` (walreceiver stopped).
    #[superstate]
    fn running(&mut self, ctx: &mut Ctx, event: &Event) -> Outcome<State> {
        match event {
            Event::ShutdownRequested => {
                let reason = self.exit(ctx, ExitReason::Shutdown);
                Transition(State::stopped(reason))
            }
            Event::HistoryReceived { tli, history, .. } => {
                self.note_history(ctx, *tli, history);
                Handled
            }
            Event::UpstreamReloaded { stream_configured } => {
                self.upstream_reloaded(ctx, *stream_configured);
                Handled
            }
            Event::UnconfirmedWalHeld { tli, from, to, .. } => {
                self.note_unconfirmed_held(ctx, *tli, *from, *to);
                Handled
            }
            Event::UnconfirmedWalTruncated { tli, from, .. } => {
                self.note_unconfirmed_truncated(ctx, *tli, *from);
                Handled
            }
            Event::InlineApplyWithdrawn { session, applied } => {
                self.note_applied_inline(ctx, *session, *applied);
                Handled
            }
            _ => {
                if ctx.causes.is_empty() {
                    ctx.because(format!("{} not expected here", event.kind()));
                }
                Handled
            }
        }
    }
}

impl Machine {
    /// statig's hook (its `before_transition` swaps source and target in
    /// 0.4.1, so the trace is taken here).
    fn after_transition(&mut self, source: &State, target: &State, ctx: &mut Ctx) {
        ctx.moved = Some((source.kind(), target.kind()));
    }

    /// Round events (archive-fetcher answers, redo results) for the states
    /// that run a round; `None` for other events.
    fn on_round_event(&mut self, ctx: &mut Ctx, event: &Event) -> Option<RoundOutcome> {
        if super::shared::is_fetch_answer(event) {
            return Some(match self.take_fetch(ctx, event) {
                Some((req, outcome)) => self.round_on_fetch(ctx, req, outcome),
                None => RoundOutcome::Waiting,
            });
        }
        match event {
            Event::WalReplayed { upto } => {
                self.note_replayed(ctx, *upto);
                Some(RoundOutcome::Waiting)
            }
            Event::EndOfWalReached { .. } | Event::InvalidRecord { .. } => {
                Some(match self.finish_replay(ctx, event) {
                    Some(end) if end.request().for_round => self.round_on_replay(ctx, end),
                    _ => RoundOutcome::Waiting,
                })
            }
            _ => None,
        }
    }

    /// Start a crash-recovery round over `wal/`.
    fn crash_round(&mut self, ctx: &mut Ctx) -> Outcome<State> {
        match self.round_start(ctx, RoundMode::LocalOnly) {
            RoundOutcome::Waiting => Transition(State::crash_recovery()),
            RoundOutcome::Exhausted(why) => self.end_crash_recovery(ctx, why),
        }
    }

    /// Start a standby round over archive and `wal/`.
    fn archive_round(&mut self, ctx: &mut Ctx) -> Outcome<State> {
        match self.round_start(ctx, RoundMode::Standby) {
            RoundOutcome::Waiting => Transition(State::archive_recovery()),
            RoundOutcome::Exhausted(why) => self.sources_failed(ctx, why),
        }
    }

    /// Crash recovery found the end of local WAL: archive recovery from here.
    fn end_crash_recovery(&mut self, ctx: &mut Ctx, why: Exhaustion) -> Outcome<State> {
        ctx.because(format!("crash recovery ends: {why}"));
        self.min_recovery_point = self.min_recovery_point.max(self.replay_lsn);
        ctx.report(Report::CrashRecoveryComplete {
            at: self.replay_lsn,
        });
        self.check_consistency(ctx);
        self.archive_round(ctx)
    }

    /// Archive and `wal/` have nothing at the replay position.
    fn sources_failed(&mut self, ctx: &mut Ctx, why: Exhaustion) -> Outcome<State> {
        ctx.because(why.to_string());
        let missing = match why {
            Exhaustion::NotFound {
                segno,
                previous_complete: true,
            } => Some(segno),
            _ => None,
        };
        self.wait_for_retry(ctx, Some(missing))
    }

    /// Go to `RetryingArchive`, starting the walreceiver if asked
    /// (`Some`, with the segment no source had, if known).
    fn wait_for_retry(
        &mut self,
        ctx: &mut Ctx,
        start_stream: Option<Option<SegNo>>,
    ) -> Outcome<State> {
        self.round = None;
        let receiving = self
            .receiver
            .as_ref()
            .is_some_and(|r| r.status != ReceiverStatus::Ended);
        if let (Some(missing), true, false) =
            (start_stream, self.config.stream_configured, receiving)
        {
            self.start_receiver(ctx, missing);
        }
        let delay_ms = self.retry_delay_ms(ctx);
        let deadline = self.round_started_at.after_ms(delay_ms).max(ctx.now);
        ctx.act(Action::ArmRetry {
            delay_ms: deadline.since_ms(ctx.now),
        });
        Transition(State::retrying_archive(Retry { deadline }))
    }

    /// When `RetryingArchive` may move on: the retry time, or later while a
    /// walreceiver is still within its connect timeout.
    pub(crate) fn retry_deadline(&self, retry: &Retry) -> Millis {
        match &self.receiver {
            Some(r) if r.status == ReceiverStatus::Connecting => retry.deadline.max(
                r.started_at
                    .after_ms(self.config.wal_receiver_connect_timeout_ms),
            ),
            _ => retry.deadline,
        }
    }

    /// The retry time has come: a new round over the archive.
    fn leave_retry(&mut self, ctx: &mut Ctx) -> Outcome<State> {
        if self.replay_req.is_some() {
            ctx.because("waiting for redo to finish");
            return Handled;
        }
        if let Some(r) = self.receiver.clone() {
            if r.status == ReceiverStatus::Connecting {
                ctx.report(Report::ReceiverConnectTimeout {
                    after_ms: ctx.now.since_ms(r.started_at),
                });
                self.stop_receiver(ctx);
            }
        }
        self.archive_round(ctx)
    }

    /// `StreamConnected` while retrying.
    fn stream_connected(
        &mut self,
        ctx: &mut Ctx,
        session: super::event::SessionId,
        upstream_tli: TimelineId,
    ) -> Outcome<State> {
        if self.stale(ctx, session) {
            return Handled;
        }
        self.timelines.saw(upstream_tli);
        let Some(r) = self.receiver.as_mut() else {
            return Handled;
        };
        if upstream_tli < r.tli {
            let ours = r.tli;
            ctx.report(Report::UpstreamTimelineBehind {
                upstream: upstream_tli,
                ours,
            });
            self.stop_receiver(ctx);
            return Handled;
        }
        if r.status == ReceiverStatus::Connecting {
            r.status = ReceiverStatus::Streaming;
        }
        self.stream_news(ctx, false)
    }

    /// After the stream moved (flush, timeline end, replay done): replay
    /// more, or follow a new timeline when the stream is exhausted at its
    /// timeline's end. `streaming`: whether the machine is in `Streaming`.
    fn stream_news(&mut self, ctx: &mut Ctx, streaming: bool) -> Outcome<State> {
        self.maybe_stream_replay(ctx, true);
        if self.stream_exhausted_at_end() {
            return self.stream_ended(ctx);
        }
        if streaming {
            Handled
        } else {
            Transition(State::streaming())
        }
    }

    /// The upstream's timeline ended where replay is: rescan (PostgreSQL's
    /// rescanLatestTimeLine over the histories the walreceiver fetched) and
    /// go straight to the archive on success; otherwise wait and retry.
    fn stream_ended(&mut self, ctx: &mut Ctx) -> Outcome<State> {
        let follows = self.config.target_timeline == super::config::TargetTimeline::Latest;
        if let Some(newest) = self.timelines.newest_known(None).filter(|_| follows) {
            if self.follow(ctx, newest) {
                ctx.because("upstream timeline ended: following the new timeline");
                return self.archive_round(ctx);
            }
        }
        ctx.because("upstream timeline ended with no timeline to follow");
        self.wait_for_retry(ctx, None)
    }

    /// A reload changed the upstream settings: the stream is a WAL source
    /// from now on if and only if `stream_configured`.
    fn upstream_reloaded(&mut self, ctx: &mut Ctx, stream_configured: bool) {
        self.config.stream_configured = stream_configured;
        ctx.because(if stream_configured {
            "primary_conninfo changed by a reload: streaming from the new upstream"
        } else {
            "primary_conninfo removed by a reload: no longer streaming"
        });
    }

    /// Enter `Promoting` (or go further at once).
    fn promote(&mut self, ctx: &mut Ctx) -> Outcome<State> {
        let (promotion, next) = self.begin_promotion(ctx);
        match next {
            Next::Wait => Transition(State::promoting(promotion)),
            other => self.after_promotion_step(ctx, other),
        }
    }

    /// What a promotion step leads to, from inside `Promoting`.
    fn after_promotion_step(&mut self, ctx: &mut Ctx, next: Next) -> Outcome<State> {
        match next {
            Next::Wait => Handled,
            Next::Fatal(message) => {
                let reason = self.exit(ctx, ExitReason::Fatal { message });
                Transition(State::stopped(reason))
            }
            Next::Promoted(tli) => Transition(State::promoted(tli)),
        }
    }
}

impl State {
    /// This state's kind.
    pub fn kind(&self) -> StateKind {
        match self {
            State::Starting {} => StateKind::Starting,
            State::AwaitingBaseBackup { .. } => StateKind::AwaitingBaseBackup,
            State::CrashRecovery {} => StateKind::CrashRecovery,
            State::ArchiveRecovery {} => StateKind::ArchiveRecovery,
            State::RetryingArchive { .. } => StateKind::RetryingArchive,
            State::Streaming {} => StateKind::Streaming,
            State::Promoting { .. } => StateKind::Promoting,
            State::Promoted { .. } => StateKind::Promoted,
            State::Stopped { .. } => StateKind::Stopped,
        }
    }
}
