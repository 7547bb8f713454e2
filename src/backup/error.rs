//! Why a base backup (the client side, `walrep basebackup`) failed: one
//! error for the copy and the WAL fetched beside it.

use super::extract::ExtractError;
use super::manifest::{ManifestError, MANIFEST_FILE};
use super::standby_config::StandbyConfigError;
use super::verify::VerifyError;
use super::written::WrittenError;
use crate::replication::client::ClientError;

/// Why the backup failed.
#[derive(Debug, thiserror::Error)]
pub enum BasebackupError {
    /// The target directory is not empty, or cannot be created (as pg_basebackup refuses).
    #[error("{0}")]
    Target(ExtractError),
    /// Connecting to the upstream or a replication command failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A tar member could not be written into the target.
    #[error("could not extract the backup: {0}")]
    Extract(ExtractError),
    /// The finished copy does not match what the server said it sent.
    #[error("the copy failed verification: {0}")]
    Verify(#[from] VerifyError),
    /// The copy's record of its files could not be kept, or `backup_manifest`
    /// could not be written.
    #[error("could not write the backup manifest: {0}")]
    Manifest(#[from] WrittenError),
    /// A file of the finished copy differs from what was written
    /// (`backup_manifest`): the copy is not marked complete.
    #[error("the copy does not match its {MANIFEST_FILE}: {0}")]
    ManifestMismatch(#[from] ManifestError),
    /// `-R`: `standby.signal` or the upstream settings could not be written.
    #[error("could not write the standby configuration: {0}")]
    StandbyConfig(#[from] StandbyConfigError),
    /// Invalid options, or the server's answers are not what BASE_BACKUP promises.
    #[error("{0}")]
    Protocol(String),
    /// CREATE_REPLICATION_SLOT for the copy's WAL failed (most often: the name is taken).
    #[error("could not create replication slot \"{name}\" on the upstream: {source} (name another with --slot, or copy without one with --no-slot)")]
    Slot {
        /// The slot name asked for.
        name: String,
        /// The upstream's refusal.
        source: ClientError,
    },
    /// `backup_in_progress` (the marker that keeps an incomplete copy from
    /// starting as if complete) could not be written or removed.
    #[error("could not write the backup's progress marker: {0}")]
    Marker(#[from] crate::standby::pending::PendingError),
    /// `--resume`: the interrupted copy could not be examined.
    #[error("could not resume the base backup: {0}")]
    Resume(#[from] super::resume::ResumeError),
    /// A two-phase copy failed after its standby may have started, or a
    /// copy failed its end check (or a resumed copy failed): the directory
    /// is kept, its marker keeping it from being used as it is (a standby
    /// started on it waits).
    #[error("{source}\nthe copy in \"{datadir}\" is incomplete and kept (its backup_in_progress marker keeps it from being used: a standby started on it waits and refuses promotion); finish it with the same walrep basebackup command and --resume, or remove it and take a new base backup")]
    Interrupted {
        /// The target directory.
        datadir: String,
        /// What stopped the copy.
        source: Box<BasebackupError>,
    },
}
