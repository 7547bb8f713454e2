//! Promotion, step by step (PostgreSQL's FinishWalRecovery and the end of
//! StartupXLOG): stop the walreceiver and wait until it has stopped; replay
//! everything already here (received WAL, then archive and `wal/` once);
//! refuse to end before the minimum recovery point; probe for timelines in
//! use (findNewestTimeLine); write the new timeline's history file; write
//! the end-of-recovery record; then accept writes.

use serde::{Deserialize, Serialize};

use super::action::{Action, ExitReason, Report};
use super::event::{PromotionStep, SessionId, WalFile};
use super::round_state::{Location, RoundMode, RoundOutcome};
use super::shared::{Ctx, FetchOutcome, FetchRequest, Machine};
use crate::lsn::{Lsn, TimelineId};
use crate::time::Millis;

/// Probing the archive for history files gives up after this many
/// restore_command failures for one file (then only `wal/` is checked).
pub const MAX_PROBE_FAILURES: u32 = 3;

/// The reason text of the history file line (PostgreSQL's, for a promotion).
pub const PROMOTION_REASON: &str = "no recovery target specified";

/// Where promotion is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Waiting for `WalReceiverStopped` of `session`.
    StoppingReceiver {
        /// The session being stopped.
        session: SessionId,
        /// When to ask again.
        deadline: Millis,
        /// How many times it was asked.
        attempts: u32,
    },
    /// Replaying what is here: received WAL, then one round over archive
    /// and `wal/`.
    Draining,
    /// Looking for `tli`'s history file (findNewestTimeLine).
    Probing {
        /// The timeline whose history file is asked for.
        tli: TimelineId,
        /// Asked of the archive or `wal/`.
        at: Location,
        /// restore_command failures for this file.
        failures: u32,
        /// When to retry a failed probe.
        retry_at: Option<Millis>,
        /// History files probed so far.
        probes: u32,
    },
    /// Waiting for `HistoryFileWritten`.
    WritingHistory {
        /// The new timeline.
        tli: TimelineId,
        /// The timeline it forks from.
        parent: TimelineId,
        /// Where the new timeline begins.
        switch_point: Lsn,
    },
    /// Waiting for `EndOfRecoveryWritten`.
    WritingEndOfRecovery {
        /// The new timeline.
        tli: TimelineId,
        /// The timeline it forks from.
        parent: TimelineId,
        /// Where the new timeline begins.
        switch_point: Lsn,
    },
}

/// The state-local data of `Promoting`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// Where promotion is.
    pub phase: Phase,
    /// A round over archive and `wal/` ran during promotion (or was
    /// running when it began): draining does not start another.
    pub round_done: bool,
}

/// What promotion does next.
pub enum Next {
    /// Wait for the runtime.
    Wait,
    /// Recovery cannot end: stop with this message.
    Fatal(String),
    /// The end-of-recovery record is written on `tli`: promoted.
    Promoted(TimelineId),
}

impl Machine {
    /// Begin promoting: stop the walreceiver, or start draining.
    pub(crate) fn begin_promotion(&mut self, ctx: &mut Ctx) -> (Promotion, Next) {
        let round_running = self.round.is_some();
        let archive = self.config.archive_configured;
        if let Some(r) = self.round.as_mut() {
            if r.mode == RoundMode::LocalOnly {
                // Crash recovery's round may now use the archive too.
                r.skip_archive = !archive;
            }
            r.mode = RoundMode::Promotion;
        }
        let phase = match self.stop_receiver(ctx) {
            Some(session) => Phase::StoppingReceiver {
                session,
                deadline: ctx.now.after_ms(self.config.receiver_stop_timeout_ms),
                attempts: 1,
            },
            None => Phase::Draining,
        };
        let mut p = Promotion {
            phase,
            round_done: round_running,
        };
        let next = self.promotion_advance(ctx, &mut p);
        (p, next)
    }

    /// Do every step that needs no answer from the runtime.
    pub(crate) fn promotion_advance(&mut self, ctx: &mut Ctx, p: &mut Promotion) -> Next {
        if p.phase != Phase::Draining || !self.drain_step(ctx, &mut p.round_done) {
            return Next::Wait;
        }
        if self.replay_lsn < self.min_recovery_point {
            return Next::Fatal(format!(
                "WAL ends at {} before consistent recovery point {}",
                self.replay_lsn, self.min_recovery_point
            ));
        }
        match self.timelines.highest_seen.checked_next() {
            Some(tli) => self.probe(ctx, p, tli, 0, 0),
            None => Next::Fatal("no timeline ID left to promote to".into()),
        }
    }

    /// One drain step; `true` once nothing more can be replayed.
    fn drain_step(&mut self, ctx: &mut Ctx, round_done: &mut bool) -> bool {
        if self.replay_req.is_some() || self.fetch_req.is_some() || self.round.is_some() {
            return false;
        }
        if self.maybe_stream_replay(ctx, false) {
            return false;
        }
        if !*round_done {
            *round_done = true;
            if self.round_start(ctx, RoundMode::Promotion) == RoundOutcome::Waiting {
                return false;
            }
        }
        true
    }

