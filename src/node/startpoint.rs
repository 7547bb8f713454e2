//! Which checkpoint start-up begins from: the last one the control file
//! names, or — when its snapshot is damaged (a chunk fails its CRC, or
//! cannot be read) — the previous one, if its snapshot loads whole and the
//! WAL from its redo point is still in `wal/`. Replay from there goes over
//! the damaged checkpoint's WAL too, so every acknowledged write comes back.
//!
//! Falling back is made durable before replay: the damaged snapshot moves
//! to `quarantine/`, and the control file names the previous checkpoint as
//! the last, with a minimum recovery point at the damaged checkpoint's
//! record, so WAL that ends before it (a start that would lose writes the
//! damaged checkpoint held) is refused, on this start and any later one.
//! When no fallback is possible the node refuses to start and changes
//! nothing.

use std::path::Path;

use crate::datadir::quarantine_dir;
use crate::datadir::WAL_DIR;
use crate::storage::{durable_create_dir, sync_dir, Storage, StorageError};
use crate::store::checkpoint::{base_dir, load_snapshot, snapshot_dir, SnapshotError};
use crate::store::control::CheckpointLocation;
use crate::store::control::ControlError;
use crate::store::{ClusterState, ControlFile, Store};
use crate::wal::read_history;

/// Errors choosing the checkpoint to start from.
#[derive(Debug, thiserror::Error)]
pub enum StartPointError {
    /// The last checkpoint's snapshot is damaged and the previous
    /// checkpoint cannot replace it: the node refuses to start and changes
    /// nothing.
    #[error("{damaged}. No earlier checkpoint to fall back to: {why}")]
    NoFallback {
        /// What is wrong with the last checkpoint's snapshot.
        damaged: SnapshotError,
        /// Why the previous checkpoint cannot be used.
        why: String,
    },
    /// Moving the damaged snapshot to `quarantine/` failed.
    #[error("could not move the damaged checkpoint to quarantine/: {0}")]
    Quarantine(StorageError),
    /// Pointing the control file at the previous checkpoint failed.
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// The checkpoint start-up begins from, loaded.
pub(crate) struct StartPoint {
    /// The store holding its snapshot.
    pub store: Store,
    /// The control file as the node runs with it (naming that checkpoint).
    pub control: ControlFile,
    /// Keys the snapshot held.
    pub keys: u64,
}

/// Load the last checkpoint's snapshot, or fall back to the previous
/// checkpoint when it is damaged (see the module documentation).
pub(crate) fn load_start_checkpoint(
    storage: &dyn Storage,
    datadir: &Path,
    control: ControlFile,
) -> Result<StartPoint, StartPointError> {
    let last = control.last_checkpoint();
    let store = Store::new();
    let damaged = match load_snapshot(datadir, last.id, last.chunks, &store) {
        Ok(s) => {
            return Ok(StartPoint {
                store,
                control,
                keys: s.keys,
            })
        }
        Err(e) => e,
    };
    tracing::error!(checkpoint = %last.lsn, error = %damaged, "the last checkpoint's snapshot is damaged");
    let prev = match usable_previous(datadir, &control) {
        Ok(prev) => prev,
        Err(why) => return Err(StartPointError::NoFallback { damaged, why }),
    };
    // A failed load may have loaded some chunks: start again empty.
    let store = Store::new();
    let keys = match load_snapshot(datadir, prev.id, prev.chunks, &store) {
        Ok(s) => s.keys,
        Err(e) => {
            return Err(StartPointError::NoFallback {
                damaged,
                why: format!("the previous checkpoint's snapshot is damaged too: {e}"),
            })
        }
    };
    let kept = quarantine_snapshot(storage, datadir, last.id)?;
    let mut control = control;
    control.set_last_checkpoint(prev);
    control.prev_checkpoint = None;
    control.min_recovery_point = control.min_recovery_point.max(last.lsn);
    if control.state == ClusterState::ShutDown {
        // Replay goes over WAL the damaged checkpoint covered: end it with
        // a checkpoint, as crash recovery does.
        control.state = ClusterState::InCrashRecovery;
    }
    control.write(storage, datadir)?;
    tracing::warn!(
        damaged = %last.lsn,
        damaged_redo = %last.redo_lsn,
        from = %prev.lsn,
        redo = %prev.redo_lsn,
        kept = %kept.display(),
        error = %damaged,
        "the last checkpoint (at {}) is damaged: recovery starts from the previous checkpoint (at {}, redo {}) and replays all WAL from there; the damaged snapshot is kept in {}",
        last.lsn,
        prev.lsn,
        prev.redo_lsn,
        kept.display()
    );
    Ok(StartPoint {
        store,
        control,
        keys,
    })
}

/// The previous checkpoint, when the control file names one and the WAL
/// segment holding its redo point is in `wal/`; otherwise why not.
fn usable_previous(datadir: &Path, control: &ControlFile) -> Result<CheckpointLocation, String> {
    let Some(prev) = control.prev_checkpoint else {
        return Err("the control file names no previous checkpoint".into());
    };
    if !snapshot_dir(datadir, prev.id).is_dir() {
        return Err(format!(
            "the previous checkpoint's snapshot {} is gone",
            snapshot_dir(datadir, prev.id).display()
        ));
    }
    let wal = datadir.join(WAL_DIR);
    let history = read_history(&wal, control.timeline)
        .map_err(|e| format!("could not read the timeline history: {e}"))?;
    let seg = control.wal_segment_size;
    let file = prev
        .redo_lsn
        .segno(seg)
        .file_name(history.timeline_of(prev.redo_lsn), seg);
    if !wal.join(&file).is_file() {
        return Err(format!(
            "the WAL from the previous checkpoint's redo point {} (segment {file}) is gone",
            prev.redo_lsn
        ));
    }
    Ok(prev)
}

/// Move snapshot `id` to a new `quarantine/<time>-damaged-checkpoint/`
/// directory; returns where it went.
fn quarantine_snapshot(
    storage: &dyn Storage,
    datadir: &Path,
    id: u64,
) -> Result<std::path::PathBuf, StartPointError> {
    let from = snapshot_dir(datadir, id);
    let into = quarantine_dir(datadir, "damaged-checkpoint");
    let q = StartPointError::Quarantine;
    durable_create_dir(storage, &into).map_err(q)?;
    let to = into.join(from.file_name().unwrap_or_default());
    storage
        .rename(&from, &to)
        .map_err(|e| q(StorageError::at("rename", &from)(e)))?;
    sync_dir(storage, &into).map_err(q)?;
    sync_dir(storage, &base_dir(datadir)).map_err(q)?;
    Ok(into)
}
