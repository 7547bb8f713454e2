//! The data directory: its layout, creation by `walrep init`, and the lock
//! that keeps a second node off it (PostgreSQL's postmaster.pid).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::storage::{durable_create_dir, Storage};

/// Names inside a data directory.
pub const CONFIG_FILE: &str = "walrep.toml";
pub const LOCK_FILE: &str = "walrep.pid";
pub const STANDBY_SIGNAL: &str = "standby.signal";
pub const PROMOTE_FILE: &str = "promote";
pub const WAL_DIR: &str = "wal";
pub const ARCHIVE_STATUS_DIR: &str = "wal/archive_status";
pub const BASE_DIR: &str = "base";
pub const SLOTS_DIR: &str = "slots";
pub const LOG_DIR: &str = "log";
/// Where damaged, discarded or cut-off WAL and files are kept instead of
/// deleted, one directory per event (`quarantine/<unix seconds>-<what>/`).
pub const QUARANTINE_DIR: &str = "quarantine";

/// Errors about the data directory itself.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("directory \"{0}\" exists but is not empty; remove it or run walrep init with a new directory")]
    NotEmpty(String),
    #[error(
        "\"{0}\" is not a walrep data directory (no {CONFIG_FILE}); create one with walrep init"
    )]
    NotADataDir(String),
    #[error("lock file \"{path}\" is held by another walrep (pid {pid}): is another node running in data directory \"{dir}\"?")]
    Locked {
        path: String,
        pid: String,
        dir: String,
    },
    #[error("{what} \"{path}\": {source}")]
    Io {
        what: &'static str,
        path: String,
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DataDirError {
    let path = path.display().to_string();
    move |source| DataDirError::Io { what, path, source }
}

/// Paths of one data directory (PostgreSQL's `PGDATA`). Only names: it
/// opens nothing, so it is cheap to build and to clone; [`DataDirLock`]
/// is what keeps a second node off the directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    /// The data directory itself, as given (`-D`); every other path is
    /// under it.
    pub root: PathBuf,
}

impl DataDir {
    /// The data directory at `root`; nothing is checked until
    /// [`DataDir::check`] or [`DataDir::create_layout`].
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    /// `walrep.toml`, the node's configuration (PostgreSQL's
    /// `postgresql.conf`); its presence is what makes a directory a data
    /// directory.
    pub fn config_file(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }
    /// `wal/`, the WAL segments and timeline history files (`pg_wal`).
    pub fn wal(&self) -> PathBuf {
        self.root.join(WAL_DIR)
    }
    /// `wal/archive_status/`: the `.ready`/`.done` files of the archiver.
    pub(crate) fn archive_status(&self) -> PathBuf {
        self.root.join(ARCHIVE_STATUS_DIR)
    }
    /// `slots/`, one file per replication slot (`pg_replslot`).
    pub fn slots(&self) -> PathBuf {
        self.root.join(SLOTS_DIR)
    }
    /// `log/`, where the node writes its log files (`log_directory`).
    pub fn log(&self) -> PathBuf {
        self.root.join(LOG_DIR)
    }
    /// `standby.signal`: while it exists the node starts as a standby.
    pub(crate) fn standby_signal(&self) -> PathBuf {
        self.root.join(STANDBY_SIGNAL)
    }
    /// `promote`: the file `walrep promote` (like `pg_ctl promote`)
    /// creates to ask a running standby to promote.
    pub fn promote_file(&self) -> PathBuf {
        self.root.join(PROMOTE_FILE)
    }

    /// Create the directory tree of a new data directory. `root` must not
    /// exist or be empty. Directories are created with mode 0700, as
    /// PostgreSQL requires of its data directory.
    pub fn create_layout(&self, storage: &dyn Storage) -> Result<(), DataDirError> {
        if self.root.exists() {
            let mut entries =
                fs::read_dir(&self.root).map_err(io_err("could not read directory", &self.root))?;
            if entries.next().is_some() {
                return Err(DataDirError::NotEmpty(self.root.display().to_string()));
            }
        }
        for dir in [
            self.root.clone(),
            self.wal(),
            self.archive_status(),
            self.root.join(BASE_DIR),
            self.slots(),
            self.log(),
        ] {
            durable_create_dir(storage, &dir).map_err(|e| DataDirError::Io {
                what: "could not create directory",
                path: dir.display().to_string(),
                source: e.into_io(),
            })?;
        }
        Ok(())
    }

    /// Check this looks like a data directory before anything touches it.
    pub fn check(&self) -> Result<(), DataDirError> {
        if self.config_file().is_file() {
            Ok(())
        } else {
            Err(DataDirError::NotADataDir(self.root.display().to_string()))
        }
    }

