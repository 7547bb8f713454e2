//! Counters of the WAL writer, for tests (group commit must show far fewer
//! fdatasync calls than commits), INFO and metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::wal::segdir::DirCounters;

/// Buckets of the batch-size histogram: records per flush in
/// `[1], [2,3], [4,7], ... [128, ∞)`.
pub const BATCH_BUCKETS: usize = 8;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub flushes: AtomicU64,
    pub fsyncs: AtomicU64,
    pub flushed_records: AtomicU64,
    pub max_batch_records: AtomicU64,
    pub session_flushes: AtomicU64,
    pub writer_flushes: AtomicU64,
    pub backpressure_flushes: AtomicU64,
    pub waits_parked: AtomicU64,
    pub watchdog_wakeups: AtomicU64,
    pub events_dropped: AtomicU64,
    pub segments_completed: AtomicU64,
    pub prealloc_failures: AtomicU64,
    pub batch_hist: [AtomicU64; BATCH_BUCKETS],
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Account one flush that wrote `records` records.
    pub fn flushed_batch(&self, records: u64) {
        Counters::add(&self.flushes, 1);
        Counters::add(&self.flushed_records, records);
        self.max_batch_records.fetch_max(records, Ordering::Relaxed);
        let bucket = (64 - records.max(1).leading_zeros() as usize - 1).min(BATCH_BUCKETS - 1);
        Counters::add(&self.batch_hist[bucket], 1);
    }

    pub fn snapshot(&self, dir: &DirCounters) -> WalStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WalStats {
            records: g(&self.records),
            bytes: g(&self.bytes),
            flushes: g(&self.flushes),
            fsyncs: g(&self.fsyncs),
            flushed_records: g(&self.flushed_records),
            max_batch_records: g(&self.max_batch_records),
            session_flushes: g(&self.session_flushes),
            writer_flushes: g(&self.writer_flushes),
            backpressure_flushes: g(&self.backpressure_flushes),
            waits_parked: g(&self.waits_parked),
            watchdog_wakeups: g(&self.watchdog_wakeups),
            events_dropped: g(&self.events_dropped),
            segments_completed: g(&self.segments_completed),
            segments_created: g(&dir.created),
            segments_recycled: g(&dir.recycled),
            segments_removed: g(&dir.removed),
            prealloc_failures: g(&self.prealloc_failures),
            batch_hist: std::array::from_fn(|i| g(&self.batch_hist[i])),
        }
    }
}

/// A snapshot of the writer's counters since `Wal::start`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Records inserted.
    pub records: u64,
    /// Bytes of WAL inserted (headers and padding included).
    pub bytes: u64,
    /// Flushes that wrote something.
    pub flushes: u64,
    /// fdatasync calls on segment files.
    pub fsyncs: u64,
    /// Records made durable by those flushes.
    pub flushed_records: u64,
    /// Most records one flush covered.
    pub max_batch_records: u64,
    /// Flushes done by a committing session itself (PostgreSQL's XLogFlush).
    pub session_flushes: u64,
    /// Flushes done by the WAL-writer thread (async commits, timers).
    pub writer_flushes: u64,
    /// Flushes forced because the insert buffer was full.
    pub backpressure_flushes: u64,
    /// `wait_flushed` calls that had to park (a flush was in progress).
    pub waits_parked: u64,
    /// Parks that ended at the 1 s safety bound rather than by a flusher:
    /// a flush slower than 1 s, or a lost wake-up (should stay 0).
    pub watchdog_wakeups: u64,
    /// Events not delivered because a subscriber's channel was full.
    pub events_dropped: u64,
    /// Segments written to their end and fsynced.
    pub segments_completed: u64,
    /// Segment files created (pre-allocated) through this directory handle.
    pub segments_created: u64,
    /// Old segments renamed to future names.
    pub segments_recycled: u64,
    /// Old segments deleted.
    pub segments_removed: u64,
    /// Background pre-allocations that failed (retried later).
    pub prealloc_failures: u64,
    /// Histogram of records per flush, see `BATCH_BUCKETS`.
    pub batch_hist: [u64; BATCH_BUCKETS],
}

impl WalStats {
    /// Mean records per flush (the group-commit factor).
    pub fn mean_batch_records(&self) -> f64 {
        if self.flushes == 0 {
            0.0
        } else {
            self.flushed_records as f64 / self.flushes as f64
        }
    }
}
