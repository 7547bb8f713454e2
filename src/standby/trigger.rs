//! The trigger watcher: notices a promotion request, either
//! `promote_trigger_file` (PostgreSQL 15's GUC) or the `DATADIR/promote` file
//! that `walrep promote DATADIR` writes (as `pg_ctl promote` writes
//! `$PGDATA/promote`), removes it and reports a typed [`TriggerEvent`].
//!
//! Detection: the watcher checks both files every [`TRIGGER_POLL_INTERVAL`]
//! (100 ms). On Linux it also watches the directories holding them with
//! inotify and checks at once when an entry is created there, so a promote
//! request is seen in microseconds rather than up to one poll interval; the
//! periodic check stays as the fallback (inotify unavailable, limits reached,
//! a file system without events). Shutdown is noticed within one poll interval.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TryRecvError};
use serde::{Deserialize, Serialize};
use tracing::{info, info_span, warn};

use crate::config::Config;
use crate::storage::{durable_remove, OpenFor, Storage};
use crate::store::{ClusterState, ControlFile};

/// `DATADIR/promote`: the promote request file (PostgreSQL's `PROMOTE_SIGNAL_FILE`).
pub const PROMOTE_SIGNAL_FILE: &str = "promote";
/// `DATADIR/standby.signal`: present while the node is a standby.
pub const STANDBY_SIGNAL_FILE: &str = "standby.signal";
/// How often the watcher checks for the files without an inotify wake-up;
/// also its bound for noticing shutdown.
pub const TRIGGER_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long [`spawn_trigger_watcher_with_sender`] waits for room in a full
/// channel before dropping an event (a full channel already holds a promotion
/// request, so nothing is lost but a duplicate).
pub const REPORT_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Errors of the trigger watcher and of [`request_promotion`].
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// The data directory to signal does not exist.
    #[error("directory \"{0}\" does not exist or is not a directory")]
    NoDataDirectory(PathBuf),
    /// There is no `standby.signal`: a primary cannot be promoted (as `pg_ctl promote`).
    #[error("cannot promote server; server is not in standby mode (no \"{0}\")")]
    NotInStandby(PathBuf),
    /// A trigger or signal file could not be created, read or removed.
    #[error("could not {action} \"{path}\": {source}")]
    Io {
        /// What was attempted (`create`, `remove`, ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: io::Error,
    },
    /// The watcher thread could not be started.
    #[error("could not start the trigger watcher thread: {0}")]
    Thread(io::Error),
    /// The watcher thread panicked (a bug).
    #[error("the trigger watcher thread panicked")]
    ThreadPanicked,
}

/// A promotion trigger, as seen by the watcher. The file was removed before
/// the event was reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TriggerEvent {
    /// `promote_trigger_file` appeared (PostgreSQL: "promote trigger file found").
    PromoteTriggerFileFound {
        /// The trigger file that was found (and removed).
        path: String,
    },
    /// `walrep promote` asked (PostgreSQL: "received promote request").
    PromoteRequested,
}

/// What the watcher watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerConfig {
    /// The data directory, where `promote` appears.
    pub datadir: PathBuf,
    /// `promote_trigger_file`, already resolved (a relative setting is
    /// relative to the data directory, as PostgreSQL's working directory is
    /// the data directory). `None` = not set.
    pub promote_trigger_file: Option<PathBuf>,
    /// Check at least this often ([`TRIGGER_POLL_INTERVAL`] by default).
    pub poll_interval: Duration,
}

impl TriggerConfig {
    /// Watch only the promote request file of `datadir`.
    pub fn new(datadir: impl Into<PathBuf>) -> Self {
        TriggerConfig {
            datadir: datadir.into(),
            promote_trigger_file: None,
            poll_interval: TRIGGER_POLL_INTERVAL,
        }
    }

    /// The node's watcher settings from its configuration.
    pub fn from_config(datadir: &Path, config: &Config) -> Self {
        let trigger = config.promote_trigger_file.trim();
        TriggerConfig {
            promote_trigger_file: (!trigger.is_empty()).then(|| datadir.join(trigger)),
            ..TriggerConfig::new(datadir)
        }
    }
}

/// The checking logic, separate from the thread so the startup process can
/// also call [`TriggerWatcher::check`] directly.
#[derive(Debug)]
pub struct TriggerWatcher {
    config: TriggerConfig,
    /// Files seen but that could not be removed: reported once, then ignored
    /// until they disappear, so one stubborn file is not a flood of events.
    stuck: Vec<PathBuf>,
}

