//! The WAL directory as a set of files: creating pre-allocated segments,
//! listing segments / `.partial` / history files, archive status files, and
//! removing or recycling segments older than a horizon the caller gives
//! (PostgreSQL's XLogFileInit, RemoveOldXlogFiles and XLogArchiveCheckDone).
//!
//! One `SegmentDir` per directory per process, shared (`Arc`) by everything
//! that creates, removes or sends segments: it serialises file creation with
//! recycling and remembers the newest removed segment so a walsender can tell
//! that a file it read was recycled under it.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use thiserror::Error;

use crate::storage::{OpenFor, Storage};
use crate::{SegNo, TimelineId, WalSegSize};

/// Subdirectory of the WAL directory holding `<name>.ready` / `<name>.done`.
pub const ARCHIVE_STATUS_DIR: &str = "archive_status";
/// Prefix of segment files being pre-allocated (PostgreSQL's `xlogtemp.`).
const TEMP_PREFIX: &str = "xlogtemp.";
/// Zeroes are written in chunks of this size when a segment is created.
const ZERO_CHUNK_BYTES: usize = 1 << 20;
/// Spare segments a standby keeps for its promotion: one becomes the new
/// timeline's first segment, one the segment after it (so the WAL writer's
/// look-ahead pre-allocation does not write 16 MB while the end-of-recovery
/// record and the control file are being flushed).
pub const PROMOTION_SPARES: usize = 2;
/// Most segments remembered as known-zero (see [`SegmentDir::take_fresh`]).
const MAX_FRESH: usize = 8;

/// A segment's contents written and durable under a temporary
/// `xlogtemp.` name, waiting for [`SegmentDir::install_prepared`].
#[derive(Debug, PartialEq, Eq)]
pub struct PreparedSegment {
    tmp: PathBuf,
    /// From this offset on the file holds only zeroes.
    zero_from: u64,
}

/// An error managing WAL files.
#[derive(Debug, Error)]
pub enum SegmentError {
    /// A file operation on the WAL directory failed.
    #[error("could not {op} WAL file \"{}\": {source}", path.display())]
    Io {
        /// The operation, as a verb for the message ("open",
        /// "list", "rename").
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A segment file is not exactly the segment size: never recycled or
    /// served, since its tail would be missing.
    #[error("WAL file \"{}\" has {found} bytes, expected the segment size {expected}", path.display())]
    BadSize {
        /// The segment file.
        path: PathBuf,
        /// Its length in bytes.
        found: u64,
        /// `wal_segment_size` in bytes.
        expected: u64,
    },
    /// The segment was removed or recycled (below the horizon); the same
    /// message PostgreSQL's walsender sends a standby that fell too far
    /// behind.
    #[error("requested WAL segment {name} has already been removed")]
    Removed {
        /// The segment's file name.
        name: String,
    },
    /// A durable write (create, fsync, rename) failed; after a failed
    /// fsync nothing retries.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
}

impl SegmentError {
    pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SegmentError {
        let path = path.to_path_buf();
        move |source| SegmentError::Io { op, path, source }
    }
}

/// What kind of file a name in the WAL directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WalFileKind {
    /// `TTTTTTTTXXXXXXXXYYYYYYYY`: a segment.
    Segment,
    /// `<segment>.partial`: the unfinished last segment of a timeline.
    Partial,
    /// `TTTTTTTT.history`.
    History,
    /// `<segment>.XXXXXXXX.backup`: a backup history file.
    BackupHistory,
}

/// One file of the WAL directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalFile {
    /// The file name in the WAL directory.
    pub name: String,
    /// What the name says the file is.
    pub kind: WalFileKind,
    /// The timeline in the name.
    pub tli: TimelineId,
    /// `None` for history files.
    pub segno: Option<SegNo>,
}

impl WalFile {
    /// Classify a file name; `None` for anything that is not a WAL file.
    pub fn parse(name: &str, seg_size: WalSegSize) -> Option<WalFile> {
        let file = |kind, tli, segno| {
            Some(WalFile {
                name: name.to_string(),
                kind,
                tli,
                segno,
            })
        };
        if let Some((tli, seg)) = SegNo::parse_file_name(name, seg_size) {
            return file(WalFileKind::Segment, tli, Some(seg));
        }
        if let Some(base) = name.strip_suffix(".partial") {
            let (tli, seg) = SegNo::parse_file_name(base, seg_size)?;
            return file(WalFileKind::Partial, tli, Some(seg));
        }
        if let Some(t) = name.strip_suffix(".history") {
            if t.len() == 8 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
                let tli = u32::from_str_radix(t, 16).ok()?;
                return file(WalFileKind::History, TimelineId(tli), None);
            }
            return None;
        }
        let base = name.strip_suffix(".backup")?;
        let (seg_name, offset) = base.split_once('.')?;
        if offset.len() != 8 || !offset.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let (tli, seg) = SegNo::parse_file_name(seg_name, seg_size)?;
        file(WalFileKind::BackupHistory, tli, Some(seg))
    }
}

