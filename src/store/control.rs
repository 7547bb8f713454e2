//! The control file, `DATADIR/control`: PostgreSQL's pg_control for walrep.
//!
//! It names the system, the current timeline, the last checkpoint (and the
//! redo point recovery starts from), the minimum recovery point of a standby
//! and the cluster state. It is magic + version + fixed little-endian body +
//! CRC32, and is replaced atomically (temporary file, fsync, rename, fsync
//! directory), so a crash leaves either the old or the new one.
//!
//! Version 2 keeps the current timeline's history id (the random id its
//! history file names) where version 1 had a reserved zero; version 1
//! files are still read, with no id.

use std::fmt;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::storage::{durable_replace, Storage};
use crate::{Lsn, TimelineId, WalSegSize};

/// File name inside the data directory.
pub const CONTROL_FILE: &str = "control";

const MAGIC: &[u8; 8] = b"WALREPCF";
const VERSION: u32 = 2;
/// The oldest version still read (its history id field was reserved, 0).
const OLDEST_VERSION: u32 = 1;
/// Bytes of the body between the header (magic + version) and the CRC.
const BODY_LEN: usize = 8 + 4 + 4 + 4 + 8 + 8 + 8 + 8 + 4 + 8 + 8 + 4;
const FILE_LEN: usize = MAGIC.len() + 4 + BODY_LEN + 4;

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
        if bytes.len() != FILE_LEN {
            return Err(corrupt(format!(
                "{} bytes, expected {FILE_LEN}",
                bytes.len()
            )));
        }
        if &bytes[..8] != MAGIC {
            return Err(corrupt(
                "bad magic number: not a walrep control file".into(),
            ));
        }
        let stored = u32::from_le_bytes(bytes[FILE_LEN - 4..].try_into().expect("4 bytes"));
        let computed = crc32fast::hash(&bytes[..FILE_LEN - 4]);
        if stored != computed {
            return Err(corrupt(format!(
                "incorrect checksum (stored {stored:08X}, computed {computed:08X})"
            )));
        }
        let mut r = Cursor { b: bytes, at: 8 };
        let version = r.u32();
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            return Err(corrupt(format!(
                "version {version}, this walrep reads versions {OLDEST_VERSION} to {VERSION}"
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
}

/// A little-endian reader over a buffer whose length was checked up front.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
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
        let crc = crc32fast::hash(&bytes[..FILE_LEN - 4]);
        bytes[FILE_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn the_history_id_round_trips_and_a_version_1_file_reads_without_one() {
        let mut c = sample();
        c.history_id = 0x5F0C_2A9B_1D7E_4436;
        assert_eq!(ControlFile::decode(&c.encode(), "x").unwrap(), c);
        let old = ControlFile::decode(&with_version(c.encode(), 1), "x").unwrap();
        assert_eq!(old.history_id, 0, "a version 1 file has no history id");
        assert_eq!(
            ControlFile {
                history_id: c.history_id,
                ..old
            },
            c
        );
    }

    #[test]
    fn a_newer_or_unknown_version_is_refused_with_its_number() {
        for v in [0, 3, 0xFFFF_FFFF] {
            let e = ControlFile::decode(&with_version(sample().encode(), v), "x").unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains(&format!("version {v}")) && text.contains("versions 1 to 2"),
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
