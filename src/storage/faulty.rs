//! [`FaultyStorage`]: the real calls plus injected faults, delays and
//! counters, for tests of what the code does when the disk fails.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{Op, OpenFor, StdStorage, Storage};

/// A torn write to inject: the next `write_at` that carries data (a buffer
/// with a non-zero byte, so not the zero-filling of a new segment, which
/// runs in the background at times a test cannot predict) writes only its
/// first `keep_bytes` bytes and then fails, as a crash or a full disk in the
/// middle of a write would. It fires once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornWrite {
    /// Bytes of the torn write that reach the file.
    pub keep_bytes: usize,
}

/// Which paths a fault rule targets.
type PathPredicate = Arc<dyn Fn(&Path) -> bool + Send + Sync>;

/// "Fail these kinds of call on paths like this."
struct Rule {
    ops: Vec<Op>,
    matches: PathPredicate,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule").field("ops", &self.ops).finish()
    }
}

/// Storage for tests: the real calls ([`StdStorage`]) plus injected faults
/// and delays, and a counter per kind of call.
///
/// Faults:
/// - the `n`th fdatasync from some point on, and every later one
///   ([`FaultyStorage::fail_sync_data_after`]);
/// - every fsync of a file or directory ([`FaultyStorage::fail_sync_metadata`]);
/// - calls of some kinds on paths a test's predicate picks
///   ([`FaultyStorage::fail_where`], [`FaultyStorage::fail_syncs_of`],
///   [`FaultyStorage::fail_writes_of`]): "the control file", "any
///   `*.history`", "anything under `slots/`";
/// - one torn write ([`FaultyStorage::tear_next_write`]).
///
/// Every injected failure is an `io::Error` whose message starts with
/// "injected" and names the call, e.g. "injected fsync failure (EIO)".
#[derive(Debug, Default)]
pub struct FaultyStorage {
    /// Fail the `n`th `sync_data` call (counting from 1) and every later one;
    /// 0 = never.
    fail_sync_data_from: AtomicU64,
    /// Fail every `sync_all`/`sync_dir` call when non-zero.
    fail_sync_metadata: AtomicU64,
    /// Path-targeted faults.
    rules: Mutex<Vec<Rule>>,
    /// The torn write to inject, if any (taken when it fires).
    torn_write: Mutex<Option<TornWrite>>,
    /// Extra time every `sync_data` takes, in microseconds: models a slow
    /// disk so that group-commit tests do not depend on the real disk's speed.
    sync_data_delay_us: AtomicU64,
    /// Calls made so far, by kind (`Op as usize`), failed ones included.
    calls: [AtomicU64; Op::ALL.len()],
    /// Failures injected so far.
    injected: AtomicU64,
    /// While set, a `sync_data` of a path it accepts blocks (at most
    /// `GATE_BOUND`): lets a test hold a flush in progress for as long as
    /// it needs, without timing.
    sync_gate: Mutex<Option<Rule>>,
    sync_gate_cv: Condvar,
}

/// Longest a closed sync gate holds a `sync_data` call, so a test that
/// forgets to open it fails instead of hanging.
const GATE_BOUND: Duration = Duration::from_secs(30);

impl FaultyStorage {
    /// Storage with no fault armed and every counter at zero: it behaves
    /// like [`StdStorage`] until a test arms a fault.
    pub fn new() -> FaultyStorage {
        FaultyStorage::default()
    }

    /// Storage whose every fdatasync takes at least `delay` (a slow disk).
    pub fn with_sync_delay(delay: Duration) -> FaultyStorage {
        let st = FaultyStorage::default();
        st.sync_data_delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
        st
    }

    /// Calls of kind `op` made so far (failed ones included).
    pub fn count(&self, op: Op) -> u64 {
        self.calls[op as usize].load(Ordering::SeqCst)
    }

    /// Failures injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// Make the `n`th fdatasync from now on (1 = the next one) fail with
    /// EIO, and every one after it.
    pub fn fail_sync_data_after(&self, n: u64) {
        let done = self.count(Op::SyncData);
        self.fail_sync_data_from.store(done + n, Ordering::SeqCst);
    }

    /// Fail every `sync_all` and `sync_dir` from now on (`true`), or stop.
    pub fn fail_sync_metadata(&self, fail: bool) {
        self.fail_sync_metadata
            .store(u64::from(fail), Ordering::SeqCst);
    }

