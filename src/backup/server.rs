//! BASE_BACKUP on a running primary or standby (PostgreSQL 15's
//! perform_base_backup for walrep's data directory).
//!
//! 1. An immediate checkpoint, then its snapshot `base/<id>/` and the WAL
//!    from its redo point are pinned (a concurrent checkpoint or WAL
//!    removal keeps them until the backup ends).
//! 2. Result sets: start position (redo point, timeline), one tablespace row.
//! 3. One COPY OUT holding `base.tar`: `backup_label`, `walrep.toml`, the
//!    directories, the snapshot's chunks; then XLOG_BACKUP_END is logged,
//!    flushed and the segment switched (do_pg_backup_stop); then `control`
//!    for the copy (the pinned checkpoint, `min_recovery_point` = the end,
//!    state "in archive recovery") and, with the WAL option (`-X fetch`),
//!    `wal/` with every history file and the segments from the redo point
//!    to the end, each marked `.done` in `wal/archive_status/`.
//! 4. With WAIT and archiving on, wait (bounded) until the last segment is
//!    archived; then the end position result set.
//!
//! On a standby step 1 is a restartpoint, and step 3 logs nothing: the end
//! is the standby's replay position when the copy is done
//! ([`super::standby_backup`]), and `backup_label` says `BACKUP FROM:
//! standby`.
//!
//! With walrep's `PARALLEL n` this connection (the leader) sends
//! everything above, its first result set carries a `backup_id` column,
//! and `n - 1` other connections each join with `BASE_BACKUP (JOIN 'id',
//! PART k)` (an archive `base.part<k>.tar` of chunk files only, start and
//! end result sets both at the start position). The snapshot's chunks are
//! not split before the copy: they wait in one queue, largest first
//! (`pin::ChunkQueue`), and the leader and every joined part each take the
//! next chunk until it is empty, so a stream that runs faster sends more
//! and the streams end within about one chunk of each other. Which part
//! sends which chunk is therefore not known in advance (the client
//! extracts every part into the same directory and checks that every
//! chunk arrived exactly once). The leader ends the backup only once the
//! queue is empty and every part is claimed; each claim pins the snapshot
//! itself.
//!
//! The node is seen only through [`BackupSource`]: what a backup needs of
//! it (checkpoint, pin, backup-end record), nothing else.

use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::label::{BackupLabel, BACKUP_LABEL_FILE, MAX_LABEL_LEN};
use super::manifest::{ChecksumKind, HashingReader, Manifest};
use super::pin::{BackupPin, BackupPins, ChunkQueue, KeptBackup, ResumeError, RESUME_WINDOW};
pub use super::source::BackupSource;
use super::tarstream::{header, CopyWriter, ExactReader, Member};
use crate::config::ArchiveMode;
use crate::datadir::{
    DataDir, ARCHIVE_STATUS_DIR, BASE_DIR, CONFIG_FILE, LOG_DIR, SLOTS_DIR, WAL_DIR,
};
use crate::replication::command::{BaseBackupOptions, CheckpointMode};
use crate::replication::source::BackupOutput;
use crate::replication::sqlstate::{self as code, PgError};
use crate::store::checkpoint::chunk_name;
use crate::store::control::{now_ms, CONTROL_FILE};
use crate::store::{ClusterState, ControlFile};
use crate::wal::{WalFile, WalFileKind, XlogRecord};
use crate::{Lsn, SegNo, TimelineId};

/// Type OIDs of the result set columns.
const TEXT: i32 = 25;
const INT8: i32 = 20;
const OID: i32 = 26;

/// Longest wait for the last segment to be archived (WAIT option).
const ARCHIVE_WAIT: Duration = Duration::from_secs(300);
/// Poll interval of that wait (the archiver leaves no other signal).
const ARCHIVE_POLL: Duration = Duration::from_millis(100);
/// Longest wait of a parallel backup's leader for every part to be
/// claimed (the client connects its jobs as soon as it has the id).
const JOIN_WAIT: Duration = Duration::from_secs(30);
/// Poll interval of that wait.
const JOIN_POLL: Duration = Duration::from_millis(5);

/// What one base backup produced (logged).
#[derive(Debug, Clone)]
pub struct BackupDone {
    /// The redo point the copy starts from.
    pub start: Lsn,
    /// End of XLOG_BACKUP_END.
    pub end: Lsn,
    /// Timeline of both.
    pub tli: TimelineId,
    /// Archive bytes sent.
    pub bytes: u64,
    /// WAL segments included.
    pub wal_segments: u64,
}

