//! Continuous archiving, as PostgreSQL does it: the archiver thread that hands
//! every completed WAL file to `archive_command`, and the `restore_command`
//! runner the standby's archive fetcher uses to get files back.
//!
//! # Layout
//!
//! - [`command`]: placeholder substitution (`%p`, `%f`, `%r`, `%%`) and running
//!   one shell command in its own process group with bounded waits.
//! - [`status`]: `wal/archive_status/<file>.ready|.done`: which files still
//!   need archiving, whether a segment may be removed.
//! - [`archiver`]: the archiver thread (PostgreSQL's pgarch), its back-off and
//!   its `pg_stat_archiver`-style statistics.
//! - [`restore`]: `restore_command` with a timeout and PostgreSQL's
//!   exit-status semantics, returning a typed [`RestoreOutcome`].
//!
//! See `docs/archiving.md` for the operator's view.

pub mod archiver;
pub mod command;
pub mod restore;
pub mod status;

use std::io;
use std::path::PathBuf;

pub use archiver::{
    archiver_should_run, retry_delay, spawn_archiver, ArchiveNotifier, ArchiverConfig,
    ArchiverHandle, ArchiverStats, ArchiverStatsHandle,
};
pub use command::{run_shell, substitute, ShellCommand, ShellRun, Termination};
pub use restore::{
    keep_restored_file, ArchiveMark, NotFoundReason, RestoreCommand, RestoreFailure,
    RestoreOutcome, RestoredFile, RECOVERYHISTORY, RECOVERYXLOG, RECOVERYXLOG_PREFETCH,
};
pub use status::{
    archive_cleanup, is_archived, mark_done, mark_ready, ready_files, segment_removable,
};

/// Errors of the archive module. Outcomes of the commands themselves (a
/// failing `archive_command`, a file missing from the archive) are not errors:
/// they are [`Termination`]s and [`RestoreOutcome`]s.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A file operation failed; `action` says which and why it mattered.
    #[error("could not {action} \"{path}\": {source}")]
    Io {
        /// The operation, as a verb phrase for the message ("read
        /// directory", "remove").
        action: &'static str,
        /// The file or directory it acted on.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A durable write of a status or WAL file failed. When it was an
    /// fsync ([`crate::storage::StorageError::is_sync`]) the kernel may have
    /// dropped the dirty data, so nothing retries it: the caller stops.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// The shell could not be started at all (no `/bin/sh`, no processes left).
    #[error("could not start \"/bin/sh -c {command}\": {source}")]
    Spawn {
        /// The command line after substitution.
        command: String,
        /// Why fork/exec of the shell failed.
        source: io::Error,
    },
    /// A value to substitute for a placeholder is not a plain file name or
    /// relative path; substituting it unquoted into a shell command would be unsafe.
    #[error("refusing to substitute {value:?} for %{placeholder}: only letters, digits, '.', '_', '-' and '/' are allowed")]
    UnsafeValue {
        /// The placeholder letter (`p`, `f` or `r`).
        placeholder: char,
        /// The value refused.
        value: String,
    },
    /// The command uses a placeholder whose value the caller does not have
    /// (PostgreSQL: "could not build restore command").
    #[error("the command uses %{placeholder} but no value is available for it")]
    MissingValue {
        /// The placeholder letter (`r` when there is no restartpoint yet).
        placeholder: char,
    },
    /// A file name that is not a WAL segment or timeline history file name.
    #[error("\"{name}\" is not a WAL segment or timeline history file name")]
    BadFileName {
        /// The name refused.
        name: String,
    },
    /// A thread (the archiver, or the helper that waits for a command)
    /// could not be started.
    #[error("could not start a thread: {0}")]
    Thread(io::Error),
    /// The archiver thread panicked (a bug); reported instead of propagated.
    #[error("the archiver thread panicked")]
    ThreadPanicked,
}

impl ArchiveError {
    /// Shorthand for the common `Io` case.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ArchiveError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