impl TriggerWatcher {
    /// A watcher of `config`'s files; it checks only when asked ([`TriggerWatcher::check`]).
    pub(crate) fn new(config: TriggerConfig) -> Self {
        TriggerWatcher {
            config,
            stuck: Vec::new(),
        }
    }

    /// Check both files once (promote request first, as PostgreSQL's
    /// `CheckForStandbyTrigger`), removing each one found.
    pub fn check(&mut self) -> Vec<TriggerEvent> {
        let mut events = Vec::new();
        let request = self.config.datadir.join(PROMOTE_SIGNAL_FILE);
        if self.take(&request) {
            info!("received promote request");
            events.push(TriggerEvent::PromoteRequested);
        }
        if let Some(trigger) = self.config.promote_trigger_file.clone() {
            if self.take(&trigger) {
                info!(path = %trigger.display(), "promote trigger file found: {}", trigger.display());
                events.push(TriggerEvent::PromoteTriggerFileFound {
                    path: trigger.display().to_string(),
                });
            }
        }
        events
    }

    /// Whether `path` is there and newly seen; removes it.
    fn take(&mut self, path: &Path) -> bool {
        // stat, as PostgreSQL does: a dangling symlink is no trigger.
        if fs::metadata(path).is_err() {
            self.stuck.retain(|p| p != path);
            return false;
        }
        if self.stuck.iter().any(|p| p == path) {
            return false;
        }
        match fs::remove_file(path) {
            Ok(()) => {}
            // Removed by someone else in between: it was still there.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(path = %path.display(), error = %e, "could not remove promote file \"{}\": {e}", path.display());
                self.stuck.push(path.to_path_buf());
            }
        }
        true
    }

    /// The directories whose new entries may be a trigger.
    fn watched_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.config.datadir.clone()];
        if let Some(parent) = self
            .config
            .promote_trigger_file
            .as_ref()
            .and_then(|t| t.parent())
        {
            if !dirs.iter().any(|d| d == parent) {
                dirs.push(parent.to_path_buf());
            }
        }
        dirs
    }
}

/// A running trigger watcher thread.
#[derive(Debug)]
pub struct TriggerWatcherHandle {
    thread: JoinHandle<()>,
}

impl TriggerWatcherHandle {
    /// Whether the thread ended (shutdown, or its consumer went away).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Wait for the thread; after shutdown this takes at most one poll interval.
    pub fn join(self) -> Result<(), TriggerError> {
        self.thread.join().map_err(|_| TriggerError::ThreadPanicked)
    }
}

/// Start the watcher thread. `report` gets each event and returns `false`
/// when its consumer is gone (the thread then ends). The thread also ends
/// when `shutdown` receives a message or is disconnected.
pub fn spawn_trigger_watcher<F>(
    config: TriggerConfig,
    shutdown: Receiver<()>,
    report: F,
) -> Result<TriggerWatcherHandle, TriggerError>
where
    F: FnMut(TriggerEvent) -> bool + Send + 'static,
{
    let thread = thread::Builder::new()
        .name("trigger-watcher".into())
        .spawn(move || watch(TriggerWatcher::new(config), shutdown, report))
        .map_err(TriggerError::Thread)?;
    Ok(TriggerWatcherHandle { thread })
}

/// [`spawn_trigger_watcher`] reporting into a bounded channel. A send waits
/// at most [`REPORT_SEND_TIMEOUT`]; a disconnected channel ends the thread.
pub fn spawn_trigger_watcher_with_sender(
    config: TriggerConfig,
    shutdown: Receiver<()>,
    events: Sender<TriggerEvent>,
) -> Result<TriggerWatcherHandle, TriggerError> {
    spawn_trigger_watcher(config, shutdown, move |event| {
        match events.send_timeout(event, REPORT_SEND_TIMEOUT) {
            Ok(()) => true,
            Err(SendTimeoutError::Timeout(event)) => {
                warn!(
                    ?event,
                    "trigger event dropped: its channel stayed full for {REPORT_SEND_TIMEOUT:?}"
                );
                true
            }
            Err(SendTimeoutError::Disconnected(_)) => false,
        }
    })
}

/// The thread body: check, report, wait (inotify or the poll interval).
fn watch<F>(mut watcher: TriggerWatcher, shutdown: Receiver<()>, mut report: F)
where
    F: FnMut(TriggerEvent) -> bool,
{
    let span = info_span!("trigger_watcher", datadir = %watcher.config.datadir.display());
    let _entered = span.enter();
    let wake = DirWatch::new(&watcher.watched_dirs())
        .inspect_err(|e| warn!(error = %e, "inotify unavailable, checking for promote files every {:?} only", watcher.config.poll_interval))
        .ok();
    loop {
        for event in watcher.check() {
            if !report(event) {
                return;
            }
        }
        match &wake {
            Some(w) => w.wait(watcher.config.poll_interval),
            None => thread::sleep(watcher.config.poll_interval),
        }
        if !matches!(shutdown.try_recv(), Err(TryRecvError::Empty)) {
            return;
        }
    }
}

