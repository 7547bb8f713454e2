//! The state sessions, the WAL-writer thread and walsenders share, and the
//! insert and flush paths on it.
//!
//! Locks, always taken in this order: flush lock -> insert lock; flush
//! lock -> subscribers lock; flush lock -> whatever the flush hook takes
//! (leaf locks of its owner, see `FlushHook`). The wait queue lock, the
//! flush watch's lock and the tail lock are leaves: nothing is taken while
//! holding them.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::Instant;

use crossbeam_channel::{Sender, TrySendError};

use super::buffer::{InsertState, InsertedRecord, SegCtx};
use super::flush::{FlushCtx, FlushState};
use super::pacing::Pacing;
use super::queue::WaitQueue;
use super::stats::Counters;
use super::tail::SharedTail;
use super::{FlushHook, WalError, WalEvent};
use crate::wal::record::{payload_crc, RecordHeader, RM_XLOG};
use crate::wal::segdir::SegmentDir;
use crate::wal::segment::SEG_HEADER_SIZE;
use crate::wal::xlog::XLOG_SWITCH;
use crate::watch::Watch;
use crate::Lsn;

/// Who flushed (for stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlushBy {
    /// A committing session (PostgreSQL's XLogFlush in a backend).
    Session,
    /// The WAL-writer thread.
    Writer,
    /// An inserter that found the buffer full.
    Backpressure,
}

/// Tunables fixed at start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most bytes the insert buffer holds before inserters flush it.
    pub buffer_bytes: usize,
    /// Pending bytes at which the WAL-writer thread is woken.
    pub flush_after_bytes: usize,
}

#[derive(Debug)]
pub(crate) struct Shared {
    /// What segment headers say.
    pub ctx: SegCtx,
    /// Mark completed segments `.ready`.
    pub archive_mode: bool,
    pub limits: Limits,
    pub segdir: Arc<SegmentDir>,
    /// The insert lock: the buffer and the prev-link.
    pub insert: Mutex<InsertState>,
    /// The flush lock: held while writing and fdatasyncing.
    pub flush: Mutex<FlushState>,
    /// Sessions waiting for a flush, in LSN order.
    pub queue: WaitQueue,
    /// Everything before this LSN is durable.
    pub flushed: AtomicU64,
    /// End of the WAL inserted so far.
    pub inserted: AtomicU64,
    /// End of the WAL written to the segment files (in the page cache,
    /// maybe not durable yet): what walrep standbys may be sent while the
    /// fdatasync runs. Never behind `flushed`.
    pub written: AtomicU64,
    /// The most recent WAL written, for walsenders to send from memory
    /// (see `tail`): appended under the flush lock before `written` moves,
    /// unless a walsender is reading it then (the writer never waits).
    pub tail: SharedTail,
    /// `written` for those who wait for it to move (walsenders of walrep
    /// standbys): published after a batch's writes, before its fdatasync;
    /// closed with `flush_watch`.
    pub written_watch: Watch<Lsn>,
    /// One live subscription per walsender of a walrep standby, never
    /// published (it only counts them): while any is live, the WAL writer
    /// flushes at its streaming spacing (see `walwriter`), since such a
    /// standby exposes only WAL this node has flushed.
    pub standby_followers: Watch<()>,
    /// When pending WAL is due, and whether a session should flush it in
    /// the WAL writer's place (see `pacing`).
    pub pacing: Pacing,
    /// The first IO failure: once set, nothing is written any more.
    pub poison: OnceLock<Arc<str>>,
    /// The WAL-writer thread should finish.
    pub stopping: AtomicBool,
    /// Shutdown completed: no WAL will ever be added.
    pub stopped: AtomicBool,
    /// The flush position for those who wait for it to move (walsenders):
    /// published after every flush, closed when the writer stops (poisoned
    /// or shut down). `flushed` stays the group commit's own, lock-free
    /// copy; this one only wakes.
    pub flush_watch: Watch<Lsn>,
    /// Runs inline after every fdatasync, before the new position is
    /// published and before any waiter is released (the node advances
    /// read visibility here, so no thread hop sits between a flush and
    /// what it makes visible).
    pub flush_hook: HookSlot,
    /// Wakes the WAL-writer thread (bounded(1): kicks coalesce).
    pub kick: Sender<()>,
    /// Event channels of `Wal::subscribe*` callers, each with whether it
    /// wants `WalEvent::Flushed`.
    pub subscribers: Mutex<Vec<(Sender<WalEvent>, bool)>>,
    /// Subscribers that want `WalEvent::Flushed`: with none, a flush
    /// publishes nothing (no lock, no wake-up).
    pub flush_subscribers: AtomicUsize,
    pub counters: Counters,
    /// 1 + the highest segment number pre-allocated in the background.
    pub prealloc_below: AtomicU64,
    /// Background pre-allocation waits for `Wal::release_preallocation`
    /// (see `WalConfig::dir_sync_by_caller`).
    pub prealloc_held: AtomicBool,
}

