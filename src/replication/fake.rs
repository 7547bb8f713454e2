//! An in-memory [`ReplicationSource`] for tests and benchmarks: WAL bytes
//! are a deterministic function of (timeline that wrote them, position), so
//! nothing is stored and any amount can be "flushed"; timelines, removal of
//! old segments and promotion are driven by the test.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use walrep_states::{Lsn, SegNo, TimelineHistory, TimelineId, WalSegSize};

use super::source::{FlushPoint, ReplicationSource, SourceError};
use crate::watch::{Subscription, Watch};

/// The fake's mutable state.
struct FakeState {
    /// History of every timeline that exists (for the writer of each byte).
    histories: BTreeMap<TimelineId, TimelineHistory>,
    /// Text of every `.history` file.
    history_files: BTreeMap<TimelineId, Vec<u8>>,
    /// Segments below this position were "removed".
    oldest: Lsn,
    /// Redo pointer handed to RESERVE_WAL.
    redo: Lsn,
    /// Number of read_wal calls, so tests can see a reader was served.
    reads: u64,
}

/// In-memory WAL source. See the module doc.
pub struct FakeSource {
    system_id: u64,
    seg_size: WalSegSize,
    data_dir: PathBuf,
    state: Mutex<FakeState>,
    /// Current timeline and flush position; published on every advance
    /// and promotion (taken after `state` when both are).
    flush: Watch<FlushPoint>,
}