/// An inotify instance watching directories for new entries (or, through
/// [`DirWatch::with_masks`], any paths for the events given).
struct DirWatch {
    fd: OwnedFd,
}

impl DirWatch {
    fn new(dirs: &[PathBuf]) -> io::Result<DirWatch> {
        let mask = libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE;
        let paths: Vec<(&Path, u32)> = dirs.iter().map(|d| (d.as_path(), mask)).collect();
        DirWatch::with_masks(&paths)
    }

    /// Watch each path for the events of its mask (`IN_*`).
    fn with_masks(paths: &[(&Path, u32)]) -> io::Result<DirWatch> {
        // SAFETY: a plain syscall; the result is checked before use.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut watching = 0;
        for &(path, mask) in paths {
            let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
                continue;
            };
            // SAFETY: `c` is a valid NUL-terminated path for the call's duration.
            if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) } >= 0 {
                watching += 1;
            }
        }
        if watching == 0 {
            return Err(io::Error::other("no path could be watched"));
        }
        Ok(DirWatch { fd })
    }

    /// Wait until an entry appears in a watched directory or `timeout`
    /// passes, then drain the pending events (their content does not matter:
    /// the caller checks the files).
    fn wait(&self, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the call's duration.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready <= 0 {
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads into a buffer we own, of the length given.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return;
            }
        }
    }
}

