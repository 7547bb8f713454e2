//! The walreceiver's fsync thread: the session's socket reader writes
//! received WAL and lets redo apply what the upstream flushed, then hands
//! the newest written position here; this thread fsyncs it and only then
//! moves what depends on this node's own fsync: the reported flush (and so
//! apply) position, the confirmed-flush file, the published flush point
//! (cascading walsenders, restartpoints). WAL arriving during a slow
//! fsync is read and written meanwhile instead of waiting in the socket.
//!
//! One request is pending at most (a newer one replaces it: the newest
//! position covers every older one), so the queue is bounded. A segment
//! completed on the way was fsynced by the writer before it was marked,
//! so fsyncing the segment being written covers every byte requested.
//! Names are not data: when the writer opened a segment since this
//! thread's last fsync of `wal/` (a new segment, a recycled or look-ahead
//! one, or the first one of the stream, found at start-up), `wal/` is
//! fsynced too, after the data and before anything is reported: once per
//! segment. Without it a power loss could keep the segment's data but not
//! its name, losing writes a primary acknowledged on this flush report.
//!
//! Not used for a synchronous standby that no commit waits on at
//! `remote_write` (the upstream's `write_wanted`): its reader fsyncs
//! itself and reports once (see `Session::fsync_inline`).
//!
//! Deferred flush: while the upstream says no commit waits for this
//! standby's flush (a walrep upstream's keepalive flag), an fsync starts
//! at most every [`FLUSH_SPACING`], at once when a reply is asked for;
//! otherwise (and always with any other upstream, PostgreSQL included) at
//! once, as PostgreSQL's walreceiver does. A failed fsync is final: the
//! failure is recorded for the node, the session's socket is shut to wake
//! its reader, and nothing retries.

use std::fs::File;
use std::net::Shutdown;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Control, ReceiverShared};
use crate::standby::confirmed::ConfirmedFlush;
use crate::wal::{SegmentDir, SegmentError, SegmentWriter};
use crate::{Lsn, TimelineId};

/// While no commit waits for this standby's flush, an fsync starts at most
/// this long after the previous one started. Replay progress is reported
/// only up to what is fsynced here, so the reported replay lag grows by
/// up to this much; in exchange the primary's own fdatasyncs are no
/// longer each followed by one of ours on a shared disk (see
/// docs/benchmarks/async-standby.md, "A standby's fsync off its socket
/// thread").
pub(crate) const FLUSH_SPACING: Duration = Duration::from_millis(1);
/// Longest single wait of the thread (a stop wakes it at once).
const MAX_NAP: Duration = Duration::from_secs(1);

/// What the session keeps about its own fsyncs: shared by the fsync
/// thread and the session's synchronous flushes (timeline end, finish).
pub(super) struct Durability {
    /// Where the upstream's confirmed flush position is kept on disk;
    /// `None`: it could not be written.
    pub(super) confirmed: Option<ConfirmedFlush>,
    /// The flush position last published to [`ReceiverShared`]: from the
    /// stream's start point (published when it starts, see the session's
    /// `publish_start`), never going back.
    pub(super) published_flush: Lsn,
    /// Where the current START_REPLICATION started.
    pub(super) start: Lsn,
}

impl Durability {
    /// WAL of `tli` up to `flushed` is fsynced here: keep and publish what
    /// of it the upstream told flushed (exposed), and forget held WAL it
    /// covers. Returns the exposed position.
    pub(super) fn made_durable(
        &mut self,
        shared: &ReceiverShared,
        tli: TimelineId,
        flushed: Lsn,
    ) -> Lsn {
        let exposed = flushed.min(shared.upstream_flush());
        self.record_confirmed(tli, exposed);
        if exposed > self.published_flush {
            self.published_flush = exposed;
            shared.publish_flushed(tli, exposed);
        }
        if shared
            .held()
            .is_some_and(|h| h.tli == tli && exposed >= h.to)
        {
            shared.set_held(None);
        }
        exposed
    }

    /// Keep `exposed` (flushed here and confirmed upstream) on disk, for a
    /// restart to hold what lies past it. A failed write leaves an older,
    /// still true value: the session goes on.
    pub(super) fn record_confirmed(&mut self, tli: TimelineId, exposed: Lsn) {
        if exposed < self.start {
            return;
        }
        if let Some(c) = self.confirmed.as_mut() {
            if let Err(e) = c.record(tli, exposed) {
                tracing::warn!("could not record the upstream's flush position: {e}");
            }
        }
    }
}

