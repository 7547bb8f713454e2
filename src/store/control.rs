//! The control file, `DATADIR/control`: PostgreSQL's pg_control for walrep.
//!
//! It names the system, the current timeline, the last checkpoint (and the
//! redo point recovery starts from), the minimum recovery point of a standby
//! and the cluster state. It is magic + version + fixed little-endian body +
//! CRC32, and is replaced atomically (temporary file, fsync, rename, fsync
//! directory), so a crash leaves either the old or the new one; or, on the
//! promotion path, overwritten in place (it fits in one disk sector) and
//! fdatasynced, as PostgreSQL writes pg_control.
//!
//! Version 2 keeps the current timeline's history id (the random id its
//! history file names) where version 1 had a reserved zero; version 1
//! files are still read, with no id. Version 3 appends the previous
//! checkpoint (PostgreSQL's old `prevCheckPoint`, with the snapshot that
//! goes with it), which start-up falls back to when the last checkpoint's
//! snapshot is damaged; versions 1 and 2 read as "no previous checkpoint".

use std::fmt;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::storage::{durable_replace, OpenFor, Storage, StorageError};
use crate::{Lsn, TimelineId, WalSegSize};

/// File name inside the data directory.
pub const CONTROL_FILE: &str = "control";

const MAGIC: &[u8; 8] = b"WALREPCF";
const VERSION: u32 = 3;
/// The oldest version still read (its history id field was reserved, 0).
const OLDEST_VERSION: u32 = 1;
/// Bytes of the body between the header (magic + version) and the CRC,
/// in versions 1 and 2.
const BODY_LEN_V2: usize = 8 + 4 + 4 + 4 + 8 + 8 + 8 + 8 + 4 + 8 + 8 + 4;
/// What version 3 appends: the previous checkpoint (a presence flag, its
/// record, redo point, snapshot id, timeline and chunk count).
const PREV_LEN: usize = 4 + 8 + 8 + 8 + 4 + 4;
const HEADER_LEN: usize = MAGIC.len() + 4;
const FILE_LEN_V2: usize = HEADER_LEN + BODY_LEN_V2 + 4;
const FILE_LEN: usize = FILE_LEN_V2 + PREV_LEN;
/// The longest file [`ControlFile::write_in_place`] overwrites: one disk
/// sector, whose overwrite lands whole or not at all (PostgreSQL's
/// `PG_CONTROL_MAX_SAFE_SIZE`).
const MAX_SAFE_LEN: usize = 512;
const _: () = assert!(FILE_LEN <= MAX_SAFE_LEN);

/// The file length of `version`, `None` for a version this walrep does not read.
fn file_len(version: u32) -> Option<usize> {
    match version {
        1 | 2 => Some(FILE_LEN_V2),
        VERSION => Some(FILE_LEN),
        _ => None,
    }
}

/// What the node was doing when the control file was last written
/// (PostgreSQL's DBState).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterState {
    /// Cleanly shut down after a shutdown checkpoint: no redo needed.
    ShutDown,
    /// A standby cleanly shut down while in recovery.
    ShutDownInRecovery,
    /// Replaying local WAL after a crash.
    InCrashRecovery,
    /// A standby (or archive recovery) replaying WAL.
    InArchiveRecovery,
    /// A primary accepting writes.
    InProduction,
}

impl ClusterState {
    fn code(self) -> u32 {
        match self {
            ClusterState::ShutDown => 1,
            ClusterState::ShutDownInRecovery => 2,
            ClusterState::InCrashRecovery => 4,
            ClusterState::InArchiveRecovery => 5,
            ClusterState::InProduction => 6,
        }
    }

    fn from_code(c: u32) -> Option<ClusterState> {
        Some(match c {
            1 => ClusterState::ShutDown,
            2 => ClusterState::ShutDownInRecovery,
            4 => ClusterState::InCrashRecovery,
            5 => ClusterState::InArchiveRecovery,
            6 => ClusterState::InProduction,
            _ => return None,
        })
    }

