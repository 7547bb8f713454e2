//! The write-ahead log: segment files named like PostgreSQL's, the record
//! format (see docs/wal-format.md), the group-commit WAL writer, the
//! validating reader and timeline history files.
//!
//! # Layout
//!
//! - [`segment`]: the segment header at every segment start and the
//!   arithmetic of the WAL byte stream (LSNs count header bytes, so the
//!   stream is exactly the bytes of the segment files).
//! - [`record`]: the record header (length, rmid, info, prev-link, CRC
//!   bound to the record's own LSN) and size limits.
//! - [`xlog`]: the typed payloads of resource manager 0 (checkpoint,
//!   switch, end of recovery, backup end, no-op).
//! - [`segdir`]: the WAL directory: pre-allocated segment files, listing,
//!   archive status files, removal and recycling below a horizon.
//! - [`writer`]: [`Wal`], the group-commit writer and its WAL-writer thread.
//! - [`reader`]: [`WalReader`] and [`find_end_of_wal`]: validated records
//!   across segments and timelines, up to an optional limit.
//! - [`raw`]: [`RawReader`], verbatim WAL bytes for walsenders.
//! - [`receive`]: [`SegmentWriter`], a walreceiver writing received bytes
//!   into segment files.
//! - [`timeline`]: history files and the first segment of a new timeline.
//!
//! Every byte goes to disk through the node's [`crate::storage::Storage`].
//!
//! A typical primary: recovery calls [`find_end_of_wal`] from the last
//! checkpoint's redo point, then [`Wal::start`] at its `end` with its
//! `prev_record`; sessions call [`Wal::insert`] then [`Wal::wait_flushed`].

mod lookahead;
mod map;
pub mod raw;
pub mod reader;
pub mod receive;
pub mod record;
pub mod segdir;
pub mod segment;
pub mod timeline;
pub mod writer;
pub mod xlog;

pub use raw::RawReader;
pub use reader::{
    find_end_of_wal, valid_wal_after, EndOfWal, ReadError, ReadErrorKind, ReaderConfig, Record,
    RecordBatch, RecordRef, WalAfter, WalMemory, WalReader,
};
pub use receive::{CompletedMark, SegmentWriter};
pub use record::{MAX_PAYLOAD_LEN, MAX_RECORD_LEN, RM_KV, RM_XLOG};
pub use segdir::{
    PreparedSegment, RemovalReport, RemovalRequest, SegmentDir, SegmentError, WalFile, WalFileKind,
    PROMOTION_SPARES,
};
pub use segment::{HeaderProblem, SegmentHeader, SEG_HEADER_SIZE};
pub use timeline::{
    begin_new_timeline_history, init_new_timeline_segment, place_new_timeline_segment,
    prepare_new_timeline_segment, read_history, read_history_text,
    rename_old_timeline_segment_partial, write_history_text, write_new_timeline_history,
    write_new_timeline_history_with, NameSync, TimelineError, UnsyncedHistory,
};
pub use writer::{InsertedRecord, Wal, WalConfig, WalError, WalEvent, WalStats};
pub use xlog::{Checkpoint, EndOfRecovery, XlogError, XlogRecord};

/// The first record position of a new system: segment 1, as PostgreSQL
/// starts (LSN 0 stays invalid).
pub fn initial_lsn(seg_size: crate::WalSegSize) -> crate::Lsn {
    crate::SegNo(1).start_lsn(seg_size)
}
