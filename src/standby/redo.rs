//! The redo loop: executes the machine's `Replay` requests — apply every
//! valid record that ends at or before the limit — and reports progress, the
//! end of available WAL, or the invalid record it stopped at (never applied).
//!
//! Records are read and applied in batches (`store::replay`): a request far
//! ahead of the reader (catch-up, promotion) is read ahead on a second
//! thread while this one applies. It owns the replay position
//! ([`Replayed`]): updated after every applied batch (a record is never
//! counted before it is visible), published (subscribers woken: the
//! walreceiver's replies, cascading walsenders) at least every millisecond
//! of a long replay, with every progress report and at the end of each
//! request.
//!
//! A short request made while the redo thread is idle (a streaming
//! standby's request per received batch: a commit's few records) runs on
//! the startup thread itself ([`RedoLink::try_inline`]), which answers the
//! machine with the same events without queueing them: handing it to the
//! redo thread cost every commit a second thread wake-up on the path to
//! the apply report a `remote_apply` commit waits for, and a third (the
//! answer) off it. A long request's first [`INLINE_MAX_BYTES`] run there
//! too: a segment found in `wal/` or restored is asked for to its end,
//! but it often holds nothing past the replay position (promotion's last
//! look at `wal/`, a round after the stream was lost), and then the
//! answer is one read on this thread instead of a hand-off to the redo
//! thread, its read-ahead thread's start and the answer's way back. What
//! is left of a long request runs on the redo thread, so the startup
//! thread stays free for shutdown and promotion. Either way one request
//! runs at a time, in the machine's order (see [`RedoLink`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::receiver::{InlineRedo, ReceiverShared, APPLY_REPORT_SPACING};
use super::replayed::Replayed;
use crate::datadir::DataDir;
use crate::states::recovery::{Event, RecordCheck};
use crate::store::record::RM_KV;
use crate::store::replay::{redo_inline, redo_read_ahead, BatchSize};
use crate::store::{ControlFile, Store};
use crate::wal::{HeaderProblem, ReadErrorKind, ReaderConfig, RecordBatch, WalMemory, WalReader};
use crate::watch::Watch;
use crate::{Lsn, TimelineHistory};

/// Progress is reported to the machine at least this often while a long
/// replay runs...
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// ...or after this many bytes, whichever comes first.
const PROGRESS_BYTES: u64 = 16 << 20;
/// The apply position is published (the walreceiver replies with it) at
/// least this often during a long replay: behind by a burst, redo used to
/// publish only every [`PROGRESS_INTERVAL`], and the upstream's
/// `replay_lag` then grew in 100 ms steps although records were applied
/// (and visible) all along. A publication costs one wake-up and one
/// status message.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(1);
/// A replay request this far ahead of the reader is read ahead on a second
/// thread ([`redo_read_ahead`]); a shorter one is applied on this thread,
/// where starting a thread would cost more than it saves.
const READ_AHEAD_MIN_BYTES: u64 = 4 << 20;
/// A request at most this far ahead of the reader may run on the startup
/// thread ([`RedoLink::try_inline`]): a streaming standby's batches (one
/// commit is ~100 bytes, a flush of 64 clients' commits a few kB) are
/// applied in well under a millisecond, while the startup thread must not
/// be kept from its events (shutdown, promotion) for long.
const INLINE_MAX_BYTES: u64 = 128 << 10;
const _: () = assert!(INLINE_MAX_BYTES < READ_AHEAD_MIN_BYTES);

/// What the redo thread is asked to do.
#[derive(Debug, Clone)]
pub enum RedoRequest {
    /// Apply records ending at or before `upto`.
    Replay { upto: Lsn },
    /// Map positions to timelines with this history from now on.
    SetHistory(TimelineHistory),
}

/// Redo's state: used by one thread at a time, the redo thread or (for a
/// short request) the startup thread (see [`RedoLink`]).
pub struct Redo {
    /// Where records are applied.
    pub store: Arc<Store>,
    pub reader: WalReader,
    /// The replay position, owned here.
    pub replayed: Arc<Watch<Replayed>>,
    /// The walreceiver: told after each publication, it sends the apply
    /// position a `remote_apply` commit waits for from the applying thread.
    pub received: Arc<ReceiverShared>,
    pub events: crate::standby::events::EventSender<Event>,
    /// Set at shutdown: a long replay stops between records.
    pub stop: Arc<AtomicBool>,
}