/// Run BASE_BACKUP for `node`, writing PostgreSQL 15's answer to `out`.
pub fn serve<S: BackupSource>(
    node: &S,
    options: &BaseBackupOptions,
    out: &mut dyn BackupOutput,
) -> Result<BackupDone, PgError> {
    check_options(options)?;
    if let Some(token) = &options.join {
        return serve_part(node, token, options, out);
    }
    let from_standby = !node.is_primary();
    if node.is_shutting_down() {
        return Err(shutting_down());
    }
    let (pin, control, started_unix, id) = match &options.resume {
        Some(r) => resume_pin(node, &r.id)?,
        None => {
            let (pin, control) = start_pin(node, options)?;
            let started = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let id = (options.resumable || options.parallel > 1)
                .then(|| format!("{:032x}", rand::random::<u128>()));
            (pin, control, started, id)
        }
    };
    let pins = node.backup_pins();
    let running = id
        .as_deref()
        .filter(|_| options.resumable || options.resume.is_some())
        .map(|id| pins.running(id));
    tracing::info!(label = %options.label, redo = %control.redo_lsn, checkpoint = %control.checkpoint_lsn, from_standby, resumed = options.resume.is_some(), skipped_chunks = skip_chunks(options).len(), "base backup starting");
    let kind = ChecksumKind::parse(&options.manifest_checksums).unwrap_or(ChecksumKind::Crc32c);
    let mut b = Backup {
        node,
        options,
        control: control.clone(),
        from_standby,
        started_unix,
        manifest: (options.manifest != "no")
            .then(|| Manifest::new(kind, options.manifest == "force-encode")),
        read_buf: vec![0u8; READ_CHUNK],
        pins: Arc::clone(&pins),
        pin: &pin,
        id: id.clone(),
    };
    let result = b.run(out);
    if running.is_some() {
        // Sent is not checked: the client reads its copy back before it
        // is complete, and a copy that fails that check is resumed like
        // an interrupted one. So the checkpoint stays pinned until the
        // client confirms (CONFIRM_BASE_BACKUP), or its window ends.
        let id = id.as_deref().unwrap_or_default();
        if result.is_ok() {
            tracing::info!(
                backup_id = id,
                "base backup sent: its checkpoint stays pinned until the client confirms its copy"
            );
        } else {
            tracing::warn!(
                backup_id = id,
                minutes = RESUME_WINDOW.as_secs() / 60,
                "base backup interrupted: its checkpoint stays pinned for RESUME"
            );
        }
        let kept = KeptBackup {
            control,
            started_unix,
        };
        pins.keep(pin, id, kept, RESUME_WINDOW);
    } else {
        drop(pin);
    }
    drop(running);
    match &result {
        Ok(d) => {
            tracing::info!(start = %d.start, end = %d.end, bytes = d.bytes, wal_segments = d.wal_segments, "base backup completed")
        }
        Err(e) => tracing::warn!(error = %e.message, "base backup failed"),
    }
    result
}

/// CONFIRM_BASE_BACKUP: the client of resumable backup `id` checked its
/// copy; the checkpoint kept for it since it was sent is released.
pub fn confirm<S: BackupSource>(node: &S, id: &str) -> Result<(), PgError> {
    if node.backup_pins().confirm(id) {
        tracing::info!(
            backup_id = id,
            "base backup confirmed by its client: its checkpoint is released"
        );
        return Ok(());
    }
    Err(PgError::error(
        code::OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("no base backup \"{id}\" awaits confirmation: it was confirmed or resumed already, or its checkpoint was released (a sent backup keeps it {} minutes)", RESUME_WINDOW.as_secs() / 60),
    ))
}

/// The checkpoint a new backup copies, pinned: a fresh one (PostgreSQL's
/// backup-start checkpoint), or with `CHECKPOINT 'last'` the last one the
/// node completed, so the backup starts at once whatever the data size (a
/// fresh one only when the node has none yet).
fn start_pin<S: BackupSource>(
    node: &S,
    options: &BaseBackupOptions,
) -> Result<(BackupPin, ControlFile), PgError> {
    if options.checkpoint == CheckpointMode::Last || node.is_primary() {
        let (pin, control) = node.pin_last_checkpoint().ok_or_else(shutting_down)?;
        let last = options.checkpoint == CheckpointMode::Last;
        if control.checkpoint_lsn != Lsn::INVALID && (last || unchanged_since(node, &control)) {
            if !last {
                tracing::info!(checkpoint = %control.checkpoint_lsn, "nothing changed since the last checkpoint: the base backup copies it");
            }
            return Ok((pin, control));
        }
    }
    node.checkpoint().map_err(|e| {
        PgError::error(
            code::INTERNAL_ERROR,
            format!("could not checkpoint for the base backup: {e}"),
        )
    })?;
    node.pin_last_checkpoint().ok_or_else(shutting_down)
}

