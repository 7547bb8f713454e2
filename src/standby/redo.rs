//! The redo loop: executes the machine's `Replay` requests — apply every
//! valid record that ends at or before the limit — and reports progress, the
//! end of available WAL, or the invalid record it stopped at (never applied).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::node::replication::FlushPoint;
use crate::node::Node;
use crate::states::recovery::{Event, RecordCheck};
use crate::store::record::RM_KV;
use crate::wal::{HeaderProblem, ReadErrorKind, ReaderConfig, WalReader};
use crate::{Lsn, TimelineHistory, TimelineId};

/// Progress is reported at least this often while a long replay runs...
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// ...or after this many bytes, whichever comes first.
const PROGRESS_BYTES: u64 = 16 << 20;

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
    pub node: Arc<Node>,
    pub reader: WalReader,
    pub events: Sender<Event>,
    /// Set at shutdown: a long replay stops between records.
    pub stop: Arc<AtomicBool>,
    /// Called after replay advanced (the walreceiver's apply reply).
    pub on_applied: Box<dyn Fn(Lsn) + Send>,
}

impl Redo {
    /// A reader at the redo point of `node`'s control file.
    pub fn reader_for(node: &Node, history: TimelineHistory) -> WalReader {
        let c = node.control();
        let cfg = ReaderConfig {
            dir: node.dir.wal(),
            system_id: c.system_identifier,
            seg_size: c.wal_segment_size,
            history,
        };
        let mut r = WalReader::new(cfg, c.redo_lsn);
        r.seek(c.redo_lsn, None);
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
        self.reader.set_limit(Some(upto));
        let mut last_report = Instant::now();
        let mut reported = self.reader.next_lsn();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Event::EndOfWalReached {
                    at: self.reader.next_lsn(),
                };
            }
            match self.reader.read_record() {
                Ok(rec) => {
                    if let Err(e) = self.node.store.apply_record(&rec) {
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
                    if end.saturating_sub(reported) >= PROGRESS_BYTES
                        || last_report.elapsed() >= PROGRESS_INTERVAL
                    {
                        self.publish(end);
                        let _ = self.events.send(Event::WalReplayed { upto: end });
                        reported = end;
                        last_report = Instant::now();
                    }
                }
                Err(e) => {
                    let at = self.reader.next_lsn();
                    self.publish(at);
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

    /// Bookkeeping after one applied record.
    fn advanced(&self, rec: &crate::wal::Record) {
        let st = &self.node.standby;
        st.last_record_lsn.store(rec.lsn.0, Ordering::Release);
        st.replay_lsn.store(rec.end.0, Ordering::Release);
        let tli = self.reader.history().timeline_of(rec.lsn);
        st.replay_tli.store(tli.0, Ordering::Release);
        st.records_replayed.fetch_add(1, Ordering::Relaxed);
        if rec.rmid == RM_KV && rec.payload.len() >= 8 {
            let mut t = [0u8; 8];
            t.copy_from_slice(&rec.payload[..8]);
            st.last_replayed_commit_us
                .store(u64::from_le_bytes(t), Ordering::Relaxed);
        }
    }

    /// Tell cascading walsenders and the walreceiver's replies where replay is.
    fn publish(&self, replay: Lsn) {
        let st = &self.node.standby;
        let replay_tli = TimelineId(st.replay_tli.load(Ordering::Acquire));
        let receive_tli = TimelineId(st.receive_tli.load(Ordering::Acquire));
        let mut lsn = replay;
        if receive_tli == replay_tli {
            lsn = lsn.max(st.receive_lsn());
        }
        if replay_tli.0 != 0 {
            self.node.set_standby_flush(FlushPoint {
                tli: replay_tli,
                lsn,
            });
        }
        (self.on_applied)(replay);
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
