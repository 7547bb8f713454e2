//! `restore_command`: fetch one WAL segment or timeline history file from the
//! archive for the standby's archive fetcher, with a timeout and PostgreSQL's
//! exit-status semantics, as a typed [`RestoreOutcome`].
//!
//! As in PostgreSQL the file is restored under a temporary name
//! (`wal/RECOVERYXLOG`, `wal/RECOVERYHISTORY`) and checked; the caller then
//! installs it under its real name with [`keep_restored_file`] once it has
//! decided to use it. Nothing here retries: retries and back-off belong to
//! the recovery state machine.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::Receiver;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::command::{run_shell, substitute, ShellCommand, ShellRun, Termination};
use super::status::{is_archivable_name, is_history_file_name, mark_done, mark_ready, WAL_DIR};
use super::ArchiveError;
use crate::config::{ArchiveMode, Config};
use crate::states::{SegNo, WalSegSize};
use crate::storage::{durable_rename, Storage};

/// Temporary name a segment is restored to (PostgreSQL's `RECOVERYXLOG`).
pub const RECOVERYXLOG: &str = "RECOVERYXLOG";
/// Temporary name the segment after the one being replayed is restored to
/// ahead of time (see `standby::fetcher`): never the name replay reads.
pub const RECOVERYXLOG_PREFETCH: &str = "RECOVERYXLOG.prefetch";
/// Temporary name a history file is restored to (PostgreSQL's `RECOVERYHISTORY`).
pub const RECOVERYHISTORY: &str = "RECOVERYHISTORY";
/// The timeout used when `restore_command_timeout` is -1: waits stay bounded
/// even when the operator disabled the limit.
pub const MAX_RESTORE_TIMEOUT: Duration = Duration::from_secs(3600);

/// How to run `restore_command` for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreCommand {
    /// The data directory: the command's working directory (so `%p` is
    /// relative, `wal/RECOVERYXLOG`) and where restored files go.
    pub datadir: PathBuf,
    /// `restore_command`: `%f` = wanted file name, `%p` = destination path
    /// relative to the data directory, `%r` = restartpoint file name, `%%` = `%`.
    pub restore_command: String,
    /// `restore_command_timeout`: the command's whole process group is
    /// killed after this long and the attempt counts as failed.
    pub timeout: Duration,
    /// Segment size: a restored segment must have exactly this size.
    pub seg_size: WalSegSize,
}

/// A file restored and checked, waiting under its temporary name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredFile {
    /// The real name (`000000010000000000000003`, `00000002.history`).
    pub file_name: String,
    /// Where it is now, relative to the data directory (`wal/RECOVERYXLOG`).
    pub temp_path: String,
    /// Its size; the segment size for segments.
    pub size_bytes: u64,
}

/// Why the archive is taken not to have the file. Like PostgreSQL, we cannot
/// tell "not in the archive" from a command that fails for another reason
/// with an ordinary exit status, so both are "not found".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NotFoundReason {
    /// The command exited with a status from 1 to 125.
    NonZeroExit {
        /// The exit status, 1 to 125.
        code: i32,
    },
    /// Exit status 0, but no file at `%p` (PostgreSQL: "restore_command
    /// returned a zero exit status, but stat() failed").
    NoFileAfterSuccess,
    /// `restore_command` is empty: there is no archive to ask.
    NotConfigured,
}

/// Why a restore attempt failed: something is wrong beyond "not there".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RestoreFailure {
    /// The shell was killed by a signal.
    Signaled {
        /// The signal number.
        signal: i32,
    },
    /// Exit status above 125: 126 cannot execute, 127 command not found,
    /// 128+N a command killed by signal N. PostgreSQL treats these as fatal
    /// configuration errors, never as "not in archive".
    ShellError {
        /// The exit status, 126 to 255.
        code: i32,
    },
    /// Ran longer than `restore_command_timeout`; its process group was killed.
    TimedOut {
        /// The `restore_command_timeout` that ran out, in milliseconds.
        timeout_ms: u64,
    },
    /// Cancelled by shutdown; its process group was killed.
    Cancelled,
    /// Exit 0 but a segment of the wrong size: a partial or corrupt copy,
    /// never handed on as restored.
    WrongSize {
        /// Size of the file the command left at `%p`.
        size_bytes: u64,
        /// The WAL segment size (`wal_segment_size`).
        expected_bytes: u64,
    },
    /// The request cannot be turned into a command (bad file name, `%r`
    /// used without a restartpoint, unsafe value).
    InvalidRequest {
        /// What is wrong with it, for the log.
        message: String,
    },
    /// A local file operation or starting the shell failed.
    Io {
        /// The OS error with the operation and the path.
        message: String,
    },
}