/// Most WAL records read to decide that nothing changed since the last
/// checkpoint (a few backup-end and switch records; more means writes).
const UNCHANGED_SCAN_RECORDS: usize = 64;

/// A reused checkpoint's WAL may be at most this fraction of its snapshot.
const REUSE_WAL_FRACTION: u64 = 8;

/// Bytes of the snapshot `control` names (0 when unreadable).
fn snapshot_bytes(datadir: &Path, control: &ControlFile) -> u64 {
    let dir = crate::store::checkpoint::snapshot_dir(datadir, control.checkpoint_id);
    (0..control.checkpoint_chunks)
        .filter_map(|i| fs::metadata(dir.join(chunk_name(i))).ok())
        .map(|m| m.len())
        .sum()
}

/// Whether a new checkpoint of a primary would write exactly the snapshot
/// of `control`'s: every record after that checkpoint's is a checkpoint,
/// segment switch, backup end or no-op (what earlier backups log), and
/// that WAL is small beside the snapshot. Then
/// the backup copies the last checkpoint, as PostgreSQL's immediate
/// checkpoint with no dirty buffer writes nothing: walrep's checkpoint
/// writes the whole store, which would double the disk traffic of a
/// backup of an idle node. Any doubt (a read error, a timeline change, a
/// long tail) means "changed", and a checkpoint is taken.
fn unchanged_since<S: BackupSource>(node: &S, control: &ControlFile) -> bool {
    let Some((tli, inserted)) = node.wal_position() else {
        return false;
    };
    if tli != control.checkpoint_timeline || inserted < control.checkpoint_lsn {
        return false;
    }
    // Each backup logs a segment switch, so the WAL a reused checkpoint's
    // copy carries grows by a segment per backup: beyond an eighth of the
    // snapshot, a new checkpoint is the cheaper copy.
    let span = inserted.0.saturating_sub(control.redo_lsn.0);
    let seg = control.wal_segment_size.bytes();
    if span > seg.max(snapshot_bytes(node.datadir(), control) / REUSE_WAL_FRACTION) {
        return false;
    }
    let wal_dir = DataDir::new(node.datadir()).wal();
    let Ok(history) = crate::wal::read_history(&wal_dir, tli) else {
        return false;
    };
    let cfg = crate::wal::ReaderConfig {
        dir: wal_dir,
        system_id: control.system_identifier,
        seg_size: control.wal_segment_size,
        history,
    };
    let mut reader = crate::wal::WalReader::new(cfg, control.checkpoint_lsn);
    reader.set_limit(Some(inserted));
    for _ in 0..UNCHANGED_SCAN_RECORDS {
        let Ok(rec) = reader.read_record() else {
            return false;
        };
        let harmless = matches!(
            rec.xlog(),
            Some(Ok(XlogRecord::Checkpoint(_)
                | XlogRecord::Switch
                | XlogRecord::BackupEnd { .. }
                | XlogRecord::Noop))
        );
        if !harmless {
            return false;
        }
        // After a switch the insert position is past the next segment's
        // header, where no record starts yet.
        let past_header = rec.end.segment_offset(control.wal_segment_size) == 0
            && inserted.0 <= rec.end.0 + crate::wal::SEG_HEADER_SIZE;
        if rec.end >= inserted || past_header {
            return true;
        }
    }
    false
}

/// `RESUME 'id'`: the kept checkpoint of interrupted backup `id`. A
/// client that was killed may come back before the server noticed its
/// connection is gone: wait (bounded) for that backup to end.
fn resume_pin<S: BackupSource>(
    node: &S,
    id: &str,
) -> Result<(BackupPin, ControlFile, u64, Option<String>), PgError> {
    let deadline = Instant::now() + JOIN_WAIT;
    loop {
        match node.backup_pins().resume(id) {
            Ok((pin, kept)) => {
                return Ok((pin, kept.control, kept.started_unix, Some(id.to_string())))
            }
            Err(ResumeError::StillRunning(_)) if Instant::now() < deadline => {
                std::thread::sleep(JOIN_POLL)
            }
            Err(e) => {
                return Err(PgError::error(
                    code::OBJECT_NOT_IN_PREREQUISITE_STATE,
                    e.to_string(),
                ))
            }
        }
    }
}

/// The chunks a resumed backup does not send.
fn skip_chunks(options: &BaseBackupOptions) -> &[u32] {
    options.resume.as_ref().map_or(&[], |r| &r.skip_chunks)
}

