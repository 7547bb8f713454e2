//! The insert buffer: WAL bytes inserted but not yet taken by a flusher,
//! laid out exactly as they will be in the segment files (segment headers,
//! records, padding), so flushing is nothing but positional writes.

use crate::wal::record::{RecordHeader, RECORD_HEADER_SIZE};
use crate::wal::segment::{
    align_up, SegmentHeader, FLAG_FIRST_IS_CONTRECORD, SEG_HEADER_SIZE, WAL_ALIGN,
};
use crate::{Lsn, TimelineId, WalSegSize};

/// What every segment header written by this writer says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SegCtx {
    pub tli: TimelineId,
    pub system_id: u64,
    pub seg_size: WalSegSize,
}

/// A run of the WAL stream: bytes held in memory, or zeroes that fill the
/// rest of a segment after a switch (not held in memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece {
    /// `len` bytes starting at `Batch::bytes[at]`.
    Bytes {
        at: usize,
        len: usize,
    },
    Zeroes {
        len: u64,
    },
}

/// WAL from `start` to `end`, as the pieces that make it up.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// LSN of the first byte.
    pub start: Lsn,
    /// LSN after the last byte (gaps included).
    pub end: Lsn,
    /// The stream bytes, without the gaps.
    pub bytes: Vec<u8>,
    /// Gaps of zeroes: (index in `bytes` before which the gap lies, length).
    pub gaps: Vec<(usize, u64)>,
    /// Records whose first byte is in this batch.
    pub records: u64,
}

