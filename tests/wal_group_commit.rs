//! Group commit: with many concurrent committers one fdatasync covers many
//! commits; every acknowledged commit is durable and readable.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::wal::*;
use walrep::storage::{FaultyStorage, Op, Storage};
use walrep::wal::RM_KV;

const THREADS: u64 = 32;
const COMMITS_PER_THREAD: u64 = 40;

#[test]
fn thirty_two_writers_share_fdatasyncs() {
    let dir = tempfile::tempdir().unwrap();
    // A slow disk (2 ms per fdatasync) so the test does not depend on how
    // fast this machine's disk is; it counts calls, it does not time them.
    let io = Arc::new(FaultyStorage::with_sync_delay(Duration::from_millis(2)));
    let wal = Arc::new(new_wal(dir.path(), Some(io.clone() as Arc<dyn Storage>)));
    let syncs_before = io.count(Op::SyncData);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                for i in 0..COMMITS_PER_THREAD {
                    let end = wal.insert(RM_KV, 0, &payload(t * 1000 + i, 40)).unwrap();
                    wal.wait_flushed(end).unwrap();
                    assert!(wal.flushed() >= end);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let commits = THREADS * COMMITS_PER_THREAD;
    let syncs = io.count(Op::SyncData) - syncs_before;
    let stats = wal.stats();
    eprintln!(
        "{commits} commits, {syncs} fdatasyncs, mean batch {:.1}, max batch {}",
        stats.mean_batch_records(),
        stats.max_batch_records
    );
    assert_eq!(stats.records, commits);
    assert_eq!(
        stats.watchdog_wakeups, 0,
        "a waiter was not woken by a flusher"
    );
    assert!(
        syncs * 4 <= commits,
        "group commit did not batch: {syncs} fdatasync calls for {commits} commits (mean batch {:.1})",
        stats.mean_batch_records()
    );
    wal.shutdown().unwrap();
    let (read, _) = read_all(reader_cfg(dir.path()));
    assert_eq!(
        read.len() as u64,
        commits,
        "every acknowledged commit is on disk"
    );
}

#[test]
fn a_single_committer_flushes_itself() {
    let dir = tempfile::tempdir().unwrap();
    // Keep the WAL-writer thread's timed flushes out of the way, so any park
    // would be a hand-off the session should not need.
    let mut cfg = walrep::wal::WalConfig::new(
        dir.path(),
        SYSTEM_ID,
        walrep::TimelineId(1),
        seg(),
        walrep::wal::initial_lsn(seg()),
        walrep::Lsn::INVALID,
    );
    cfg.wal_writer_delay = std::time::Duration::from_secs(3600);
    cfg.wal_writer_flush_after_bytes = 1 << 30;
    let wal = walrep::wal::Wal::start(cfg).unwrap();
    for i in 0..50 {
        let end = wal.insert(RM_KV, 0, &payload(i, 16)).unwrap();
        wal.wait_flushed(end).unwrap();
    }
    let s = wal.stats();
    // No hand-off to the WAL-writer thread: the session did the flushing.
    // (The writer thread's start-up and segment pre-allocation may still
    // overlap a commit or two on a loaded machine.)
    assert!(s.waits_parked <= 5, "{s:?}");
    assert!(s.session_flushes >= 45, "{s:?}");
    assert_eq!(s.fsyncs, s.flushes);
}

#[test]
fn a_bounded_wait_times_out_behind_a_stuck_flush() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(FaultyStorage::new());
    let wal = Arc::new(new_wal(dir.path(), Some(io.clone() as Arc<dyn Storage>)));
    // A disk in trouble: fdatasync does not return until the test lets it.
    io.hold_syncs(true);
    let first = wal.insert(RM_KV, 0, b"stuck").unwrap();
    let flusher = {
        let wal = wal.clone();
        std::thread::spawn(move || wal.wait_flushed(first))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while io.count(Op::SyncData) == 0 {
        assert!(std::time::Instant::now() < deadline, "flush never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    let second = wal.insert(RM_KV, 0, b"impatient").unwrap();
    let e = wal
        .wait_flushed_timeout(second, Duration::from_millis(20))
        .unwrap_err();
    assert!(
        matches!(e, walrep::wal::WalError::FlushTimeout { .. }),
        "{e}"
    );
    io.hold_syncs(false);
    flusher.join().unwrap().unwrap();
    // The unbounded wait still gets there.
    wal.wait_flushed(second).unwrap();
}
