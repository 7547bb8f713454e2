//! walrep's `WAL_RANGE begin end [TIMELINE n]` (the design's "RequestWAL
//! begin end → WALRange"): exactly the WAL bytes `[begin, end)` of one
//! timeline in a COPY OUT, then the command completes. Beside
//! START_REPLICATION's open-ended stream, it lets a client fetch a bounded
//! range on a connection of its own (a base backup's WAL while its files
//! are copied) with no status messages and no slot.
//!
//! The whole range is checked before the first byte is sent: on the
//! timeline (neither before its start nor past its switch point), not
//! ahead of the flush position, not removed. A segment removed while the
//! range is being sent ends the COPY with the same "already removed" error.

use walrep_states::{Lsn, TimelineId};

use super::exec::source_error;
use super::session::{Failure, Session};
use super::walsender::removed_error;
use crate::replication::pgwire::BackendMessage;
use crate::replication::source::{ReplicationSource, SourceError};
use crate::replication::sqlstate::{self as code, PgError};

/// Bytes per CopyData message.
const CHUNK_BYTES: u64 = 128 * 1024;
/// Longest range one command may ask for; a longer one is several
/// commands (it bounds how long a segment can be held by one request).
pub const MAX_RANGE_BYTES: u64 = 1 << 32;

/// Check the range, then send it.
pub(super) fn wal_range<S: ReplicationSource>(
    s: &mut Session<S>,
    begin: Lsn,
    end: Lsn,
    timeline: Option<TimelineId>,
) -> Result<(), Failure> {
    let src = s.ctx.source.clone();
    let tli = check_range(&*src, begin, end, timeline)?;
    s.conn.send(&BackendMessage::CopyOutResponse {
        format: 0,
        columns: vec![],
    });
    let seg = src.wal_segment_size();
    let mut at = begin;
    while at < end {
        let to_segment_end = seg.bytes() - at.segment_offset(seg);
        let n = (end.0 - at.0).min(CHUNK_BYTES).min(to_segment_end);
        let mut buf = vec![0u8; n as usize];
        src.read_wal(tli, at, &mut buf).map_err(|e| match e {
            SourceError::SegmentRemoved { .. } => {
                removed_error(at, src.oldest_lsn(), tli, seg).into()
            }
            other => Failure::from(source_error(other)),
        })?;
        s.conn.send(&BackendMessage::CopyData(buf));
        s.conn
            .flush()
            .map_err(|e| Failure::Gone(format!("could not send WAL to client: {e}")))?;
        at = Lsn(at.0 + n);
    }
    s.conn.send(&BackendMessage::CopyDone);
    Ok(())
}

/// The timeline the range is read from, or the error that refuses it.
pub fn check_range<S: ReplicationSource + ?Sized>(
    src: &S,
    begin: Lsn,
    end: Lsn,
    timeline: Option<TimelineId>,
) -> Result<TimelineId, PgError> {
    let invalid = |m: String| PgError::error(code::INVALID_PARAMETER_VALUE, m);
    if end < begin {
        return Err(invalid(format!(
            "WAL range end {end} is before its begin {begin}"
        )));
    }
    if end.0 - begin.0 > MAX_RANGE_BYTES {
        return Err(invalid(format!(
            "WAL range {begin} to {end} is longer than {MAX_RANGE_BYTES} bytes; ask for it in parts"
        )));
    }
    let fp = src.flush_point();
    let tli = timeline.unwrap_or(fp.tli);
    let history = src.timeline_history().map_err(source_error)?;
    let Some(switch) = history.switch_point(tli) else {
        return Err(invalid(format!(
            "requested timeline {} is not in this server's history",
            tli.0
        )));
    };
    let tli_begin = history.begin_of(tli).unwrap_or(Lsn(0));
    if begin < tli_begin {
        return Err(PgError::error(
            code::OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "WAL range {begin} to {end} crosses the start of timeline {} at {tli_begin}",
                tli.0
            ),
        ));
    }
    if let Some(switch) = switch.filter(|sw| end > *sw) {
        return Err(PgError::error(
            code::OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "WAL range {begin} to {end} crosses the end of timeline {} at {switch}",
                tli.0
            ),
        )
        .with_hint("Ask for the part after the switch point on the next timeline."));
    }
    if end > fp.lsn {
        return Err(invalid(format!(
            "requested end {end} is ahead of the WAL flush position of this server {}",
            fp.lsn
        )));
    }
    let oldest = src.oldest_lsn();
    if begin < end && begin < oldest {
        return Err(removed_error(begin, oldest, tli, src.wal_segment_size()));
    }
    Ok(tli)
}
