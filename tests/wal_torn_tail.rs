//! Crash recovery finds exactly the last valid record: for a WAL whose tail
//! is torn (everything from a byte on lost) or corrupted (one byte flipped)
//! at every byte offset of its last records, `find_end_of_wal` stops at the
//! last intact record; and a restart never revives records from before the
//! crash that lie past the end of valid WAL.

mod support;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use proptest::prelude::*;
use support::wal::*;
use walrep::wal::segment::data_end;
use walrep::wal::{find_end_of_wal, initial_lsn, InsertedRecord, Wal, WalConfig, RM_KV};
use walrep::{Lsn, TimelineId};

/// One record as written: its span and where its bytes end (unaligned).
#[derive(Debug, Clone, Copy)]
struct Span {
    at: InsertedRecord,
    bytes_end: Lsn,
}

/// Write records with payload sizes `lens`; returns their spans.
fn write(dir: &Path, lens: &[usize]) -> Vec<Span> {
    let wal = new_wal(dir, None);
    let spans = lens
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let at = wal
                .insert_record(RM_KV, 1, &payload(i as u64, len))
                .unwrap();
            let bytes_end = data_end(at.start, 24 + len as u64, seg()).unwrap();
            Span { at, bytes_end }
        })
        .collect();
    wal.shutdown().unwrap();
    spans
}

/// Sizes that put the last records around the end of segment 1, one of
/// them spanning into segment 2.
fn layout() -> Vec<usize> {
    let mut lens = vec![100; 10];
    // Fill segment 1 up to about 400 bytes before its end.
    let used = 40 + 10 * 128;
    lens.push((1 << 20) - used - 400 - 24);
    lens.extend([120, 333, 50, 0, 77, 9]);
    lens
}

/// The segment file holding `lsn`, and the offset in it.
fn locate(dir: &Path, lsn: Lsn) -> (File, u64) {
    let name = lsn.segno(seg()).file_name(TimelineId(1), seg());
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(name))
        .unwrap();
    (f, lsn.segment_offset(seg()))
}

fn read_byte(dir: &Path, lsn: Lsn) -> u8 {
    let (f, off) = locate(dir, lsn);
    let mut b = [0u8];
    f.read_exact_at(&mut b, off).unwrap();
    b[0]
}

fn write_byte(dir: &Path, lsn: Lsn, v: u8) {
    let (f, off) = locate(dir, lsn);
    f.write_all_at(&[v], off).unwrap();
}

/// Records recovery must keep when bytes from `lost_from` on are gone.
fn kept_when_torn(spans: &[Span], lost_from: Lsn) -> usize {
    spans
        .iter()
        .take_while(|s| s.bytes_end <= lost_from)
        .count()
}

/// Records recovery must keep when the byte at `lsn` is corrupted.
fn kept_when_flipped(spans: &[Span], lsn: Lsn) -> usize {
    spans
        .iter()
        .position(|s| s.at.start <= lsn && lsn < s.bytes_end)
        .unwrap_or(spans.len())
}

fn check_end(dir: &Path, spans: &[Span], kept: usize, what: &str) {
    let end = find_end_of_wal(reader_cfg(dir), initial_lsn(seg()), None).unwrap();
    let want_end = if kept == 0 {
        initial_lsn(seg())
    } else {
        spans[kept - 1].at.end
    };
    assert_eq!(end.records, kept as u64, "{what}: stopped by {}", end.stop);
    assert_eq!(end.end, want_end, "{what}");
    let want_prev = if kept == 0 {
        Lsn::INVALID
    } else {
        spans[kept - 1].at.start
    };
    assert_eq!(end.prev_record, want_prev, "{what}");
}

/// Byte positions of the last `n` records (headers crossed included).
fn tail_positions(spans: &[Span], n: usize) -> Vec<Lsn> {
    let from = spans[spans.len() - n].at.start.0;
    let to = spans[spans.len() - 1].at.end.0;
    (from..to).map(Lsn).collect()
}

