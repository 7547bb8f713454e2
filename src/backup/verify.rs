//! Checks of a data directory written by `walrep basebackup`, before it is
//! declared usable: the control file (CRC, system, checkpoint and end the
//! server reported), `backup_label`, `walrep.toml`, every snapshot chunk
//! (CRC and header via [`parse_chunk`]), and every WAL record from the redo
//! point to the end of the backup (read and validated, including the
//! checkpoint record and XLOG_BACKUP_END). A copy of a standby (`BACKUP
//! FROM: standby`) has no backup-end record and may start at a
//! restartpoint, which has no checkpoint record: its WAL must read without
//! a gap from the redo point to the end, the standby's replay position.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::label::{BackupLabel, BACKUP_LABEL_FILE};
use crate::config::Config;
use crate::datadir::{CONFIG_FILE, WAL_DIR};
use crate::store::checkpoint::{chunk_name, parse_chunk, snapshot_dir};
use crate::store::ControlFile;
use crate::wal::{read_history, ReaderConfig, WalReader, XlogRecord};
use crate::{Lsn, TimelineId};

/// What the server said the backup is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// IDENTIFY_SYSTEM's system identifier.
    pub system_id: u64,
    /// The start position result set (redo point).
    pub start: Lsn,
    /// The end position result set (end of XLOG_BACKUP_END).
    pub end: Lsn,
    /// The timeline both result sets named.
    pub tli: TimelineId,
}

/// What the verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The copy's control file.
    pub control: ControlFile,
    /// Keys in the snapshot.
    pub snapshot_keys: u64,
    /// WAL records from the redo point to the end.
    pub wal_records: u64,
}

/// Why a copy is not usable.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The copied control file is unreadable.
    #[error("control file: {0}")]
    Control(#[from] crate::store::control::ControlError),
    /// A value in the copy differs from what the server said it sent.
    #[error("{what} in the copy does not match the server: {found} (expected {expected})")]
    Mismatch {
        /// What differs (system identifier, checkpoint, timeline, ...).
        what: &'static str,
        /// The value in the copy.
        found: String,
        /// The server's value.
        expected: String,
    },
    /// A file the copy needs could not be read.
    #[error("could not read \"{file}\": {reason}")]
    File {
        /// The file.
        file: String,
        /// Why it could not be read.
        reason: String,
    },
    /// A snapshot chunk of the copy fails its checks.
    #[error("snapshot chunk \"{file}\" is corrupt: {reason}")]
    Chunk {
        /// The chunk file.
        file: String,
        /// What check failed (checksum, length, format).
        reason: String,
    },
    /// WAL from the backup's redo point to its end is missing or unreadable.
    #[error("WAL of the backup is incomplete: {0}")]
    Wal(String),
}

fn mismatch(what: &'static str, found: impl ToString, expected: impl ToString) -> VerifyError {
    VerifyError::Mismatch {
        what,
        found: found.to_string(),
        expected: expected.to_string(),
    }
}

fn check<T: PartialEq + ToString>(
    what: &'static str,
    found: T,
    expected: T,
) -> Result<(), VerifyError> {
    if found == expected {
        Ok(())
    } else {
        Err(mismatch(what, found, expected))
    }
}

/// Verify the copy in `datadir` against what the server reported.
pub fn verify(datadir: &Path, want: &Expected) -> Result<Verified, VerifyError> {
    verify_checked(datadir, want, true, &CheckedChunks::default())
}

/// [`verify`] without the WAL: a two-phase copy's WAL is streamed by the
/// standby itself (and checked record by record as it is replayed).
pub fn verify_files(datadir: &Path, want: &Expected) -> Result<Verified, VerifyError> {
    verify_checked(datadir, want, false, &CheckedChunks::default())
}

/// Snapshot chunks already read and parsed (by the copy's end check).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CheckedChunks {
    /// The checkpoint whose snapshot they are.
    pub checkpoint_id: u64,
    /// Keys of each chunk, by chunk number.
    pub keys: BTreeMap<u32, u64>,
}

/// [`verify`] (without the WAL unless `wal`) of a copy whose snapshot
/// chunks in `checked` were already read and parsed: only the others are
/// read here.
pub(crate) fn verify_checked(
    datadir: &Path,
    want: &Expected,
    wal: bool,
    checked: &CheckedChunks,
) -> Result<Verified, VerifyError> {
    let control = ControlFile::read(datadir)?;
    check(
        "system identifier",
        control.system_identifier,
        want.system_id,
    )?;
    check("redo point", control.redo_lsn, want.start)?;
    check(
        "minimum recovery point",
        control.min_recovery_point,
        want.end,
    )?;
    check(
        "checkpoint timeline",
        control.checkpoint_timeline.0,
        want.tli.0,
    )?;
    let label = check_label(datadir, &control)?;
    let config = datadir.join(CONFIG_FILE);
    Config::load(&config, &[]).map_err(|e| VerifyError::File {
        file: CONFIG_FILE.into(),
        reason: e.to_string(),
    })?;
    let snapshot_keys = check_snapshot(datadir, &control, checked)?;
    let wal_records = match wal {
        true => check_wal(datadir, &control, want.end, label.from_standby)?,
        false => 0,
    };
    Ok(Verified {
        control,
        snapshot_keys,
        wal_records,
    })
}

