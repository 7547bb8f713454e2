//! What the base-backup tests share: the size of the data copied, the
//! bulk keys' value size, the bytes a copy wrote so far, and a write load
//! running during the copy.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::node::TestNode;

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
