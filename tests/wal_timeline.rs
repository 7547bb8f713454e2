//! Timelines: promotion writes the new timeline's history file and its
//! first segment (a copy of the old one up to the switch point); readers
//! follow the history, choosing each segment's file by timeline, and never
//! read the old timeline's WAL past the switch point.

mod support;

use std::fs;
use std::sync::Arc;

use support::wal::*;
use walrep::storage::StdStorage;
use walrep::wal::segdir::SegmentDir;
use walrep::wal::{
    find_end_of_wal, init_new_timeline_segment, initial_lsn, read_history,
    rename_old_timeline_segment_partial, write_new_timeline_history, EndOfRecovery, InsertedRecord,
    RawReader, ReadErrorKind, ReaderConfig, SegmentHeader, Wal, WalConfig, WalReader, XlogRecord,
    RM_KV,
};
use walrep::{Lsn, SegNo, TimelineId};
use walrep_states::TimelineHistory;

struct Promoted {
    /// Records of timeline 1 up to the switch point.
    before: Vec<InsertedRecord>,
    /// Records timeline 1 wrote past the switch point (a diverged old primary).
    diverged: Vec<InsertedRecord>,
    /// Records of timeline 2.
    after: Vec<InsertedRecord>,
    switch: Lsn,
}

/// Timeline 1 writes into segment 2; a standby that had WAL up to `switch`
/// promotes there to timeline 2, while the old primary wrote on.
fn promote(dir: &std::path::Path, fill: usize) -> Promoted {
    promote_with_spares(dir, fill, 0)
}

/// [`promote`] with `spares` spare segments made before promoting (as a
/// standby makes them at start).
fn promote_with_spares(dir: &std::path::Path, fill: usize, spares: usize) -> Promoted {
    let wal = new_wal(dir, None);
    let mut before = vec![wal.insert_record(RM_KV, 0, &payload(0, fill)).unwrap()];
    for i in 1..5 {
        before.push(wal.insert_record(RM_KV, 0, &payload(i, 300)).unwrap());
    }
    let switch = before.last().unwrap().end;
    let diverged: Vec<_> = (0..5)
        .map(|i| wal.insert_record(RM_KV, 9, &payload(50 + i, 300)).unwrap())
        .collect();
    wal.shutdown().unwrap();

    let history = write_new_timeline_history(
        &StdStorage,
        dir,
        TimelineId(1),
        TimelineId(2),
        switch,
        "no recovery target specified",
    )
    .unwrap();
    assert_eq!(history.timeline_of(Lsn(switch.0 - 1)), TimelineId(1));
    let segdir = Arc::new(SegmentDir::open(dir, seg(), Arc::new(StdStorage)).unwrap());
    assert_eq!(segdir.make_spares(spares).unwrap(), spares);
    init_new_timeline_segment(&segdir, SYSTEM_ID, TimelineId(1), TimelineId(2), switch).unwrap();
    // The first segment and the one after it took a spare each.
    assert_eq!(segdir.spare_count(), spares.saturating_sub(2));
    let mut cfg = WalConfig::new(
        dir,
        SYSTEM_ID,
        TimelineId(2),
        seg(),
        switch,
        before.last().unwrap().start,
    );
    cfg.segdir = Some(segdir);
    let wal = Wal::start(cfg).unwrap();
    let eor = XlogRecord::EndOfRecovery(EndOfRecovery {
        new_tli: TimelineId(2),
        prev_tli: TimelineId(1),
        time_unix_us: 1,
    });
    let mut after = vec![wal.log_xlog(&eor).unwrap()];
    for i in 0..3 {
        after.push(wal.insert_record(RM_KV, 2, &payload(100 + i, 200)).unwrap());
    }
    wal.shutdown().unwrap();
    Promoted {
        before,
        diverged,
        after,
        switch,
    }
}

fn cfg_for(dir: &std::path::Path, tli: u32) -> ReaderConfig {
    ReaderConfig {
        history: read_history(dir, TimelineId(tli)).unwrap(),
        ..reader_cfg(dir)
    }
}

