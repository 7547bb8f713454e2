//! Read-only memory maps of segment files, for the validating reader (the
//! raw reader of walsenders reads with `pread`, see [`super::raw`]).

use std::fs::File;
use std::io;
use std::path::Path;

use memmap2::{Advice, Mmap};

use crate::{SegNo, TimelineId, WalSegSize};

/// One segment file mapped read-only.
#[derive(Debug)]
pub(crate) struct MappedSegment {
    /// Timeline of the mapped file.
    pub tli: TimelineId,
    /// Its segment number.
    pub segno: SegNo,
    /// The whole file (exactly one segment long).
    pub map: Mmap,
}

/// Why a segment could not be mapped.
#[derive(Debug)]
pub(crate) enum MapError {
    /// The file does not exist.
    Missing,
    /// The file is not exactly one segment long (mapping it could fault).
    BadSize {
        found: u64,
    },
    Io(io::Error),
}

impl MappedSegment {
    /// Map `path` as segment `(tli, segno)`.
    pub fn open(
        path: &Path,
        tli: TimelineId,
        segno: SegNo,
        seg_size: WalSegSize,
    ) -> Result<MappedSegment, MapError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(MapError::Missing),
            Err(e) => return Err(MapError::Io(e)),
        };
        let len = file.metadata().map_err(MapError::Io)?.len();
        if len != seg_size.bytes() {
            return Err(MapError::BadSize { found: len });
        }
        // SAFETY: segment files are pre-allocated to their full size and are
        // never truncated by walrep (recycling renames, removal unlinks; both
        // keep the mapped inode intact), so no access inside `len` can fault.
        // Concurrent writes by the WAL writer or a walreceiver only change
        // bytes beyond what the reader has been told is flushed, and every
        // record read is validated (length, CRC over its own LSN, prev-link)
        // before it is used, so a byte changing under us cannot be mistaken
        // for valid WAL.
        let map = unsafe { Mmap::map(&file) }.map_err(MapError::Io)?;
        // Only a hint: failure is harmless.
        let _ = map.advise(Advice::Sequential);
        Ok(MappedSegment { tli, segno, map })
    }
}
