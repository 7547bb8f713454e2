//! Events: the facts the runtime reports to the recovery machine, each a
//! past-tense statement with its data (`SegmentRestored { tli, segno }`).
//!
//! Who sends what:
//! - the startup code: [`Event::RecoveryStarted`] once, first; or first
//!   [`Event::BaseBackupPending`], then `RecoveryStarted` once the copy is
//!   complete;
//! - the archive fetcher (answers `RestoreSegment`, `FindLocalSegment`,
//!   `RestoreHistoryFile`, `FindLocalHistoryFile`): `Segment*`, `History*`
//!   and [`Event::RestoreCommandFailed`];
//! - the walreceiver (runs one session per `StartWalReceiver`):
//!   `StreamConnected`, `WalFlushed`, `TimelineEnded`, `HistoryReceived`,
//!   `StreamLost`, `WalReceiverStopped`, `UnconfirmedWalHeld`,
//!   `UnconfirmedWalTruncated`, each tagged with its session;
//! - the redo loop (answers `Replay`): `WalReplayed` (progress), then exactly
//!   one of `EndOfWalReached` or `InvalidRecord`;
//! - the trigger watcher: `PromoteRequested`; the timer: `TimerFired`;
//!   the node: `ShutdownRequested`, and `UpstreamReloaded` after a reload
//!   changed `primary_conninfo` or `primary_slot_name`;
//! - the promotion executor: `HistoryFileWritten`, `EndOfRecoveryWritten`,
//!   `PromotionStepFailed`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::history::TimelineHistory;
use crate::lsn::{Lsn, SegNo, TimelineId};

/// Identifies one walreceiver run (one `StartWalReceiver`). Events of an
/// older session are stale and ignored: they may still sit in the event
/// queue after the machine moved on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// A file the archive fetcher is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "file")]
pub enum WalFile {
    /// A WAL segment `TTTTTTTTXXXXXXXXYYYYYYYY`.
    Segment {
        /// The timeline.
        tli: TimelineId,
        /// The segment number.
        segno: SegNo,
    },
    /// A timeline history file `TTTTTTTT.history`.
    History {
        /// The timeline.
        tli: TimelineId,
    },
}

impl fmt::Display for WalFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalFile::Segment { tli, segno } => write!(f, "tli {} seg {}", tli.0, segno.0),
            WalFile::History { tli } => write!(f, "{}", tli.history_file_name()),
        }
    }
}

/// Which check a WAL record failed (PostgreSQL's messages in brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RecordCheck {
    /// Impossible total length ("invalid record length").
    Length,
    /// CRC mismatch ("incorrect resource manager data checksum").
    Crc,
    /// The previous-record link does not point at the record before
    /// ("record with incorrect prev-link"): stale bytes of a recycled segment.
    PrevLink,
    /// Zeroes where a record header should be: the end of written WAL.
    Zeroes,
    /// The record or its segment belongs to a timeline that is not on the
    /// recovery timeline's history ("unexpected timeline ID").
    Timeline,
    /// The segment header is wrong: system id, page address or size.
    SegmentHeader,
    /// A segment the record needs is not there.
    MissingSegment,
}

impl fmt::Display for RecordCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordCheck::Length => "invalid record length",
            RecordCheck::Crc => "incorrect checksum",
            RecordCheck::PrevLink => "incorrect prev-link",
            RecordCheck::Zeroes => "zeroes (end of written WAL)",
            RecordCheck::Timeline => "unexpected timeline",
            RecordCheck::SegmentHeader => "invalid segment header",
            RecordCheck::MissingSegment => "missing segment",
        })
    }
}

/// What asked for promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PromoteTrigger {
    /// `promote_trigger_file` appeared.
    File,
    /// `walrep promote` (PostgreSQL's `pg_ctl promote`).
    Command,
}

/// A promotion step the runtime executes and can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PromotionStep {
    /// Writing the new timeline's history file.
    WriteHistoryFile,
    /// Writing the end-of-recovery record and opening the WAL for writes.
    WriteEndOfRecovery,
}

