//! The archiver thread (PostgreSQL's pgarch): runs `archive_command` for
//! every `wal/archive_status/*.ready` in archive order, renames it to `.done`
//! on success, keeps it (and so the segment) on failure and retries with a
//! counted, capped exponential back-off.
//!
//! Threading: one thread, started by [`spawn_archiver`]. It sleeps until a
//! [`ArchiveNotifier`] wakes it (the WAL writer, after a segment's `.ready`
//! is durable), the periodic scan interval passes, or shutdown is signalled
//! on the channel given to it. Files are archived strictly in order: a file
//! that keeps failing holds back the ones after it, as in PostgreSQL, so the
//! archive never has a gap.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{bounded, select, Receiver, Sender, TryRecvError};
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, info_span, warn};

use super::command::{run_shell, substitute, ShellCommand, ShellRun, Termination};
use super::status::{mark_done, ready_files, WAL_DIR};
use super::ArchiveError;
use crate::config::{ArchiveMode, Config};
use crate::storage::{StdStorage, Storage};

/// Files taken from one directory scan (PostgreSQL's
/// `NUM_FILES_PER_DIRECTORY_SCAN`): bounds the queue however large the
/// backlog, while sparing a full scan per file.
pub const FILES_PER_DIRECTORY_SCAN: usize = 64;

/// Settings of the archiver thread.
#[derive(Debug, Clone)]
pub struct ArchiverConfig {
    /// The data directory: the command's working directory, so `%p` is
    /// relative (`wal/000000010000000000000003`) as in PostgreSQL.
    pub datadir: PathBuf,
    /// `archive_command`; `%p` = path relative to the data directory,
    /// `%f` = file name, `%%` = `%`. Empty = archiving not configured:
    /// nothing is archived and every `.ready` stays (PostgreSQL warns the same way).
    pub archive_command: String,
    /// Scan for `.ready` files at least this often even without a wake-up
    /// (PostgreSQL's `PGARCH_AUTOWAKE_INTERVAL`, 60 s), so a lost
    /// notification only delays archiving.
    pub scan_interval: Duration,
    /// Wait after the first failure of a file; doubled after each further
    /// consecutive failure.
    pub retry_delay_min: Duration,
    /// The back-off never waits longer than this between attempts.
    pub retry_delay_max: Duration,
    /// On shutdown, how long a running `archive_command` may still finish
    /// before its process group is killed (its `.ready` then stays).
    pub shutdown_grace: Duration,
    /// Where `.ready` files become `.done`: the node's storage.
    pub storage: Arc<dyn Storage>,
}

impl ArchiverConfig {
    /// Defaults: scan every 60 s, back-off from 1 s to 60 s, 5 s shutdown grace.
    pub fn new(datadir: impl Into<PathBuf>, archive_command: impl Into<String>) -> Self {
        ArchiverConfig {
            datadir: datadir.into(),
            archive_command: archive_command.into(),
            scan_interval: Duration::from_secs(60),
            retry_delay_min: Duration::from_secs(1),
            retry_delay_max: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
            storage: Arc::new(StdStorage),
        }
    }

    /// The node's archiver settings from its configuration, writing
    /// through the node's storage.
    pub fn from_config(datadir: &Path, config: &Config, storage: Arc<dyn Storage>) -> Self {
        ArchiverConfig {
            storage,
            ..ArchiverConfig::new(datadir, config.archive_command.clone())
        }
    }
}

/// Whether the archiver runs at all (PostgreSQL's `XLogArchivingActive` /
/// `XLogArchivingAlways`): on a primary with `archive_mode` on or always; on
/// a standby (in recovery) only with `always`.
pub fn archiver_should_run(mode: ArchiveMode, in_recovery: bool) -> bool {
    match mode {
        ArchiveMode::Off => false,
        ArchiveMode::On => !in_recovery,
        ArchiveMode::Always => true,
    }
}

/// The wait before retry number `consecutive_failures` (1 = after the first
/// failure): `min * 2^(n-1)`, capped at `max`. Deterministic, so tests and
/// the statistics can check it exactly.
pub fn retry_delay(min: Duration, max: Duration, consecutive_failures: u32) -> Duration {
    let doublings = consecutive_failures.saturating_sub(1).min(32);
    min.checked_mul(1u32 << doublings.min(31))
        .map_or(max, |d| d.min(max))
}

