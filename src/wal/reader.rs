//! The validating WAL reader: records by LSN through memory-mapped segment
//! files, across segment boundaries and timelines, optionally only up to a
//! limit (what a standby's walreceiver has flushed). It stops at the first
//! invalid record and says which check failed and where, as PostgreSQL's
//! xlogreader does; that point is the end of valid WAL.
//!
//! A reader may be given a [`WalMemory`] (a standby's received-WAL buffer):
//! bytes it holds are taken from there instead of the files, with the same
//! checks, so both sources yield the same records.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;
use walrep_states::TimelineHistory;

use super::map::{MapError, MappedSegment};
use super::record::{RecordError, RecordHeader, RECORD_HEADER_SIZE, RM_XLOG};
use super::segment::{
    align_up, data_end, is_record_position, ExpectedHeader, HeaderProblem, SegmentHeader,
    SEG_HEADER_SIZE,
};
use super::timeline::{candidate_timelines, timeline_covers};
use super::xlog::{XlogError, XlogRecord, XLOG_SWITCH};
use crate::{Lsn, SegNo, TimelineId, WalSegSize};

/// Where and what to read.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// The WAL directory (`DATADIR/wal`).
    pub dir: PathBuf,
    /// Segments of any other system are rejected.
    pub system_id: u64,
    /// Segment size of the system (files of another size are rejected).
    pub seg_size: WalSegSize,
    /// Decides which timeline's file is read for each position.
    pub history: TimelineHistory,
}

/// A validated record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Where the record starts.
    pub lsn: Lsn,
    /// Where the next record starts (after alignment; after a segment switch,
    /// the start of the next segment).
    pub end: Lsn,
    /// The previous record's LSN, as stored.
    pub prev: Lsn,
    /// Resource manager (`RM_XLOG`, `RM_KV`, ...): who interprets the payload.
    pub rmid: u8,
    /// Record type within the resource manager.
    pub info: u8,
    /// The payload, validated by the record CRC.
    pub payload: Vec<u8>,
}

impl Record {
    /// The decoded XLOG record, if this is one (`rmid == RM_XLOG`).
    pub fn xlog(&self) -> Option<Result<XlogRecord, XlogError>> {
        (self.rmid == RM_XLOG).then(|| XlogRecord::decode(self.info, &self.payload))
    }

    /// The record as a [`RecordRef`] borrowing its payload.
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            lsn: self.lsn,
            end: self.end,
            prev: self.prev,
            rmid: self.rmid,
            info: self.info,
            payload: &self.payload,
        }
    }
}

/// A validated record whose payload is borrowed (from a [`RecordBatch`]
/// or a [`Record`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Where the record starts.
    pub lsn: Lsn,
    /// Where the next record starts.
    pub end: Lsn,
    /// The previous record's LSN, as stored.
    pub prev: Lsn,
    /// Resource manager: who interprets the payload.
    pub rmid: u8,
    /// Record type within the resource manager.
    pub info: u8,
    /// The payload, validated by the record CRC.
    pub payload: &'a [u8],
}

/// Where one record of a [`RecordBatch`] is.
#[derive(Debug, Clone)]
struct BatchEntry {
    lsn: Lsn,
    end: Lsn,
    prev: Lsn,
    rmid: u8,
    info: u8,
    payload: std::ops::Range<usize>,
}

/// Consecutive validated records with their payloads in one buffer: what
/// redo reads ahead and applies in one go. Cleared and refilled, a batch
/// keeps its buffers, so reading records into it allocates nothing once
/// it has grown to its working size.
#[derive(Debug, Default)]
pub struct RecordBatch {
    data: Vec<u8>,
    entries: Vec<BatchEntry>,
}

impl RecordBatch {
    /// An empty batch.
    pub fn new() -> RecordBatch {
        RecordBatch::default()
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Payload bytes in the batch.
    pub fn payload_bytes(&self) -> usize {
        self.data.len()
    }

    /// Empty the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.data.clear();
        self.entries.clear();
    }

