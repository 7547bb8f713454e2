//! `walrep basebackup --resume`: what an interrupted copy already holds.
//!
//! The server keeps the checkpoint of a failed resumable backup pinned
//! (`pin::RESUME_WINDOW`), so the resumed backup copies the *same*
//! snapshot. The interrupted copy's journal of written files
//! (`backup_manifest.partial`, the manifest it was building) says what
//! each file it finished held: a file is kept only if it is still there
//! with that size and CRC-32C (a chunk file must also pass its own checks:
//! CRC and a header naming this chunk of this checkpoint). Kept chunks are
//! named in `SKIP_CHUNKS`; everything else is removed and copied again.
//! The start position, and so the WAL the copy needs, stays the backup's
//! first.
//!
//! What else is kept depends on how far the copy got:
//! - before a two-phase backup's first phase was complete, or for a
//!   one-phase backup: the WAL segments (with their `.done` status and
//!   the history files) that match the journal, so only the missing WAL
//!   is fetched again; `backup_label`, `walrep.toml` and the control file
//!   are a few kB and come again (the control file names the resumed
//!   backup's end);
//! - after it: everything but damaged chunks and the control file. A
//!   standby may be running on the directory, streaming into `wal/`; its
//!   configuration, `backup_label` and `walrep.toml` stay as they are (an
//!   operator may have edited `walrep.toml` to start it), and are recorded
//!   in the manifest as they are.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::manifest::MANIFEST_FILE;
use super::written::{read_journal, FileEntry, PARTIAL_MANIFEST_FILE};
use crate::datadir::{ARCHIVE_STATUS_DIR, BASE_DIR, WAL_DIR};
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

impl From<super::manifest::ManifestError> for ResumeError {
    fn from(e: super::manifest::ManifestError) -> ResumeError {
        match e {
            super::manifest::ManifestError::Io { op, path, source } => {
                ResumeError::Io { op, path, source }
            }
            other => ResumeError::Io {
                op: "check",
                path: PathBuf::from(PARTIAL_MANIFEST_FILE),
                source: io::Error::other(other.to_string()),
            },
        }
    }
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
    /// WAL segments kept (a one-phase copy fetches only the others).
    pub kept_wal_segments: u64,
    /// Files the journal listed that no longer match it (size or
    /// checksum): removed and copied again.
    pub mismatched: u64,
    /// Files removed to be copied again.
    pub removed: u64,
    /// The first phase of a two-phase copy was complete: its files stay.
    pub phase_one_done: bool,
    /// Every file kept, as the copy's manifest records it.
    pub(crate) kept_files: Vec<FileEntry>,
}

impl ResumePlan {
    /// Bytes of every file kept.
    pub fn kept_file_bytes(&self) -> u64 {
        self.kept_files.iter().map(|f| f.size).sum()
    }
}

