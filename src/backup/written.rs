//! What `walrep basebackup` wrote into the copy, file by file: the size,
//! modification time and CRC-32C of the bytes as they were written. It
//! becomes the copy's `backup_manifest` at the end, and is journaled as it
//! grows so that `--resume` knows which files of an interrupted copy are
//! whole.
//!
//! # Why the client checksums, not the server
//!
//! PostgreSQL's server builds the manifest of what it sends. A walrep copy
//! is made of more than one server stream: the parts of a `--jobs N` copy
//! arrive on N connections (the server sends no manifest with `PARALLEL`),
//! the WAL of a parallel or resumed copy comes by `WAL_RANGE`, a resumed
//! copy keeps files the server does not send again, and `-R` edits
//! `walrep.toml` and adds `standby.signal` and the password file after the
//! server's copy. Only the client sees the copy as it ends up on disk, so
//! it checksums each file's bytes as it writes them (no extra read), and
//! the manifest covers every file whichever job or step wrote it. The
//! end-of-copy check then reads every file back against the manifest, as
//! `pg_verifybackup` does.
//!
//! # The journal
//!
//! `backup_manifest.partial` (a walrep file, removed before the copy is
//! complete) gets one JSON line per file once it is written. It is not
//! fsynced line by line: `--resume` trusts no entry without reading the
//! file back (size and checksum), so a lost line only costs a file copied
//! again, and a line that outlived its file's data is caught.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::manifest::{checksum_file, crc32c, ChecksumKind, Manifest, ManifestError};
use crate::storage::{durable_replace, OpenFor, Storage, StorageError};
use crate::{Lsn, TimelineId};

/// The journal of an unfinished copy.
pub(crate) const PARTIAL_MANIFEST_FILE: &str = "backup_manifest.partial";

/// Files smaller than this are left to the end check (they are the few
/// small files the copy starts and ends with: cheaper read once at the
/// end than queued for the early check).
pub(crate) const EARLY_CHECK_MIN_BYTES: u64 = 1 << 20;

/// One file written into the copy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct FileEntry {
    /// Relative to the copy, `/`-separated.
    pub path: String,
    /// Bytes written.
    pub size: u64,
    /// Seconds since the epoch (the server's, for the files it sent).
    pub mtime: u64,
    /// CRC-32C of the bytes written.
    pub crc32c: u32,
}

impl FileEntry {
    /// The entry of the file `rel` as it is now in `datadir` (for the
    /// small files the client writes itself, and files a resume keeps).
    pub fn from_disk(datadir: &Path, rel: &str) -> Result<FileEntry, ManifestError> {
        let path = datadir.join(rel);
        let (size, sum) = checksum_file(&path, ChecksumKind::Crc32c)?;
        let crc32c = u32::from_ne_bytes(sum.try_into().unwrap_or_default());
        Ok(FileEntry {
            path: rel.to_string(),
            size,
            mtime: mtime_of(&path),
            crc32c,
        })
    }

    /// Does the file in `datadir` still have this size and checksum?
    pub fn matches_disk(&self, datadir: &Path) -> Result<bool, ManifestError> {
        let path = datadir.join(&self.path);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() == self.size => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(ManifestError::Io {
                    op: "stat",
                    path,
                    source,
                })
            }
        }
        let (len, sum) = checksum_file(&path, ChecksumKind::Crc32c)?;
        Ok(len == self.size && sum == self.crc32c.to_ne_bytes())
    }
}

/// A file's modification time in seconds (now when unknown).
fn mtime_of(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| std::time::SystemTime::now())
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The files written so far, shared by every job of one copy.
pub(crate) struct WrittenFiles {
    inner: Mutex<Ledger>,
    /// Where each large file recorded is handed to be read back at once
    /// (see the `earlycheck` module), while a copy's jobs run.
    early: Mutex<Option<crossbeam_channel::Sender<FileEntry>>>,
}

struct Ledger {
    /// By path: a file written again (walrep.toml after `-R`) replaces
    /// its earlier entry.
    entries: BTreeMap<String, FileEntry>,
    journal: Journal,
}

/// `backup_manifest.partial`, appended through the storage seam.
struct Journal {
    storage: Arc<dyn Storage>,
    file: File,
    path: PathBuf,
    offset: u64,
}

impl WrittenFiles {
    /// Start the journal of the copy in `datadir` with the files `kept`
    /// of an interrupted copy (none for a new one), durably.
    pub fn start(
        storage: Arc<dyn Storage>,
        datadir: &Path,
        kept: Vec<FileEntry>,
    ) -> Result<WrittenFiles, StorageError> {
        let path = datadir.join(PARTIAL_MANIFEST_FILE);
        let text: String = kept.iter().map(journal_line).collect();
        durable_replace(&*storage, &path, text.as_bytes())?;
        let file = storage
            .open(&path, OpenFor::Existing)
            .map_err(StorageError::at("open", &path))?;
        let journal = Journal {
            storage,
            file,
            path,
            offset: text.len() as u64,
        };
        let entries = kept.into_iter().map(|e| (e.path.clone(), e)).collect();
        Ok(WrittenFiles {
            inner: Mutex::new(Ledger { entries, journal }),
            early: Mutex::new(None),
        })
    }

