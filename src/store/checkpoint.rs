//! Snapshots of the store under `base/`: what a checkpoint (primary) or
//! restartpoint (standby) writes, and what start-up loads before replaying
//! WAL from the redo point.
//!
//! A snapshot is a directory `base/<checkpoint id, 16 hex digits>/` of
//! `checkpoint_chunks` files `chunk_NNNN`; a key goes to chunk
//! `crc32(key) % chunks`, so chunks are of similar size and a base backup can
//! copy them in parallel. The directory is written under a `.tmp` name,
//! every file fsynced, then renamed and `base/` fsynced: a snapshot either
//! exists whole or not at all. The control file names the snapshot of the
//! last checkpoint; older ones are removed after the control file is updated.
//!
//! Chunk file layout (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `WRSNAP02` |
//! | 4 | chunk index |
//! | 4 | chunk count |
//! | 8 | checkpoint id |
//! | n × | entry: 4 bytes key length, key, 8 bytes key LSN, 8 bytes expiry (Unix ms, 0 = none), value (type byte and body, as in a WAL record's `Put`; docs/wal-format.md) |
//! | 8 | number of entries |
//! | 4 | CRC32 of every byte before it |
//!
//! The key LSN (the end of the last record that changed the key before the
//! scan reached it) is what lets replay skip the records a fuzzy snapshot
//! already holds (`replay.rs`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::storage::{
    durable_create_dir, durable_remove_dir, sync_dir, OpenFor, SeqWriter, Storage, StorageError,
};
use crate::store::codec::{put_bytes, put_u64, Reader};
use crate::store::map::{ScannedKey, Store};
use crate::store::value::{self, Slot, Str};
use crate::Lsn;

const MAGIC: &[u8; 8] = b"WRSNAP02";
/// The first format: strings only, no key LSN or expiry (still read, so a
/// data directory from before hashes, lists and sets starts).
const MAGIC_V1: &[u8; 8] = b"WRSNAP01";
const HEADER_LEN: usize = 8 + 4 + 4 + 8;
const TRAILER_LEN: usize = 8 + 4;
/// Keys copied per hold of the store's read lock. Every writer queues
/// behind a hold (the lock lets no new reader in once a writer waits, and
/// a commit's writer needs it exclusively), so a hold must stay far below
/// a commit's latency, and below a scheduler slice: a checkpointer
/// preempted while holding it stalls every writer. 256 keys is a few
/// microseconds of copying; the per-step seek back into the tree is a
/// small share of it.
const SCAN_STEP: usize = 256;
/// Bytes of a chunk file after which the kernel is asked to start writing
/// them back: PostgreSQL's `checkpoint_flush_after` (256 kB). Small
/// requests interleave with the WAL's fdatasyncs on the device; a larger
/// one is a burst each commit flushed behind it waits out.
const WRITEBACK_AFTER_BYTES: u64 = 256 << 10;

/// Errors writing or loading a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Writing a chunk file or renaming the snapshot into place failed;
    /// the control file keeps pointing at the previous snapshot.
    #[error("could not write snapshot {path}: {source}")]
    Write {
        /// The chunk file or snapshot directory.
        path: String,
        /// The failed step (after a failed fsync nothing retries).
        source: StorageError,
    },
    /// A chunk file of the snapshot being loaded could not be read.
    #[error("could not read snapshot {path}: {source}")]
    Read {
        /// The chunk file.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// A chunk file fails its checks (CRC, header, entry encoding): the
    /// node refuses to start from it rather than load part of a snapshot.
    #[error(
        "snapshot file {path} is corrupt: {reason}. The node does not start from part of a \
         checkpoint. Ways out: promote a standby and rebuild this node from it (`walrep \
         basebackup`), or restore this node from a base backup"
    )]
    Corrupt {
        /// The chunk file.
        path: String,
        /// Which check failed.
        reason: String,
    },
}

