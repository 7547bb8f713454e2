//! The copy's large files read back as soon as they are written, while
//! the other jobs still copy: the same comparison the end check makes
//! (size and CRC-32C against what was written; a snapshot chunk parsed as
//! a chunk), done early on its own thread so that the end check, after
//! the last job, only has to confirm that each file checked early is
//! still the file that was checked.
//!
//! # What the end check still guarantees
//!
//! A file checked here is accepted by the end check only if its manifest
//! entry is the entry checked, and its inode, size, modification and
//! change times are those seen before and after it was read here: any
//! write to it afterwards (through any descriptor, even of the same
//! bytes) changes its change time (Linux's multigrain timestamps make two
//! changes within one clock tick differ once the first was looked at), so
//! such a file is read back again at the end, as every file was before.
//! A file whose early check failed or did not happen (the queue was full,
//! it was not yet written whole) is read back at the end too, and reports
//! its error there, in the manifest's order. What the early read sees is
//! the page cache right after the write, before the final fsync pass;
//! that pass still follows, and a failed fsync still fails the copy.
//! The end-of-copy read of a large copy could find a page evicted and
//! read it from the disk; the early read never does.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::manifest::{compare_listed, ChecksumKind, Hasher, ListedFile};
use super::written::FileEntry;
use crate::datadir::BASE_DIR;
use crate::store::checkpoint::check_chunk;
use crate::store::ControlFile;

/// Most files waiting for their early check; more are left to the end
/// check (never a wait for the copy).
pub(crate) const QUEUE: usize = 1024;
/// Bytes read at a time from a file that is not a chunk.
const READ_BYTES: usize = 1 << 20;
/// Bytes of a chunk read and checksummed at a time (well within the
/// CPU's second-level cache, where both checksums then find them).
const PIECE_BYTES: usize = 256 << 10;

/// A file's identity and the times that any write to it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Option<Stamp> {
        m.is_file().then(|| Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// What a chunk's own header said, and its keys, once it parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChunkFacts {
    index: u32,
    chunks: u32,
    id: u64,
    keys: u64,
}

/// One file that matched its entry when read early.
#[derive(Debug, Clone)]
struct Checked {
    size: u64,
    crc32c: u32,
    stamp: Stamp,
    chunk: Option<ChunkFacts>,
}

/// The files read back early, by path in the copy.
#[derive(Debug, Default)]
pub(crate) struct EarlyChecks {
    by_path: HashMap<String, Checked>,
}

impl EarlyChecks {
    /// Add what another thread checked.
    pub fn merge(&mut self, other: EarlyChecks) {
        self.by_path.extend(other.by_path);
    }

    /// `f` (in the copy in `dir`) was checked early against this very
    /// entry and has not changed since: `Some` with its keys when
    /// `chunk` (its number and the control file naming its snapshot) says
    /// it is a chunk. `None`: read it back now.
    pub fn accepted(
        &self,
        dir: &Path,
        f: &ListedFile,
        chunk: Option<(u32, &ControlFile)>,
    ) -> Option<Option<u64>> {
        let c = self.by_path.get(&f.path)?;
        if f.kind != ChecksumKind::Crc32c {
            return None;
        }
        compare_listed(f, c.size, &c.crc32c.to_ne_bytes()).ok()?;
        let now = Stamp::of(&std::fs::symlink_metadata(dir.join(&f.path)).ok()?)?;
        if now != c.stamp {
            return None;
        }
        let Some((n, control)) = chunk else {
            return Some(None);
        };
        let k = c.chunk?;
        let same =
            k.index == n && k.chunks == control.checkpoint_chunks && k.id == control.checkpoint_id;
        same.then_some(Some(k.keys))
    }
}

/// Threads reading what is still queued once every file is written (the
/// early thread and helpers): one per core, at most 4 (each holds one
/// chunk in memory).
pub(crate) fn drain_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

/// Check each file `entries` hands over in the copy in `dir`, until
/// every sender is gone and the queue is empty (other threads may share
/// the queue), or until `stop` is set (the copy failed); returns those
/// that matched.
pub(crate) fn run(
    dir: &Path,
    entries: crossbeam_channel::Receiver<FileEntry>,
    stop: &AtomicBool,
) -> EarlyChecks {
    let mut found = EarlyChecks::default();
    let mut buf = Vec::new();
    for e in entries {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(c) = check_one(dir, &e, &mut buf) {
            found.by_path.insert(e.path, c);
        }
    }
    found
}