impl fmt::Display for RestoreFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestoreFailure::Signaled { signal } => {
                f.write_str(&Termination::Signaled { signal: *signal }.describe())
            }
            RestoreFailure::ShellError { code } => {
                f.write_str(&Termination::Exited { code: *code }.describe())
            }
            RestoreFailure::TimedOut { timeout_ms } => {
                write!(
                    f,
                    "restore_command timed out after {timeout_ms} ms and was killed"
                )
            }
            RestoreFailure::Cancelled => f.write_str("restore_command was killed at shutdown"),
            RestoreFailure::WrongSize {
                size_bytes,
                expected_bytes,
            } => write!(
                f,
                "archive file has wrong size: {size_bytes} instead of {expected_bytes}"
            ),
            RestoreFailure::InvalidRequest { message } => {
                write!(f, "could not build restore command: {message}")
            }
            RestoreFailure::Io { message } => f.write_str(message),
        }
    }
}

/// The result of one `restore_command` run, for the recovery machine's
/// events (restored / not found / command failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RestoreOutcome {
    /// Exit 0 and the file is there with the expected size.
    Restored(RestoredFile),
    /// The archive does not have the file (as far as we can tell).
    NotInArchive {
        /// The WAL or history file name asked for (`%f`).
        file_name: String,
        /// Why it is taken to be missing.
        reason: NotFoundReason,
        /// Tail of the command's stderr.
        stderr: String,
    },
    /// The command failed in a way that is not "not found".
    Failed {
        /// The WAL or history file name asked for (`%f`).
        file_name: String,
        /// What went wrong.
        reason: RestoreFailure,
        /// Tail of the command's stderr.
        stderr: String,
    },
}

impl RestoreOutcome {
    /// The file asked for.
    pub fn file_name(&self) -> &str {
        match self {
            RestoreOutcome::Restored(r) => &r.file_name,
            RestoreOutcome::NotInArchive { file_name, .. }
            | RestoreOutcome::Failed { file_name, .. } => file_name,
        }
    }
}

/// What kind of file is wanted, and so where it goes and what size it must have.
struct Wanted {
    temp_name: &'static str,
    expected_size: Option<u64>,
}

/// A restore ready to run.
struct Prepared {
    wanted: Wanted,
    /// `wal/RECOVERYXLOG` or `wal/RECOVERYHISTORY`.
    temp_path: String,
    /// The command with its placeholders substituted.
    command_line: String,
}

fn invalid_request(file_name: &str, e: ArchiveError) -> RestoreOutcome {
    RestoreOutcome::Failed {
        file_name: file_name.to_string(),
        reason: RestoreFailure::InvalidRequest {
            message: e.to_string(),
        },
        stderr: String::new(),
    }
}

fn io_failure(file_name: &str, e: ArchiveError) -> RestoreOutcome {
    RestoreOutcome::Failed {
        file_name: file_name.to_string(),
        reason: RestoreFailure::Io {
            message: e.to_string(),
        },
        stderr: String::new(),
    }
}

impl RestoreCommand {
    /// A runner for `restore_command` with this timeout.
    pub fn new(
        datadir: impl Into<PathBuf>,
        restore_command: impl Into<String>,
        timeout: Duration,
        seg_size: WalSegSize,
    ) -> Self {
        RestoreCommand {
            datadir: datadir.into(),
            restore_command: restore_command.into(),
            timeout,
            seg_size,
        }
    }