/// What a snapshot write produced.
#[derive(Debug, Clone, Default)]
pub struct SnapshotStats {
    /// Keys written: one entry per key, its newest state.
    pub keys: u64,
    /// Bytes written across all chunk files.
    pub bytes: u64,
    /// Highest LSN among the versions written: the WAL must be flushed up to
    /// here before the control file may point at this snapshot.
    pub max_lsn: Lsn,
    /// Time spent scanning and writing, pauses of the pacer included
    /// (PostgreSQL's "write=").
    pub write_ms: u64,
    /// Time spent in the final fsyncs and renames ("sync=").
    pub sync_ms: u64,
    /// Steps of the scan (holds of the store's read lock).
    pub scan_steps: u64,
    /// The 99th percentile of how long a step held the store's read lock,
    /// in microseconds: what a writer queued behind one waits at most,
    /// whatever the machine's load.
    pub lock_hold_p99_us: u64,
    /// The longest hold, in microseconds.
    pub lock_hold_max_us: u64,
}

/// How far a snapshot write is, told to its pacer after every step of the
/// scan; the pacer may sleep to spread the write over time.
#[derive(Debug, Clone, Copy, Default)]
pub struct SnapshotProgress {
    /// Keys written so far.
    pub keys: u64,
    /// Bytes written so far.
    pub bytes: u64,
}

/// `DATADIR/base`, where the snapshots live (PostgreSQL's `base/`).
pub(crate) fn base_dir(datadir: &Path) -> PathBuf {
    datadir.join("base")
}

/// The directory of snapshot `id` (the control file's `checkpoint_id`):
/// `base/` and the id as 16 hex digits, so names sort by age.
pub fn snapshot_dir(datadir: &Path, id: u64) -> PathBuf {
    base_dir(datadir).join(format!("{id:016X}"))
}

/// The file name of chunk `index` of a snapshot (`chunk_0000`, ...).
pub(crate) fn chunk_name(index: u32) -> String {
    format!("chunk_{index:04}")
}

fn chunk_of(key: &[u8], chunks: u32) -> usize {
    (crc32fast::hash(key) % chunks) as usize
}

/// A chunk file being written, with its running CRC.
struct ChunkWriter<'a> {
    out: SeqWriter<'a>,
    crc: crc32fast::Hasher,
    entries: u64,
    bytes: u64,
    /// Once this many bytes reached the kernel, start their writeback.
    writeback_at: u64,
}

impl<'a> ChunkWriter<'a> {
    fn create(
        storage: &'a dyn Storage,
        path: &Path,
        index: u32,
        chunks: u32,
        id: u64,
    ) -> Result<ChunkWriter<'a>, StorageError> {
        let mut w = ChunkWriter {
            out: SeqWriter::open(storage, path, OpenFor::CreateNew)?,
            crc: crc32fast::Hasher::new(),
            entries: 0,
            bytes: 0,
            writeback_at: WRITEBACK_AFTER_BYTES,
        };
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&index.to_le_bytes());
        h.extend_from_slice(&chunks.to_le_bytes());
        h.extend_from_slice(&id.to_le_bytes());
        w.put(&h)?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> Result<(), StorageError> {
        self.crc.update(b);
        self.bytes += b.len() as u64;
        self.out.put(b)?;
        if self.out.written() >= self.writeback_at {
            self.out.start_writeback()?;
            self.writeback_at = self.out.written() + WRITEBACK_AFTER_BYTES;
        }
        Ok(())
    }

    /// One key: encoded into `scratch`, then written.
    fn entry(&mut self, k: &ScannedKey, scratch: &mut Vec<u8>) -> Result<(), StorageError> {
        scratch.clear();
        put_bytes(scratch, &k.key);
        put_u64(scratch, k.lsn.0);
        put_u64(scratch, k.slot.expire_ms);
        value::encode(&k.slot.value, scratch);
        self.put(scratch)?;
        self.entries += 1;
        Ok(())
    }

    /// Write the trailer and fsync; returns the file's length.
    fn finish(mut self) -> Result<u64, StorageError> {
        let count = self.entries.to_le_bytes();
        self.put(&count)?;
        let crc = self.crc.clone().finalize();
        self.out.put(&crc.to_le_bytes())?;
        self.out.finish()
    }
}

