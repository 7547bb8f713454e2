//! Segments: records spanning them, segment switches, archive status,
//! segments from another system / timeline / position rejected, missing
//! and short files, the reader's limit, raw reads, flush notifications.

mod support;

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use support::wal::*;
use walrep::wal::segment::FLAG_FIRST_IS_CONTRECORD;
use walrep::wal::{
    initial_lsn, HeaderProblem, RawReader, ReadErrorKind, ReaderConfig, SegmentHeader, Wal,
    WalConfig, WalEvent, WalReader, RM_KV, SEG_HEADER_SIZE,
};
use walrep::{Lsn, SegNo, TimelineId};
use walrep_states::TimelineHistory;

fn seg_path(dir: &std::path::Path, tli: u32, segno: u64) -> std::path::PathBuf {
    dir.join(SegNo(segno).file_name(TimelineId(tli), seg()))
}

#[test]
fn a_record_spanning_three_segments_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let wal = new_wal(dir.path(), None);
    wal.insert(RM_KV, 0, b"before").unwrap();
    let big = payload(7, (1 << 20) * 2 + 12345);
    let at = wal.insert_record(RM_KV, 2, &big).unwrap();
    wal.insert(RM_KV, 0, b"after").unwrap();
    wal.shutdown().unwrap();
    assert_eq!(at.end.segno(seg()), SegNo(3));
    for segno in [2, 3] {
        let bytes = fs::read(seg_path(dir.path(), 1, segno)).unwrap();
        let h = SegmentHeader::decode(&bytes).unwrap();
        assert_eq!(h.flags, FLAG_FIRST_IS_CONTRECORD, "segment {segno}");
        assert!(h.rem_len > 0);
        assert_eq!(h.pageaddr, SegNo(segno).start_lsn(seg()));
    }
    let (recs, _) = read_all(reader_cfg(dir.path()));
    assert_eq!(recs.len(), 3);
    assert!(recs[1].payload == big);
    assert_eq!(recs[2].payload, b"after");
}

#[test]
fn switch_completes_the_segment_and_marks_it_ready() {
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
    let events = wal.subscribe();
    wal.insert(RM_KV, 0, b"x").unwrap();
    let next = wal.switch_segment().unwrap();
    assert_eq!(next, SegNo(2).start_lsn(seg()));
    assert_eq!(wal.flushed(), next);
    // Nothing written in segment 2 yet: a second switch is a no-op.
    assert_eq!(wal.switch_segment().unwrap(), next);
    let after = wal.insert_record(RM_KV, 0, b"y").unwrap();
    assert_eq!(after.start, next);
    wal.flush().unwrap();
    let name = SegNo(1).file_name(TimelineId(1), seg());
    assert!(dir
        .path()
        .join("archive_status")
        .join(format!("{name}.ready"))
        .exists());
    let evs: Vec<_> = events.try_iter().collect();
    assert!(
        evs.contains(&WalEvent::SegmentCompleted {
            tli: TimelineId(1),
            segno: SegNo(1)
        }),
        "{evs:?}"
    );
    assert!(evs.contains(&WalEvent::Flushed(next)), "{evs:?}");
    wal.shutdown().unwrap();
    // The rest of segment 1 after the switch record is zero.
    let bytes = fs::read(seg_path(dir.path(), 1, 1)).unwrap();
    let switch_end = 40 + 32 + 24;
    assert!(bytes[switch_end..].iter().all(|&b| b == 0));
    let (recs, _) = read_all(reader_cfg(dir.path()));
    assert_eq!(recs.iter().map(|r| r.lsn).collect::<Vec<_>>()[2], next);
    assert_eq!(recs.len(), 3);
}

/// Two segments of WAL with a record spanning the boundary.
fn two_segments(dir: &std::path::Path) -> Lsn {
    let wal = new_wal(dir, None);
    wal.insert(RM_KV, 0, &payload(1, (1 << 20) - 200)).unwrap();
    let spanning = wal.insert_record(RM_KV, 0, &payload(2, 400)).unwrap();
    wal.insert(RM_KV, 0, b"tail").unwrap();
    wal.shutdown().unwrap();
    spanning.start
}