    /// Hand each file of at least [`EARLY_CHECK_MIN_BYTES`]
    /// recorded from now on to `to` (dropped when the queue is full: the
    /// end check reads that file instead).
    pub fn feed_early_check(&self, to: crossbeam_channel::Sender<FileEntry>) {
        *self.early.lock().unwrap_or_else(|p| p.into_inner()) = Some(to);
    }

    /// No more files for the early check (its thread ends once it has
    /// read those queued).
    pub fn stop_early_check(&self) {
        self.early.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// `rel` was written: `size` bytes with CRC-32C `crc32c`.
    pub fn record(&self, entry: FileEntry) -> Result<(), StorageError> {
        let line = journal_line(&entry);
        let mut l = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let j = &mut l.journal;
        j.storage
            .write_at(&j.file, &j.path, j.offset, line.as_bytes())
            .map_err(StorageError::at("write", &j.path))?;
        j.offset += line.len() as u64;
        if entry.size >= EARLY_CHECK_MIN_BYTES {
            if let Some(to) = &*self.early.lock().unwrap_or_else(|p| p.into_inner()) {
                // Never a wait: a file not queued is read at the end.
                let _ = to.try_send(entry.clone());
            }
        }
        l.entries.insert(entry.path.clone(), entry);
        Ok(())
    }

    /// Record the file `rel` as it is now on disk (small files the client
    /// writes itself).
    pub fn record_from_disk(&self, datadir: &Path, rel: &str) -> Result<(), WrittenError> {
        let entry = FileEntry::from_disk(datadir, rel)?;
        Ok(self.record(entry)?)
    }

    /// Is `rel` recorded (written, or kept by a resume)?
    pub fn contains(&self, rel: &str) -> bool {
        let l = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        l.entries.contains_key(rel)
    }

    /// The manifest of every file recorded, in PostgreSQL 15's format
    /// with CRC-32C checksums (its default).
    pub fn manifest(&self, tli: TimelineId, start: Lsn, end: Lsn) -> Vec<u8> {
        let l = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut m = Manifest::new(ChecksumKind::Crc32c, false);
        for e in l.entries.values() {
            m.add_file(&e.path, e.size, e.mtime, e.crc32c.to_ne_bytes().to_vec());
        }
        m.finish(tli, start, end)
    }
}

/// Why the copy's record of its files could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum WrittenError {
    /// A file could not be read back.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The journal could not be written.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn journal_line(e: &FileEntry) -> String {
    let mut s = serde_json::to_string(e).unwrap_or_default();
    s.push('\n');
    s
}

/// The journal of an interrupted copy in `datadir`, by path (a later line
/// replaces an earlier one; a line cut short by the interruption is
/// skipped). Empty when there is none.
pub(crate) fn read_journal(datadir: &Path) -> io::Result<BTreeMap<String, FileEntry>> {
    let file = match File::open(datadir.join(PARTIAL_MANIFEST_FILE)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    let mut entries = BTreeMap::new();
    for line in io::BufReader::new(file).split(b'\n') {
        if let Ok(e) = serde_json::from_slice::<FileEntry>(&line?) {
            entries.insert(e.path.clone(), e);
        }
    }
    Ok(entries)
}

/// The CRC-32C entry of `bytes` written as `rel` (for callers that hold
/// the whole file).
pub(crate) fn entry_of(rel: &str, bytes: &[u8], mtime: u64) -> FileEntry {
    FileEntry {
        path: rel.to_string(),
        size: bytes.len() as u64,
        mtime,
        crc32c: crc32c(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_survives_and_a_torn_line_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let st: Arc<dyn Storage> = Arc::new(crate::storage::StdStorage);
        std::fs::write(d.path().join("a"), b"abc").unwrap();
        let w = WrittenFiles::start(st.clone(), d.path(), Vec::new()).unwrap();
        w.record(entry_of("a", b"abc", 5)).unwrap();
        w.record_from_disk(d.path(), "a").unwrap();
        w.record(entry_of("b", b"xy", 7)).unwrap();
        assert!(w.contains("a") && w.contains("b") && !w.contains("c"));
        drop(w);
        let journal = d.path().join(PARTIAL_MANIFEST_FILE);
        let mut text = std::fs::read(&journal).unwrap();
        text.extend_from_slice(b"{\"path\":\"c\",\"si");
        std::fs::write(&journal, text).unwrap();
        let read = read_journal(d.path()).unwrap();
        assert_eq!(read.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(read["a"].matches_disk(d.path()).unwrap());
        assert!(!read["b"].matches_disk(d.path()).unwrap());
        // A new start keeps only what it is given.
        let w = WrittenFiles::start(st, d.path(), vec![read["a"].clone()]).unwrap();
        assert!(w.contains("a") && !w.contains("b"));
        let m = super::super::manifest::parse(&w.manifest(
            TimelineId(1),
            Lsn(0x100_0028),
            Lsn(0x100_0100),
        ))
        .unwrap();
        assert_eq!(m.files.len(), 1);
        assert_eq!(read_journal(d.path()).unwrap().len(), 1);
    }
}
