//! Actions: what the recovery machine tells the runtime to do, each an
//! imperative with its data (`RestoreSegment { tli, segno }`), and the
//! reports it asks the runtime to log.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::event::{RecordCheck, SessionId, WalFile};
use crate::history::TimelineHistory;
use crate::lsn::{Lsn, TimelineId};

/// Where the WAL being replayed came from (PostgreSQL's XLogSource).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum WalSource {
    /// Restored by restore_command (XLOG_FROM_ARCHIVE).
    Archive,
    /// Found in `wal/` (XLOG_FROM_PG_WAL).
    Local,
    /// Written by the walreceiver (XLOG_FROM_STREAM).
    Stream,
}

impl fmt::Display for WalSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WalSource::Archive => "archive",
            WalSource::Local => "local",
            WalSource::Stream => "stream",
        })
    }
}

/// Why recovery stopped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "reason")]
pub enum ExitReason {
    /// The node asked for a shutdown.
    Shutdown,
    /// Recovery cannot go on (PostgreSQL would FATAL): the message says why.
    Fatal {
        /// What went wrong.
        message: String,
    },
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Shutdown => f.write_str("shutdown"),
            ExitReason::Fatal { message } => write!(f, "FATAL: {message}"),
        }
    }
}

/// How loud a report is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    /// PostgreSQL's LOG: worth a line in the log.
    Info,
    /// Something is wrong and operators should look (counted in metrics).
    Warning,
}

/// Something the runtime must log (and count), in PostgreSQL's words where
/// PostgreSQL has them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "report")]
pub enum Report {
    /// "consistent recovery state reached at X/X".
    ConsistentRecoveryState {
        /// The replay position.
        at: Lsn,
    },
    /// "new target timeline is N".
    NewTargetTimeline {
        /// The new target.
        tli: TimelineId,
    },
    /// "new timeline N is not a child of database system timeline M".
    TimelineNotAChild {
        /// The newer timeline.
        tli: TimelineId,
        /// The current target timeline.
        target: TimelineId,
    },
    /// "new timeline N forked off current database system timeline M before
    /// current recovery point X/X".
    TimelineForkedBeforeReplay {
        /// The newer timeline.
        tli: TimelineId,
        /// The current target timeline.
        target: TimelineId,
        /// Where the new timeline forked.
        fork: Lsn,
        /// The replay position.
        replay: Lsn,
    },
    /// A history file whose contents do not belong to its timeline (wrong
    /// last timeline, or switch points out of order); it was ignored.
    HistoryIgnored {
        /// The timeline the file was for.
        tli: TimelineId,
    },
    /// A record failed a check and was not applied; the source is exhausted there.
    InvalidRecord {
        /// Where the invalid record is.
        at: Lsn,
        /// Where the WAL came from.
        source: WalSource,
        /// The check that failed.
        check: RecordCheck,
    },
    /// restore_command failed `failures` times in a row; the archive is
    /// retried after a back-off.
    RestoreCommandFailing {
        /// The file asked for.
        file: WalFile,
        /// How many in a row.
        failures: u32,
        /// How restore_command failed.
        reason: String,
    },
    /// The record at `at` was invalid `count` times from the sources in
    /// turn (an archive/stream ping-pong): backing off `retry_in_ms`.
    PingPong {
        /// The position every source fails at.
        at: Lsn,
        /// How many times.
        count: u32,
        /// The wait before the next round.
        retry_in_ms: u64,
    },
    /// "highest timeline N of the primary is behind recovery timeline M".
    UpstreamTimelineBehind {
        /// The upstream's timeline.
        upstream: TimelineId,
        /// Our recovery timeline.
        ours: TimelineId,
    },
    /// The walreceiver did not connect in time and was stopped.
    ReceiverConnectTimeout {
        /// How long it was given.
        after_ms: u64,
    },
    /// The walreceiver did not report that it stopped; asked again.
    ReceiverStopSlow {
        /// How many times it was asked.
        attempts: u32,
    },
    /// restore_command failed while promotion replays what is left: the
    /// archive is skipped and recovery may end earlier than it could.
    RestoreFailedDuringPromotion {
        /// The file asked for.
        file: WalFile,
        /// How restore_command failed.
        reason: String,
    },
    /// Probing the archive for newer timelines failed too often; the new
    /// timeline is chosen from what is known.
    TimelineProbeGaveUp {
        /// The timeline whose history file was asked for.
        tli: TimelineId,
        /// How many in a row.
        failures: u32,
    },
    /// Local WAL is exhausted at `at`: crash recovery ends and archive
    /// recovery begins (PostgreSQL switches to standby mode here).
    CrashRecoveryComplete {
        /// Where local WAL ended.
        at: Lsn,
    },
    /// "selected new timeline ID: N".
    SelectedNewTimeline {
        /// The new timeline.
        tli: TimelineId,
    },
    /// "archive recovery complete".
    ArchiveRecoveryComplete {
        /// End of WAL replayed.
        end: Lsn,
    },
    /// A promotion request was refused: recovery cannot end yet.
    PromotionRefused {
        /// Why (e.g. "base backup not complete").
        why: String,
    },
}