/// A fact the runtime reports to the recovery machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum Event {
    /// The startup code read the control file and starts recovery: replay
    /// begins at `redo_lsn` (checkpoint or restartpoint redo) on `tli`.
    RecoveryStarted {
        /// Where replay starts.
        redo_lsn: Lsn,
        /// The timeline of the checkpoint.
        tli: TimelineId,
        /// `tli`'s history (`TimelineHistory::root(tli)` without a file).
        history: TimelineHistory,
        /// Replay must reach this before reads are allowed and before a
        /// promotion may end recovery (PostgreSQL's minRecoveryPoint).
        min_recovery_point: Lsn,
        /// The control file says the node crashed outside recovery: replay
        /// local `wal/` alone first, as PostgreSQL's crash recovery does.
        crash_recovery_first: bool,
    },
    /// The startup code found a base backup whose bulk is still being
    /// copied (two-phase, or interrupted): stream WAL from `start` on
    /// `tli`, replay nothing. `RecoveryStarted` follows once the copy is
    /// complete and loaded.
    BaseBackupPending {
        /// The copy's start position (its redo point).
        start: Lsn,
        /// The copy's timeline.
        tli: TimelineId,
    },
    /// restore_command copied the segment into `wal/` under its real name.
    SegmentRestored {
        /// The timeline.
        tli: TimelineId,
        /// The segment number.
        segno: SegNo,
    },
    /// restore_command ran and said the segment is not in the archive.
    SegmentNotInArchive {
        /// The timeline.
        tli: TimelineId,
        /// The segment number.
        segno: SegNo,
    },
    /// restore_command itself failed (killed by a signal, timed out, could
    /// not start): the archive is unhealthy, which is not the same as the
    /// file being absent.
    RestoreCommandFailed {
        /// The file asked for.
        file: WalFile,
        /// How it failed (signal, timeout, exit status).
        reason: String,
    },
    /// `wal/` holds the segment (with a valid segment header).
    SegmentFoundLocally {
        /// The timeline.
        tli: TimelineId,
        /// The segment number.
        segno: SegNo,
    },
    /// `wal/` does not hold the segment.
    SegmentNotFoundLocally {
        /// The timeline.
        tli: TimelineId,
        /// The segment number.
        segno: SegNo,
    },
    /// restore_command fetched `tli`'s history file.
    HistoryRestored {
        /// The timeline.
        tli: TimelineId,
        /// The parsed history file.
        history: TimelineHistory,
    },
    /// The archive has no history file for `tli`.
    HistoryNotInArchive {
        /// The timeline.
        tli: TimelineId,
    },
    /// `wal/` holds `tli`'s history file.
    HistoryFoundLocally {
        /// The timeline.
        tli: TimelineId,
        /// The parsed history file.
        history: TimelineHistory,
    },
    /// `wal/` has no history file for `tli`.
    HistoryNotFoundLocally {
        /// The timeline.
        tli: TimelineId,
    },
    /// The walreceiver connected, passed IDENTIFY_SYSTEM (system id) and
    /// START_REPLICATION: the upstream is on `upstream_tli` and has flushed
    /// `upstream_flush`.
    StreamConnected {
        /// The walreceiver session.
        session: SessionId,
        /// The upstream's newest timeline.
        upstream_tli: TimelineId,
        /// The upstream's flush position.
        upstream_flush: Lsn,
    },
    /// WAL of timeline `tli` up to `upto` may be replayed: the
    /// walreceiver wrote it here and the upstream told it flushed there
    /// (its own fsync of that WAL may still be running: visibility needs
    /// only the upstream's durability; what it reports as flushed and
    /// applied waits for its own).
    WalFlushed {
        /// The walreceiver session.
        session: SessionId,
        /// The timeline of the files written.
        tli: TimelineId,
        /// Replayable up to here.
        upto: Lsn,
    },
    /// Answer to `WithdrawInlineApply`: from now on the walreceiver applies
    /// nothing itself; it applied records up to `applied` (its WAL,
    /// exposed: written here and flushed upstream) under the leave.
    InlineApplyWithdrawn {
        /// The session the leave was given to.
        session: SessionId,
        /// End of the last record it applied itself (`INVALID`: none).
        applied: Lsn,
    },
    /// The upstream ended streaming of `tli` at `switch_point`; the next
    /// timeline is `next_tli` (the result set after CopyDone).
    TimelineEnded {
        /// The walreceiver session.
        session: SessionId,
        /// The timeline that ended.
        tli: TimelineId,
        /// The timeline that follows.
        next_tli: TimelineId,
        /// Where the timeline ended (first position of the next).
        switch_point: Lsn,
    },
    /// The walreceiver fetched `tli`'s history file (TIMELINE_HISTORY) and
    /// wrote it to `wal/`.
    HistoryReceived {
        /// The walreceiver session.
        session: SessionId,
        /// The timeline.
        tli: TimelineId,
        /// The parsed history file.
        history: TimelineHistory,
    },
    /// The walreceiver's session ended on its own: connection refused or
    /// lost, wal_receiver_timeout, system id mismatch, upstream error.
    StreamLost {
        /// The walreceiver session.
        session: SessionId,
        /// Why the session ended.
        reason: String,
    },
    /// The walreceiver stopped as asked; everything it received is flushed
    /// up to `flushed`.
    WalReceiverStopped {
        /// The walreceiver session.
        session: SessionId,
        /// Everything received is flushed up to here.
        flushed: Lsn,
    },
    /// A walreceiver session ended holding WAL of `tli` in `[from, to)`
    /// that its upstream had not said was flushed (a walrep upstream sends
    /// WAL while it flushes it, with its flush position): it may not exist
    /// upstream after a crash there, so it is neither replayed nor exposed
    /// until a stream confirms it; promotion replays it (it may hold
    /// writes the upstream acknowledged after telling its flush position).
    UnconfirmedWalHeld {
        /// The walreceiver session.
        session: SessionId,
        /// The timeline of the files.
        tli: TimelineId,
        /// The last flush position the upstream told.
        from: Lsn,
        /// The end of the WAL held.
        to: Lsn,
    },
    /// A session found its upstream (restarted after a crash) with less
    /// WAL than this standby held unconfirmed: the walreceiver zeroed the
    /// held WAL of `tli` from `from` (the upstream's flush position) on,
    /// before streaming. No one was ever acknowledged a write there.
    UnconfirmedWalTruncated {
        /// The walreceiver session.
        session: SessionId,
        /// The timeline of the files.
        tli: TimelineId,
        /// Nothing is held from here on.
        from: Lsn,
    },
    /// Redo applied every record ending at or before `upto` (progress;
    /// the request is still running).
    WalReplayed {
        /// Every record ending here or before is applied.
        upto: Lsn,
    },
    /// Redo applied everything valid below the request's limit and stopped
    /// at `at` (the end of the last record applied): the next record is not
    /// complete below the limit.
    EndOfWalReached {
        /// End of the last record applied.
        at: Lsn,
    },
    /// The record at `at` failed `check`; it was not applied and redo stopped.
    InvalidRecord {
        /// Where the invalid record is (end of the last record applied).
        at: Lsn,
        /// The check that failed.
        check: RecordCheck,
    },
    /// The trigger watcher saw a promotion request.
    PromoteRequested {
        /// What asked for it.
        trigger: PromoteTrigger,
    },
    /// The timer armed at `poll_timeout()` expired.
    TimerFired,
    /// The node is shutting down.
    ShutdownRequested,
    /// A reload changed `primary_conninfo` or `primary_slot_name`: the
    /// running walreceiver's settings are stale, and the stream is a WAL
    /// source from now on if and only if `stream_configured` (an
    /// archive-only standby given an upstream, or one whose upstream was
    /// taken away, without a restart).
    UpstreamReloaded {
        /// `primary_conninfo` is set after the reload.
        stream_configured: bool,
    },
    /// The new timeline's history file is durable in `wal/`.
    HistoryFileWritten {
        /// The new timeline.
        tli: TimelineId,
    },
    /// The end-of-recovery record is durable; WAL ends at `end` on `tli`.
    EndOfRecoveryWritten {
        /// The new timeline.
        tli: TimelineId,
        /// End of WAL after the record.
        end: Lsn,
    },
    /// A promotion step failed (an fsync failure, a full disk): recovery
    /// cannot finish and stops.
    PromotionStepFailed {
        /// The step.
        step: PromotionStep,
        /// Why, in words for the log.
        reason: String,
    },
}