/// Archiver statistics: PostgreSQL's `pg_stat_archiver` columns, plus the
/// current failure streak and back-off, for INFO and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiverStats {
    /// Files archived successfully.
    pub archived_count: u64,
    /// Name of the last file archived.
    pub last_archived_wal: Option<String>,
    /// When the last file was archived.
    pub last_archived_time: Option<SystemTime>,
    /// Failed attempts (every retry that failed counts).
    pub failed_count: u64,
    /// Name of the file of the last failed attempt.
    pub last_failed_wal: Option<String>,
    /// When the last attempt failed.
    pub last_failed_time: Option<SystemTime>,
    /// Why the last attempt failed (exit status or signal, PostgreSQL's wording).
    pub last_failed_reason: Option<String>,
    /// Tail of the failed command's stderr: the operator's best clue.
    pub last_failed_stderr: Option<String>,
    /// Failures in a row of the file at the head of the queue (0 = healthy).
    pub consecutive_failures: u32,
    /// Back-off before the next attempt, in ms (0 = none pending).
    pub retry_delay_ms: u64,
    /// When these counters started (the thread's start).
    pub stats_reset: Option<SystemTime>,
    /// Scans of `archive_status/` so far: shows the thread is alive, and a
    /// file created after scan N is only seen on a wake-up or the next scan.
    pub directory_scans: u64,
    /// Set when the thread stopped on an error it must not retry (an fsync
    /// failure); archiving is then stopped until the node restarts.
    pub stopped_reason: Option<String>,
}

/// A cloneable view of a running archiver's statistics.
#[derive(Debug, Clone)]
pub struct ArchiverStatsHandle(Arc<Mutex<ArchiverStats>>);

impl ArchiverStatsHandle {
    /// A consistent copy of the current statistics.
    pub fn snapshot(&self) -> ArchiverStats {
        lock(&self.0).clone()
    }
}

/// A poisoned lock only means another thread panicked while holding it; the
/// counters are still meaningful, so keep going rather than panic too.
fn lock(m: &Mutex<ArchiverStats>) -> MutexGuard<'_, ArchiverStats> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Wakes the archiver. Cheap, never blocks: the channel holds at most one
/// pending wake-up, and a full channel already means "look again".
#[derive(Debug, Clone)]
pub struct ArchiveNotifier {
    tx: Sender<()>,
    force_scan: Arc<AtomicBool>,
}

impl ArchiveNotifier {
    /// A segment completed and its `.ready` is durable.
    pub fn segment_completed(&self) {
        let _ = self.tx.try_send(());
    }

    /// A timeline history file's `.ready` is durable. The archiver rescans
    /// at once so the history file goes before segments already queued
    /// (PostgreSQL's `PgArchForceDirScan`).
    pub fn history_file_created(&self) {
        self.force_scan.store(true, Ordering::Release);
        self.segment_completed();
    }

    /// The raw wake-up channel, for a component that only takes a
    /// `Sender<()>`; send with `try_send` (a full channel is fine).
    pub fn sender(&self) -> Sender<()> {
        self.tx.clone()
    }
}

/// A running archiver thread.
#[derive(Debug)]
pub struct ArchiverHandle {
    notifier: ArchiveNotifier,
    /// A reloaded `archive_command`, taken by the thread before its next file.
    command: Arc<Mutex<String>>,
    stats: ArchiverStatsHandle,
    thread: JoinHandle<Result<(), ArchiveError>>,
}

impl ArchiverHandle {
    /// The notifier to give to the WAL writer (and to whoever writes history files).
    pub fn notifier(&self) -> ArchiveNotifier {
        self.notifier.clone()
    }

    /// Use `archive_command` from the next file on (a configuration
    /// reload); a command already running finishes first.
    pub fn set_archive_command(&self, archive_command: &str) {
        *self.command.lock().unwrap_or_else(|e| e.into_inner()) = archive_command.to_string();
        self.notifier.segment_completed();
    }

    /// A copy of the current statistics.
    pub fn stats(&self) -> ArchiverStats {
        self.stats.snapshot()
    }