/// What [`RedoLink::try_inline`] did on the calling thread.
#[derive(Debug)]
pub struct Inline {
    /// The answers for the machine, in order: progress reports, then the
    /// request's end (the events the redo thread would have queued), unless
    /// the request went on on the redo thread (`continued`).
    pub events: Vec<Event>,
    /// Replay progress was left unreported upstream: call
    /// [`RedoLink::publish_owed`] after [`APPLY_REPORT_SPACING`].
    pub owed: bool,
    /// A long request's first [`INLINE_MAX_BYTES`] ran here and did not
    /// reach its end: the rest was sent to the redo thread, whose answers
    /// (and the request's end) come through the queue, after `events`.
    pub continued: bool,
}

/// The startup thread's side of redo: requests go to the redo thread, or
/// run on the caller when the redo thread is idle and the request short.
/// One request runs at a time and in the order made: a request runs inline
/// only when none is queued or running on the thread (`queued` counts
/// them: incremented before the send, decremented once the thread is done
/// with the request), and the startup thread is the only one making
/// requests, so none can overtake another.
pub struct RedoLink {
    requests: Sender<RedoRequest>,
    shared: Arc<RedoShared>,
}

/// What the redo thread and the startup thread share.
struct RedoShared {
    redo: Mutex<Redo>,
    /// Requests sent to the redo thread that it has not finished.
    queued: AtomicUsize,
}

impl RedoShared {
    fn lock(&self) -> MutexGuard<'_, Redo> {
        self.redo.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lock if nobody holds it; a poisoned lock is taken too (the
    /// state is positions and a reader, each left consistent per batch).
    fn try_lock(&self) -> Option<MutexGuard<'_, Redo>> {
        match self.redo.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}

/// The walreceiver's inline apply (see `receiver::inline`): the same
/// replay as a short request on the startup thread, on the session's
/// thread, never waiting for redo. Its answer is not the machine's: the
/// `Replay` the session's `WalFlushed` leads to finds the records applied
/// (or stops at the same invalid record and reports it).
impl InlineRedo for RedoShared {
    fn try_apply(&self, upto: Lsn) -> Option<Lsn> {
        if self.queued.load(Ordering::Acquire) != 0 {
            return None;
        }
        let mut redo = self.try_lock()?;
        let next = redo.reader.next_lsn();
        let queued = self.queued.load(Ordering::Acquire);
        if upto <= next || !runs_inline(queued, next, upto) || redo.stop.load(Ordering::Relaxed) {
            return None;
        }
        redo.replay(upto, &mut |_| {});
        let end = redo.reader.next_lsn();
        (end > next).then_some(end)
    }
}

/// Whether a request may run on the startup thread: nothing queued for
/// the redo thread and the limit close to the reader.
fn runs_inline(queued: usize, next: Lsn, upto: Lsn) -> bool {
    queued == 0 && upto.saturating_sub(next) <= INLINE_MAX_BYTES
}

impl RedoLink {
    /// Start the redo thread on `redo`, reading requests from a queue of
    /// `capacity`.
    pub fn spawn(redo: Redo, capacity: usize) -> std::io::Result<(RedoLink, JoinHandle<()>)> {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let shared = Arc::new(RedoShared {
            redo: Mutex::new(redo),
            queued: AtomicUsize::new(0),
        });
        {
            let redo = shared.lock();
            let weak: std::sync::Weak<dyn InlineRedo> = Arc::downgrade(&shared) as _;
            redo.received.inline().set_redo(weak);
        }
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("redo".into())
                .spawn(move || run(&shared, rx))?
        };
        Ok((
            RedoLink {
                requests: tx,
                shared,
            },
            thread,
        ))
    }

