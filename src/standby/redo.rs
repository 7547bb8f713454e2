//! The redo loop: executes the machine's `Replay` requests — apply every
//! valid record that ends at or before the limit — and reports progress, the
//! end of available WAL, or the invalid record it stopped at (never applied).
//!
//! It owns the replay position ([`Replayed`]): updated after every record,
//! published (subscribers woken: the walreceiver's replies, cascading
//! walsenders) with every progress report and at the end of each request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::progress::Replayed;
use super::receiver::ReceiverShared;
use crate::datadir::DataDir;
use crate::states::recovery::{Event, RecordCheck};
use crate::store::record::RM_KV;
use crate::store::{ControlFile, Store};
use crate::wal::{HeaderProblem, ReadErrorKind, ReaderConfig, Record, WalMemory, WalReader};
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
        for req in requests.iter() {
            match req {
                RedoRequest::SetHistory(h) => self.reader.set_history(h),
                RedoRequest::Replay { upto } => {
                    let ev = self.replay(upto);
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

    fn replay(&mut self, upto: Lsn) -> Event {
        // The one place that decides how far redo may apply: the machine's
        // limit (the standby's flush position, a segment's or a timeline's
        // end). The reader checks it before reading any byte, from the
        // walreceiver's buffer or from files alike; any further cap (such
        // as a primary's flush position) belongs here too.
        self.reader.set_limit(Some(upto));
        let mut last_report = Instant::now();
        let mut last_publish = last_report;
        let mut reported = self.reader.next_lsn();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Event::EndOfWalReached {
                    at: self.reader.next_lsn(),
                };
            }
            match self.reader.read_record() {
                Ok(rec) => {
                    if let Err(e) = self.store.apply_record(&rec) {
                        // The CRC held, so this is a bug or a version
                        // mismatch: stop here rather than skip the record.
                        tracing::error!(error = %e, "could not apply a WAL record");
                        return Event::InvalidRecord {
                            at: rec.lsn,
                            check: RecordCheck::Length,
                        };
                    }
                    self.advanced(&rec);
                    let end = rec.end;
                    let now = Instant::now();
                    if end.saturating_sub(reported) >= PROGRESS_BYTES
                        || now.duration_since(last_report) >= PROGRESS_INTERVAL
                    {
                        self.publish();
                        let _ = self.events.send(Event::WalReplayed { upto: end });
                        reported = end;
                        last_report = now;
                        last_publish = now;
                    } else if now.duration_since(last_publish) >= PUBLISH_INTERVAL {
                        self.publish();
                        last_publish = now;
                    }
                }
                Err(e) => {
                    let at = self.reader.next_lsn();
                    self.publish();
                    return match classify(&e.kind) {
                        None => Event::EndOfWalReached { at },
                        Some(check) => {
                            tracing::info!(at = %e.record, reason = %e, "invalid record: not applied");
                            Event::InvalidRecord {
                                at: e.record,
                                check,
                            }
                        }
                    };
                }
            }
        }
    }

    /// Bookkeeping after one applied record: the position moves without
    /// waking anyone (see [`publish`](Self::publish)).
    fn advanced(&self, rec: &Record) {
        let tli = self.reader.history().timeline_of(rec.lsn);
        let commit_us = (rec.rmid == RM_KV && rec.payload.len() >= 8).then(|| {
            let mut t = [0u8; 8];
            t.copy_from_slice(&rec.payload[..8]);
            u64::from_le_bytes(t)
        });
        self.replayed.update(|r| {
            r.end = rec.end;
            r.last_record = rec.lsn;
            r.tli = tli;
            r.records += 1;
            if let Some(us) = commit_us {
                r.last_commit_us = us;
            }
            false
        });
    }

    /// Wake those who follow replay: the walreceiver replies with the new
    /// apply position, cascading walsenders may send further.
    fn publish(&self) {
        self.replayed.update(|_| true);
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