/// Read `e`'s file back: it matched, and did not change while read.
fn check_one(dir: &Path, e: &FileEntry, buf: &mut Vec<u8>) -> Option<Checked> {
    let mut file = File::open(dir.join(&e.path)).ok()?;
    let before = Stamp::of(&file.metadata().ok()?)?;
    if before.size != e.size {
        return None;
    }
    let chunk_like = e.path.starts_with(&format!("{BASE_DIR}/"));
    let (len, crc, chunk) = if chunk_like {
        let mut hasher = ChecksumKind::Crc32c.hasher();
        let read = read_whole(&mut file, e.size, buf, &mut hasher).ok()?;
        let sum = hasher.finish();
        let crc = u32::from_ne_bytes(sum.try_into().ok()?);
        let facts = (read.len == e.size)
            .then(|| chunk_facts(&buf[..read.len as usize], read.body_crc))
            .flatten();
        (read.len, crc, facts)
    } else {
        // Never shrunk: a chunk read next reuses it without zeroing it.
        if buf.len() < READ_BYTES {
            buf.resize(READ_BYTES, 0);
        }
        let piece = &mut buf[..READ_BYTES];
        let mut hasher = ChecksumKind::Crc32c.hasher();
        let mut len = 0u64;
        loop {
            let n = file.read(piece).ok()?;
            if n == 0 {
                break;
            }
            hasher.update(&piece[..n]);
            len += n as u64;
        }
        let sum = hasher.finish();
        (len, u32::from_ne_bytes(sum.try_into().ok()?), None)
    };
    let after = Stamp::of(&file.metadata().ok()?)?;
    (len == e.size && crc == e.crc32c && before == after).then_some(Checked {
        size: len,
        crc32c: crc,
        stamp: after,
        chunk,
    })
}

/// The chunk's header fields (number, chunks in its snapshot, snapshot
/// id, where `check_chunk` reads them) and its keys, when it checks as a
/// chunk with them (`body_crc`: its CRC32 computed while it was read).
/// Whether they are the snapshot's is decided at the end, against the
/// copy's control file.
fn chunk_facts(b: &[u8], body_crc: Option<u32>) -> Option<ChunkFacts> {
    let index = u32::from_le_bytes(b.get(8..12)?.try_into().ok()?);
    let chunks = u32::from_le_bytes(b.get(12..16)?.try_into().ok()?);
    let id = u64::from_le_bytes(b.get(16..24)?.try_into().ok()?);
    let keys = check_chunk(b, index, chunks, id, body_crc).ok()?;
    Some(ChunkFacts {
        index,
        chunks,
        id,
        keys,
    })
}

/// A file read whole by [`read_whole`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadWhole {
    /// Bytes read (at most one more than expected).
    pub len: u64,
    /// When `len` is the length expected: the CRC32 of every byte but the
    /// last four (a snapshot chunk's own checksum covers those).
    pub body_crc: Option<u32>,
}

