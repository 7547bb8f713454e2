//! What a node must provide for its WAL to be served: [`ReplicationSource`].
//! The replication server and walsenders are generic over it, so they run
//! against the in-memory `fake::FakeSource` (feature `test-util`) in tests and against
//! the real WAL in a node.

use std::io;
use std::path::PathBuf;

use walrep_states::{Lsn, TimelineHistory, TimelineId, WalSegSize};

use super::command::BaseBackupOptions;
use super::sqlstate::{PgError, FEATURE_NOT_SUPPORTED};
use crate::watch::Subscription;

/// The position up to which WAL may be sent, and its timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushPoint {
    /// The timeline WAL is currently written (primary) or replayed
    /// (standby) on.
    pub tli: TimelineId,
    /// End of WAL that is durable here: flushed by the WAL writer on a
    /// primary, flushed by the walreceiver or restored on a standby.
    pub lsn: Lsn,
}

/// Why WAL or a history file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The segment holding the WAL was recycled or removed.
    #[error("requested WAL segment {file_name} has already been removed")]
    SegmentRemoved {
        /// The segment's file name, e.g. `000000010000000000000003`.
        file_name: String,
    },
    /// Any other read failure (IO error, position past what is flushed).
    #[error("could not read WAL at {lsn} on timeline {tli}: {reason}")]
    Read {
        /// Timeline of the segment file being read.
        tli: TimelineId,
        /// Where the read started.
        lsn: Lsn,
        /// What went wrong, for the client's error message.
        reason: String,
    },
    /// A timeline history file could not be read or does not parse.
    #[error("could not read timeline history file {file_name}: {reason}")]
    History {
        /// e.g. `00000002.history`.
        file_name: String,
        /// What went wrong, for the client's error message.
        reason: String,
    },
}