    /// PostgreSQL's wording, as pg_controldata prints it.
    pub fn describe(self) -> &'static str {
        match self {
            ClusterState::ShutDown => "shut down",
            ClusterState::ShutDownInRecovery => "shut down in recovery",
            ClusterState::InCrashRecovery => "in crash recovery",
            ClusterState::InArchiveRecovery => "in archive recovery",
            ClusterState::InProduction => "in production",
        }
    }
}

impl fmt::Display for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// A checkpoint the control file names: where its record is, where redo
/// from it starts, and the snapshot under `base/` that goes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointLocation {
    /// LSN of the checkpoint record (the redo point for a restartpoint).
    pub lsn: Lsn,
    /// Where redo starts: every change before it is in the snapshot.
    pub redo_lsn: Lsn,
    /// The snapshot's number (its directory under `base/`).
    pub id: u64,
    /// Timeline of the checkpoint record.
    pub timeline: TimelineId,
    /// Number of chunk files in the snapshot.
    pub chunks: u32,
}

/// The contents of the control file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ControlFile {
    /// Unique per `walrep init`; every segment header and every replication
    /// handshake carries it, so WAL of another system is never replayed.
    pub system_identifier: u64,
    /// Whether the node was shut down cleanly, is in production or in
    /// recovery (`pg_controldata`'s "Database cluster state").
    pub state: ClusterState,
    /// The timeline new WAL is written on (or that recovery last replayed).
    pub timeline: TimelineId,
    /// The WAL segment size, fixed at `walrep init` (PostgreSQL's
    /// `initdb --wal-segsize`).
    pub wal_segment_size: WalSegSize,
    /// LSN of the last checkpoint record.
    pub checkpoint_lsn: Lsn,
    /// Where redo starts: every change before it is in the checkpoint's snapshot.
    pub redo_lsn: Lsn,
    /// Which `base/` snapshot belongs to that checkpoint (its sequence number).
    pub checkpoint_id: u64,
    /// Timeline of the checkpoint record.
    pub checkpoint_timeline: TimelineId,
    /// A standby must replay at least to here before it is consistent
    /// (end of a base backup, or what it had replayed before a crash).
    pub min_recovery_point: Lsn,
    /// Unix time of the last update, in milliseconds.
    pub time_ms: u64,
    /// Number of checkpoint chunk files in the snapshot.
    pub checkpoint_chunks: u32,
    /// The history id of `timeline`, as its history file names it, so a
    /// history file replaced by another promotion's is noticed at start.
    /// 0: timeline 1 (no history file), or a version 1 control file.
    pub history_id: u64,
    /// The checkpoint before the last one, whose snapshot and WAL from its
    /// redo point are kept until the next checkpoint, so start-up can fall
    /// back to it when the last one's snapshot is damaged. `None`: the
    /// first checkpoint, a base backup's copy, or a control file older
    /// than version 3.
    pub prev_checkpoint: Option<CheckpointLocation>,
}

/// Errors reading or writing the control file.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The control file could not be read (missing: not a data directory,
    /// or `walrep init` did not finish).
    #[error("could not read control file {path}: {source}")]
    Read {
        /// The control file.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// Replacing the control file failed; the old one is still in place.
    /// After a failed fsync the node stops (nothing retries).
    #[error("could not write control file {path}: {source}")]
    Write {
        /// The control file.
        path: String,
        /// The failed step.
        source: crate::storage::StorageError,
    },
    /// Wrong length, magic, CRC, version or field value: the node refuses
    /// to start rather than guess (PostgreSQL: "incorrect checksum in control
    /// file").
    #[error(
        "control file {path} is corrupt: {reason}. Without it the node cannot know where \
         recovery starts, so it refuses to start and changes nothing. Ways out: promote a \
         standby and rebuild this node from it (`walrep basebackup`), or restore this node \
         from a base backup; the damaged file stays in place for inspection"
    )]
    Corrupt {
        /// The control file.
        path: String,
        /// Which check failed.
        reason: String,
    },
}