#[test]
fn a_segment_of_another_system_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    two_segments(dir.path());
    let cfg = ReaderConfig {
        system_id: SYSTEM_ID + 1,
        ..reader_cfg(dir.path())
    };
    let (recs, stop) = read_all(cfg);
    assert!(recs.is_empty());
    assert!(
        matches!(
            stop.kind,
            ReadErrorKind::SegmentHeader {
                problem: HeaderProblem::SystemId { .. },
                ..
            }
        ),
        "{stop}"
    );
    assert!(
        stop.to_string().contains("different database system"),
        "{stop}"
    );
}

#[test]
fn a_segment_of_another_timeline_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let spanning = two_segments(dir.path());
    // Timeline 2's history says segment 2 belongs to it, but the file there
    // is timeline 1's, renamed.
    fs::rename(seg_path(dir.path(), 1, 2), seg_path(dir.path(), 2, 2)).unwrap();
    let cfg = ReaderConfig {
        history: TimelineHistory::root(TimelineId(1))
            .fork(TimelineId(2), SegNo(2).start_lsn(seg())),
        ..reader_cfg(dir.path())
    };
    let (recs, stop) = read_all(cfg);
    assert_eq!(recs.len(), 1);
    assert_eq!(stop.record, spanning);
    assert_eq!(stop.at, SegNo(2).start_lsn(seg()));
    assert!(
        matches!(
            stop.kind,
            ReadErrorKind::SegmentHeader {
                problem: HeaderProblem::Timeline {
                    expected: 2,
                    found: 1
                },
                ..
            }
        ),
        "{stop}"
    );
}

#[test]
fn a_misplaced_or_recycled_file_is_rejected_by_its_pageaddr() {
    let dir = tempfile::tempdir().unwrap();
    two_segments(dir.path());
    fs::copy(seg_path(dir.path(), 1, 1), seg_path(dir.path(), 1, 2)).unwrap();
    let (recs, stop) = read_all(reader_cfg(dir.path()));
    assert_eq!(recs.len(), 1);
    assert!(
        matches!(
            stop.kind,
            ReadErrorKind::SegmentHeader {
                problem: HeaderProblem::PageAddr { .. },
                ..
            }
        ),
        "{stop}"
    );
}

#[test]
fn missing_and_short_segments_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    two_segments(dir.path());
    let p2 = seg_path(dir.path(), 1, 2);
    let saved = fs::read(&p2).unwrap();
    fs::remove_file(&p2).unwrap();
    let (recs, stop) = read_all(reader_cfg(dir.path()));
    assert_eq!(recs.len(), 1);
    assert!(
        matches!(
            stop.kind,
            ReadErrorKind::MissingSegment {
                segno: SegNo(2),
                ..
            }
        ),
        "{stop}"
    );
    assert!(
        stop.to_string().contains("000000010000000000000002"),
        "{stop}"
    );
    // A short file (as a crashed copy might leave) is not mapped past its end.
    fs::write(&p2, &saved[..1000]).unwrap();
    let (_, stop) = read_all(reader_cfg(dir.path()));
    assert!(
        matches!(stop.kind, ReadErrorKind::SegmentSize { found: 1000, .. }),
        "{stop}"
    );
}

#[test]
fn the_reader_stops_at_its_limit_and_resumes_when_raised() {
    let dir = tempfile::tempdir().unwrap();
    let wal = new_wal(dir.path(), None);
    let a = wal.insert_record(RM_KV, 0, &payload(1, 100)).unwrap();
    let b = wal.insert_record(RM_KV, 0, &payload(2, 100)).unwrap();
    wal.shutdown().unwrap();
    let mut r = WalReader::new(reader_cfg(dir.path()), a.start);
    r.set_limit(Some(Lsn(b.start.0 + 50)));
    assert_eq!(r.read_record().unwrap().lsn, a.start);
    let e = r.read_record().unwrap_err();
    assert_eq!(
        e.kind,
        ReadErrorKind::LimitReached {
            limit: Lsn(b.start.0 + 50)
        }
    );
    assert_eq!(r.next_lsn(), b.start, "the position does not move on error");
    // The record's last byte is at start + 24 + 100.
    r.set_limit(Some(Lsn(b.start.0 + 124)));
    assert_eq!(r.read_record().unwrap().lsn, b.start);
    r.set_limit(None);
    assert!(r.read_record().unwrap_err().kind.is_zeroes());
}

