//! `walrep basebackup --resume`: what an interrupted copy already holds.
//!
//! The server keeps the checkpoint of a failed resumable backup pinned
//! (`pin::RESUME_WINDOW`), so the resumed backup copies the *same*
//! snapshot: every chunk file already in the copy that passes its checks
//! (its CRC over the whole file, and a header naming this chunk of this
//! checkpoint) is kept and named in `SKIP_CHUNKS`; the rest is removed and
//! copied again. The start position, and so the WAL the copy needs, stays
//! the backup's first.
//!
//! What else is removed depends on how far the copy got:
//! - before a two-phase backup's first phase was complete, or for a
//!   one-phase backup: everything but the marker and the intact chunks
//!   (`backup_label`, `walrep.toml`, the control file and the WAL are small
//!   and come again);
//! - after it: only damaged chunks and the control file. A standby may be
//!   running on the directory, streaming into `wal/`; its configuration,
//!   `backup_label` and `walrep.toml` stay as they are.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::datadir::BASE_DIR;
use crate::standby::pending::{PendingBackup, BACKUP_IN_PROGRESS_FILE};
use crate::store::checkpoint::chunk_name;
use crate::store::control::CONTROL_FILE;

/// Why a copy cannot be resumed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// No marker: nothing was interrupted here.
    #[error("\"{0}\" has no interrupted base backup to resume (no backup_in_progress: the copy is complete, or was never started here)")]
    NothingToResume(String),
    /// The marker is from a walrep that did not record the backup's id.
    #[error("the interrupted copy in \"{0}\" has no backup id (it was started by an older walrep): remove it and take a new base backup")]
    NoBackupId(String),
    /// The marker could not be read.
    #[error(transparent)]
    Marker(#[from] crate::standby::pending::PendingError),
    /// The copy's files could not be listed, checked or removed.
    #[error("could not {op} \"{}\": {source}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The IO error.
        source: io::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ResumeError {
    let path = path.to_path_buf();
    move |source| ResumeError::Io { op, path, source }
}

/// What the resumed backup asks for and keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePlan {
    /// The interrupted copy's marker.
    pub marker: PendingBackup,
    /// The server's id of the backup.
    pub backup_id: String,
    /// Chunk numbers held intact (`SKIP_CHUNKS`), ascending.
    pub kept_chunks: Vec<u32>,
    /// Their bytes.
    pub kept_bytes: u64,
    /// Files removed to be copied again.
    pub removed: u64,
    /// The first phase of a two-phase copy was complete: its files stay.
    pub phase_one_done: bool,
}

/// Look at the interrupted copy in `datadir` and remove what must be
/// copied again.
pub fn prepare(datadir: &Path) -> Result<ResumePlan, ResumeError> {
    let shown = datadir.display().to_string();
    let marker =
        PendingBackup::read(datadir)?.ok_or_else(|| ResumeError::NothingToResume(shown.clone()))?;
    let backup_id = marker
        .backup_id
        .clone()
        .ok_or(ResumeError::NoBackupId(shown))?;
    let phase_one_done = marker.two_phase;
    let (kept_chunks, kept_bytes, mut removed) = check_chunks(datadir)?;
    removed += if phase_one_done {
        remove_if_present(&datadir.join(CONTROL_FILE))?
    } else {
        remove_all_but_chunks(datadir)?
    };
    Ok(ResumePlan {
        marker,
        backup_id,
        kept_chunks,
        kept_bytes,
        removed,
        phase_one_done,
    })
}

/// The snapshot directory of the copy (`base/<16 hex digits>`), if any.
fn snapshot_dir(datadir: &Path) -> Result<Option<(u64, PathBuf)>, ResumeError> {
    let base = datadir.join(BASE_DIR);
    let entries = match fs::read_dir(&base) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open directory", &base)(e)),
    };
    for e in entries {
        let e = e.map_err(io_err("read directory", &base))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(id) = u64::from_str_radix(&name, 16) {
            if name.len() == 16 && e.path().is_dir() {
                return Ok(Some((id, e.path())));
            }
        }
    }
    Ok(None)
}

/// Keep each chunk file that passes its checks, remove the others;
/// returns the kept chunk numbers, their bytes and the files removed.
fn check_chunks(datadir: &Path) -> Result<(Vec<u32>, u64, u64), ResumeError> {
    let Some((id, dir)) = snapshot_dir(datadir)? else {
        return Ok((Vec::new(), 0, 0));
    };
    let mut kept = Vec::new();
    let (mut bytes, mut removed) = (0, 0);
    for e in fs::read_dir(&dir).map_err(io_err("open directory", &dir))? {
        let e = e.map_err(io_err("read directory", &dir))?;
        let path = e.path();
        let intact = chunk_number(&e.file_name().to_string_lossy())
            .map(|n| intact_chunk(&path, n, id).map(|ok| ok.then_some(n)))
            .transpose()?
            .flatten();
        match intact {
            Some(n) => {
                // The interrupted copy fsyncs its chunks at its end, which
                // it may not have reached: a kept chunk is made durable now.
                fs::File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(io_err("fsync", &path))?;
                kept.push(n);
                bytes += e.metadata().map_err(io_err("stat", &path))?.len();
            }
            None => {
                remove_path(&path)?;
                removed += 1;
            }
        }
    }
    kept.sort_unstable();
    Ok((kept, bytes, removed))
}

