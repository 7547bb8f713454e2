//! The one IO seam every durable write goes through: the [`Storage`] trait
//! (the idea of redb's `StorageBackend`), its real implementation
//! [`StdStorage`], the fault-injecting [`FaultyStorage`] for tests, the
//! recording [`CrashStorage`] that rebuilds what a power loss leaves, the
//! poisoning wrapper [`PoisonOnSyncFailure`], and the few helpers that are
//! the only way a durable file is written.
//!
//! Every file whose loss or corruption after a crash would matter — WAL
//! segments, the control file, timeline history files, replication slots,
//! checkpoint chunks, archive status files, `standby.signal`, the promote
//! request, everything a base backup extracts — is created, written,
//! fsynced, renamed and removed by a `Storage`. So a test can make any of
//! those steps fail (or count them, or later record them to build the disk
//! image a power loss would leave), and the node can stop at the first
//! failed fsync instead of carrying on with data the kernel may have
//! dropped (PostgreSQL's "fsyncgate": nothing ever retries an fsync).
//!
//! Reads are not part of the seam: readers open and map files directly, and
//! a test that wants bad bytes on disk writes them.
//!
//! The helpers, each taking `&dyn Storage`:
//!
//! - [`durable_replace`]: temporary file, write, fsync, rename over the
//!   target, fsync the directory: a crash leaves the old or the new file.
//! - [`replace_synced_file`]: the same without the directory fsync, which
//!   the caller owes (one fsync for several names in one directory).
//! - [`durable_create`]: a file with its contents, fsynced, its directory
//!   entry fsynced.
//! - [`durable_rename`]: PostgreSQL's `durable_rename`: fsync the file,
//!   rename, fsync the directories.
//! - [`durable_remove`] / [`durable_remove_dir`]: remove, fsync the parent.
//! - [`durable_create_dir`]: create missing directories, each parent fsynced.
//! - [`SeqWriter`]: a buffered writer for files written front to back
//!   (checkpoint chunks, extracted backup files), fsynced by `finish`.
//!
//! Every method of the trait names the path it acts on, even when it is
//! given an open file: fault injection targets files by path ("the control
//! file", "anything under `slots/`"), and error messages name the file.

mod crash;
mod faulty;
mod poison;
#[cfg(test)]
mod tests;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub use crash::{
    image_rng, CrashLog, CrashModel, CrashStorage, Event as CrashEvent, Generator, ImageChoice,
};
pub use faulty::{FaultyStorage, TornWrite};
pub use poison::{PoisonOnSyncFailure, SyncFailure};

/// Mode of every file the seam creates (PostgreSQL's `pg_file_create_mode`).
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory the seam creates (`pg_dir_create_mode`).
pub const DIR_MODE: u32 = 0o700;

/// How [`Storage::open`] opens a file for writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFor {
    /// Create a new file; fail with `AlreadyExists` if there is one.
    CreateNew,
    /// Create the file, or truncate the one there.
    Replace,
    /// Open an existing file for reading and writing (a segment being
    /// written, a file about to be fsynced).
    Existing,
}

/// One kind of call on a [`Storage`], for counters and fault targeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`Storage::open`]: creating, truncating or reopening a file.
    Open,
    /// [`Storage::write_at`]: bytes written at an offset.
    Write,
    /// [`Storage::allocate`]: fallocate(2), reserving a segment's space.
    Allocate,
    /// [`Storage::sync_data`]: fdatasync, the WAL writer's flush.
    SyncData,
    /// [`Storage::sync_all`]: fsync of a file's data and metadata.
    SyncAll,
    /// [`Storage::sync_dir`]: fsync of a directory, making its entries
    /// durable.
    SyncDir,
    /// [`Storage::rename`]: rename(2).
    Rename,
    /// [`Storage::remove_file`]: unlink(2).
    RemoveFile,
    /// [`Storage::remove_dir_all`]: a directory and everything in it.
    RemoveDir,
    /// [`Storage::create_dir`]: mkdir(2) of one directory.
    CreateDir,
}

