//! The WAL-writer thread (PostgreSQL's walwriter): flushes WAL that nobody
//! waits for (asynchronous commits) every `wal_writer_delay`, or soon
//! after `wal_writer_flush_after` bytes are pending, and pre-allocates the
//! next segment ahead of need so that crossing into it costs no file
//! creation.
//!
//! # How often it flushes under load
//! Woken by every `wal_writer_flush_after` bytes of asynchronous WAL, it
//! would flush as often as the disk allows: one fdatasync per ~100 records
//! on a fast disk, many times more flushes (and wake-ups of everyone who
//! follows the flush position) than the same load needs on a slow one.
//! So its own flushes start at least [`MIN_FLUSH_SPACING`] apart, unless
//! [`FLUSH_AT_ONCE_BYTES`] are pending: asynchronous WAL becomes durable
//! at most that much later, and under a steady load each flush covers
//! hundreds of records whatever the disk's speed. While a walrep standby
//! streams (its walsender registers in `standby_followers`, whether it is
//! sent WAL before the flush or only after), the spacing is
//! [`STREAMING_FLUSH_SPACING`] instead: a standby applies only WAL the
//! primary has flushed, so the spacing is also the longest an asynchronous
//! write waits before it can reach a standby's readers; there the shorter
//! wait is worth the smaller batches (docs/benchmarks/replication-lag.md,
//! "The standby's segment files"). Sessions that wait for a flush
//! (`synchronous_commit` above `off`) flush themselves and never wait for
//! this thread.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::pacing::{MIN_FLUSH_SPACING, STREAMING_FLUSH_SPACING};
use super::shared::{FlushBy, Shared};

/// Pending bytes that are flushed without waiting out the spacing
/// (PostgreSQL's default `wal_writer_flush_after`).
pub(crate) const FLUSH_AT_ONCE_BYTES: u64 = 1 << 20;

/// Run until shutdown or poisoning.
pub(crate) fn run(shared: Arc<Shared>, kicks: Receiver<()>, delay: Duration) {
    let _span = tracing::info_span!("walwriter", tli = shared.ctx.tli.0).entered();
    shared.preallocate_ahead();
    loop {
        // A timeout and a kick mean the same: look for work.
        let _ = kicks.recv_timeout(delay);
        let spacing = spacing(&shared);
        // Spaced from the last flush whoever ran it (a session may have
        // flushed in this thread's place, see `pacing`).
        if let Some(at) = shared.pacing.last_flush_start() {
            space_out(&shared, &kicks, at + spacing.min(delay));
        }
        if shared.poison.get().is_some() {
            break;
        }
        let stopping = shared.stopping.load(Ordering::Acquire);
        if shared.inserted() > shared.flushed() {
            let g = shared.lock_flush();
            if shared.flush_and_release(g, FlushBy::Writer).is_err() {
                break;
            }
        }
        if stopping {
            break;
        }
        shared.preallocate_ahead();
    }
    tracing::debug!("WAL writer exiting");
}

/// The spacing of the next flush: shorter while a walrep standby streams
/// (its walsender registers in `standby_followers`, see the module doc).
/// Not "while someone follows the written position": only walsenders of
/// candidate synchronous standbys are sent WAL before the flush and
/// follow it, so with only asynchronous standbys the spacing stayed at
/// 5 ms, and so did the key-visibility median on them. Not the flush
/// position's subscribers either: pg_receivewal's walsender follows it,
/// and should not make the primary flush five times as often.
/// Also tells the insert path whether a standby streams (`pacing`).
pub(super) fn spacing(shared: &Shared) -> Duration {
    let streaming = shared.standby_followers.has_subscribers();
    shared.pacing.streaming.store(streaming, Ordering::Release);
    if streaming {
        STREAMING_FLUSH_SPACING
    } else {
        MIN_FLUSH_SPACING
    }
}

/// Wait until `until` before the next flush, ending early when the
/// writer stops, is poisoned, or [`FLUSH_AT_ONCE_BYTES`] are pending.
/// Bounded by `until` (at most [`MIN_FLUSH_SPACING`] away).
fn space_out(shared: &Shared, kicks: &Receiver<()>, until: Instant) {
    loop {
        let now = Instant::now();
        let pending = shared.inserted().0.saturating_sub(shared.flushed().0);
        if now >= until
            || pending >= FLUSH_AT_ONCE_BYTES
            || shared.stopping.load(Ordering::Acquire)
            || shared.poison.get().is_some()
        {
            return;
        }
        // Kicks (a new segment entered, shutdown, poisoning) end the wait
        // early so the conditions above are looked at again.
        let _ = kicks.recv_timeout(until - now);
    }
}