impl Report {
    /// How loud this report is.
    pub fn severity(&self) -> Severity {
        match self {
            Report::ConsistentRecoveryState { .. }
            | Report::NewTargetTimeline { .. }
            | Report::CrashRecoveryComplete { .. }
            | Report::SelectedNewTimeline { .. }
            | Report::ArchiveRecoveryComplete { .. }
            | Report::InvalidRecord { .. } => Severity::Info,
            _ => Severity::Warning,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::ConsistentRecoveryState { at } => {
                write!(f, "consistent recovery state reached at {at}")
            }
            Report::NewTargetTimeline { tli } => write!(f, "new target timeline is {}", tli.0),
            Report::TimelineNotAChild { tli, target } => write!(
                f,
                "new timeline {} is not a child of database system timeline {}",
                tli.0, target.0
            ),
            Report::TimelineForkedBeforeReplay { tli, target, fork, replay } => write!(
                f,
                "new timeline {} forked off current database system timeline {} before current recovery point {replay} (fork at {fork})",
                tli.0, target.0
            ),
            Report::HistoryIgnored { tli } => {
                write!(f, "history file {} ignored: it does not describe that timeline consistently", tli.history_file_name())
            }
            Report::InvalidRecord { at, source, check } => {
                write!(f, "invalid record at {at} from {source}: {check}")
            }
            Report::RestoreCommandFailing { file, failures, reason } => write!(
                f,
                "restore_command failed for {file} ({failures} in a row): {reason}"
            ),
            Report::PingPong { at, count, retry_in_ms } => write!(
                f,
                "record at {at} invalid {count} times from every source (archive/stream ping-pong); retrying in {retry_in_ms}ms"
            ),
            Report::UpstreamTimelineBehind { upstream, ours } => write!(
                f,
                "highest timeline {} of the primary is behind recovery timeline {}",
                upstream.0, ours.0
            ),
            Report::ReceiverConnectTimeout { after_ms } => {
                write!(f, "walreceiver did not connect within {after_ms}ms; stopped")
            }
            Report::ReceiverStopSlow { attempts } => {
                write!(f, "walreceiver has not stopped; asked {attempts} times")
            }
            Report::RestoreFailedDuringPromotion { file, reason } => write!(
                f,
                "restore_command failed for {file} during promotion; archive skipped: {reason}"
            ),
            Report::TimelineProbeGaveUp { tli, failures } => write!(
                f,
                "could not check the archive for timeline {} after {failures} failures",
                tli.0
            ),
            Report::CrashRecoveryComplete { at } => {
                write!(f, "crash recovery reached the end of local WAL at {at}; starting archive recovery")
            }
            Report::SelectedNewTimeline { tli } => write!(f, "selected new timeline ID: {}", tli.0),
            Report::ArchiveRecoveryComplete { end } => {
                write!(f, "archive recovery complete at {end}")
            }
            Report::PromotionRefused { why } => {
                write!(f, "promotion refused: {why}; the standby keeps waiting")
            }
        }
    }
}