    /// The node's runner from its configuration (`restore_command`,
    /// `restore_command_timeout`; -1 means [`MAX_RESTORE_TIMEOUT`]).
    pub fn from_config(datadir: &Path, config: &Config, seg_size: WalSegSize) -> Self {
        let timeout = config
            .restore_command_timeout
            .get()
            .unwrap_or(MAX_RESTORE_TIMEOUT);
        RestoreCommand::new(datadir, config.restore_command.clone(), timeout, seg_size)
    }

    /// Run `restore_command` once for `file_name` (a segment or
    /// `TTTTTTTT.history`) into its temporary name. `restartpoint_file_name`
    /// is `%r` (the segment of the last restartpoint's redo pointer);
    /// `cancel` (shutdown) kills a running command at once. Never retries.
    pub fn restore(
        &self,
        file_name: &str,
        restartpoint_file_name: Option<&str>,
        cancel: Option<&Receiver<()>>,
    ) -> RestoreOutcome {
        self.restore_with(file_name, restartpoint_file_name, cancel, false)
    }

    /// `restore` of a segment into [`RECOVERYXLOG_PREFETCH`] instead of
    /// `RECOVERYXLOG`, so that it can run while replay reads the segment
    /// before it. Nothing is logged above debug: the caller decides later
    /// whether the file is used.
    pub fn prefetch(
        &self,
        file_name: &str,
        restartpoint_file_name: Option<&str>,
        cancel: Option<&Receiver<()>>,
    ) -> RestoreOutcome {
        self.restore_with(file_name, restartpoint_file_name, cancel, true)
    }

    fn restore_with(
        &self,
        file_name: &str,
        restartpoint_file_name: Option<&str>,
        cancel: Option<&Receiver<()>>,
        prefetch: bool,
    ) -> RestoreOutcome {
        let outcome = match self.prepare(file_name, restartpoint_file_name, prefetch) {
            Ok(prepared) => self.run_prepared(file_name, &prepared, cancel),
            Err(outcome) => outcome,
        };
        if prefetch {
            debug!(file = file_name, outcome = ?outcome, "prefetch from the archive");
        } else {
            log_outcome(&outcome);
        }
        outcome
    }

    /// Everything before running the command: what is wanted, a clean
    /// temporary name, the command line. An `Err` is already the outcome.
    fn prepare(
        &self,
        file_name: &str,
        restartpoint_file_name: Option<&str>,
        prefetch: bool,
    ) -> Result<Prepared, RestoreOutcome> {
        let mut wanted = self
            .classify(file_name)
            .map_err(|e| invalid_request(file_name, e))?;
        if prefetch {
            if wanted.temp_name != RECOVERYXLOG {
                return Err(invalid_request(
                    file_name,
                    ArchiveError::BadFileName {
                        name: format!("{file_name} (only segments are prefetched)"),
                    },
                ));
            }
            wanted.temp_name = RECOVERYXLOG_PREFETCH;
        }
        if self.restore_command.trim().is_empty() {
            return Err(RestoreOutcome::NotInArchive {
                file_name: file_name.to_string(),
                reason: NotFoundReason::NotConfigured,
                stderr: String::new(),
            });
        }
        let temp_path = format!("{WAL_DIR}/{}", wanted.temp_name);
        // As PostgreSQL: a stale file must not pass for a fresh restore.
        remove_if_exists(&self.datadir.join(&temp_path)).map_err(|e| io_failure(file_name, e))?;
        let command_line = substitute(
            &self.restore_command,
            &[
                ('p', Some(&temp_path)),
                ('f', Some(file_name)),
                ('r', restartpoint_file_name),
            ],
        )
        .map_err(|e| invalid_request(file_name, e))?;
        Ok(Prepared {
            wanted,
            temp_path,
            command_line,
        })
    }

