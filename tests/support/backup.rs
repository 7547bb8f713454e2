//! What the base-backup tests share: the size of the data copied, the
//! bulk keys' value size, a primary holding them, the bytes a copy wrote
//! so far, and a write load running during the copy.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::cluster::write_keys;
use super::node::{init_datadir, TestNode};

/// Megabytes of data in the primary before the copy
/// (`WALREP_BACKUP_TEST_MB`, 32 by default).
pub fn data_mb() -> usize {
    std::env::var("WALREP_BACKUP_TEST_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

/// Value size of the bulk keys.
pub const BULK_VALUE: usize = 64 * 1024;

/// A primary holding the bulk keys a base-backup test copies.
pub struct BulkPrimary {
    /// Its data directory.
    pub dir: PathBuf,
    /// The running node.
    pub node: TestNode,
    /// Keys `bulk:N` written, of [`BULK_VALUE`] bytes each.
    pub keys: usize,
    /// Bytes of their values (about the snapshot's size).
    pub bytes: u64,
}

/// A primary in `parent/primary`, with 1 MB WAL segments (a copy's WAL
/// spans several), holding [`data_mb`] of bulk keys.
pub fn bulk_primary(parent: &Path) -> BulkPrimary {
    let dir = init_datadir(parent, "primary", &["--wal-segment-size", "1MB"]);
    let node = TestNode::start(&dir, &[]);
    let keys = data_mb() * 1024 * 1024 / BULK_VALUE;
    write_keys(&node, "bulk", keys, BULK_VALUE);
    BulkPrimary {
        dir,
        node,
        keys,
        bytes: (keys * BULK_VALUE) as u64,
    }
}

/// Bytes of the files under `dir` (what a copy wrote so far).
pub fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// Unique keys `w:{n}` written until stopped (at most a million, a bound
/// for a test whose stop never comes); the count acknowledged.
pub fn start_load(
    node: &TestNode,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let mut c = node.client();
    std::thread::spawn(move || {
        let pad = "y".repeat(512);
        while !stop.load(Ordering::Relaxed) && acked.load(Ordering::Relaxed) < 1_000_000 {
            let n = acked.load(Ordering::Relaxed);
            let _: () = redis::cmd("SET")
                .arg(format!("w:{n}"))
                .arg(format!("{n}:{pad}"))
                .query(&mut c)
                .unwrap();
            acked.fetch_add(1, Ordering::Relaxed);
        }
    })
}
