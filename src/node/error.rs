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
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    StandbyNames(#[from] StandbyNamesError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Segments(#[from] SegmentError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Slots(#[from] SlotError),
    #[error("could not read the history of timeline {tli}: {source}")]
    History {
        tli: TimelineId,
        source: TimelineError,
    },
    #[error(
        "the control file says timeline {tli} has history id {control}, but the history file \
         of timeline {tli} names {file}: it is another promotion's timeline {tli}; restore this \
         node's own history file, or take a new base backup with walrep basebackup"
    )]
    HistoryIdMismatch {
        tli: TimelineId,
        control: String,
        file: String,
    },
    #[error(
        "the control file says timeline {tli} has history id {control}, but the history file \
         of timeline {tli} is missing or names no id; restore it (from the archive), or take a \
         new base backup with walrep basebackup"
    )]
    HistoryIdMissing { tli: TimelineId, control: String },
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    #[error(
        "WAL ends at {end}, before the minimum recovery point {min_recovery_point}: this data \
         directory is an incomplete copy (a base backup cut short) or lost WAL it needs; take a \
         new base backup with walrep basebackup, or put the missing WAL in wal/"
    )]
    BeforeConsistency { end: Lsn, min_recovery_point: Lsn },
    #[error("could not start the WAL writer: {0}")]
    StartWal(WalError),
    #[error(transparent)]
    Standby(#[from] StandbyError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("invalid listen_addresses {value:?}: expected an IP address")]
    ListenAddresses { value: String },
    #[error("could not listen on {addr} ({parameter}): {source}")]
    Listen {
        addr: SocketAddr,
        parameter: &'static str,
        source: io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::security::tls::TlsError),
    #[error("could not start the {what}: {source}")]
    Spawn {
        what: &'static str,
        source: io::Error,
    },
}