/// Where the flush hook lives (a newtype so `Shared` stays `Debug`).
#[derive(Default)]
pub(crate) struct HookSlot(pub OnceLock<FlushHook>);

impl std::fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "HookSlot(set)"
        } else {
            "HookSlot(empty)"
        })
    }
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn flushed(&self) -> Lsn {
        Lsn(self.flushed.load(Ordering::Acquire))
    }

    pub fn inserted(&self) -> Lsn {
        Lsn(self.inserted.load(Ordering::Acquire))
    }

    pub fn written(&self) -> Lsn {
        Lsn(self.written.load(Ordering::Acquire))
    }

    /// Fill `buf` with the WAL at `start` from the tail of what was
    /// written; false if the tail does not hold all of it.
    pub fn read_tail(&self, start: Lsn, buf: &mut [u8]) -> bool {
        self.tail.read(start, buf)
    }

    pub fn check_poison(&self) -> Result<(), WalError> {
        match self.poison.get() {
            Some(cause) => Err(WalError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    pub fn lock_flush(&self) -> MutexGuard<'_, FlushState> {
        relock(&self.flush)
    }

    pub fn try_lock_flush(&self) -> Option<MutexGuard<'_, FlushState>> {
        match self.flush.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    pub fn kick(&self) {
        let _ = self.kick.try_send(());
    }

    /// Insert one record; see `Wal::insert_record`.
    pub fn insert(
        &self,
        rmid: u8,
        info: u8,
        payload: &[u8],
        switch: bool,
    ) -> Result<InsertedRecord, WalError> {
        // Readers treat every XLOG switch record as one, however inserted.
        let switch = switch || (rmid == RM_XLOG && info == XLOG_SWITCH);
        RecordHeader::tot_len_for(payload.len())?;
        let crc = payload_crc(payload);
        let needed = InsertState::needed_bytes(payload.len(), self.ctx.seg_size);
        loop {
            let mut st = relock(&self.insert);
            self.check_poison()?;
            if st.shut_down {
                return Err(WalError::ShutDown);
            }
            let pending = st.pending.bytes.len();
            if pending > 0 && pending + needed > self.limits.buffer_bytes {
                drop(st);
                self.make_room()?;
                continue;
            }
            if switch && at_segment_start(st.pending.end, &self.ctx) {
                let end = st.pending.end;
                return Ok(InsertedRecord { start: end, end });
            }
            let entered = st.segments_entered;
            if st.pending.is_empty() {
                self.pacing.first_pending();
            }
            let rec = st.append(&self.ctx, rmid, info, payload, &crc, switch);
            self.inserted.store(rec.end.0, Ordering::Release);
            let after = st.pending.bytes.len();
            let fa = self.limits.flush_after_bytes;
            let kick = st.segments_entered != entered || (pending < fa && after >= fa);
            drop(st);
            Counters::add(&self.counters.records, 1);
            Counters::add(&self.counters.bytes, rec.end.0 - rec.start.0);
            if kick {
                self.kick();
            }
            return Ok(rec);
        }
    }

    /// A session answered commits at `off`. While a standby streams: the
    /// first such commit of the pending batch wakes the WAL writer (it
    /// flushes one spacing after its last flush, not only after
    /// `flush_after_bytes` more); and if the writer is overdue, the flush
    /// lock free and the disk quick, the session flushes here (see
    /// `pacing`). Never waits for the lock.
    pub fn after_async_commit(&self) -> Result<(), WalError> {
        if self.pacing.pending_since().is_none() {
            return Ok(());
        }
        if self.pacing.first_async_commit() {
            // The followers' lock is a leaf, taken once per batch here.
            let streaming = self.standby_followers.has_subscribers();
            self.pacing.streaming.store(streaming, Ordering::Release);
            if streaming {
                self.kick();
            }
        }
        if !self.pacing.writer_overdue(Instant::now()) {
            return Ok(());
        }
        let Some(g) = self.try_lock_flush() else {
            return Ok(());
        };
        self.flush_and_release(g, FlushBy::Session)
    }

    /// The insert buffer is full: flush it (or wait for whoever is).
    fn make_room(&self) -> Result<(), WalError> {
        Counters::add(&self.counters.backpressure_flushes, 1);
        let g = self.lock_flush();
        self.flush_and_release(g, FlushBy::Backpressure)
    }

    /// Flush everything inserted, then release the waiters it covered and
    /// nominate the next flusher. Consumes the flush lock.
    pub fn flush_and_release(
        &self,
        mut g: MutexGuard<'_, FlushState>,
        by: FlushBy,
    ) -> Result<(), WalError> {
        let res = self.flush_locked(&mut g, by);
        drop(g);
        match res {
            Ok(true) => {
                self.queue.release(|| self.flushed(), true);
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => {
                self.queue.release_all();
                Err(e)
            }
        }
    }

    fn flush_ctx(&self) -> FlushCtx<'_> {
        FlushCtx {
            segdir: &self.segdir,
            tli: self.ctx.tli,
            archive_mode: self.archive_mode,
            counters: &self.counters,
        }
    }

    /// Write the pending WAL to its segment file without waiting for the
    /// disk, and publish the written position: walsenders of walrep
    /// standbys send it at once, while the flush that makes it durable
    /// is still to start (a Redis worker calls this before it hands a
    /// commit that waits for standbys to its committer thread, so the
    /// standby's half of the commit no longer waits for that thread to
    /// wake). Only when the flush lock is free (a flush in progress
    /// writes it anyway) and the batch stays inside one segment with no
    /// switch in it: completing a segment fsyncs it, and the caller must
    /// not block on the disk. The flush that follows fdatasyncs it.
    pub fn write_ahead(&self) -> Result<(), WalError> {
        let Some(mut fs) = self.try_lock_flush() else {
            return Ok(());
        };
        let res = self.write_ahead_locked(&mut fs);
        drop(fs);
        // Sessions that found the flush lock taken meanwhile queued up and
        // rely on its holder to scan the queue after letting go (see
        // `queue`): nominate the next flusher (nothing was flushed, so
        // nobody is released).
        self.queue.release(|| self.flushed(), true);
        res
    }

    fn write_ahead_locked(&self, fs: &mut FlushState) -> Result<(), WalError> {
        self.check_poison()?;
        let seg_size = self.ctx.seg_size;
        let batch = {
            let mut st = relock(&self.insert);
            let p = &st.pending;
            let in_one_segment = p.start.segno(seg_size) == p.end.segno(seg_size)
                && p.end.segment_offset(seg_size) != 0;
            if p.is_empty() || !p.gaps.is_empty() || !in_one_segment {
                return Ok(());
            }
            self.pacing.taken();
            st.take(std::mem::take(&mut fs.spare))
        };
        let completed = match fs.write_only(&self.flush_ctx(), &batch) {
            Ok(c) => c,
            Err(cause) => return Err(self.poison_with(cause)),
        };
        debug_assert!(completed.is_empty(), "a batch inside one segment");
        self.tail.append(&batch);
        self.written.store(batch.end.0, Ordering::Release);
        self.written_watch.publish(batch.end);
        fs.written_ahead_records += batch.records;
        fs.spare = batch.bytes;
        Ok(())
    }

    /// Take the pending batch, write and fdatasync it (and whatever was
    /// written ahead, see [`Shared::write_ahead`]). `Ok(false)` if there
    /// was nothing to flush.
    fn flush_locked(&self, fs: &mut FlushState, by: FlushBy) -> Result<bool, WalError> {
        self.check_poison()?;
        let spare = std::mem::take(&mut fs.spare);
        let t0 = Instant::now();
        let batch = {
            let mut st = relock(&self.insert);
            if st.pending.is_empty() {
                fs.spare = spare;
                drop(st);
                return self.sync_written_ahead(fs, by);
            }
            self.pacing.taken();
            self.pacing.flush_started(t0);
            st.take(spare)
        };
        let cx = self.flush_ctx();
        let publish_written = || {
            self.tail.append(&batch);
            self.written.store(batch.end.0, Ordering::Release);
            self.written_watch.publish(batch.end);
        };
        let completed = match fs.write_batch(&cx, &batch, publish_written) {
            Ok(c) => c,
            Err(cause) => return Err(self.poison_with(cause)),
        };
        self.pacing.flush_took(t0.elapsed());
        self.publish_flushed(batch.end);
        self.count_flush(
            by,
            batch.records + std::mem::take(&mut fs.written_ahead_records),
        );
        for segno in completed {
            self.publish(WalEvent::SegmentCompleted {
                tli: self.ctx.tli,
                segno,
            });
        }
        if self.flush_subscribers.load(Ordering::Acquire) > 0 {
            self.publish(WalEvent::Flushed(batch.end));
        }
        let mut bytes = batch.bytes;
        if bytes.capacity() > 2 * self.limits.buffer_bytes {
            bytes = Vec::new();
        }
        fs.spare = bytes;
        Ok(true)
    }

    /// Nothing pending, but WAL written ahead and not yet durable:
    /// fdatasync it. `Ok(false)` if there is none.
    fn sync_written_ahead(&self, fs: &mut FlushState, by: FlushBy) -> Result<bool, WalError> {
        let written = self.written();
        if written <= self.flushed() {
            return Ok(false);
        }
        if let Err(cause) = fs.sync_current(&self.flush_ctx()) {
            return Err(self.poison_with(cause));
        }
        self.publish_flushed(written);
        self.count_flush(by, std::mem::take(&mut fs.written_ahead_records));
        if self.flush_subscribers.load(Ordering::Acquire) > 0 {
            self.publish(WalEvent::Flushed(written));
        }
        Ok(true)
    }

    /// WAL is durable up to `end`: the hook first, then the position.
    fn publish_flushed(&self, end: Lsn) {
        if let Some(hook) = self.flush_hook.0.get() {
            hook(end);
        }
        self.flushed.store(end.0, Ordering::Release);
        self.flush_watch.publish(end);
    }

    fn count_flush(&self, by: FlushBy, records: u64) {
        self.counters.flushed_batch(records);
        let c = match by {
            FlushBy::Session => &self.counters.session_flushes,
            FlushBy::Writer => &self.counters.writer_flushes,
            FlushBy::Backpressure => return,
        };
        Counters::add(c, 1);
    }

    /// Record the first IO failure; everything after it fails with it.
    pub fn poison_with(&self, cause: String) -> WalError {
        tracing::error!(%cause, "WAL writer stopped: IO failure, no further WAL will be written");
        let _ = self.poison.set(Arc::from(cause));
        self.publish(WalEvent::Poisoned);
        self.queue.release_all();
        self.flush_watch.close();
        self.written_watch.close();
        self.kick();
        match self.check_poison() {
            Err(e) => e,
            Ok(()) => WalError::ShutDown,
        }
    }

    /// Send an event to every subscriber that wants it without blocking; a
    /// full channel loses the event (they are wake-ups; `flushed()` is the
    /// truth).
    pub fn publish(&self, ev: WalEvent) {
        let flushed = matches!(ev, WalEvent::Flushed(_));
        let mut subs = relock(&self.subscribers);
        subs.retain(|(s, wants_flushed)| {
            if flushed && !wants_flushed {
                return true;
            }
            match s.try_send(ev) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    Counters::add(&self.counters.events_dropped, 1);
                    true
                }
                Err(TrySendError::Disconnected(_)) => {
                    if *wants_flushed {
                        self.flush_subscribers.fetch_sub(1, Ordering::AcqRel);
                    }
                    false
                }
            }
        });
    }

    /// Drop every subscriber's sender: the writer has stopped and will
    /// send nothing more, so each subscriber's receiver ends (even one that
    /// lost the last event to a full channel, or that waits for a
    /// `ShutDown` a poisoned writer never sends).
    pub fn close_subscribers(&self) {
        relock(&self.subscribers).clear();
        self.flush_subscribers.store(0, Ordering::Release);
    }

    /// Create the segment after the one being inserted into, ahead of need.
    pub fn preallocate_ahead(&self) {
        if self.prealloc_held.load(Ordering::Acquire) {
            return;
        }
        let next = self.inserted().segno(self.ctx.seg_size).next();
        if self.prealloc_below.load(Ordering::Acquire) > next.0 {
            return;
        }
        match self.segdir.preallocate(self.ctx.tli, next) {
            Ok(_) => self.prealloc_below.store(next.0 + 1, Ordering::Release),
            Err(e) => {
                Counters::add(&self.counters.prealloc_failures, 1);
                tracing::warn!(error = %e, "could not pre-allocate the next WAL segment; retrying later");
            }
        }
    }
}

/// No record has been placed in the segment of `end` yet.
fn at_segment_start(end: Lsn, ctx: &SegCtx) -> bool {
    let off = end.segment_offset(ctx.seg_size);
    off == 0 || off == SEG_HEADER_SIZE
}