    /// Whether the node will start as a standby (`standby.signal` exists).
    pub(crate) fn is_standby(&self) -> bool {
        self.standby_signal().exists()
    }
}

/// The held lock of a running node: released when dropped or when the
/// process dies (an advisory `flock`, so a kill -9 never leaves a stale lock).
pub struct DataDirLock {
    file: File,
    path: PathBuf,
    root: PathBuf,
}

impl DataDirLock {
    /// Take the lock and record who holds it: pid, data directory, ports.
    pub fn acquire(dir: &DataDir, ports: &[(&str, u16)]) -> Result<DataDirLock, DataDirError> {
        let path = dir.root.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("could not open lock file", &path))?;
        // SAFETY: flock on a valid, owned file descriptor has no memory effects.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            return Err(DataDirError::Locked {
                path: path.display().to_string(),
                pid: holder.lines().next().unwrap_or("?").to_string(),
                dir: dir.root.display().to_string(),
            });
        }
        let mut lock = DataDirLock {
            file,
            path,
            root: dir.root.clone(),
        };
        lock.record_ports(ports)?;
        Ok(lock)
    }

    /// Rewrite the lock file with the ports the node actually listens on
    /// (port 0 in the configuration picks a free one).
    pub fn record_ports(&mut self, ports: &[(&str, u16)]) -> Result<(), DataDirError> {
        let mut text = format!("{}\n{}\n", std::process::id(), self.root.display());
        for (name, port) in ports {
            text.push_str(&format!("{name}={port}\n"));
        }
        // Overwritten in place, then cut to length: a node refused the lock
        // reads the file while this one holds it, and must never find it
        // empty (the first line, this pid, is the same before and after).
        use std::os::unix::fs::FileExt;
        let path = self.path.clone();
        self.file
            .write_all_at(text.as_bytes(), 0)
            .and_then(|_| self.file.set_len(text.len() as u64))
            .and_then(|_| self.file.sync_all())
            .map_err(io_err("could not write lock file", &path))
    }

    /// Who holds the lock, as recorded in the lock file: `None` when no
    /// node recorded itself (never started, or stopped cleanly).
    pub fn read_holder(dir: &DataDir) -> Option<LockHolder> {
        let text = fs::read_to_string(dir.root.join(LOCK_FILE)).ok()?;
        let mut lines = text.lines();
        let pid = lines.next()?.trim().parse().ok()?;
        let ports = lines
            .skip(1)
            .filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect();
        Some(LockHolder { pid, ports })
    }
}

/// The process holding a data directory's lock and the ports it listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    /// Its process id.
    pub pid: u32,
    /// `(parameter, port)`: `port`, `replication_port`, ... as bound.
    pub ports: Vec<(String, u16)>,
}

impl LockHolder {
    /// The port bound for `parameter` (`"port"`, `"replication_port"`).
    pub fn port(&self, parameter: &str) -> Option<u16> {
        self.ports
            .iter()
            .find(|(k, _)| k == parameter)
            .map(|(_, p)| *p)
    }
}

impl Drop for DataDirLock {
    fn drop(&mut self) {
        // Leave the file (pid of a dead node is harmless under flock) but
        // empty it so status tools do not report a node that stopped.
        let _ = self.file.set_len(0);
    }
}

/// A new directory under `quarantine/` for one event, named by the time
/// (and `what`), so nothing kept earlier is ever overwritten.
pub fn quarantine_dir(datadir: &Path, what: &str) -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = datadir.join(QUARANTINE_DIR);
    let mut dir = base.join(format!("{secs}-{what}"));
    let mut n = 1;
    while dir.exists() {
        n += 1;
        dir = base.join(format!("{secs}-{what}-{n}"));
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_empty_directory() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("x"), b"").unwrap();
        let e = DataDir::new(d.path())
            .create_layout(&crate::storage::StdStorage)
            .unwrap_err();
        assert!(e.to_string().contains("not empty"), "{e}");
    }

    #[test]
    fn second_lock_is_refused_with_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let dir = DataDir::new(d.path().join("data"));
        dir.create_layout(&crate::storage::StdStorage).unwrap();
        let lock = DataDirLock::acquire(&dir, &[("port", 6380)]).unwrap();
        let e = DataDirLock::acquire(&dir, &[]).err().unwrap();
        assert!(
            e.to_string().contains(&std::process::id().to_string()),
            "{e}"
        );
        let holder = DataDirLock::read_holder(&dir).unwrap();
        assert_eq!(holder.pid, std::process::id());
        assert_eq!(holder.ports, vec![("port".to_string(), 6380)]);
        assert_eq!(holder.port("port"), Some(6380));
        drop(lock);
        DataDirLock::acquire(&dir, &[]).unwrap();
    }
}
