//! The WAL writer: sessions insert records concurrently into a bounded
//! in-memory buffer (cheap: a copy under a short lock) and wait for them to
//! be durable with group commit.
//!
//! # Threading
//!
//! - `insert*` may be called from any number of threads; LSNs are assigned
//!   in call order under the insert lock.
//! - `wait_flushed` is PostgreSQL's XLogFlush: if no flush is in progress
//!   the calling session flushes everything inserted so far itself (no
//!   hand-off, so one client runs at the disk's fdatasync rate); otherwise
//!   it parks in an LSN-ordered queue. Whoever finishes a flush releases
//!   the waiters it covered in strict LSN order and nominates the first
//!   waiter it did not cover to flush next, so one fdatasync covers every
//!   commit that arrived during the previous one.
//! - A WAL-writer thread flushes asynchronous commits (`wal_writer_delay`,
//!   `wal_writer_flush_after`) and pre-allocates the next segment.
//! - Each batch is written to the segment files first; the written
//!   position is published on its own [`Watch`] before the fdatasync, so
//!   walsenders of walrep standbys send the WAL while it is made durable
//!   here (seed 003's "local write and transmit together"). The most
//!   recent written bytes are also kept in memory ([`Wal::read_recent`]),
//!   so walsenders send them without reading the segment file back.
//! - Whoever completes a flush runs the `FlushHook` (if installed) before
//!   publishing the new flush position, then publishes it on the flush
//!   [`Watch`] (walsenders subscribe to it): with nobody subscribed, a
//!   commit costs no wake-up of another thread.
//! - Any write or fdatasync failure poisons the writer: it stops, every
//!   waiter and every later call gets `WalError::Poisoned` naming the
//!   original error, and nothing retries an fsync.

mod buffer;
mod flush;
mod pacing;
mod queue;
mod shared;
mod startup;
mod stats;
mod tail;
mod walwriter;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use thiserror::Error;

pub use buffer::InsertedRecord;
pub use pacing::{MIN_FLUSH_SPACING, STREAMING_FLUSH_SPACING};
pub use stats::{WalStats, BATCH_BUCKETS};

use buffer::{InsertState, SegCtx};
use flush::FlushState;
use queue::{WaitQueue, Wake};
use shared::{FlushBy, Limits, Shared};
use stats::Counters;

use super::record::RecordError;
use super::segdir::{RecycleTarget, RemovalReport, RemovalRequest, SegmentDir, SegmentError};
use super::xlog::XlogRecord;
use crate::storage::{StdStorage, Storage};
use crate::watch::Watch;
use crate::{Lsn, SegNo, TimelineId, WalSegSize};

/// Bound of one park of a waiting session; a safety net against a lost
/// wake-up (counted in `WalStats::watchdog_wakeups`), not a polling interval.
const WAIT_WATCHDOG: Duration = Duration::from_secs(1);
/// Capacity of each subscriber's event channel.
const EVENT_CHANNEL_CAPACITY: usize = 1024;

/// Called inline by whoever completed a flush, with the new flush position,
/// before that position is published and before any waiter is released.
/// It runs under the flush lock: it must be short, must never wait for the
/// WAL (insert, flush, shutdown, drop the last `Arc<Wal>`), and may take
/// only locks that no thread holds while it inserts WAL or waits for it
/// (so not the store's map lock).
pub type FlushHook = Box<dyn Fn(Lsn) + Send + Sync>;

