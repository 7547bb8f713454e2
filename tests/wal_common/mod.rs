//! Helpers shared by the WAL integration tests: a small system (1 MiB
//! segments), starting a writer and reading everything back.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use walrep::wal::{initial_lsn, ReadError, ReaderConfig, Record, Wal, WalConfig, WalIo, WalReader};
use walrep::{Lsn, TimelineId, WalSegSize};
use walrep_states::TimelineHistory;

/// The system identifier of every test system.
pub const SYSTEM_ID: u64 = 0x5EED_0000_CAFE_F00D;

/// The smallest segment size, so that tests cross segments cheaply.
pub fn seg() -> WalSegSize {
    WalSegSize::new(1 << 20).unwrap()
}

/// A writer for a new system on timeline 1 in `dir`.
pub fn new_wal(dir: &Path, io: Option<Arc<dyn WalIo>>) -> Wal {
    let mut cfg = WalConfig::new(
        dir,
        SYSTEM_ID,
        TimelineId(1),
        seg(),
        initial_lsn(seg()),
        Lsn::INVALID,
    );
    if let Some(io) = io {
        cfg.io = io;
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