    /// Ask whether `tli`'s history file exists (archive first).
    fn probe(
        &mut self,
        ctx: &mut Ctx,
        p: &mut Promotion,
        tli: TimelineId,
        failures: u32,
        probes: u32,
    ) -> Next {
        if probes >= super::round_state::MAX_TIMELINE_PROBES {
            return self.choose_timeline(ctx, p);
        }
        let archive = self.config.archive_configured && failures < MAX_PROBE_FAILURES;
        let at = if archive {
            Location::Archive
        } else {
            Location::Local
        };
        p.phase = Phase::Probing {
            tli,
            at,
            failures,
            retry_at: None,
            probes: probes + 1,
        };
        self.request(ctx, WalFile::History { tli }, at);
        Next::Wait
    }

    /// An archive-fetcher answer while promoting.
    pub(crate) fn promotion_on_fetch(
        &mut self,
        ctx: &mut Ctx,
        p: &mut Promotion,
        req: FetchRequest,
        outcome: FetchOutcome,
    ) -> Next {
        match p.phase.clone() {
            Phase::Probing {
                tli,
                at,
                failures,
                probes,
                ..
            } => self.probe_answer(ctx, p, (tli, at, failures, probes), outcome),
            _ => {
                // The round keeps going while the walreceiver stops.
                if self.round_on_fetch(ctx, req, outcome) != RoundOutcome::Waiting {
                    ctx.because("nothing more in archive or wal/");
                }
                self.promotion_advance(ctx, p)
            }
        }
    }

    fn probe_answer(
        &mut self,
        ctx: &mut Ctx,
        p: &mut Promotion,
        (tli, at, failures, probes): (TimelineId, Location, u32, u32),
        outcome: FetchOutcome,
    ) -> Next {
        let outcome = match outcome {
            FetchOutcome::Found(Some(h)) if h.timeline() == tli => FetchOutcome::Found(None),
            FetchOutcome::Found(_) => FetchOutcome::Missing,
            other => other,
        };
        match outcome {
            FetchOutcome::Found(_) => match self.timelines.highest_seen.checked_next() {
                Some(next) => self.probe(ctx, p, next, 0, probes),
                None => Next::Fatal("no timeline ID left to promote to".into()),
            },
            FetchOutcome::Missing if at == Location::Archive => {
                self.probe_local(ctx, p, tli, failures, probes)
            }
            FetchOutcome::Missing => self.choose_timeline(ctx, p),
            FetchOutcome::Failed(_) if failures + 1 >= MAX_PROBE_FAILURES => {
                ctx.report(Report::TimelineProbeGaveUp {
                    tli,
                    failures: failures + 1,
                });
                self.probe_local(ctx, p, tli, failures + 1, probes)
            }
            FetchOutcome::Failed(_) => {
                let delay_ms = self.config.backoff_ms(failures + 1);
                p.phase = Phase::Probing {
                    tli,
                    at,
                    failures: failures + 1,
                    retry_at: Some(ctx.now.after_ms(delay_ms)),
                    probes,
                };
                ctx.act(Action::ArmRetry { delay_ms });
                Next::Wait
            }
        }
    }

    fn probe_local(
        &mut self,
        ctx: &mut Ctx,
        p: &mut Promotion,
        tli: TimelineId,
        failures: u32,
        probes: u32,
    ) -> Next {
        p.phase = Phase::Probing {
            tli,
            at: Location::Local,
            failures,
            retry_at: None,
            probes,
        };
        self.request(ctx, WalFile::History { tli }, Location::Local);
        Next::Wait
    }

    /// The timer while promoting: ask the walreceiver again to stop, or
    /// retry a failed probe.
    pub(crate) fn promotion_on_timer(&mut self, ctx: &mut Ctx, p: &mut Promotion) -> Next {
        match p.phase.clone() {
            Phase::StoppingReceiver {
                session,
                deadline,
                attempts,
            } if ctx.now >= deadline => {
                let attempts = attempts.saturating_add(1);
                ctx.report(Report::ReceiverStopSlow { attempts });
                ctx.act(Action::StopWalReceiver { session });
                let wait_ms = self
                    .config
                    .receiver_stop_timeout_ms
                    .saturating_mul(u64::from(attempts))
                    .min(
                        self.config
                            .retry_backoff_max_ms
                            .max(self.config.receiver_stop_timeout_ms),
                    );
                p.phase = Phase::StoppingReceiver {
                    session,
                    deadline: ctx.now.after_ms(wait_ms),
                    attempts,
                };
                Next::Wait
            }
            Phase::Probing {
                tli,
                failures,
                retry_at: Some(at),
                probes,
                ..
            } if ctx.now >= at => self.probe(ctx, p, tli, failures, probes.saturating_sub(1)),
            _ => {
                ctx.because("timer not due");
                Next::Wait
            }
        }
    }