    /// The `i`-th record.
    pub fn get(&self, i: usize) -> Option<RecordRef<'_>> {
        self.entries.get(i).map(|e| self.to_ref(e))
    }

    /// The last record.
    pub fn last(&self) -> Option<RecordRef<'_>> {
        self.entries.last().map(|e| self.to_ref(e))
    }

    /// The records, in WAL order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = RecordRef<'_>> + ExactSizeIterator + '_ {
        self.entries.iter().map(|e| self.to_ref(e))
    }

    /// Keep only the first `n` records.
    pub fn truncate(&mut self, n: usize) {
        if let Some(e) = self.entries.get(n) {
            self.data.truncate(e.payload.start);
        }
        self.entries.truncate(n);
    }

    fn to_ref(&self, e: &BatchEntry) -> RecordRef<'_> {
        RecordRef {
            lsn: e.lsn,
            end: e.end,
            prev: e.prev,
            rmid: e.rmid,
            info: e.info,
            payload: &self.data[e.payload.clone()],
        }
    }
}

/// Which check failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReadErrorKind {
    /// The length field is zero: pre-allocated, never written bytes. This
    /// is how a clean end of WAL looks (PostgreSQL: "invalid record length
    /// at X: expected at least 24, got 0").
    #[error("zero-length record (the clean end of WAL)")]
    ZeroRecord,
    /// The length field is out of range: a torn or garbage header.
    #[error("invalid record length {tot_len}")]
    BadLength {
        /// The record's total length as stored (header plus payload, in
        /// bytes).
        tot_len: u32,
    },
    /// The header fails a check of its own (size limit, reserved bytes).
    #[error("invalid record header: {0}")]
    BadHeader(RecordError),
    /// The CRC32 over payload, LSN and header does not match: a torn
    /// write, or bytes from an older use of the segment.
    #[error("incorrect record checksum: computed {computed:08X}, stored {stored:08X}")]
    Crc {
        /// CRC32 of the bytes read.
        computed: u32,
        /// CRC32 in the record header.
        stored: u32,
    },
    /// The record does not point back at the record before it
    /// (PostgreSQL's `xl_prev` check): a stale record of a recycled
    /// segment, or WAL of another history.
    #[error("record with incorrect prev-link {found} (expected {expected})")]
    PrevLink {
        /// Start of the record read before this one.
        expected: Lsn,
        /// The prev-link the record carries.
        found: Lsn,
    },
    /// A segment the record lies in has a bad header.
    #[error("invalid segment header in WAL file {file}: {problem}")]
    SegmentHeader {
        /// The segment's file name (`000000010000000000000003`).
        file: String,
        /// Which check failed.
        problem: HeaderProblem,
    },
    /// No file holds the segment on any timeline of the history that
    /// covers it.
    #[error("WAL segment {segno} not found (tried {})", names(.tried))]
    MissingSegment {
        /// The segment wanted.
        segno: SegNo,
        /// The file names looked for, newest timeline first.
        tried: Vec<String>,
    },
    /// A segment file is not exactly `wal_segment_size` bytes long.
    #[error("WAL file {file} is {found} bytes long, expected {expected}")]
    SegmentSize {
        /// The segment's file name.
        file: String,
        /// Its length in bytes.
        found: u64,
        /// The WAL segment size in bytes.
        expected: u64,
    },
    /// Opening or mapping a segment failed.
    #[error("could not read WAL file {file}: {message}")]
    Io {
        /// The segment's file name.
        file: String,
        /// The OS error.
        message: String,
    },
    /// The record would end past [`ReaderConfig`]'s limit (on a standby,
    /// what the walreceiver has flushed): not corruption, just not there
    /// yet.
    #[error("record extends beyond the read limit {limit}")]
    LimitReached {
        /// The limit in force.
        limit: Lsn,
    },
    /// The position asked for cannot start a record (invalid, not 8-byte
    /// aligned, or inside a segment header), or no segment is mapped at
    /// it.
    #[error("not a valid record position")]
    NotRecordPosition,
}

fn names(tried: &[String]) -> String {
    if tried.is_empty() {
        "no timeline covers this position".into()
    } else {
        tried.join(", ")
    }
}

impl ReadErrorKind {
    /// An unreadable file rather than invalid WAL: crash recovery must not
    /// take it for the end of WAL.
    pub fn is_io(&self) -> bool {
        matches!(self, ReadErrorKind::Io { .. })
    }

    /// Zeroes where the next record or segment would be: WAL simply ends here.
    pub fn is_zeroes(&self) -> bool {
        matches!(
            self,
            ReadErrorKind::ZeroRecord
                | ReadErrorKind::SegmentHeader {
                    problem: HeaderProblem::Zero,
                    ..
                }
        )
    }
}