impl Op {
    /// Every kind, in declaration order (`op as usize` indexes it).
    pub const ALL: [Op; 10] = [
        Op::Open,
        Op::Write,
        Op::Allocate,
        Op::SyncData,
        Op::SyncAll,
        Op::SyncDir,
        Op::Rename,
        Op::RemoveFile,
        Op::RemoveDir,
        Op::CreateDir,
    ];
    /// The three ways of making something durable.
    pub const SYNCS: [Op; 3] = [Op::SyncData, Op::SyncAll, Op::SyncDir];

    /// Whether this call makes earlier calls durable (an fsync of any kind).
    pub fn is_sync(self) -> bool {
        Op::SYNCS.contains(&self)
    }

    /// The system call's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Op::Open => "open",
            Op::Write => "write",
            Op::Allocate => "fallocate",
            Op::SyncData => "fdatasync",
            Op::SyncAll => "fsync",
            Op::SyncDir => "fsync directory",
            Op::Rename => "rename",
            Op::RemoveFile => "remove",
            Op::RemoveDir => "remove directory",
            Op::CreateDir => "create directory",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The calls every durable write is made of. Each either does all of its
/// work or returns an error. A failed sync is final: after it the kernel
/// may have dropped the dirty pages and marked them clean, so a second
/// fsync would "succeed" without the data; callers stop instead (see
/// [`PoisonOnSyncFailure`]).
///
/// `path` is always the path the call acts on (the one the file was opened
/// under, for calls given a `File`).
pub trait Storage: Send + Sync + fmt::Debug {
    /// Open `path` for writing ([`FILE_MODE`] when created).
    fn open(&self, path: &Path, how: OpenFor) -> io::Result<File>;
    /// Write all of `buf` at `offset` of `file`.
    fn write_at(&self, file: &File, path: &Path, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Reserve `len` bytes of `file` without writing them: fallocate(2)
    /// mode 0, i.e. unwritten extents that read as zeroes (a later
    /// fdatasync also records which of them were written).
    /// `ErrorKind::Unsupported` where the filesystem cannot.
    fn allocate(&self, file: &File, path: &Path, len: u64) -> io::Result<()>;
    /// fdatasync: make the data written so far durable (and the metadata
    /// needed to read it back: the size, the extent state of `allocate`d
    /// space).
    fn sync_data(&self, file: &File, path: &Path) -> io::Result<()>;
    /// fsync: data and all metadata.
    fn sync_all(&self, file: &File, path: &Path) -> io::Result<()>;
    /// fsync a directory so that entries created, renamed or removed in it
    /// survive a crash.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// rename(2): atomic, not durable until the directory is synced.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Remove a file (not durable until the directory is synced).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Remove a directory and everything in it (not durable until the
    /// parent is synced).
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Create one directory ([`DIR_MODE`]); its parent must exist.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
}

/// The real storage: the system calls themselves.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdStorage;

impl Storage for StdStorage {
    fn open(&self, path: &Path, how: OpenFor) -> io::Result<File> {
        let mut o = OpenOptions::new();
        o.write(true).mode(FILE_MODE);
        match how {
            OpenFor::CreateNew => o.create_new(true),
            OpenFor::Replace => o.create(true).truncate(true),
            OpenFor::Existing => o.read(true),
        };
        o.open(path)
    }

    fn write_at(&self, file: &File, _: &Path, offset: u64, buf: &[u8]) -> io::Result<()> {
        file.write_all_at(buf, offset)
    }

    fn allocate(&self, file: &File, _: &Path, len: u64) -> io::Result<()> {
        fallocate(file, len)
    }

    fn sync_data(&self, file: &File, _: &Path) -> io::Result<()> {
        file.sync_data()
    }

