//! Extracting a base backup's tar stream into a data directory, refusing
//! anything that could write outside it: absolute paths, `..`, links,
//! devices, names that are not UTF-8, a member written twice. Files are
//! created new (0600); small ones are fsynced as they are written, large
//! ones (the snapshot's chunks, WAL segments) have their writeback started
//! as they are written and are fsynced at the end, then every directory,
//! so a finished extraction survives a crash. All of it
//! (`backup_label`, the snapshot, the WAL) goes through a [`Storage`].

use std::collections::{BTreeSet, VecDeque};
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::manifest::ChecksumKind;
use super::written::{FileEntry, WrittenFiles};
use crate::storage::{durable_create_dir, OpenFor, SeqWriter, Storage, StorageError};

/// Files at least this large are fsynced at the end of the extraction
/// (their writeback started as they are written), not one by one as they
/// finish: the network copy goes on while the disk writes.
const DEFER_SYNC_BYTES: u64 = 1 << 20;
/// Most files waiting for that fsync (each holds a descriptor).
const MAX_UNSYNCED: usize = 64;
/// Bytes written between two writeback requests of a large file.
const WRITEBACK_EVERY_BYTES: u64 = 8 << 20;
/// Bytes of a member written at a time (the storage writer's own buffer
/// size, from which on it writes a piece without copying it).
const COPY_BYTES: usize = 256 << 10;

/// Deepest member path accepted (walrep's layout is 3 levels deep).
const MAX_DEPTH: usize = 8;

/// Why the archive was refused or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The archive stream broke off or could not be read.
    #[error("could not read the archive stream: {0}")]
    Read(io::Error),
    /// A step of preparing the target (its marker, its directories) failed.
    #[error("{0}")]
    Step(String),
    /// Refused: a member outside the target (absolute path, `..`), not a file
    /// or directory, or seen twice; or a target that is not empty.
    #[error("refusing tar member {name:?}: {reason}")]
    Unsafe {
        /// The member's name as the archive gives it.
        name: String,
        /// What makes it unsafe.
        reason: String,
    },
    /// Creating or writing a file or directory of the target failed.
    #[error("could not {op} \"{}\": {source}", path.display())]
    Write {
        /// What was attempted.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The IO error.
        source: io::Error,
    },
    /// Writing, fsyncing or renaming through the IO seam failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn write_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ExtractError {
    let path = path.to_path_buf();
    move |source| ExtractError::Write { op, path, source }
}

/// What an extraction wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// Regular files written.
    pub files: u64,
    /// Directories created.
    pub directories: u64,
    /// Bytes of file contents written.
    pub bytes: u64,
}

impl ExtractStats {
    /// Add what another extraction into the same directory wrote.
    pub fn add(&mut self, other: &ExtractStats) {
        self.files += other.files;
        self.directories += other.directories;
        self.bytes += other.bytes;
    }
}

/// The relative path a member may be written to, or why not.
pub fn safe_member_path(name: &str) -> Result<PathBuf, String> {
    let trimmed = name.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err("empty name".into());
    }
    if name.contains('\0') || name.contains('\\') {
        return Err("NUL or backslash in the name".into());
    }
    let path = Path::new(trimmed);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("\"..\" would leave the data directory".into()),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path".into()),
        }
    }
    let depth = out.components().count();
    if depth == 0 {
        return Err("names the data directory itself".into());
    }
    if depth > MAX_DEPTH {
        return Err(format!("deeper than {MAX_DEPTH} levels"));
    }
    Ok(out)
}

/// Extracts members into `dest` (which exists and is empty).
pub struct Extractor {
    /// Every file and directory is written through it.
    storage: Arc<dyn Storage>,
    /// The target directory.
    dest: PathBuf,
    /// Every directory written into (fsynced at the end).
    dirs: BTreeSet<PathBuf>,
    /// What was written so far.
    stats: ExtractStats,
    /// Members read through, not written, when the file is already there
    /// (a resumed two-phase copy's first-phase files).
    keep: BTreeSet<PathBuf>,
    /// Large files written and not fsynced yet, oldest first (at most
    /// [`MAX_UNSYNCED`]); [`Extractor::finish`] fsyncs them.
    unsynced: VecDeque<(fs::File, PathBuf)>,
    /// Where each file written is recorded with its checksum (the copy's
    /// manifest), when the caller keeps one.
    written: Option<Arc<WrittenFiles>>,
    /// A member's bytes on their way to the file ([`COPY_BYTES`], reused
    /// for every member).
    copy_buf: Vec<u8>,
}

