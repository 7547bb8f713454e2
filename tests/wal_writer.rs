//! The WAL-writer thread and the insert buffer: asynchronous commits are
//! flushed without anyone waiting, a full buffer pushes back on inserters
//! instead of growing, the flush hook runs before a flush is published,
//! flush waiters are woken by every flush, and bad bytes anywhere never
//! make the reader panic or invent a record.

mod support;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use support::wait_until;
use support::wal::*;
use walrep::wal::{initial_lsn, Wal, WalConfig, WalEvent, RM_KV};
use walrep::{Lsn, SegNo, TimelineId};

fn config(dir: &std::path::Path) -> WalConfig {
    WalConfig::new(
        dir,
        SYSTEM_ID,
        TimelineId(1),
        seg(),
        initial_lsn(seg()),
        Lsn::INVALID,
    )
}

#[test]
fn asynchronous_commits_are_flushed_by_the_wal_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.wal_writer_delay = Duration::from_millis(10);
    let wal = Wal::start(cfg).unwrap();
    let events = wal.subscribe();
    let end = wal.insert(RM_KV, 0, b"nobody waits for me").unwrap();
    wait_until("the WAL writer's flush", || wal.flushed() >= end);
    assert!(wal.stats().writer_flushes >= 1);
    assert_eq!(wal.stats().session_flushes, 0);
    assert!(events.try_iter().any(|e| e == WalEvent::Flushed(end)));
    // The next segment is pre-allocated ahead of need.
    let next = dir.path().join(SegNo(2).file_name(TimelineId(1), seg()));
    wait_until("pre-allocation of segment 2", || next.exists());
}

#[test]
fn while_a_walrep_standby_streams_the_first_asynchronous_commit_wakes_the_wal_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // Neither the delay nor the byte threshold would wake it.
    cfg.wal_writer_delay = Duration::from_secs(3600);
    cfg.wal_writer_flush_after_bytes = usize::MAX;
    let wal = Wal::start(cfg).unwrap();
    // What a walsender of a walrep standby registers.
    let _standby = wal.standby_followers().subscribe();
    for round in 0..3 {
        let end = wal.insert(RM_KV, 0, b"read on the standby soon").unwrap();
        // What a Redis worker calls after answering commits at `off`.
        wal.after_async_commit().unwrap();
        wait_until(&format!("the WAL writer's flush {round}"), || {
            wal.flushed() >= end
        });
    }
}

#[test]
fn a_full_insert_buffer_pushes_back_instead_of_growing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.wal_buffers_bytes = 4096;
    cfg.wal_writer_delay = Duration::from_secs(3600);
    cfg.wal_writer_flush_after_bytes = usize::MAX;
    let wal = Arc::new(Wal::start(cfg).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    wal.insert(RM_KV, 0, &payload(t * 1000 + i, 200)).unwrap();
                    // Never more than one buffer's worth (plus one record) unflushed.
                    assert!(wal.inserted().0 - wal.flushed().0 <= 2 * 4096 + 512);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = wal.stats();
    assert!(s.backpressure_flushes > 0, "{s:?}");
    // A record larger than the buffer still goes in (alone).
    let big = wal.insert(RM_KV, 0, &payload(9, 100_000)).unwrap();
    wal.wait_flushed(big).unwrap();
    wal.shutdown().unwrap();
    let (recs, _) = read_all(reader_cfg(dir.path()));
    assert_eq!(recs.len(), 2001);
}

#[test]
fn the_flush_hook_runs_before_the_flush_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::start(config(dir.path())).unwrap());
    // (position given to the hook, position published when it ran)
    let seen = Arc::new(Mutex::new(Vec::<(Lsn, Lsn)>::new()));
    let (weak, log) = (Arc::downgrade(&wal), seen.clone());
    assert!(wal.set_flush_hook(Box::new(move |lsn| {
        let published = weak.upgrade().map_or(Lsn::INVALID, |w| w.flushed());
        log.lock().unwrap().push((lsn, published));
    })));
    assert!(
        !wal.set_flush_hook(Box::new(|_| {})),
        "a second hook replaced the first"
    );
    let segments_only = wal.subscribe_segments();
    let everything = wal.subscribe();
    for i in 0..3u8 {
        let end = wal.insert(RM_KV, 0, &[i; 40]).unwrap();
        wal.wait_flushed(end).unwrap();
        let (given, published) = *seen.lock().unwrap().last().expect("hook not called");
        assert_eq!(given, end, "the hook got another position");
        assert!(
            published < end,
            "the flush to {end} was published ({published}) before its hook ran"
        );
        assert_eq!(wal.flushed(), end);
    }
    assert_eq!(seen.lock().unwrap().len(), 3, "one hook call per flush");
    assert!(everything
        .try_iter()
        .any(|e| matches!(e, WalEvent::Flushed(_))));
    let got: Vec<_> = segments_only.try_iter().collect();
    assert!(
        got.iter().all(|e| !matches!(e, WalEvent::Flushed(_))),
        "{got:?}"
    );
    wal.shutdown().unwrap();
}