/// What the recovery machine asks the runtime to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action")]
pub enum Action {
    /// Run restore_command for the segment into `wal/` under its real name
    /// (replacing a local copy). Answer: `SegmentRestored`,
    /// `SegmentNotInArchive` or `RestoreCommandFailed`.
    RestoreSegment {
        /// The timeline.
        tli: TimelineId,
        /// The segment number.
        segno: crate::lsn::SegNo,
    },
    /// Look for the segment in `wal/` (valid segment header). Answer:
    /// `SegmentFoundLocally` or `SegmentNotFoundLocally`.
    FindLocalSegment {
        /// The timeline.
        tli: TimelineId,
        /// The segment number.
        segno: crate::lsn::SegNo,
    },
    /// Run restore_command for `tli`'s history file into `wal/`. Answer:
    /// `HistoryRestored`, `HistoryNotInArchive` or `RestoreCommandFailed`.
    RestoreHistoryFile {
        /// The timeline.
        tli: TimelineId,
    },
    /// Read `wal/TTTTTTTT.history`. Answer: `HistoryFoundLocally` or
    /// `HistoryNotFoundLocally`.
    FindLocalHistoryFile {
        /// The timeline.
        tli: TimelineId,
    },
    /// Replay records from the replay position while they end at or before
    /// `upto`. WAL between the replay position and `upto` is in `wal/`; the
    /// segments this request made available are the files of timeline
    /// `tli`. Answer: `WalReplayed`* then `EndOfWalReached` or `InvalidRecord`.
    Replay {
        /// Where the WAL came from.
        source: WalSource,
        /// The timeline of the files this request made available.
        tli: TimelineId,
        /// Replay records ending at or before this.
        upto: Lsn,
    },
    /// From now on the walreceiver session `session` may apply, on its own
    /// thread and without a `Replay`, records of `tli` ending at or before
    /// `upto` that it exposed (wrote here, was told flushed upstream) —
    /// when redo is free, never waiting for it; otherwise they are left to
    /// the `Replay` its `WalFlushed` leads to. It reports its apply
    /// position as redo does. No answer.
    AllowInlineApply {
        /// The walreceiver session.
        session: SessionId,
        /// The timeline of its WAL.
        tli: TimelineId,
        /// The last position it may apply to.
        upto: Lsn,
    },
    /// Withdraw the leave of `AllowInlineApply`, before any later action:
    /// once executed, the session applies nothing more itself (the runtime
    /// waits for an apply in progress). Answer: `InlineApplyWithdrawn`,
    /// ahead of any other event.
    WithdrawInlineApply {
        /// The walreceiver session.
        session: SessionId,
    },
    /// Start a walreceiver session: START_REPLICATION at `from` (a segment
    /// start) on timeline `tli`. A session waiting after a timeline end may
    /// be reused (PostgreSQL's RESTARTING). Answer: the session's events.
    StartWalReceiver {
        /// The walreceiver session.
        session: SessionId,
        /// Start position (a segment start).
        from: Lsn,
        /// The timeline to stream.
        tli: TimelineId,
    },
    /// Stop the session and wait (bounded) until it no longer writes before
    /// executing the next action. Answer: `WalReceiverStopped`.
    StopWalReceiver {
        /// The walreceiver session.
        session: SessionId,
    },
    /// Informational: the machine waits `delay_ms` before retrying; the
    /// runtime's timer follows `poll_timeout()`.
    ArmRetry {
        /// How long until the retry.
        delay_ms: u64,
    },
    /// Recovery now follows timeline `tli`, whose history is `history`: the
    /// WAL reader maps positions to timelines with it.
    SetTargetTimeline {
        /// The new target timeline.
        tli: TimelineId,
        /// Its history (maps positions to timelines).
        history: TimelineHistory,
    },
    /// Replay reached the minimum recovery point: reads may be served.
    ReachedConsistency {
        /// The replay position.
        at: Lsn,
    },
    /// Remove `standby.signal` durably (before the history file is written).
    RemoveStandbySignal,
    /// Write the new timeline's history file durably (temp file, fsync,
    /// rename, fsync dir; mark it `.ready` for archiving). Answer:
    /// `HistoryFileWritten` or `PromotionStepFailed`.
    WriteHistoryFile {
        /// The new timeline.
        tli: TimelineId,
        /// The timeline it forks from.
        parent: TimelineId,
        /// End of WAL replayed: where the new timeline begins.
        switch_point: Lsn,
        /// The reason text of the new line.
        reason: String,
        /// The new timeline's whole history (write `history.to_text()`).
        history: TimelineHistory,
    },
    /// Copy the valid prefix of the last segment to timeline `tli`, start
    /// the WAL writer at `at` on `tli` and write the end-of-recovery record
    /// (new and previous timeline). Answer: `EndOfRecoveryWritten` or
    /// `PromotionStepFailed`.
    WriteEndOfRecovery {
        /// The new timeline.
        tli: TimelineId,
        /// The timeline recovery replayed last.
        prev_tli: TimelineId,
        /// Where WAL continues (end of WAL replayed).
        at: Lsn,
    },
    /// Tell cascading walsenders that `tli` ended at `switch_point` and the
    /// next timeline is `next_tli` (they finish COPY with the switch).
    EndCascadingTimeline {
        /// The timeline that ends.
        tli: TimelineId,
        /// Where the timeline ended (first position of the next).
        switch_point: Lsn,
        /// The timeline that follows.
        next_tli: TimelineId,
    },
    /// Recovery is over: accept writes on timeline `tli`.
    AcceptWrites {
        /// The timeline writes go to.
        tli: TimelineId,
    },
    /// Log (and count) this report.
    Report {
        /// What to log.
        report: Report,
    },
    /// Recovery is over without promotion; the startup process exits.
    Exit {
        /// Why recovery stopped.
        reason: ExitReason,
    },
}