    fn sync_all(&self, file: &File, _: &Path) -> io::Result<()> {
        file.sync_all()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::DirBuilder::new().mode(DIR_MODE).create(path)
    }
}

/// fallocate(2) mode 0 over `[0, len)`; `Unsupported` where the filesystem
/// has none.
pub(crate) fn fallocate(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
    // SAFETY: fallocate on a file descriptor we own for the call; no memory
    // is passed.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
            Err(io::Error::new(io::ErrorKind::Unsupported, e))
        }
        _ => Err(e),
    }
}

/// A durable write that failed: which step, on which file.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// One step failed; the message reads like PostgreSQL's ("could not
    /// fsync file \"...\": ...").
    #[error("could not {op} \"{}\": {source}", path.display())]
    Io {
        /// The step that failed, as a verb for the message: "create",
        /// "write", "fsync", "fdatasync", "fsync directory", "rename",
        /// "remove", ... [`StorageError::is_sync`] matches on it.
        op: &'static str,
        /// The file or directory the step acted on.
        path: PathBuf,
        /// What the OS (or an injected fault) returned.
        #[source]
        source: io::Error,
    },
}

impl StorageError {
    /// A closure turning an `io::Error` of `op` on `path` into a `StorageError`.
    pub fn at(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StorageError {
        let path = path.to_path_buf();
        move |source| StorageError::Io { op, path, source }
    }

    /// Whether the failed step was an fsync of any kind (after which
    /// nothing may be retried).
    pub fn is_sync(&self) -> bool {
        match self {
            StorageError::Io { op, .. } => matches!(*op, "fsync" | "fdatasync" | "fsync directory"),
        }
    }

    /// The file the failed step acted on.
    pub fn path(&self) -> &Path {
        match self {
            StorageError::Io { path, .. } => path,
        }
    }

    /// The underlying OS error.
    pub fn io_error(&self) -> &io::Error {
        match self {
            StorageError::Io { source, .. } => source,
        }
    }

    /// The OS error with the step and the path in its message, for callers
    /// whose own errors carry an `io::Error`.
    pub fn into_io(self) -> io::Error {
        let kind = self.io_error().kind();
        io::Error::new(kind, self.to_string())
    }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The temporary name [`durable_replace`] writes `path` under:
/// `<name>.tmp` beside it (what a fault test targets to fail the write of
/// a replaced file).
pub fn replace_temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    parent_of(path).join(name)
}

/// Replace `path` with `bytes` atomically and durably: write
/// [`replace_temp_path`], fsync it, rename it over `path`, fsync the
/// directory. A crash at any point leaves either the old or the new
/// contents, never a mix; a failure leaves the old file in place.
pub fn durable_replace(st: &dyn Storage, path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    replace_synced_file(st, path, bytes)?;
    sync_dir(st, parent_of(path))
}

/// [`durable_replace`] without its directory fsync: write
/// [`replace_temp_path`], fsync it, rename it over `path`. The contents
/// are durable before the name says so; the rename becomes durable with
/// the caller's next fsync of the directory, which it owes before
/// anything durable refers to the file. For a step that makes several
/// names in one directory durable with one fsync (a promotion's history
/// file and new segments): each directory fsync is a journal commit,
/// which on a busy machine waits for other processes' writeback.
pub fn replace_synced_file(
    st: &dyn Storage,
    path: &Path,
    bytes: &[u8],
) -> Result<(), StorageError> {
    if path.file_name().is_none() {
        return Err(StorageError::at("replace", path)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path has no file name",
        )));
    }
    let tmp = replace_temp_path(path);
    write_synced(st, &tmp, OpenFor::Replace, bytes)?;
    st.rename(&tmp, path)
        .map_err(StorageError::at("rename", &tmp))
}

/// Create `path` holding `bytes` (truncating a file of that name), fsync
/// it and its directory entry.
pub fn durable_create(st: &dyn Storage, path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    write_synced(st, path, OpenFor::Replace, bytes)?;
    sync_dir(st, parent_of(path))
}

