//! An fsync or write failure stops the WAL writer for good: every waiter
//! and every later call gets a clear error naming the failure; nothing
//! retries an fsync; what was durable before stays readable.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::wal::*;
use walrep::storage::{FaultyStorage, Op, Storage};
use walrep::wal::{find_end_of_wal, initial_lsn, WalError, WalEvent, RM_KV};

fn faulty(dir: &std::path::Path, io: &Arc<FaultyStorage>) -> walrep::wal::Wal {
    new_wal(dir, Some(io.clone() as Arc<dyn Storage>))
}

#[test]
fn fsync_failure_poisons_and_later_calls_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(FaultyStorage::new());
    let wal = faulty(dir.path(), &io);
    let events = wal.subscribe();
    let a = wal.insert(RM_KV, 0, b"durable").unwrap();
    wal.wait_flushed(a).unwrap();

    io.fail_sync_data_after(1);
    let b = wal.insert(RM_KV, 0, b"lost").unwrap();
    let err = wal.wait_flushed(b).unwrap_err();
    assert!(matches!(err, WalError::Poisoned { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("fdatasync") && msg.contains("injected"),
        "{msg}"
    );
    let syncs = io.count(Op::SyncData);

    // Later calls fail with the same cause; nothing retries the fsync.
    let e2 = wal.insert(RM_KV, 0, b"more").unwrap_err();
    assert_eq!(e2.to_string(), msg);
    assert!(matches!(
        wal.wait_flushed(b),
        Err(WalError::Poisoned { .. })
    ));
    assert!(matches!(wal.flush(), Err(WalError::Poisoned { .. })));
    assert!(matches!(
        wal.wait_flush_beyond(a, Duration::from_secs(5)),
        Err(WalError::Poisoned { .. })
    ));
    assert_eq!(io.count(Op::SyncData), syncs, "an fsync was retried");
    // What was durable before stays acknowledged.
    assert_eq!(wal.flushed(), a);
    wal.wait_flushed(a).unwrap();
    assert!(wal.poisoned().is_some());
    assert!(matches!(wal.shutdown(), Err(WalError::Poisoned { .. })));
    let got: Vec<_> = events.try_iter().collect();
    assert!(got.contains(&WalEvent::Poisoned), "{got:?}");
}

#[test]
fn every_concurrent_waiter_gets_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(FaultyStorage::with_sync_delay(Duration::from_millis(20)));
    let wal = Arc::new(faulty(dir.path(), &io));
    io.fail_sync_data_after(1);
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let wal = wal.clone();
            std::thread::spawn(move || match wal.insert(RM_KV, 0, &payload(i, 20)) {
                Ok(end) => wal.wait_flushed(end),
                Err(e) => Err(e),
            })
        })
        .collect();
    for t in threads {
        let r = t.join().unwrap();
        assert!(matches!(r, Err(WalError::Poisoned { .. })), "{r:?}");
    }
}

#[test]
fn torn_write_poisons_and_recovery_ends_before_the_torn_record() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(FaultyStorage::new());
    let wal = faulty(dir.path(), &io);
    let mut durable = Vec::new();
    for i in 0..3 {
        let r = wal.insert_record(RM_KV, 0, &payload(i, 100)).unwrap();
        durable.push(r);
    }
    wal.flush().unwrap();
    io.tear_next_write(30);
    for i in 3..6 {
        wal.insert(RM_KV, 0, &payload(i, 100)).unwrap();
    }
    let err = wal.flush().unwrap_err();
    assert!(err.to_string().contains("could not write"), "{err}");
    drop(wal);
    let end = find_end_of_wal(reader_cfg(dir.path()), initial_lsn(seg()), None).unwrap();
    assert_eq!(end.records, 3);
    assert_eq!(end.end, durable[2].end);
    assert_eq!(end.prev_record, durable[2].start);
    assert!(
        !end.stop.kind.is_zeroes(),
        "the torn record is detected, not zeroes: {}",
        end.stop
    );
}