/// The kinds of [`Action`], without their data (exploration, diagrams).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ActionKind {
    /// [`Action::RestoreSegment`].
    RestoreSegment,
    /// [`Action::FindLocalSegment`].
    FindLocalSegment,
    /// [`Action::RestoreHistoryFile`].
    RestoreHistoryFile,
    /// [`Action::FindLocalHistoryFile`].
    FindLocalHistoryFile,
    /// [`Action::Replay`].
    Replay,
    /// [`Action::AllowInlineApply`].
    AllowInlineApply,
    /// [`Action::WithdrawInlineApply`].
    WithdrawInlineApply,
    /// [`Action::StartWalReceiver`].
    StartWalReceiver,
    /// [`Action::StopWalReceiver`].
    StopWalReceiver,
    /// [`Action::ArmRetry`].
    ArmRetry,
    /// [`Action::SetTargetTimeline`].
    SetTargetTimeline,
    /// [`Action::ReachedConsistency`].
    ReachedConsistency,
    /// [`Action::RemoveStandbySignal`].
    RemoveStandbySignal,
    /// [`Action::WriteHistoryFile`].
    WriteHistoryFile,
    /// [`Action::WriteEndOfRecovery`].
    WriteEndOfRecovery,
    /// [`Action::EndCascadingTimeline`].
    EndCascadingTimeline,
    /// [`Action::AcceptWrites`].
    AcceptWrites,
    /// [`Action::Report`].
    Report,
    /// [`Action::Exit`].
    Exit,
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl Action {
    /// This action's kind.
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::RestoreSegment { .. } => ActionKind::RestoreSegment,
            Action::FindLocalSegment { .. } => ActionKind::FindLocalSegment,
            Action::RestoreHistoryFile { .. } => ActionKind::RestoreHistoryFile,
            Action::FindLocalHistoryFile { .. } => ActionKind::FindLocalHistoryFile,
            Action::Replay { .. } => ActionKind::Replay,
            Action::AllowInlineApply { .. } => ActionKind::AllowInlineApply,
            Action::WithdrawInlineApply { .. } => ActionKind::WithdrawInlineApply,
            Action::StartWalReceiver { .. } => ActionKind::StartWalReceiver,
            Action::StopWalReceiver { .. } => ActionKind::StopWalReceiver,
            Action::ArmRetry { .. } => ActionKind::ArmRetry,
            Action::SetTargetTimeline { .. } => ActionKind::SetTargetTimeline,
            Action::ReachedConsistency { .. } => ActionKind::ReachedConsistency,
            Action::RemoveStandbySignal => ActionKind::RemoveStandbySignal,
            Action::WriteHistoryFile { .. } => ActionKind::WriteHistoryFile,
            Action::WriteEndOfRecovery { .. } => ActionKind::WriteEndOfRecovery,
            Action::EndCascadingTimeline { .. } => ActionKind::EndCascadingTimeline,
            Action::AcceptWrites { .. } => ActionKind::AcceptWrites,
            Action::Report { .. } => ActionKind::Report,
            Action::Exit { .. } => ActionKind::Exit,
        }
    }
}