fn check_label(datadir: &Path, control: &ControlFile) -> Result<BackupLabel, VerifyError> {
    let text =
        fs::read_to_string(datadir.join(BACKUP_LABEL_FILE)).map_err(|e| VerifyError::File {
            file: BACKUP_LABEL_FILE.into(),
            reason: e.to_string(),
        })?;
    let label = BackupLabel::parse(&text).map_err(|e| VerifyError::File {
        file: BACKUP_LABEL_FILE.into(),
        reason: e.to_string(),
    })?;
    check(
        "backup_label START WAL LOCATION",
        label.start,
        control.redo_lsn,
    )?;
    check(
        "backup_label CHECKPOINT LOCATION",
        label.checkpoint,
        control.checkpoint_lsn,
    )?;
    check(
        "backup_label START TIMELINE",
        label.start_tli.0,
        control.checkpoint_timeline.0,
    )?;
    Ok(label)
}

/// Every chunk of the checkpoint's snapshot parses (those in `checked`
/// did already); returns the key count.
fn check_snapshot(
    datadir: &Path,
    control: &ControlFile,
    checked: &CheckedChunks,
) -> Result<u64, VerifyError> {
    let dir = snapshot_dir(datadir, control.checkpoint_id);
    let same = checked.checkpoint_id == control.checkpoint_id;
    let mut keys = 0u64;
    for i in 0..control.checkpoint_chunks {
        if let Some(k) = checked.keys.get(&i).filter(|_| same) {
            keys += k;
            continue;
        }
        let path = dir.join(chunk_name(i));
        let file = path.display().to_string();
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            // A parallel copy's streams take the chunks from one queue on
            // the server: a chunk none of them sent is named as such.
            std::io::ErrorKind::NotFound => VerifyError::Chunk {
                file: file.clone(),
                reason: format!(
                    "missing from the copy: no stream of the backup sent chunk {i} of {}",
                    control.checkpoint_chunks
                ),
            },
            _ => VerifyError::File {
                file: file.clone(),
                reason: e.to_string(),
            },
        })?;
        let entries = parse_chunk(&bytes, i, control.checkpoint_chunks, control.checkpoint_id)
            .map_err(|reason| VerifyError::Chunk { file, reason })?;
        keys += entries.len() as u64;
    }
    Ok(keys)
}

/// Read every record from the redo point to `end`: the checkpoint record
/// and XLOG_BACKUP_END must be among them; from a standby, only the
/// checkpoint record, unless the copy starts at a restartpoint (checkpoint
/// location = redo point, no record), and `end` must be a record's end.
fn check_wal(
    datadir: &Path,
    control: &ControlFile,
    end: Lsn,
    from_standby: bool,
) -> Result<u64, VerifyError> {
    let wal_dir = datadir.join(WAL_DIR);
    let history = read_history(&wal_dir, control.checkpoint_timeline)
        .map_err(|e| VerifyError::Wal(format!("timeline history: {e}")))?;
    let cfg = ReaderConfig {
        dir: wal_dir,
        system_id: control.system_identifier,
        seg_size: control.wal_segment_size,
        history,
    };
    let mut reader = WalReader::new(cfg, control.redo_lsn);
    reader.seek(control.redo_lsn, None);
    let mut records = 0u64;
    let mut saw_checkpoint = from_standby && control.checkpoint_lsn == control.redo_lsn;
    let mut saw_backup_end = from_standby;
    let mut last_end = control.redo_lsn;
    while reader.next_lsn() < end {
        let rec = reader.read_record().map_err(|e| {
            VerifyError::Wal(format!(
                "record at {} (needed up to {end}): {e}",
                reader.next_lsn()
            ))
        })?;
        records += 1;
        last_end = rec.end;
        match rec.xlog() {
            Some(Ok(XlogRecord::Checkpoint(c))) if rec.lsn == control.checkpoint_lsn => {
                check(
                    "checkpoint record's snapshot",
                    c.checkpoint_id,
                    control.checkpoint_id,
                )?;
                check("checkpoint record's redo point", c.redo, control.redo_lsn)?;
                saw_checkpoint = true;
            }
            // Earlier backups of an idle node copied the same checkpoint
            // and logged backup-end records of the same start: this
            // backup's is the one that ends where the server said.
            Some(Ok(XlogRecord::BackupEnd { start }))
                if start == control.redo_lsn && rec.end == end =>
            {
                saw_backup_end = true;
            }
            _ => {}
        }
    }
    if !saw_checkpoint {
        return Err(VerifyError::Wal(format!(
            "no checkpoint record at {}",
            control.checkpoint_lsn
        )));
    }
    if from_standby && last_end != end {
        return Err(VerifyError::Wal(format!(
            "the standby's replay position {end} is not the end of a record (the last one read ends at {last_end})"
        )));
    }
    if !saw_backup_end {
        return Err(VerifyError::Wal(format!(
            "no backup-end record for the backup started at {} ending at {end}",
            control.redo_lsn
        )));
    }
    Ok(records)
}
