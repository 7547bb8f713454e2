//! Crash recovery: load the last checkpoint's snapshot, then replay WAL from
//! its redo point to the first invalid record (the end of WAL), exactly as
//! PostgreSQL's startup process does after a crash.

use std::time::Instant;

use crate::store::checkpoint::{load_snapshot, SnapshotError};
use crate::store::{ControlFile, Store};
use crate::wal::{ReadError, ReaderConfig, Record, WalReader};
use crate::{Lsn, TimelineHistory};

/// What recovery found.
#[derive(Debug, Clone)]
pub struct RecoveryResult {
    /// Where the next record goes.
    pub end: Lsn,
    /// The last valid record (the next record's prev-link).
    pub prev_record: Lsn,
    pub records_replayed: u64,
    pub snapshot_keys: u64,
    /// Why replay stopped (the invalid record at `end`), for the log.
    pub stop: Option<String>,
    pub elapsed_ms: u64,
}

/// Errors that stop start-up (as opposed to the end of WAL).
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("could not read WAL during recovery: {0}")]
    Read(ReadError),
    #[error("WAL record at {lsn} does not decode: {reason}")]
    BadPayload { lsn: Lsn, reason: String },
    #[error("could not read timeline history: {0}")]
    History(String),
}

/// Apply one replayed record to the store (which owns what each record
/// type means).
pub fn apply_record(store: &Store, rec: &Record) -> Result<(), RecoveryError> {
    store
        .apply_record(rec)
        .map_err(|e| RecoveryError::BadPayload {
            lsn: e.lsn,
            reason: e.reason,
        })
}

/// Load the snapshot named by `control` into `store` and replay the WAL of
/// `history` from the redo point to its end.
pub fn crash_recover(
    datadir: &std::path::Path,
    control: &ControlFile,
    history: TimelineHistory,
    store: &Store,
) -> Result<RecoveryResult, RecoveryError> {
    let snapshot = load_snapshot(
        datadir,
        control.checkpoint_id,
        control.checkpoint_chunks,
        store,
    )?;
    let mut result = replay_to_end(datadir, control, history, store)?;
    result.snapshot_keys = snapshot.keys;
    Ok(result)
}

/// Replay the WAL of `history` from the control file's redo point to the
/// first invalid record, into a store that already holds the snapshot.
pub fn replay_to_end(
    datadir: &std::path::Path,
    control: &ControlFile,
    history: TimelineHistory,
    store: &Store,
) -> Result<RecoveryResult, RecoveryError> {
    let started = Instant::now();
    let cfg = ReaderConfig {
        dir: datadir.join(crate::datadir::WAL_DIR),
        system_id: control.system_identifier,
        seg_size: control.wal_segment_size,
        history,
    };
    let mut reader = WalReader::new(cfg, control.redo_lsn);
    reader.seek(control.redo_lsn, None);
    let mut prev_record = Lsn::INVALID;
    let mut records = 0u64;
    tracing::info!(redo = %control.redo_lsn, "redo starts");
    let stop = loop {
        match reader.read_record() {
            Ok(rec) => {
                apply_record(store, &rec)?;
                prev_record = rec.lsn;
                records += 1;
            }
            Err(e) if e.kind.is_io() => return Err(RecoveryError::Read(e)),
            Err(e) => break e,
        }
    };
    let end = reader.next_lsn();
    if !stop.kind.is_zeroes() {
        tracing::info!(at = %end, reason = %stop, "invalid record marks the end of WAL");
    }
    tracing::info!(end = %end, records, "redo done");
    // The checkpoint record itself is the last record when nothing followed
    // it; its LSN is the prev-link of the next record.
    if prev_record == Lsn::INVALID {
        prev_record = control.checkpoint_lsn;
    }
    Ok(RecoveryResult {
        end,
        prev_record,
        records_replayed: records,
        snapshot_keys: 0,
        stop: Some(stop.to_string()),
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}