#[test]
fn torn_at_every_byte_of_the_last_records() {
    let dir = tempfile::tempdir().unwrap();
    let spans = write(dir.path(), &layout());
    assert!(spans
        .iter()
        .any(|s| s.at.start.segno(seg()) != s.bytes_end.segno(seg())));
    let positions = tail_positions(&spans, 6);
    let saved: Vec<u8> = positions
        .iter()
        .map(|&p| read_byte(dir.path(), p))
        .collect();
    for (i, &p) in positions.iter().enumerate() {
        // Lose everything from p on (a torn write: later bytes never made it).
        for &q in &positions[i..] {
            write_byte(dir.path(), q, 0);
        }
        check_end(
            dir.path(),
            &spans,
            kept_when_torn(&spans, p),
            &format!("torn at {p}"),
        );
        for (j, &q) in positions.iter().enumerate().skip(i) {
            write_byte(dir.path(), q, saved[j]);
        }
    }
}

#[test]
fn corrupted_at_every_byte_of_the_last_records() {
    let dir = tempfile::tempdir().unwrap();
    let spans = write(dir.path(), &layout());
    for p in tail_positions(&spans, 6) {
        let b = read_byte(dir.path(), p);
        write_byte(dir.path(), p, b ^ 0x5A);
        check_end(
            dir.path(),
            &spans,
            kept_when_flipped(&spans, p),
            &format!("flipped at {p}"),
        );
        write_byte(dir.path(), p, b);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random layouts, random tear or flip point among the last records.
    #[test]
    fn random_tail_damage(
        lens in prop::collection::vec(prop_oneof![4 => 0usize..200, 1 => 200usize..700_000], 3..12),
        pick in any::<prop::sample::Index>(),
        flip in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let spans = write(dir.path(), &lens);
        let positions = tail_positions(&spans, 3.min(spans.len()));
        let p = positions[pick.index(positions.len())];
        let kept = if flip {
            let b = read_byte(dir.path(), p);
            write_byte(dir.path(), p, b ^ 0xFF);
            kept_when_flipped(&spans, p)
        } else {
            for &q in positions.iter().filter(|&&q| q >= p) {
                write_byte(dir.path(), q, 0);
            }
            kept_when_torn(&spans, p)
        };
        check_end(dir.path(), &spans, kept, &format!("flip={flip} at {p}"));
    }
}

#[test]
fn restart_after_a_torn_record_never_revives_later_stale_records() {
    let dir = tempfile::tempdir().unwrap();
    // Equal sizes: new records land exactly where the old ones were, with
    // the same prev-links, so only the zeroing at start-up keeps the old
    // ones out.
    let spans = write(dir.path(), &[100; 20]);
    let bad = spans[10].at.start.0 + 30;
    write_byte(dir.path(), Lsn(bad), read_byte(dir.path(), Lsn(bad)) ^ 1);
    let found = find_end_of_wal(reader_cfg(dir.path()), initial_lsn(seg()), None).unwrap();
    assert_eq!(found.records, 10);
    let cfg = WalConfig::new(
        dir.path(),
        SYSTEM_ID,
        TimelineId(1),
        seg(),
        found.end,
        found.prev_record,
    );
    let wal = Wal::start(cfg).unwrap();
    for i in 0..5 {
        let at = wal.insert_record(RM_KV, 1, &payload(100 + i, 100)).unwrap();
        assert_eq!(
            at.start,
            spans[10 + i as usize].at.start,
            "same positions as before"
        );
    }
    let end = wal.flush().unwrap();
    wal.shutdown().unwrap();
    let after = find_end_of_wal(reader_cfg(dir.path()), initial_lsn(seg()), None).unwrap();
    assert_eq!(after.records, 15, "stopped by {}", after.stop);
    assert_eq!(after.end, end);
    assert!(after.stop.kind.is_zeroes(), "{}", after.stop);
}