/// Read `file`, expected to hold `expect` bytes, into `buf[..len]` (one
/// byte more is read to notice a longer file), a [`PIECE_BYTES`] piece at
/// a time, each piece fed to `hasher` and to the chunk's CRC32 just after
/// it is read, while it is still in the CPU's cache: the file's bytes go
/// through memory once, not once per checksum. `buf` keeps its length
/// (it grows only with the bytes actually read), so a thread reading file
/// after file does not zero or fault its buffer in again.
pub(crate) fn read_whole(
    file: &mut File,
    expect: u64,
    buf: &mut Vec<u8>,
    hasher: &mut Hasher,
) -> std::io::Result<ReadWhole> {
    let body_end = expect.saturating_sub(4);
    let mut body = crc32fast::Hasher::new();
    let mut len = 0u64;
    let limit = expect.saturating_add(1);
    while len < limit {
        let at = len as usize;
        let want = (limit - len).min(PIECE_BYTES as u64) as usize;
        if buf.len() < at + want {
            buf.resize(at + want, 0);
        }
        let n = match file.read(&mut buf[at..at + want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let piece = &buf[at..at + n];
        hasher.update(piece);
        let in_body = body_end.saturating_sub(len).min(n as u64) as usize;
        body.update(&piece[..in_body]);
        len += n as u64;
    }
    Ok(ReadWhole {
        len,
        body_crc: (len == expect && expect >= 4).then(|| body.finalize()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::{crc32c, parse, Manifest};
    use crate::{Lsn, TimelineId};

    fn entry(rel: &str, bytes: &[u8]) -> FileEntry {
        FileEntry {
            path: rel.into(),
            size: bytes.len() as u64,
            mtime: 0,
            crc32c: crc32c(bytes),
        }
    }

    fn listed(e: &FileEntry) -> ListedFile {
        let mut m = Manifest::new(ChecksumKind::Crc32c, false);
        m.add_file(&e.path, e.size, 0, e.crc32c.to_ne_bytes().to_vec());
        let bytes = m.finish(TimelineId(1), Lsn(0x100_0028), Lsn(0x100_0100));
        parse(&bytes).unwrap().files.remove(0)
    }

    fn checked(dir: &Path, entries: Vec<FileEntry>) -> EarlyChecks {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        for e in entries {
            tx.send(e).unwrap();
        }
        drop(tx);
        run(dir, rx, &AtomicBool::new(false))
    }

    #[test]
    fn a_file_checked_early_is_accepted_until_it_is_written_again() {
        let d = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..3 * READ_BYTES + 7).map(|i| (i % 251) as u8).collect();
        std::fs::create_dir_all(d.path().join("wal")).unwrap();
        std::fs::write(d.path().join("wal/a"), &bytes).unwrap();
        std::fs::write(d.path().join("wal/b"), &bytes).unwrap();
        let a = entry("wal/a", &bytes);
        // b's entry is not what is on disk: not accepted.
        let mut b = entry("wal/b", &bytes);
        b.crc32c ^= 1;
        let early = checked(d.path(), vec![a.clone(), b.clone()]);
        assert_eq!(early.accepted(d.path(), &listed(&a), None), Some(None));
        assert_eq!(early.accepted(d.path(), &listed(&b), None), None);
        // A manifest entry other than the one checked: read it again.
        let mut other = listed(&a);
        other.checksum = (a.crc32c ^ 1).to_ne_bytes().to_vec();
        assert_eq!(early.accepted(d.path(), &other, None), None);
        // Written again, with the same bytes even: read it again.
        std::fs::write(d.path().join("wal/a"), &bytes).unwrap();
        assert_eq!(early.accepted(d.path(), &listed(&a), None), None);
    }

    #[test]
    fn a_chunk_is_accepted_only_as_the_chunk_of_the_snapshot_the_control_file_names() {
        use crate::store::checkpoint::{chunk_name, snapshot_dir, write_snapshot};
        use crate::store::record::Op;
        let d = tempfile::tempdir().unwrap();
        let store = crate::store::Store::new();
        for i in 0..50u32 {
            let op = Op::Set {
                key: format!("key:{i}").into_bytes().into(),
                value: vec![7u8; 64 << 10].into(),
            };
            store.apply_replayed(Lsn(u64::from(i) + 1), &[op]);
        }
        write_snapshot(
            &crate::storage::StdStorage,
            d.path(),
            9,
            2,
            &store,
            &mut |_| {},
        )
        .unwrap();
        let rel = |i: u32| format!("{BASE_DIR}/{:016X}/{}", 9, chunk_name(i));
        let entries: Vec<FileEntry> = (0..2)
            .map(|i| {
                let path = snapshot_dir(d.path(), 9).join(chunk_name(i));
                entry(&rel(i), &std::fs::read(path).unwrap())
            })
            .collect();
        let early = checked(d.path(), entries.clone());
        let mut control = ControlFile::new_system(1, crate::WalSegSize::new(1 << 20).unwrap(), 2);
        control.checkpoint_id = 9;
        control.checkpoint_chunks = 2;
        let keys: Vec<u64> = (0..2)
            .map(|i| {
                let f = listed(&entries[i as usize]);
                early
                    .accepted(d.path(), &f, Some((i, &control)))
                    .unwrap()
                    .unwrap()
            })
            .collect();
        assert_eq!(keys.iter().sum::<u64>(), 50);
        // As another number, or of another snapshot: read it again.
        let f = listed(&entries[0]);
        assert_eq!(early.accepted(d.path(), &f, Some((1, &control))), None);
        control.checkpoint_id = 8;
        assert_eq!(early.accepted(d.path(), &f, Some((0, &control))), None);
    }
}