/// Write the store's current contents as snapshot `id` (a fuzzy scan: writers
/// keep going; replay from a redo point taken before the scan repairs any
/// difference, skipping for each key the records its LSN says the snapshot
/// already holds, `replay.rs`). Every byte goes through `storage`.
///
/// The store's lock is held only while a step of `SCAN_STEP` keys is
/// copied out; encoding, CRCs and writes happen outside it. Written bytes
/// are handed to the kernel's writeback every `WRITEBACK_AFTER_BYTES`
/// per file, so the final fsyncs find little left to write, and `pace` is
/// called after each step with the progress so far: it may sleep to
/// spread the checkpoint (`checkpoint_completion_target`).
pub fn write_snapshot(
    storage: &dyn Storage,
    datadir: &Path,
    id: u64,
    chunks: u32,
    store: &Store,
    pace: &mut dyn FnMut(SnapshotProgress),
) -> Result<SnapshotStats, SnapshotError> {
    let started = std::time::Instant::now();
    let final_dir = snapshot_dir(datadir, id);
    let tmp_dir = final_dir.with_extension("tmp");
    let err = |path: &Path| {
        let path = path.display().to_string();
        move |source| SnapshotError::Write { path, source }
    };
    durable_remove_dir(storage, &tmp_dir).map_err(err(&tmp_dir))?;
    durable_create_dir(storage, &tmp_dir).map_err(err(&tmp_dir))?;
    let mut writers = (0..chunks)
        .map(|i| ChunkWriter::create(storage, &tmp_dir.join(chunk_name(i)), i, chunks, id))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err(&tmp_dir))?;
    let mut stats = SnapshotStats::default();
    let mut after: Option<Str> = None;
    let mut scratch = Vec::new();
    let mut keys = Vec::with_capacity(SCAN_STEP);
    let mut holds_us = Vec::new();
    loop {
        let (last, hold) = store.scan_into(after.as_deref(), SCAN_STEP, &mut keys);
        holds_us.push(hold.as_micros().min(u128::from(u32::MAX)) as u32);
        for k in keys.drain(..) {
            writers[chunk_of(&k.key, chunks)]
                .entry(&k, &mut scratch)
                .map_err(err(&tmp_dir))?;
            stats.keys += 1;
            stats.max_lsn = stats.max_lsn.max(k.lsn);
        }
        match last {
            Some(l) => after = Some(l),
            None => break,
        }
        pace(SnapshotProgress {
            keys: stats.keys,
            bytes: writers.iter().map(|w| w.bytes).sum(),
        });
    }
    (
        stats.scan_steps,
        stats.lock_hold_p99_us,
        stats.lock_hold_max_us,
    ) = hold_figures(holds_us);
    stats.write_ms = started.elapsed().as_millis() as u64;
    for w in writers {
        stats.bytes += w.finish().map_err(err(&tmp_dir))?;
    }
    sync_dir(storage, &tmp_dir).map_err(err(&tmp_dir))?;
    durable_remove_dir(storage, &final_dir).map_err(err(&final_dir))?;
    storage
        .rename(&tmp_dir, &final_dir)
        .map_err(|e| err(&final_dir)(StorageError::at("rename", &tmp_dir)(e)))?;
    sync_dir(storage, &base_dir(datadir)).map_err(err(&final_dir))?;
    stats.sync_ms = (started.elapsed().as_millis() as u64).saturating_sub(stats.write_ms);
    Ok(stats)
}

/// (steps, p99, max) of the lock holds, in microseconds.
fn hold_figures(mut holds_us: Vec<u32>) -> (u64, u64, u64) {
    holds_us.sort_unstable();
    let n = holds_us.len();
    let at = |q: f64| {
        u64::from(
            holds_us
                .get(((n as f64 * q) as usize).min(n.saturating_sub(1)))
                .copied()
                .unwrap_or(0),
        )
    };
    (n as u64, at(0.99), at(1.0))
}

/// Load snapshot `id` into an empty store. Every chunk's CRC is verified
/// before any of its entries is taken; the store's map is built once,
/// from all of them (`Store::load_base_all`: full B-tree nodes).
pub fn load_snapshot(
    datadir: &Path,
    id: u64,
    chunks: u32,
    store: &Store,
) -> Result<SnapshotStats, SnapshotError> {
    let dir = snapshot_dir(datadir, id);
    let mut stats = SnapshotStats::default();
    let mut keys = Vec::new();
    for i in 0..chunks {
        let path = dir.join(chunk_name(i));
        let bytes = fs::read(&path).map_err(|source| SnapshotError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let entries =
            parse_chunk(&bytes, i, chunks, id).map_err(|reason| SnapshotError::Corrupt {
                path: path.display().to_string(),
                reason,
            })?;
        stats.bytes += bytes.len() as u64;
        stats.keys += entries.len() as u64;
        keys.reserve(entries.len());
        keys.extend(
            entries
                .into_iter()
                .map(|e| (Str::new(e.key), e.lsn, e.slot)),
        );
    }
    store.load_base_all(keys);
    Ok(stats)
}

/// A key of a chunk file: its state and the LSN that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkEntry<'a> {
    /// The key, borrowed from the chunk's bytes.
    pub key: &'a [u8],
    /// The LSN of the record that wrote this state.
    pub lsn: Lsn,
    /// The key's value and expiry.
    pub slot: Slot,
}

