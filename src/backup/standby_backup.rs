//! The end of a base backup taken from a standby (PostgreSQL's `BACKUP
//! FROM: standby`): no WAL can be written there, so there is no backup-end
//! record; the backup ends at the standby's replay position when the copy
//! is done, and the copy is consistent only once it has replayed that far.
//!
//! The start is the standby's last restartpoint (a restartpoint is
//! requested first, as PostgreSQL's do_pg_backup_start does on a standby),
//! pinned like a primary's checkpoint, so its snapshot and the WAL from its
//! redo point stay while the copy runs.

use std::io;

use super::source::BackupSource;
use crate::config::ArchiveMode;
use crate::store::ControlFile;
use crate::{Lsn, TimelineId};

/// do_pg_backup_stop on a standby: the end of the backup is the replay
/// position now (never before the minimum recovery point the pinned
/// restartpoint recorded: its snapshot may hold changes replayed while it
/// was written). Refused when the standby was promoted or changed
/// timeline during the copy: the WAL the copy needs would then not be
/// the WAL it was taken on (PostgreSQL: "the standby was promoted during
/// online backup").
pub fn stop_backup<S: BackupSource>(
    node: &S,
    start_tli: TimelineId,
    start: &ControlFile,
) -> io::Result<Lsn> {
    if node.is_shutting_down() {
        return Err(io::Error::other(
            "the server is shutting down: base backup aborted",
        ));
    }
    let Some((tli, replayed)) = node.replay_position().filter(|_| !node.is_primary()) else {
        return Err(io::Error::other(
            "the standby was promoted during online backup; the backup being taken is \
             corrupt and should not be used, take another one",
        ));
    };
    if tli != start_tli {
        return Err(io::Error::other(format!(
            "the standby's replay moved from timeline {} to {} during the base backup; take another one",
            start_tli.0, tli.0
        )));
    }
    Ok(replayed.max(start.min_recovery_point))
}

/// Whether BASE_BACKUP's WAIT waits for the archiver on a standby: only
/// with `archive_mode = always`, the one mode in which a standby archives
/// (PostgreSQL's do_pg_backup_stop skips the wait otherwise).
pub fn waits_for_archive(mode: ArchiveMode) -> bool {
    mode == ArchiveMode::Always
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_archiving_standby_waits_for_its_archiver() {
        assert!(waits_for_archive(ArchiveMode::Always));
        assert!(!waits_for_archive(ArchiveMode::On));
        assert!(!waits_for_archive(ArchiveMode::Off));
    }
}