fn shutting_down() -> PgError {
    PgError::error(code::ADMIN_SHUTDOWN, "the server is shutting down")
}

/// Options this server cannot honour are refused, as PostgreSQL refuses
/// what it does not support.
fn check_options(o: &BaseBackupOptions) -> Result<(), PgError> {
    if let Some(t) = o.target.as_deref().filter(|t| *t != "client") {
        return Err(PgError::error(
            code::FEATURE_NOT_SUPPORTED,
            format!("backup target \"{t}\" is not supported by walrep; only \"client\""),
        ));
    }
    if let Some(c) = o.compression.as_deref().filter(|c| *c != "none") {
        return Err(PgError::error(
            code::FEATURE_NOT_SUPPORTED,
            format!("server-side compression \"{c}\" is not supported by walrep; compress on the client"),
        ));
    }
    if o.parallel > 1 && o.manifest != "no" {
        return Err(PgError::error(
            code::FEATURE_NOT_SUPPORTED,
            "a parallel base backup sends no manifest: the client writes one for all the parts",
        ));
    }
    if ChecksumKind::parse(&o.manifest_checksums).is_none() {
        return Err(PgError::error(
            code::INVALID_PARAMETER_VALUE,
            format!(
                "unrecognized checksum algorithm: \"{}\"",
                o.manifest_checksums
            ),
        ));
    }
    if o.label.len() > MAX_LABEL_LEN || o.label.contains(['\n', '\r']) {
        return Err(PgError::error(
            code::INVALID_PARAMETER_VALUE,
            format!("backup label too long or multi-line (max {MAX_LABEL_LEN} bytes, one line)"),
        ));
    }
    Ok(())
}

fn lost(e: io::Error) -> PgError {
    PgError::fatal(
        code::PROTOCOL_VIOLATION,
        format!("could not send data to client: {e}"),
    )
}

/// `JOIN 'token', PART k`: one part of a running parallel backup.
fn serve_part<S: BackupSource>(
    node: &S,
    token: &str,
    options: &BaseBackupOptions,
    out: &mut dyn BackupOutput,
) -> Result<BackupDone, PgError> {
    let (pin, part) = node
        .backup_pins()
        .claim(token, options.part as usize)
        .map_err(|e| PgError::error(code::OBJECT_NOT_IN_PREREQUISITE_STATE, e.to_string()))?;
    let position = vec![Some(part.redo.to_string()), Some(part.tli.to_string())];
    out.result_set(
        &[("recptr", TEXT), ("tli", INT8)],
        std::slice::from_ref(&position),
    )
    .map_err(lost)?;
    // What this part will send is known only at its end (the leader and
    // the other parts take from the same queue): PROGRESS's total is an
    // estimate, the part's share of the chunks not handed out yet.
    let share = part.queue.remaining_bytes() / part.parts.max(1) as u64;
    let size_kb = share / 1024 + 1;
    out.result_set(
        &[("spcoid", OID), ("spclocation", TEXT), ("size", INT8)],
        &[vec![
            None,
            None,
            options.progress.then(|| size_kb.to_string()),
        ]],
    )
    .map_err(lost)?;
    out.begin_copy().map_err(lost)?;
    out.new_archive(&format!("base.part{}.tar", options.part), "")
        .map_err(lost)?;
    let mut tar = tar::Builder::new(CopyWriter::new(out, options.max_rate_kbps));
    let dir = format!("{BASE_DIR}/{:016X}", part.snapshot_id);
    let mut files = 0u64;
    let written = header(&dir, Member::Directory, 0)
        .and_then(|h| tar.append(&h, io::empty()))
        .and_then(|()| {
            let mut buf = vec![0u8; READ_CHUNK];
            while let Some((n, _)) = part.queue.take() {
                let f = chunk_file(node.datadir(), part.snapshot_id, n)
                    .map_err(|e| io::Error::other(e.message))?;
                append_plain(&mut tar, &f, &mut buf)?;
                files += 1;
            }
            Ok(())
        });
    if let Err(e) = written {
        return Err(if tar.get_ref().client_failed {
            lost(e)
        } else {
            io_error(e)
        });
    }
    let bytes = tar.into_inner().map_err(lost)?.finish().map_err(lost)?;
    out.end_copy().map_err(lost)?;
    out.result_set(&[("recptr", TEXT), ("tli", INT8)], &[position])
        .map_err(lost)?;
    drop(pin);
    tracing::info!(
        part = options.part,
        files,
        bytes,
        "parallel base backup part sent"
    );
    Ok(BackupDone {
        start: part.redo,
        end: part.redo,
        tli: TimelineId(part.tli),
        bytes,
        wal_segments: 0,
    })
}