/// Open `path` as `how` says, write `bytes`, fsync.
fn write_synced(
    st: &dyn Storage,
    path: &Path,
    how: OpenFor,
    bytes: &[u8],
) -> Result<(), StorageError> {
    let f = st
        .open(path, how)
        .map_err(StorageError::at("create", path))?;
    if !bytes.is_empty() {
        st.write_at(&f, path, 0, bytes)
            .map_err(StorageError::at("write", path))?;
    }
    st.sync_all(&f, path)
        .map_err(StorageError::at("fsync", path))
}

/// Rename `from` to `to` so that it survives a crash (PostgreSQL's
/// `durable_rename`): fsync the file (its contents must be durable before
/// the name says it is complete), rename, fsync the target directory and,
/// when different, the source directory.
pub fn durable_rename(st: &dyn Storage, from: &Path, to: &Path) -> Result<(), StorageError> {
    sync_file(st, from)?;
    st.rename(from, to)
        .map_err(StorageError::at("rename", from))?;
    let to_dir = parent_of(to);
    sync_dir(st, to_dir)?;
    let from_dir = parent_of(from);
    if from_dir != to_dir {
        sync_dir(st, from_dir)?;
    }
    Ok(())
}

/// fsync an existing file by path.
pub fn sync_file(st: &dyn Storage, path: &Path) -> Result<(), StorageError> {
    let f = st
        .open(path, OpenFor::Existing)
        .map_err(StorageError::at("open for fsync", path))?;
    st.sync_all(&f, path)
        .map_err(StorageError::at("fsync", path))
}

/// fsync a directory.
pub fn sync_dir(st: &dyn Storage, dir: &Path) -> Result<(), StorageError> {
    st.sync_dir(dir)
        .map_err(StorageError::at("fsync directory", dir))
}

/// Remove `path` and fsync its directory. Returns whether it was there
/// (a missing file is not an error, and costs no fsync).
pub fn durable_remove(st: &dyn Storage, path: &Path) -> Result<bool, StorageError> {
    match st.remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(StorageError::at("remove", path)(e)),
    }
    sync_dir(st, parent_of(path))?;
    Ok(true)
}

/// Remove directory `path` with everything in it and fsync its parent.
/// Returns whether it was there.
pub fn durable_remove_dir(st: &dyn Storage, path: &Path) -> Result<bool, StorageError> {
    match st.remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(StorageError::at("remove directory", path)(e)),
    }
    sync_dir(st, parent_of(path))?;
    Ok(true)
}

/// Create `path` and any missing parents ([`DIR_MODE`]), fsyncing the
/// parent of each directory created. Returns whether anything was created.
pub fn durable_create_dir(st: &dyn Storage, path: &Path) -> Result<bool, StorageError> {
    let mut missing = Vec::new();
    let mut at = Some(path);
    while let Some(p) = at.filter(|p| !p.as_os_str().is_empty()) {
        match fs::metadata(p) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(StorageError::at("create directory", p)(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a file of that name exists",
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(p),
            Err(e) => return Err(StorageError::at("stat", p)(e)),
        }
        at = p.parent();
    }
    let created = !missing.is_empty();
    for dir in missing.into_iter().rev() {
        match st.create_dir(dir) {
            Ok(()) => {}
            // Created by someone else in between: it is there.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => continue,
            Err(e) => return Err(StorageError::at("create directory", dir)(e)),
        }
        sync_dir(st, parent_of(dir))?;
    }
    Ok(created)
}

/// Buffer size of [`SeqWriter`]: large enough that a chunk file costs few
/// write calls.
const SEQ_BUFFER_BYTES: usize = 256 << 10;

/// A file written front to back through a [`Storage`], buffered (what
/// `BufWriter<File>` is for a file outside the seam). [`SeqWriter::finish`]
/// writes the rest and fsyncs; dropping it unfinished leaves an incomplete
/// file that nothing may trust.
pub struct SeqWriter<'a> {
    st: &'a dyn Storage,
    file: File,
    path: PathBuf,
    offset: u64,
    buf: Vec<u8>,
    /// Where the last [`SeqWriter::start_writeback`] ended.
    writeback_from: u64,
}

