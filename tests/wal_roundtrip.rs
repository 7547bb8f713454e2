//! Records written by the WAL writer read back identical, in order, with
//! their prev-links, across segment boundaries (property test).

mod support;

use proptest::prelude::*;
use support::wal::*;
use walrep::wal::{Checkpoint, EndOfRecovery, XlogRecord, RM_KV, RM_XLOG};
use walrep::{Lsn, TimelineId};

/// Payload sizes: mostly small, sometimes spanning one or two 1 MiB segments.
fn sizes() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0usize..100,
        3 => 100usize..5000,
        1 => 900_000usize..2_200_000,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn records_round_trip(recs in prop::collection::vec((1u8..=255, any::<u8>(), sizes()), 1..30)) {
        let dir = tempfile::tempdir().unwrap();
        let wal = new_wal(dir.path(), None);
        let mut written = Vec::new();
        for (i, (rmid, info, len)) in recs.iter().enumerate() {
            let p = payload(i as u64, *len);
            let at = wal.insert_record(*rmid, *info, &p).unwrap();
            written.push((at, *rmid, *info, p));
        }
        let end = wal.flush().unwrap();
        wal.shutdown().unwrap();
        let (read, stop) = read_all(reader_cfg(dir.path()));
        prop_assert!(stop.kind.is_zeroes() || matches!(stop.kind, walrep::wal::ReadErrorKind::MissingSegment { .. }), "{stop}");
        prop_assert_eq!(stop.record, end);
        prop_assert_eq!(read.len(), written.len());
        let mut prev = Lsn::INVALID;
        for (rec, (at, rmid, info, p)) in read.iter().zip(&written) {
            prop_assert_eq!(rec.lsn, at.start);
            prop_assert_eq!(rec.end, at.end);
            prop_assert_eq!(rec.prev, prev);
            prop_assert_eq!((rec.rmid, rec.info), (*rmid, *info));
            prop_assert!(rec.payload == *p, "payload of record at {} differs", rec.lsn);
            prev = rec.lsn;
        }
    }

    #[test]
    fn xlog_payloads_round_trip(redo: u64, tli: u32, prev_tli: u32, shutdown: bool, time: u64, id: u64) {
        let recs = [
            XlogRecord::Checkpoint(Checkpoint {
                redo: Lsn(redo),
                tli: TimelineId(tli),
                prev_tli: TimelineId(prev_tli),
                shutdown,
                time_unix_us: time,
                checkpoint_id: id,
            }),
            XlogRecord::EndOfRecovery(EndOfRecovery { new_tli: TimelineId(tli), prev_tli: TimelineId(prev_tli), time_unix_us: time }),
            XlogRecord::BackupEnd { start: Lsn(redo) },
        ];
        for r in recs {
            prop_assert_eq!(XlogRecord::decode(r.info(), &r.encode_payload()), Ok(r));
        }
    }
}

#[test]
fn xlog_records_are_typed_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let wal = new_wal(dir.path(), None);
    let cp = XlogRecord::Checkpoint(Checkpoint {
        redo: wal.inserted(),
        tli: TimelineId(1),
        prev_tli: TimelineId(1),
        shutdown: false,
        time_unix_us: 1,
        checkpoint_id: 9,
    });
    wal.insert(RM_KV, 3, b"key=value").unwrap();
    let at = wal.log_xlog(&cp).unwrap();
    wal.log_xlog(&XlogRecord::Noop).unwrap();
    wal.flush().unwrap();
    let (read, _) = read_all(reader_cfg(dir.path()));
    assert_eq!(read.len(), 3);
    assert!(read[0].xlog().is_none());
    assert_eq!(read[1].lsn, at.start);
    assert_eq!(read[1].rmid, RM_XLOG);
    assert_eq!(read[1].xlog(), Some(Ok(cp)));
    assert_eq!(read[2].xlog(), Some(Ok(XlogRecord::Noop)));
}
