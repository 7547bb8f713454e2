//! What a base backup needs of the node it copies: the one seam between
//! the backup's server side ([`super::server`], [`super::standby_backup`])
//! and the node, so that both can be tested against a fake.

use std::path::Path;

use super::pin::{BackupPin, BackupPins};
use crate::config::ArchiveMode;
use crate::store::ControlFile;
use crate::wal::WalError;
use crate::{Lsn, TimelineId};

/// What a base backup needs of the node it copies.
pub trait BackupSource {
    /// Why a checkpoint failed.
    type CheckpointError: std::fmt::Display;

    /// The data directory copied.
    fn datadir(&self) -> &Path;

    /// Accepting writes (a backup started otherwise is a standby's).
    fn is_primary(&self) -> bool;

    /// A standby's replay position: the timeline and end of the last
    /// record replayed. `None` on a node that never was in recovery.
    fn replay_position(&self) -> Option<(TimelineId, Lsn)>;

    /// Shutdown has begun: no new backup starts.
    fn is_shutting_down(&self) -> bool;

    /// `archive_mode` (WAIT waits for the archiver only when it runs).
    fn archive_mode(&self) -> ArchiveMode;

    /// Run an immediate checkpoint now (PostgreSQL's `CHECKPOINT_FORCE |
    /// CHECKPOINT_WAIT` at backup start); a restartpoint on a standby.
    fn checkpoint(&self) -> Result<(), Self::CheckpointError>;

    /// Pin the last checkpoint's snapshot and the WAL from its redo point
    /// until the pin is dropped; returns the control file naming it.
    /// `None` once shutdown has begun.
    fn pin_last_checkpoint(&self) -> Option<(BackupPin, ControlFile)>;

    /// The WAL writer's timeline and insert position, if one runs.
    fn wal_position(&self) -> Option<(TimelineId, Lsn)>;

    /// do_pg_backup_stop: log XLOG_BACKUP_END for the backup that started
    /// at `start`, flush it and switch segments; returns the record's end.
    /// `None` once shutdown has begun (it never follows the shutdown
    /// checkpoint) or without a WAL writer.
    fn log_backup_end(&self, start: Lsn) -> Result<Option<Lsn>, WalError>;

    /// The node's backup pins (where parallel backups are joined).
    fn backup_pins(&self) -> std::sync::Arc<BackupPins>;
}
