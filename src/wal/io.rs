//! The IO backend of the WAL writer: the few calls that make WAL durable,
//! behind a trait so tests can inject fsync failures, torn writes and a slow
//! disk (the idea of redb's `StorageBackend`).
//!
//! Only the write path goes through the backend. Readers map segment files
//! with memmap2 directly: a test that wants bad bytes on disk writes them.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// The calls the WAL writer and segment pre-allocation make to put bytes on
/// disk. Every method must either do all of its work or return an error; the
/// writer treats any error of `write_at`/`sync_data` on a segment in use as
/// fatal (it poisons itself and never retries, because after a failed fsync
/// the kernel may have dropped the dirty pages: PostgreSQL's "fsyncgate").
pub trait WalIo: Send + Sync + fmt::Debug {
    /// Write all of `buf` at `offset` of `file`.
    fn write_at(&self, file: &File, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// fdatasync: make the data written so far durable. Zero-filled
    /// segment files need no metadata update for it; `allocate`d ones
    /// (walreceiver) need the extent state, which fdatasync includes.
    fn sync_data(&self, file: &File) -> io::Result<()>;
    /// fsync data and metadata (used once when a segment file is created).
    fn sync_all(&self, file: &File) -> io::Result<()>;
    /// fsync a directory so that created, renamed and removed entries survive a crash.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Reserve `len` bytes of `file` without writing them: fallocate(2)
    /// mode 0, i.e. unwritten extents that read as zeroes (a later
    /// fdatasync also records which of them were written).
    /// `ErrorKind::Unsupported` where the filesystem cannot.
    fn allocate(&self, file: &File, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let len = libc::off_t::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
        // SAFETY: fallocate on a file descriptor we own for the call; no
        // memory is passed.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
                Err(io::Error::new(io::ErrorKind::Unsupported, e))
            }
            _ => Err(e),
        }
    }
}

/// The real backend: positional writes, fdatasync and fsync.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdIo;

impl WalIo for StdIo {
    fn write_at(&self, file: &File, offset: u64, buf: &[u8]) -> io::Result<()> {
        file.write_all_at(buf, offset)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn sync_all(&self, file: &File) -> io::Result<()> {
        file.sync_all()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// A torn write to inject: the next `write_at` that carries WAL (a buffer
/// with a non-zero byte, so not the zero-filling of a new segment, which
/// runs in the background at times a test cannot predict) writes only its
/// first `keep_bytes` bytes and then fails, as a crash or a full disk in the
/// middle of a write would. It fires once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornWrite {
    /// Bytes of the torn write that reach the file.
    pub keep_bytes: usize,
}

/// A backend for tests: the real calls plus injected faults and delays.
///
/// Counters are public so tests can assert on how many fdatasync calls a
/// workload needed (the group-commit acceptance test).
#[derive(Debug, Default)]
pub struct FaultyIo {
    /// Fail the `n`th `sync_data` call (counting from 1) and every later one;
    /// 0 = never.
    pub fail_sync_data_from: AtomicU64,
    /// Fail every `sync_all`/`sync_dir` call when non-zero (pre-allocation
    /// and status files).
    pub fail_sync_metadata: AtomicU64,
    /// The torn write to inject, if any (taken when it fires).
    pub torn_write: Mutex<Option<TornWrite>>,
    /// Extra time every `sync_data` takes, in microseconds: models a slow
    /// disk so that group-commit tests do not depend on the real disk's speed.
    pub sync_data_delay_us: AtomicU64,
    /// `write_at` calls made so far.
    pub writes: AtomicU64,
    /// `sync_data` calls made so far (including failed ones).
    pub sync_data_calls: AtomicU64,
    /// While true, `sync_data` blocks (at most `GATE_BOUND`): lets a test
    /// hold a flush in progress for as long as it needs, without timing.
    sync_gate: Mutex<bool>,
    sync_gate_cv: Condvar,
}

/// Longest a closed sync gate holds a `sync_data` call, so a test that
/// forgets to open it fails instead of hanging.
const GATE_BOUND: Duration = Duration::from_secs(30);

impl FaultyIo {
    pub fn new() -> FaultyIo {
        FaultyIo::default()
    }

    /// A backend whose every fdatasync takes at least `delay` (a slow disk).
    pub fn with_sync_delay(delay: Duration) -> FaultyIo {
        let io = FaultyIo::default();
        io.sync_data_delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
        io
    }

    /// Make the `n`th fdatasync from now on (1 = the next one) fail with EIO.
    pub fn fail_sync_data_after(&self, n: u64) {
        let done = self.sync_data_calls.load(Ordering::SeqCst);
        self.fail_sync_data_from.store(done + n, Ordering::SeqCst);
    }

    /// Close (`true`) or open the sync gate: while closed, every
    /// `sync_data` waits for it to open (at most 30 s).
    pub fn hold_syncs(&self, hold: bool) {
        *self.sync_gate.lock().unwrap_or_else(|p| p.into_inner()) = hold;
        self.sync_gate_cv.notify_all();
    }

    fn pass_sync_gate(&self) {
        let deadline = std::time::Instant::now() + GATE_BOUND;
        let mut closed = self.sync_gate.lock().unwrap_or_else(|p| p.into_inner());
        while *closed {
            let now = std::time::Instant::now();
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

    /// Arm a torn write (see `TornWrite`).
    pub fn tear_next_write(&self, keep_bytes: usize) {
        *self.torn_write.lock().unwrap_or_else(|p| p.into_inner()) = Some(TornWrite { keep_bytes });
    }

    fn injected(what: &str) -> io::Error {
        io::Error::other(format!("injected {what} failure (EIO)"))
    }
}

impl WalIo for FaultyIo {
    fn write_at(&self, file: &File, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
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
            return Err(FaultyIo::injected("torn write"));
        }
        file.write_all_at(buf, offset)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        let n = self.sync_data_calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.pass_sync_gate();
        let delay_us = self.sync_data_delay_us.load(Ordering::Relaxed);
        if delay_us > 0 {
            std::thread::sleep(Duration::from_micros(delay_us));
        }
        let from = self.fail_sync_data_from.load(Ordering::SeqCst);
        if from != 0 && n >= from {
            return Err(FaultyIo::injected("fdatasync"));
        }
        file.sync_data()
    }

    fn sync_all(&self, file: &File) -> io::Result<()> {
        if self.fail_sync_metadata.load(Ordering::SeqCst) != 0 {
            return Err(FaultyIo::injected("fsync"));
        }
        file.sync_all()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.fail_sync_metadata.load(Ordering::SeqCst) != 0 {
            return Err(FaultyIo::injected("directory fsync"));
        }
        File::open(dir)?.sync_all()
    }
}
