//! Writing a batch of the insert buffer into segment files and making it
//! durable: positional writes, one fdatasync per segment touched, `.ready`
//! for each completed segment. Runs under the flush lock.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::buffer::{Batch, Piece};
use super::stats::Counters;
use crate::wal::segdir::SegmentDir;
use crate::{Lsn, SegNo, TimelineId};

/// Zeroes written after a segment switch come from here.
static ZEROES: [u8; 64 * 1024] = [0; 64 * 1024];

/// What a flush needs to know besides the batch.
pub(crate) struct FlushCtx<'a> {
    pub segdir: &'a SegmentDir,
    pub tli: TimelineId,
    pub archive_mode: bool,
    pub counters: &'a Counters,
}

/// State owned by whoever holds the flush lock.
#[derive(Debug, Default)]
pub(crate) struct FlushState {
    /// The segment file being written, and its path (kept from its
    /// opening: the storage names the file of every call).
    current: Option<(SegNo, File, PathBuf)>,
    /// Allocation of the last batch, reused for the next one.
    pub spare: Vec<u8>,
    /// Records written ahead of their flush (see `Shared::write_ahead`),
    /// counted with the flush that makes them durable.
    pub written_ahead_records: u64,
}

/// A failed write or fdatasync, with the context the poison message needs.
pub(crate) type FlushFailure = String;

impl FlushState {
    /// Write `batch` and fdatasync it; `written` runs once every byte is
    /// written (in the page cache, readable by walsenders) and before the
    /// last fdatasync, so WAL can be sent while it is made durable.
    /// Returns the segments it completed (each fsynced, and marked
    /// `.ready` when archiving).
    pub fn write_batch(
        &mut self,
        cx: &FlushCtx<'_>,
        batch: &Batch,
        written: impl FnOnce(),
    ) -> Result<Vec<SegNo>, FlushFailure> {
        let completed = self.write_only(cx, batch)?;
        written();
        self.sync_current(cx)?;
        Ok(completed)
    }

    /// Write `batch` without the final fdatasync (a segment completed on
    /// the way is still fsynced): what is written stays in the current
    /// segment file, which the next [`FlushState::sync_current`] makes
    /// durable. Returns the segments it completed.
    pub fn write_only(
        &mut self,
        cx: &FlushCtx<'_>,
        batch: &Batch,
    ) -> Result<Vec<SegNo>, FlushFailure> {
        let mut completed = Vec::new();
        let mut lsn = batch.start;
        for piece in batch.pieces() {
            match piece {
                Piece::Bytes { at, len } => {
                    self.write_span(cx, &mut lsn, &batch.bytes[at..at + len], &mut completed)?
                }
                Piece::Zeroes { len } => {
                    let mut left = len;
                    while left > 0 {
                        let n = left.min(ZEROES.len() as u64) as usize;
                        self.write_span(cx, &mut lsn, &ZEROES[..n], &mut completed)?;
                        left -= n as u64;
                    }
                }
            }
        }
        Ok(completed)
    }

    /// fdatasync the segment file being written: everything written
    /// before is then durable (completed segments were synced as they
    /// completed).
    pub fn sync_current(&mut self, cx: &FlushCtx<'_>) -> Result<(), FlushFailure> {
        if let Some((segno, f, path)) = &self.current {
            sync(cx, *segno, f, path)?;
        }
        Ok(())
    }

    /// Write `data` at `lsn`, splitting at segment boundaries; a segment
    /// whose last byte is written is fsynced and completed at once.
    fn write_span(
        &mut self,
        cx: &FlushCtx<'_>,
        lsn: &mut Lsn,
        mut data: &[u8],
        completed: &mut Vec<SegNo>,
    ) -> Result<(), FlushFailure> {
        let seg_size = cx.segdir.seg_size();
        while !data.is_empty() {
            let segno = lsn.segno(seg_size);
            let off = lsn.segment_offset(seg_size);
            let n = data.len().min((seg_size.bytes() - off) as usize);
            let (file, path) = self.file_for(cx, segno)?;
            cx.segdir
                .storage()
                .write_at(file, path, off, &data[..n])
                .map_err(|e| {
                    format!(
                        "could not write to WAL file {} at offset {off}, length {n}: {e}",
                        segno.file_name(cx.tli, seg_size)
                    )
                })?;
            *lsn = Lsn(lsn.0 + n as u64);
            data = &data[n..];
            if lsn.segment_offset(seg_size) == 0 {
                self.complete(cx, segno)?;
                completed.push(segno);
            }
        }
        Ok(())
    }

    fn file_for(
        &mut self,
        cx: &FlushCtx<'_>,
        segno: SegNo,
    ) -> Result<(&File, &PathBuf), FlushFailure> {
        if self.current.as_ref().is_none_or(|(s, _, _)| *s != segno) {
            let f = cx
                .segdir
                .open_for_write(cx.tli, segno)
                .map_err(|e| e.to_string())?;
            self.current = Some((segno, f, cx.segdir.segment_path(cx.tli, segno)));
        }
        match &self.current {
            Some((_, f, path)) => Ok((f, path)),
            None => Err("no current WAL segment".into()),
        }
    }

    /// The segment's last byte is written: make it durable, hand it to the
    /// archiver. A failure to create `.ready` is not fatal: removal later
    /// recreates a missing status file (PostgreSQL's XLogArchiveCheckDone).
    fn complete(&mut self, cx: &FlushCtx<'_>, segno: SegNo) -> Result<(), FlushFailure> {
        if let Some((s, f, path)) = self.current.take() {
            sync(cx, s, &f, &path)?;
        }
        Counters::add(&cx.counters.segments_completed, 1);
        if cx.archive_mode {
            let name = segno.file_name(cx.tli, cx.segdir.seg_size());
            if let Err(e) = cx.segdir.mark_ready(&name) {
                tracing::warn!(segment = %name, error = %e, "could not mark WAL segment ready for archiving");
            }
        }
        Ok(())
    }
}

fn sync(cx: &FlushCtx<'_>, segno: SegNo, f: &File, path: &Path) -> Result<(), FlushFailure> {
    Counters::add(&cx.counters.fsyncs, 1);
    cx.segdir.storage().sync_data(f, path).map_err(|e| {
        format!(
            "could not fdatasync WAL file {}: {e}",
            segno.file_name(cx.tli, cx.segdir.seg_size())
        )
    })
}
