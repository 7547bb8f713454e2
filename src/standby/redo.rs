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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::progress::Replayed;
use super::receiver::{ReceiverShared, APPLY_REPORT_SPACING};
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

/// What the redo thread is asked to do.
#[derive(Debug, Clone)]
pub enum RedoRequest {
    /// Apply records ending at or before `upto`.
    Replay { upto: Lsn },
    /// Map positions to timelines with this history from now on.
    SetHistory(TimelineHistory),
}

/// The redo thread's state.
pub struct Redo {
    /// Where records are applied.
    pub store: Arc<Store>,
    pub reader: WalReader,
    /// The replay position, owned here.
    pub replayed: Arc<Watch<Replayed>>,
    /// The walreceiver: told after each publication, it sends the apply
    /// position a `remote_apply` commit waits for from this thread.
    pub received: Arc<ReceiverShared>,
    pub events: Sender<Event>,
    /// Set at shutdown: a long replay stops between records.
    pub stop: Arc<AtomicBool>,
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

    pub fn run(mut self, requests: Receiver<RedoRequest>) {
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
                        owed = self.publish();
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
            match req {
                RedoRequest::SetHistory(h) => self.reader.set_history(h),
                RedoRequest::Replay { upto } => {
                    let (ev, unreported) = self.replay(upto);
                    owed = unreported;
                    if self.events.send(ev).is_err() {
                        return;
                    }
                }
            }
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
        }
    }

    /// Apply up to `upto`; the event for the machine, and whether replay
    /// progress was left unreported upstream (see [`publish`]).
    fn replay(&mut self, upto: Lsn) -> (Event, bool) {
        let mut owed = false;
        let ev = self.replay_upto(upto, &mut owed);
        (ev, owed)
    }

    fn replay_upto(&mut self, upto: Lsn, owed: &mut bool) -> Event {
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
        let (store, replayed, events) = (&*self.store, &*self.replayed, &self.events);
        let received = &*self.received;
        let applied = |batch: &RecordBatch, _ops| {
            advanced(replayed, &history, batch);
            progress.applied(replayed, received, events, batch);
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
                BatchSize::SHARED,
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
        events: &Sender<Event>,
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
            let _ = events.send(Event::WalReplayed { upto: end });
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