/// Lock a durability record (a panicked holder left it consistent: every
/// field is replaced whole).
pub(super) fn lock(d: &Mutex<Durability>) -> MutexGuard<'_, Durability> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

/// Make WAL of `tli` up to `upto` durable: everything before it lies in
/// `segment` or in segments whose data was fsynced at their completion;
/// `opened` is the writer's count of segments opened (see
/// `SegmentWriter::opened`): when it moved, `wal/` is fsynced too.
#[derive(Debug)]
pub(super) struct FlushRequest {
    pub(super) tli: TimelineId,
    pub(super) upto: Lsn,
    pub(super) segment: Option<(Arc<File>, PathBuf)>,
    pub(super) opened: u64,
}

#[derive(Debug, Default)]
struct Queue {
    /// The newest request not taken yet.
    pending: Option<FlushRequest>,
    /// Start the pending fsync now, whatever the spacing.
    urgent: bool,
    /// The upstream asked for a reply: the status after the fsync is sent
    /// even with status updates off.
    reply: bool,
    /// The upstream said no commit waits for this standby's flush.
    deferrable: bool,
    /// The thread waits with no deadline (no request pending, the spacing
    /// over): only then must a deferrable request wake it. Otherwise it is
    /// busy or asleep until the spacing ends, and looks at the queue then.
    idle: bool,
    stop: bool,
    /// The fsync that failed (the session ends with it).
    failed: Option<String>,
    /// fsyncs made (for the session's trace and tests of the policy).
    fsyncs: u64,
}