/// How to start the writer.
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// The WAL directory (`DATADIR/wal`).
    pub dir: PathBuf,
    /// Written into every segment header; the reader rejects other systems.
    pub system_id: u64,
    /// The timeline written; fixed for the life of this `Wal`.
    pub tli: TimelineId,
    /// The system's segment size (fixed at `walrep init`).
    pub seg_size: WalSegSize,
    /// Where the next record goes: the end of valid WAL found by recovery
    /// (`find_end_of_wal`), or `SegNo(1).start_lsn(seg_size)` for a new
    /// system. Everything on disk on this timeline past it is destroyed.
    pub start_lsn: Lsn,
    /// The last valid record's LSN: the first new record's prev-link.
    pub prev_record_lsn: Lsn,
    /// Create `archive_status/<segment>.ready` for each completed segment.
    pub archive_mode: bool,
    /// How often the WAL-writer thread flushes asynchronous commits.
    pub wal_writer_delay: Duration,
    /// Pending bytes that wake the WAL-writer thread at once (PostgreSQL
    /// wakes it for each full page of asynchronous commit WAL).
    pub wal_writer_flush_after_bytes: usize,
    /// Bound of the insert buffer; an inserter that finds it full flushes it.
    pub wal_buffers_bytes: usize,
    /// Where segments are written: the node's storage, `StdStorage` by
    /// default, a `FaultyStorage` in tests.
    pub storage: Arc<dyn Storage>,
    /// The directory handle to share with walsenders and removal; created
    /// if `None` (must use the same `storage` otherwise).
    pub segdir: Option<Arc<SegmentDir>>,
    /// Leave to the caller the fsync of `dir` that makes the names of the
    /// segments placed for this start durable: it owes one before anything
    /// durable names the timeline (a promotion runs it beside the flush of
    /// its end-of-recovery record, so the two are waited for together).
    /// Ignored when the start-up removed stale segments: their removal is
    /// made durable before anything is written. Also holds the background
    /// pre-allocation of the next segment (whose rename is followed by an
    /// fsync of `dir`) until [`Wal::release_preallocation`], so that no
    /// directory fsync of its own lands among the caller's syncs.
    pub dir_sync_by_caller: bool,
}

impl WalConfig {
    /// A configuration with PostgreSQL's defaults for the tunables.
    pub fn new(
        dir: impl Into<PathBuf>,
        system_id: u64,
        tli: TimelineId,
        seg_size: WalSegSize,
        start_lsn: Lsn,
        prev_record_lsn: Lsn,
    ) -> WalConfig {
        WalConfig {
            dir: dir.into(),
            system_id,
            tli,
            seg_size,
            start_lsn,
            prev_record_lsn,
            archive_mode: false,
            wal_writer_delay: Duration::from_millis(200),
            wal_writer_flush_after_bytes: 8 << 10,
            wal_buffers_bytes: 16 << 20,
            storage: Arc::new(StdStorage),
            segdir: None,
            dir_sync_by_caller: false,
        }
    }
}

/// Errors of the WAL writer.
#[derive(Debug, Clone, Error)]
pub enum WalError {
    /// A write or fsync failed earlier: the writer stopped for good, since
    /// the kernel may have dropped the data (PostgreSQL PANICs here). Every
    /// later call gets this; only a restart with recovery goes on.
    #[error("WAL writer stopped after an IO failure ({cause}); no further WAL can be written until the node is restarted and recovers")]
    Poisoned {
        /// The first failure, as its message.
        cause: Arc<str>,
    },
    /// [`Wal::shutdown`] ran; nothing more is inserted.
    #[error("WAL writer is shut down")]
    ShutDown,
    /// The record to insert is not acceptable (too large).
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A wait for a flush position that no inserted record reaches: it
    /// would never return.
    #[error("cannot wait for WAL up to {requested}: WAL is only inserted up to {inserted}")]
    FlushBeyondInsert {
        /// The position waited for.
        requested: Lsn,
        /// The end of the WAL inserted so far.
        inserted: Lsn,
    },
    /// The flush did not reach the position within the wait's bound; the
    /// WAL is inserted and may still become durable.
    #[error("WAL up to {requested} was not flushed in time (flushed up to {flushed}); the flush may still complete")]
    FlushTimeout {
        /// The position waited for.
        requested: Lsn,
        /// How far WAL was durable when the wait gave up.
        flushed: Lsn,
    },
    /// [`Wal::start`] was given a position or configuration it cannot
    /// write from.
    #[error("cannot start writing WAL at {lsn}: {reason}")]
    BadStart {
        /// The start position given.
        lsn: Lsn,
        /// What is wrong.
        reason: String,
    },
    /// Creating, opening or recycling a segment failed (shared, since
    /// every waiter gets the same error).
    #[error(transparent)]
    Segment(Arc<SegmentError>),
    /// The WAL writer thread could not be started; holds the OS error.
    #[error("could not start the WAL writer thread: {0}")]
    Spawn(String),
}

