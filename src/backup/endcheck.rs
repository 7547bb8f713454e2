//! The end check of `walrep basebackup`: before a copy is marked
//! complete, every file its `backup_manifest` lists is read back once and
//! compared with its entry (size and CRC-32C, what `pg_verifybackup`
//! checks), and each chunk of the copied snapshot is checked as a chunk in
//! the same read (its own CRC, header and entries, what
//! [`super::verify`] checks of a snapshot). The files are shared out
//! among a few threads, largest first, so the copy is read once (not once
//! per check) and on every core. A file the early check (the
//! `earlycheck` module) already read back against the same entry, and
//! that has not changed since, is not read again.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::earlycheck::{read_whole, EarlyChecks};
use super::manifest::{
    checksum_file_with, compare_listed, stat_listed, CheckedFiles, ListedFile, ManifestError,
    ParsedManifest,
};
use super::verify::{CheckedChunks, VerifyError};
use crate::datadir::BASE_DIR;
use crate::store::checkpoint::{check_chunk, chunk_name};
use crate::store::ControlFile;

/// Most threads reading the copy back (each holds one chunk file in
/// memory while it checks it).
const MAX_THREADS: usize = 4;
/// Bytes read at a time from a file that is not a chunk.
const READ_BYTES: usize = 1 << 20;

/// What the end check read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EndCheck {
    /// Files that matched the manifest, and their bytes.
    pub files: CheckedFiles,
    /// The snapshot chunks checked, with their keys.
    pub chunks: CheckedChunks,
    /// Of `files`, those read back early (as soon as written) and found
    /// unchanged, not read again.
    pub early_files: u64,
}

/// Why the copy failed its end check.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EndCheckError {
    /// A file differs from its manifest entry (or cannot be read).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A snapshot chunk matches its entry but is not a valid chunk.
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

