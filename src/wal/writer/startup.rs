//! Preparing the WAL directory before the writer continues at the end of
//! valid WAL: nothing that was on disk past that point may ever be read as
//! WAL again.
//!
//! Why: after a crash, bytes past the end of valid WAL can still hold
//! records that were written but whose predecessor was torn. Their CRC binds
//! them to their own LSN, and new WAL is written at the *same* LSNs, so with
//! records of equal sizes a stale record could line up with the new chain
//! (same position, same prev-link) and be replayed after newer writes. So
//! the rest of the current segment is zeroed and later segments of this
//! timeline are removed before anything new is written.

use crate::storage::OpenFor;

use super::buffer::SegCtx;
use super::WalError;
use crate::wal::map::{MapError, MappedSegment};
use crate::wal::segdir::{SegmentDir, SegmentError, WalFileKind};
use crate::wal::segment::{is_record_position, ExpectedHeader, SegmentHeader};
use crate::Lsn;

/// Make `start` the end of the WAL on disk for timeline `ctx.tli`, then
/// fsync the directory, unless `dir_sync_by_caller` and nothing was
/// removed (see `WalConfig::dir_sync_by_caller`).
pub(crate) fn prepare(
    segdir: &SegmentDir,
    ctx: &SegCtx,
    start: Lsn,
    dir_sync_by_caller: bool,
) -> Result<(), WalError> {
    let bad = |reason: String| WalError::BadStart { lsn: start, reason };
    if !is_record_position(start, ctx.seg_size) {
        return Err(bad(
            "not a record position (8-byte aligned, not inside a segment header, not 0)".into(),
        ));
    }
    let segno = start.segno(ctx.seg_size);
    let offset = start.segment_offset(ctx.seg_size);
    let in_segment = offset > 0;
    // Segments this process just created (a new timeline's): known zero
    // from an offset on, so there is nothing stale to find in that part.
    let fresh = segdir.take_fresh(ctx.tli);
    let zero_from = |s| fresh.iter().find(|f| f.0 == s).map(|f| f.1);
    if in_segment {
        let known_zero = zero_from(segno).is_some_and(|z| z <= offset);
        zero_tail(segdir, ctx, start, known_zero).map_err(bad)?;
    }
    let first_future = if in_segment { segno.next() } else { segno };
    let mut removed = false;
    for f in segdir.list()? {
        let future = f.segno.is_some_and(|s| s >= first_future);
        // An all-zero segment holds no stale record: kept for the writer.
        let all_zero = f.segno.and_then(zero_from) == Some(0);
        if f.kind == WalFileKind::Segment && f.tli == ctx.tli && future && !all_zero {
            if let Some(s) = f.segno {
                tracing::info!(file = %f.name, "removing WAL segment past the end of valid WAL");
                segdir.remove_segment(ctx.tli, s)?;
                removed = true;
            }
        }
    }
    if dir_sync_by_caller && !removed {
        return Ok(());
    }
    let dir = segdir.path();
    segdir
        .storage()
        .sync_dir(dir)
        .map_err(|e| WalError::from(SegmentError::io("fsync directory", dir)(e)))
}

/// Check the segment valid WAL ends in, and zero every non-zero byte in it
/// from `start` on (unless `known_zero`: then only the header is checked,
/// and the 16 MB are neither faulted in nor scanned).
fn zero_tail(
    segdir: &SegmentDir,
    ctx: &SegCtx,
    start: Lsn,
    known_zero: bool,
) -> Result<(), String> {
    let segno = start.segno(ctx.seg_size);
    let path = segdir.segment_path(ctx.tli, segno);
    let name = segno.file_name(ctx.tli, ctx.seg_size);
    let seg = match MappedSegment::open(&path, ctx.tli, segno, ctx.seg_size) {
        Ok(s) => s,
        Err(MapError::Missing) => {
            return Err(format!(
                "valid WAL ends inside segment {name}, which does not exist \
                 (a new timeline needs init_new_timeline_segment first)"
            ))
        }
        Err(MapError::BadSize { found }) => {
            return Err(format!("segment {name} is {found} bytes long"))
        }
        Err(MapError::Io(e)) => return Err(format!("could not read segment {name}: {e}")),
    };
    let header = SegmentHeader::decode(&seg.map).map_err(|p| format!("segment {name}: {p}"))?;
    header
        .check(&ExpectedHeader {
            system_id: ctx.system_id,
            seg_size: ctx.seg_size,
            tli: ctx.tli,
            pageaddr: segno.start_lsn(ctx.seg_size),
            rem_len: header.rem_len,
        })
        .map_err(|p| format!("segment {name}: {p}"))?;
    if known_zero {
        return Ok(());
    }
    let off = start.segment_offset(ctx.seg_size) as usize;
    let tail = &seg.map[off..];
    let Some(first) = tail.iter().position(|&b| b != 0) else {
        return Ok(());
    };
    let last = tail.iter().rposition(|&b| b != 0).unwrap_or(first);
    let storage = segdir.storage();
    let file = storage
        .open(&path, OpenFor::Existing)
        .map_err(|e| format!("could not open segment {name}: {e}"))?;
    let zeroes = vec![0u8; last + 1 - first];
    tracing::info!(segment = %name, from = off + first, bytes = zeroes.len(), "zeroing stale bytes past the end of valid WAL");
    storage
        .write_at(&file, &path, (off + first) as u64, &zeroes)
        .and_then(|()| storage.sync_data(&file, &path))
        .map_err(|e| format!("could not zero the tail of segment {name}: {e}"))
}