impl Extractor {
    /// An extractor into `dest` (which must exist), writing through `storage`.
    pub fn new(storage: Arc<dyn Storage>, dest: &Path) -> Extractor {
        let mut dirs = BTreeSet::new();
        dirs.insert(dest.to_path_buf());
        Extractor {
            storage,
            dest: dest.to_path_buf(),
            dirs,
            stats: ExtractStats::default(),
            keep: BTreeSet::new(),
            unsynced: VecDeque::new(),
            written: None,
            copy_buf: Vec::new(),
        }
    }

    /// Record every file written, with the CRC-32C of its bytes, in
    /// `written` (the copy's manifest).
    pub(crate) fn record_into(&mut self, written: Arc<WrittenFiles>) {
        self.written = Some(written);
    }

    /// Leave member `rel` as it is if the target already has it (the
    /// archive's copy is read and dropped): what a resumed two-phase copy
    /// keeps of its first phase, which a running standby uses.
    pub fn keep_existing(&mut self, rel: &Path) {
        self.keep.insert(rel.to_path_buf());
    }

    /// Read a whole tar archive from `input` (stops at its end-of-archive
    /// blocks; bytes after them stay in `input`).
    pub fn extract<R: Read>(&mut self, input: R) -> Result<(), ExtractError> {
        self.extract_with(input, &mut |_| Ok(()))
    }