#[test]
fn raw_reads_return_the_file_bytes_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let wal = new_wal(dir.path(), None);
    wal.insert(RM_KV, 0, &payload(1, (1 << 20) - 100)).unwrap();
    wal.insert(RM_KV, 0, &payload(2, 500)).unwrap();
    let end = wal.flush().unwrap();
    let segdir = wal.segment_dir().clone();
    let start = Lsn(SegNo(2).start_lsn(seg()).0 - 1000);
    let mut buf = vec![0u8; (end.0 - start.0) as usize];
    RawReader::new(segdir)
        .read(TimelineId(1), start, &mut buf)
        .unwrap();
    let s1 = fs::read(seg_path(dir.path(), 1, 1)).unwrap();
    let s2 = fs::read(seg_path(dir.path(), 1, 2)).unwrap();
    assert_eq!(&buf[..1000], &s1[s1.len() - 1000..]);
    assert_eq!(&buf[1000..], &s2[..buf.len() - 1000]);
    assert_eq!(&s2[..4], b"WALR");
    assert!(SEG_HEADER_SIZE < (buf.len() - 1000) as u64);
}

#[test]
fn wait_flush_beyond_wakes_on_flush_and_ends_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(new_wal(dir.path(), None));
    let first = wal.insert(RM_KV, 0, b"a").unwrap();
    wal.wait_flushed(first).unwrap();
    let waiter = {
        let wal = wal.clone();
        std::thread::spawn(move || wal.wait_flush_beyond(first, Duration::from_secs(30)))
    };
    let second = wal.insert(RM_KV, 0, b"b").unwrap();
    wal.wait_flushed(second).unwrap();
    assert_eq!(waiter.join().unwrap().unwrap(), second);
    // A timeout returns the current position.
    assert_eq!(
        wal.wait_flush_beyond(second, Duration::from_millis(1))
            .unwrap(),
        second
    );
    wal.shutdown().unwrap();
    assert!(wal
        .wait_flush_beyond(second, Duration::from_secs(30))
        .is_err());
    assert!(wal.insert(RM_KV, 0, b"c").is_err());
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let wal = new_wal(dir.path(), None);
    let e = wal.wait_flushed(Lsn(u64::MAX)).unwrap_err();
    assert!(e.to_string().contains("only inserted up to"), "{e}");
    let too_big = walrep::wal::record::RecordHeader::tot_len_for(walrep::wal::MAX_PAYLOAD_LEN + 1);
    assert!(too_big.is_err());
    drop(wal);
    for bad in [
        Lsn(0),
        Lsn(SegNo(1).start_lsn(seg()).0 + 8),
        Lsn(SegNo(1).start_lsn(seg()).0 + 44),
    ] {
        let cfg = WalConfig::new(
            dir.path(),
            SYSTEM_ID,
            TimelineId(1),
            seg(),
            bad,
            Lsn::INVALID,
        );
        let e = Wal::start(cfg).unwrap_err();
        assert!(e.to_string().contains("cannot start writing WAL"), "{e}");
    }
    let mut r = WalReader::new(reader_cfg(dir.path()), Lsn(12345));
    assert_eq!(
        r.read_record().unwrap_err().kind,
        ReadErrorKind::NotRecordPosition
    );
}

/// A WAL started for a caller that fsyncs `wal/` itself (a promotion)
/// pre-allocates the next segment only once released: that rename and
/// its directory fsync would otherwise land among the caller's own syncs.
#[test]
fn preallocation_waits_for_release_when_the_caller_syncs_the_directory() {
    for release in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let start = initial_lsn(seg());
        let mut cfg = WalConfig::new(
            dir.path(),
            SYSTEM_ID,
            TimelineId(1),
            seg(),
            start,
            Lsn::INVALID,
        );
        cfg.dir_sync_by_caller = true;
        let wal = Wal::start(cfg).unwrap();
        let end = wal.insert(RM_KV, 0, b"x").unwrap();
        wal.wait_flushed(end).unwrap();
        let next = seg_path(dir.path(), 1, start.segno(seg()).0 + 1);
        if release {
            wal.release_preallocation();
            support::wait_until("the next segment pre-allocated", || next.exists());
        }
        // Joins the WAL writer, whose first act is its pre-allocation.
        wal.shutdown().unwrap();
        assert_eq!(next.exists(), release, "released: {release}");
    }
}