/// Chunk `n` of snapshot `snapshot_id` as a member of the archive.
fn chunk_file(datadir: &Path, snapshot_id: u64, n: u32) -> Result<SourceFile, PgError> {
    let dir = crate::store::checkpoint::snapshot_dir(datadir, snapshot_id);
    let name = format!("{BASE_DIR}/{snapshot_id:016X}/{}", chunk_name(n));
    source_file(name, dir.join(chunk_name(n)))
}

/// A file member without a manifest entry (a part's chunks).
fn append_plain(
    tar: &mut tar::Builder<CopyWriter<'_>>,
    f: &SourceFile,
    buf: &mut [u8],
) -> io::Result<()> {
    let file = File::open(&f.path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("could not open file \"{}\": {e}", f.path.display()),
        )
    })?;
    let mut data = ExactReader::new(file, f.size, f.path.display().to_string());
    let h = header(&f.name, Member::File { size: f.size }, f.mtime)?;
    copy_member(tar.get_mut(), &h, &mut data, buf)
}

fn io_error(e: io::Error) -> PgError {
    PgError::error(code::IO_ERROR, e.to_string())
}

/// Empty directories PostgreSQL's client tools expect in a data
/// directory (pg_basebackup streams WAL into `pg_wal/` with `-X stream`
/// and syncs both); walrep itself ignores them.
const PG_COMPAT_DIRS: [&str; 2] = ["pg_wal", "pg_tblspc"];

/// One running backup.
struct Backup<'n, S: BackupSource> {
    node: &'n S,
    /// Where a parallel backup's session is opened.
    pins: std::sync::Arc<BackupPins>,
    /// This backup's pin (a session is opened over it).
    pin: &'n BackupPin,
    /// Its id (the `backup_id` column): with PARALLEL, what other
    /// connections join; with RESUMABLE, what `RESUME` names.
    id: Option<String>,
    options: &'n BaseBackupOptions,
    /// The control file naming the pinned checkpoint.
    control: ControlFile,
    /// Started on a standby: no backup-end record, the end is its replay
    /// position ([`super::standby_backup`]).
    from_standby: bool,
    /// Backup start, seconds since the epoch (backup_label's START TIME).
    started_unix: u64,
    /// The manifest being built, when the client asked for one.
    manifest: Option<Manifest>,
    /// Where file contents are read into ([`READ_CHUNK`] bytes).
    read_buf: Vec<u8>,
}

/// The snapshot chunks a backup sends, by ascending chunk number.
struct SnapshotChunks {
    /// Chunk numbers (ascending).
    numbers: Vec<u32>,
    /// Each one's file, in the same order.
    files: Vec<SourceFile>,
}

impl SnapshotChunks {
    /// Chunk `n`'s file, if it is sent.
    fn file(&self, n: u32) -> Option<&SourceFile> {
        let i = self.numbers.binary_search(&n).ok()?;
        self.files.get(i)
    }
}

/// A file of the archive: its name in the tar and where to read it.
#[derive(Clone)]
struct SourceFile {
    /// Member name in the tar.
    name: String,
    /// Where it is read from.
    path: std::path::PathBuf,
    /// Size when the backup started (the member's size).
    size: u64,
    /// Modification time, seconds since the epoch.
    mtime: u64,
}

fn source_file(name: String, path: std::path::PathBuf) -> Result<SourceFile, PgError> {
    let meta = fs::metadata(&path).map_err(|e| {
        PgError::error(
            code::IO_ERROR,
            format!("could not stat file \"{}\": {e}", path.display()),
        )
    })?;
    Ok(SourceFile {
        name,
        path,
        size: meta.len(),
        mtime: mtime(&meta),
    })
}