    /// Queue `req` for the redo thread. `false` if the thread is gone.
    pub fn send(&self, req: RedoRequest) -> bool {
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        if self.requests.send(req).is_err() {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Run `Replay { upto }` on this thread if the redo thread is idle:
    /// all of it if it is short (see [`INLINE_MAX_BYTES`]), else its first
    /// [`INLINE_MAX_BYTES`], and the rest on the redo thread unless an
    /// invalid record ended it first ([`Inline::continued`]). `None`: send
    /// it.
    pub fn try_inline(&self, upto: Lsn) -> Option<Inline> {
        if self.shared.queued.load(Ordering::Acquire) != 0 {
            return None;
        }
        // Free unless the redo thread publishes owed progress right now.
        let mut redo = self.shared.try_lock()?;
        let queued = self.shared.queued.load(Ordering::Acquire);
        if queued != 0 || redo.stop.load(Ordering::Relaxed) {
            return None;
        }
        let next = redo.reader.next_lsn();
        let cap = if runs_inline(queued, next, upto) {
            upto
        } else {
            Lsn(next.0.saturating_add(INLINE_MAX_BYTES))
        };
        let mut events = Vec::new();
        let (end, owed) = redo.replay(cap, &mut |ev| events.push(ev));
        // Stopped at the cap (or for shutdown), not at an invalid record:
        // the request is not done. A record is read only once all of it is
        // below the limit, so a lower one ends at the same invalid record
        // the request's own limit would, or before it.
        if cap < upto && matches!(end, Event::EndOfWalReached { .. }) {
            drop(redo);
            self.send(RedoRequest::Replay { upto });
            return Some(Inline {
                events,
                owed: false,
                continued: true,
            });
        }
        events.push(end);
        Some(Inline {
            events,
            owed,
            continued: false,
        })
    }

    /// Apply a new timeline history on this thread if the redo thread is
    /// idle; `false`: send it.
    pub fn try_set_history_inline(&self, history: &TimelineHistory) -> bool {
        if self.shared.queued.load(Ordering::Acquire) != 0 {
            return false;
        }
        let Some(mut redo) = self.shared.try_lock() else {
            return false;
        };
        if self.shared.queued.load(Ordering::Acquire) != 0 {
            return false;
        }
        redo.reader.set_history(history.clone());
        true
    }

    /// Report progress an inline replay left unreported (see
    /// [`Inline::owed`]); returns whether it is still owed. A request on
    /// the redo thread publishes when it ends: nothing to do then.
    pub fn publish_owed(&self) -> bool {
        match self.shared.try_lock() {
            Some(redo) => redo.publish(),
            None => false,
        }
    }
}

/// The redo thread: requests in order, each under the lock.
fn run(shared: &RedoShared, requests: Receiver<RedoRequest>) {
    let _span = tracing::info_span!("redo").entered();
    // Replay progress the walreceiver's replies have not carried yet
    // (a status went out less than the spacing ago): reported after
    // the spacing unless a request comes first.
    let mut owed = false;
    loop {
        let req = if owed {
            match requests.recv_timeout(APPLY_REPORT_SPACING) {
                Ok(req) => req,
                Err(RecvTimeoutError::Timeout) => {
                    owed = shared.lock().publish();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match requests.recv() {
                Ok(req) => req,
                Err(_) => return,
            }
        };
        let mut redo = shared.lock();
        let answer = match req {
            RedoRequest::SetHistory(h) => {
                redo.reader.set_history(h);
                None
            }
            RedoRequest::Replay { upto } => {
                let events = redo.events.clone();
                let (ev, unreported) = redo.replay(upto, &mut |ev| {
                    let _ = events.send(ev);
                });
                owed = unreported;
                Some(ev)
            }
        };
        let stop = redo.stop.load(Ordering::Relaxed);
        let events = redo.events.clone();
        drop(redo);
        // Done with it: from here the startup thread may run the next
        // request itself (it makes the next `Replay` only on this answer).
        shared.queued.fetch_sub(1, Ordering::AcqRel);
        if let Some(ev) = answer {
            if events.send(ev).is_err() {
                return;
            }
        }
        if stop {
            return;
        }
    }
}

impl Redo {
    /// A reader of `dir`'s WAL at the redo point of `c`, taking what the
    /// walreceiver still holds in memory before the files.
    pub fn reader_for(
        dir: &DataDir,
        c: &ControlFile,
        history: TimelineHistory,
        received: &ReceiverShared,
    ) -> WalReader {
        let cfg = ReaderConfig {
            dir: dir.wal(),
            system_id: c.system_identifier,
            seg_size: c.wal_segment_size,
            history,
        };
        let mut r = WalReader::new(cfg, c.redo_lsn);
        r.seek(c.redo_lsn, None);
        let memory: Arc<dyn WalMemory> = received.wal_buffer().clone();
        r.set_memory(Some(memory));
        r
    }

    /// Apply up to `upto`, giving progress reports to `report`; the event
    /// that ends the request, and whether replay progress was left
    /// unreported upstream (see [`publish`]).
    fn replay(&mut self, upto: Lsn, report: &mut dyn FnMut(Event)) -> (Event, bool) {
        let mut owed = false;
        let ev = self.replay_upto(upto, &mut owed, report);
        (ev, owed)
    }

    fn replay_upto(&mut self, upto: Lsn, owed: &mut bool, report: &mut dyn FnMut(Event)) -> Event {
        // The one place that decides how far redo may apply: the machine's
        // limit (for a stream, what the walreceiver wrote and the primary
        // told flushed, maybe before this node's own fsync of it; a
        // segment's or a timeline's end). The reader checks it before reading any byte, from the
        // walreceiver's buffer or from files alike; any further cap (such
        // as a primary's flush position) belongs here too.
        self.reader.set_limit(Some(upto));
        let history = self.reader.history().clone();
        let mut progress = Progress::new(self.reader.next_lsn());
        // Far behind (catch-up, promotion, a restart): read ahead on a
        // second thread. Keeping up: a few records, on this thread.
        let behind = upto.saturating_sub(self.reader.next_lsn());
        let (store, replayed) = (&*self.store, &*self.replayed);
        let received = &*self.received;
        let applied = |batch: &RecordBatch, _ops| {
            advanced(replayed, &history, batch);
            progress.applied(replayed, received, &mut *report, batch);
        };
        let ran = if behind >= READ_AHEAD_MIN_BYTES {
            redo_read_ahead(
                store,
                &mut self.reader,
                &self.stop,
                BatchSize::SHARED,
                applied,
            )
        } else {
            redo_inline(
                store,
                &mut self.reader,
                &self.stop,
                BatchSize::STREAM,
                applied,
            )
        };
        let at = self.reader.next_lsn();
        *owed = self.publish();
        if let Some(e) = ran.apply {
            // The CRC held, so this is a bug or a version mismatch: stop
            // here rather than skip the record.
            tracing::error!(error = %e, "could not apply a WAL record");
            return Event::InvalidRecord {
                at: e.lsn,
                check: RecordCheck::Length,
            };
        }
        let Some(e) = ran.read else {
            // Stopped for shutdown.
            return Event::EndOfWalReached { at };
        };
        match classify(&e.kind) {
            None => Event::EndOfWalReached { at },
            Some(check) => {
                tracing::info!(at = %e.record, reason = %e, "invalid record: not applied");
                Event::InvalidRecord {
                    at: e.record,
                    check,
                }
            }
        }
    }

    /// Wake those who follow replay: the walreceiver replies with the new
    /// apply position, cascading walsenders may send further. Returns
    /// whether the report was put off (see [`publish`]).
    fn publish(&self) -> bool {
        publish(&self.replayed, &self.received)
    }
}

/// Wake the replay position's subscribers, then let the walreceiver
/// report it upstream (at once if a commit waits for it, else at most
/// every `APPLY_REPORT_SPACING`: the upstream's `replay_lag` follows
/// replay, not only the walreceiver's next flush report). Returns whether
/// the report was put off for that spacing.
fn publish(replayed: &Watch<Replayed>, received: &ReceiverShared) -> bool {
    replayed.update(|_| true);
    received.replay_published()
}

/// Bookkeeping after a batch of applied records: the position moves
/// without waking anyone (see [`Redo::publish`]).
fn advanced(replayed: &Watch<Replayed>, history: &TimelineHistory, batch: &RecordBatch) {
    let Some(last) = batch.last() else {
        return;
    };
    let tli = history.timeline_of(last.lsn);
    let commit_us = batch
        .iter()
        .rev()
        .find(|r| r.rmid == RM_KV && r.payload.len() >= 8)
        .map(|r| {
            let mut t = [0u8; 8];
            t.copy_from_slice(&r.payload[..8]);
            u64::from_le_bytes(t)
        });
    replayed.update(|r| {
        r.end = last.end;
        r.last_record = last.lsn;
        r.tli = tli;
        r.records += batch.len() as u64;
        if let Some(us) = commit_us {
            r.last_commit_us = us;
        }
        false
    });
}

/// When redo last reported progress to the machine and last published the
/// replay position.
struct Progress {
    last_report: Instant,
    last_publish: Instant,
    reported: Lsn,
}

impl Progress {
    fn new(at: Lsn) -> Progress {
        let now = Instant::now();
        Progress {
            last_report: now,
            last_publish: now,
            reported: at,
        }
    }

    /// After a batch: report to the machine every [`PROGRESS_BYTES`] or
    /// [`PROGRESS_INTERVAL`], publish every [`PUBLISH_INTERVAL`].
    fn applied(
        &mut self,
        replayed: &Watch<Replayed>,
        received: &ReceiverShared,
        report: &mut dyn FnMut(Event),
        batch: &RecordBatch,
    ) {
        let Some(end) = batch.last().map(|r| r.end) else {
            return;
        };
        let now = Instant::now();
        if end.saturating_sub(self.reported) >= PROGRESS_BYTES
            || now.duration_since(self.last_report) >= PROGRESS_INTERVAL
        {
            publish(replayed, received);
            report(Event::WalReplayed { upto: end });
            self.reported = end;
            self.last_report = now;
            self.last_publish = now;
        } else if now.duration_since(self.last_publish) >= PUBLISH_INTERVAL {
            publish(replayed, received);
            self.last_publish = now;
        }
    }
}

/// How a read error maps to the machine's vocabulary: `None` when WAL simply
/// is not available yet below the limit.
fn classify(kind: &ReadErrorKind) -> Option<RecordCheck> {
    Some(match kind {
        ReadErrorKind::LimitReached { .. } => return None,
        ReadErrorKind::ZeroRecord => RecordCheck::Zeroes,
        ReadErrorKind::BadLength { .. }
        | ReadErrorKind::BadHeader(_)
        | ReadErrorKind::NotRecordPosition => RecordCheck::Length,
        ReadErrorKind::Crc { .. } => RecordCheck::Crc,
        ReadErrorKind::PrevLink { .. } => RecordCheck::PrevLink,
        ReadErrorKind::SegmentHeader { problem, .. } => match problem {
            HeaderProblem::Zero => RecordCheck::Zeroes,
            HeaderProblem::Timeline { .. } => RecordCheck::Timeline,
            _ => RecordCheck::SegmentHeader,
        },
        ReadErrorKind::MissingSegment { .. } => RecordCheck::MissingSegment,
        ReadErrorKind::SegmentSize { .. } => RecordCheck::SegmentHeader,
        ReadErrorKind::Io { .. } => RecordCheck::MissingSegment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::Wal;
    use crate::{TimelineId, WalSegSize};

    /// A redo on an empty WAL directory at `at`: every request ends at
    /// once with `EndOfWalReached { at }`.
    fn empty_redo(dir: &std::path::Path, at: Lsn) -> (Redo, Receiver<Event>) {
        let (events, answers) = crossbeam_channel::bounded(16);
        let replayed = Arc::new(Watch::new(Replayed::default()));
        let received = ReceiverShared::new(replayed.clone());
        let cfg = ReaderConfig {
            dir: dir.to_path_buf(),
            system_id: 1,
            seg_size: WalSegSize::new(1 << 20).unwrap(),
            history: TimelineHistory::root(TimelineId(1)),
        };
        let mut reader = WalReader::new(cfg, at);
        reader.seek(at, None);
        let redo = Redo {
            store: Arc::new(Store::new()),
            reader,
            replayed,
            received,
            events: events.into(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        (redo, answers)
    }

    #[test]
    fn only_short_requests_run_inline_and_only_with_nothing_queued() {
        let at = Lsn(0x100_0000);
        assert!(runs_inline(0, at, at));
        assert!(runs_inline(0, at, Lsn(at.0 + INLINE_MAX_BYTES)));
        assert!(!runs_inline(0, at, Lsn(at.0 + INLINE_MAX_BYTES + 1)));
        assert!(!runs_inline(1, at, at));
        // A limit behind the reader (nothing to do) is short.
        assert!(runs_inline(0, at, Lsn(at.0 - 1)));
    }

    #[test]
    fn a_request_never_runs_inline_ahead_of_one_the_redo_thread_has() {
        let dir = tempfile::tempdir().unwrap();
        let at = Lsn(0x100_0028);
        let (redo, answers) = empty_redo(dir.path(), at);
        let (link, thread) = RedoLink::spawn(redo, 4).unwrap();
        // Idle: a short request runs here and answers here.
        let done = link
            .try_inline(at)
            .expect("runs inline while the thread is idle");
        assert!(matches!(
            done.events.as_slice(),
            [Event::EndOfWalReached { at: end }] if *end == at
        ));
        assert!(answers.is_empty(), "an inline answer is not queued");
        // The thread has a request (held at its lock here): the next one
        // is not run inline, whatever its size, until the thread is done.
        let held = link.shared.lock();
        assert!(link.send(RedoRequest::Replay { upto: at }));
        assert!(link.try_inline(at).is_none());
        assert!(!link.try_set_history_inline(&TimelineHistory::root(TimelineId(1))));
        drop(held);
        let answer = answers
            .recv_timeout(Duration::from_secs(10))
            .expect("the thread answers");
        assert!(matches!(answer, Event::EndOfWalReached { at: end } if end == at));
        // The answer is sent once the thread is done with the request.
        assert!(link.try_inline(at).is_some());
        // A long request whose WAL ends within its first bytes (here: no
        // segment at all) is answered here too, with the same invalid
        // record the redo thread would have found.
        let done = link
            .try_inline(Lsn(at.0 + INLINE_MAX_BYTES + 1))
            .expect("runs inline while the thread is idle");
        assert!(!done.continued);
        assert!(matches!(
            done.events.as_slice(),
            [Event::InvalidRecord { at: end, check: RecordCheck::MissingSegment }] if *end == at
        ));
        assert!(answers.is_empty(), "an inline answer is not queued");
        drop(link);
        thread.join().unwrap();
    }

    /// A long request with WAL past its first `INLINE_MAX_BYTES`: that
    /// much is applied here, the rest on the redo thread, which gives the
    /// request's one end; nothing is applied twice or skipped.
    #[test]
    fn a_long_request_goes_on_on_the_redo_thread_past_its_first_bytes() {
        use crate::store::record::{self, Op};
        use crate::wal::{initial_lsn, WalConfig};
        use std::borrow::Cow;
        let dir = tempfile::tempdir().unwrap();
        let seg = WalSegSize::new(1 << 20).unwrap();
        let start = initial_lsn(seg);
        let wal = Wal::start(WalConfig::new(
            dir.path(),
            1,
            TimelineId(1),
            seg,
            start,
            Lsn::INVALID,
        ))
        .unwrap();
        let n = 6_000u64;
        let mut end = start;
        for i in 0..n {
            let key = format!("key:{i:08}");
            let payload = record::encode(
                i,
                &[Op::Set {
                    key: Cow::Owned(key.into_bytes()),
                    value: Cow::Borrowed(b"vvvvvvvvvvvvvvvv"),
                }],
            );
            end = wal.insert(RM_KV, 0, &payload).unwrap();
        }
        wal.shutdown().unwrap();
        assert!(
            end.0 - start.0 > 2 * INLINE_MAX_BYTES,
            "the WAL must outlast the inline part"
        );
        let (redo, answers) = empty_redo(dir.path(), start);
        let replayed = redo.replayed.clone();
        let (link, thread) = RedoLink::spawn(redo, 4).unwrap();
        let upto = Lsn(start.0 + 4 * seg.bytes());
        let done = link
            .try_inline(upto)
            .expect("runs inline while the thread is idle");
        assert!(done.continued, "the rest went to the redo thread");
        assert!(
            done.events
                .iter()
                .all(|e| matches!(e, Event::WalReplayed { .. })),
            "no end of the request from the inline part: {:?}",
            done.events
        );
        let inline_end = replayed.read(|r| r.end);
        assert!(inline_end > start && inline_end.0 <= start.0 + INLINE_MAX_BYTES);
        let last = loop {
            let ev = answers
                .recv_timeout(Duration::from_secs(10))
                .expect("the redo thread answers");
            if !matches!(ev, Event::WalReplayed { .. }) {
                break ev;
            }
        };
        assert!(
            matches!(last, Event::InvalidRecord { at, check: RecordCheck::Zeroes } if at == end),
            "the end of the written WAL, found by the redo thread: {last:?}"
        );
        assert_eq!(replayed.read(|r| (r.end, r.records)), (end, n));
        drop(link);
        thread.join().unwrap();
    }
}
