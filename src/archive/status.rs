//! `DATADIR/wal/archive_status/<file>.ready|.done`: PostgreSQL's record of
//! which WAL files still have to be archived, and the durable file operations
//! on it.
//!
//! A `.ready` file means "complete, not yet archived": the segment must be
//! kept. The archiver renames it to `.done` once `archive_command` succeeded.
//! Both are empty files; their names are the whole state. Every change to
//! them goes through the node's [`Storage`].

use std::collections::BinaryHeap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::ArchiveError;
use crate::config::ArchiveMode;
use crate::storage::{durable_create, durable_create_dir, durable_rename, Storage, StorageError};

/// Directory of the WAL files, relative to the data directory.
pub const WAL_DIR: &str = "wal";
/// Directory of the status files, relative to the data directory.
pub const ARCHIVE_STATUS_DIR: &str = "wal/archive_status";

/// Characters a WAL file name may contain (PostgreSQL's `VALID_XFN_CHARS`:
/// hex digits plus the letters of `.history`, `.backup` and `.partial`).
const VALID_XFN_CHARS: &str = "0123456789ABCDEF.history.backup.partial";
/// Shortest and longest WAL file names PostgreSQL's archiver accepts.
const MIN_XFN_CHARS: usize = 16;
const MAX_XFN_CHARS: usize = 40;

/// `DATADIR/wal/archive_status`.
pub fn status_dir(datadir: &Path) -> PathBuf {
    datadir.join(ARCHIVE_STATUS_DIR)
}

fn status_path(datadir: &Path, name: &str, suffix: &str) -> PathBuf {
    status_dir(datadir).join(format!("{name}{suffix}"))
}

/// Whether `name` looks like a file the archiver may hand to
/// `archive_command`. Anything else in `archive_status/` is ignored, which
/// also keeps arbitrary text out of the shell command line.
pub fn is_archivable_name(name: &str) -> bool {
    (MIN_XFN_CHARS..=MAX_XFN_CHARS).contains(&name.len())
        && name.chars().all(|c| VALID_XFN_CHARS.contains(c))
}

/// Whether `name` is a timeline history file name (`TTTTTTTT.history`).
pub fn is_history_file_name(name: &str) -> bool {
    name.len() == 16
        && name.ends_with(".history")
        && name[..8].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Up to `max` files waiting for archiving (names without `.ready`), in the
/// order PostgreSQL archives them: timeline history files first (a standby
/// following a new timeline needs them before its segments), then everything
/// else oldest first, which for WAL names is name order. Keeping only the
/// first `max` bounds memory however large the backlog is.
pub fn ready_files(datadir: &Path, max: usize) -> Result<Vec<String>, ArchiveError> {
    let dir = status_dir(datadir);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ArchiveError::io("read directory", dir, e)),
    };
    // Max-heap of the best `max` keys so far: the worst is evicted first.
    let mut best: BinaryHeap<(bool, String)> = BinaryHeap::new();
    for entry in entries {
        let entry = entry.map_err(|e| ArchiveError::io("read directory", &dir, e))?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".ready")) else {
            continue;
        };
        if !is_archivable_name(name) {
            continue;
        }
        // `false` sorts first: history files get `false`.
        best.push((!is_history_file_name(name), name.to_string()));
        if best.len() > max {
            best.pop();
        }
    }
    Ok(best.into_sorted_vec().into_iter().map(|(_, n)| n).collect())
}

/// Make sure `wal/archive_status/` exists (durably), for nodes whose WAL
/// directory predates archiving.
fn ensure_status_dir(storage: &dyn Storage, datadir: &Path) -> Result<(), StorageError> {
    durable_create_dir(storage, &status_dir(datadir)).map(|_| ())
}

/// Mark `name` (a file in `wal/`) as complete and waiting for archiving:
/// durably create `archive_status/<name>.ready` (PostgreSQL's
/// `XLogArchiveNotify`). Call it only once the file itself is fsynced; then
/// wake the archiver through its [`super::ArchiveNotifier`].
pub fn mark_ready(storage: &dyn Storage, datadir: &Path, name: &str) -> Result<(), ArchiveError> {
    ensure_status_dir(storage, datadir)?;
    durable_create(storage, &status_path(datadir, name, ".ready"), &[])?;
    Ok(())
}

/// Mark `name` as archived (PostgreSQL's `XLogArchiveForceDone`): rename its
/// `.ready` to `.done`, or create `.done` if there was no `.ready`. Used by
/// the archiver after success and for files restored from the archive
/// (which need not be archived again).
pub fn mark_done(storage: &dyn Storage, datadir: &Path, name: &str) -> Result<(), ArchiveError> {
    let ready = status_path(datadir, name, ".ready");
    let done = status_path(datadir, name, ".done");
    if ready.exists() {
        durable_rename(storage, &ready, &done)?;
        return Ok(());
    }
    if done.exists() {
        return Ok(());
    }
    ensure_status_dir(storage, datadir)?;
    durable_create(storage, &done, &[])?;
    Ok(())
}

