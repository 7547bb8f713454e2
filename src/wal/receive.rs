//! The walreceiver's side of segment files (PostgreSQL's XLogWalRcvWrite /
//! XLogWalRcvFlush): received WAL bytes are written at their LSN into
//! pre-allocated segment files under their real names, made durable on
//! request, and each completed segment is fsynced, closed and marked
//! `.done` (or `.ready` with `archive_mode = always`).
//!
//! Like the WAL writer, a failed write or fdatasync is final: the writer
//! remembers it and every later call fails with it; nothing retries.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use super::lookahead::Lookahead;
use super::segdir::{SegmentDir, SegmentError};
use crate::{Lsn, SegNo, TimelineId};

/// What a completed received segment is marked as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletedMark {
    /// `.done`: the primary archives it (PostgreSQL's default on a standby).
    Done,
    /// `.ready`: this node archives it too (`archive_mode = always`).
    Ready,
}

/// Writes received WAL into segment files of one timeline.
#[derive(Debug)]
pub struct SegmentWriter {
    segdir: Arc<SegmentDir>,
    tli: TimelineId,
    mark: CompletedMark,
    /// The segment being written.
    /// Shared with the walreceiver's fsync thread (see
    /// [`SegmentWriter::current_segment`]).
    current: Option<(SegNo, Arc<File>, PathBuf)>,
    /// End of the bytes written so far.
    written: Lsn,
    /// End of the bytes whose data is durable (names: see `opened`).
    flushed: Lsn,
    /// The first failure; every later call returns it.
    failed: Option<String>,
    /// Creates the next segment before the stream reaches it.
    ahead: Lookahead,
    /// Segments opened so far (each a name in `wal/` that may have been
    /// created, renamed into place or found at start-up since the last
    /// fsync of `wal/`): a flush reported past a segment's start needs its
    /// name durable as well as its data.
    opened: u64,
    /// `opened` when this writer last fsynced `wal/`.
    names_synced: u64,
}

impl SegmentWriter {
    /// A writer for timeline `tli` whose next byte is at `start`.
    pub fn new(
        segdir: Arc<SegmentDir>,
        tli: TimelineId,
        start: Lsn,
        mark: CompletedMark,
    ) -> SegmentWriter {
        SegmentWriter {
            ahead: Lookahead::start(Arc::clone(&segdir)),
            segdir,
            tli,
            mark,
            current: None,
            written: start,
            flushed: start,
            failed: None,
            opened: 0,
            names_synced: 0,
        }
    }

    /// The timeline whose segments this writer fills (the one the
    /// walreceiver is streaming).
    pub fn timeline(&self) -> TimelineId {
        self.tli
    }

    /// End of the WAL written (not necessarily durable).
    pub fn written(&self) -> Lsn {
        self.written
    }

    /// End of the WAL made durable: what the startup process may read and
    /// what the standby reports as its flush position.
    pub fn flushed(&self) -> Lsn {
        self.flushed
    }

