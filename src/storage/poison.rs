//! [`PoisonOnSyncFailure`]: storage that stops writing at its first failed
//! fsync (redb's `PreviousIo`, PostgreSQL's PANIC on an fsync failure).
//!
//! After a failed fsync the kernel may have dropped the dirty pages and
//! marked them clean: a retried fsync "succeeds" without the data, and so
//! would every later one covering the same file. Nothing may therefore be
//! written, renamed or reported durable after it; the node is stopped, and
//! crash recovery from what is really on disk starts over.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::{Op, OpenFor, Storage};

/// The first failed sync: what was synced, and the OS error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncFailure {
    /// fdatasync, fsync or directory fsync.
    pub op: Op,
    /// The file or directory.
    pub path: PathBuf,
    /// The error as the OS reported it.
    pub error: String,
}

impl fmt::Display for SyncFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "could not {} \"{}\": {}",
            self.op,
            self.path.display(),
            self.error
        )
    }
}

/// Called once, with the first failed sync.
type OnPoison = Box<dyn Fn(&SyncFailure) + Send + Sync>;

/// A [`Storage`] wrapper that, at the first failed sync of any kind,
/// records it, calls the callback given at construction (the node asks
/// itself to stop), and from then on refuses every durable call with an
/// error naming that first failure. Nothing is ever retried.
///
/// Costs one atomic load per call while healthy: nothing on the WAL
/// writer's hot path allocates or makes a system call for it.
pub struct PoisonOnSyncFailure {
    inner: Arc<dyn Storage>,
    first: OnceLock<SyncFailure>,
    on_poison: OnPoison,
}

impl fmt::Debug for PoisonOnSyncFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoisonOnSyncFailure")
            .field("inner", &self.inner)
            .field("first", &self.first.get())
            .finish()
    }
}

impl PoisonOnSyncFailure {
    /// Wrap `inner`; `on_poison` runs once, on the thread whose sync failed.
    pub fn new(
        inner: Arc<dyn Storage>,
        on_poison: impl Fn(&SyncFailure) + Send + Sync + 'static,
    ) -> PoisonOnSyncFailure {
        PoisonOnSyncFailure {
            inner,
            first: OnceLock::new(),
            on_poison: Box::new(on_poison),
        }
    }

    /// The failed sync that poisoned this storage, if one did.
    pub fn first_failure(&self) -> Option<&SyncFailure> {
        self.first.get()
    }

    /// `Err` naming the first failure once poisoned.
    fn check(&self) -> io::Result<()> {
        match self.first.get() {
            None => Ok(()),
            Some(first) => Err(io::Error::other(format!(
                "refused: storage stopped after an earlier fsync failure ({first}); \
                 an fsync is never retried, restart to recover"
            ))),
        }
    }

    /// Pass a sync's result on; a failure poisons. A file or directory
    /// that is not there was not synced and lost nothing: that error is
    /// the caller's (as PostgreSQL reports a failed open at ERROR and only
    /// a failed fsync at PANIC).
    fn sync_result(&self, op: Op, path: &Path, r: io::Result<()>) -> io::Result<()> {
        let failed = r
            .as_ref()
            .err()
            .filter(|e| e.kind() != io::ErrorKind::NotFound);
        if let Some(e) = failed {
            let failure = SyncFailure {
                op,
                path: path.to_path_buf(),
                error: e.to_string(),
            };
            if self.first.set(failure).is_ok() {
                if let Some(first) = self.first.get() {
                    tracing::error!(
                        "{first}: refusing every later write (an fsync is never retried)"
                    );
                    (self.on_poison)(first);
                }
            }
        }
        r
    }
}

impl Storage for PoisonOnSyncFailure {
    fn open(&self, path: &Path, how: OpenFor) -> io::Result<File> {
        self.check()?;
        self.inner.open(path, how)
    }

    fn write_at(&self, file: &File, path: &Path, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.check()?;
        self.inner.write_at(file, path, offset, buf)
    }

    fn allocate(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
        self.check()?;
        self.inner.allocate(file, path, len)
    }

    fn sync_data(&self, file: &File, path: &Path) -> io::Result<()> {
        self.check()?;
        let r = self.inner.sync_data(file, path);
        self.sync_result(Op::SyncData, path, r)
    }

    fn sync_all(&self, file: &File, path: &Path) -> io::Result<()> {
        self.check()?;
        let r = self.inner.sync_all(file, path);
        self.sync_result(Op::SyncAll, path, r)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check()?;
        let r = self.inner.sync_dir(dir);
        self.sync_result(Op::SyncDir, dir, r)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check()?;
        self.inner.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.check()?;
        self.inner.remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.check()?;
        self.inner.remove_dir_all(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.check()?;
        self.inner.create_dir(path)
    }
}
