//! WAL for the tests: a small test system (1 MiB segments), a writer for
//! it and reading everything back; the WAL files found in a directory.

use std::path::Path;
use std::sync::Arc;

use walrep::storage::Storage;
use walrep::wal::{initial_lsn, ReadError, ReaderConfig, Record, Wal, WalConfig, WalReader};
use walrep::{Lsn, SegNo, TimelineId, WalSegSize};
use walrep_states::TimelineHistory;

use super::file_names;

/// The system identifier of every test system (the in-memory source's too).
pub const SYSTEM_ID: u64 = 7_301_234_567_890_123_456;

/// The smallest segment size, so that tests cross segments cheaply (and
/// pg_receivewal's files stay small).
pub fn seg() -> WalSegSize {
    WalSegSize::new(1 << 20).unwrap()
}

/// The file name of segment `segno` of timeline 1 with [`seg`] segments.
pub fn segment_name(segno: u64) -> String {
    SegNo(segno).file_name(TimelineId(1), seg())
}

/// The complete segments in `dir`: files named like one (24 hex digits),
/// without `.partial` ones, temporaries or history files; sorted.
pub fn segment_file_names(dir: &Path) -> Vec<String> {
    file_names(dir)
        .into_iter()
        .filter(|f| f.len() == 24 && f.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

/// The WAL files of a `wal/` directory: [`file_names`] without the
/// `xlogtemp.` temporaries (segments being pre-allocated, a standby's spare
/// segments for promotion), which hold no WAL.
pub fn wal_file_names(dir: &Path) -> Vec<String> {
    file_names(dir)
        .into_iter()
        .filter(|n| !n.starts_with("xlogtemp."))
        .collect()
}

/// A writer for a new system on timeline 1 in `dir`.
pub fn new_wal(dir: &Path, storage: Option<Arc<dyn Storage>>) -> Wal {
    let mut cfg = WalConfig::new(
        dir,
        SYSTEM_ID,
        TimelineId(1),
        seg(),
        initial_lsn(seg()),
        Lsn::INVALID,
    );
    if let Some(storage) = storage {
        cfg.storage = storage;
    }
    Wal::start(cfg).expect("start WAL writer")
}

/// Reader settings for timeline 1 of the test system.
pub fn reader_cfg(dir: &Path) -> ReaderConfig {
    ReaderConfig {
        dir: dir.to_path_buf(),
        system_id: SYSTEM_ID,
        seg_size: seg(),
        history: TimelineHistory::root(TimelineId(1)),
    }
}

/// Every valid record from the start of the system, and why reading stopped.
pub fn read_all(cfg: ReaderConfig) -> (Vec<Record>, ReadError) {
    let mut r = WalReader::new(cfg, initial_lsn(seg()));
    let mut out = Vec::new();
    loop {
        match r.read_record() {
            Ok(rec) => out.push(rec),
            Err(e) => return (out, e),
        }
    }
}

/// A payload whose bytes depend on `i`, of `len` bytes.
pub fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (i as usize * 31 + j * 7) as u8 | 1)
        .collect()
}