/// A node's WAL, as the walsenders see it. Implementations must be cheap to
/// call concurrently from every walsender thread.
pub trait ReplicationSource: Send + Sync + 'static {
    /// The system identifier (IDENTIFY_SYSTEM's `systemid`).
    fn system_identifier(&self) -> u64;

    /// Segment size of this system (`SHOW wal_segment_size`).
    fn wal_segment_size(&self) -> WalSegSize;

    /// The current timeline and the end of durable WAL on it. Read together
    /// so a promotion is never seen half-done.
    fn flush_point(&self) -> FlushPoint;

    /// A subscription that gets a token whenever the flush point may have
    /// moved (more WAL flushed, or a new timeline); the walsender
    /// `select!`s on it beside its client and its timers. Tokens must come
    /// from whoever moves the point (WAL writer, walreceiver, redo), not
    /// from polling. Taken before the walsender reads the flush point, so
    /// a change in between still leaves a token.
    fn subscribe_flush(&self) -> Subscription;

    /// End of the WAL written on the current timeline, durable or not
    /// (never behind the flush point). A walsender sends WAL up to here to
    /// a walrep standby while this node makes it durable: such a standby
    /// is told the flush point with it and exposes nothing past that. By
    /// default (and on a standby) the flush point: nothing is sent early.
    fn written_lsn(&self) -> Lsn {
        self.flush_point().lsn
    }

    /// Like [`ReplicationSource::subscribe_flush`], and also woken when
    /// [`ReplicationSource::written_lsn`] moves.
    fn subscribe_written(&self) -> Subscription {
        self.subscribe_flush()
    }

    /// Fill `buf` with the WAL bytes at `start` from the segment file of
    /// timeline `tli`. The walsender never asks across a segment boundary
    /// nor beyond the written position. A removed segment is
    /// [`SourceError::SegmentRemoved`].
    fn read_wal(&self, tli: TimelineId, start: Lsn, buf: &mut [u8]) -> Result<(), SourceError>;

    /// The bytes of `TTTTTTTT.history` of `tli`, `None` if it has none
    /// (timeline 1, or a missing file).
    fn history_file(&self, tli: TimelineId) -> Result<Option<Vec<u8>>, SourceError>;

    /// The history of the current timeline (switch points of its ancestors).
    fn timeline_history(&self) -> Result<TimelineHistory, SourceError> {
        let tli = self.flush_point().tli;
        match self.history_file(tli)? {
            None => Ok(TimelineHistory::root(tli)),
            Some(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                TimelineHistory::parse(tli, &text).map_err(|e| SourceError::History {
                    file_name: tli.history_file_name(),
                    reason: e.to_string(),
                })
            }
        }
    }

    /// The oldest LSN whose segment is still kept (start of the oldest
    /// segment); older positions are "already removed".
    fn oldest_lsn(&self) -> Lsn;

    /// Where a slot created with RESERVE_WAL starts holding WAL: the redo
    /// pointer of the last checkpoint, as PostgreSQL does.
    fn redo_lsn(&self) -> Lsn;

    /// The data directory (`SHOW data_directory_mode`, `slots/`).
    fn data_directory(&self) -> PathBuf;

    /// Whether a walrep standby connecting as `application_name` may report
    /// its apply position only when told a commit waits for it (see
    /// `APPLY_FEEDBACK_PARAMETER`): a node whose commits may wait for
    /// that standby's apply agrees, and must then tell it, through
    /// [`ReplicationSource::apply_wanted`]. By default no: every replay
    /// progress is reported (cascading standbys, async standbys: their
    /// replay lag is followed as closely as before).
    fn apply_feedback_on_request(&self, application_name: &str) -> bool {
        let _ = application_name;
        false
    }

    /// The highest WAL position a commit waiting for its synchronous
    /// standbys' apply position (`remote_apply`) has asked for: walsenders
    /// of standbys that report apply on request flag their keepalives
    /// until they have told them up to here. Announced before the commit's
    /// flush completes, or else with a token of
    /// [`ReplicationSource::subscribe_written`].
    fn apply_wanted(&self) -> Lsn {
        Lsn::INVALID
    }

    /// Also wake `sub` when [`ReplicationSource::apply_wanted`] moves
    /// after the WAL it names was flushed. Nothing by default.
    fn also_apply_wanted(&self, sub: &Subscription) {
        let _ = sub;
    }

    /// Whether a commit here waited lately for a standby's written
    /// position alone (`remote_write`): walsenders of standbys that asked
    /// for the flush hint tell them (`PrimaryKeepalive::write_wanted`).
    /// By default no.
    fn write_reports_wanted(&self) -> bool {
        false
    }

    /// Count `sub`, a walsender of a walrep standby, among those for whom
    /// the WAL writer flushes at its streaming spacing while `sub` lives:
    /// such a standby exposes only WAL this node has flushed, so the
    /// spacing is the longest an asynchronous write waits before it can
    /// be read there. Nothing by default.
    fn also_follow_flushes(&self, sub: &Subscription) {
        let _ = sub;
    }

    /// True on a standby (reported as `in_hot_standby`; cascading
    /// walsenders never count as synchronous).
    fn in_recovery(&self) -> bool {
        false
    }

    /// The instance identifiers this node streams from, nearest first (its
    /// upstream, that one's upstream, ...); empty on a primary. Sent as
    /// `walrep_upstream_chain` so a walreceiver refuses an upstream whose
    /// chain leads back to itself, however long the loop.
    fn upstream_chain(&self) -> Vec<u64> {
        Vec::new()
    }

    /// Run BASE_BACKUP, writing PostgreSQL 15's answer to `out` (result
    /// sets, then one COPY OUT with archives, progress and manifest, then
    /// the end position). The server sends the final
    /// `CommandComplete BASE_BACKUP` itself. Not implemented by default.
    fn base_backup(
        &self,
        options: &BaseBackupOptions,
        out: &mut dyn BackupOutput,
    ) -> Result<(), PgError> {
        let _ = (options, out);
        Err(PgError::error(
            FEATURE_NOT_SUPPORTED,
            "BASE_BACKUP is not supported by this walrep server yet",
        ))
    }

    /// walrep's CONFIRM_BASE_BACKUP: the client checked its copy of the
    /// resumable backup `id`; release the checkpoint kept for it. Not
    /// implemented by default.
    fn confirm_base_backup(&self, id: &str) -> Result<(), PgError> {
        let _ = id;
        Err(PgError::error(
            FEATURE_NOT_SUPPORTED,
            "CONFIRM_BASE_BACKUP is not supported by this walrep server",
        ))
    }
}

/// Where a base backup is written: the framing of PostgreSQL 15's
/// BASE_BACKUP answer over the replication connection.
pub trait BackupOutput {
    /// A result set of text-format columns `(name, type oid)` (25 text,
    /// 20 int8, 26 oid), followed by CommandComplete `SELECT`.
    fn result_set(
        &mut self,
        columns: &[(&str, i32)],
        rows: &[Vec<Option<String>>],
    ) -> io::Result<()>;
    /// CopyOutResponse: the archive stream starts.
    fn begin_copy(&mut self) -> io::Result<()>;
    /// `n`: a new archive (e.g. `base.tar`) for a tablespace path ("" for
    /// the main data directory).
    fn new_archive(&mut self, name: &str, tablespace: &str) -> io::Result<()>;
    /// `d`: bytes of the current archive (or of the manifest).
    fn data(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// `p`: total bytes sent so far (with PROGRESS).
    fn progress(&mut self, done: u64) -> io::Result<()>;
    /// `m`: the manifest follows as `d` messages.
    fn manifest(&mut self) -> io::Result<()>;
    /// CopyDone: the archive stream ends.
    fn end_copy(&mut self) -> io::Result<()>;
}
