//! `walrep init`: a new data directory, PostgreSQL's initdb for walrep.
//!
//! It writes the configuration template, a new system identifier, an empty
//! snapshot and the first WAL segment holding a shutdown checkpoint, and a
//! control file pointing at them: a node started on it finds a cleanly shut
//! down system on timeline 1.

use std::path::Path;

use crate::config::Config;
use crate::datadir::{DataDir, DataDirError};
use crate::storage::{durable_create, sync_dir, StdStorage, StorageError};
use crate::store::checkpoint::{write_snapshot, SnapshotError};
use crate::store::control::{generate_system_identifier, now_ms, ControlError};
use crate::store::{ClusterState, ControlFile, Store};
use crate::wal::{initial_lsn, Checkpoint, Wal, WalConfig, WalError, XlogRecord};
use crate::{Lsn, TimelineId, WalSegSize};

/// Why `walrep init` failed; what it wrote so far is not usable.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The directory exists and is not empty, or cannot be created.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// Creating a file or directory failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The empty first snapshot could not be written.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The first WAL segment could not be written.
    #[error("could not write the first WAL segment: {0}")]
    Wal(#[from] WalError),
    /// The control file could not be written.
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// Create a data directory at `path` (with the real storage: no node runs
/// on it yet).
pub fn init(path: &Path, seg_size: WalSegSize) -> Result<ControlFile, InitError> {
    let storage = StdStorage;
    let dir = DataDir::new(path);
    dir.create_layout(&storage)?;
    let template = Config::template();
    durable_create(&storage, &dir.config_file(), template.as_bytes())?;
    let defaults = Config::default();
    let system_identifier = generate_system_identifier();
    let snapshot_id = 1;
    write_snapshot(
        &storage,
        path,
        snapshot_id,
        defaults.checkpoint_chunks,
        &Store::new(),
        &mut |_| {},
    )?;
    let wal = Wal::start(WalConfig::new(
        dir.wal(),
        system_identifier,
        TimelineId::FIRST,
        seg_size,
        initial_lsn(seg_size),
        Lsn::INVALID,
    ))?;
    let redo = wal.inserted();
    let rec = wal.log_xlog(&XlogRecord::Checkpoint(Checkpoint {
        redo,
        tli: TimelineId::FIRST,
        prev_tli: TimelineId::FIRST,
        shutdown: true,
        time_unix_us: now_ms() * 1000,
        checkpoint_id: snapshot_id,
    }))?;
    wal.wait_flushed(rec.end)?;
    wal.shutdown()?;
    let mut control =
        ControlFile::new_system(system_identifier, seg_size, defaults.checkpoint_chunks);
    control.checkpoint_lsn = rec.start;
    control.redo_lsn = redo;
    control.checkpoint_id = snapshot_id;
    control.state = ClusterState::ShutDown;
    control.write(&storage, path)?;
    sync_dir(&storage, path)?;
    Ok(control)
}