/// PostgreSQL's recipe for a system identifier: seconds since the epoch in
/// the high 32 bits, microseconds in the next 20, low 12 bits of the pid, so
/// two systems initialised on one machine differ.
pub fn generate_system_identifier() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_secs() << 32)
        | ((now.subsec_micros() as u64) << 12)
        | (std::process::id() as u64 & 0xFFF)
}

/// The wall clock as Unix time in milliseconds (0 if the clock is before
/// 1970): the time base of expiry and of the control file's `time_ms`.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The wall clock as Unix time in microseconds (0 if the clock is before
/// 1970): a write record's timestamp.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl ControlFile {
    /// The control file `walrep init` writes: timeline 1, no checkpoint yet
    /// beyond the initial one at `redo`.
    pub fn new_system(
        system_identifier: u64,
        wal_segment_size: WalSegSize,
        checkpoint_chunks: u32,
    ) -> ControlFile {
        ControlFile {
            system_identifier,
            state: ClusterState::ShutDown,
            timeline: TimelineId::FIRST,
            wal_segment_size,
            checkpoint_lsn: Lsn::INVALID,
            redo_lsn: Lsn::INVALID,
            checkpoint_id: 0,
            checkpoint_timeline: TimelineId::FIRST,
            min_recovery_point: Lsn::INVALID,
            time_ms: now_ms(),
            checkpoint_chunks,
            history_id: 0,
            prev_checkpoint: None,
        }
    }

    /// The last checkpoint, as one value.
    pub fn last_checkpoint(&self) -> CheckpointLocation {
        CheckpointLocation {
            lsn: self.checkpoint_lsn,
            redo_lsn: self.redo_lsn,
            id: self.checkpoint_id,
            timeline: self.checkpoint_timeline,
            chunks: self.checkpoint_chunks,
        }
    }

    /// Make `next` the last checkpoint; the one it replaces becomes the
    /// previous checkpoint (the one before that is no longer named).
    pub fn advance_checkpoint(&mut self, next: CheckpointLocation) {
        self.prev_checkpoint = Some(self.last_checkpoint());
        self.set_last_checkpoint(next);
    }

    /// Name `at` as the last checkpoint, leaving the previous one as it is.
    pub fn set_last_checkpoint(&mut self, at: CheckpointLocation) {
        self.checkpoint_lsn = at.lsn;
        self.redo_lsn = at.redo_lsn;
        self.checkpoint_id = at.id;
        self.checkpoint_timeline = at.timeline;
        self.checkpoint_chunks = at.chunks;
    }

    /// The oldest redo point a checkpoint named here starts from: WAL
    /// removal keeps everything from it.
    pub fn oldest_redo_lsn(&self) -> Lsn {
        match self.prev_checkpoint {
            Some(p) => p.redo_lsn.min(self.redo_lsn),
            None => self.redo_lsn,
        }
    }

    /// The file's bytes: magic, fields, CRC.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(FILE_LEN);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&self.system_identifier.to_le_bytes());
        b.extend_from_slice(&self.state.code().to_le_bytes());
        b.extend_from_slice(&self.timeline.0.to_le_bytes());
        b.extend_from_slice(&(self.wal_segment_size.bytes() as u32).to_le_bytes());
        b.extend_from_slice(&self.checkpoint_lsn.0.to_le_bytes());
        b.extend_from_slice(&self.redo_lsn.0.to_le_bytes());
        b.extend_from_slice(&self.checkpoint_id.to_le_bytes());
        b.extend_from_slice(&self.min_recovery_point.0.to_le_bytes());
        b.extend_from_slice(&self.checkpoint_timeline.0.to_le_bytes());
        b.extend_from_slice(&self.time_ms.to_le_bytes());
        b.extend_from_slice(&self.history_id.to_le_bytes());
        b.extend_from_slice(&self.checkpoint_chunks.to_le_bytes());
        let prev = self.prev_checkpoint;
        let p = prev.unwrap_or(CheckpointLocation {
            lsn: Lsn::INVALID,
            redo_lsn: Lsn::INVALID,
            id: 0,
            timeline: TimelineId(0),
            chunks: 0,
        });
        b.extend_from_slice(&u32::from(prev.is_some()).to_le_bytes());
        b.extend_from_slice(&p.lsn.0.to_le_bytes());
        b.extend_from_slice(&p.redo_lsn.0.to_le_bytes());
        b.extend_from_slice(&p.id.to_le_bytes());
        b.extend_from_slice(&p.timeline.0.to_le_bytes());
        b.extend_from_slice(&p.chunks.to_le_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(b.len(), FILE_LEN);
        b
    }

    /// Parse and check the file's bytes; `path` is for the error message.
    pub(crate) fn decode(bytes: &[u8], path: &str) -> Result<ControlFile, ControlError> {
        let corrupt = |reason: String| ControlError::Corrupt {
            path: path.to_string(),
            reason,
        };
        if bytes.len() < HEADER_LEN {
            return Err(corrupt(format!("{} bytes, too short", bytes.len())));
        }
        if &bytes[..8] != MAGIC {
            return Err(corrupt(
                "bad magic number: not a walrep control file".into(),
            ));
        }
        let mut r = Cursor { b: bytes, at: 8 };
        let version = r.u32();
        let Some(len) = file_len(version) else {
            return Err(corrupt(format!(
                "version {version}, this walrep reads versions {OLDEST_VERSION} to {VERSION}"
            )));
        };
        if bytes.len() != len {
            return Err(corrupt(format!(
                "{} bytes, expected {len} for version {version}",
                bytes.len()
            )));
        }
        let stored = u32::from_le_bytes(bytes[len - 4..].try_into().expect("4 bytes"));
        let computed = crc32fast::hash(&bytes[..len - 4]);
        if stored != computed {
            return Err(corrupt(format!(
                "incorrect checksum (stored {stored:08X}, computed {computed:08X})"
            )));
        }
        let system_identifier = r.u64();
        let state = ClusterState::from_code(r.u32())
            .ok_or_else(|| corrupt("unknown cluster state".into()))?;
        let timeline = TimelineId(r.u32());
        let wal_segment_size =
            WalSegSize::new(r.u32() as u64).map_err(|e| corrupt(e.to_string()))?;
        let checkpoint_lsn = Lsn(r.u64());
        let redo_lsn = Lsn(r.u64());
        let checkpoint_id = r.u64();
        let min_recovery_point = Lsn(r.u64());
        let checkpoint_timeline = TimelineId(r.u32());
        let time_ms = r.u64();
        let history_id = r.u64();
        // Version 1 kept zero here, which reads as "no id".
        let history_id = if version >= 2 { history_id } else { 0 };
        let checkpoint_chunks = r.u32();
        let prev_checkpoint = if version >= 3 {
            r.prev_checkpoint().map_err(corrupt)?
        } else {
            None
        };
        Ok(ControlFile {
            system_identifier,
            state,
            timeline,
            wal_segment_size,
            checkpoint_lsn,
            redo_lsn,
            checkpoint_id,
            checkpoint_timeline,
            min_recovery_point,
            time_ms,
            checkpoint_chunks,
            history_id,
            prev_checkpoint,
        })
    }

    /// Read and verify `DATADIR/control`.
    pub fn read(datadir: &Path) -> Result<ControlFile, ControlError> {
        let path = datadir.join(CONTROL_FILE);
        let bytes = std::fs::read(&path).map_err(|source| ControlError::Read {
            path: path.display().to_string(),
            source,
        })?;
        ControlFile::decode(&bytes, &path.display().to_string())
    }

    /// Replace `DATADIR/control` atomically and durably through `storage`
    /// (a failure leaves the old file in place).
    pub fn write(&mut self, storage: &dyn Storage, datadir: &Path) -> Result<(), ControlError> {
        self.time_ms = now_ms();
        let path = datadir.join(CONTROL_FILE);
        durable_replace(storage, &path, &self.encode()).map_err(|source| ControlError::Write {
            path: path.display().to_string(),
            source,
        })
    }

    /// Overwrite `DATADIR/control` in place and fdatasync it, as
    /// PostgreSQL's `UpdateControlFile` does: the file is one sector, so a
    /// crash leaves the old or the new bytes, and its name and size are
    /// already durable, so neither a rename nor a directory fsync (a
    /// journal commit, which waits for other processes' writeback) is
    /// needed. A file of another length (an older version) is replaced
    /// with [`ControlFile::write`] instead.
    ///
    /// Unlike [`ControlFile::write`], a failed fdatasync leaves the new
    /// bytes in the page cache and either version on disk; each names only
    /// what was durable before it, and the node stops at the failure.
    pub fn write_in_place(
        &mut self,
        storage: &dyn Storage,
        datadir: &Path,
    ) -> Result<(), ControlError> {
        let path = datadir.join(CONTROL_FILE);
        if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(FILE_LEN as u64) {
            return self.write(storage, datadir);
        }
        self.time_ms = now_ms();
        let failed = |source| ControlError::Write {
            path: path.display().to_string(),
            source,
        };
        let f = storage
            .open(&path, OpenFor::Existing)
            .map_err(StorageError::at("open", &path))
            .map_err(failed)?;
        storage
            .write_at(&f, &path, 0, &self.encode())
            .map_err(StorageError::at("write", &path))
            .map_err(failed)?;
        storage
            .sync_data(&f, &path)
            .map_err(StorageError::at("fdatasync", &path))
            .map_err(failed)
    }
}