/// Where recycled files go: future segment names of `tli`, from `first` on,
/// at most `max_future` of them (PostgreSQL keeps about max_wal_size worth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecycleTarget {
    /// The timeline being written (future names are its names).
    pub tli: TimelineId,
    /// The first future segment number to try (after the one being written).
    pub first: SegNo,
    /// How many future segment numbers may be used.
    pub max_future: u64,
}

/// A request to remove old WAL: the caller decides the horizon from
/// checkpoints, slots, `wal_keep_size` and standbys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemovalRequest {
    /// Segments with a number below this (on any timeline) may go.
    pub horizon: SegNo,
    /// Archiving applies to this node: a segment without `.done` is kept
    /// (and gets a `.ready` if it has no status file at all).
    pub archive_mode: bool,
    /// Rename old files to future names instead of deleting them.
    pub recycle: Option<RecycleTarget>,
}

/// What a removal pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemovalReport {
    /// Files deleted.
    pub removed: u64,
    /// Files renamed to future segment names.
    pub recycled: u64,
    /// Kept because archiving has not finished with them.
    pub kept_for_archive: u64,
}

/// Counters of file operations, for stats.
#[derive(Debug, Default)]
pub(crate) struct DirCounters {
    pub created: AtomicU64,
    pub recycled: AtomicU64,
    pub removed: AtomicU64,
}

/// The WAL directory.
#[derive(Debug)]
pub struct SegmentDir {
    dir: PathBuf,
    seg_size: WalSegSize,
    /// Every write, fsync, rename and removal goes through it.
    storage: Arc<dyn Storage>,
    /// Serialises installing, recycling and removing files, so that two of
    /// them never pick the same name.
    lock: Mutex<()>,
    /// 1 + the highest segment number removed or recycled; 0 = none yet.
    removed_below: AtomicU64,
    /// Makes temporary file names unique within the process.
    temp_seq: AtomicU64,
    /// Pre-zeroed, fsynced, full-size files under temporary names (removed
    /// at start like any `xlogtemp.`), kept so that promotion writes no
    /// zeroes on its critical path.
    spares: Mutex<Vec<PathBuf>>,
    /// Segments this process created, with the offset from which their bytes
    /// are known to be zero, not yet handed to a WAL writer: the writer's
    /// start-up need not scan or remove them (see [`SegmentDir::take_fresh`]).
    fresh: Mutex<Vec<(TimelineId, SegNo, u64)>>,
    pub(crate) counters: DirCounters,
}

impl SegmentDir {
    /// Open (create if needed) the WAL directory and its `archive_status/`,
    /// and remove temporary files left by an interrupted pre-allocation.
    pub fn open(
        dir: &Path,
        seg_size: WalSegSize,
        storage: Arc<dyn Storage>,
    ) -> Result<SegmentDir, SegmentError> {
        let status = dir.join(ARCHIVE_STATUS_DIR);
        crate::storage::durable_create_dir(&*storage, &status).map_err(SegmentError::from)?;
        let sd = SegmentDir {
            dir: dir.to_path_buf(),
            seg_size,
            storage,
            lock: Mutex::new(()),
            removed_below: AtomicU64::new(0),
            temp_seq: AtomicU64::new(0),
            spares: Mutex::new(Vec::new()),
            fresh: Mutex::new(Vec::new()),
            counters: DirCounters::default(),
        };
        sd.remove_temp_files()?;
        Ok(sd)
    }

    /// The WAL directory (`DATADIR/wal`, PostgreSQL's `pg_wal`).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The size of every segment file in the directory.
    pub fn seg_size(&self) -> WalSegSize {
        self.seg_size
    }

    /// The storage every file of this directory is written through.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Path of segment `segno` of timeline `tli`.
    pub fn segment_path(&self, tli: TimelineId, segno: SegNo) -> PathBuf {
        self.dir.join(segno.file_name(tli, self.seg_size))
    }