#[test]
fn readers_follow_their_timeline() {
    let dir = tempfile::tempdir().unwrap();
    // Segment 1 full, the switch point inside segment 2.
    let p = promote(dir.path(), (1 << 20) - 100);
    assert_eq!(p.switch.segno(seg()), SegNo(2));

    let (on2, stop) = read_all(cfg_for(dir.path(), 2));
    let want: Vec<Lsn> = p.before.iter().chain(&p.after).map(|r| r.start).collect();
    assert_eq!(
        on2.iter().map(|r| r.lsn).collect::<Vec<_>>(),
        want,
        "stopped by {stop}"
    );
    assert!(matches!(
        on2[p.before.len()].xlog(),
        Some(Ok(XlogRecord::EndOfRecovery(_)))
    ));

    let (on1, _) = read_all(cfg_for(dir.path(), 1));
    let want: Vec<Lsn> = p
        .before
        .iter()
        .chain(&p.diverged)
        .map(|r| r.start)
        .collect();
    assert_eq!(on1.iter().map(|r| r.lsn).collect::<Vec<_>>(), want);

    let end = find_end_of_wal(cfg_for(dir.path(), 2), initial_lsn(seg()), None).unwrap();
    assert_eq!(end.end, p.after.last().unwrap().end);
}

#[test]
fn new_timeline_segment_is_a_restamped_copy_of_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let p = promote(dir.path(), (1 << 20) - 100);
    let old = fs::read(dir.path().join(SegNo(2).file_name(TimelineId(1), seg()))).unwrap();
    let new = fs::read(dir.path().join(SegNo(2).file_name(TimelineId(2), seg()))).unwrap();
    let off = p.switch.segment_offset(seg()) as usize;
    let (h_old, h_new) = (
        SegmentHeader::decode(&old).unwrap(),
        SegmentHeader::decode(&new).unwrap(),
    );
    assert_eq!(h_new.tli, TimelineId(2));
    assert_eq!(
        SegmentHeader {
            tli: TimelineId(1),
            ..h_new
        },
        h_old
    );
    assert_eq!(&new[40..off], &old[40..off]);
    assert_ne!(
        &new[off..off + 64],
        &old[off..off + 64],
        "the old timeline diverged here"
    );
    // A walsender streaming timeline 1's history from timeline 2's point of
    // view reads the switch segment from timeline 2's file.
    let segdir = Arc::new(SegmentDir::open(dir.path(), seg(), Arc::new(StdStorage)).unwrap());
    let mut buf = vec![0u8; 64];
    let history = read_history(dir.path(), TimelineId(2)).unwrap();
    RawReader::new(segdir)
        .read_history(&history, p.switch, &mut buf)
        .unwrap();
    assert_eq!(&buf[..], &new[off..off + 64]);
}

#[test]
fn promotion_with_spare_segments_writes_the_same_files() {
    let plain = tempfile::tempdir().unwrap();
    let spared = tempfile::tempdir().unwrap();
    let a = promote(plain.path(), (1 << 20) - 100);
    let b = promote_with_spares(spared.path(), (1 << 20) - 100, 3);
    assert_eq!((a.switch, a.switch.segno(seg())), (b.switch, SegNo(2)));
    // The new timeline's segments are byte-identical to those made without
    // spares (prefix copy, end-of-recovery record, zeroes elsewhere).
    for segno in [SegNo(2), SegNo(3)] {
        let name = segno.file_name(TimelineId(2), seg());
        let x = fs::read(plain.path().join(&name)).unwrap();
        let y = fs::read(spared.path().join(&name)).unwrap();
        assert_eq!(x.len(), y.len(), "{name}");
        assert!(x == y, "{name} differs with spare segments");
    }
    let (recs, stop) = read_all(cfg_for(spared.path(), 2));
    let want: Vec<Lsn> = b.before.iter().chain(&b.after).map(|r| r.start).collect();
    assert_eq!(
        recs.iter().map(|r| r.lsn).collect::<Vec<_>>(),
        want,
        "stopped by {stop}"
    );
    // The spare left over is a temporary file: gone when the directory is
    // opened again (as at the next start).
    let temp = |d: &std::path::Path| {
        fs::read_dir(d)
            .unwrap()
            .filter(|e| {
                let e = e.as_ref().unwrap();
                e.file_name().to_string_lossy().starts_with("xlogtemp.")
            })
            .count()
    };
    assert_eq!(temp(spared.path()), 1);
    SegmentDir::open(spared.path(), seg(), Arc::new(StdStorage)).unwrap();
    assert_eq!(temp(spared.path()), 0);
}

#[test]
fn without_the_new_timeline_file_the_reader_stops_at_the_switch_point() {
    let dir = tempfile::tempdir().unwrap();
    let p = promote(dir.path(), (1 << 20) - 100);
    fs::remove_file(dir.path().join(SegNo(2).file_name(TimelineId(2), seg()))).unwrap();
    let (recs, stop) = read_all(cfg_for(dir.path(), 2));
    // Up to the switch point timeline 1's file serves; past it only
    // timeline 2's may, and it is missing.
    assert_eq!(recs.len(), p.before.len());
    assert_eq!(stop.record, p.switch);
    match &stop.kind {
        ReadErrorKind::MissingSegment { tried, .. } => {
            assert_eq!(tried, &vec!["000000020000000000000002".to_string()])
        }
        other => panic!("{other}"),
    }
}

