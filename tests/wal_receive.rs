//! A standby's copy of the WAL: bytes read raw from the primary's segment
//! files, in arbitrary chunks, written by a `SegmentWriter`, give
//! byte-identical completed segments, and a reader limited to the receiver's
//! flush position reads every record as it becomes durable.

mod support;

use std::fs;
use std::sync::Arc;

use support::wal::*;
use walrep::storage::{FaultyStorage, Op, StdStorage, Storage};
use walrep::wal::segdir::SegmentDir;
use walrep::wal::{
    initial_lsn, CompletedMark, RawReader, ReadErrorKind, SegmentWriter, WalReader, RM_KV,
};
use walrep::{Lsn, SegNo, TimelineId};

#[test]
fn received_segments_are_byte_identical_and_readable_up_to_the_flush() {
    let primary = tempfile::tempdir().unwrap();
    let standby = tempfile::tempdir().unwrap();
    let wal = new_wal(primary.path(), None);
    let mut lsns = Vec::new();
    for i in 0..40u64 {
        let len = if i % 13 == 0 {
            300_000
        } else {
            10 + (i as usize * 37) % 900
        };
        lsns.push(wal.insert_record(RM_KV, 0, &payload(i, len)).unwrap().start);
        if i == 20 {
            wal.switch_segment().unwrap();
        }
    }
    let end = wal.flush().unwrap();

    let mut raw = RawReader::new(Arc::clone(wal.segment_dir()));
    let sd = Arc::new(SegmentDir::open(standby.path(), seg(), Arc::new(StdStorage)).unwrap());
    let mut recv = SegmentWriter::new(sd, TimelineId(1), initial_lsn(seg()), CompletedMark::Done);
    let mut reader = WalReader::new(reader_cfg(standby.path()), initial_lsn(seg()));
    let mut read = Vec::new();
    let mut pos = initial_lsn(seg());
    let mut chunk = 1usize;
    while pos < end {
        let n = chunk.min((end.0 - pos.0) as usize);
        let mut buf = vec![0u8; n];
        raw.read(TimelineId(1), pos, &mut buf).unwrap();
        recv.write(pos, &buf).unwrap();
        pos = Lsn(pos.0 + n as u64);
        let flushed = recv.flush().unwrap();
        assert_eq!(flushed, pos);
        reader.set_limit(Some(flushed));
        loop {
            match reader.read_record() {
                Ok(r) => read.push(r.lsn),
                Err(e) => {
                    assert!(matches!(e.kind, ReadErrorKind::LimitReached { .. }), "{e}");
                    break;
                }
            }
        }
        chunk = chunk * 3 % 200_003 + 1;
    }
    assert_eq!(read.len(), lsns.len() + 1, "every record plus the switch");
    assert_eq!(read.iter().filter(|l| lsns.contains(l)).count(), lsns.len());
    for segno in 1..end.segno(seg()).0 {
        let name = SegNo(segno).file_name(TimelineId(1), seg());
        assert_eq!(
            fs::read(primary.path().join(&name)).unwrap(),
            fs::read(standby.path().join(&name)).unwrap(),
            "segment {name}"
        );
        assert!(standby
            .path()
            .join("archive_status")
            .join(format!("{name}.done"))
            .exists());
    }
    wal.shutdown().unwrap();
}

#[test]
fn a_receiver_fsync_failure_is_final() {
    let standby = tempfile::tempdir().unwrap();
    let io = Arc::new(FaultyStorage::new());
    let sd =
        Arc::new(SegmentDir::open(standby.path(), seg(), io.clone() as Arc<dyn Storage>).unwrap());
    let mut recv = SegmentWriter::new(sd, TimelineId(1), initial_lsn(seg()), CompletedMark::Done);
    recv.write(initial_lsn(seg()), &[1u8; 100]).unwrap();
    io.fail_sync_data_after(1);
    assert!(recv.flush().is_err());
    let calls = io.count(Op::SyncData);
    let e = recv.flush().unwrap_err();
    assert!(e.to_string().contains("injected fdatasync failure"), "{e}");
    assert!(recv
        .write(Lsn(initial_lsn(seg()).0 + 100), &[2u8; 10])
        .is_err());
    assert_eq!(io.count(Op::SyncData), calls, "no retry");
    assert_eq!(recv.flushed(), initial_lsn(seg()));
}

#[test]
fn the_next_received_segment_is_created_zero_filled_ahead_of_the_stream() {
    let standby = tempfile::tempdir().unwrap();
    let io = Arc::new(FaultyStorage::new());
    let sd =
        Arc::new(SegmentDir::open(standby.path(), seg(), io.clone() as Arc<dyn Storage>).unwrap());
    let start = initial_lsn(seg());
    let mut recv = SegmentWriter::new(Arc::clone(&sd), TimelineId(1), start, CompletedMark::Done);
    recv.write(start, &[7u8; 100]).unwrap();
    recv.flush().unwrap();
    // The walreceiver reserved the segment it had to write into at once...
    assert_eq!(io.count(Op::Allocate), 1);
    let first = start.segno(seg());
    let next = sd.segment_path(TimelineId(1), first.next());
    support::wait_for(
        "the next segment",
        std::time::Duration::from_secs(30),
        || next.exists().then_some(()),
    );
    // ...and the next one was written with zeroes, not reserved.
    assert_eq!(io.count(Op::Allocate), 1);
    assert!(fs::read(&next).unwrap().iter().all(|b| *b == 0));

    // The stream crosses into it: written through, nothing reserved, the
    // completed segment marked.
    let seg_end = first.next().start_lsn(seg());
    let fill = vec![9u8; (seg_end.0 - start.0 - 100) as usize + 500];
    recv.write(Lsn(start.0 + 100), &fill).unwrap();
    assert_eq!(recv.flush().unwrap(), Lsn(seg_end.0 + 500));
    assert_eq!(io.count(Op::Allocate), 1);
    let bytes = fs::read(&next).unwrap();
    assert!(bytes[..500].iter().all(|b| *b == 9) && bytes[500..].iter().all(|b| *b == 0));
    let done = first.file_name(TimelineId(1), seg());
    assert!(standby
        .path()
        .join("archive_status")
        .join(format!("{done}.done"))
        .exists());
    let after = sd.segment_path(TimelineId(1), first.next().next());
    support::wait_for(
        "the segment after it",
        std::time::Duration::from_secs(30),
        || after.exists().then_some(()),
    );
    drop(recv);
    // The helper ends with its writer, once its last segment is in place:
    // no temporary file stays behind.
    support::wait_for(
        "no temporary file",
        std::time::Duration::from_secs(30),
        || {
            let temps = fs::read_dir(standby.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("xlogtemp."))
                .count();
            (temps == 0).then_some(())
        },
    );
}