/// A record could not be read: `kind` at byte `at` of the record starting at `record`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadError {
    /// The record being read (where the end of valid WAL is).
    pub record: Lsn,
    /// The byte whose check failed (a segment header, a length, ...).
    pub at: Lsn,
    /// Which check failed.
    pub kind: ReadErrorKind,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {} (record at {})",
            self.kind, self.at, self.record
        )
    }
}

impl std::error::Error for ReadError {}

/// WAL bytes held in memory that a reader takes before the files: the
/// bytes of timeline `tli`'s segment files, by position.
pub trait WalMemory: Send + Sync + fmt::Debug {
    /// Append the `len` bytes of timeline `tli` at `at` to `out` and
    /// return `true` if all of them are held; otherwise leave `out` alone
    /// and return `false` (the reader reads the file).
    fn copy_to(&self, tli: TimelineId, at: Lsn, len: usize, out: &mut Vec<u8>) -> bool;
}

/// Reads validated records one after another.
#[derive(Debug)]
pub struct WalReader {
    cfg: ReaderConfig,
    /// Bytes at or past this LSN are not read (not yet flushed by the source).
    limit: Option<Lsn>,
    /// Where the next record starts.
    next: Lsn,
    /// The LSN the next record's prev-link must name; `None` after a seek
    /// to an arbitrary record (PostgreSQL does not check it then either).
    prev: Option<Lsn>,
    /// The segment currently mapped and its validated header.
    seg: Option<(MappedSegment, SegmentHeader)>,
    /// Bytes in memory, taken before the files when they hold a range.
    memory: Option<Arc<dyn WalMemory>>,
    /// The segment (and timeline) whose header was validated for bytes
    /// taken from memory; kept across read errors (unlike `seg`).
    memory_header: Option<(TimelineId, SegNo)>,
    /// Scratch space for record headers, kept so reading allocates nothing.
    head: Vec<u8>,
}

impl WalReader {
    /// A reader positioned at `start` (a record position).
    pub fn new(cfg: ReaderConfig, start: Lsn) -> WalReader {
        WalReader {
            cfg,
            limit: None,
            next: start,
            prev: None,
            seg: None,
            memory: None,
            memory_header: None,
            head: Vec::with_capacity(RECORD_HEADER_SIZE),
        }
    }

    /// Take bytes from `memory` when it holds them (see [`WalMemory`]).
    pub fn set_memory(&mut self, memory: Option<Arc<dyn WalMemory>>) {
        self.memory = memory;
        self.memory_header = None;
    }

    /// Read from `start` next; `prev` is the LSN its prev-link must name, if known.
    pub fn seek(&mut self, start: Lsn, prev: Option<Lsn>) {
        self.next = start;
        self.prev = prev;
    }

    /// Read only bytes below `limit` (`None`: everything on disk).
    pub fn set_limit(&mut self, limit: Option<Lsn>) {
        self.limit = limit;
    }

    /// Follow another history (e.g. a newer timeline became known).
    pub fn set_history(&mut self, history: TimelineHistory) {
        self.cfg.history = history;
        self.seg = None;
        self.memory_header = None;
    }

    /// The timeline history the reader follows to pick the segment file
    /// of each position (set by [`WalReader::set_history`]).
    pub fn history(&self) -> &TimelineHistory {
        &self.cfg.history
    }

    /// Where the next record is expected.
    pub fn next_lsn(&self) -> Lsn {
        self.next
    }

    /// The next valid record. On error the position does not move, so the
    /// same record is tried again next time (after the limit was raised or
    /// a missing segment arrived).
    pub fn read_record(&mut self) -> Result<Record, ReadError> {
        let mut payload = Vec::new();
        let (lsn, end, header) = self.read_next(&mut payload)?;
        Ok(Record {
            lsn,
            end,
            prev: header.prev,
            rmid: header.rmid,
            info: header.info,
            payload,
        })
    }

    /// Read records onto the end of `batch` until it holds `max_records`
    /// or `max_bytes` of payload, or a record cannot be read: then that
    /// error is returned and the records before it stay in the batch (the
    /// position is after them, as with [`read_record`](Self::read_record)).
    pub fn read_batch(
        &mut self,
        batch: &mut RecordBatch,
        max_records: usize,
        max_bytes: usize,
    ) -> Option<ReadError> {
        while batch.len() < max_records && batch.data.len() < max_bytes {
            let from = batch.data.len();
            match self.read_next(&mut batch.data) {
                Ok((lsn, end, h)) => batch.entries.push(BatchEntry {
                    lsn,
                    end,
                    prev: h.prev,
                    rmid: h.rmid,
                    info: h.info,
                    payload: from..batch.data.len(),
                }),
                Err(e) => {
                    batch.data.truncate(from);
                    return Some(e);
                }
            }
        }
        None
    }