/// The kinds of [`Event`], without their data (exploration, diagrams).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// [`Event::RecoveryStarted`].
    RecoveryStarted,
    /// [`Event::BaseBackupPending`].
    BaseBackupPending,
    /// [`Event::SegmentRestored`].
    SegmentRestored,
    /// [`Event::SegmentNotInArchive`].
    SegmentNotInArchive,
    /// [`Event::RestoreCommandFailed`].
    RestoreCommandFailed,
    /// [`Event::SegmentFoundLocally`].
    SegmentFoundLocally,
    /// [`Event::SegmentNotFoundLocally`].
    SegmentNotFoundLocally,
    /// [`Event::HistoryRestored`].
    HistoryRestored,
    /// [`Event::HistoryNotInArchive`].
    HistoryNotInArchive,
    /// [`Event::HistoryFoundLocally`].
    HistoryFoundLocally,
    /// [`Event::HistoryNotFoundLocally`].
    HistoryNotFoundLocally,
    /// [`Event::StreamConnected`].
    StreamConnected,
    /// [`Event::WalFlushed`].
    WalFlushed,
    /// [`Event::InlineApplyWithdrawn`].
    InlineApplyWithdrawn,
    /// [`Event::TimelineEnded`].
    TimelineEnded,
    /// [`Event::HistoryReceived`].
    HistoryReceived,
    /// [`Event::StreamLost`].
    StreamLost,
    /// [`Event::WalReceiverStopped`].
    WalReceiverStopped,
    /// [`Event::UnconfirmedWalHeld`].
    UnconfirmedWalHeld,
    /// [`Event::UnconfirmedWalTruncated`].
    UnconfirmedWalTruncated,
    /// [`Event::WalReplayed`].
    WalReplayed,
    /// [`Event::EndOfWalReached`].
    EndOfWalReached,
    /// [`Event::InvalidRecord`].
    InvalidRecord,
    /// [`Event::PromoteRequested`].
    PromoteRequested,
    /// [`Event::TimerFired`].
    TimerFired,
    /// [`Event::ShutdownRequested`].
    ShutdownRequested,
    /// [`Event::UpstreamReloaded`].
    UpstreamReloaded,
    /// [`Event::HistoryFileWritten`].
    HistoryFileWritten,
    /// [`Event::EndOfRecoveryWritten`].
    EndOfRecoveryWritten,
    /// [`Event::PromotionStepFailed`].
    PromotionStepFailed,
}

