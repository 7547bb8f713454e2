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
use crate::TimelineId;

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
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
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
    #[error(transparent)]
    Pending(#[from] crate::standby::pending::PendingError),
    /// The copy in this directory was interrupted (or is a two-phase copy
    /// started without standby.signal): never started as if complete.
    #[error("base backup not complete: \"{datadir}\" still has backup_in_progress (the copy was interrupted); finish it with `walrep basebackup --resume -D {datadir}` or take a new one")]
    BackupIncomplete { datadir: String },
    #[error("could not start the {what}: {source}")]
    Spawn {
        what: &'static str,
        source: io::Error,
    },
}