impl From<SegmentError> for WalError {
    fn from(e: SegmentError) -> WalError {
        WalError::Segment(Arc::new(e))
    }
}

/// What subscribers are told. These are wake-ups: they may be dropped when
/// a subscriber lags (counted), so act on `flushed()` and the `.ready`
/// files, not on the event count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalEvent {
    /// WAL is durable up to here.
    Flushed(Lsn),
    /// A segment was completely written and fsynced (and marked `.ready`
    /// when archiving).
    SegmentCompleted {
        /// The timeline of the segment.
        tli: TimelineId,
        /// The segment completed.
        segno: SegNo,
    },
    /// The writer stopped on an IO failure.
    Poisoned,
    /// The writer was shut down cleanly.
    ShutDown,
}

/// A running WAL writer. Share it with `Arc<Wal>`; dropping it shuts it down.
#[derive(Debug)]
pub struct Wal {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Wal {
    /// Prepare the directory (the end of valid WAL becomes the end of WAL on
    /// disk) and start the WAL-writer thread.
    pub fn start(cfg: WalConfig) -> Result<Wal, WalError> {
        let segdir = match cfg.segdir.clone() {
            Some(s) if s.seg_size() != cfg.seg_size => {
                return Err(WalError::BadStart {
                    lsn: cfg.start_lsn,
                    reason: format!(
                        "the shared SegmentDir has segment size {}, the configuration {}",
                        s.seg_size().bytes(),
                        cfg.seg_size.bytes()
                    ),
                })
            }
            Some(s) => s,
            None => Arc::new(SegmentDir::open(
                &cfg.dir,
                cfg.seg_size,
                cfg.storage.clone(),
            )?),
        };
        let ctx = SegCtx {
            tli: cfg.tli,
            system_id: cfg.system_id,
            seg_size: cfg.seg_size,
        };
        startup::prepare(&segdir, &ctx, cfg.start_lsn, cfg.dir_sync_by_caller)?;
        let (kick, kicks) = crossbeam_channel::bounded(1);
        let shared = Arc::new(Shared {
            ctx,
            archive_mode: cfg.archive_mode,
            limits: Limits {
                buffer_bytes: cfg.wal_buffers_bytes.max(1),
                flush_after_bytes: cfg.wal_writer_flush_after_bytes.max(1),
            },
            segdir,
            insert: Mutex::new(InsertState::new(cfg.start_lsn, cfg.prev_record_lsn)),
            flush: Mutex::new(FlushState::default()),
            queue: WaitQueue::default(),
            flushed: AtomicU64::new(cfg.start_lsn.0),
            inserted: AtomicU64::new(cfg.start_lsn.0),
            written: AtomicU64::new(cfg.start_lsn.0),
            written_watch: Watch::new(cfg.start_lsn),
            tail: tail::SharedTail::new(cfg.start_lsn),
            standby_followers: Watch::new(()),
            pacing: pacing::Pacing::default(),
            poison: OnceLock::new(),
            stopping: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            flush_watch: Watch::new(cfg.start_lsn),
            flush_hook: shared::HookSlot::default(),
            kick,
            subscribers: Mutex::new(Vec::new()),
            flush_subscribers: AtomicUsize::new(0),
            counters: Counters::default(),
            prealloc_below: AtomicU64::new(0),
            prealloc_held: AtomicBool::new(cfg.dir_sync_by_caller),
        });
        let sh = shared.clone();
        let delay = cfg.wal_writer_delay.max(Duration::from_millis(1));
        let thread = std::thread::Builder::new()
            .name("walwriter".into())
            .spawn(move || walwriter::run(sh, kicks, delay))
            .map_err(|e| WalError::Spawn(e.to_string()))?;
        Ok(Wal {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Insert a record; returns where the next record starts (wait for that
    /// to be flushed to make this one durable).
    pub fn insert(&self, rmid: u8, info: u8, payload: &[u8]) -> Result<Lsn, WalError> {
        Ok(self.insert_record(rmid, info, payload)?.end)
    }

    /// Insert a record; returns its start and end. Thread-safe; LSNs follow
    /// call order. Blocks only when the insert buffer is full (then this
    /// thread flushes it). Payloads over `MAX_PAYLOAD_LEN` are refused.
    pub fn insert_record(
        &self,
        rmid: u8,
        info: u8,
        payload: &[u8],
    ) -> Result<InsertedRecord, WalError> {
        self.shared.insert(rmid, info, payload, false)
    }

    /// Insert an XLOG record (checkpoint, end of recovery, ...). A `Switch`
    /// behaves as in `switch_segment` but is not waited for.
    pub fn log_xlog(&self, rec: &XlogRecord) -> Result<InsertedRecord, WalError> {
        let switch = matches!(rec, XlogRecord::Switch);
        let payload = rec.encode_payload();
        self.shared
            .insert(super::record::RM_XLOG, rec.info(), &payload, switch)
    }

    /// End the current segment (PostgreSQL's pg_switch_wal): insert a
    /// switch record, leave the rest of the segment zero and wait until it
    /// is flushed, so the segment is complete (and `.ready`). Returns the
    /// start of the next segment; a no-op when nothing has been written in
    /// the current segment yet (returns the current position).
    pub fn switch_segment(&self) -> Result<Lsn, WalError> {
        let rec = self.log_xlog(&XlogRecord::Switch)?;
        self.wait_flushed(rec.end)?;
        Ok(rec.end)
    }

    /// Write the WAL inserted so far to its segment file without waiting
    /// for the disk, so walsenders of walrep standbys send it before the
    /// flush that makes it durable starts (called where that flush will
    /// run on another thread). Skipped when a flush is in progress (it
    /// writes it) or the WAL crosses a segment boundary (completing a
    /// segment waits for the disk). An IO failure poisons the writer as
    /// a flush's would.
    pub fn write_ahead(&self) -> Result<(), WalError> {
        self.shared.write_ahead()
    }

    /// Commits at `synchronous_commit = off` were answered. While a walrep
    /// standby streams, the first of them since the last flush wakes the
    /// WAL-writer thread, and if that thread is overdue with the pending
    /// WAL (it waits for a core), this flushes it on the caller's thread,
    /// which has one: only if the flush lock is free and the last flush
    /// was quick, so it never waits for another flush.
    pub fn after_async_commit(&self) -> Result<(), WalError> {
        self.shared.after_async_commit()
    }

    /// Wait until all WAL before `lsn` is durable. Group commit: see the
    /// module docs. `lsn` must not be beyond `inserted()`. Waits as long as
    /// the disk takes (PostgreSQL does too); see `wait_flushed_timeout`.
    pub fn wait_flushed(&self, lsn: Lsn) -> Result<(), WalError> {
        self.wait_flushed_until(lsn, None)
    }

    /// `wait_flushed` with a bound: `WalError::FlushTimeout` if the WAL is
    /// not durable within `timeout` (the commit's fate is then unknown; it
    /// may still become durable).
    pub fn wait_flushed_timeout(&self, lsn: Lsn, timeout: Duration) -> Result<(), WalError> {
        self.wait_flushed_until(lsn, Some(Instant::now() + timeout))
    }

    fn wait_flushed_until(&self, lsn: Lsn, deadline: Option<Instant>) -> Result<(), WalError> {
        let sh = &*self.shared;
        let inserted = sh.inserted();
        if lsn > inserted {
            return Err(WalError::FlushBeyondInsert {
                requested: lsn,
                inserted,
            });
        }
        loop {
            if sh.flushed() >= lsn {
                return Ok(());
            }
            sh.check_poison()?;
            if let Some(g) = sh.try_lock_flush() {
                sh.flush_and_release(g, FlushBy::Session)?;
                continue;
            }
            let bound = match deadline.map(|d| d.checked_duration_since(Instant::now())) {
                None => WAIT_WATCHDOG,
                Some(Some(left)) if !left.is_zero() => left.min(WAIT_WATCHDOG),
                Some(_) => {
                    return Err(WalError::FlushTimeout {
                        requested: lsn,
                        flushed: sh.flushed(),
                    })
                }
            };
            self.park(lsn, bound)?;
        }
    }

    /// Queue up behind the flush in progress until released, nominated or
    /// `bound` passes.
    fn park(&self, lsn: Lsn, bound: Duration) -> Result<(), WalError> {
        let sh = &*self.shared;
        let w = sh.queue.register(lsn);
        if sh.flushed() < lsn && sh.poison.get().is_none() {
            if let Some(g) = sh.try_lock_flush() {
                sh.queue.deregister(&w);
                return sh.flush_and_release(g, FlushBy::Session);
            }
            Counters::add(&sh.counters.waits_parked, 1);
            if w.wait(bound) == Wake::TimedOut && bound == WAIT_WATCHDOG {
                Counters::add(&sh.counters.watchdog_wakeups, 1);
            }
        }
        sh.queue.deregister(&w);
        Ok(())
    }

    /// Flush everything inserted so far; returns the flushed position.
    pub fn flush(&self) -> Result<Lsn, WalError> {
        let end = self.inserted();
        self.wait_flushed(end)?;
        Ok(self.flushed())
    }

    /// Everything before this LSN is durable.
    pub fn flushed(&self) -> Lsn {
        self.shared.flushed()
    }

    /// End of the WAL inserted so far (a valid record position, usable as
    /// a checkpoint's redo point).
    pub fn inserted(&self) -> Lsn {
        self.shared.inserted()
    }

    /// End of the WAL written to the segment files, durable or not (never
    /// behind `flushed()`): WAL up to here can be read from the files and
    /// sent to standbys that wait for the flush position before they
    /// expose it, in parallel with the fdatasync that makes it durable.
    pub fn written(&self) -> Lsn {
        self.shared.written()
    }

    /// Fill `buf` with the WAL at `start` on timeline `tli` if it is among
    /// the most recent bytes written (about 1 MB, kept in memory): a
    /// walsender then sends just-written WAL without reading it back from
    /// the segment file. False (`buf` untouched) if any of it is older,
    /// not written yet or on another timeline: read the file.
    pub fn read_recent(&self, tli: TimelineId, start: Lsn, buf: &mut [u8]) -> bool {
        tli == self.shared.ctx.tli && self.shared.read_tail(start, buf)
    }

    /// The written position as a [`Watch`]: published after a batch is
    /// written, before its fdatasync; closed with [`Wal::flush_watch`].
    pub fn written_watch(&self) -> &Watch<Lsn> {
        &self.shared.written_watch
    }

    /// Walsenders of walrep standbys register here (with
    /// [`crate::watch::Subscription::also`]; nothing is ever published):
    /// while one is live, the WAL writer flushes every
    /// [`STREAMING_FLUSH_SPACING`] instead of [`MIN_FLUSH_SPACING`].
    pub fn standby_followers(&self) -> &Watch<()> {
        &self.shared.standby_followers
    }

    /// The shortest time the WAL writer leaves between the starts of two
    /// of its flushes now (see [`Wal::standby_followers`]).
    pub fn flush_spacing(&self) -> Duration {
        walwriter::spacing(&self.shared)
    }

    /// Wait (without polling) until `flushed() > lsn` or `timeout` passes;
    /// returns `flushed()` either way. Built on [`Wal::flush_watch`].
    /// Errors once the writer is poisoned, or shut down with nothing beyond `lsn`.
    pub fn wait_flush_beyond(&self, lsn: Lsn, timeout: Duration) -> Result<Lsn, WalError> {
        let sh = &*self.shared;
        match sh.flush_watch.wait_until(|f| *f > lsn, timeout) {
            Ok(flushed) => Ok(flushed),
            Err(flushed) => {
                sh.check_poison()?;
                if sh.stopped.load(Ordering::Acquire) {
                    return Err(WalError::ShutDown);
                }
                Ok(flushed)
            }
        }
    }

    /// The flush position as a [`Watch`]: published after every flush
    /// (after the `FlushHook`), closed when the writer is poisoned or shut
    /// down. Subscribe to be woken when WAL becomes durable.
    pub fn flush_watch(&self) -> &Watch<Lsn> {
        &self.shared.flush_watch
    }

    /// A channel of every `WalEvent` (bounded; see `WalEvent`). A
    /// `Flushed` event per flush costs the flusher a wake-up of the
    /// subscriber: use `subscribe_segments` or `set_flush_hook` when the
    /// flush position is not needed as an event.
    pub fn subscribe(&self) -> Receiver<WalEvent> {
        self.subscribe_with(true)
    }

    /// A channel of the `WalEvent`s other than `Flushed` (completed
    /// segments, poisoning, shutdown).
    pub fn subscribe_segments(&self) -> Receiver<WalEvent> {
        self.subscribe_with(false)
    }

    fn subscribe_with(&self, flushed: bool) -> Receiver<WalEvent> {
        let (tx, rx) = crossbeam_channel::bounded(EVENT_CHANNEL_CAPACITY);
        let mut subs = self
            .shared
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        subs.push((tx, flushed));
        if flushed {
            self.shared.flush_subscribers.fetch_add(1, Ordering::AcqRel);
        }
        rx
    }

    /// Install the hook every flush calls (see `FlushHook`); only the
    /// first one is kept. Returns false if one was already installed.
    /// Taken under the flush lock, so every flush either ran the hook or
    /// was published before this returns: `flushed()` read afterwards
    /// covers whatever the hook missed. Never call it from a hook.
    pub fn set_flush_hook(&self, hook: FlushHook) -> bool {
        let _flush = self.shared.lock_flush();
        self.shared.flush_hook.0.set(hook).is_ok()
    }

    /// Counters since start.
    pub fn stats(&self) -> WalStats {
        self.shared.counters.snapshot(&self.shared.segdir.counters)
    }

    /// The directory handle (share it with walsenders' `RawReader`s so they
    /// notice recycled segments).
    pub fn segment_dir(&self) -> &Arc<SegmentDir> {
        &self.shared.segdir
    }

    /// The timeline this writer writes (from [`WalConfig`], fixed for
    /// the writer's life).
    pub fn timeline(&self) -> TimelineId {
        self.shared.ctx.tli
    }

    /// The system identifier stamped into every segment header.
    pub fn system_id(&self) -> u64 {
        self.shared.ctx.system_id
    }

    /// The size of the segments written (`wal_segment_size`).
    pub fn seg_size(&self) -> WalSegSize {
        self.shared.ctx.seg_size
    }

    /// The IO failure that stopped the writer, if any.
    pub fn poisoned(&self) -> Option<WalError> {
        self.shared.check_poison().err()
    }

    /// Remove or recycle segments below `horizon` (clamped so that no
    /// segment at or after the flush position goes). Up to `max_future`
    /// files are kept as future segments of this timeline (PostgreSQL sizes
    /// this from max_wal_size); `.ready` segments are never touched.
    pub fn remove_old_segments(
        &self,
        horizon: SegNo,
        max_future: u64,
    ) -> Result<RemovalReport, WalError> {
        let seg_size = self.seg_size();
        let horizon = horizon.min(self.flushed().segno(seg_size));
        let first = self.inserted().segno(seg_size).next();
        let req = RemovalRequest {
            horizon,
            archive_mode: self.shared.archive_mode,
            recycle: (max_future > 0).then_some(RecycleTarget {
                tli: self.timeline(),
                first,
                max_future,
            }),
        };
        Ok(self.shared.segdir.remove_old(&req)?)
    }

    /// Let the WAL-writer thread pre-allocate the next segment (held from
    /// the start when `WalConfig::dir_sync_by_caller`), and wake it to do so.
    pub fn release_preallocation(&self) {
        self.shared.prealloc_held.store(false, Ordering::Release);
        self.shared.kick();
    }

    /// Flush everything, stop the WAL-writer thread and refuse further
    /// inserts. Idempotent. Returns the final flushed position.
    pub fn shutdown(&self) -> Result<Lsn, WalError> {
        let sh = &*self.shared;
        sh.insert
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .shut_down = true;
        let flushed = match sh.check_poison() {
            Ok(()) => sh.flush_and_release(sh.lock_flush(), FlushBy::Writer),
            Err(e) => Err(e),
        };
        sh.stopping.store(true, Ordering::Release);
        sh.kick();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
            if flushed.is_ok() {
                sh.publish(WalEvent::ShutDown);
            }
        }
        sh.close_subscribers();
        sh.stopped.store(true, Ordering::Release);
        sh.queue.release_all();
        sh.flush_watch.close();
        sh.written_watch.close();
        flushed.map(|()| sh.flushed())
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "WAL writer dropped without a clean shutdown");
        }
    }
}
