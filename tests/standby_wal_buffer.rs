//! The received-WAL buffer redo reads before the files: records read from
//! it while the stream arrives are exactly the records the files hold,
//! whatever the chunking, a buffer smaller than the lag (the reader falls
//! back to the files and catches up) and a stream that restarts from a
//! segment start (a new walreceiver session); bytes past the limit (the
//! flush position) are never read from it.

mod support;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use support::wal::*;
use walrep::standby::receiver::WalBuffer;
use walrep::wal::{initial_lsn, ReadErrorKind, Record, WalMemory, WalReader, RM_KV};
use walrep::{Lsn, TimelineId};

const TLI: TimelineId = TimelineId(1);

/// A system with `sizes.len()` records of those payload sizes; returns the
/// end of WAL.
fn write_wal(dir: &Path, sizes: &[usize]) -> Lsn {
    let wal = new_wal(dir, None);
    let mut end = initial_lsn(seg());
    for (i, len) in sizes.iter().enumerate() {
        end = wal
            .insert_record(RM_KV, 0, &payload(i as u64, *len))
            .unwrap()
            .end;
    }
    wal.flush().unwrap();
    wal.shutdown().unwrap();
    end
}

/// The bytes of timeline 1's files from `from` to `to`, as the stream
/// carries them.
fn stream_bytes(dir: &Path, from: Lsn, to: Lsn) -> Vec<u8> {
    let s = seg().bytes();
    let mut out = Vec::new();
    let mut pos = from.0;
    while pos < to.0 {
        let segno = pos / s;
        let file = fs::read(dir.join(segment_name(segno))).unwrap();
        let off = (pos % s) as usize;
        let n = ((to.0 - pos) as usize).min(s as usize - off);
        out.extend_from_slice(&file[off..off + n]);
        pos += n as u64;
    }
    out
}

/// Every record up to the limit; the reader stays at the first one not
/// wholly below it.
fn read_available(r: &mut WalReader, out: &mut Vec<Record>) {
    loop {
        match r.read_record() {
            Ok(rec) => out.push(rec),
            Err(e) => {
                assert!(matches!(e.kind, ReadErrorKind::LimitReached { .. }), "{e}");
                return;
            }
        }
    }
}

/// Feed `bytes` (from `from`) into `buf` in `chunks`, reading after each
/// chunk up to what was fed, as redo follows the flush position; a restart
/// at chunk `restart_at` clears the buffer and streams again from the
/// segment start, as a new session does.
fn follow(
    dir: &Path,
    buf: &Arc<WalBuffer>,
    bytes: &[u8],
    chunks: &[usize],
    restart_at: Option<usize>,
) -> Vec<Record> {
    let from = initial_lsn(seg());
    let mut r = WalReader::new(reader_cfg(dir), from);
    let memory: Arc<dyn WalMemory> = buf.clone();
    r.set_memory(Some(memory));
    let mut recs = Vec::new();
    let mut fed = 0usize;
    let mut i = 0usize;
    while fed < bytes.len() {
        if restart_at == Some(i) {
            buf.clear();
            let restart = Lsn(from.0 + fed as u64).segment_start(seg());
            fed = (restart.0 - from.0) as usize;
        }
        let n = chunks[i % chunks.len()].min(bytes.len() - fed);
        buf.append(TLI, Lsn(from.0 + fed as u64), &bytes[fed..fed + n]);
        fed += n;
        r.set_limit(Some(Lsn(from.0 + fed as u64)));
        read_available(&mut r, &mut recs);
        i += 1;
    }
    recs
}