struct Inner {
    queue: Mutex<Queue>,
    cond: Condvar,
    shared: Arc<ReceiverShared>,
    durability: Arc<Mutex<Durability>>,
    segdir: Arc<SegmentDir>,
    control: Arc<Control>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fsync thread of one START_REPLICATION; stopped (and joined) when
/// dropped, after the fsync in progress. What it did not fsync is left to
/// the session's own flush at the stream's end.
pub(super) struct Flusher {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    pub(super) fn start(
        shared: Arc<ReceiverShared>,
        durability: Arc<Mutex<Durability>>,
        segdir: Arc<SegmentDir>,
        control: Arc<Control>,
    ) -> std::io::Result<Flusher> {
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue::default()),
            cond: Condvar::new(),
            shared,
            durability,
            segdir,
            control,
        });
        let for_thread = Arc::clone(&inner);
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new()
            .name("walreceiver-fsync".into())
            .spawn(move || {
                let _in = span.enter();
                run(&for_thread);
            })?;
        Ok(Flusher {
            inner,
            thread: Some(thread),
        })
    }

    /// Ask for `req` to be made durable (replacing an older request);
    /// `urgent` ignores the spacing, `reply` forces the status after it.
    ///
    /// The thread is woken only when this changes what it waits for: it
    /// waits idle (nothing pending, the spacing over), the request is
    /// urgent, or fsyncs start at once. Under the spacing a request only
    /// replaces the pending one: the thread is busy or asleep until the
    /// spacing ends, and takes the newest request then. (Waking it for
    /// each message cost about one futex wake and one context switch per
    /// commit for nothing.)
    pub(super) fn request(&self, req: FlushRequest, urgent: bool, reply: bool) {
        let mut q = self.inner.lock();
        let wake = q.idle || urgent || !q.deferrable;
        q.pending = Some(req);
        q.urgent |= urgent;
        q.reply |= reply;
        drop(q);
        if wake {
            self.inner.cond.notify_one();
        }
    }

    /// What the upstream last said: whether fsyncs may be spaced.
    pub(super) fn set_deferrable(&self, deferrable: bool) {
        let mut q = self.inner.lock();
        if q.deferrable != deferrable {
            tracing::debug!(deferrable, "walreceiver: flush policy changed");
            q.deferrable = deferrable;
            self.inner
                .shared
                .flush_deferred
                .store(deferrable, Ordering::Release);
            drop(q);
            self.inner.cond.notify_one();
        }
    }

    /// The fsync failure that stopped this thread, if any.
    pub(super) fn failed(&self) -> Option<String> {
        self.inner.lock().failed.clone()
    }

    /// fsyncs made so far.
    pub(super) fn fsyncs(&self) -> u64 {
        self.inner.lock().fsyncs
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.inner.lock().stop = true;
        self.inner.cond.notify_one();
        self.inner
            .shared
            .flush_deferred
            .store(false, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread's body: wait for a request (and the spacing), fsync, report.
fn run(inner: &Inner) {
    let mut last_start: Option<Instant> = None;
    let mut synced: Option<(TimelineId, Lsn)> = None;
    // The writer's `opened` at this thread's last fsync of `wal/`: none
    // yet, so the stream's first segment's name is made durable too.
    let mut names_synced: Option<u64> = None;
    while let Some((req, reply)) = next_request(inner, last_start) {
        let already = synced.is_some_and(|(tli, lsn)| tli == req.tli && lsn >= req.upto)
            && names_synced == Some(req.opened);
        if !already {
            last_start = Some(Instant::now());
            if let Err(e) = sync(inner, &req, &mut names_synced) {
                fail(inner, e);
                return;
            }
            inner.lock().fsyncs += 1;
            inner.shared.fsyncs.fetch_add(1, Ordering::AcqRel);
            synced = Some((req.tli, req.upto));
            inner.shared.raise_durable(req.upto);
        }
        lock(&inner.durability).made_durable(&inner.shared, req.tli, req.upto);
        let sent = inner
            .shared
            .with_replies(|r, now| r.send_status(now, reply, false));
        if let Err(e) = sent {
            // The session finds the connection broken on its next read.
            tracing::debug!("could not report the flush position: {e}");
        }
    }
}

/// Wait for the next request to take: at once if urgent or not
/// deferrable, else once [`FLUSH_SPACING`] passed since the last fsync
/// started. While deferrable the thread sleeps out the spacing after each
/// fsync whether or not a request is pending yet (requests then need not
/// wake it), and waits idle only after it. `None` when stopped.
fn next_request(inner: &Inner, last_start: Option<Instant>) -> Option<(FlushRequest, bool)> {
    let mut q = inner.lock();
    loop {
        q.idle = false;
        if q.stop {
            return None;
        }
        let left = last_start
            .map(|t| t + FLUSH_SPACING)
            .filter(|_| q.deferrable && !q.urgent)
            .map_or(Duration::ZERO, |d| {
                d.saturating_duration_since(Instant::now())
            });
        let nap = if !left.is_zero() {
            left
        } else if q.pending.is_some() {
            q.urgent = false;
            let reply = std::mem::take(&mut q.reply);
            return q.pending.take().map(|r| (r, reply));
        } else {
            q.idle = true;
            MAX_NAP
        };
        q = inner
            .cond
            .wait_timeout(q, nap)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// fsync the request's segment, then `wal/` if the writer opened a
/// segment since the last time (the data first: the name must not be
/// reported durable before the bytes it would expose are).
fn sync(
    inner: &Inner,
    req: &FlushRequest,
    names_synced: &mut Option<u64>,
) -> Result<(), SegmentError> {
    // The writer completes a segment (fsyncing it) before it publishes a
    // written position past its end: then there is nothing left to fsync
    // in it, and it may already have been recycled under another name.
    let seg_size = inner.segdir.seg_size();
    let completed = req.upto.segno(seg_size) < inner.shared.written().segno(seg_size);
    if let Some((f, path)) = req.segment.as_ref().filter(|_| !completed) {
        inner
            .segdir
            .storage()
            .sync_data(f, path)
            .map_err(SegmentError::io("fdatasync", path))?;
    }
    if *names_synced != Some(req.opened) {
        SegmentWriter::sync_names(&inner.segdir)?;
        *names_synced = Some(req.opened);
    }
    Ok(())
}

/// A failed fsync: final for the node (no session may start again), and
/// the session is woken to end with it.
fn fail(inner: &Inner, e: SegmentError) {
    let msg = format!("could not write received WAL: {e}");
    tracing::error!("{msg}");
    inner.shared.set_io_failure(Arc::new(e));
    inner.lock().failed = Some(msg);
    let socket = inner
        .control
        .socket
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(s) = socket.as_ref() {
        let _ = s.shutdown(Shutdown::Read);
    }
}
