//! Raw reads of the WAL byte stream for walsenders: the bytes of the segment
//! files, verbatim, so that what a standby or pg_receivewal stores is
//! byte-identical to ours. No validation: the receiver's reader validates.
//!
//! Reads are `pread`s into the caller's buffer (the walsender's outgoing
//! message), as PostgreSQL's `WALRead`: one copy out of the page cache. A
//! memory map would cost page faults while copying and an unmap (a TLB
//! flush) per segment, for bytes that are read once.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use walrep_states::TimelineHistory;

use super::segdir::{SegmentDir, SegmentError};
use super::timeline::candidate_timelines;
use crate::{Lsn, SegNo, TimelineId};

/// One segment file open for reading.
#[derive(Debug)]
struct OpenSegment {
    tli: TimelineId,
    segno: SegNo,
    file: File,
}

/// Copies WAL bytes out of segment files, keeping the current one open.
#[derive(Debug)]
pub struct RawReader {
    segdir: Arc<SegmentDir>,
    seg: Option<OpenSegment>,
}

impl RawReader {
    /// A reader of the segments in `segdir`; it opens one segment at a
    /// time, on the first read from it.
    pub fn new(segdir: Arc<SegmentDir>) -> RawReader {
        RawReader { segdir, seg: None }
    }

    /// Fill `buf` with the WAL of timeline `tli` from `lsn` on, crossing
    /// segment boundaries. The caller only asks for flushed WAL. A segment
    /// that is missing, or was removed or recycled while it was read, is
    /// PostgreSQL's "requested WAL segment ... has already been removed".
    pub fn read(&mut self, tli: TimelineId, lsn: Lsn, buf: &mut [u8]) -> Result<(), SegmentError> {
        self.read_with(lsn, buf, |_, _| vec![tli])
    }

    /// Like `read`, choosing each segment's file by `history` as the
    /// validating reader does: for the segment holding a switch point the
    /// new timeline's copy is preferred (PostgreSQL's walsender does the same).
    pub fn read_history(
        &mut self,
        history: &TimelineHistory,
        lsn: Lsn,
        buf: &mut [u8],
    ) -> Result<(), SegmentError> {
        let seg_size = self.segdir.seg_size();
        self.read_with(lsn, buf, |pos, _| {
            candidate_timelines(history, pos, seg_size)
        })
    }

    fn read_with(
        &mut self,
        mut lsn: Lsn,
        buf: &mut [u8],
        candidates: impl Fn(Lsn, SegNo) -> Vec<TimelineId>,
    ) -> Result<(), SegmentError> {
        let seg_size = self.segdir.seg_size();
        let mut done = 0;
        while done < buf.len() {
            let segno = lsn.segno(seg_size);
            let seg = self.open(segno, &candidates(lsn, segno))?;
            let off = lsn.segment_offset(seg_size);
            let n = (buf.len() - done).min((seg_size.bytes() - off) as usize);
            let tli = seg.tli;
            if let Err(e) = seg.file.read_exact_at(&mut buf[done..done + n], off) {
                let path = self.segdir.segment_path(tli, segno);
                self.seg = None;
                return Err(SegmentError::io("read", &path)(e));
            }
            // The file may have been recycled while we copied (PostgreSQL's
            // CheckXLogRemoved after XLogRead).
            self.segdir.check_not_removed(tli, segno)?;
            done += n;
            lsn = Lsn(lsn.0 + n as u64);
        }
        Ok(())
    }

    fn open(&mut self, segno: SegNo, tlis: &[TimelineId]) -> Result<&OpenSegment, SegmentError> {
        let hit = self
            .seg
            .as_ref()
            .is_some_and(|m| m.segno == segno && tlis.first() == Some(&m.tli));
        if !hit {
            self.seg = None;
            self.seg = Some(self.open_first(segno, tlis)?);
        }
        self.seg.as_ref().ok_or(SegmentError::Removed {
            name: format!("{segno}"),
        })
    }

    fn open_first(&self, segno: SegNo, tlis: &[TimelineId]) -> Result<OpenSegment, SegmentError> {
        let seg_size = self.segdir.seg_size();
        for &tli in tlis {
            self.segdir.check_not_removed(tli, segno)?;
            let path = self.segdir.segment_path(tli, segno);
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(SegmentError::io("open", &path)(e)),
            };
            let found = file
                .metadata()
                .map_err(SegmentError::io("stat", &path))?
                .len();
            if found != seg_size.bytes() {
                return Err(SegmentError::BadSize {
                    path,
                    found,
                    expected: seg_size.bytes(),
                });
            }
            return Ok(OpenSegment { tli, segno, file });
        }
        let tli = tlis.first().copied().unwrap_or(TimelineId::FIRST);
        Err(SegmentError::Removed {
            name: segno.file_name(tli, seg_size),
        })
    }
}
