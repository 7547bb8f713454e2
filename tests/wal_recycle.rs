//! Removal and recycling of old segments: recycled files become future
//! segments whose stale contents are never replayed, `.ready` segments are
//! never removed, and a walsender's raw read notices a recycled segment.

mod support;

use std::fs;
use std::sync::Arc;

use support::wal::*;
use walrep::wal::{
    find_end_of_wal, initial_lsn, HeaderProblem, InsertedRecord, RawReader, ReadErrorKind,
    SegmentError, SegmentHeader, Wal, WalConfig, WalReader, RM_KV,
};
use walrep::{Lsn, SegNo, TimelineId};

/// Insert ~1 KiB records until the insert position is in segment `segno`.
fn fill_until(wal: &Wal, segno: u64, out: &mut Vec<InsertedRecord>) {
    let mut i = out.len() as u64;
    while wal.inserted().segno(seg()) < SegNo(segno) {
        out.push(wal.insert_record(RM_KV, 0, &payload(i, 1000)).unwrap());
        i += 1;
    }
}

#[test]
fn stale_bytes_of_recycled_segments_are_never_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let wal = new_wal(dir.path(), None);
    let mut recs = Vec::new();
    fill_until(&wal, 4, &mut recs);
    wal.flush().unwrap();
    let report = wal.remove_old_segments(SegNo(3), 8).unwrap();
    assert_eq!((report.recycled, report.removed), (2, 0));
    // The recycled files carry their old headers under future names.
    let future: Vec<u64> = (5..=8)
        .filter(|&s| {
            let bytes = fs::read(dir.path().join(SegNo(s).file_name(TimelineId(1), seg())))
                .unwrap_or_default();
            SegmentHeader::decode(&bytes).is_ok_and(|h| h.pageaddr.segno(seg()) < SegNo(3))
        })
        .collect();
    assert_eq!(future.len(), 2, "two recycled files among segments 5..8");
    // Write into the first recycled file, up to its middle.
    let target = future[0];
    fill_until(&wal, target, &mut recs);
    for i in 0..300 {
        recs.push(
            wal.insert_record(RM_KV, 0, &payload(90_000 + i, 1000))
                .unwrap(),
        );
    }
    let end = wal.flush().unwrap();
    wal.shutdown().unwrap();
    assert_eq!(end.segno(seg()), SegNo(target));
    // Past the end, the recycled file still holds old, non-zero WAL.
    let bytes = fs::read(
        dir.path()
            .join(SegNo(target).file_name(TimelineId(1), seg())),
    )
    .unwrap();
    let off = end.segment_offset(seg()) as usize;
    assert!(bytes[off..off + 4096].iter().any(|&b| b != 0));

    let first_kept = recs
        .iter()
        .find(|r| r.start.segno(seg()) >= SegNo(3) && r.start.segment_offset(seg()) > 0)
        .unwrap();
    let kept = recs.iter().filter(|r| r.start >= first_kept.start).count();
    let found = find_end_of_wal(reader_cfg(dir.path()), first_kept.start, None).unwrap();
    assert_eq!(found.records as usize, kept, "stopped by {}", found.stop);
    assert_eq!(found.end, end);
    assert!(
        !found.stop.kind.is_zeroes(),
        "stale bytes were there and rejected: {}",
        found.stop
    );

    // A recycled file that was never written is recognised by its header.
    let unused = future[1];
    let mut r = WalReader::new(reader_cfg(dir.path()), SegNo(unused).start_lsn(seg()));
    let e = r.read_record().unwrap_err();
    assert!(
        matches!(
            e.kind,
            ReadErrorKind::SegmentHeader {
                problem: HeaderProblem::PageAddr { .. },
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn ready_segments_are_kept_until_archived() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = WalConfig::new(
        dir.path(),
        SYSTEM_ID,
        TimelineId(1),
        seg(),
        initial_lsn(seg()),
        Lsn::INVALID,
    );
    cfg.archive_mode = true;
    let wal = Wal::start(cfg).unwrap();
    let mut recs = Vec::new();
    fill_until(&wal, 4, &mut recs);
    wal.flush().unwrap();
    let status = dir.path().join("archive_status");
    let name = |s: u64| SegNo(s).file_name(TimelineId(1), seg());
    for s in 1..=3 {
        assert!(
            status.join(format!("{}.ready", name(s))).exists(),
            "segment {s} marked ready"
        );
    }
    let report = wal.remove_old_segments(SegNo(4), 0).unwrap();
    assert_eq!(
        (report.removed, report.recycled, report.kept_for_archive),
        (0, 0, 3)
    );
    // The archiver finished segment 1 (PostgreSQL renames .ready to .done).
    fs::rename(
        status.join(format!("{}.ready", name(1))),
        status.join(format!("{}.done", name(1))),
    )
    .unwrap();
    let report = wal.remove_old_segments(SegNo(4), 0).unwrap();
    assert_eq!((report.removed, report.kept_for_archive), (1, 2));
    assert!(!dir.path().join(name(1)).exists());
    assert!(!status.join(format!("{}.done", name(1))).exists());
    assert!(dir.path().join(name(2)).exists());
    // The horizon never reaches the segment being written.
    let report = wal.remove_old_segments(SegNo(100), 0).unwrap();
    assert_eq!(report.removed, 0);
    assert!(dir.path().join(name(4)).exists());
}

#[test]
fn a_raw_read_of_a_removed_segment_fails_like_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let wal = new_wal(dir.path(), None);
    let mut recs = Vec::new();
    fill_until(&wal, 3, &mut recs);
    wal.flush().unwrap();
    let mut raw = RawReader::new(Arc::clone(wal.segment_dir()));
    let mut buf = vec![0u8; 4096];
    raw.read(TimelineId(1), initial_lsn(seg()), &mut buf)
        .unwrap();
    wal.remove_old_segments(SegNo(2), 0).unwrap();
    let e = raw
        .read(TimelineId(1), initial_lsn(seg()), &mut buf)
        .unwrap_err();
    assert!(matches!(e, SegmentError::Removed { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "requested WAL segment 000000010000000000000001 has already been removed"
    );
}