    /// Run the prepared command and judge the result.
    fn run_prepared(
        &self,
        file_name: &str,
        p: &Prepared,
        cancel: Option<&Receiver<()>>,
    ) -> RestoreOutcome {
        debug!(file = file_name, command = %p.command_line, "executing restore command");
        let run = run_shell(&ShellCommand {
            command_line: &p.command_line,
            cwd: &self.datadir,
            timeout: Some(self.timeout),
            cancel,
            cancel_grace: Duration::ZERO,
        });
        let outcome = match run {
            Ok(run) => self.judge(file_name, &p.temp_path, &p.wanted, run),
            Err(e) => io_failure(file_name, e),
        };
        if !matches!(outcome, RestoreOutcome::Restored(_)) {
            // Never leave a partial copy behind under the temporary name.
            let _ = remove_if_exists(&self.datadir.join(&p.temp_path));
        }
        outcome
    }

    /// Where `file_name` is restored to and the size it must have.
    fn classify(&self, file_name: &str) -> Result<Wanted, ArchiveError> {
        if is_history_file_name(file_name) {
            return Ok(Wanted {
                temp_name: RECOVERYHISTORY,
                expected_size: None,
            });
        }
        if SegNo::parse_file_name(file_name, self.seg_size).is_some() {
            return Ok(Wanted {
                temp_name: RECOVERYXLOG,
                expected_size: Some(self.seg_size.bytes()),
            });
        }
        Err(ArchiveError::BadFileName {
            name: file_name.to_string(),
        })
    }

    /// PostgreSQL's reading of the exit status, plus the size check.
    fn judge(
        &self,
        file_name: &str,
        temp_path: &str,
        wanted: &Wanted,
        run: ShellRun,
    ) -> RestoreOutcome {
        let failed = |reason: RestoreFailure| RestoreOutcome::Failed {
            file_name: file_name.to_string(),
            reason,
            stderr: run.stderr.clone(),
        };
        match run.termination {
            Termination::Exited { code: 0 } => {}
            Termination::Exited { code } if code <= 125 => {
                return RestoreOutcome::NotInArchive {
                    file_name: file_name.to_string(),
                    reason: NotFoundReason::NonZeroExit { code },
                    stderr: run.stderr,
                }
            }
            Termination::Exited { code } => return failed(RestoreFailure::ShellError { code }),
            Termination::Signaled { signal } => return failed(RestoreFailure::Signaled { signal }),
            Termination::TimedOut => {
                let timeout_ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
                return failed(RestoreFailure::TimedOut { timeout_ms });
            }
            Termination::Cancelled => return failed(RestoreFailure::Cancelled),
        }
        let path = self.datadir.join(temp_path);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return RestoreOutcome::NotInArchive {
                    file_name: file_name.to_string(),
                    reason: NotFoundReason::NoFileAfterSuccess,
                    stderr: run.stderr,
                }
            }
            Err(e) => {
                let message = format!("could not stat file \"{}\": {e}", path.display());
                return failed(RestoreFailure::Io { message });
            }
        };
        if !meta.is_file() {
            let message = format!("\"{}\" is not a regular file", path.display());
            return failed(RestoreFailure::Io { message });
        }
        match wanted.expected_size {
            Some(expected) if meta.len() != expected => failed(RestoreFailure::WrongSize {
                size_bytes: meta.len(),
                expected_bytes: expected,
            }),
            _ => RestoreOutcome::Restored(RestoredFile {
                file_name: file_name.to_string(),
                temp_path: temp_path.to_string(),
                size_bytes: meta.len(),
            }),
        }
    }
}

fn log_outcome(outcome: &RestoreOutcome) {
    match outcome {
        RestoreOutcome::Restored(r) => {
            info!(file = %r.file_name, "restored log file \"{}\" from archive", r.file_name)
        }
        RestoreOutcome::NotInArchive {
            file_name, reason, ..
        } => {
            debug!(file = %file_name, ?reason, "could not restore file \"{file_name}\" from archive")
        }
        RestoreOutcome::Failed {
            file_name,
            reason,
            stderr,
        } => {
            warn!(file = %file_name, %stderr, "could not restore file \"{file_name}\" from archive: {reason}")
        }
    }
}

fn remove_if_exists(path: &Path) -> Result<(), ArchiveError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ArchiveError::io("remove", path, e)),
    }
}

/// How a file restored from the archive is marked for this node's archiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArchiveMark {
    /// `.done`: it came from the archive, so it is not archived again
    /// (PostgreSQL's `XLogArchiveForceDone`).
    Done,
    /// `.ready`: with `archive_mode = always` a standby archives everything
    /// it has, restored files included (PostgreSQL's `XLogArchiveNotify`).
    Ready,
}