    /// The next record, its payload appended to `payload` (left as it was
    /// on error): its start, the next record's start and its header.
    fn read_next(&mut self, payload: &mut Vec<u8>) -> Result<(Lsn, Lsn, RecordHeader), ReadError> {
        let start = self.next;
        let from = payload.len();
        match self.read_at(start, payload) {
            Ok((end, header)) => {
                self.prev = Some(start);
                self.next = end;
                Ok((start, end, header))
            }
            Err(e) => {
                payload.truncate(from);
                // Re-open files next time: one may be replaced meanwhile.
                self.seg = None;
                Err(e)
            }
        }
    }

    fn read_at(&mut self, start: Lsn, out: &mut Vec<u8>) -> Result<(Lsn, RecordHeader), ReadError> {
        let (header, at, pos, end) = self.read_header(start)?;
        // Grown as bytes arrive: a garbage length must not reserve 1 GiB up front.
        out.reserve(header.payload_len().min(1 << 20));
        let from = out.len();
        let left = header.payload_len() as u64;
        self.gather(start, pos, header.payload_len(), left, out)?;
        let computed = header.compute_crc(start, &out[from..]);
        if computed != header.crc {
            let kind = ReadErrorKind::Crc {
                computed,
                stored: header.crc,
            };
            return Err(fail(start, at, kind));
        }
        let next = next_record_position(end, &header, self.cfg.seg_size).ok_or_else(|| {
            fail(
                start,
                at,
                ReadErrorKind::BadLength {
                    tot_len: header.tot_len,
                },
            )
        })?;
        Ok((next, header))
    }

    /// Read and check the header of the record at `start`: its length
    /// (zero = end of WAL), the limit, reserved bytes and prev-link, before
    /// any payload is read. Returns the header, where it is, where the
    /// payload starts and where the record's bytes end (unaligned).
    fn read_header(&mut self, start: Lsn) -> Result<(RecordHeader, Lsn, Lsn, Lsn), ReadError> {
        let seg_size = self.cfg.seg_size;
        if !is_record_position(start, seg_size) {
            return Err(fail(start, start, ReadErrorKind::NotRecordPosition));
        }
        let bad_len = |tot_len| fail(start, start, ReadErrorKind::BadLength { tot_len });
        self.check_limit(start, data_end(start, 8, seg_size).ok_or(bad_len(0))?)?;
        let mut head = std::mem::take(&mut self.head);
        head.clear();
        let result = self.read_header_into(start, &mut head);
        self.head = head;
        result
    }

    /// [`read_header`](Self::read_header) with its scratch space.
    fn read_header_into(
        &mut self,
        start: Lsn,
        head: &mut Vec<u8>,
    ) -> Result<(RecordHeader, Lsn, Lsn, Lsn), ReadError> {
        let seg_size = self.cfg.seg_size;
        let bad_len = |tot_len| fail(start, start, ReadErrorKind::BadLength { tot_len });
        let pos = self.gather(start, start, 8, 0, head)?;
        let tot_len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let at = Lsn(pos.0 - 8);
        if tot_len == 0 {
            return Err(fail(start, at, ReadErrorKind::ZeroRecord));
        }
        RecordHeader::check_tot_len(tot_len)
            .map_err(|_| fail(start, at, ReadErrorKind::BadLength { tot_len }))?;
        let end = data_end(start, u64::from(tot_len), seg_size).ok_or(bad_len(tot_len))?;
        self.check_limit(start, end)?;
        let rest = u64::from(tot_len) - 8;
        let pos = self.gather(start, pos, RECORD_HEADER_SIZE - 8, rest, head)?;
        let mut hb = [0u8; RECORD_HEADER_SIZE];
        hb.copy_from_slice(head);
        let header =
            RecordHeader::decode(&hb).map_err(|e| fail(start, at, ReadErrorKind::BadHeader(e)))?;
        if let Some(expected) = self.prev.filter(|p| *p != header.prev) {
            let kind = ReadErrorKind::PrevLink {
                expected,
                found: header.prev,
            };
            return Err(fail(start, at, kind));
        }
        Ok((header, at, pos, end))
    }