    /// The WAL files in the directory, ordered by (segment, timeline, kind);
    /// history files first.
    pub fn list(&self) -> Result<Vec<WalFile>, SegmentError> {
        let rd = fs::read_dir(&self.dir).map_err(SegmentError::io("list", &self.dir))?;
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(SegmentError::io("list", &self.dir))?;
            if let Some(f) = entry
                .file_name()
                .to_str()
                .and_then(|n| WalFile::parse(n, self.seg_size))
            {
                out.push(f);
            }
        }
        out.sort_by_key(|a| (a.segno, a.tli, a.kind));
        Ok(out)
    }

    /// The lowest segment number present (any timeline), for "requested WAL
    /// segment has already been removed" checks and status output.
    pub fn oldest_segment(&self) -> Result<Option<SegNo>, SegmentError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|f| f.kind == WalFileKind::Segment)
            .filter_map(|f| f.segno)
            .min())
    }

    /// Open segment `(tli, segno)` for writing, creating it pre-allocated
    /// (zero-filled, fsynced, directory fsynced) if it does not exist.
    /// A walreceiver creates its segments this way too, so that readers can
    /// map them while they are being filled.
    pub fn open_for_write(&self, tli: TimelineId, segno: SegNo) -> Result<File, SegmentError> {
        self.open_created(tli, segno, false)
    }

    /// `open_for_write` for a walreceiver, which writes every segment it
    /// creates from its first byte on: the file's space is reserved with
    /// fallocate(2) instead of written with zeroes first (zero-filled
    /// where the filesystem has no fallocate). The unwritten part still
    /// reads as zeroes, before and after a crash; what zero-filling would
    /// add is a second copy of every received byte through the page cache.
    pub fn open_for_receive(&self, tli: TimelineId, segno: SegNo) -> Result<File, SegmentError> {
        self.open_created(tli, segno, true)
    }

    fn open_created(
        &self,
        tli: TimelineId,
        segno: SegNo,
        reserve_only: bool,
    ) -> Result<File, SegmentError> {
        let path = self.segment_path(tli, segno);
        if !path.exists() {
            self.preallocate_with(tli, segno, reserve_only)?;
        }
        // The name may have just been renamed into place by another thread
        // (look-ahead pre-allocation, recycling) whose directory fsync has
        // not returned yet: WAL written and acknowledged in it now would be
        // lost with the name in a power cut. Renames into place hold the
        // lock until their directory fsync is done, so taking it waits for
        // that fsync.
        drop(self.lock.lock().unwrap_or_else(|p| p.into_inner()));
        let f = self
            .storage
            .open(&path, OpenFor::Existing)
            .map_err(SegmentError::io("open", &path))?;
        self.check_size(&f, &path)?;
        Ok(f)
    }

    /// Make sure `(tli, segno)` exists at full size; returns whether a file
    /// was created. The zero-filling happens outside the directory lock so
    /// that it can run ahead of need in the background.
    pub fn preallocate(&self, tli: TimelineId, segno: SegNo) -> Result<bool, SegmentError> {
        self.preallocate_with(tli, segno, false)
    }

    fn preallocate_with(
        &self,
        tli: TimelineId,
        segno: SegNo,
        reserve_only: bool,
    ) -> Result<bool, SegmentError> {
        let path = self.segment_path(tli, segno);
        if path.exists() {
            return Ok(false);
        }
        let tmp = if reserve_only {
            self.create_reserved_temp()?
        } else {
            self.create_temp(&[])?
        };
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if path.exists() {
            let _ = self.storage.remove_file(&tmp);
            return Ok(false);
        }
        self.storage
            .rename(&tmp, &path)
            .map_err(SegmentError::io("rename", &tmp))?;
        self.storage
            .sync_dir(&self.dir)
            .map_err(SegmentError::io("fsync directory", &self.dir))?;
        self.counters.created.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Install segment `(tli, segno)` holding `prefix` followed by zeroes,
    /// replacing any file of that name (PostgreSQL's XLogFileCopy for a new
    /// timeline). Uses a spare when there is one, so only the prefix is
    /// written. The contents are durable when it returns; the rename is
    /// not fsynced here: the WAL writer started on the segment fsyncs the
    /// directory in its start-up, before anything is written into it (one
    /// directory fsync for this and [`SegmentDir::place_spare`]).
    pub fn install_segment(
        &self,
        tli: TimelineId,
        segno: SegNo,
        prefix: &[u8],
    ) -> Result<(), SegmentError> {
        let prepared = self.prepare_segment(prefix)?;
        self.install_prepared(tli, segno, prepared)
    }

    /// The first half of [`SegmentDir::install_segment`]: a full-size
    /// temporary file holding `prefix` followed by zeroes, durable, not
    /// yet named. Promotion writes it while the history file is being
    /// made durable, so that both fsyncs are waited for together.
    pub fn prepare_segment(&self, prefix: &[u8]) -> Result<PreparedSegment, SegmentError> {
        let tmp = match self.take_spare() {
            Some(spare) => self.fill_spare(spare, prefix)?,
            None => self.create_temp(prefix)?,
        };
        Ok(PreparedSegment {
            tmp,
            zero_from: prefix.len().min(self.seg_size.bytes() as usize) as u64,
        })
    }

    /// The second half of [`SegmentDir::install_segment`]: rename a
    /// prepared file to segment `(tli, segno)`, replacing any file of that
    /// name. The rename is not fsynced here (see `install_segment`).
    pub fn install_prepared(
        &self,
        tli: TimelineId,
        segno: SegNo,
        prepared: PreparedSegment,
    ) -> Result<(), SegmentError> {
        let path = self.segment_path(tli, segno);
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.storage
            .rename(&prepared.tmp, &path)
            .map_err(SegmentError::io("rename", &prepared.tmp))?;
        self.counters.created.fetch_add(1, Ordering::Relaxed);
        self.note_fresh(tli, segno, prepared.zero_from);
        Ok(())
    }

    /// Remove a prepared file that will not be installed (a promotion step
    /// failed); start-up would remove it too, as any `xlogtemp.` file.
    pub fn discard_prepared(&self, prepared: PreparedSegment) {
        let _ = self.storage.remove_file(&prepared.tmp);
    }

    /// Create spare segments until `n` are ready (a standby makes
    /// [`PROMOTION_SPARES`] in the background at start). Returns how many
    /// were created.
    pub fn make_spares(&self, n: usize) -> Result<usize, SegmentError> {
        let mut made = 0;
        while self.lock_spares().len() < n {
            let tmp = self.create_temp(&[])?;
            self.lock_spares().push(tmp);
            made += 1;
        }
        Ok(made)
    }

    /// How many spare segments are ready.
    pub fn spare_count(&self) -> usize {
        self.lock_spares().len()
    }

    /// Give segment `(tli, segno)` a spare's file (all zeroes) if it does
    /// not exist and a spare is ready; returns whether it did. The rename
    /// is not fsynced here: the caller starts a WAL writer, whose start-up
    /// fsyncs the directory before anything is written.
    pub fn place_spare(&self, tli: TimelineId, segno: SegNo) -> Result<bool, SegmentError> {
        let path = self.segment_path(tli, segno);
        if path.exists() {
            return Ok(false);
        }
        let Some(spare) = self.take_spare() else {
            return Ok(false);
        };
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if path.exists() {
            self.lock_spares().push(spare);
            return Ok(false);
        }
        self.storage
            .rename(&spare, &path)
            .map_err(SegmentError::io("rename", &spare))?;
        self.counters.created.fetch_add(1, Ordering::Relaxed);
        self.note_fresh(tli, segno, 0);
        Ok(true)
    }

    /// Segments of `tli` installed or placed by this process since the last
    /// call, each with the offset from which it is known to hold only
    /// zeroes; forgets them all (any timeline). A WAL writer starting on
    /// `tli` calls this once, before it writes: such a segment needs no scan
    /// for stale bytes, and one that is all zeroes is no stale future
    /// segment (zeroes never read as a record).
    pub(crate) fn take_fresh(&self, tli: TimelineId) -> Vec<(SegNo, u64)> {
        let mut fresh = self.fresh.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *fresh)
            .into_iter()
            .filter(|f| f.0 == tli)
            .map(|f| (f.1, f.2))
            .collect()
    }

    fn note_fresh(&self, tli: TimelineId, segno: SegNo, zero_from: u64) {
        let mut fresh = self.fresh.lock().unwrap_or_else(|p| p.into_inner());
        fresh.retain(|f| (f.0, f.1) != (tli, segno));
        if fresh.len() >= MAX_FRESH {
            fresh.remove(0);
        }
        fresh.push((tli, segno, zero_from));
    }

    fn lock_spares(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.spares.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_spare(&self) -> Option<PathBuf> {
        self.lock_spares().pop()
    }

    /// Write `prefix` at the start of a spare and make it durable (the rest
    /// is already zero and allocated, so only the prefix's pages go out).
    fn fill_spare(&self, spare: PathBuf, prefix: &[u8]) -> Result<PathBuf, SegmentError> {
        let prefix = &prefix[..prefix.len().min(self.seg_size.bytes() as usize)];
        let r = self
            .storage
            .open(&spare, OpenFor::Existing)
            .map_err(SegmentError::io("open", &spare))
            .and_then(|f| {
                self.storage
                    .write_at(&f, &spare, 0, prefix)
                    .map_err(SegmentError::io("write", &spare))?;
                self.storage
                    .sync_data(&f, &spare)
                    .map_err(SegmentError::io("fsync", &spare))
            });
        if let Err(e) = r {
            let _ = self.storage.remove_file(&spare);
            return Err(e);
        }
        Ok(spare)
    }

    /// A new, empty `xlogtemp.<pid>.<n>` file (start-up cleanup removes
    /// any left behind).
    fn new_temp_file(&self) -> Result<(PathBuf, File), SegmentError> {
        let n = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!("{TEMP_PREFIX}{}.{n}", std::process::id()));
        let f = self
            .storage
            .open(&tmp, OpenFor::CreateNew)
            .map_err(SegmentError::io("create", &tmp))?;
        Ok((tmp, f))
    }

    /// A full-size temporary file whose space is reserved (fallocate) but
    /// not written, fsynced; zero-filled where fallocate is unsupported.
    fn create_reserved_temp(&self) -> Result<PathBuf, SegmentError> {
        let (tmp, f) = self.new_temp_file()?;
        let r = match self.storage.allocate(&f, &tmp, self.seg_size.bytes()) {
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                drop(f);
                let _ = self.storage.remove_file(&tmp);
                return self.create_temp(&[]);
            }
            r => r
                .map_err(SegmentError::io("fallocate", &tmp))
                .and_then(|()| {
                    self.storage
                        .sync_all(&f, &tmp)
                        .map_err(SegmentError::io("fsync", &tmp))
                }),
        };
        if let Err(e) = r {
            let _ = self.storage.remove_file(&tmp);
            return Err(e);
        }
        Ok(tmp)
    }

    /// A full-size temporary file holding `prefix` then zeroes, fsynced.
    fn create_temp(&self, prefix: &[u8]) -> Result<PathBuf, SegmentError> {
        let (tmp, f) = self.new_temp_file()?;
        let seg = self.seg_size.bytes();
        let prefix = &prefix[..prefix.len().min(seg as usize)];
        let zeros = vec![0u8; ZERO_CHUNK_BYTES.min(seg as usize)];
        let mut r = self.storage.write_at(&f, &tmp, 0, prefix);
        let mut off = prefix.len() as u64;
        while r.is_ok() && off < seg {
            let n = zeros.len().min((seg - off) as usize);
            r = self.storage.write_at(&f, &tmp, off, &zeros[..n]);
            off += n as u64;
        }
        if let Err(e) = r {
            let _ = self.storage.remove_file(&tmp);
            return Err(SegmentError::io("write", &tmp)(e));
        }
        if let Err(e) = self.storage.sync_all(&f, &tmp) {
            let _ = self.storage.remove_file(&tmp);
            return Err(SegmentError::io("fsync", &tmp)(e));
        }
        Ok(tmp)
    }

    fn check_size(&self, f: &File, path: &Path) -> Result<(), SegmentError> {
        let len = f.metadata().map_err(SegmentError::io("stat", path))?.len();
        if len != self.seg_size.bytes() {
            return Err(SegmentError::BadSize {
                path: path.to_path_buf(),
                found: len,
                expected: self.seg_size.bytes(),
            });
        }
        Ok(())
    }

    fn remove_temp_files(&self) -> Result<(), SegmentError> {
        let rd = fs::read_dir(&self.dir).map_err(SegmentError::io("list", &self.dir))?;
        for entry in rd.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let p = entry.path();
                self.storage
                    .remove_file(&p)
                    .map_err(SegmentError::io("remove", &p))?;
            }
        }
        Ok(())
    }

    /// Remove a segment file (no recycling): used at start-up for segments
    /// past the end of valid WAL.
    pub(crate) fn remove_segment(&self, tli: TimelineId, segno: SegNo) -> Result<(), SegmentError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.segment_path(tli, segno);
        self.storage
            .remove_file(&path)
            .map_err(SegmentError::io("remove", &path))?;
        self.remove_status(&segno.file_name(tli, self.seg_size), "ready")?;
        self.counters.removed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The highest segment number removed or recycled so far by this
    /// process (PostgreSQL's XLogGetLastRemovedSegno).
    pub fn last_removed(&self) -> Option<SegNo> {
        match self.removed_below.load(Ordering::Acquire) {
            0 => None,
            n => Some(SegNo(n - 1)),
        }
    }

    /// `Err(Removed)` if segment `segno` has been removed or recycled.
    pub fn check_not_removed(&self, tli: TimelineId, segno: SegNo) -> Result<(), SegmentError> {
        if self.last_removed().is_some_and(|r| r >= segno) {
            return Err(SegmentError::Removed {
                name: segno.file_name(tli, self.seg_size),
            });
        }
        Ok(())
    }

    fn status_path(&self, name: &str, suffix: &str) -> PathBuf {
        self.dir
            .join(ARCHIVE_STATUS_DIR)
            .join(format!("{name}.{suffix}"))
    }

    /// Create `archive_status/<name>.ready` durably: the archiver's work list.
    pub fn mark_ready(&self, name: &str) -> Result<(), SegmentError> {
        self.create_status(name, "ready")
    }

    /// Create `archive_status/<name>.done` durably (archiving not needed or done).
    pub fn mark_done(&self, name: &str) -> Result<(), SegmentError> {
        self.create_status(name, "done")
    }

    /// Create `archive_status/<name>.done` for a segment a walreceiver
    /// completed, without fsyncing it (PostgreSQL's XLogArchiveForceDone
    /// does not fsync either). Nothing depends on it surviving a crash:
    /// unless `archive_mode = always` (which marks `.ready`, durably), a
    /// standby may remove a segment with no status file at all. Its two
    /// fsyncs (file and directory) are journal commits on ext4, which wait
    /// for every other writer's data on the filesystem: on the walreceiver's
    /// path they held replay back by tens of milliseconds at each segment
    /// boundary (docs/benchmarks/replication-lag.md, "The standby's
    /// segment files").
    pub fn mark_received_done(&self, name: &str) -> Result<(), SegmentError> {
        let p = self.status_path(name, "done");
        self.storage
            .open(&p, OpenFor::Replace)
            .map(drop)
            .map_err(SegmentError::io("create", &p))
    }

    fn create_status(&self, name: &str, suffix: &str) -> Result<(), SegmentError> {
        let p = self.status_path(name, suffix);
        crate::storage::durable_create(&*self.storage, &p, &[]).map_err(SegmentError::from)
    }

    fn remove_status(&self, name: &str, suffix: &str) -> Result<(), SegmentError> {
        let p = self.status_path(name, suffix);
        match self.storage.remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SegmentError::io("remove", &p)(e)),
        }
    }

    /// Remove or recycle every segment below `req.horizon` whose archiving
    /// is finished. A segment with `.ready` is never touched; recycled files
    /// get future names, where their stale contents are recognised by the
    /// segment header's pageaddr and the records' LSN-bound CRCs.
    pub fn remove_old(&self, req: &RemovalRequest) -> Result<RemovalReport, SegmentError> {
        let files = self.list()?;
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut report = RemovalReport::default();
        let mut next_target = req.recycle.map(|r| r.first);
        for f in files.iter().filter(|f| f.kind == WalFileKind::Segment) {
            let Some(segno) = f.segno.filter(|s| *s < req.horizon) else {
                continue;
            };
            if !self.archive_done(&f.name, req.archive_mode)? {
                report.kept_for_archive += 1;
                continue;
            }
            let path = self.dir.join(&f.name);
            match self.recycle_target(req.recycle, &mut next_target) {
                Some(target) => {
                    self.storage
                        .rename(&path, &target)
                        .map_err(SegmentError::io("rename", &path))?;
                    report.recycled += 1;
                }
                None => {
                    self.storage
                        .remove_file(&path)
                        .map_err(SegmentError::io("remove", &path))?;
                    report.removed += 1;
                }
            }
            self.remove_status(&f.name, "done")?;
            self.removed_below.fetch_max(segno.0 + 1, Ordering::AcqRel);
        }
        if report.removed + report.recycled > 0 {
            self.storage
                .sync_dir(&self.dir)
                .map_err(SegmentError::io("fsync directory", &self.dir))?;
        }
        self.counters
            .recycled
            .fetch_add(report.recycled, Ordering::Relaxed);
        self.counters
            .removed
            .fetch_add(report.removed, Ordering::Relaxed);
        Ok(report)
    }

    /// PostgreSQL's XLogArchiveCheckDone: may this segment go?
    fn archive_done(&self, name: &str, archive_mode: bool) -> Result<bool, SegmentError> {
        if self.status_path(name, "ready").exists() {
            return Ok(false);
        }
        if !archive_mode || self.status_path(name, "done").exists() {
            return Ok(true);
        }
        // No status at all (e.g. the .ready was lost in a crash): hand it to
        // the archiver again rather than losing it.
        self.mark_ready(name)?;
        Ok(false)
    }

    /// The next free future name to recycle into, if any is left.
    fn recycle_target(
        &self,
        rc: Option<RecycleTarget>,
        next: &mut Option<SegNo>,
    ) -> Option<PathBuf> {
        let rc = rc?;
        let limit = rc.first.0.saturating_add(rc.max_future);
        while let Some(seg) = next.filter(|s| s.0 < limit) {
            *next = Some(seg.next());
            let p = self.segment_path(rc.tli, seg);
            if !p.exists() {
                return Some(p);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{FaultyStorage, Op, StdStorage};
    use std::time::Duration;

    fn dir() -> (tempfile::TempDir, SegmentDir) {
        let t = tempfile::tempdir().unwrap();
        let sd = SegmentDir::open(
            t.path(),
            WalSegSize::MIN.try_into().unwrap(),
            Arc::new(StdStorage),
        )
        .unwrap();
        (t, sd)
    }

    /// Storage whose directory fsyncs, once armed, wait (bounded) for the
    /// test to say a segment was opened, and note whether it was.
    #[derive(Debug)]
    struct SlowDirSync {
        armed: std::sync::atomic::AtomicBool,
        in_sync: Mutex<crossbeam_channel::Sender<()>>,
        opened: Mutex<crossbeam_channel::Receiver<()>>,
        opened_during_sync: std::sync::atomic::AtomicBool,
    }

    impl Storage for SlowDirSync {
        fn open(&self, path: &Path, how: OpenFor) -> io::Result<File> {
            StdStorage.open(path, how)
        }
        fn write_at(&self, file: &File, path: &Path, offset: u64, buf: &[u8]) -> io::Result<()> {
            StdStorage.write_at(file, path, offset, buf)
        }
        fn allocate(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
            StdStorage.allocate(file, path, len)
        }
        fn sync_data(&self, file: &File, path: &Path) -> io::Result<()> {
            StdStorage.sync_data(file, path)
        }
        fn sync_all(&self, file: &File, path: &Path) -> io::Result<()> {
            StdStorage.sync_all(file, path)
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            if self.armed.swap(false, Ordering::SeqCst) {
                self.in_sync.lock().unwrap().send(()).unwrap();
                let opened = self.opened.lock().unwrap();
                if opened.recv_timeout(Duration::from_millis(300)).is_ok() {
                    self.opened_during_sync.store(true, Ordering::SeqCst);
                }
            }
            StdStorage.sync_dir(dir)
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            StdStorage.rename(from, to)
        }
        fn remove_file(&self, path: &Path) -> io::Result<()> {
            StdStorage.remove_file(path)
        }
        fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
            StdStorage.remove_dir_all(path)
        }
        fn create_dir(&self, path: &Path) -> io::Result<()> {
            StdStorage.create_dir(path)
        }
    }

    /// Found by the power-loss crash images: the WAL writer opened a
    /// segment the look-ahead pre-allocation had just renamed into place,
    /// wrote and acknowledged commits in it, all before that rename's
    /// directory fsync; an image without the rename lost them.
    #[test]
    fn a_segment_renamed_into_place_is_not_written_before_its_directory_fsync() {
        let t = tempfile::tempdir().unwrap();
        let (in_tx, in_rx) = crossbeam_channel::bounded(1);
        let (opened_tx, opened_rx) = crossbeam_channel::bounded(1);
        let io = Arc::new(SlowDirSync {
            armed: false.into(),
            in_sync: Mutex::new(in_tx),
            opened: Mutex::new(opened_rx),
            opened_during_sync: false.into(),
        });
        let seg = WalSegSize::MIN.try_into().unwrap();
        let sd = Arc::new(SegmentDir::open(t.path(), seg, io.clone()).unwrap());
        io.armed.store(true, Ordering::SeqCst);
        let background = {
            let sd = sd.clone();
            std::thread::spawn(move || sd.preallocate(TimelineId(1), SegNo(5)).unwrap())
        };
        // The rename is done and its directory fsync has begun.
        in_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert!(t
            .path()
            .join(SegNo(5).file_name(TimelineId(1), seg))
            .exists());
        sd.open_for_write(TimelineId(1), SegNo(5)).unwrap();
        let _ = opened_tx.try_send(());
        assert!(background.join().unwrap());
        assert!(
            !io.opened_during_sync.load(Ordering::SeqCst),
            "the segment was opened for writing before its name was durable"
        );
    }

    #[test]
    fn a_received_segment_is_reserved_not_zero_filled() {
        let t = tempfile::tempdir().unwrap();
        let io = Arc::new(FaultyStorage::new());
        let seg = WalSegSize::MIN.try_into().unwrap();
        let sd = SegmentDir::open(t.path(), seg, io.clone()).unwrap();
        let before = io.count(Op::Write);
        let f = sd.open_for_receive(TimelineId(1), SegNo(3)).unwrap();
        assert_eq!(
            io.count(Op::Write),
            before,
            "the receiver's segment was written before any WAL arrived"
        );
        let meta = f.metadata().unwrap();
        assert_eq!(meta.len(), seg.bytes());
        let bytes = fs::read(sd.segment_path(TimelineId(1), SegNo(3))).unwrap();
        assert!(
            bytes.iter().all(|&b| b == 0),
            "reserved space reads as zeroes"
        );
        // The WAL writer's own segments are still zero-filled.
        sd.open_for_write(TimelineId(1), SegNo(4)).unwrap();
        assert!(io.count(Op::Write) > before);
    }

    #[test]
    fn names_are_classified() {
        let s = WalSegSize::DEFAULT;
        let k = |n: &str| WalFile::parse(n, s).map(|f| (f.kind, f.tli.0, f.segno.map(|x| x.0)));
        assert_eq!(
            k("000000010000000000000004"),
            Some((WalFileKind::Segment, 1, Some(4)))
        );
        assert_eq!(
            k("000000020000000100000003.partial"),
            Some((WalFileKind::Partial, 2, Some(0x103)))
        );
        assert_eq!(
            k("0000000A.history"),
            Some((WalFileKind::History, 10, None))
        );
        assert_eq!(
            k("000000010000000000000002.00000028.backup"),
            Some((WalFileKind::BackupHistory, 1, Some(2)))
        );
        for bad in [
            "xlogtemp.1",
            "0000000.history",
            "00000001000000000000000G",
            "archive_status",
        ] {
            assert_eq!(k(bad), None, "{bad}");
        }
    }

    #[test]
    fn created_segments_are_full_size_and_zero() {
        let (_t, sd) = dir();
        let f = sd.open_for_write(TimelineId(1), SegNo(3)).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 1 << 20);
        let bytes = fs::read(sd.segment_path(TimelineId(1), SegNo(3))).unwrap();
        assert!(bytes.iter().all(|&b| b == 0));
        assert!(!sd.preallocate(TimelineId(1), SegNo(3)).unwrap());
        let names: Vec<_> = sd.list().unwrap().into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["000000010000000000000003"]);
    }

    #[test]
    fn spares_become_segments_and_are_remembered_as_zero() {
        let (t, sd) = dir();
        assert_eq!(sd.make_spares(2).unwrap(), 2);
        assert_eq!(sd.make_spares(2).unwrap(), 0);
        assert!(sd.list().unwrap().is_empty(), "spares are no WAL files");
        assert!(sd.place_spare(TimelineId(2), SegNo(5)).unwrap());
        assert!(!sd.place_spare(TimelineId(2), SegNo(5)).unwrap());
        let placed = fs::read(sd.segment_path(TimelineId(2), SegNo(5))).unwrap();
        assert_eq!(placed.len(), 1 << 20);
        assert!(placed.iter().all(|&b| b == 0));
        sd.install_segment(TimelineId(2), SegNo(4), b"prefix")
            .unwrap();
        assert_eq!(sd.spare_count(), 0);
        let installed = fs::read(sd.segment_path(TimelineId(2), SegNo(4))).unwrap();
        assert_eq!(installed.len(), 1 << 20);
        assert_eq!(&installed[..6], b"prefix");
        assert!(installed[6..].iter().all(|&b| b == 0));
        // Without a spare nothing is placed; installing zero-fills.
        assert!(!sd.place_spare(TimelineId(2), SegNo(6)).unwrap());
        sd.install_segment(TimelineId(3), SegNo(4), b"x").unwrap();
        let mut fresh = sd.take_fresh(TimelineId(2));
        fresh.sort();
        assert_eq!(fresh, [(SegNo(4), 6), (SegNo(5), 0)]);
        assert!(
            sd.take_fresh(TimelineId(3)).is_empty(),
            "taken once, all timelines"
        );
        // Leftover spares are temporary files, removed at the next open.
        sd.make_spares(1).unwrap();
        drop(sd);
        let sd = SegmentDir::open(
            t.path(),
            WalSegSize::MIN.try_into().unwrap(),
            Arc::new(StdStorage),
        )
        .unwrap();
        let temp = fs::read_dir(t.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(TEMP_PREFIX)
            })
            .count();
        assert_eq!((temp, sd.spare_count()), (0, 0));
    }

    #[test]
    fn removal_respects_ready_and_recycles() {
        let (_t, sd) = dir();
        for s in 1..=5 {
            sd.preallocate(TimelineId(1), SegNo(s)).unwrap();
        }
        let name = |s| SegNo(s).file_name(TimelineId(1), sd.seg_size());
        sd.mark_ready(&name(1)).unwrap();
        sd.mark_done(&name(2)).unwrap();
        let report = sd
            .remove_old(&RemovalRequest {
                horizon: SegNo(4),
                archive_mode: true,
                recycle: Some(RecycleTarget {
                    tli: TimelineId(1),
                    first: SegNo(5),
                    max_future: 3,
                }),
            })
            .unwrap();
        // 1 has .ready: kept. 2 is done: recycled to 6 (5 exists). 3 has no
        // status while archiving: it gets a .ready and is kept.
        assert_eq!(
            report,
            RemovalReport {
                removed: 0,
                recycled: 1,
                kept_for_archive: 2
            }
        );
        let names: Vec<_> = sd
            .list()
            .unwrap()
            .into_iter()
            .map(|f| f.segno.unwrap().0)
            .collect();
        assert_eq!(names, [1, 3, 4, 5, 6]);
        assert!(sd.status_path(&name(3), "ready").exists());
        assert!(!sd.status_path(&name(2), "done").exists());
        assert_eq!(sd.last_removed(), Some(SegNo(2)));
        assert!(sd.check_not_removed(TimelineId(1), SegNo(2)).is_err());
        assert!(sd.check_not_removed(TimelineId(1), SegNo(3)).is_ok());
    }

    #[test]
    fn removal_without_archiving_deletes_when_no_target_left() {
        let (_t, sd) = dir();
        for s in 1..=3 {
            sd.preallocate(TimelineId(1), SegNo(s)).unwrap();
        }
        let report = sd
            .remove_old(&RemovalRequest {
                horizon: SegNo(3),
                archive_mode: false,
                recycle: Some(RecycleTarget {
                    tli: TimelineId(1),
                    first: SegNo(4),
                    max_future: 1,
                }),
            })
            .unwrap();
        assert_eq!((report.recycled, report.removed), (1, 1));
        let names: Vec<_> = sd
            .list()
            .unwrap()
            .into_iter()
            .map(|f| f.segno.unwrap().0)
            .collect();
        assert_eq!(names, [3, 4]);
    }
}