/// `chunk_NNNN`'s number, if the name is exactly one.
fn chunk_number(name: &str) -> Option<u32> {
    let n: u32 = name.strip_prefix("chunk_")?.parse().ok()?;
    (chunk_name(n) == name).then_some(n)
}

/// Does the chunk file pass its CRC and name chunk `n` of checkpoint `id`?
fn intact_chunk(path: &Path, n: u32, id: u64) -> Result<bool, ResumeError> {
    let bytes = fs::read(path).map_err(io_err("read", path))?;
    // The header's chunk count (the copy has no control file yet).
    let Some(count) = bytes
        .get(12..16)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
    else {
        return Ok(false);
    };
    Ok(crate::store::checkpoint::parse_chunk(&bytes, n, count, id).is_ok())
}

/// Remove everything in `datadir` but the marker and the snapshot's
/// (already checked) chunk files; returns how many files were removed.
fn remove_all_but_chunks(datadir: &Path) -> Result<u64, ResumeError> {
    let mut removed = 0;
    for e in fs::read_dir(datadir).map_err(io_err("open directory", datadir))? {
        let e = e.map_err(io_err("read directory", datadir))?;
        let name = e.file_name();
        if name == BACKUP_IN_PROGRESS_FILE || name == BASE_DIR {
            continue;
        }
        remove_path(&e.path())?;
        removed += 1;
    }
    Ok(removed)
}

fn remove_if_present(path: &Path) -> Result<u64, ResumeError> {
    match fs::symlink_metadata(path) {
        Ok(_) => remove_path(path).map(|()| 1),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err("stat", path)(e)),
    }
}

fn remove_path(path: &Path) -> Result<(), ResumeError> {
    let is_dir = fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    let removed = if is_dir {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    removed.map_err(io_err("remove", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Lsn, TimelineId, WalSegSize};

    fn marker(two_phase: bool, id: Option<&str>) -> PendingBackup {
        PendingBackup {
            system_id: 1,
            start: Lsn(0x100_0028),
            tli: TimelineId::FIRST,
            wal_segment_size: WalSegSize::new(1 << 20).unwrap(),
            two_phase,
            backup_id: id.map(str::to_string),
            slot: None,
        }
    }

    /// A copy with two intact chunks of checkpoint 5, a torn one, and the
    /// small files.
    fn copy(two_phase: bool) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let storage = crate::storage::StdStorage;
        marker(two_phase, Some("ab"))
            .write(&storage, d.path())
            .unwrap();
        let store = crate::store::map::Store::new();
        fs::create_dir(d.path().join(BASE_DIR)).unwrap();
        let snap = crate::store::checkpoint::snapshot_dir(d.path(), 5);
        crate::store::checkpoint::write_snapshot(&storage, d.path(), 5, 3, &store, &mut |_| {})
            .unwrap();
        let torn = snap.join(chunk_name(2));
        let len = fs::metadata(&torn).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&torn)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        fs::write(snap.join("stray"), b"x").unwrap();
        for f in ["backup_label", "walrep.toml", "control"] {
            fs::write(d.path().join(f), b"x").unwrap();
        }
        fs::create_dir(d.path().join("wal")).unwrap();
        d
    }

    #[test]
    fn intact_chunks_are_kept_and_the_rest_removed() {
        let d = copy(false);
        let plan = prepare(d.path()).unwrap();
        assert_eq!(plan.kept_chunks, vec![0, 1]);
        assert_eq!(plan.backup_id, "ab");
        assert!(!plan.phase_one_done);
        let snap = crate::store::checkpoint::snapshot_dir(d.path(), 5);
        assert!(!snap.join(chunk_name(2)).exists() && !snap.join("stray").exists());
        for gone in ["backup_label", "walrep.toml", "control", "wal"] {
            assert!(!d.path().join(gone).exists(), "{gone}");
        }
        assert!(d.path().join(BACKUP_IN_PROGRESS_FILE).exists());
    }

    #[test]
    fn after_phase_one_only_chunks_and_the_control_file_go() {
        let d = copy(true);
        let plan = prepare(d.path()).unwrap();
        assert!(plan.phase_one_done);
        assert_eq!(plan.kept_chunks, vec![0, 1]);
        assert!(!d.path().join("control").exists());
        for kept in ["backup_label", "walrep.toml", "wal"] {
            assert!(d.path().join(kept).exists(), "{kept}");
        }
    }

    #[test]
    fn nothing_to_resume_and_old_markers_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let e = prepare(d.path()).unwrap_err();
        assert!(e.to_string().contains("no interrupted base backup"), "{e}");
        marker(false, None)
            .write(&crate::storage::StdStorage, d.path())
            .unwrap();
        let e = prepare(d.path()).unwrap_err();
        assert!(e.to_string().contains("no backup id"), "{e}");
    }
}