/// Whether `name` has been archived (`.done` exists).
pub fn is_archived(datadir: &Path, name: &str) -> bool {
    status_path(datadir, name, ".done").exists()
}

/// Whether WAL file `name` may be removed or recycled as far as archiving is
/// concerned (PostgreSQL's `XLogArchiveCheckDone`): always with archiving
/// off, or during archive recovery unless `archive_mode = always`; otherwise
/// only once archived (`.done`). With neither `.ready` nor `.done` (a crash
/// lost the status file) the file is queued again with a new `.ready` and
/// kept, so a segment is never removed unarchived.
pub fn segment_removable(
    storage: &dyn Storage,
    datadir: &Path,
    name: &str,
    archive_mode: ArchiveMode,
    in_archive_recovery: bool,
) -> Result<bool, ArchiveError> {
    match archive_mode {
        ArchiveMode::Off => return Ok(true),
        ArchiveMode::On if in_archive_recovery => return Ok(true),
        _ => {}
    }
    if is_archived(datadir, name) {
        return Ok(true);
    }
    if status_path(datadir, name, ".ready").exists() {
        return Ok(false);
    }
    // The archiver may have renamed .ready to .done between the two checks.
    if is_archived(datadir, name) {
        return Ok(true);
    }
    mark_ready(storage, datadir, name)?;
    Ok(false)
}

/// Forget the archive status of a removed WAL file (PostgreSQL's
/// `XLogArchiveCleanup`): remove its `.done` and `.ready`, if any.
pub fn archive_cleanup(
    storage: &dyn Storage,
    datadir: &Path,
    name: &str,
) -> Result<(), ArchiveError> {
    for suffix in [".done", ".ready"] {
        let p = status_path(datadir, name, suffix);
        match storage.remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ArchiveError::io("remove", p, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StdStorage;

    fn touch_ready(datadir: &Path, name: &str) {
        mark_ready(&StdStorage, datadir, name).unwrap();
    }

    #[test]
    fn names_follow_postgres() {
        assert!(is_archivable_name("000000010000000000000003"));
        assert!(is_archivable_name("00000002.history"));
        assert!(is_archivable_name("000000010000000000000003.partial"));
        assert!(is_archivable_name(
            "000000010000000000000003.00000028.backup"
        ));
        assert!(!is_archivable_name("RECOVERYXLOG"));
        assert!(!is_archivable_name("0000000100000000000000zz"));
        assert!(!is_archivable_name("x; rm -rf /x; 0000000000"));
        assert!(is_history_file_name("0000000A.history"));
        assert!(!is_history_file_name("000000010000000000000003"));
    }

    #[test]
    fn ready_files_puts_history_first_then_oldest() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "000000020000000000000005",
            "000000010000000000000004",
            "00000002.history",
            "000000010000000000000003",
            "000000010000000000000004.partial",
        ] {
            touch_ready(d.path(), n);
        }
        fs::write(status_dir(d.path()).join("junk.ready"), b"").unwrap();
        mark_done(&StdStorage, d.path(), "000000010000000000000002").unwrap();
        assert_eq!(
            ready_files(d.path(), 64).unwrap(),
            vec![
                "00000002.history",
                "000000010000000000000003",
                "000000010000000000000004",
                "000000010000000000000004.partial",
                "000000020000000000000005",
            ]
        );
        assert_eq!(
            ready_files(d.path(), 2).unwrap(),
            vec!["00000002.history", "000000010000000000000003"]
        );
    }

    #[test]
    fn no_status_dir_means_nothing_to_archive() {
        let d = tempfile::tempdir().unwrap();
        assert!(ready_files(d.path(), 64).unwrap().is_empty());
    }

    #[test]
    fn done_and_removable_follow_check_done() {
        let d = tempfile::tempdir().unwrap();
        let seg = "000000010000000000000003";
        touch_ready(d.path(), seg);
        assert!(!segment_removable(&StdStorage, d.path(), seg, ArchiveMode::On, false).unwrap());
        assert!(segment_removable(&StdStorage, d.path(), seg, ArchiveMode::Off, false).unwrap());
        assert!(segment_removable(&StdStorage, d.path(), seg, ArchiveMode::On, true).unwrap());
        assert!(!segment_removable(&StdStorage, d.path(), seg, ArchiveMode::Always, true).unwrap());
        mark_done(&StdStorage, d.path(), seg).unwrap();
        assert!(!status_path(d.path(), seg, ".ready").exists());
        assert!(is_archived(d.path(), seg));
        assert!(segment_removable(&StdStorage, d.path(), seg, ArchiveMode::On, false).unwrap());
        archive_cleanup(&StdStorage, d.path(), seg).unwrap();
        assert!(!is_archived(d.path(), seg));
        // Lost status: queued again, kept.
        assert!(!segment_removable(&StdStorage, d.path(), seg, ArchiveMode::On, false).unwrap());
        assert_eq!(ready_files(d.path(), 64).unwrap(), vec![seg]);
    }
}