#[test]
fn a_flush_waiter_is_woken_by_every_flush() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::start(config(dir.path())).unwrap());
    let first = wal.insert(RM_KV, 0, b"first").unwrap();
    wal.wait_flushed(first).unwrap();
    let (tx, rx) = crossbeam_channel::bounded(8);
    let waiter = {
        let wal = wal.clone();
        std::thread::spawn(move || {
            let mut seen = first;
            for _ in 0..3 {
                // Far longer than the test waits below: a lost wake-up fails it.
                seen = wal
                    .wait_flush_beyond(seen, Duration::from_secs(120))
                    .unwrap();
                tx.send(seen).unwrap();
            }
        })
    };
    for i in 0..3u8 {
        // Let the waiter go back to sleep (if it has not, it sees the flush at once).
        std::thread::sleep(Duration::from_millis(20));
        let end = wal.insert(RM_KV, 0, &[i; 8]).unwrap();
        wal.wait_flushed(end).unwrap();
        let got = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a waiter in wait_flush_beyond was not woken by a flush");
        assert_eq!(got, end);
    }
    waiter.join().unwrap();
    wal.shutdown().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random bytes written over random places of valid WAL: the reader
    /// returns a prefix of the records written, then an error. Never a
    /// panic, never a record that was not written.
    #[test]
    fn garbage_never_panics_nor_invents_records(
        lens in prop::collection::vec(0usize..3000, 5..40),
        damage in prop::collection::vec((0u64..(2 << 20), prop::collection::vec(any::<u8>(), 1..64)), 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::start(config(dir.path())).unwrap();
        let mut written = Vec::new();
        for (i, len) in lens.iter().enumerate() {
            let p = payload(i as u64, *len);
            written.push((wal.insert_record(RM_KV, 1, &p).unwrap().start, p));
            if i == lens.len() / 2 {
                wal.switch_segment().unwrap();
            }
        }
        wal.shutdown().unwrap();
        for (at, bytes) in &damage {
            let lsn = Lsn(initial_lsn(seg()).0 + at);
            let path = dir.path().join(lsn.segno(seg()).file_name(TimelineId(1), seg()));
            if let Ok(f) = OpenOptions::new().write(true).open(path) {
                let off = lsn.segment_offset(seg());
                let n = bytes.len().min((seg().bytes() - off) as usize);
                f.write_all_at(&bytes[..n], off).unwrap();
            }
        }
        let (recs, _) = read_all(reader_cfg(dir.path()));
        let kv: Vec<_> = recs.iter().filter(|r| r.rmid == RM_KV).collect();
        prop_assert!(kv.len() <= written.len());
        for (r, (lsn, p)) in kv.iter().zip(&written) {
            prop_assert_eq!(r.lsn, *lsn);
            prop_assert!(&r.payload == p);
        }
    }
}

/// WAL written ahead of its flush (a Redis worker does this before it
/// hands a synchronous commit to its committer) is announced to
/// walsenders at once without waiting for the disk; the next flush makes
/// it durable with one fdatasync, counts its records, and WAL inserted
/// after it follows in the same file.
#[test]
fn wal_written_ahead_is_announced_before_the_flush_that_makes_it_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.wal_writer_delay = Duration::from_secs(3600);
    cfg.wal_writer_flush_after_bytes = usize::MAX;
    let wal = Wal::start(cfg).unwrap();
    // The first record enters the first segment, which kicks the WAL
    // writer into a flush: let that flush happen before counting, so the
    // writer is back asleep (no kick pending) for the rest of the test.
    let warm = wal.insert(RM_KV, 0, b"enters the segment").unwrap();
    wait_until("the WAL writer's flush of the first record", || {
        wal.flushed() >= warm
    });
    let written = wal.written_watch().subscribe();
    let before = wal.stats();
    let flushed = wal.flushed();
    let first = wal.insert(RM_KV, 0, b"sent before its flush").unwrap();
    wal.write_ahead().unwrap();
    assert_eq!(wal.written(), first);
    assert_eq!(wal.flushed(), flushed, "written, not flushed");
    assert!(written.take(), "walsenders were told");
    assert_eq!(wal.stats().fsyncs, before.fsyncs, "no wait for the disk");
    wal.wait_flushed(first).unwrap();
    let after = wal.stats();
    assert_eq!(after.fsyncs, before.fsyncs + 1);
    assert_eq!(after.flushed_records, before.flushed_records + 1);
    // Written ahead, then more inserted: one flush covers both.
    let second = wal.insert(RM_KV, 0, b"second, written ahead").unwrap();
    wal.write_ahead().unwrap();
    let third = wal.insert(RM_KV, 0, b"third, only flushed").unwrap();
    wal.wait_flushed(third).unwrap();
    assert!(wal.written() >= third && second < third);
    assert_eq!(wal.stats().fsyncs, after.fsyncs + 1);
    assert_eq!(wal.stats().flushed_records, after.flushed_records + 2);
    wal.shutdown().unwrap();
    let (recs, _) = read_all(reader_cfg(dir.path()));
    assert_eq!(recs.len(), 4, "the first record and the three after it");
}