    /// [`extract`](Self::extract), calling `after_file` with each file's
    /// path inside the target once it is written (and fsynced if small: a two-phase
    /// backup finishes its first phase when `walrep.toml` is there).
    pub fn extract_with<R: Read>(
        &mut self,
        input: R,
        after_file: &mut dyn FnMut(&Path) -> Result<(), String>,
    ) -> Result<(), ExtractError> {
        let mut archive = tar::Archive::new(input);
        for entry in archive.entries().map_err(ExtractError::Read)? {
            let mut entry = entry.map_err(ExtractError::Read)?;
            let name = String::from_utf8(entry.path_bytes().into_owned()).map_err(|e| {
                ExtractError::Unsafe {
                    name: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                    reason: "name is not UTF-8".into(),
                }
            })?;
            let rel = safe_member_path(&name).map_err(|reason| ExtractError::Unsafe {
                name: name.clone(),
                reason,
            })?;
            match entry.header().entry_type() {
                tar::EntryType::Directory => self.directory(&rel)?,
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mtime = entry.header().mtime().unwrap_or(0);
                    self.file(&rel, &mut entry, mtime)?;
                    after_file(&rel).map_err(ExtractError::Step)?;
                }
                other => {
                    return Err(ExtractError::Unsafe {
                        name,
                        reason: format!("member type {other:?} is not a file or directory"),
                    })
                }
            }
        }
        Ok(())
    }

    /// Create `rel`'s parent directories that do not exist yet.
    fn parents(&mut self, rel: &Path) -> Result<PathBuf, ExtractError> {
        let mut at = self.dest.clone();
        let parts: Vec<_> = rel.components().collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            at.push(part);
            self.make_dir(&at)?;
        }
        Ok(self.dest.join(rel))
    }

    fn make_dir(&mut self, path: &Path) -> Result<(), ExtractError> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(ExtractError::Unsafe {
                name: path.display().to_string(),
                reason: "a file of that name was already extracted".into(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match self.storage.create_dir(path) {
                    Ok(()) => {}
                    // Another job of a parallel backup made it meanwhile.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {
                        self.dirs.insert(path.to_path_buf());
                        return Ok(());
                    }
                    Err(e) => return Err(write_err("create directory", path)(e)),
                }
                self.stats.directories += 1;
                if let Some(parent) = path.parent() {
                    self.dirs.insert(parent.to_path_buf());
                }
                self.dirs.insert(path.to_path_buf());
                Ok(())
            }
            Err(e) => Err(write_err("stat", path)(e)),
        }
    }

    fn directory(&mut self, rel: &Path) -> Result<(), ExtractError> {
        let path = self.parents(rel)?;
        self.make_dir(&path)
    }

    fn file(&mut self, rel: &Path, data: &mut impl Read, mtime: u64) -> Result<(), ExtractError> {
        let path = self.parents(rel)?;
        if self.keep.contains(rel) && path.is_file() {
            io::copy(data, &mut io::sink()).map_err(ExtractError::Read)?;
            return Ok(());
        }
        let mut f =
            SeqWriter::open(&*self.storage, &path, OpenFor::CreateNew).map_err(|e| {
                match e.io_error().kind() {
                io::ErrorKind::AlreadyExists => ExtractError::Unsafe {
                    name: rel.display().to_string(),
                    reason:
                        "member appears twice in the archive (or in two streams of a parallel copy)"
                            .into(),
                },
                _ => ExtractError::Storage(e),
            }
            })?;
        let kind = match self.written {
            Some(_) => ChecksumKind::Crc32c,
            None => ChecksumKind::None,
        };
        let mut hasher = kind.hasher();
        self.copy_buf.resize(COPY_BYTES, 0);
        copy(data, &mut f, &mut hasher, &mut self.copy_buf)?;
        let n = if f.written() >= DEFER_SYNC_BYTES {
            let (file, n) = f.finish_unsynced()?;
            self.defer_sync(file, path.clone())?;
            n
        } else {
            f.finish()?
        };
        self.stats.files += 1;
        self.stats.bytes += n;
        if let Some(w) = &self.written {
            let sum = hasher.finish();
            w.record(FileEntry {
                path: rel.to_string_lossy().into_owned(),
                size: n,
                mtime,
                crc32c: u32::from_ne_bytes(sum.try_into().unwrap_or_default()),
            })?;
        }
        if let Some(parent) = path.parent() {
            self.dirs.insert(parent.to_path_buf());
        }
        Ok(())
    }

    /// Keep `file` open to fsync it in [`finish`](Self::finish); the
    /// oldest is fsynced now when [`MAX_UNSYNCED`] are waiting.
    fn defer_sync(&mut self, file: fs::File, path: PathBuf) -> Result<(), ExtractError> {
        if self.unsynced.len() >= MAX_UNSYNCED {
            self.sync_oldest()?;
        }
        self.unsynced.push_back((file, path));
        Ok(())
    }

    fn sync_oldest(&mut self) -> Result<(), ExtractError> {
        if let Some((file, path)) = self.unsynced.pop_front() {
            self.storage
                .sync_all(&file, &path)
                .map_err(|e| StorageError::at("fsync", &path)(e))?;
        }
        Ok(())
    }

    /// fsync every file not synced yet, then every directory written
    /// into; returns what was extracted.
    pub fn finish(mut self) -> Result<ExtractStats, ExtractError> {
        while !self.unsynced.is_empty() {
            self.sync_oldest()?;
        }
        // Deepest first, so each entry is durable before its parent's.
        for d in self.dirs.iter().rev() {
            crate::storage::sync_dir(&*self.storage, d)?;
        }
        Ok(self.stats)
    }
}

/// Is `dir` missing or an empty directory? (pg_basebackup refuses others.)
pub fn check_target(dir: &Path) -> Result<bool, ExtractError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(true),
            Some(_) => Err(ExtractError::Unsafe {
                name: dir.display().to_string(),
                reason: format!("directory \"{}\" exists but is not empty", dir.display()),
            }),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(write_err("open directory", dir)(e)),
    }
}

/// Create the target directory (mode 0700, parents as needed), durably.
pub fn create_target(storage: &dyn Storage, dir: &Path) -> Result<(), ExtractError> {
    durable_create_dir(storage, dir)?;
    Ok(())
}

/// Remove what a failed backup left: the directory itself if we created
/// it, else its contents (pg_basebackup's cleanup on error).
pub fn clean_target(dir: &Path, created: bool) {
    if created {
        let _ = fs::remove_dir_all(dir);
        return;
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = if e.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
    }
}