impl Batch {
    fn empty_at(lsn: Lsn, bytes: Vec<u8>) -> Batch {
        Batch {
            start: lsn,
            end: lsn,
            bytes,
            gaps: Vec::new(),
            records: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The pieces in stream order. An iterator, not a list: a flush walks
    /// them twice (into the in-memory tail and into the segment files),
    /// and a commit at one client is one flush, so a list would be two
    /// allocations per commit.
    pub fn pieces(&self) -> impl Iterator<Item = Piece> + '_ {
        // Each gap with the bytes between the previous gap (or the start)
        // and it.
        let gaps = self
            .gaps
            .iter()
            .scan(0usize, |at, &(gap_at, len)| {
                let from = std::mem::replace(at, gap_at);
                Some((from, gap_at, len))
            })
            .flat_map(|(from, gap_at, len)| {
                let bytes = (gap_at > from).then_some(Piece::Bytes {
                    at: from,
                    len: gap_at - from,
                });
                bytes
                    .into_iter()
                    .chain(std::iter::once(Piece::Zeroes { len }))
            });
        let tail_at = self.gaps.last().map_or(0, |&(gap_at, _)| gap_at);
        let tail = (self.bytes.len() > tail_at).then_some(Piece::Bytes {
            at: tail_at,
            len: self.bytes.len() - tail_at,
        });
        gaps.chain(tail)
    }
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InsertedRecord {
    /// The record's LSN (what the next record's prev-link names).
    pub start: Lsn,
    /// Where the next record starts: wait for this to be flushed.
    pub end: Lsn,
}

/// The state inserters share, under the insert lock.
#[derive(Debug)]
pub(crate) struct InsertState {
    /// Inserted, not yet taken by a flusher.
    pub pending: Batch,
    /// LSN of the last record inserted: the next record's prev-link.
    pub prev_record: Lsn,
    /// Set by shutdown: no more inserts.
    pub shut_down: bool,
    /// Segments entered by inserts so far (to kick pre-allocation).
    pub segments_entered: u64,
}

impl InsertState {
    pub fn new(start: Lsn, prev_record: Lsn) -> InsertState {
        InsertState {
            pending: Batch::empty_at(start, Vec::new()),
            prev_record,
            shut_down: false,
            segments_entered: 0,
        }
    }

    /// Hand the pending bytes to a flusher, leaving an empty batch (reusing
    /// `spare`'s allocation) at the same position.
    pub fn take(&mut self, mut spare: Vec<u8>) -> Batch {
        spare.clear();
        let end = self.pending.end;
        std::mem::replace(&mut self.pending, Batch::empty_at(end, spare))
    }

    /// Upper bound of the bytes a record with `payload_len` bytes adds.
    pub fn needed_bytes(payload_len: usize, seg_size: WalSegSize) -> usize {
        let tot = (payload_len + RECORD_HEADER_SIZE) as u64;
        let room = seg_size.bytes() - SEG_HEADER_SIZE;
        (tot + WAL_ALIGN + SEG_HEADER_SIZE * (tot / room + 2)) as usize
    }

    /// Append one record (header + payload + padding), with segment headers
    /// where it crosses into new segments. `switch` fills the rest of the
    /// segment the record ends in with zeroes.
    pub fn append(
        &mut self,
        ctx: &SegCtx,
        rmid: u8,
        info: u8,
        payload: &[u8],
        payload_crc: &crc32fast::Hasher,
        switch: bool,
    ) -> InsertedRecord {
        let start = self.pending.end;
        let tot_len = (payload.len() + RECORD_HEADER_SIZE) as u32;
        let header =
            RecordHeader::encode(start, self.prev_record, rmid, info, tot_len, payload_crc);
        let mut placed = 0u64;
        self.push_record_bytes(ctx, &header, u64::from(tot_len), &mut placed);
        self.push_record_bytes(ctx, payload, u64::from(tot_len), &mut placed);
        self.pad(ctx, switch);
        self.prev_record = start;
        self.pending.records += 1;
        InsertedRecord {
            start,
            end: self.pending.end,
        }
    }

    fn push_record_bytes(&mut self, ctx: &SegCtx, mut data: &[u8], total: u64, placed: &mut u64) {
        let seg = ctx.seg_size.bytes();
        while !data.is_empty() {
            let off = self.pending.end.segment_offset(ctx.seg_size);
            if off == 0 {
                let rem = if *placed == 0 { 0 } else { total - *placed };
                self.push_segment_header(ctx, rem as u32);
                continue;
            }
            let n = data.len().min((seg - off) as usize);
            self.pending.bytes.extend_from_slice(&data[..n]);
            self.pending.end = Lsn(self.pending.end.0 + n as u64);
            data = &data[n..];
            *placed += n as u64;
        }
    }

    fn push_segment_header(&mut self, ctx: &SegCtx, rem_len: u32) {
        let h = SegmentHeader {
            flags: if rem_len > 0 {
                FLAG_FIRST_IS_CONTRECORD
            } else {
                0
            },
            tli: ctx.tli,
            rem_len,
            pageaddr: self.pending.end,
            system_id: ctx.system_id,
            seg_size: ctx.seg_size,
        };
        self.pending.bytes.extend_from_slice(&h.encode());
        self.pending.end = Lsn(self.pending.end.0 + SEG_HEADER_SIZE);
        self.segments_entered += 1;
    }

    /// Zeroes up to the alignment (never past a segment end, since segment
    /// sizes are multiples of the alignment); after a switch, up to the end
    /// of the segment.
    fn pad(&mut self, ctx: &SegCtx, switch: bool) {
        let end = self.pending.end;
        let aligned = align_up(end).unwrap_or(end);
        let pad = (aligned.0 - end.0) as usize;
        self.pending.bytes.resize(self.pending.bytes.len() + pad, 0);
        self.pending.end = aligned;
        let off = aligned.segment_offset(ctx.seg_size);
        if switch && off != 0 {
            let gap = ctx.seg_size.bytes() - off;
            self.pending.gaps.push((self.pending.bytes.len(), gap));
            self.pending.end = Lsn(aligned.0 + gap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::payload_crc;

    fn ctx() -> SegCtx {
        SegCtx {
            tli: TimelineId(1),
            system_id: 7,
            seg_size: WalSegSize::new(1 << 20).unwrap(),
        }
    }

    #[test]
    fn first_record_of_segment_follows_header() {
        let seg = 1u64 << 20;
        let mut st = InsertState::new(Lsn(seg), Lsn::INVALID);
        let r = st.append(&ctx(), 1, 0, b"abc", &payload_crc(b"abc"), false);
        assert_eq!(r.start, Lsn(seg));
        // 40 header + 27 record, aligned to 72.
        assert_eq!(r.end, Lsn(seg + 72));
        assert_eq!(st.pending.bytes.len(), 72);
        let r2 = st.append(&ctx(), 1, 0, b"", &payload_crc(b""), false);
        assert_eq!(
            r2,
            InsertedRecord {
                start: Lsn(seg + 72),
                end: Lsn(seg + 96)
            }
        );
    }

    #[test]
    fn spanning_record_gets_continuation_header() {
        let seg = 1u64 << 20;
        let mut st = InsertState::new(Lsn(2 * seg - 16), Lsn(8));
        let payload = vec![9u8; 100];
        let r = st.append(&ctx(), 1, 0, &payload, &payload_crc(&payload), false);
        // 16 bytes in the first segment, header, 108 bytes, aligned.
        assert_eq!(r.end, Lsn(2 * seg + 40 + 112));
        let h = SegmentHeader::decode(&st.pending.bytes[16..56]).unwrap();
        assert_eq!(h.rem_len, 124 - 16);
        assert_eq!(h.pageaddr, Lsn(2 * seg));
    }

    #[test]
    fn switch_leaves_a_gap_to_segment_end() {
        let seg = 1u64 << 20;
        let mut st = InsertState::new(Lsn(seg + 40), Lsn(8));
        let r = st.append(&ctx(), 0, 0x40, b"", &payload_crc(b""), true);
        assert_eq!(r.end, Lsn(2 * seg));
        assert_eq!(
            st.pending.pieces().collect::<Vec<_>>(),
            vec![
                Piece::Bytes { at: 0, len: 24 },
                Piece::Zeroes { len: seg - 64 }
            ]
        );
        let r2 = st.append(&ctx(), 1, 0, b"x", &payload_crc(b"x"), false);
        assert_eq!(r2.start, Lsn(2 * seg));
        assert_eq!(st.pending.pieces().count(), 3);
    }

    #[test]
    fn pieces_interleave_bytes_and_gaps_in_stream_order() {
        let batch = Batch {
            bytes: vec![1; 10],
            gaps: vec![(0, 5), (4, 7), (4, 3)],
            ..Batch::default()
        };
        assert_eq!(
            batch.pieces().collect::<Vec<_>>(),
            vec![
                Piece::Zeroes { len: 5 },
                Piece::Bytes { at: 0, len: 4 },
                Piece::Zeroes { len: 7 },
                Piece::Zeroes { len: 3 },
                Piece::Bytes { at: 4, len: 6 },
            ]
        );
        let only_gap = Batch {
            bytes: vec![1; 4],
            gaps: vec![(4, 9)],
            ..Batch::default()
        };
        assert_eq!(
            only_gap.pieces().collect::<Vec<_>>(),
            vec![Piece::Bytes { at: 0, len: 4 }, Piece::Zeroes { len: 9 }]
        );
        assert_eq!(Batch::default().pieces().count(), 0);
    }
}