    /// A cloneable statistics view for INFO / metrics.
    pub fn stats_handle(&self) -> ArchiverStatsHandle {
        self.stats.clone()
    }

    /// Whether the thread has ended (shutdown, or stopped on an error).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Wait for the thread to end; call after signalling shutdown. Bounded:
    /// the thread checks shutdown between files and a running command gets
    /// only `shutdown_grace` before it is killed.
    pub fn join(self) -> Result<(), ArchiveError> {
        self.thread
            .join()
            .map_err(|_| ArchiveError::ThreadPanicked)?
    }
}

/// Start the archiver thread. It stops when `shutdown` receives a message or
/// is disconnected (drop every sender to stop all threads at once).
pub fn spawn_archiver(
    config: ArchiverConfig,
    shutdown: Receiver<()>,
) -> Result<ArchiverHandle, ArchiveError> {
    let (tx, wake) = bounded(1);
    let force_scan = Arc::new(AtomicBool::new(true));
    let stats = ArchiverStatsHandle(Arc::new(Mutex::new(ArchiverStats {
        stats_reset: Some(SystemTime::now()),
        ..ArchiverStats::default()
    })));
    let command = Arc::new(Mutex::new(config.archive_command.clone()));
    let archiver = Archiver {
        config,
        command: command.clone(),
        wake,
        force_scan: force_scan.clone(),
        shutdown,
        stats: stats.clone(),
        queue: VecDeque::new(),
        last_unconfigured_warning: None,
    };
    let thread = thread::Builder::new()
        .name("archiver".into())
        .spawn(move || archiver.run())
        .map_err(ArchiveError::Thread)?;
    Ok(ArchiverHandle {
        notifier: ArchiveNotifier { tx, force_scan },
        command,
        stats,
        thread,
    })
}

/// What one attempt on the head of the queue led to.
enum Step {
    /// Archived, or an orphan status file removed: go on with the next file.
    Next,
    /// The attempt failed: back off, then try the same file again.
    Failed,
    /// Shutdown was requested during the attempt.
    Stop,
}

/// The archiver thread's state.
struct Archiver {
    config: ArchiverConfig,
    /// `archive_command` as last set by [`ArchiverHandle::set_archive_command`].
    command: Arc<Mutex<String>>,
    /// Wake-ups from [`ArchiveNotifier`].
    wake: Receiver<()>,
    /// Set when a history file arrived: rescan before the next file.
    force_scan: Arc<AtomicBool>,
    /// Node shutdown (message or disconnect).
    shutdown: Receiver<()>,
    stats: ArchiverStatsHandle,
    /// The current batch from the last scan, in archive order (at most
    /// [`FILES_PER_DIRECTORY_SCAN`]).
    queue: VecDeque<String>,
    /// Rate limit for the "archive_command is not set" warning.
    last_unconfigured_warning: Option<Instant>,
}

impl Archiver {
    fn run(mut self) -> Result<(), ArchiveError> {
        let span = info_span!("archiver", datadir = %self.config.datadir.display());
        let _entered = span.enter();
        info!("archiver started");
        let result = self.main_loop();
        match &result {
            Ok(()) => info!("archiver stopped"),
            Err(e) => {
                error!(error = %e, "archiver stopped: {e}");
                lock(&self.stats.0).stopped_reason = Some(e.to_string());
            }
        }
        result
    }

    fn main_loop(&mut self) -> Result<(), ArchiveError> {
        // The file that failed last and how often in a row: the back-off
        // belongs to a file, and starts over when another file comes first.
        let mut streak: Option<(String, u32)> = None;
        while !self.shutdown_requested() {
            let command = self
                .command
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if command != self.config.archive_command {
                info!("archive_command changed by a reload: using the new command");
                self.config.archive_command = command;
            }
            if self.config.archive_command.trim().is_empty() {
                self.warn_unconfigured();
                if !self.idle_wait() {
                    break;
                }
                continue;
            }
            let Some(name) = self.next_file() else {
                if !self.idle_wait() {
                    break;
                }
                continue;
            };
            let failures_before = match &streak {
                Some((file, n)) if *file == name => *n,
                _ => 0,
            };
            match self.archive_one(&name, failures_before)? {
                Step::Next => {
                    self.queue.pop_front();
                    streak = None;
                }
                Step::Failed => {
                    let n = failures_before.saturating_add(1);
                    streak = Some((name, n));
                    // Rescan after the back-off: a history file may have
                    // arrived, or the file may be gone.
                    self.queue.clear();
                    if !self.backoff_wait(n) {
                        break;
                    }
                }
                Step::Stop => break,
            }
        }
        Ok(())
    }