/// Read and discard what follows the archive (its padding, or a manifest
/// we did not ask for), at most `limit` bytes.
pub fn drain(mut input: impl Read, limit: u64) -> Result<u64, ExtractError> {
    let mut buf = [0u8; 8192];
    let mut total = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(ExtractError::Read)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
        if total > limit {
            return Err(ExtractError::Read(io::Error::other(format!(
                "more than {limit} bytes after the end of the archive"
            ))));
        }
    }
}

/// Copy a member's data through `buf`, telling stream errors from disk
/// errors. `buf` is filled before each write: a whole [`COPY_BYTES`]
/// goes to the file straight from it (the writer copies only a smaller
/// last piece into its own buffer), and is checksummed in one call.
fn copy(
    data: &mut impl Read,
    f: &mut SeqWriter<'_>,
    hasher: &mut super::manifest::Hasher,
    buf: &mut [u8],
) -> Result<(), ExtractError> {
    let mut writeback_at = WRITEBACK_EVERY_BYTES;
    loop {
        let n = fill(data, buf)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
        f.put(&buf[..n])?;
        if f.written() >= writeback_at {
            f.start_writeback()?;
            writeback_at = f.written() + WRITEBACK_EVERY_BYTES;
        }
        if n < buf.len() {
            return Ok(());
        }
    }
}

/// Read from `data` until `buf` is full or the data ends; bytes read.
fn fill(data: &mut impl Read, buf: &mut [u8]) -> Result<usize, ExtractError> {
    let mut n = 0;
    while n < buf.len() {
        match data.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ExtractError::Read(e)),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(members: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in members {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn member_paths_are_checked() {
        assert_eq!(safe_member_path("base/").unwrap(), PathBuf::from("base"));
        assert_eq!(safe_member_path("./wal/x").unwrap(), PathBuf::from("wal/x"));
        for bad in [
            "",
            "/",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a\\b",
            "./",
            "a/b/c/d/e/f/g/h/i",
        ] {
            assert!(safe_member_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn extracts_files_and_directories() {
        let d = tempfile::tempdir().unwrap();
        let t = tar_of(&[
            ("base/", tar::EntryType::Directory, b""),
            ("base/1/chunk", tar::EntryType::Regular, b"hello"),
            ("control", tar::EntryType::Regular, b"c"),
        ]);
        let mut x = Extractor::new(Arc::new(crate::storage::StdStorage), d.path());
        x.extract(&t[..]).unwrap();
        let stats = x.finish().unwrap();
        assert_eq!((stats.files, stats.bytes), (2, 6));
        assert_eq!(fs::read(d.path().join("base/1/chunk")).unwrap(), b"hello");
    }

    #[test]
    fn escapes_links_and_duplicates_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        for (members, what) in [
            (vec![("../evil", tar::EntryType::Regular, &b"x"[..])], ".."),
            (
                vec![("a/../../evil", tar::EntryType::Regular, &b"x"[..])],
                "..",
            ),
            (
                vec![("/tmp/evil", tar::EntryType::Regular, &b"x"[..])],
                "absolute",
            ),
            (vec![("link", tar::EntryType::Symlink, &b""[..])], "Symlink"),
            (vec![("dev", tar::EntryType::Char, &b""[..])], "Char"),
            (
                vec![
                    ("f", tar::EntryType::Regular, &b"1"[..]),
                    ("f", tar::EntryType::Regular, &b"2"[..]),
                ],
                "twice",
            ),
            (
                vec![
                    ("f", tar::EntryType::Regular, &b"1"[..]),
                    ("f/g", tar::EntryType::Regular, &b"2"[..]),
                ],
                "already extracted",
            ),
        ] {
            let d = tempfile::tempdir_in(outside.path()).unwrap();
            let mut x = Extractor::new(Arc::new(crate::storage::StdStorage), d.path());
            let e = x.extract(&tar_of(&members)[..]).unwrap_err();
            assert!(e.to_string().contains(what), "{what}: {e}");
        }
        assert!(!outside.path().join("evil").exists());
    }

    #[test]
    fn target_must_be_missing_or_empty() {
        let d = tempfile::tempdir().unwrap();
        assert!(check_target(d.path()).unwrap());
        assert!(!check_target(&d.path().join("new")).unwrap());
        fs::write(d.path().join("x"), b"").unwrap();
        let e = check_target(d.path()).unwrap_err();
        assert!(e.to_string().contains("exists but is not empty"), "{e}");
    }
}