impl ArchiveMark {
    /// The mark PostgreSQL uses for a restored file under `mode`.
    pub fn for_mode(mode: ArchiveMode) -> Self {
        if mode == ArchiveMode::Always {
            ArchiveMark::Ready
        } else {
            ArchiveMark::Done
        }
    }
}

/// Install a restored file under its real name in `wal/` (PostgreSQL's
/// `KeepFileRestoredFromArchive`): fsync it (the restore command did not),
/// rename it over any existing file of that name, fsync the directory, then
/// mark it `.done` or `.ready`. Returns the final path. Cascading walsenders
/// reading the old file should be told to reopen it by the caller.
pub fn keep_restored_file(
    storage: &dyn Storage,
    datadir: &Path,
    restored: &RestoredFile,
    mark: ArchiveMark,
) -> Result<PathBuf, ArchiveError> {
    let expected_temp: &[&str] = if is_history_file_name(&restored.file_name) {
        &[RECOVERYHISTORY]
    } else {
        &[RECOVERYXLOG, RECOVERYXLOG_PREFETCH]
    };
    let temp_ok = expected_temp
        .iter()
        .any(|t| restored.temp_path == format!("{WAL_DIR}/{t}"));
    if !is_archivable_name(&restored.file_name) || !temp_ok {
        return Err(ArchiveError::BadFileName {
            name: format!("{} (from {})", restored.file_name, restored.temp_path),
        });
    }
    let from = datadir.join(&restored.temp_path);
    let to = datadir.join(WAL_DIR).join(&restored.file_name);
    durable_rename(storage, &from, &to)?;
    match mark {
        ArchiveMark::Done => mark_done(storage, datadir, &restored.file_name)?,
        ArchiveMark::Ready => mark_ready(storage, datadir, &restored.file_name)?,
    }
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StdStorage;

    #[test]
    fn outcome_serializes_with_a_tag() {
        let o = RestoreOutcome::Failed {
            file_name: "000000010000000000000003".into(),
            reason: RestoreFailure::ShellError { code: 127 },
            stderr: "sh: nope: not found".into(),
        };
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(
            json,
            r#"{"outcome":"failed","file_name":"000000010000000000000003","reason":{"kind":"shell_error","code":127},"stderr":"sh: nope: not found"}"#
        );
        assert_eq!(serde_json::from_str::<RestoreOutcome>(&json).unwrap(), o);
        let r = RestoreOutcome::Restored(RestoredFile {
            file_name: "00000002.history".into(),
            temp_path: "wal/RECOVERYHISTORY".into(),
            size_bytes: 3,
        });
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.starts_with(r#"{"outcome":"restored","file_name":"00000002.history""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<RestoreOutcome>(&json).unwrap(), r);
    }

    #[test]
    fn failure_text_is_readable() {
        assert_eq!(
            RestoreFailure::ShellError { code: 127 }.to_string(),
            "command not found (child process exited with exit code 127)"
        );
        assert_eq!(
            RestoreFailure::WrongSize {
                size_bytes: 5,
                expected_bytes: 1048576
            }
            .to_string(),
            "archive file has wrong size: 5 instead of 1048576"
        );
    }

    #[test]
    fn keep_refuses_names_that_could_escape_wal() {
        let d = tempfile::tempdir().unwrap();
        let bad = RestoredFile {
            file_name: "../control".into(),
            temp_path: "wal/RECOVERYXLOG".into(),
            size_bytes: 0,
        };
        let e = keep_restored_file(&StdStorage, d.path(), &bad, ArchiveMark::Done).unwrap_err();
        assert!(matches!(e, ArchiveError::BadFileName { .. }), "{e}");
        let bad = RestoredFile {
            file_name: "000000010000000000000003".into(),
            temp_path: "base/x".into(),
            size_bytes: 0,
        };
        assert!(keep_restored_file(&StdStorage, d.path(), &bad, ArchiveMark::Done).is_err());
    }
}
