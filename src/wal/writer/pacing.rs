//! When asynchronous WAL is due to be flushed, and who flushes it when the
//! WAL-writer thread is late.
//!
//! A commit at `synchronous_commit = off` is answered before its WAL is
//! flushed, and an asynchronous standby may expose only what this node
//! flushed: while a walrep standby streams, the time from the reply to
//! the WAL writer's next flush is part of how soon the key is readable
//! there. Two things made that time long under load:
//!
//! - the WAL writer woke only for `wal_writer_flush_after` bytes (or
//!   `wal_writer_delay`), so its flushes were as far apart as that many
//!   bytes took to insert, not [`STREAMING_FLUSH_SPACING`]; now, while a
//!   standby streams, the first asynchronous commit answered after a
//!   flush wakes it, and it flushes one spacing after the last flush
//!   started (commits that wait for a flush make it themselves, so they
//!   wake nobody);
//! - on two cores shared with the clients' Redis worker, the WAL writer
//!   then waited milliseconds for a core. A session whose commit finds the
//!   oldest pending record [`OVERDUE_AFTER`] old, the flush lock free and
//!   the last flush quick flushes itself, as PostgreSQL's backends write
//!   WAL themselves when the WAL writer has not: it already has a core.
//!   Never a wait for the lock (`try_lock`), so a session never queues
//!   behind a flush for WAL nobody waits for; and not on a slow disk
//!   (last flush over [`SESSION_FLUSH_MAX`]): the session's clients would
//!   wait out the fdatasync that the WAL writer takes off their path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Shortest time between the starts of two of the WAL-writer thread's flushes.
pub const MIN_FLUSH_SPACING: Duration = Duration::from_millis(5);
/// [`MIN_FLUSH_SPACING`] while a walrep standby streams.
/// 1 ms: at 2 ms the key-visibility median on the standby was 2.2 ms,
/// at 1 ms 0.65 ms, at load 130k SET/s with no loss of throughput beyond
/// the noise (docs/benchmarks/visibility.md, "Key visibility on an async
/// standby: its own fsync off the path").
pub const STREAMING_FLUSH_SPACING: Duration = Duration::from_millis(1);
/// Age of the oldest pending record at which a committing session flushes
/// in the WAL writer's place: one spacing after the writer was due.
pub const OVERDUE_AFTER: Duration = Duration::from_millis(2);
/// A session flushes for the WAL writer only while flushes take at most
/// this long (the last one's duration): its clients wait for it.
pub const SESSION_FLUSH_MAX: Duration = Duration::from_micros(500);

const _: () = assert!(OVERDUE_AFTER.as_micros() > STREAMING_FLUSH_SPACING.as_micros());

/// Shared timing of the pending WAL, in µs since `epoch` (0: none).
#[derive(Debug)]
pub(crate) struct Pacing {
    epoch: Instant,
    /// When the oldest record not yet taken by a flush was inserted
    /// (+1, so that 0 means "nothing pending"); set under the insert lock.
    pending_since_us: AtomicU64,
    /// When the last flush that took WAL started (+1; 0: none yet), by
    /// whoever ran it: the WAL writer spaces its own flushes from it.
    last_flush_start_us: AtomicU64,
    /// How long the last flush took (write + fdatasync).
    last_flush_us: AtomicU64,
    /// A walrep standby streams: from `standby_followers`, looked at by the
    /// WAL writer on each round and by the first asynchronous commit of
    /// each batch (the writer may sleep `wal_writer_delay`).
    pub streaming: AtomicBool,
    /// An asynchronous commit of the pending batch looked (see
    /// [`Pacing::first_async_commit`]).
    woken: AtomicBool,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            epoch: Instant::now(),
            pending_since_us: AtomicU64::new(0),
            last_flush_start_us: AtomicU64::new(0),
            last_flush_us: AtomicU64::new(0),
            streaming: AtomicBool::new(false),
            woken: AtomicBool::new(false),
        }
    }
}

impl Pacing {
    fn us(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64 + 1
    }

    /// A record entered an empty insert buffer (under the insert lock).
    pub fn first_pending(&self) {
        self.pending_since_us
            .store(self.us(Instant::now()), Ordering::Release);
    }

    /// A flusher took the pending batch (under the insert lock).
    pub fn taken(&self) {
        self.pending_since_us.store(0, Ordering::Release);
        self.woken.store(false, Ordering::Release);
    }

    /// True for the first asynchronous commit answered since the pending
    /// batch began: it decides whether the WAL writer is woken for it.
    pub fn first_async_commit(&self) -> bool {
        !self.woken.swap(true, Ordering::AcqRel)
    }

    /// A flush that took a batch started at `at`.
    pub fn flush_started(&self, at: Instant) {
        self.last_flush_start_us
            .store(self.us(at), Ordering::Release);
    }

    fn at(&self, us: u64) -> Option<Instant> {
        match us {
            0 => None,
            us => Some(self.epoch + Duration::from_micros(us - 1)),
        }
    }

    /// When the oldest pending record was inserted, if any.
    pub fn pending_since(&self) -> Option<Instant> {
        self.at(self.pending_since_us.load(Ordering::Acquire))
    }

    /// When the last flush that took WAL started, if any did.
    pub fn last_flush_start(&self) -> Option<Instant> {
        self.at(self.last_flush_start_us.load(Ordering::Acquire))
    }

    pub fn flush_took(&self, d: Duration) {
        self.last_flush_us
            .store(d.as_micros() as u64, Ordering::Release);
    }

    /// Whether a committing session should flush in the WAL writer's
    /// place now (see the module doc); the caller still try-locks.
    pub fn writer_overdue(&self, now: Instant) -> bool {
        if !self.streaming.load(Ordering::Acquire) {
            return false;
        }
        let Some(since) = self.pending_since() else {
            return false;
        };
        now.saturating_duration_since(since) >= OVERDUE_AFTER
            && self.last_flush_us.load(Ordering::Acquire) <= SESSION_FLUSH_MAX.as_micros() as u64
    }
}