fn mtime(meta: &fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl<S: BackupSource> Backup<'_, S> {
    fn tli(&self) -> TimelineId {
        self.control.checkpoint_timeline
    }

    fn dir(&self) -> DataDir {
        DataDir::new(self.node.datadir())
    }

    fn run(&mut self, out: &mut dyn BackupOutput) -> Result<BackupDone, PgError> {
        let start = self.control.redo_lsn;
        let tli = self.tli();
        let chunks = self.chunks_to_send()?;
        let parts = self.options.parallel.max(1) as usize;
        let sized: Vec<(u32, u64)> = chunks
            .numbers
            .iter()
            .copied()
            .zip(chunks.files.iter().map(|f| f.size))
            .collect();
        // One stream sends the chunks in order; parallel ones take the
        // largest first, so the last ones taken are the smallest.
        let queue = Arc::new(match parts {
            1 => ChunkQueue::new(sized),
            _ => ChunkQueue::largest_first(sized),
        });
        let session = (parts > 1).then(|| {
            let token = self.id.clone().unwrap_or_default();
            let guard = self
                .pins
                .open_session(self.pin, &token, tli.0, parts, Arc::clone(&queue));
            (token, guard)
        });
        let mut columns = vec![("recptr", TEXT), ("tli", INT8)];
        let mut row = vec![Some(start.to_string()), Some(tli.0.to_string())];
        if let Some(id) = &self.id {
            columns.push(("backup_id", TEXT));
            row.push(Some(id.clone()));
        }
        out.result_set(&columns, &[row]).map_err(lost)?;
        let size_kb = self
            .options
            .progress
            .then(|| self.estimate_bytes(&chunks.files) / 1024);
        out.result_set(
            &[("spcoid", OID), ("spclocation", TEXT), ("size", INT8)],
            &[vec![None, None, size_kb.map(|s| s.to_string())]],
        )
        .map_err(lost)?;
        out.begin_copy().map_err(lost)?;
        out.new_archive("base.tar", "").map_err(lost)?;
        let mut tar = tar::Builder::new(CopyWriter::new(out, self.options.max_rate_kbps));
        let token = session.as_ref().map(|(t, _)| t.as_str());
        let result = self.write_archive(&mut tar, &chunks, &queue, token);
        drop(session);
        let (end, wal_segments) = match result {
            Ok(v) => v,
            Err(e) if tar.get_ref().client_failed => return Err(lost(e)),
            Err(e) => return Err(io_error(e)),
        };
        let writer = tar.into_inner().map_err(lost)?;
        let bytes = writer.finish().map_err(lost)?;
        if let Some(m) = self.manifest.take() {
            out.manifest().map_err(lost)?;
            for part in m
                .finish(tli, start, end)
                .chunks(super::tarstream::COPY_CHUNK)
            {
                out.data(part).map_err(lost)?;
            }
        }
        out.end_copy().map_err(lost)?;
        self.wait_for_archive(end)?;
        out.result_set(
            &[("recptr", TEXT), ("tli", INT8)],
            &[vec![Some(end.to_string()), Some(tli.0.to_string())]],
        )
        .map_err(lost)?;
        Ok(BackupDone {
            start,
            end,
            tli,
            bytes,
            wal_segments,
        })
    }

    /// The pinned snapshot's chunk files to send (all but SKIP_CHUNKS's),
    /// with their chunk numbers.
    fn chunks_to_send(&self) -> Result<SnapshotChunks, PgError> {
        let id = self.control.checkpoint_id;
        let count = self.control.checkpoint_chunks;
        let skip = skip_chunks(self.options);
        if let Some(bad) = skip.iter().find(|c| **c >= count) {
            return Err(PgError::error(
                code::INVALID_PARAMETER_VALUE,
                format!(
                    "SKIP_CHUNKS names chunk {bad}, but the backup's snapshot has {count} chunks"
                ),
            ));
        }
        let numbers: Vec<u32> = (0..count)
            .filter(|i| skip.binary_search(i).is_err())
            .collect();
        let files = numbers
            .iter()
            .map(|&n| chunk_file(self.node.datadir(), id, n))
            .collect::<Result<_, _>>()?;
        Ok(SnapshotChunks { numbers, files })
    }

    /// PROGRESS's total: snapshot, small files and the WAL so far.
    fn estimate_bytes(&self, chunks: &[SourceFile]) -> u64 {
        let seg = self.control.wal_segment_size;
        let data: u64 = chunks.iter().map(|c| c.size).sum();
        let wal = if self.options.wal {
            let now = self
                .node
                .wal_position()
                .map_or(self.control.redo_lsn, |(_, inserted)| inserted);
            (now.segno(seg).0 + 1).saturating_sub(self.control.redo_lsn.segno(seg).0) * seg.bytes()
        } else {
            0
        };
        data + wal + 64 * 1024
    }

    fn write_archive(
        &mut self,
        tar: &mut tar::Builder<CopyWriter<'_>>,
        chunks: &SnapshotChunks,
        queue: &ChunkQueue,
        parallel: Option<&str>,
    ) -> io::Result<(Lsn, u64)> {
        let now = self.started_unix;
        let label = BackupLabel {
            start: self.control.redo_lsn,
            checkpoint: self.control.checkpoint_lsn,
            start_tli: self.tli(),
            from_standby: self.from_standby,
            start_time_unix: now,
            label: self.options.label.clone(),
        };
        let text = label.to_text(self.control.wal_segment_size);
        self.append_bytes(tar, BACKUP_LABEL_FILE, text.as_bytes(), now)?;
        let config = fs::read(self.dir().config_file()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("could not read file \"{CONFIG_FILE}\": {e}"),
            )
        })?;
        self.append_bytes(tar, CONFIG_FILE, &config, now)?;
        let snapshot = format!("{BASE_DIR}/{:016X}", self.control.checkpoint_id);
        let dirs = [BASE_DIR, snapshot.as_str(), SLOTS_DIR, LOG_DIR];
        for dir in dirs.into_iter().chain(PG_COMPAT_DIRS) {
            tar.append(&header(dir, Member::Directory, now)?, io::empty())?;
        }
        // Until the queue is empty: with PARALLEL the joined parts take
        // from it too, so this loop sends only what they did not take.
        let mut sent = 0usize;
        while let Some((n, _)) = queue.take() {
            let c = chunks.file(n).ok_or_else(|| {
                io::Error::other(format!("chunk {n} is not one of the backup's chunks"))
            })?;
            self.append_file(tar, c)?;
            sent += 1;
        }
        if let Some(token) = parallel {
            tracing::debug!(
                chunks = sent,
                of = chunks.numbers.len(),
                "parallel base backup: the leader's chunks sent"
            );
            self.wait_for_parts(token)?;
        }
        let end = self.stop_backup()?;
        let control = self.copy_control(end);
        self.append_bytes(tar, CONTROL_FILE, &control.encode(), now)?;
        tar.append(&header(WAL_DIR, Member::Directory, now)?, io::empty())?;
        tar.append(
            &header(ARCHIVE_STATUS_DIR, Member::Directory, now)?,
            io::empty(),
        )?;
        let segments = if self.options.wal {
            self.append_wal(tar, end)?
        } else {
            0
        };
        Ok((end, segments))
    }

    /// A parallel backup ends only once every part is claimed: each
    /// claim holds its own pin, so the parts still being copied outlive
    /// this backup's pin. Bounded by [`JOIN_WAIT`].
    fn wait_for_parts(&self, token: &str) -> io::Result<()> {
        let deadline = Instant::now() + JOIN_WAIT;
        loop {
            let left = self.pins.unclaimed(token);
            if left == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "{left} part(s) of the parallel base backup were not joined within {}s",
                    JOIN_WAIT.as_secs()
                )));
            }
            std::thread::sleep(JOIN_POLL);
        }
    }

    /// do_pg_backup_stop on a primary: XLOG_BACKUP_END, flushed, then a
    /// segment switch so the last segment of the backup is complete.
    /// Returns the end of the backup-end record.
    fn stop_backup(&self) -> io::Result<Lsn> {
        if self.from_standby {
            return super::standby_backup::stop_backup(self.node, self.tli(), &self.control);
        }
        let tli = self.node.wal_position().map(|(tli, _)| tli);
        if tli.is_some_and(|t| t != self.tli()) {
            return Err(io::Error::other(format!(
                "the timeline changed from {} during the base backup",
                self.tli().0
            )));
        }
        match self.node.log_backup_end(self.control.redo_lsn) {
            Ok(Some(end)) => Ok(end),
            Ok(None) => Err(io::Error::other(
                "the server is shutting down (or no longer a primary): base backup aborted",
            )),
            Err(e) => Err(io::Error::other(format!(
                "could not write the backup end record: {e}"
            ))),
        }
    }

    /// The copy's control file: the pinned checkpoint, not consistent
    /// before `end`, in archive recovery.
    fn copy_control(&self, end: Lsn) -> ControlFile {
        let mut c = self.control.clone();
        // The copy holds the pinned checkpoint's snapshot only.
        c.prev_checkpoint = None;
        c.state = ClusterState::InArchiveRecovery;
        c.min_recovery_point = end;
        c.timeline = self.tli();
        if c.timeline != self.control.timeline {
            c.history_id = crate::store::history_id_of(&self.dir().root, c.timeline).unwrap_or(0);
        }
        c.time_ms = now_ms();
        c
    }

    /// History files, then the segments from the redo point to the one
    /// holding `end`, each with a `.done` status (the primary archives them).
    fn append_wal(&mut self, tar: &mut tar::Builder<CopyWriter<'_>>, end: Lsn) -> io::Result<u64> {
        let seg = self.control.wal_segment_size;
        let wal_dir = self.dir().wal();
        let mut names = Vec::new();
        for e in fs::read_dir(&wal_dir)? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if WalFile::parse(&name, seg).is_some_and(|f| f.kind == WalFileKind::History) {
                names.push(name);
            }
        }
        names.sort();
        let first = self.control.redo_lsn.segno(seg);
        let last = last_segment(end, seg);
        let segments = (first.0..=last.0).map(|s| SegNo(s).file_name(self.tli(), seg));
        let history_count = names.len();
        names.extend(segments);
        for name in &names {
            let f = source_file(format!("{WAL_DIR}/{name}"), wal_dir.join(name))
                .map_err(|e| io::Error::other(e.message))?;
            self.append_file(tar, &f)?;
            let done = format!("{ARCHIVE_STATUS_DIR}/{name}.done");
            self.append_bytes(tar, &done, b"", self.started_unix)?;
        }
        Ok((names.len() - history_count) as u64)
    }

    /// WAIT: the last segment of the backup archived (`.done`), bounded.
    fn wait_for_archive(&self, end: Lsn) -> Result<(), PgError> {
        let mode = self.node.archive_mode();
        let archives = if self.from_standby {
            super::standby_backup::waits_for_archive(mode)
        } else {
            mode != ArchiveMode::Off
        };
        if !self.options.wait || !archives {
            return Ok(());
        }
        let seg = self.control.wal_segment_size;
        let name = last_segment(end, seg).file_name(self.tli(), seg);
        let done = self.dir().archive_status().join(format!("{name}.done"));
        let deadline = Instant::now() + ARCHIVE_WAIT;
        while !done.exists() {
            if Instant::now() >= deadline {
                return Err(PgError::error(
                    code::OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!("WAL segment {name} was not archived within {}s", ARCHIVE_WAIT.as_secs()),
                )
                .with_hint("Check that your archive_command is executing properly. The backup is not usable without all the WAL segments."));
            }
            std::thread::sleep(ARCHIVE_POLL);
        }
        Ok(())
    }
}