/// A chunk file's frame, checked: its format version, the entry count
/// stored before the CRC, and where the CRC starts.
struct Frame {
    v1: bool,
    count: u64,
    body_end: usize,
}

/// Check a chunk file's length, CRC (`body_crc` when the caller computed
/// it while reading), magic number and header naming chunk `index` of
/// `chunks` of checkpoint `id`.
fn check_frame(
    b: &[u8],
    index: u32,
    chunks: u32,
    id: u64,
    body_crc: Option<u32>,
) -> Result<Frame, String> {
    if b.len() < HEADER_LEN + TRAILER_LEN {
        return Err(format!("{} bytes is too short", b.len()));
    }
    let body_end = b.len() - 4;
    let stored = u32::from_le_bytes(b[body_end..].try_into().expect("4 bytes"));
    let computed = body_crc.unwrap_or_else(|| crc32fast::hash(&b[..body_end]));
    if stored != computed {
        return Err(format!(
            "incorrect checksum (stored {stored:08X}, computed {computed:08X})"
        ));
    }
    let v1 = &b[..8] == MAGIC_V1;
    if &b[..8] != MAGIC && !v1 {
        return Err("bad magic number".into());
    }
    let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    if u32_at(8) != index || u32_at(12) != chunks || u64_at(16) != id {
        return Err(format!(
            "chunk header says {}/{} of checkpoint {:X}, expected {index}/{chunks} of {id:X}",
            u32_at(8),
            u32_at(12),
            u64_at(16)
        ));
    }
    Ok(Frame {
        v1,
        count: u64_at(body_end - 8),
        body_end,
    })
}

/// Validate a chunk file and return its entries.
pub fn parse_chunk(
    b: &[u8],
    index: u32,
    chunks: u32,
    id: u64,
) -> Result<Vec<ChunkEntry<'_>>, String> {
    let Frame {
        v1,
        count,
        body_end,
    } = check_frame(b, index, chunks, id, None)?;
    let mut r = Reader::new(&b[HEADER_LEN..body_end - 8]);
    let mut out = Vec::new();
    while r.remaining() > 0 {
        let at = HEADER_LEN + r.position();
        let entry = (|| {
            let key = r.bytes()?;
            if v1 {
                // A string; LSN 0 makes replay apply every record after
                // the redo point to it, as the first format's blind writes
                // needed.
                let value = crate::store::value::Value::string(r.bytes()?);
                return Ok(ChunkEntry {
                    key,
                    lsn: Lsn(0),
                    slot: Slot::new(value),
                });
            }
            let lsn = Lsn(r.u64()?);
            let expire_ms = r.u64()?;
            let value = value::decode(&mut r)?;
            Ok::<_, crate::store::codec::DecodeError>(ChunkEntry {
                key,
                lsn,
                slot: Slot { value, expire_ms },
            })
        })()
        .map_err(|e| format!("entry at byte {at}: {e}"))?;
        out.push(entry);
    }
    if out.len() as u64 != count {
        return Err(format!("{} entries, trailer says {count}", out.len()));
    }
    Ok(out)
}

/// What [`parse_chunk`] checks of a chunk file (its CRC, magic, header
/// and every entry), refusing it with the same message, without building
/// the entries: their number. `body_crc` is the CRC32 of every byte
/// before the stored one when the caller computed it while reading the
/// file (it is computed here otherwise).
pub fn check_chunk(
    b: &[u8],
    index: u32,
    chunks: u32,
    id: u64,
    body_crc: Option<u32>,
) -> Result<u64, String> {
    let Frame {
        v1,
        count,
        body_end,
    } = check_frame(b, index, chunks, id, body_crc)?;
    let mut r = Reader::new(&b[HEADER_LEN..body_end - 8]);
    let mut n = 0u64;
    while r.remaining() > 0 {
        let at = HEADER_LEN + r.position();
        (|| {
            r.bytes()?;
            if v1 {
                return r.bytes().map(drop);
            }
            r.u64()?;
            r.u64()?;
            value::skip(&mut r)
        })()
        .map_err(|e| format!("entry at byte {at}: {e}"))?;
        n += 1;
    }
    if n != count {
        return Err(format!("{n} entries, trailer says {count}"));
    }
    Ok(n)
}