/// How often [`wait_promoted`] reads the control file without an inotify
/// wake-up (with one, every change to the file wakes it at once).
pub const PROMOTED_RECHECK_INTERVAL: Duration = Duration::from_millis(100);
/// ...and how often when inotify is unavailable (pg_ctl's wait polls
/// every 100 ms; a promotion takes a few milliseconds).
pub const PROMOTED_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Wait until the control file of the node on `datadir` says it is in
/// production (the last step of a promotion before it accepts writes),
/// at most `timeout`: that control file, or `None` when the time is up.
/// An inotify watch on the file (changed in place) and on its directory
/// (replaced by a rename) wakes the wait as soon as the file changes; a
/// read every [`PROMOTED_RECHECK_INTERVAL`] covers a missed event.
pub fn wait_promoted(datadir: &Path, timeout: Duration) -> Option<ControlFile> {
    let deadline = Instant::now() + timeout;
    let control = datadir.join(crate::store::control::CONTROL_FILE);
    // Watched before the first read, so a change in between still wakes.
    let wake = DirWatch::with_masks(&[
        (&control, libc::IN_MODIFY | libc::IN_CLOSE_WRITE),
        (datadir, libc::IN_MOVED_TO | libc::IN_CREATE),
    ])
    .ok();
    loop {
        match ControlFile::read(datadir) {
            Ok(c) if c.state == ClusterState::InProduction => return Some(c),
            // Not yet, or read in the middle of a change: the change wakes us.
            _ => {}
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        match &wake {
            Some(w) => w.wait(left.min(PROMOTED_RECHECK_INTERVAL)),
            None => thread::sleep(left.min(PROMOTED_POLL_INTERVAL)),
        }
    }
}

/// Ask the standby running on `datadir` to promote: create `DATADIR/promote`
/// through `storage` and return its path (what `pg_ctl promote` does,
/// without the signal: the trigger watcher notices the file at once through
/// inotify). Not fsynced,
/// as pg_ctl does not: a request is for the running server only (a restart
/// removes a leftover one), and flushes here would only compete for the
/// disk with the promotion they start. Refuses a data directory
/// that is not a standby's (no `standby.signal`), as pg_ctl refuses a server
/// not in standby mode.
pub fn request_promotion(storage: &dyn Storage, datadir: &Path) -> Result<PathBuf, TriggerError> {
    if !datadir.is_dir() {
        return Err(TriggerError::NoDataDirectory(datadir.to_path_buf()));
    }
    let standby_signal = datadir.join(STANDBY_SIGNAL_FILE);
    if !standby_signal.exists() {
        return Err(TriggerError::NotInStandby(standby_signal));
    }
    let path = datadir.join(PROMOTE_SIGNAL_FILE);
    let io_err = |action, p: &Path| {
        let p = p.to_path_buf();
        move |source| TriggerError::Io {
            action,
            path: p,
            source,
        }
    };
    storage
        .open(&path, OpenFor::Replace)
        .map_err(io_err("create", &path))?;
    Ok(path)
}

/// Remove a promote request left over from before a restart, so an old
/// request does not promote the node as soon as it starts (PostgreSQL's
/// postmaster removes the promote signal file at start-up). Returns whether
/// one was there.
pub fn remove_stale_promote_request(
    storage: &dyn Storage,
    datadir: &Path,
) -> Result<bool, TriggerError> {
    let path = datadir.join(PROMOTE_SIGNAL_FILE);
    durable_remove(storage, &path).map_err(|e| TriggerError::Io {
        action: "remove",
        path,
        source: e.into_io(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StdStorage;

    #[test]
    fn check_reports_and_removes_each_file_once() {
        let d = tempfile::tempdir().unwrap();
        let mut w = TriggerWatcher::new(TriggerConfig {
            promote_trigger_file: Some(d.path().join("trigger")),
            ..TriggerConfig::new(d.path())
        });
        assert!(w.check().is_empty());
        fs::write(d.path().join("trigger"), b"").unwrap();
        fs::write(d.path().join(PROMOTE_SIGNAL_FILE), b"").unwrap();
        let events = w.check();
        assert_eq!(
            events,
            vec![
                TriggerEvent::PromoteRequested,
                TriggerEvent::PromoteTriggerFileFound {
                    path: d.path().join("trigger").display().to_string()
                }
            ]
        );
        assert!(!d.path().join("trigger").exists());
        assert!(!d.path().join(PROMOTE_SIGNAL_FILE).exists());
        assert!(w.check().is_empty());
    }

    #[test]
    fn relative_trigger_file_is_relative_to_datadir() {
        let c = Config {
            promote_trigger_file: "promote.now".into(),
            ..Config::default()
        };
        let t = TriggerConfig::from_config(Path::new("/data/n1"), &c);
        assert_eq!(
            t.promote_trigger_file,
            Some(PathBuf::from("/data/n1/promote.now"))
        );
        let t = TriggerConfig::from_config(Path::new("/data/n1"), &Config::default());
        assert_eq!(t.promote_trigger_file, None);
    }

    #[test]
    fn wait_promoted_returns_the_control_file_once_in_production() {
        let d = tempfile::tempdir().unwrap();
        let seg = crate::WalSegSize::new(16 << 20).unwrap();
        let mut c = ControlFile::new_system(7, seg, 1);
        c.state = ClusterState::InArchiveRecovery;
        c.write(&StdStorage, d.path()).unwrap();
        let waited = thread::scope(|s| {
            let waiter = s.spawn(|| wait_promoted(d.path(), Duration::from_secs(60)));
            c.timeline = crate::TimelineId(2);
            c.state = ClusterState::InProduction;
            c.write_in_place(&StdStorage, d.path()).unwrap();
            waiter.join().unwrap()
        });
        let c = waited.expect("the control file says in production");
        assert_eq!(c.timeline, crate::TimelineId(2));
    }

    #[test]
    fn wait_promoted_gives_up_at_its_timeout() {
        let d = tempfile::tempdir().unwrap();
        let seg = crate::WalSegSize::new(16 << 20).unwrap();
        let mut c = ControlFile::new_system(7, seg, 1);
        c.state = ClusterState::InArchiveRecovery;
        c.write(&StdStorage, d.path()).unwrap();
        assert!(wait_promoted(d.path(), Duration::from_millis(20)).is_none());
        // No control file at all (not a data directory): the same answer.
        let e = tempfile::tempdir().unwrap();
        assert!(wait_promoted(e.path(), Duration::ZERO).is_none());
    }

    #[test]
    fn request_promotion_needs_a_standby() {
        let d = tempfile::tempdir().unwrap();
        let e = request_promotion(&StdStorage, d.path()).unwrap_err();
        assert!(matches!(e, TriggerError::NotInStandby(_)), "{e}");
        assert!(!d.path().join(PROMOTE_SIGNAL_FILE).exists());
        let e = request_promotion(&StdStorage, &d.path().join("missing")).unwrap_err();
        assert!(matches!(e, TriggerError::NoDataDirectory(_)), "{e}");
        fs::write(d.path().join(STANDBY_SIGNAL_FILE), b"").unwrap();
        let p = request_promotion(&StdStorage, d.path()).unwrap();
        assert_eq!(p, d.path().join(PROMOTE_SIGNAL_FILE));
        assert!(p.exists());
        assert!(remove_stale_promote_request(&StdStorage, d.path()).unwrap());
        assert!(!remove_stale_promote_request(&StdStorage, d.path()).unwrap());
    }
}