impl<S: BackupSource> Backup<'_, S> {
    fn append_bytes(
        &mut self,
        tar: &mut tar::Builder<CopyWriter<'_>>,
        name: &str,
        bytes: &[u8],
        mtime: u64,
    ) -> io::Result<()> {
        let size = bytes.len() as u64;
        self.append(tar, name, size, mtime, bytes)
    }

    fn append_file(
        &mut self,
        tar: &mut tar::Builder<CopyWriter<'_>>,
        f: &SourceFile,
    ) -> io::Result<()> {
        let file = File::open(&f.path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("could not open file \"{}\": {e}", f.path.display()),
            )
        })?;
        let data = ExactReader::new(file, f.size, f.path.display().to_string());
        self.append(tar, &f.name, f.size, f.mtime, data)
    }

    /// One file member, checksummed into the manifest when there is one.
    fn append(
        &mut self,
        tar: &mut tar::Builder<CopyWriter<'_>>,
        name: &str,
        size: u64,
        mtime: u64,
        data: impl io::Read,
    ) -> io::Result<()> {
        let h = header(name, Member::File { size }, mtime)?;
        let kind = self
            .manifest
            .as_ref()
            .map_or(ChecksumKind::None, Manifest::kind);
        let mut reader = HashingReader::new(data, kind);
        copy_member(tar.get_mut(), &h, &mut reader, &mut self.read_buf)?;
        if let Some(m) = &mut self.manifest {
            m.add_file(name, size, mtime, reader.hasher.finish());
        }
        Ok(())
    }
}