/// Remove every snapshot directory except `keep` (after the control file
/// points at `keep`), including leftovers of interrupted writes.
pub fn remove_other_snapshots(
    storage: &dyn Storage,
    datadir: &Path,
    keep: u64,
) -> Result<(), StorageError> {
    remove_snapshots_except(storage, datadir, &[keep])
}

/// Remove every snapshot directory not named in `keep` (the last
/// checkpoint's, and those a running base backup has pinned); one fsync of
/// `base/` covers them all.
pub fn remove_snapshots_except(
    storage: &dyn Storage,
    datadir: &Path,
    keep: &[u64],
) -> Result<(), StorageError> {
    let keep_names: Vec<String> = keep.iter().map(|id| format!("{id:016X}")).collect();
    let base = base_dir(datadir);
    let list = StorageError::at("list", &base);
    for e in fs::read_dir(&base).map_err(list)? {
        let e = e.map_err(StorageError::at("list", &base))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep_names.contains(&name) {
            let p = e.path();
            storage
                .remove_dir_all(&p)
                .map_err(StorageError::at("remove directory", &p))?;
        }
    }
    sync_dir(storage, &base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StdStorage;
    use crate::store::record::Op;

    fn filled() -> Store {
        let s = Store::new();
        for i in 0..3000u32 {
            let key = format!("key:{i}").into_bytes();
            let value = i.to_le_bytes().to_vec();
            s.apply_replayed(
                Lsn(i as u64 + 1),
                &[Op::Set {
                    key: key.into(),
                    value: value.into(),
                }],
            );
        }
        s
    }

    #[test]
    fn snapshot_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let s = filled();
        let stats = write_snapshot(&StdStorage, d.path(), 7, 5, &s, &mut |_| {}).unwrap();
        assert_eq!(stats.keys, 3000);
        assert_eq!(stats.max_lsn, Lsn(3000));
        // Steps of SCAN_STEP keys, and the one that finds the end.
        assert_eq!(stats.scan_steps, 3000u64.div_ceil(SCAN_STEP as u64) + 1);
        assert!(stats.lock_hold_p99_us <= stats.lock_hold_max_us);
        let back = Store::new();
        load_snapshot(d.path(), 7, 5, &back).unwrap();
        assert_eq!(back.dump_visible(), s.dump_visible());
        assert_eq!(fs::read_dir(snapshot_dir(d.path(), 7)).unwrap().count(), 5);
    }

    #[test]
    fn corruption_is_detected_before_loading() {
        let d = tempfile::tempdir().unwrap();
        write_snapshot(&StdStorage, d.path(), 1, 2, &filled(), &mut |_| {}).unwrap();
        let p = snapshot_dir(d.path(), 1).join(chunk_name(1));
        let mut b = fs::read(&p).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 1;
        fs::write(&p, &b).unwrap();
        let back = Store::new();
        let e = load_snapshot(d.path(), 1, 2, &back).unwrap_err();
        assert!(e.to_string().contains("incorrect checksum"), "{e}");
    }

    #[test]
    fn old_snapshots_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let s = filled();
        write_snapshot(&StdStorage, d.path(), 1, 2, &s, &mut |_| {}).unwrap();
        write_snapshot(&StdStorage, d.path(), 2, 2, &s, &mut |_| {}).unwrap();
        fs::create_dir_all(base_dir(d.path()).join("0000000000000003.tmp")).unwrap();
        remove_other_snapshots(&StdStorage, d.path(), 2).unwrap();
        let names: Vec<_> = fs::read_dir(base_dir(d.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("0000000000000002")]);
    }

    /// `check_chunk` accepts and refuses exactly what `parse_chunk` does,
    /// with the same message: every type of value, then every byte of the
    /// chunk altered (its CRC made right again, so the entries are
    /// walked) and the chunk cut at every length.
    #[test]
    fn check_chunk_refuses_what_parse_chunk_refuses() {
        use std::borrow::Cow;
        let d = tempfile::tempdir().unwrap();
        let s = Store::new();
        let b = |x: &'static [u8]| Cow::Borrowed(x);
        let ops = [
            Op::Set {
                key: b(b"str"),
                value: b(b"value"),
            },
            Op::HSet {
                key: b(b"h"),
                pairs: vec![(b(b"f"), b(b"v")), (b(b"g"), b(b"w"))],
            },
            Op::Push {
                key: b(b"l"),
                front: false,
                elems: vec![b(b"a"), b(b"b")],
            },
            Op::SAdd {
                key: b(b"s"),
                members: vec![b(b"m")],
            },
            Op::Expire {
                key: b(b"s"),
                at_ms: 123,
            },
        ];
        s.apply_replayed(Lsn(40), &ops);
        write_snapshot(&StdStorage, d.path(), 3, 1, &s, &mut |_| {}).unwrap();
        let chunk = fs::read(snapshot_dir(d.path(), 3).join(chunk_name(0))).unwrap();
        let same = |b: &[u8]| {
            let parsed = parse_chunk(b, 0, 1, 3).map(|e| e.len() as u64);
            let body = b.len().checked_sub(4).map(|end| crc32fast::hash(&b[..end]));
            assert_eq!(check_chunk(b, 0, 1, 3, None), parsed);
            if b.len() >= HEADER_LEN + TRAILER_LEN {
                assert_eq!(check_chunk(b, 0, 1, 3, body), parsed);
            }
            parsed
        };
        assert_eq!(same(&chunk), Ok(4));
        assert!(check_chunk(&chunk, 1, 1, 3, None).is_err());
        let mut refused = 0;
        for at in 0..chunk.len() - 4 {
            for bit in [0x01u8, 0x80] {
                let mut bad = chunk.clone();
                bad[at] ^= bit;
                let end = bad.len() - 4;
                let crc = crc32fast::hash(&bad[..end]);
                bad[end..].copy_from_slice(&crc.to_le_bytes());
                refused += usize::from(same(&bad).is_err());
            }
        }
        assert!(refused > chunk.len(), "most alterations are refused");
        for len in 0..chunk.len() {
            assert!(same(&chunk[..len]).is_err());
        }
    }

    #[test]
    fn every_type_and_expiry_round_trip_and_the_first_format_still_loads() {
        use std::borrow::Cow;
        let d = tempfile::tempdir().unwrap();
        let s = Store::new();
        let b = |x: &'static [u8]| Cow::Borrowed(x);
        let ops = [
            Op::HSet {
                key: b(b"h"),
                pairs: vec![(b(b"f"), b(b"v"))],
            },
            Op::Push {
                key: b(b"l"),
                front: false,
                elems: vec![b(b"a"), b(b"b")],
            },
            Op::SAdd {
                key: b(b"s"),
                members: vec![b(b"m")],
            },
            Op::Expire {
                key: b(b"s"),
                at_ms: 123,
            },
        ];
        s.apply_replayed(Lsn(40), &ops);
        write_snapshot(&StdStorage, d.path(), 3, 2, &s, &mut |_| {}).unwrap();
        let back = Store::new();
        load_snapshot(d.path(), 3, 2, &back).unwrap();
        assert_eq!(back.dump_visible(), s.dump_visible());
        assert_eq!(back.expiring(), 1);
        let lsns: Vec<Lsn> = back.scan(None, 10).0.iter().map(|k| k.lsn).collect();
        assert_eq!(lsns, [Lsn(40); 3], "key LSNs survive");

        // A chunk of the first format, written by hand.
        let mut body = Vec::new();
        body.extend_from_slice(MAGIC_V1);
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&9u64.to_le_bytes());
        for (k, v) in [(&b"k1"[..], &b"v1"[..]), (b"k2", b"v2")] {
            body.extend_from_slice(&(k.len() as u32).to_le_bytes());
            body.extend_from_slice(k);
            body.extend_from_slice(&(v.len() as u32).to_le_bytes());
            body.extend_from_slice(v);
        }
        body.extend_from_slice(&2u64.to_le_bytes());
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        let entries = parse_chunk(&body, 0, 1, 9).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[1].slot,
            Slot::new(crate::store::value::Value::string(b"v2"))
        );
    }

    proptest::proptest! {
        #[test]
        fn garbage_chunks_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse_chunk(&bytes, 0, 1, 0);
        }
    }
}