    /// The file to archive next, scanning the directory when the batch is
    /// used up or a history file was announced.
    fn next_file(&mut self) -> Option<String> {
        if self.queue.is_empty() || self.force_scan.swap(false, Ordering::AcqRel) {
            let scanned = ready_files(&self.config.datadir, FILES_PER_DIRECTORY_SCAN);
            lock(&self.stats.0).directory_scans += 1;
            match scanned {
                Ok(files) => self.queue = files.into(),
                Err(e) => {
                    warn!(error = %e, "could not scan archive status directory: {e}");
                    self.queue.clear();
                }
            }
        }
        self.queue.front().cloned()
    }

    fn shutdown_requested(&self) -> bool {
        !matches!(self.shutdown.try_recv(), Err(TryRecvError::Empty))
    }

    /// Sleep until woken, the scan interval passes, or shutdown (`false`).
    fn idle_wait(&self) -> bool {
        select! {
            recv(self.wake) -> _ => true,
            recv(self.shutdown) -> _ => false,
            default(self.config.scan_interval) => true,
        }
    }

    /// Sleep the back-off for failure number `n`, or until shutdown
    /// (`false`). Wake-ups do not cut it short: a busy WAL writer would
    /// otherwise defeat the back-off.
    fn backoff_wait(&self, n: u32) -> bool {
        let delay = retry_delay(self.config.retry_delay_min, self.config.retry_delay_max, n);
        select! {
            recv(self.shutdown) -> _ => false,
            default(delay) => true,
        }
    }

    fn warn_unconfigured(&mut self) {
        let due = self
            .last_unconfigured_warning
            .is_none_or(|t| t.elapsed() >= self.config.scan_interval);
        if due {
            warn!("archive_mode enabled, yet archive_command is not set");
            self.last_unconfigured_warning = Some(Instant::now());
        }
    }

    /// One attempt to archive `name`. `failures_before` is the current streak.
    fn archive_one(&mut self, name: &str, failures_before: u32) -> Result<Step, ArchiveError> {
        let span = info_span!("archive_file", file = name);
        let _entered = span.enter();
        let rel_path = format!("{WAL_DIR}/{name}");
        if !self.config.datadir.join(&rel_path).exists() {
            return Ok(self.remove_orphan(name));
        }
        let command_line = substitute(
            &self.config.archive_command,
            &[('p', Some(&rel_path)), ('f', Some(name))],
        )?;
        let run = run_shell(&ShellCommand {
            command_line: &command_line,
            cwd: &self.config.datadir,
            timeout: None,
            cancel: Some(&self.shutdown),
            cancel_grace: self.config.shutdown_grace,
        });
        let run = match run {
            Ok(run) => run,
            Err(e) => {
                let reason = format!("could not run archive command: {e}");
                self.record_failure(name, &reason, "", failures_before, &command_line);
                return Ok(Step::Failed);
            }
        };
        self.finish_attempt(name, &command_line, &run, failures_before)
    }

    /// Turn a finished command into statistics, a status rename and the next step.
    fn finish_attempt(
        &mut self,
        name: &str,
        command_line: &str,
        run: &ShellRun,
        failures_before: u32,
    ) -> Result<Step, ArchiveError> {
        let stop_after = run.cancel_requested;
        match run.termination {
            Termination::Cancelled => {
                info!(
                    file = name,
                    "archive command killed at shutdown; \"{name}\" stays ready"
                );
                return Ok(Step::Stop);
            }
            t if t.success() => {
                match mark_done(&*self.config.storage, &self.config.datadir, name) {
                    Ok(()) => self.record_success(name, run.elapsed),
                    Err(ArchiveError::Storage(e)) if e.is_sync() => return Err(e.into()),
                    Err(e) => {
                        let reason = format!("archived, but could not mark it done: {e}");
                        self.record_failure(name, &reason, "", failures_before, command_line);
                        return Ok(if stop_after { Step::Stop } else { Step::Failed });
                    }
                }
            }
            t => {
                let reason = archive_failure_reason(t);
                self.record_failure(name, &reason, &run.stderr, failures_before, command_line);
                return Ok(if stop_after { Step::Stop } else { Step::Failed });
            }
        }
        Ok(if stop_after { Step::Stop } else { Step::Next })
    }