/// What the examination of the interrupted copy's files found.
#[derive(Default)]
struct Kept {
    chunks: Vec<u32>,
    chunk_bytes: u64,
    wal_segments: u64,
    files: Vec<FileEntry>,
    mismatched: u64,
    removed: u64,
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
    let journal =
        read_journal(datadir).map_err(io_err("read", &datadir.join(PARTIAL_MANIFEST_FILE)))?;
    let mut kept = Kept::default();
    check_chunks(datadir, &journal, &mut kept)?;
    kept.removed += remove_if_present(&datadir.join(MANIFEST_FILE))?;
    if phase_one_done {
        kept.removed += remove_if_present(&datadir.join(CONTROL_FILE))?;
        keep_phase_one_files(datadir, &journal, &mut kept)?;
    } else {
        check_wal(datadir, &journal, &mut kept)?;
        kept.removed += remove_all_but_kept(datadir)?;
    }
    sync_kept(datadir, &kept.files)?;
    kept.chunks.sort_unstable();
    Ok(ResumePlan {
        marker,
        backup_id,
        kept_chunks: kept.chunks,
        kept_bytes: kept.chunk_bytes,
        kept_wal_segments: kept.wal_segments,
        mismatched: kept.mismatched,
        removed: kept.removed,
        phase_one_done,
        kept_files: kept.files,
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

/// The path of `path` inside `datadir`, `/`-separated, as the journal
/// names it.
fn relative(datadir: &Path, path: &Path) -> String {
    path.strip_prefix(datadir)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Keep each chunk file that matches its journal entry and passes its
/// own checks, remove the others.
fn check_chunks(
    datadir: &Path,
    journal: &BTreeMap<String, FileEntry>,
    kept: &mut Kept,
) -> Result<(), ResumeError> {
    let Some((id, dir)) = snapshot_dir(datadir)? else {
        return Ok(());
    };
    for e in fs::read_dir(&dir).map_err(io_err("open directory", &dir))? {
        let e = e.map_err(io_err("read directory", &dir))?;
        let path = e.path();
        let entry = journal.get(&relative(datadir, &path));
        let intact = match (chunk_number(&e.file_name().to_string_lossy()), entry) {
            (Some(n), Some(entry)) => intact_chunk(&path, n, id, entry)?.then_some(n),
            _ => None,
        };
        match (intact, entry) {
            (Some(n), Some(entry)) => {
                kept.chunks.push(n);
                kept.chunk_bytes += entry.size;
                kept.files.push(entry.clone());
            }
            _ => {
                kept.mismatched += u64::from(entry.is_some());
                remove_path(&path)?;
                kept.removed += 1;
            }
        }
    }
    Ok(())
}

/// `chunk_NNNN`'s number, if the name is exactly one.
fn chunk_number(name: &str) -> Option<u32> {
    let n: u32 = name.strip_prefix("chunk_")?.parse().ok()?;
    (chunk_name(n) == name).then_some(n)
}

/// Does the chunk file have its journal entry's size and CRC-32C, pass
/// its own CRC and name chunk `n` of checkpoint `id`?
fn intact_chunk(path: &Path, n: u32, id: u64, entry: &FileEntry) -> Result<bool, ResumeError> {
    let bytes = fs::read(path).map_err(io_err("read", path))?;
    if bytes.len() as u64 != entry.size || super::manifest::crc32c(&bytes) != entry.crc32c {
        return Ok(false);
    }
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

/// A one-phase copy's `wal/`: the files (segments, their `.done` status,
/// history files) that match the journal stay; the rest go.
fn check_wal(
    datadir: &Path,
    journal: &BTreeMap<String, FileEntry>,
    kept: &mut Kept,
) -> Result<(), ResumeError> {
    for dir in [WAL_DIR, ARCHIVE_STATUS_DIR] {
        let dir = datadir.join(dir);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("open directory", &dir)(e)),
        };
        for e in entries {
            let e = e.map_err(io_err("read directory", &dir))?;
            let path = e.path();
            if e.file_type().map_err(io_err("stat", &path))?.is_dir() {
                continue;
            }
            let entry = journal.get(&relative(datadir, &path));
            match entry {
                Some(entry) if entry.matches_disk(datadir)? => {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let status = dir.ends_with(ARCHIVE_STATUS_DIR);
                    kept.wal_segments += u64::from(!status && !name.ends_with(".history"));
                    kept.files.push(entry.clone());
                }
                _ => {
                    kept.mismatched += u64::from(entry.is_some());
                    remove_path(&path)?;
                    kept.removed += 1;
                }
            }
        }
    }
    Ok(())
}

/// After phase one: every file the journal lists besides the snapshot
/// and the control file stays as it is, recorded as it is now.
fn keep_phase_one_files(
    datadir: &Path,
    journal: &BTreeMap<String, FileEntry>,
    kept: &mut Kept,
) -> Result<(), ResumeError> {
    let listed: BTreeSet<&str> = kept.files.iter().map(|f| f.path.as_str()).collect();
    let mut now = Vec::new();
    for rel in journal.keys() {
        let in_snapshot = rel.starts_with(&format!("{BASE_DIR}/"));
        if in_snapshot || rel == CONTROL_FILE || listed.contains(rel.as_str()) {
            continue;
        }
        if datadir.join(rel).is_file() {
            now.push(FileEntry::from_disk(datadir, rel)?);
        }
    }
    kept.files.extend(now);
    Ok(())
}

/// Remove everything in `datadir` but the marker, the journal, the
/// snapshot and `wal/` (already checked); returns how many were removed.
fn remove_all_but_kept(datadir: &Path) -> Result<u64, ResumeError> {
    let mut removed = 0;
    for e in fs::read_dir(datadir).map_err(io_err("open directory", datadir))? {
        let e = e.map_err(io_err("read directory", datadir))?;
        let name = e.file_name();
        if [
            BACKUP_IN_PROGRESS_FILE,
            PARTIAL_MANIFEST_FILE,
            BASE_DIR,
            WAL_DIR,
        ]
        .iter()
        .any(|k| name == *k)
        {
            continue;
        }
        remove_path(&e.path())?;
        removed += 1;
    }
    Ok(removed)
}

/// The interrupted copy fsyncs its large files at its end, which it may
/// not have reached: every kept file, and the directories holding them,
/// are made durable now.
fn sync_kept(datadir: &Path, files: &[FileEntry]) -> Result<(), ResumeError> {
    let mut dirs = BTreeSet::new();
    for f in files {
        let path = datadir.join(&f.path);
        fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io_err("fsync", &path))?;
        if let Some(parent) = path.parent() {
            dirs.insert(parent.to_path_buf());
        }
    }
    for d in dirs.iter().rev() {
        fs::File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(io_err("fsync", d))?;
    }
    Ok(())
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
        // The interrupted copy's journal lists every chunk it finished
        // (the torn one's entry is of its whole length), a WAL segment and
        // its status; not the unlisted segment.
        fs::create_dir_all(d.path().join(ARCHIVE_STATUS_DIR)).unwrap();
        fs::write(d.path().join("wal/000000010000000000000001"), b"seg").unwrap();
        fs::write(d.path().join("wal/000000010000000000000002"), b"seg").unwrap();
        fs::write(d.path().join("wal/000000010000000000000003"), b"seg").unwrap();
        fs::write(
            d.path()
                .join("wal/archive_status/000000010000000000000001.done"),
            b"",
        )
        .unwrap();
        let journal = crate::backup::written::WrittenFiles::start(
            std::sync::Arc::new(storage),
            d.path(),
            Vec::new(),
        )
        .unwrap();
        for i in 0..3 {
            let rel = format!("{BASE_DIR}/{:016X}/{}", 5, chunk_name(i));
            journal.record_from_disk(d.path(), &rel).unwrap();
        }
        for rel in [
            "wal/000000010000000000000001",
            "wal/000000010000000000000003",
            "wal/archive_status/000000010000000000000001.done",
        ] {
            journal.record_from_disk(d.path(), rel).unwrap();
        }
        // Damaged after it was journaled: same size, other bytes.
        fs::write(d.path().join("wal/000000010000000000000003"), b"sex").unwrap();
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
        for gone in ["backup_label", "walrep.toml", "control"] {
            assert!(!d.path().join(gone).exists(), "{gone}");
        }
        // The WAL the journal vouches for stays; the rest is fetched again.
        assert_eq!(plan.kept_wal_segments, 1);
        assert!(d.path().join("wal/000000010000000000000001").exists());
        assert!(d
            .path()
            .join("wal/archive_status/000000010000000000000001.done")
            .exists());
        for gone in ["000000010000000000000002", "000000010000000000000003"] {
            assert!(!d.path().join("wal").join(gone).exists(), "{gone}");
        }
        // The torn chunk and the damaged segment failed their checksums.
        assert_eq!(plan.mismatched, 2);
        assert_eq!(plan.kept_files.len(), 4);
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
        // A standby running on the copy streams into wal/: left alone.
        assert!(d.path().join("wal/000000010000000000000002").exists());
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