    fn check_limit(&self, record: Lsn, needed_end: Lsn) -> Result<(), ReadError> {
        match self.limit {
            Some(limit) if needed_end > limit => Err(ReadError {
                record,
                at: limit,
                kind: ReadErrorKind::LimitReached { limit },
            }),
            _ => Ok(()),
        }
    }

    /// Append `n` bytes of the record starting at `rec`, read from `pos`
    /// on, to `out`; `remaining` is how many bytes of the record are left
    /// from `pos` (what the header of a segment entered on the way must say
    /// it continues). Returns the position after the bytes.
    fn gather(
        &mut self,
        rec: Lsn,
        mut pos: Lsn,
        n: usize,
        mut remaining: u64,
        out: &mut Vec<u8>,
    ) -> Result<Lsn, ReadError> {
        let seg_size = self.cfg.seg_size;
        let seg_bytes = seg_size.bytes();
        let mut left = n;
        while left > 0 {
            if pos.segment_offset(seg_size) == 0 {
                let rem = if pos == rec { 0 } else { remaining };
                self.enter_segment(rec, pos, rem as u32)?;
                pos = Lsn(pos.0 + SEG_HEADER_SIZE);
            }
            let off = pos.segment_offset(seg_size) as usize;
            let take = left.min(seg_bytes as usize - off);
            if !self.take_from_memory(rec, pos, take, out)? {
                let (seg, _) = self.mapped(rec, pos)?;
                out.extend_from_slice(&seg.map[off..off + take]);
            }
            pos = Lsn(pos.0 + take as u64);
            left -= take;
            remaining = remaining.saturating_sub(take as u64);
        }
        Ok(pos)
    }

    /// Map the segment of `pos` (at its start) and check that its header
    /// continues exactly `rem_len` bytes of the current record.
    fn enter_segment(&mut self, rec: Lsn, pos: Lsn, rem_len: u32) -> Result<(), ReadError> {
        let (tli, header) = match self.header_from_memory(rec, pos)? {
            Some(found) => found,
            None => {
                let (seg, header) = self.mapped(rec, pos)?;
                (seg.tli, header)
            }
        };
        if header.rem_len == rem_len {
            return Ok(());
        }
        let kind = ReadErrorKind::SegmentHeader {
            file: pos
                .segno(self.cfg.seg_size)
                .file_name(tli, self.cfg.seg_size),
            problem: HeaderProblem::Continuation {
                expected: rem_len,
                found: header.rem_len,
            },
        };
        Err(ReadError {
            record: rec,
            at: pos,
            kind,
        })
    }

    /// The timeline whose file the bytes at `pos` are read from: the
    /// newest that may hold it (the file a receiver writes; a buffer of
    /// another timeline's bytes is not used for it).
    fn memory_timeline(&self, pos: Lsn) -> Option<TimelineId> {
        let seg_size = self.cfg.seg_size;
        let spans = self.cfg.history.spans();
        spans
            .iter()
            .rev()
            .find(|s| timeline_covers(&self.cfg.history, s.tli, pos, seg_size))
            .map(|s| s.tli)
    }