impl EventKind {
    /// Every event kind, in declaration order.
    pub const ALL: [EventKind; 30] = [
        EventKind::RecoveryStarted,
        EventKind::BaseBackupPending,
        EventKind::SegmentRestored,
        EventKind::SegmentNotInArchive,
        EventKind::RestoreCommandFailed,
        EventKind::SegmentFoundLocally,
        EventKind::SegmentNotFoundLocally,
        EventKind::HistoryRestored,
        EventKind::HistoryNotInArchive,
        EventKind::HistoryFoundLocally,
        EventKind::HistoryNotFoundLocally,
        EventKind::StreamConnected,
        EventKind::WalFlushed,
        EventKind::InlineApplyWithdrawn,
        EventKind::TimelineEnded,
        EventKind::HistoryReceived,
        EventKind::StreamLost,
        EventKind::WalReceiverStopped,
        EventKind::UnconfirmedWalHeld,
        EventKind::UnconfirmedWalTruncated,
        EventKind::WalReplayed,
        EventKind::EndOfWalReached,
        EventKind::InvalidRecord,
        EventKind::PromoteRequested,
        EventKind::TimerFired,
        EventKind::ShutdownRequested,
        EventKind::UpstreamReloaded,
        EventKind::HistoryFileWritten,
        EventKind::EndOfRecoveryWritten,
        EventKind::PromotionStepFailed,
    ];
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl Event {
    /// This event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::RecoveryStarted { .. } => EventKind::RecoveryStarted,
            Event::BaseBackupPending { .. } => EventKind::BaseBackupPending,
            Event::SegmentRestored { .. } => EventKind::SegmentRestored,
            Event::SegmentNotInArchive { .. } => EventKind::SegmentNotInArchive,
            Event::RestoreCommandFailed { .. } => EventKind::RestoreCommandFailed,
            Event::SegmentFoundLocally { .. } => EventKind::SegmentFoundLocally,
            Event::SegmentNotFoundLocally { .. } => EventKind::SegmentNotFoundLocally,
            Event::HistoryRestored { .. } => EventKind::HistoryRestored,
            Event::HistoryNotInArchive { .. } => EventKind::HistoryNotInArchive,
            Event::HistoryFoundLocally { .. } => EventKind::HistoryFoundLocally,
            Event::HistoryNotFoundLocally { .. } => EventKind::HistoryNotFoundLocally,
            Event::StreamConnected { .. } => EventKind::StreamConnected,
            Event::WalFlushed { .. } => EventKind::WalFlushed,
            Event::InlineApplyWithdrawn { .. } => EventKind::InlineApplyWithdrawn,
            Event::TimelineEnded { .. } => EventKind::TimelineEnded,
            Event::HistoryReceived { .. } => EventKind::HistoryReceived,
            Event::StreamLost { .. } => EventKind::StreamLost,
            Event::WalReceiverStopped { .. } => EventKind::WalReceiverStopped,
            Event::UnconfirmedWalHeld { .. } => EventKind::UnconfirmedWalHeld,
            Event::UnconfirmedWalTruncated { .. } => EventKind::UnconfirmedWalTruncated,
            Event::WalReplayed { .. } => EventKind::WalReplayed,
            Event::EndOfWalReached { .. } => EventKind::EndOfWalReached,
            Event::InvalidRecord { .. } => EventKind::InvalidRecord,
            Event::PromoteRequested { .. } => EventKind::PromoteRequested,
            Event::TimerFired => EventKind::TimerFired,
            Event::ShutdownRequested => EventKind::ShutdownRequested,
            Event::UpstreamReloaded { .. } => EventKind::UpstreamReloaded,
            Event::HistoryFileWritten { .. } => EventKind::HistoryFileWritten,
            Event::EndOfRecoveryWritten { .. } => EventKind::EndOfRecoveryWritten,
            Event::PromotionStepFailed { .. } => EventKind::PromotionStepFailed,
        }
    }

    /// The walreceiver session this event comes from, if it is one of its.
    pub fn session(&self) -> Option<SessionId> {
        match self {
            Event::StreamConnected { session, .. }
            | Event::WalFlushed { session, .. }
            | Event::InlineApplyWithdrawn { session, .. }
            | Event::TimelineEnded { session, .. }
            | Event::HistoryReceived { session, .. }
            | Event::StreamLost { session, .. }
            | Event::WalReceiverStopped { session, .. }
            | Event::UnconfirmedWalHeld { session, .. }
            | Event::UnconfirmedWalTruncated { session, .. } => Some(*session),
            _ => None,
        }
    }
}