#[test]
fn switch_at_a_segment_boundary_starts_an_empty_segment() {
    let dir = tempfile::tempdir().unwrap();
    let wal = new_wal(dir.path(), None);
    let a = wal.insert_record(RM_KV, 0, b"one").unwrap();
    let switch = wal.switch_segment().unwrap();
    wal.shutdown().unwrap();
    assert_eq!(switch.segment_offset(seg()), 0);
    write_new_timeline_history(
        &StdStorage,
        dir.path(),
        TimelineId(1),
        TimelineId(2),
        switch,
        "promoted",
    )
    .unwrap();
    let segdir = Arc::new(SegmentDir::open(dir.path(), seg(), Arc::new(StdStorage)).unwrap());
    init_new_timeline_segment(&segdir, SYSTEM_ID, TimelineId(1), TimelineId(2), switch).unwrap();
    let new = fs::read(
        dir.path()
            .join(switch.segno(seg()).file_name(TimelineId(2), seg())),
    )
    .unwrap();
    assert!(new.iter().all(|&b| b == 0));
    // Recovery finds the end (and the switch record as the last record).
    let found = find_end_of_wal(cfg_for(dir.path(), 2), a.start, None).unwrap();
    assert_eq!(found.end, switch);
    let mut cfg = WalConfig::new(
        dir.path(),
        SYSTEM_ID,
        TimelineId(2),
        seg(),
        found.end,
        found.prev_record,
    );
    cfg.segdir = Some(segdir);
    let wal = Wal::start(cfg).unwrap();
    let b = wal.insert_record(RM_KV, 0, b"two").unwrap();
    wal.shutdown().unwrap();
    let mut r = WalReader::new(cfg_for(dir.path(), 2), a.start);
    assert_eq!(r.read_record().unwrap().lsn, a.start);
    let sw = r.read_record().unwrap();
    assert_eq!(sw.xlog(), Some(Ok(XlogRecord::Switch)));
    assert_eq!(sw.end, switch);
    let two = r.read_record().unwrap();
    assert_eq!((two.lsn, two.prev), (b.start, sw.lsn));
}

#[test]
fn a_new_timeline_needs_its_first_segment() {
    let dir = tempfile::tempdir().unwrap();
    let wal = new_wal(dir.path(), None);
    let a = wal.insert_record(RM_KV, 0, b"one").unwrap();
    wal.shutdown().unwrap();
    let cfg = WalConfig::new(dir.path(), SYSTEM_ID, TimelineId(2), seg(), a.end, a.start);
    let e = Wal::start(cfg).unwrap_err();
    assert!(e.to_string().contains("init_new_timeline_segment"), "{e}");
    let segdir = SegmentDir::open(dir.path(), seg(), Arc::new(StdStorage)).unwrap();
    let e = init_new_timeline_segment(&segdir, SYSTEM_ID + 1, TimelineId(1), TimelineId(2), a.end)
        .unwrap_err();
    assert!(e.to_string().contains("different database system"), "{e}");
    assert_eq!(
        TimelineHistory::root(TimelineId(1)),
        read_history(dir.path(), TimelineId(1)).unwrap()
    );
}

#[test]
fn the_old_timelines_last_segment_becomes_partial() {
    let dir = tempfile::tempdir().unwrap();
    let p = promote(dir.path(), (1 << 20) - 100);
    let segdir = SegmentDir::open(dir.path(), seg(), Arc::new(StdStorage)).unwrap();
    let to = rename_old_timeline_segment_partial(&segdir, TimelineId(1), p.switch, true).unwrap();
    let name = "000000010000000000000002.partial";
    assert_eq!(to, Some(dir.path().join(name)));
    assert!(dir
        .path()
        .join("archive_status")
        .join(format!("{name}.ready"))
        .exists());
    let kinds: Vec<_> = segdir
        .list()
        .unwrap()
        .into_iter()
        .map(|f| (f.name, f.kind))
        .collect();
    assert!(
        kinds.contains(&(name.to_string(), walrep::wal::WalFileKind::Partial)),
        "{kinds:?}"
    );
    assert!(kinds.contains(&(
        "00000002.history".to_string(),
        walrep::wal::WalFileKind::History
    )));
    // Timeline 2 still reads everything: its own copy of the switch segment serves.
    let (recs, _) = read_all(cfg_for(dir.path(), 2));
    assert_eq!(recs.len(), p.before.len() + p.after.len());
}