impl<'a> SeqWriter<'a> {
    /// Open `path` as `how` says, for writing from its first byte.
    pub fn open(st: &'a dyn Storage, path: &Path, how: OpenFor) -> Result<Self, StorageError> {
        let file = st
            .open(path, how)
            .map_err(StorageError::at("create", path))?;
        Ok(SeqWriter {
            st,
            file,
            path: path.to_path_buf(),
            offset: 0,
            buf: Vec::with_capacity(SEQ_BUFFER_BYTES),
            writeback_from: 0,
        })
    }

    /// Bytes handed to the kernel so far (the buffer not included).
    pub fn written(&self) -> u64 {
        self.offset
    }

    /// Ask the kernel to start writing what was written so far to disk
    /// (sync_file_range with `SYNC_FILE_RANGE_WRITE`), without waiting
    /// and without any durability promise: PostgreSQL's
    /// `checkpoint_flush_after`. A large file written this way never
    /// leaves a flood of dirty pages for its final fsync (or for the
    /// journal commit of another file's fdatasync) to push out at once.
    /// Where the system has no such call this does nothing; an IO error
    /// is returned like a failed write's.
    pub fn start_writeback(&mut self) -> Result<(), StorageError> {
        self.write_buffer()?;
        let len = self.offset - self.writeback_from;
        if len == 0 {
            return Ok(());
        }
        start_writeback(&self.file, self.writeback_from, len)
            .map_err(StorageError::at("start writeback of", &self.path))?;
        self.writeback_from = self.offset;
        Ok(())
    }

    /// The path being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append `bytes`.
    pub fn put(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        if self.buf.len() + bytes.len() > SEQ_BUFFER_BYTES {
            self.write_buffer()?;
        }
        if bytes.len() >= SEQ_BUFFER_BYTES {
            self.write_direct(bytes)
        } else {
            self.buf.extend_from_slice(bytes);
            Ok(())
        }
    }

    fn write_direct(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.st
            .write_at(&self.file, &self.path, self.offset, bytes)
            .map_err(StorageError::at("write", &self.path))?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn write_buffer(&mut self) -> Result<(), StorageError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let r = self.write_direct(&buf);
        self.buf = buf;
        self.buf.clear();
        r
    }

    /// Write what is buffered and start its writeback, without waiting
    /// for it: the open file and its length, for a caller that fsyncs it
    /// later through [`Storage::sync_all`] (many files written one after
    /// another are then synced together at the end, as pg_basebackup
    /// does, instead of each waiting for the disk in turn).
    pub fn finish_unsynced(mut self) -> Result<(File, u64), StorageError> {
        self.start_writeback()?;
        Ok((self.file, self.offset))
    }

    /// Write what is buffered and fsync the file; returns its length.
    pub fn finish(mut self) -> Result<u64, StorageError> {
        self.write_buffer()?;
        self.st
            .sync_all(&self.file, &self.path)
            .map_err(StorageError::at("fsync", &self.path))?;
        Ok(self.offset)
    }
}

#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Ok(());
    };
    // SAFETY: a plain system call on a descriptor `file` keeps open.
    let r = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // Not supported by this filesystem: only a hint was lost.
        Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => Ok(()),
        _ => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &File, _: u64, _: u64) -> io::Result<()> {
    Ok(())
}

impl io::Write for SeqWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.put(buf).map_err(StorageError::into_io)?;
        Ok(buf.len())
    }

    /// Writes the buffer out (no fsync: that is [`SeqWriter::finish`]).
    fn flush(&mut self) -> io::Result<()> {
        self.write_buffer().map_err(StorageError::into_io)
    }
}