    /// Append `n` bytes at `pos` from memory if it holds them all. The
    /// header of their segment is validated first, once per segment, from
    /// memory ([`enter_segment`](Self::enter_segment)) or from the file, as
    /// reading the file would.
    fn take_from_memory(
        &mut self,
        rec: Lsn,
        pos: Lsn,
        n: usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, ReadError> {
        let (Some(memory), Some(tli)) = (self.memory.clone(), self.memory_timeline(pos)) else {
            return Ok(false);
        };
        let segno = pos.segno(self.cfg.seg_size);
        if self.memory_header != Some((tli, segno)) {
            let (seg, _) = self.mapped(rec, pos)?;
            if seg.tli != tli {
                return Ok(false);
            }
            self.memory_header = Some((tli, segno));
        }
        Ok(memory.copy_to(tli, pos, n, out))
    }

    /// The header of the segment starting at `pos`, validated as a file's
    /// is, if memory holds it; `None` sends the reader to the file.
    fn header_from_memory(
        &mut self,
        rec: Lsn,
        pos: Lsn,
    ) -> Result<Option<(TimelineId, SegmentHeader)>, ReadError> {
        let (Some(memory), Some(tli)) = (self.memory.clone(), self.memory_timeline(pos)) else {
            return Ok(None);
        };
        let mut bytes = Vec::with_capacity(SEG_HEADER_SIZE as usize);
        if !memory.copy_to(tli, pos, SEG_HEADER_SIZE as usize, &mut bytes) {
            return Ok(None);
        }
        let segno = pos.segno(self.cfg.seg_size);
        let header = self
            .check_header(&bytes, tli, segno)
            .map_err(|problem| ReadError {
                record: rec,
                at: pos,
                kind: ReadErrorKind::SegmentHeader {
                    file: segno.file_name(tli, self.cfg.seg_size),
                    problem,
                },
            })?;
        self.memory_header = Some((tli, segno));
        Ok(Some((tli, header)))
    }

    /// The mapped segment holding `pos`, mapping (and validating the
    /// header of) the right timeline's file if it is not the current one.
    fn mapped(&mut self, rec: Lsn, pos: Lsn) -> Result<(&MappedSegment, SegmentHeader), ReadError> {
        let seg_size = self.cfg.seg_size;
        let segno = pos.segno(seg_size);
        let cached = self.seg.as_ref().is_some_and(|(m, _)| {
            m.segno == segno && timeline_covers(&self.cfg.history, m.tli, pos, seg_size)
        });
        if !cached {
            self.seg = None;
            self.seg = Some(self.map_segment(rec, pos)?);
        }
        match &self.seg {
            Some((m, h)) => Ok((m, *h)),
            None => Err(ReadError {
                record: rec,
                at: pos,
                kind: ReadErrorKind::NotRecordPosition,
            }),
        }
    }

    fn map_segment(&self, rec: Lsn, pos: Lsn) -> Result<(MappedSegment, SegmentHeader), ReadError> {
        let seg_size = self.cfg.seg_size;
        let segno = pos.segno(seg_size);
        let fail = |kind| ReadError {
            record: rec,
            at: pos,
            kind,
        };
        let mut tried = Vec::new();
        for tli in candidate_timelines(&self.cfg.history, pos, seg_size) {
            let file = segno.file_name(tli, seg_size);
            let path = self.cfg.dir.join(&file);
            let seg = match MappedSegment::open(&path, tli, segno, seg_size) {
                Ok(m) => m,
                Err(MapError::Missing) => {
                    tried.push(file);
                    continue;
                }
                Err(MapError::BadSize { found }) => {
                    let expected = seg_size.bytes();
                    return Err(fail(ReadErrorKind::SegmentSize {
                        file,
                        found,
                        expected,
                    }));
                }
                Err(MapError::Io(e)) => {
                    let message = e.to_string();
                    return Err(fail(ReadErrorKind::Io { file, message }));
                }
            };
            let header = self.check_header(&seg.map, tli, segno).map_err(|problem| {
                fail(ReadErrorKind::SegmentHeader {
                    file: file.clone(),
                    problem,
                })
            })?;
            return Ok((seg, header));
        }
        Err(fail(ReadErrorKind::MissingSegment { segno, tried }))
    }

    /// Everything about a segment header except the continuation length,
    /// which depends on where the reader enters.
    fn check_header(
        &self,
        bytes: &[u8],
        tli: TimelineId,
        segno: SegNo,
    ) -> Result<SegmentHeader, HeaderProblem> {
        let h = SegmentHeader::decode(bytes)?;
        h.check(&ExpectedHeader {
            system_id: self.cfg.system_id,
            seg_size: self.cfg.seg_size,
            tli,
            pageaddr: segno.start_lsn(self.cfg.seg_size),
            rem_len: h.rem_len,
        })?;
        Ok(h)
    }
}

fn fail(record: Lsn, at: Lsn, kind: ReadErrorKind) -> ReadError {
    ReadError { record, at, kind }
}

/// Where the record after one ending (unaligned) at `end` starts: aligned,
/// and for a segment switch, at the start of the next segment.
fn next_record_position(end: Lsn, h: &RecordHeader, seg_size: WalSegSize) -> Option<Lsn> {
    let next = align_up(end)?;
    let is_switch = h.rmid == RM_XLOG && h.info == XLOG_SWITCH;
    if is_switch && next.segment_offset(seg_size) != 0 {
        return next.segment_start(seg_size).checked_add(seg_size.bytes());
    }
    Some(next)
}

/// Valid WAL found past the point where reading stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalAfter {
    /// The first record of the first later segment that reads back.
    pub from: Lsn,
    /// Where the valid WAL from `from` ends.
    pub to: Lsn,
    /// Valid records between the two.
    pub records: u64,
}