fn files_only(dir: &Path, end: Lsn) -> Vec<Record> {
    let mut r = WalReader::new(reader_cfg(dir), initial_lsn(seg()));
    r.set_limit(Some(end));
    let mut recs = Vec::new();
    read_available(&mut r, &mut recs);
    recs
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Redo fed from memory reads exactly the records redo from the files
    /// reads: any chunking, buffers from far smaller than the WAL (most
    /// bytes come from the files) to larger, and a restart mid-stream.
    #[test]
    fn records_from_memory_equal_records_from_files(
        sizes in proptest::collection::vec(1usize..70_000, 20..90),
        chunks in proptest::collection::vec(1usize..200_000, 1..8),
        capacity in prop_oneof![Just(48 << 10), Just(512 << 10), Just(8 << 20)],
        restart in proptest::option::of(1usize..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let end = write_wal(dir.path(), &sizes);
        let from_files = files_only(dir.path(), end);
        prop_assert_eq!(from_files.len(), sizes.len());
        let bytes = stream_bytes(dir.path(), initial_lsn(seg()), end);
        let buf = Arc::new(WalBuffer::new(capacity));
        let from_memory = follow(dir.path(), &buf, &bytes, &chunks, restart);
        prop_assert_eq!(&from_memory, &from_files);
        prop_assert!(buf.hit_bytes() > 0, "nothing was read from memory");
    }
}

/// With the buffer holding the whole stream, redo reads every record from
/// memory: the files' record bytes can be zeroes (only their headers are
/// checked, once per segment) and the records are still all there.
#[test]
fn redo_reads_the_records_from_memory_not_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let sizes: Vec<usize> = (0..60).map(|i| 1_000 + i * 977).collect();
    let end = write_wal(dir.path(), &sizes);
    let expected = files_only(dir.path(), end);
    let bytes = stream_bytes(dir.path(), initial_lsn(seg()), end);
    // Zero everything but the segment headers.
    for segno in initial_lsn(seg()).segno(seg()).0..=end.segno(seg()).0 {
        let path = dir.path().join(segment_name(segno));
        let mut file = fs::read(&path).unwrap();
        let header = walrep::wal::SEG_HEADER_SIZE as usize;
        file[header..].fill(0);
        fs::write(&path, file).unwrap();
    }
    let (from_files, _) = read_all(reader_cfg(dir.path()));
    assert!(
        from_files.len() < expected.len(),
        "the files still hold records"
    );
    let buf = Arc::new(WalBuffer::new(16 << 20));
    let got = follow(dir.path(), &buf, &bytes, &[4096, 100_000, 7], None);
    assert_eq!(got, expected);
    assert_eq!(buf.miss_bytes(), 0);
}

/// Behind by more than the buffer holds, redo reads what was evicted from
/// the files and catches up (then reads from memory again).
#[test]
fn redo_behind_the_buffer_falls_back_to_the_files_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let sizes: Vec<usize> = (0..200).map(|i| 2_000 + (i * 7919) % 30_000).collect();
    let end = write_wal(dir.path(), &sizes);
    let expected = files_only(dir.path(), end);
    let bytes = stream_bytes(dir.path(), initial_lsn(seg()), end);
    let from = initial_lsn(seg());
    let buf = Arc::new(WalBuffer::new(256 << 10));
    let mut r = WalReader::new(reader_cfg(dir.path()), from);
    let memory: Arc<dyn WalMemory> = buf.clone();
    r.set_memory(Some(memory));
    // Everything arrives before redo reads: most of it was evicted.
    buf.append(TLI, from, &bytes);
    r.set_limit(Some(end));
    let mut got = Vec::new();
    read_available(&mut r, &mut got);
    assert_eq!(got, expected);
    assert!(buf.miss_bytes() > 1 << 20, "{} missed", buf.miss_bytes());
    assert!(buf.hit_bytes() > 100 << 10, "{} hit", buf.hit_bytes());
}

/// Bytes the buffer holds past the limit are never handed to redo: the
/// flush position bounds what is read, whatever the source.
#[test]
fn bytes_past_the_limit_are_not_read_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = [3_000usize, 5_000, 7_000];
    let end = write_wal(dir.path(), &sizes);
    let expected = files_only(dir.path(), end);
    let from = initial_lsn(seg());
    let bytes = stream_bytes(dir.path(), from, end);
    let buf = Arc::new(WalBuffer::new(1 << 20));
    buf.append(TLI, from, &bytes);
    let mut r = WalReader::new(reader_cfg(dir.path()), from);
    let memory: Arc<dyn WalMemory> = buf.clone();
    r.set_memory(Some(memory));
    // The limit is one byte into the second record.
    r.set_limit(Some(Lsn(expected[1].lsn.0 + 1)));
    let mut got = Vec::new();
    read_available(&mut r, &mut got);
    assert_eq!(got, expected[..1].to_vec());
    r.set_limit(Some(end));
    read_available(&mut r, &mut got);
    assert_eq!(got, expected);
}