/// One trace item: `StartWalReceiver 0/2000000 tli 1`, `ArmRetry 5000ms`.
impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = self.kind();
        match self {
            Action::RestoreSegment { tli, segno } | Action::FindLocalSegment { tli, segno } => {
                write!(f, "{k} tli {} seg {}", tli.0, segno.0)
            }
            Action::RestoreHistoryFile { tli } | Action::FindLocalHistoryFile { tli } => {
                write!(f, "{k} {}", tli.0)
            }
            Action::Replay { source, tli, upto } => {
                write!(f, "{k} {source} tli {} to {upto}", tli.0)
            }
            Action::AllowInlineApply { tli, upto, .. } if upto.0 == u64::MAX => {
                write!(f, "{k} tli {}", tli.0)
            }
            Action::AllowInlineApply { tli, upto, .. } => write!(f, "{k} tli {} to {upto}", tli.0),
            Action::WithdrawInlineApply { .. } => write!(f, "{k}"),
            Action::StartWalReceiver { from, tli, .. } => write!(f, "{k} {from} tli {}", tli.0),
            Action::StopWalReceiver { .. } | Action::RemoveStandbySignal => write!(f, "{k}"),
            Action::ArmRetry { delay_ms } => write!(f, "{k} {delay_ms}ms"),
            Action::SetTargetTimeline { tli, .. } => write!(f, "{k} {}", tli.0),
            Action::ReachedConsistency { at } => write!(f, "{k} {at}"),
            Action::WriteHistoryFile {
                tli,
                parent,
                switch_point,
                ..
            } => write!(f, "{k} {} (parent {} at {switch_point})", tli.0, parent.0),
            Action::WriteEndOfRecovery { tli, prev_tli, at } => {
                write!(f, "{k} tli {} (prev {}) at {at}", tli.0, prev_tli.0)
            }
            Action::EndCascadingTimeline {
                tli,
                switch_point,
                next_tli,
            } => write!(f, "{k} {} at {switch_point} -> {}", tli.0, next_tli.0),
            Action::AcceptWrites { tli } => write!(f, "{k} tli {}", tli.0),
            Action::Report { report } => match report.severity() {
                Severity::Info => write!(f, "Log({report})"),
                Severity::Warning => write!(f, "Warn({report})"),
            },
            Action::Exit { reason } => write!(f, "{k}({reason})"),
        }
    }
}