    fn check(&self) -> Result<(), SegmentError> {
        match &self.failed {
            Some(msg) => Err(SegmentError::Io {
                op: "write received WAL (an earlier IO failure stopped this writer)",
                path: self.segdir.path().to_path_buf(),
                source: std::io::Error::other(msg.clone()),
            }),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: SegmentError) -> SegmentError {
        self.failed = Some(e.to_string());
        self.current = None;
        e
    }

    /// Write `data` received for `lsn` (normally `written()`; an upstream
    /// may restart at a segment start, which rewinds). Segments completed on
    /// the way are fsynced and marked.
    pub fn write(&mut self, lsn: Lsn, data: &[u8]) -> Result<(), SegmentError> {
        self.check()?;
        if lsn != self.written {
            self.current = None;
            self.written = lsn;
            self.flushed = self.flushed.min(lsn);
        }
        let seg_size = self.segdir.seg_size();
        let mut data = data;
        while !data.is_empty() {
            let segno = self.written.segno(seg_size);
            let off = self.written.segment_offset(seg_size);
            let n = data.len().min((seg_size.bytes() - off) as usize);
            let res = self.write_at(segno, off, &data[..n]);
            res.map_err(|e| self.fail(e))?;
            self.written = Lsn(self.written.0 + n as u64);
            data = &data[n..];
            if self.written.segment_offset(seg_size) == 0 {
                let res = self.complete(segno);
                res.map_err(|e| self.fail(e))?;
            }
        }
        Ok(())
    }

    fn write_at(&mut self, segno: SegNo, off: u64, data: &[u8]) -> Result<(), SegmentError> {
        if self.current.as_ref().is_none_or(|(s, _, _)| *s != segno) {
            let f = self.segdir.open_for_receive(self.tli, segno)?;
            let path = self.segdir.segment_path(self.tli, segno);
            self.current = Some((segno, Arc::new(f), path));
            self.opened += 1;
            self.ahead.ask(self.tli, segno.next());
        }
        match &self.current {
            Some((_, f, path)) => self
                .segdir
                .storage()
                .write_at(f, path, off, data)
                .map_err(SegmentError::io("write", path)),
            None => Ok(()),
        }
    }

    /// fsync and close a segment whose last byte arrived, then mark it.
    fn complete(&mut self, segno: SegNo) -> Result<(), SegmentError> {
        self.sync_current()?;
        self.current = None;
        self.flushed = self.written;
        let name = segno.file_name(self.tli, self.segdir.seg_size());
        match self.mark {
            CompletedMark::Done => self.segdir.mark_received_done(&name),
            CompletedMark::Ready => self.segdir.mark_ready(&name),
        }
    }

    fn sync_current(&self) -> Result<(), SegmentError> {
        if let Some((_, f, path)) = &self.current {
            self.segdir
                .storage()
                .sync_data(f, path)
                .map_err(SegmentError::io("fdatasync", path))?;
        }
        Ok(())
    }

    /// Another thread's fsync of this writer's files failed: the writer
    /// is stopped as if its own had (every later call fails; nothing
    /// retries an fsync, whose failure may have dropped written pages).
    pub fn poison(&mut self, reason: String) {
        if self.failed.is_none() {
            self.failed = Some(reason);
        }
        self.current = None;
    }

    /// The segment file being written and its path, for another thread
    /// to fsync: every byte before `written()` lies in it or in a segment
    /// already fsynced at its completion. `None` at a segment boundary
    /// (nothing written since the last completion).
    pub fn current_segment(&self) -> Option<(Arc<File>, PathBuf)> {
        self.current
            .as_ref()
            .map(|(_, f, path)| (Arc::clone(f), path.clone()))
    }

    /// How many segments this writer has opened: a flush request carries
    /// it, and whoever fsyncs also fsyncs `wal/` when it moved since the
    /// last time (see [`SegmentWriter::sync_names`]).
    pub fn opened(&self) -> u64 {
        self.opened
    }

    /// fsync `wal/`: makes the names of the segments written so far
    /// durable. A segment this writer created itself was renamed into place
    /// with a directory fsync, but one placed by another thread, recycled,
    /// or found at start-up (a crashed predecessor's name may still be
    /// only in the page cache) has no such guarantee, and an fdatasync of
    /// its data never covers its name.
    pub fn sync_names(segdir: &SegmentDir) -> Result<(), SegmentError> {
        segdir
            .storage()
            .sync_dir(segdir.path())
            .map_err(SegmentError::io("fsync directory", segdir.path()))
    }

    /// Make everything written durable (one fdatasync, and an fsync of
    /// `wal/` if a segment was opened since this writer's last one);
    /// returns `flushed()`. A completed segment's data was fsynced at its
    /// completion, its name only here (or by the walreceiver's fsync
    /// thread): nothing may be reported flushed past a segment's start
    /// before one of them ran.
    pub fn flush(&mut self) -> Result<Lsn, SegmentError> {
        self.check()?;
        if self.flushed < self.written {
            let res = self.sync_current();
            res.map_err(|e| self.fail(e))?;
            self.flushed = self.written;
        }
        // A segment completed since (its data fsynced at completion) may
        // still need its name made durable.
        if self.names_synced != self.opened {
            let res = Self::sync_names(&self.segdir);
            res.map_err(|e| self.fail(e))?;
            self.names_synced = self.opened;
        }
        Ok(self.flushed)
    }

    /// Overwrite `[from, to)` of this timeline's segments with zeroes and
    /// make that durable; the write position is unchanged. WAL held there
    /// that the upstream does not have (it restarted with less) must never
    /// be read as records later.
    pub fn zero_range(&mut self, from: Lsn, to: Lsn) -> Result<(), SegmentError> {
        static ZEROES: [u8; 64 * 1024] = [0; 64 * 1024];
        self.check()?;
        self.current = None;
        let seg_size = self.segdir.seg_size();
        let mut at = from;
        while at < to {
            let segno = at.segno(seg_size);
            let seg_end = segno.next().start_lsn(seg_size).min(to);
            let f = self.segdir.open_for_receive(self.tli, segno)?;
            let path = self.segdir.segment_path(self.tli, segno);
            while at < seg_end {
                let n = ((seg_end.0 - at.0) as usize).min(ZEROES.len());
                let off = at.segment_offset(seg_size);
                self.segdir
                    .storage()
                    .write_at(&f, &path, off, &ZEROES[..n])
                    .map_err(SegmentError::io("write", &path))
                    .map_err(|e| self.fail(e))?;
                at = Lsn(at.0 + n as u64);
            }
            self.segdir
                .storage()
                .sync_data(&f, &path)
                .map_err(SegmentError::io("fdatasync", &path))
                .map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    /// Continue on another timeline from `start` (the upstream switched
    /// timelines): flush and close the current segment first.
    pub fn switch_timeline(&mut self, tli: TimelineId, start: Lsn) -> Result<(), SegmentError> {
        self.flush()?;
        self.current = None;
        self.tli = tli;
        self.written = start;
        self.flushed = start;
        Ok(())
    }
}