/// Check every file `manifest` lists in the copy in `dir`. `control` is
/// the copy's control file when it could be read: the chunks of the
/// snapshot it names are checked as chunks too. `early`: the files read
/// back as they were written (those unchanged since are not read again).
/// The error reported is that of the first bad file in the manifest's
/// order, as a file-by-file check would report it.
pub(crate) fn check(
    dir: &Path,
    manifest: &ParsedManifest,
    control: Option<&ControlFile>,
    early: &EarlyChecks,
) -> Result<EndCheck, EndCheckError> {
    let chunks = control.map(chunk_paths).unwrap_or_default();
    let mut order: Vec<usize> = (0..manifest.files.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(manifest.files[i].size));
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_THREADS)
        .min(order.len().max(1));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<(usize, EndCheckError)>> = Mutex::new(None);
    let mut found = EndCheck::default();
    found.chunks.checkpoint_id = control.map_or(0, |c| c.checkpoint_id);
    let found = Mutex::new(found);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut buf = Vec::new();
                while !failed.load(Ordering::Relaxed) {
                    let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        return;
                    };
                    let f = &manifest.files[i];
                    let chunk = chunks.get(f.path.as_str()).copied();
                    let accepted = early.accepted(dir, f, chunk.zip(control));
                    let checked = match accepted {
                        Some(keys) => Ok(keys),
                        None => check_file(dir, f, chunk.zip(control), &mut buf),
                    };
                    match checked {
                        Ok(keys) => {
                            let mut found = found.lock().unwrap_or_else(|p| p.into_inner());
                            found.early_files += u64::from(accepted.is_some());
                            found.files.files += 1;
                            found.files.bytes += f.size;
                            if let Some((n, k)) = chunk.zip(keys) {
                                found.chunks.keys.insert(n, k);
                            }
                        }
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
                            if first.as_ref().is_none_or(|(at, _)| i < *at) {
                                *first = Some((i, e));
                            }
                        }
                    }
                }
            });
        }
    });
    if let Some((_, e)) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(found.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// The manifest path of each chunk of `control`'s snapshot.
fn chunk_paths(control: &ControlFile) -> HashMap<String, u32> {
    let id = control.checkpoint_id;
    (0..control.checkpoint_chunks)
        .map(|i| (format!("{BASE_DIR}/{id:016X}/{}", chunk_name(i)), i))
        .collect()
}

/// One listed file read back; a chunk (its number and the control file
/// naming its snapshot) is read whole into `buf` and parsed too: its keys.
fn check_file(
    dir: &Path,
    f: &ListedFile,
    chunk: Option<(u32, &ControlFile)>,
    buf: &mut Vec<u8>,
) -> Result<Option<u64>, EndCheckError> {
    let path = stat_listed(dir, f)?;
    let Some((n, control)) = chunk else {
        // Never shrunk: a chunk read next reuses it without zeroing it.
        if buf.len() < READ_BYTES {
            buf.resize(READ_BYTES, 0);
        }
        let (len, sum) = checksum_file_with(&path, f.kind, &mut buf[..READ_BYTES])?;
        compare_listed(f, len, &sum)?;
        return Ok(None);
    };
    let io_error = |op, source| ManifestError::Io {
        op,
        path: path.clone(),
        source,
    };
    let mut file = std::fs::File::open(&path).map_err(|e| io_error("open", e))?;
    let mut hasher = f.kind.hasher();
    let read = read_whole(&mut file, f.size, buf, &mut hasher).map_err(|e| io_error("read", e))?;
    compare_listed(f, read.len, &hasher.finish())?;
    let keys = check_chunk(
        &buf[..read.len as usize],
        n,
        control.checkpoint_chunks,
        control.checkpoint_id,
        read.body_crc,
    )
    .map_err(|reason| VerifyError::Chunk {
        file: path.display().to_string(),
        reason,
    })?;
    Ok(Some(keys))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::{crc32c, parse, ChecksumKind, Manifest};
    use crate::{Lsn, TimelineId};

    fn manifest_of(dir: &Path, files: &[(&str, &[u8])]) -> ParsedManifest {
        let mut m = Manifest::new(ChecksumKind::Crc32c, false);
        for (rel, bytes) in files {
            let path = dir.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
            m.add_file(
                rel,
                bytes.len() as u64,
                0,
                crc32c(bytes).to_ne_bytes().to_vec(),
            );
        }
        parse(&m.finish(TimelineId(1), Lsn(0x100_0028), Lsn(0x100_0100))).unwrap()
    }

    #[test]
    fn the_snapshot_chunks_are_parsed_in_the_same_read() {
        use crate::store::checkpoint::{snapshot_dir, write_snapshot};
        use crate::store::record::Op;
        let d = tempfile::tempdir().unwrap();
        let store = crate::store::Store::new();
        for i in 0..300u32 {
            let key = format!("key:{i}").into_bytes();
            let op = Op::Set {
                key: key.into(),
                value: i.to_le_bytes().to_vec().into(),
            };
            store.apply_replayed(Lsn(u64::from(i) + 1), &[op]);
        }
        let storage = crate::storage::StdStorage;
        write_snapshot(&storage, d.path(), 7, 3, &store, &mut |_| {}).unwrap();
        let mut control = ControlFile::new_system(1, crate::WalSegSize::new(1 << 20).unwrap(), 3);
        control.checkpoint_id = 7;
        let rel = |i: u32| format!("base/{:016X}/{}", 7, chunk_name(i));
        let mut chunks: Vec<(String, Vec<u8>)> = (0..3)
            .map(|i| {
                let bytes = std::fs::read(snapshot_dir(d.path(), 7).join(chunk_name(i)));
                (rel(i), bytes.unwrap())
            })
            .collect();
        chunks.push(("backup_label".into(), b"label".to_vec()));
        let listed: Vec<(&str, &[u8])> = chunks
            .iter()
            .map(|(p, b)| (p.as_str(), b.as_slice()))
            .collect();
        let m = manifest_of(d.path(), &listed);
        let found = check(d.path(), &m, Some(&control), &EarlyChecks::default()).unwrap();
        assert_eq!(found.files.files, 4);
        assert_eq!(found.chunks.checkpoint_id, 7);
        assert_eq!(found.chunks.keys.len(), 3);
        assert_eq!(found.chunks.keys.values().sum::<u64>(), 300);
        // Without the control file the chunks are only checked as files.
        assert!(check(d.path(), &m, None, &EarlyChecks::default())
            .unwrap()
            .chunks
            .keys
            .is_empty());
        // A chunk that matches its manifest entry but not its own CRC.
        let mut bad = chunks[1].1.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        chunks[1].1 = bad;
        let listed: Vec<(&str, &[u8])> = chunks
            .iter()
            .map(|(p, b)| (p.as_str(), b.as_slice()))
            .collect();
        let m = manifest_of(d.path(), &listed);
        let e = check(d.path(), &m, Some(&control), &EarlyChecks::default()).unwrap_err();
        assert!(
            matches!(e, EndCheckError::Verify(VerifyError::Chunk { .. })),
            "{e}"
        );
        assert!(e.to_string().contains("incorrect checksum"), "{e}");
    }

    #[test]
    fn every_file_is_read_and_the_first_bad_one_in_manifest_order_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let big = vec![7u8; 3 * READ_BYTES + 5];
        let files: Vec<(String, Vec<u8>)> = (0..9)
            .map(|i| (format!("d/f{i}"), big[..big.len() - i * 1000].to_vec()))
            .collect();
        let listed: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(p, b)| (p.as_str(), b.as_slice()))
            .collect();
        let m = manifest_of(d.path(), &listed);
        let found = check(d.path(), &m, None, &EarlyChecks::default()).unwrap();
        assert_eq!(found.files.files, 9);
        let total: usize = files.iter().map(|(_, b)| b.len()).sum();
        assert_eq!(found.files.bytes, total as u64);
        // Two damaged files: the one listed first is reported.
        for i in [6, 2] {
            let path = d.path().join(&files[i].0);
            let mut b = std::fs::read(&path).unwrap();
            b[100] ^= 1;
            std::fs::write(&path, b).unwrap();
        }
        let e = check(d.path(), &m, None, &EarlyChecks::default()).unwrap_err();
        assert!(
            e.to_string().contains("checksum mismatch for \"d/f2\""),
            "{e}"
        );
        std::fs::remove_file(d.path().join("d/f0")).unwrap();
        let e = check(d.path(), &m, None, &EarlyChecks::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("\"d/f0\" is in backup_manifest but not in the copy"),
            "{e}"
        );
    }
}