/// One trace line's worth: `SegmentNotInArchive(tli 1 seg 2)`.
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = self.kind();
        match self {
            Event::RecoveryStarted {
                redo_lsn,
                tli,
                min_recovery_point,
                crash_recovery_first,
                ..
            } => {
                let crash = if *crash_recovery_first { ", crash" } else { "" };
                write!(
                    f,
                    "{k}(redo {redo_lsn} tli {}, min {min_recovery_point}{crash})",
                    tli.0
                )
            }
            Event::BaseBackupPending { start, tli } => {
                write!(f, "{k}(start {start} tli {})", tli.0)
            }
            Event::SegmentRestored { tli, segno }
            | Event::SegmentNotInArchive { tli, segno }
            | Event::SegmentFoundLocally { tli, segno }
            | Event::SegmentNotFoundLocally { tli, segno } => {
                write!(f, "{k}(tli {} seg {})", tli.0, segno.0)
            }
            Event::RestoreCommandFailed { file, reason } => write!(f, "{k}({file}: {reason})"),
            Event::HistoryRestored { tli, history }
            | Event::HistoryFoundLocally { tli, history } => {
                write!(f, "{k}({}", tli.0)?;
                write_forks(f, history)?;
                f.write_str(")")
            }
            Event::HistoryNotInArchive { tli } | Event::HistoryNotFoundLocally { tli } => {
                write!(f, "{k}({})", tli.0)
            }
            Event::StreamConnected {
                upstream_tli,
                upstream_flush,
                ..
            } => write!(f, "{k}(tli {} flush {upstream_flush})", upstream_tli.0),
            Event::WalFlushed { tli, upto, .. } => write!(f, "{k}({upto} tli {})", tli.0),
            Event::InlineApplyWithdrawn { applied, .. } => write!(f, "{k}({applied})"),
            Event::TimelineEnded {
                tli,
                next_tli,
                switch_point,
                ..
            } => write!(
                f,
                "{k}(tli {} at {switch_point}, next {})",
                tli.0, next_tli.0
            ),
            Event::HistoryReceived { tli, history, .. } => {
                write!(f, "{k}({}", tli.0)?;
                write_forks(f, history)?;
                f.write_str(")")
            }
            Event::StreamLost { reason, .. } => write!(f, "{k}({reason})"),
            Event::WalReceiverStopped { flushed, .. } => write!(f, "{k}({flushed})"),
            Event::UnconfirmedWalHeld { tli, from, to, .. } => {
                write!(f, "{k}({from}..{to} tli {})", tli.0)
            }
            Event::UnconfirmedWalTruncated { tli, from, .. } => {
                write!(f, "{k}({from} tli {})", tli.0)
            }
            Event::WalReplayed { upto } => write!(f, "{k}({upto})"),
            Event::EndOfWalReached { at } => write!(f, "{k}({at})"),
            Event::InvalidRecord { at, check } => write!(f, "{k}({at}: {check})"),
            Event::PromoteRequested { trigger } => write!(f, "{k}({trigger:?})"),
            Event::TimerFired | Event::ShutdownRequested => write!(f, "{k}"),
            Event::UpstreamReloaded { stream_configured } => {
                let what = if *stream_configured {
                    "stream"
                } else {
                    "no stream"
                };
                write!(f, "{k}({what})")
            }
            Event::HistoryFileWritten { tli } => write!(f, "{k}({})", tli.0),
            Event::EndOfRecoveryWritten { tli, end } => write!(f, "{k}(tli {} end {end})", tli.0),
            Event::PromotionStepFailed { step, reason } => write!(f, "{k}({step:?}: {reason})"),
        }
    }
}

/// ` forks 1@0/3000000 2@0/5000000`: where each ancestor ended.
fn write_forks(f: &mut fmt::Formatter<'_>, history: &TimelineHistory) -> fmt::Result {
    for span in history.spans() {
        if let Some(end) = span.end {
            write!(f, " {}@{end}", span.tli.0)?;
        }
    }
    Ok(())
}