    /// `WalFlushed` while promoting: only the session being stopped still
    /// writes. Any other session was stopped (or ended) before, writes no
    /// more and its stop carried its last position, so a flush reported
    /// for it is stale, as in the recovering states; taking it would leave
    /// WAL promotion has already passed over unreplayed.
    pub(crate) fn promotion_on_flush(
        &mut self,
        ctx: &mut Ctx,
        p: &Promotion,
        session: SessionId,
        tli: TimelineId,
        upto: Lsn,
    ) -> Next {
        match p.phase {
            Phase::StoppingReceiver { session: s, .. } if s == session => {
                self.note_flush(ctx, session, tli, upto);
            }
            _ => ctx.because(format!(
                "flush of session {session}, which is not being stopped"
            )),
        }
        Next::Wait
    }

    /// The walreceiver stopped: everything it received is flushed.
    pub(crate) fn promotion_on_receiver_stopped(
        &mut self,
        ctx: &mut Ctx,
        p: &mut Promotion,
        session: SessionId,
        flushed: Lsn,
    ) -> Next {
        match p.phase {
            Phase::StoppingReceiver { session: s, .. } if s == session => {}
            _ => {
                ctx.because(format!("not waiting for session {session} to stop"));
                return Next::Wait;
            }
        }
        if let Some(rec) = self.received.as_mut().filter(|r| r.session == session) {
            rec.upto = rec.upto.max(flushed);
        }
        p.phase = Phase::Draining;
        self.promotion_advance(ctx, p)
    }

    /// Pick timeline highest-seen + 1 and write its history file.
    fn choose_timeline(&mut self, ctx: &mut Ctx, p: &mut Promotion) -> Next {
        let Some(tli) = self.timelines.highest_seen.checked_next() else {
            return Next::Fatal("no timeline ID left to promote to".into());
        };
        let switch_point = self.replay_lsn;
        let (parent, history) = self.timelines.fork(tli, switch_point);
        self.promoted_tli = Some(tli);
        ctx.report(Report::SelectedNewTimeline { tli });
        ctx.act(Action::RemoveStandbySignal);
        ctx.act(Action::WriteHistoryFile {
            tli,
            parent,
            switch_point,
            reason: PROMOTION_REASON.into(),
            history,
        });
        p.phase = Phase::WritingHistory {
            tli,
            parent,
            switch_point,
        };
        Next::Wait
    }

    /// `HistoryFileWritten`: write the end-of-recovery record.
    pub(crate) fn promotion_on_history_written(
        &mut self,
        ctx: &mut Ctx,
        p: &mut Promotion,
        written: TimelineId,
    ) -> Next {
        let Phase::WritingHistory {
            tli,
            parent,
            switch_point,
        } = p.phase
        else {
            ctx.because("no history file being written");
            return Next::Wait;
        };
        if written != tli {
            ctx.because(format!(
                "history file of {} is not the one written",
                written.0
            ));
            return Next::Wait;
        }
        ctx.act(Action::WriteEndOfRecovery {
            tli,
            prev_tli: parent,
            at: switch_point,
        });
        p.phase = Phase::WritingEndOfRecovery {
            tli,
            parent,
            switch_point,
        };
        Next::Wait
    }

    /// `EndOfRecoveryWritten`: end the cascaded timeline; promoted.
    pub(crate) fn promotion_on_end_written(
        &mut self,
        ctx: &mut Ctx,
        p: &Promotion,
        written: TimelineId,
    ) -> Next {
        let Phase::WritingEndOfRecovery {
            tli,
            parent,
            switch_point,
        } = p.phase
        else {
            ctx.because("no end-of-recovery record being written");
            return Next::Wait;
        };
        if written != tli {
            ctx.because(format!("end-of-recovery on {} is not ours", written.0));
            return Next::Wait;
        }
        ctx.act(Action::EndCascadingTimeline {
            tli: parent,
            switch_point,
            next_tli: tli,
        });
        ctx.report(Report::ArchiveRecoveryComplete { end: switch_point });
        Next::Promoted(tli)
    }

    /// A promotion step failed: fatal if it is the step being waited for.
    pub(crate) fn promotion_on_step_failed(
        &mut self,
        ctx: &mut Ctx,
        p: &Promotion,
        step: PromotionStep,
        reason: &str,
    ) -> Next {
        let waiting = matches!(
            (&p.phase, step),
            (
                Phase::WritingHistory { .. },
                PromotionStep::WriteHistoryFile
            ) | (
                Phase::WritingEndOfRecovery { .. },
                PromotionStep::WriteEndOfRecovery
            )
        );
        if !waiting {
            ctx.because(format!("{step:?} is not being executed"));
            return Next::Wait;
        }
        Next::Fatal(format!("promotion step {step:?} failed: {reason}"))
    }

    /// The timer deadline of promotion, if it waits for one.
    pub(crate) fn promotion_deadline(p: &Promotion) -> Option<Millis> {
        match p.phase {
            Phase::StoppingReceiver { deadline, .. } => Some(deadline),
            Phase::Probing { retry_at, .. } => retry_at,
            _ => None,
        }
    }

    /// Stop with `reason`.
    pub(crate) fn exit(&mut self, ctx: &mut Ctx, reason: ExitReason) -> ExitReason {
        self.stop_receiver(ctx);
        reason
    }
}