impl FakeSource {
    /// A source on timeline 1 whose WAL is flushed up to `start`.
    pub fn new(system_id: u64, seg_size: WalSegSize, data_dir: PathBuf, start: Lsn) -> FakeSource {
        let tli = TimelineId::FIRST;
        FakeSource {
            system_id,
            seg_size,
            data_dir,
            state: Mutex::new(FakeState {
                histories: BTreeMap::from([(tli, TimelineHistory::root(tli))]),
                history_files: BTreeMap::new(),
                oldest: Lsn(0),
                redo: start,
                reads: 0,
            }),
            flush: Watch::new(FlushPoint { tli, lsn: start }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// "Flush" `bytes` more WAL and wake the walsenders; returns the new end.
    pub fn advance(&self, bytes: u64) -> Lsn {
        let mut end = Lsn::INVALID;
        self.flush.update(|f| {
            f.lsn = Lsn(f.lsn.0 + bytes);
            end = f.lsn;
            true
        });
        end
    }

    /// Pretend segments before the one holding `lsn` were removed.
    pub fn remove_before(&self, lsn: Lsn) {
        self.lock().oldest = lsn.segment_start(self.seg_size);
    }

    /// Where a RESERVE_WAL slot starts holding WAL from now on (the last
    /// checkpoint's redo pointer, on a real node).
    pub fn set_redo(&self, lsn: Lsn) {
        self.lock().redo = lsn;
    }

    /// Number of WAL reads served so far.
    pub fn reads(&self) -> u64 {
        self.lock().reads
    }

    /// Start a new timeline at the current flush position (a promotion):
    /// writes its history file; returns the new timeline.
    pub fn promote(&self) -> TimelineId {
        let mut st = self.lock();
        let flush = self.flush.get();
        let new = flush.tli.next();
        let history = st.histories[&flush.tli].fork(new, flush.lsn);
        st.history_files
            .insert(new, history.to_text(&[]).into_bytes());
        st.histories.insert(new, history);
        self.flush.publish(FlushPoint { tli: new, ..flush });
        new
    }

    /// The bytes the segment file `segno` of timeline `tli` holds.
    pub fn segment_bytes(&self, tli: TimelineId, segno: SegNo) -> Vec<u8> {
        let mut buf = vec![0u8; self.seg_size.bytes() as usize];
        let st = self.lock();
        fill(
            &st.histories[&tli],
            segno.start_lsn(self.seg_size),
            &mut buf,
        );
        buf
    }
}

/// Content of the WAL file of the timeline whose history is `history`,
/// starting at `start`: each 8-byte word is a mix of its position and the
/// timeline that wrote it, so bytes differ between timelines after a fork.
fn fill(history: &TimelineHistory, start: Lsn, buf: &mut [u8]) {
    let mut pos = start.0;
    let mut i = 0;
    while i < buf.len() {
        let writer = history.timeline_of(Lsn(pos)).0 as u64;
        // Stay on one writer: up to the next switch point or the buffer end.
        let limit = history
            .spans()
            .iter()
            .filter_map(|s| s.end)
            .map(|e| e.0)
            .find(|&e| e > pos)
            .map_or(buf.len(), |e| {
                i + (e - pos).min((buf.len() - i) as u64) as usize
            });
        while i < limit {
            let word = pos / 8;
            let value = (word ^ (writer << 56)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let bytes = value.to_le_bytes();
            let from = (pos % 8) as usize;
            let n = (8 - from).min(limit - i);
            buf[i..i + n].copy_from_slice(&bytes[from..from + n]);
            i += n;
            pos += n as u64;
        }
    }
}

impl ReplicationSource for FakeSource {
    fn system_identifier(&self) -> u64 {
        self.system_id
    }

    fn wal_segment_size(&self) -> WalSegSize {
        self.seg_size
    }

    fn flush_point(&self) -> FlushPoint {
        self.flush.get()
    }

    fn subscribe_flush(&self) -> Subscription {
        self.flush.subscribe()
    }

    fn read_wal(&self, tli: TimelineId, start: Lsn, buf: &mut [u8]) -> Result<(), SourceError> {
        let mut st = self.lock();
        st.reads += 1;
        if start < st.oldest {
            return Err(SourceError::SegmentRemoved {
                file_name: start.segno(self.seg_size).file_name(tli, self.seg_size),
            });
        }
        let end = start.0 + buf.len() as u64;
        let crosses = start.segno(self.seg_size) != Lsn(end.saturating_sub(1)).segno(self.seg_size);
        let flushed = self.flush.read(|f| f.lsn);
        if end > flushed.0 || crosses || !st.histories.contains_key(&tli) {
            return Err(SourceError::Read {
                tli,
                lsn: start,
                reason: format!("bad read of {} bytes (flush {flushed})", buf.len()),
            });
        }
        let history = st.histories[&tli].clone();
        drop(st);
        fill(&history, start, buf);
        Ok(())
    }

    fn history_file(&self, tli: TimelineId) -> Result<Option<Vec<u8>>, SourceError> {
        Ok(self.lock().history_files.get(&tli).cloned())
    }

    fn oldest_lsn(&self) -> Lsn {
        self.lock().oldest
    }

    fn redo_lsn(&self) -> Lsn {
        self.lock().redo
    }

    fn data_directory(&self) -> PathBuf {
        self.data_dir.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timelines_share_bytes_before_the_fork_only() {
        let seg = WalSegSize::new(1 << 20).unwrap();
        let f = FakeSource::new(7, seg, PathBuf::from("/nonexistent"), Lsn(0));
        f.advance(3 << 20);
        let switch = Lsn((1 << 20) + 4096);
        f.advance(0);
        f.flush.update(|p| {
            p.lsn = switch;
            true
        });
        let t2 = f.promote();
        f.advance(2 << 20);
        let a = f.segment_bytes(TimelineId(1), SegNo(1));
        let b = f.segment_bytes(t2, SegNo(1));
        assert_eq!(a[..4096], b[..4096]);
        assert_ne!(a[4096..4200], b[4096..4200]);
        let mut buf = vec![0u8; 100];
        f.read_wal(t2, Lsn((1 << 20) + 4000), &mut buf).unwrap();
        assert_eq!(buf[..], b[4000..4100]);
        f.remove_before(Lsn(2 << 20));
        assert!(matches!(
            f.read_wal(t2, Lsn(1 << 20), &mut buf),
            Err(SourceError::SegmentRemoved { .. })
        ));
    }
}
