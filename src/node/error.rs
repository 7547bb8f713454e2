//! [`NodeError`]: why a node could not start or stop cleanly.

use std::io;
use std::net::SocketAddr;

use super::checkpoint::CheckpointError;
use super::recovery::RecoveryError;
use crate::config::ConfigError;
use crate::datadir::DataDirError;
use crate::replication::slots::SlotError;
use crate::standby::StandbyError;
use crate::store::checkpoint::SnapshotError;
use crate::store::control::ControlError;
use crate::syncrep::standby_names::StandbyNamesError;
use crate::wal::{SegmentError, TimelineError, WalError};
use crate::{Lsn, TimelineId};

/// Errors of starting, running and stopping a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data directory is missing, locked by another node or malformed.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// `walrep.toml` or a `-c` override is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `synchronous_standby_names` does not parse.
    #[error(transparent)]
    StandbyNames(#[from] StandbyNamesError),
    /// The control file could not be read or written.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The WAL directory could not be opened.
    #[error(transparent)]
    Segments(#[from] SegmentError),
    /// The last checkpoint's snapshot could not be loaded.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The replication slots under `slots/` could not be loaded.
    #[error(transparent)]
    Slots(#[from] SlotError),
    /// A timeline history file the node needs is missing or malformed.
    #[error("could not read the history of timeline {tli}: {source}")]
    History {
        /// The timeline whose history was read.
        tli: TimelineId,
        /// Why it could not be read.
        source: TimelineError,
    },
    /// The control file's history id is not the one in the timeline's history file.
    #[error(
        "the control file says timeline {tli} has history id {control}, but the history file \
         of timeline {tli} names {file}: it is another promotion's timeline {tli}; restore this \
         node's own history file, or take a new base backup with walrep basebackup"
    )]
    HistoryIdMismatch {
        /// The control file's timeline.
        tli: TimelineId,
        /// The id the control file holds.
        control: String,
        /// The id the history file names.
        file: String,
    },
    /// The control file names a history id but the history file is missing or names none.
    #[error(
        "the control file says timeline {tli} has history id {control}, but the history file \
         of timeline {tli} is missing or names no id; restore it (from the archive), or take a \
         new base backup with walrep basebackup"
    )]
    HistoryIdMissing {
        /// The control file's timeline.
        tli: TimelineId,
        /// The id the control file holds.
        control: String,
    },
    /// The last checkpoint's snapshot is damaged and the previous one
    /// cannot replace it, or falling back to it failed.
    #[error(transparent)]
    StartPoint(#[from] super::startpoint::StartPointError),
    /// Crash recovery stopped on something other than the end of WAL.
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    /// WAL ended before the minimum recovery point: an incomplete copy
    /// (PostgreSQL's "WAL ends before end of online backup").
    #[error(
        "WAL ends at {end}, before the minimum recovery point {min_recovery_point}: this data \
         directory is an incomplete copy (a base backup cut short) or lost WAL it needs; take a \
         new base backup with walrep basebackup, or put the missing WAL in wal/"
    )]
    BeforeConsistency {
        /// Where the valid WAL ends.
        end: Lsn,
        /// The position the copy must reach to be consistent.
        min_recovery_point: Lsn,
    },
    /// The WAL writer could not open its segment after recovery.
    #[error("could not start the WAL writer: {0}")]
    StartWal(WalError),
    /// The standby runtime could not start.
    #[error(transparent)]
    Standby(#[from] StandbyError),
    /// A checkpoint (the end-of-recovery or shutdown one) failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// `listen_addresses` holds something other than IP addresses.
    #[error("invalid listen_addresses {value:?}: expected an IP address")]
    ListenAddresses {
        /// The entry that is not an IP address.
        value: String,
    },
    /// A listening socket could not be bound.
    #[error("could not listen on {addr} ({parameter}): {source}")]
    Listen {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The parameter it came from (`port`, `replication_port`, `status_port`).
        parameter: &'static str,
        /// The bind error (in use, permission).
        source: io::Error,
    },
    /// The TLS certificate or key files are unusable.
    #[error(transparent)]
    Tls(#[from] crate::security::tls::TlsError),
    /// `backup_in_progress` could not be read.
    #[error(transparent)]
    Pending(#[from] crate::standby::pending::PendingError),
    /// The copy in this directory was interrupted (or is a two-phase copy
    /// started without standby.signal): never started as if complete.
    #[error("base backup not complete: \"{datadir}\" still has backup_in_progress (the copy was interrupted); remove it and take a new base backup")]
    BackupIncomplete {
        /// The data directory.
        datadir: String,
    },
    /// The operating system refused a thread.
    #[error("could not start the {what}: {source}")]
    Spawn {
        /// The thread that could not be started.
        what: &'static str,
        /// The spawn error.
        source: io::Error,
    },
}