    /// The `.ready` names a file that no longer exists: remove the status
    /// file and go on (PostgreSQL: "removed orphan archive status file").
    fn remove_orphan(&mut self, name: &str) -> Step {
        let ready = super::status::status_dir(&self.config.datadir).join(format!("{name}.ready"));
        match self.config.storage.remove_file(&ready) {
            Ok(()) => {
                warn!(
                    file = name,
                    "removed orphan archive status file \"{}\"",
                    ready.display()
                );
                Step::Next
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Step::Next,
            Err(e) => {
                warn!(file = name, error = %e, "could not remove orphan archive status file \"{}\": {e}", ready.display());
                self.queue.clear();
                Step::Failed
            }
        }
    }

    fn record_success(&self, name: &str, elapsed: Duration) {
        // DEBUG1 in PostgreSQL too: a line per segment would flood the log.
        debug!(
            file = name,
            elapsed_ms = elapsed.as_millis() as u64,
            "archived write-ahead log file \"{name}\""
        );
        let mut s = lock(&self.stats.0);
        s.archived_count += 1;
        s.last_archived_wal = Some(name.to_string());
        s.last_archived_time = Some(SystemTime::now());
        s.consecutive_failures = 0;
        s.retry_delay_ms = 0;
    }

    fn record_failure(
        &self,
        name: &str,
        reason: &str,
        stderr: &str,
        failures_before: u32,
        command_line: &str,
    ) {
        let n = failures_before.saturating_add(1);
        let delay = retry_delay(self.config.retry_delay_min, self.config.retry_delay_max, n);
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        warn!(
            file = name,
            stderr,
            consecutive_failures = n,
            retry_in_ms = delay_ms,
            command = command_line,
            "{reason} while archiving write-ahead log file \"{name}\"; will retry in {delay:?}"
        );
        let mut s = lock(&self.stats.0);
        s.failed_count += 1;
        s.last_failed_wal = Some(name.to_string());
        s.last_failed_time = Some(SystemTime::now());
        s.last_failed_reason = Some(reason.to_string());
        s.last_failed_stderr = Some(stderr.to_string());
        s.consecutive_failures = n;
        s.retry_delay_ms = delay_ms;
    }
}

/// PostgreSQL's messages for a failed archive command.
fn archive_failure_reason(t: Termination) -> String {
    match t {
        Termination::Exited { code } => format!("archive command failed with exit code {code}"),
        Termination::Signaled { signal } => format!(
            "archive command was terminated by signal {signal}: {}",
            super::command::signal_name(signal)
        ),
        other => format!("archive command failed: {}", other.describe()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let min = Duration::from_millis(100);
        let max = Duration::from_millis(1000);
        let got: Vec<u128> = (1..=7)
            .map(|n| retry_delay(min, max, n).as_millis())
            .collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(retry_delay(min, max, 0), min);
        assert_eq!(retry_delay(min, max, u32::MAX), max);
        let huge = Duration::from_secs(u64::MAX / 4);
        assert_eq!(retry_delay(huge, Duration::MAX, 40), Duration::MAX);
    }

    #[test]
    fn archiver_runs_where_postgres_runs_it() {
        assert!(!archiver_should_run(ArchiveMode::Off, false));
        assert!(archiver_should_run(ArchiveMode::On, false));
        assert!(!archiver_should_run(ArchiveMode::On, true));
        assert!(archiver_should_run(ArchiveMode::Always, true));
    }

    #[test]
    fn failure_reasons_use_postgres_wording() {
        assert_eq!(
            archive_failure_reason(Termination::Exited { code: 1 }),
            "archive command failed with exit code 1"
        );
        assert_eq!(
            archive_failure_reason(Termination::Signaled { signal: 9 }),
            "archive command was terminated by signal 9: Killed"
        );
    }
}