/// Whether valid WAL of this system and history follows `stop` in a later
/// segment: then `stop` is damage in the middle of the WAL, not its end.
///
/// A segment is written only after the one before it was completed and
/// fsynced (by the WAL writer and the walreceiver alike), so a later
/// segment that reads back proves every byte before it was once durable.
/// Within the stop's own segment nothing is concluded: bytes past a torn
/// tail may have reached the disk out of order before a crash, which is
/// the normal end of WAL. Pre-allocated (zero) and recycled (wrong
/// `pageaddr`) segments never count. An unreadable file is an error.
pub fn valid_wal_after(cfg: ReaderConfig, stop: Lsn) -> Result<Option<WalAfter>, ReadError> {
    let seg_size = cfg.seg_size;
    let last = last_segment_on_disk(&cfg, stop)?;
    let first = SegNo(stop.segno(seg_size).0 + 1);
    let mut reader = WalReader::new(cfg, stop);
    for segno in first.0..=last.0 {
        let start = SegNo(segno).start_lsn(seg_size);
        let header = match reader.map_segment(start, start) {
            Ok((_, header)) => header,
            Err(e) if e.kind.is_io() => return Err(e),
            Err(_) => continue,
        };
        let Some(record) = data_end(start, u64::from(header.rem_len), seg_size)
            .and_then(align_up)
            .filter(|r| r.segno(seg_size).0 == segno)
        else {
            continue;
        };
        reader.seek(record, None);
        let mut records = 0;
        let to = loop {
            match reader.read_record() {
                Ok(_) => records += 1,
                Err(e) if e.kind.is_io() => return Err(e),
                Err(_) => break reader.next_lsn(),
            }
        };
        if records > 0 {
            return Ok(Some(WalAfter {
                from: record,
                to,
                records,
            }));
        }
    }
    Ok(None)
}

/// The highest segment number among the WAL files in the directory (at
/// least `stop`'s own).
fn last_segment_on_disk(cfg: &ReaderConfig, stop: Lsn) -> Result<SegNo, ReadError> {
    let io = |message: String| ReadError {
        record: stop,
        at: stop,
        kind: ReadErrorKind::Io {
            file: cfg.dir.display().to_string(),
            message,
        },
    };
    let mut last = stop.segno(cfg.seg_size);
    for entry in std::fs::read_dir(&cfg.dir).map_err(|e| io(e.to_string()))? {
        let name = entry.map_err(|e| io(e.to_string()))?.file_name();
        let segno = name
            .to_str()
            .and_then(|n| SegNo::parse_file_name(n, cfg.seg_size))
            .map(|(_, segno)| segno);
        if let Some(s) = segno.filter(|s| s.0 > last.0) {
            last = s;
        }
    }
    Ok(last)
}

/// The end of valid WAL, as crash recovery needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndOfWal {
    /// Where the next record will be written.
    pub end: Lsn,
    /// The last valid record, or the `prev` given if none was read: the
    /// prev-link of the next record (`WalConfig::prev_record_lsn`).
    pub prev_record: Lsn,
    /// Valid records read.
    pub records: u64,
    /// Why reading stopped at `end`.
    pub stop: ReadError,
}

/// Read from `start` (whose prev-link must be `prev`, if known) to the
/// first invalid record (PostgreSQL's redo loop ending at "invalid record
/// length" and friends). An unreadable file is an error, not an end.
pub fn find_end_of_wal(
    cfg: ReaderConfig,
    start: Lsn,
    prev: Option<Lsn>,
) -> Result<EndOfWal, ReadError> {
    let mut reader = WalReader::new(cfg, start);
    reader.seek(start, prev);
    let mut prev_record = prev.unwrap_or(Lsn::INVALID);
    let mut records = 0;
    loop {
        match reader.read_record() {
            Ok(rec) => {
                prev_record = rec.lsn;
                records += 1;
            }
            Err(e) if e.kind.is_io() => return Err(e),
            Err(stop) => {
                return Ok(EndOfWal {
                    end: reader.next_lsn(),
                    prev_record,
                    records,
                    stop,
                })
            }
        }
    }
}