/// A little-endian reader over a buffer whose length was checked up front.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    /// Version 3's previous checkpoint: a presence flag, then its fields.
    fn prev_checkpoint(&mut self) -> Result<Option<CheckpointLocation>, String> {
        let present = self.u32();
        let at = CheckpointLocation {
            lsn: Lsn(self.u64()),
            redo_lsn: Lsn(self.u64()),
            id: self.u64(),
            timeline: TimelineId(self.u32()),
            chunks: self.u32(),
        };
        match present {
            0 => Ok(None),
            1 => Ok(Some(at)),
            n => Err(format!("previous checkpoint flag is {n}, expected 0 or 1")),
        }
    }
    fn u32(&mut self) -> u32 {
        let v = u32::from_le_bytes(
            self.b[self.at..self.at + 4]
                .try_into()
                .expect("checked length"),
        );
        self.at += 4;
        v
    }
    fn u64(&mut self) -> u64 {
        let v = u64::from_le_bytes(
            self.b[self.at..self.at + 8]
                .try_into()
                .expect("checked length"),
        );
        self.at += 8;
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ControlFile {
        let mut c = ControlFile::new_system(generate_system_identifier(), WalSegSize::DEFAULT, 16);
        c.state = ClusterState::InProduction;
        c.timeline = TimelineId(3);
        c.checkpoint_lsn = Lsn(0x1_0000_0028);
        c.redo_lsn = Lsn(0x1_0000_0000);
        c.checkpoint_id = 7;
        c
    }

    #[test]
    fn round_trips_through_the_file() {
        let d = tempfile::tempdir().unwrap();
        let mut c = sample();
        c.write(&crate::storage::StdStorage, d.path()).unwrap();
        assert_eq!(ControlFile::read(d.path()).unwrap(), c);
    }

    #[test]
    fn an_in_place_overwrite_round_trips_and_an_older_length_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let st = crate::storage::FaultyStorage::new();
        let mut c = sample();
        c.write(&st, d.path()).unwrap();
        let renames = st.count(crate::storage::Op::Rename);
        c.timeline = TimelineId(4);
        c.write_in_place(&st, d.path()).unwrap();
        assert_eq!(ControlFile::read(d.path()).unwrap(), c);
        assert_eq!(st.count(crate::storage::Op::Rename), renames, "no rename");
        assert_eq!(st.count(crate::storage::Op::SyncDir), 1, "only write's");
        assert_eq!(st.count(crate::storage::Op::SyncData), 1);
        // A version 2 file is shorter: it is replaced, never overwritten.
        std::fs::write(d.path().join(CONTROL_FILE), old_format(&c, 2)).unwrap();
        c.timeline = TimelineId(5);
        c.write_in_place(&st, d.path()).unwrap();
        assert_eq!(ControlFile::read(d.path()).unwrap(), c);
        assert_eq!(st.count(crate::storage::Op::Rename), renames + 1);
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(
                ControlFile::decode(&b, "x").is_err(),
                "flip at {i} not detected"
            );
        }
        assert!(ControlFile::decode(&bytes[..10], "x").is_err());
    }

    /// `bytes` with another version number and a CRC that matches again.
    fn with_version(mut bytes: Vec<u8>, version: u32) -> Vec<u8> {
        bytes[8..12].copy_from_slice(&version.to_le_bytes());
        let len = bytes.len();
        let crc = crc32fast::hash(&bytes[..len - 4]);
        bytes[len - 4..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// `c` as a file of `version` 1 or 2 writes: no previous checkpoint.
    fn old_format(c: &ControlFile, version: u32) -> Vec<u8> {
        let mut bytes = c.encode();
        bytes.drain(FILE_LEN_V2 - 4..FILE_LEN - 4);
        with_version(bytes, version)
    }

    #[test]
    fn the_history_id_round_trips_and_a_version_1_file_reads_without_one() {
        let mut c = sample();
        c.history_id = 0x5F0C_2A9B_1D7E_4436;
        assert_eq!(ControlFile::decode(&c.encode(), "x").unwrap(), c);
        let old = ControlFile::decode(&old_format(&c, 1), "x").unwrap();
        assert_eq!(old.history_id, 0, "a version 1 file has no history id");
        assert_eq!(
            ControlFile {
                history_id: c.history_id,
                ..old
            },
            c
        );
        let v2 = ControlFile::decode(&old_format(&c, 2), "x").unwrap();
        assert_eq!(v2, c, "a version 2 file keeps its history id");
    }

    #[test]
    fn the_previous_checkpoint_round_trips_and_an_older_file_has_none() {
        let mut c = sample();
        let first = c.last_checkpoint();
        c.advance_checkpoint(CheckpointLocation {
            lsn: Lsn(0x2_0000_0028),
            redo_lsn: Lsn(0x1_8000_0000),
            id: 8,
            timeline: TimelineId(3),
            chunks: 16,
        });
        assert_eq!(c.prev_checkpoint, Some(first));
        assert_eq!(c.checkpoint_id, 8);
        assert_eq!(c.oldest_redo_lsn(), first.redo_lsn);
        let back = ControlFile::decode(&c.encode(), "x").unwrap();
        assert_eq!(back, c);
        let old = ControlFile::decode(&old_format(&c, 2), "x").unwrap();
        assert_eq!(old.prev_checkpoint, None, "version 2 names no previous");
        assert_eq!(old.oldest_redo_lsn(), c.redo_lsn);
        assert_eq!(
            ControlFile {
                prev_checkpoint: c.prev_checkpoint,
                ..old
            },
            c
        );
        // A version 2 file of version 3's length (or the reverse) is refused.
        let e = ControlFile::decode(&with_version(c.encode(), 2), "x").unwrap_err();
        assert!(e.to_string().contains("expected"), "{e}");
        // A presence flag other than 0 or 1 is refused, CRC or not.
        let mut b = c.encode();
        b[FILE_LEN_V2 - 4] = 7;
        let e = ControlFile::decode(&with_version(b, 3), "x").unwrap_err();
        assert!(e.to_string().contains("previous checkpoint flag"), "{e}");
    }

    #[test]
    fn a_newer_or_unknown_version_is_refused_with_its_number() {
        for v in [0, 4, 0xFFFF_FFFF] {
            let e = ControlFile::decode(&with_version(sample().encode(), v), "x").unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains(&format!("version {v}")) && text.contains("versions 1 to 3"),
                "{text}"
            );
        }
    }

    #[test]
    fn system_identifiers_differ_over_time() {
        let a = generate_system_identifier();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_ne!(a, generate_system_identifier());
    }
}