    /// Fail every call of a kind in `ops` on a path `matches` accepts, from
    /// now on.
    pub fn fail_where(&self, ops: &[Op], matches: impl Fn(&Path) -> bool + Send + Sync + 'static) {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Rule {
                ops: ops.to_vec(),
                matches: Arc::new(matches),
            });
    }

    /// Fail every sync (fdatasync, fsync, directory fsync) of a path
    /// `matches` accepts.
    pub fn fail_syncs_of(&self, matches: impl Fn(&Path) -> bool + Send + Sync + 'static) {
        self.fail_where(&Op::SYNCS, matches);
    }

    /// Fail every write to a path `matches` accepts.
    pub fn fail_writes_of(&self, matches: impl Fn(&Path) -> bool + Send + Sync + 'static) {
        self.fail_where(&[Op::Write], matches);
    }

    /// Remove every path-targeted fault.
    pub fn clear_faults(&self) {
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Close (`true`) or open the sync gate: while closed, every
    /// `sync_data` waits for it to open (at most 30 s).
    pub fn hold_syncs(&self, hold: bool) {
        if hold {
            self.hold_syncs_of(|_| true);
        } else {
            *self.sync_gate.lock().unwrap_or_else(|p| p.into_inner()) = None;
            self.sync_gate_cv.notify_all();
        }
    }

    /// Close the sync gate for the paths `matches` accepts only (e.g. the
    /// WAL segments, while snapshots and the control file sync freely);
    /// [`hold_syncs`](Self::hold_syncs)`(false)` opens it.
    pub fn hold_syncs_of(&self, matches: impl Fn(&Path) -> bool + Send + Sync + 'static) {
        *self.sync_gate.lock().unwrap_or_else(|p| p.into_inner()) = Some(Rule {
            ops: vec![Op::SyncData],
            matches: Arc::new(matches),
        });
        self.sync_gate_cv.notify_all();
    }

    /// Arm a torn write (see [`TornWrite`]).
    pub fn tear_next_write(&self, keep_bytes: usize) {
        *self.torn_write.lock().unwrap_or_else(|p| p.into_inner()) = Some(TornWrite { keep_bytes });
    }

    fn pass_sync_gate(&self, path: &Path) {
        let deadline = Instant::now() + GATE_BOUND;
        let mut closed = self.sync_gate.lock().unwrap_or_else(|p| p.into_inner());
        while closed.as_ref().is_some_and(|held| (held.matches)(path)) {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            closed = self
                .sync_gate_cv
                .wait_timeout(closed, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Count the call (returns its number, from 1); fail it if a rule
    /// targets it.
    fn enter(&self, op: Op, path: &Path) -> io::Result<u64> {
        let n = self.calls[op as usize].fetch_add(1, Ordering::SeqCst) + 1;
        let hit = self
            .rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|r| r.ops.contains(&op) && (r.matches)(path));
        if hit {
            return Err(self.injected_error(op));
        }
        Ok(n)
    }

    fn injected_error(&self, op: Op) -> io::Error {
        self.injected.fetch_add(1, Ordering::SeqCst);
        io::Error::other(format!("injected {} failure (EIO)", op.name()))
    }

    fn metadata_sync_fails(&self) -> bool {
        self.fail_sync_metadata.load(Ordering::SeqCst) != 0
    }
}

impl Storage for FaultyStorage {
    fn open(&self, path: &Path, how: OpenFor) -> io::Result<File> {
        self.enter(Op::Open, path)?;
        StdStorage.open(path, how)
    }

    fn write_at(&self, file: &File, path: &Path, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.enter(Op::Write, path)?;
        let torn = {
            let mut t = self.torn_write.lock().unwrap_or_else(|p| p.into_inner());
            if t.is_some() && buf.iter().any(|&b| b != 0) {
                t.take()
            } else {
                None
            }
        };
        if let Some(t) = torn {
            file.write_all_at(&buf[..t.keep_bytes.min(buf.len())], offset)?;
            return Err(self.injected_error(Op::Write));
        }
        file.write_all_at(buf, offset)
    }

    fn allocate(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
        self.enter(Op::Allocate, path)?;
        StdStorage.allocate(file, path, len)
    }

    fn sync_data(&self, file: &File, path: &Path) -> io::Result<()> {
        let n = self.enter(Op::SyncData, path)?;
        self.pass_sync_gate(path);
        let delay_us = self.sync_data_delay_us.load(Ordering::Relaxed);
        if delay_us > 0 {
            std::thread::sleep(Duration::from_micros(delay_us));
        }
        let from = self.fail_sync_data_from.load(Ordering::SeqCst);
        if from != 0 && n >= from {
            return Err(self.injected_error(Op::SyncData));
        }
        file.sync_data()
    }

    fn sync_all(&self, file: &File, path: &Path) -> io::Result<()> {
        self.enter(Op::SyncAll, path)?;
        if self.metadata_sync_fails() {
            return Err(self.injected_error(Op::SyncAll));
        }
        file.sync_all()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.enter(Op::SyncDir, dir)?;
        if self.metadata_sync_fails() {
            return Err(self.injected_error(Op::SyncDir));
        }
        StdStorage.sync_dir(dir)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.enter(Op::Rename, from)?;
        StdStorage.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.enter(Op::RemoveFile, path)?;
        StdStorage.remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.enter(Op::RemoveDir, path)?;
        StdStorage.remove_dir_all(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.enter(Op::CreateDir, path)?;
        StdStorage.create_dir(path)
    }
}
