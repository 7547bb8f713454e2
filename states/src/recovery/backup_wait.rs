//! The two-phase base backup's wait (`AwaitingBaseBackup`): WAL streams
//! in and is made durable while the bulk of the copy is still being
//! written, but nothing is replayed until the copy is complete.
//!
//! Seed 001's "mechanism for telling the startup process to sleep because
//! we are doing a two-phase backup and another mechanism for waking it when
//! the whole backup is complete": the runtime reports
//! [`Event::BaseBackupPending`](super::Event::BaseBackupPending) instead of starting recovery, and
//! [`Event::RecoveryStarted`](super::Event::RecoveryStarted) once the copy's durable completion marker is
//! there and its snapshot is loaded.
//!
//! Why the walreceiver runs from the start: the upstream's slot then holds
//! only the WAL the standby has not received yet, and the standby reports
//! a flush position, so it may count as a synchronous standby for
//! `remote_write` and `on` long before it could replay anything (never for
//! `remote_apply`: nothing is applied).

use serde::{Deserialize, Serialize};

use super::action::{Action, Report};
use super::event::SessionId;
use super::shared::{Ctx, Machine, ReceiverStatus, Stall};
use super::timelines::Timelines;
use crate::history::TimelineHistory;
use crate::lsn::{Lsn, TimelineId};
use crate::time::Millis;

/// `AwaitingBaseBackup`'s data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupWait {
    /// Where the copy's redo will start (its backup_label's start).
    pub start: Lsn,
    /// When to start the next walreceiver session, after one was lost.
    pub retry_at: Option<Millis>,
}

/// Why promotion is refused while the copy is incomplete (the words
/// `walrep promote` and the log show).
pub const NOT_COMPLETE: &str = "base backup not complete";

impl Machine {
    /// `BaseBackupPending`: position the machine at the copy's start and
    /// start streaming from there (if a primary is configured).
    pub(crate) fn await_base_backup(
        &mut self,
        ctx: &mut Ctx,
        start: Lsn,
        tli: TimelineId,
    ) -> BackupWait {
        self.replay_lsn = start;
        self.timelines = Timelines::new(TimelineHistory::root(tli));
        self.stall = Stall {
            at: start,
            count: 0,
        };
        if self.promote_pending {
            self.promote_pending = false;
            ctx.report(Report::PromotionRefused {
                why: NOT_COMPLETE.into(),
            });
        }
        ctx.because("base backup incomplete: WAL is received, redo waits for the copy");
        if self.config.stream_configured {
            self.start_receiver(ctx, None);
        } else {
            ctx.because("no primary_conninfo: nothing streams until the copy completes");
        }
        BackupWait {
            start,
            retry_at: None,
        }
    }

    /// `RecoveryStarted` while waiting: the copy is complete. Recovery
    /// starts as it would have, keeping the walreceiver session and what
    /// it learned of timelines. Returns whether the session is streaming
    /// (so replay can follow the stream at once).
    pub(crate) fn base_backup_complete(
        &mut self,
        ctx: &mut Ctx,
        redo_lsn: Lsn,
        history: &TimelineHistory,
        min_recovery_point: Lsn,
    ) -> bool {
        let before = self.timelines.clone();
        self.start(ctx, redo_lsn, history, min_recovery_point);
        self.timelines.saw(before.highest_seen);
        for (tli, h) in &before.known {
            if *tli > self.timelines.target {
                let _ = self.timelines.learn(*tli, h);
            }
        }
        ctx.because("base backup complete: redo starts");
        self.receiver
            .as_ref()
            .is_some_and(|r| r.status == ReceiverStatus::Streaming)
    }

    /// `StreamConnected` while waiting: an upstream behind our timeline is
    /// refused (and retried later), any other makes a connecting session
    /// stream.
    pub(crate) fn backup_wait_connected(
        &mut self,
        ctx: &mut Ctx,
        wait: &mut BackupWait,
        session: SessionId,
        upstream_tli: TimelineId,
    ) {
        if self.stale(ctx, session) {
            return;
        }
        self.timelines.saw(upstream_tli);
        let Some(r) = self.receiver.as_mut() else {
            return;
        };
        if upstream_tli < r.tli {
            let ours = r.tli;
            ctx.report(Report::UpstreamTimelineBehind {
                upstream: upstream_tli,
                ours,
            });
            self.stop_receiver(ctx);
            self.backup_wait_retry(ctx, wait);
            return;
        }
        // Only a connecting session starts streaming: one that already
        // ended its timeline stays ended (it streams nothing more until a
        // new session restarts it), as in `RetryingArchive`.
        match r.status {
            ReceiverStatus::Connecting => r.status = ReceiverStatus::Streaming,
            ReceiverStatus::Streaming => ctx.because("already streaming"),
            ReceiverStatus::Ended => ctx.because(format!(
                "session {session} already ended timeline {}",
                r.tli.0
            )),
        }
    }

    /// The session ended: start another after wal_retrieve_retry_interval.
    pub(crate) fn backup_wait_retry(&mut self, ctx: &mut Ctx, wait: &mut BackupWait) {
        self.receiver = None;
        if !self.config.stream_configured {
            return;
        }
        let delay_ms = self.config.wal_retrieve_retry_interval_ms;
        wait.retry_at = Some(ctx.now.after_ms(delay_ms));
        ctx.act(Action::ArmRetry { delay_ms });
    }

    /// The retry time came: stream again from the start of the segment
    /// holding what was last flushed (the upstream's slot may already have
    /// removed what came before it).
    pub(crate) fn backup_wait_timer(&mut self, ctx: &mut Ctx, wait: &mut BackupWait) {
        match wait.retry_at {
            Some(at) if ctx.now >= at && self.receiver.is_none() => {
                wait.retry_at = None;
                let seg = self.config.wal_segment_size;
                let flushed = self.received.as_ref().map_or(wait.start, |r| r.upto);
                let from = flushed.max(wait.start).segment_start(seg);
                self.start_receiver_at(ctx, from);
            }
            Some(_) => ctx.because("timer not due"),
            None => ctx.because("no retry armed"),
        }
    }
}