/// Bytes read from a file at a time: the tar crate's own copy reads 8 kB
/// at a time, which is 32 times the read calls (and checksum calls).
const READ_CHUNK: usize = 256 * 1024;
/// A tar block: members are padded to a multiple of it.
const TAR_BLOCK: u64 = 512;

/// One tar member: `header`, the bytes of `data` read `buf.len()` at a
/// time, zero padding to the next block (what `tar::Builder::append`
/// writes, with fewer, larger reads).
fn copy_member(
    out: &mut CopyWriter<'_>,
    header: &tar::Header,
    data: &mut impl io::Read,
    buf: &mut [u8],
) -> io::Result<()> {
    use io::Write;
    out.write_all(header.as_bytes())?;
    let mut len = 0u64;
    loop {
        let n = match data.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])?;
        len += n as u64;
    }
    let pad = (TAR_BLOCK - len % TAR_BLOCK) % TAR_BLOCK;
    out.write_all(&[0u8; TAR_BLOCK as usize][..pad as usize])
}

/// The segment holding the last byte of WAL before `end` (a record that
/// ends exactly at a segment boundary has `end` after the next segment's
/// header, which it does not need).
pub fn last_segment(end: Lsn, seg: crate::WalSegSize) -> SegNo {
    let segno = end.segno(seg);
    if end.segment_offset(seg) <= crate::wal::SEG_HEADER_SIZE && segno.0 > 0 {
        SegNo(segno.0 - 1)
    } else {
        segno
    }
}
