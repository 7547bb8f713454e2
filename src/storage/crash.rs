//! [`CrashStorage`]: the real calls, each recorded with its bytes, so that
//! a test can later rebuild any disk image a power loss could have left
//! ([`CrashLog`], [`CrashModel`]).
//!
//! The model follows POSIX and ext4 (`data=ordered`), not the page cache
//! a process crash keeps:
//! - written data is durable only after an fsync/fdatasync of its file;
//!   until then a crash keeps any prefix of the writes since the last sync,
//!   torn at a 512-byte sector, or any subset of their sectors, or the
//!   file's new length with zeros where the data did not land;
//! - a create, rename, remove or mkdir is durable only after an fsync of
//!   the directory it changed (both directories for a rename across two);
//!   until then a crash keeps the durable ones plus any prefix of the
//!   others, in order (ext4's journal commits directory changes in order);
//!   a rename stays atomic;
//! - an inode keeps its durable bytes while a durable name refers to it,
//!   so a name can survive whose data did not (the rename-before-fsync bug).
//!
//! Recording takes one lock around each real call, so the log's order is
//! the order the calls took effect. The image starts from the directory as
//! it was when the storage was created, all of it taken as durable.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{OpenFor, StdStorage, Storage};

/// The unit a torn write keeps or loses (a disk sector).
pub const SECTOR_BYTES: u64 = 512;

/// An inode of the model (not the kernel's number, which is reused).
pub type InodeId = usize;

/// One recorded call that changed something, or made something durable.
#[derive(Debug, Clone)]
pub enum Event {
    /// A new empty file got a name.
    Create {
        /// The new name.
        path: PathBuf,
        /// The file it names.
        inode: InodeId,
    },
    /// An existing file was truncated to nothing (open with `Replace`).
    Truncate {
        /// The file truncated.
        inode: InodeId,
    },
    /// Bytes written at an offset.
    Write {
        /// The file written.
        inode: InodeId,
        /// Where in the file (bytes).
        offset: u64,
        /// What was written.
        bytes: Arc<[u8]>,
    },
    /// fallocate: the file is at least `len` bytes long (zeros).
    Extend {
        /// The file extended.
        inode: InodeId,
        /// Its length at least, in bytes.
        len: u64,
    },
    /// fsync/fdatasync of a file.
    Sync {
        /// The file whose data and size became durable.
        inode: InodeId,
    },
    /// fsync of a directory.
    SyncDir {
        /// The directory whose entries became durable.
        path: PathBuf,
    },
    /// rename(2).
    Rename {
        /// The old name.
        from: PathBuf,
        /// The new name (replaced if it existed).
        to: PathBuf,
    },
    /// unlink(2).
    Remove {
        /// The name removed.
        path: PathBuf,
    },
    /// A directory and everything under it removed.
    RemoveTree {
        /// The directory removed with its contents.
        path: PathBuf,
    },
    /// mkdir(2).
    Mkdir {
        /// The directory created.
        path: PathBuf,
    },
}

impl Event {
    /// Whether this event makes earlier ones durable.
    pub fn is_sync(&self) -> bool {
        matches!(self, Event::Sync { .. } | Event::SyncDir { .. })
    }
}

/// What a [`CrashStorage`] recorded: the starting directory and every
/// event in order. Cloned out with [`CrashStorage::log`].
#[derive(Debug, Clone)]
pub struct CrashLog {
    /// The directory the storage watched.
    pub root: PathBuf,
    /// Files and directories at the start (relative paths), all durable.
    pub base: Vec<(PathBuf, Option<Arc<[u8]>>)>,
    /// Inodes of the base files, in `base` order (`None` for directories).
    pub base_inodes: Vec<Option<InodeId>>,
    /// Every recorded call, in the order it returned.
    pub events: Vec<Event>,
}

impl CrashLog {
    /// How many events of each kind, for a run's report.
    pub fn summary(&self) -> String {
        let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
        for e in &self.events {
            *counts.entry(e.kind()).or_default() += 1;
        }
        counts
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Event {
    /// The call's name.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Create { .. } => "create",
            Event::Truncate { .. } => "truncate",
            Event::Write { .. } => "write",
            Event::Extend { .. } => "fallocate",
            Event::Sync { .. } => "fsync",
            Event::SyncDir { .. } => "fsync directory",
            Event::Rename { .. } => "rename",
            Event::Remove { .. } => "remove",
            Event::RemoveTree { .. } => "remove directory",
            Event::Mkdir { .. } => "mkdir",
        }
    }
}

/// Which files' syncs [`CrashStorage::forgetting_syncs_of`] leaves out.
struct ForgetSyncs(Box<dyn Fn(&Path) -> bool + Send + Sync>);

impl std::fmt::Debug for ForgetSyncs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForgetSyncs")
    }
}

#[derive(Debug, Default)]
struct Recorder {
    events: Vec<Event>,
    /// Kernel inode number -> model inode, for calls given an open `File`.
    inodes: HashMap<u64, InodeId>,
    /// The live names of files, as the recorded calls left them: a file
    /// synced under a name the record does not give it was written by
    /// another process (a restore_command's `cp`) and is adopted.
    names: HashMap<PathBuf, InodeId>,
    next_inode: InodeId,
}

impl Recorder {
    /// Move the names at or under `from` to `to` (a rename of a file or
    /// of a directory).
    fn rename(&mut self, from: &Path, to: &Path) {
        let moved: Vec<(PathBuf, InodeId)> = self
            .names
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, &id)| (p.clone(), id))
            .collect();
        self.names.retain(|p, _| !p.starts_with(to));
        for (p, id) in moved {
            self.names.remove(&p);
            let rest = p.strip_prefix(from).expect("filtered on the prefix");
            self.names.insert(to.join(rest), id);
        }
    }
}

/// Storage that makes the real calls and records each one (see the module
/// documentation). Paths outside its root are passed through unrecorded.
#[derive(Debug)]
pub struct CrashStorage {
    root: PathBuf,
    base: Vec<(PathBuf, Option<Arc<[u8]>>)>,
    base_inodes: Vec<Option<InodeId>>,
    rec: Mutex<Recorder>,
    /// File syncs that are made but not recorded, as if the code had
    /// forgotten them (to prove a harness catches a missing fsync).
    forget: Option<ForgetSyncs>,
    /// Events recorded so far (readable without the lock: an ack is
    /// stamped with it).
    count: AtomicU64,
}

impl CrashStorage {
    /// Watch `root`: what is in it now is the durable starting image.
    pub fn new(root: &Path) -> io::Result<CrashStorage> {
        let root = fs::canonicalize(root)?;
        let mut base = Vec::new();
        scan(&root, &root, &mut base)?;
        base.sort_by(|a, b| a.0.cmp(&b.0));
        let mut rec = Recorder::default();
        let mut base_inodes = Vec::new();
        for (rel, bytes) in &base {
            if bytes.is_some() {
                let ino = fs::metadata(root.join(rel))?.ino();
                let id = rec.next_inode;
                rec.next_inode += 1;
                rec.inodes.insert(ino, id);
                rec.names.insert(rel.clone(), id);
                base_inodes.push(Some(id));
            } else {
                base_inodes.push(None);
            }
        }
        Ok(CrashStorage {
            root,
            base,
            base_inodes,
            rec: Mutex::new(rec),
            forget: None,
            count: AtomicU64::new(0),
        })
    }

    /// Leave the fsyncs of files `forget` picks out of the record: the
    /// images then show what the code would leave if it never made them.
    /// For a test of a harness, which must find the writes this loses.
    pub fn forgetting_syncs_of(
        mut self,
        forget: impl Fn(&Path) -> bool + Send + Sync + 'static,
    ) -> CrashStorage {
        self.forget = Some(ForgetSyncs(Box::new(forget)));
        self
    }

    /// How many events were recorded so far: a crash point at or after it
    /// includes every call that completed before this was read.
    pub fn position(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// A copy of everything recorded so far.
    pub fn log(&self) -> CrashLog {
        let rec = self.lock();
        CrashLog {
            root: self.root.clone(),
            base: self.base.clone(),
            base_inodes: self.base_inodes.clone(),
            events: rec.events.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorder> {
        self.rec.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `path` relative to the root, or `None` outside it.
    fn rel(&self, path: &Path) -> Option<PathBuf> {
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir().ok()?.join(path)
        };
        let abs = normalize(&abs);
        abs.strip_prefix(&self.root).ok().map(Path::to_path_buf)
    }

    fn push(&self, rec: &mut Recorder, e: Event) {
        rec.events.push(e);
        self.count.store(rec.events.len() as u64, Ordering::SeqCst);
    }

    fn inode_of(rec: &mut Recorder, file: &File) -> io::Result<InodeId> {
        let ino = file.metadata()?.ino();
        Ok(*rec.inodes.entry(ino).or_insert_with(|| {
            // A file the storage did not see created (opened before it
            // started watching): its data counts as durable.
            let id = rec.next_inode;
            rec.next_inode += 1;
            id
        }))
    }
}

/// Lexically remove `.` and `..` (paths given by the node are plain).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn scan(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Option<Arc<[u8]>>)>) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let path = e.path();
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        let t = e.file_type()?;
        if t.is_dir() {
            out.push((rel, None));
            scan(root, &path, out)?;
        } else if t.is_file() {
            out.push((rel, Some(fs::read(&path)?.into())));
        }
    }
    Ok(())
}

impl Storage for CrashStorage {
    fn open(&self, path: &Path, how: OpenFor) -> io::Result<File> {
        let Some(rel) = self.rel(path) else {
            return StdStorage.open(path, how);
        };
        let mut rec = self.lock();
        let existed = path.exists();
        let f = StdStorage.open(path, how)?;
        let ino = f.metadata()?.ino();
        if !existed {
            let id = rec.next_inode;
            rec.next_inode += 1;
            rec.inodes.insert(ino, id);
            rec.names.insert(rel.clone(), id);
            self.push(
                &mut rec,
                Event::Create {
                    path: rel,
                    inode: id,
                },
            );
        } else if how == OpenFor::Replace {
            let id = Self::inode_of(&mut rec, &f)?;
            self.push(&mut rec, Event::Truncate { inode: id });
        }
        Ok(f)
    }

    fn write_at(&self, file: &File, path: &Path, offset: u64, buf: &[u8]) -> io::Result<()> {
        if self.rel(path).is_none() {
            return StdStorage.write_at(file, path, offset, buf);
        }
        let mut rec = self.lock();
        let inode = Self::inode_of(&mut rec, file)?;
        StdStorage.write_at(file, path, offset, buf)?;
        let bytes = buf.into();
        self.push(
            &mut rec,
            Event::Write {
                inode,
                offset,
                bytes,
            },
        );
        Ok(())
    }

    fn allocate(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
        if self.rel(path).is_none() {
            return StdStorage.allocate(file, path, len);
        }
        let mut rec = self.lock();
        let inode = Self::inode_of(&mut rec, file)?;
        StdStorage.allocate(file, path, len)?;
        self.push(&mut rec, Event::Extend { inode, len });
        Ok(())
    }

    fn sync_data(&self, file: &File, path: &Path) -> io::Result<()> {
        self.sync_file(file, path, false)
    }

    fn sync_all(&self, file: &File, path: &Path) -> io::Result<()> {
        self.sync_file(file, path, true)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let Some(rel) = self.rel(dir) else {
            return StdStorage.sync_dir(dir);
        };
        let mut rec = self.lock();
        StdStorage.sync_dir(dir)?;
        self.push(&mut rec, Event::SyncDir { path: rel });
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (Some(f), Some(t)) = (self.rel(from), self.rel(to)) else {
            return StdStorage.rename(from, to);
        };
        let mut rec = self.lock();
        StdStorage.rename(from, to)?;
        rec.rename(&f, &t);
        self.push(&mut rec, Event::Rename { from: f, to: t });
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let Some(rel) = self.rel(path) else {
            return StdStorage.remove_file(path);
        };
        let mut rec = self.lock();
        StdStorage.remove_file(path)?;
        rec.names.remove(&rel);
        self.push(&mut rec, Event::Remove { path: rel });
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let Some(rel) = self.rel(path) else {
            return StdStorage.remove_dir_all(path);
        };
        let mut rec = self.lock();
        StdStorage.remove_dir_all(path)?;
        rec.names.retain(|p, _| !p.starts_with(&rel));
        self.push(&mut rec, Event::RemoveTree { path: rel });
        Ok(())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let Some(rel) = self.rel(path) else {
            return StdStorage.create_dir(path);
        };
        let mut rec = self.lock();
        StdStorage.create_dir(path)?;
        self.push(&mut rec, Event::Mkdir { path: rel });
        Ok(())
    }
}

impl CrashStorage {
    /// The model inode of `file`, synced under `path`. A file the record
    /// does not name so (another process wrote it, as a restore_command's
    /// `cp` does) is adopted first: created under that name with what it
    /// holds now, both pending until synced like any other.
    fn adopt_or_inode(&self, rec: &mut Recorder, file: &File, path: &Path) -> io::Result<InodeId> {
        let (Some(rel), ino) = (self.rel(path), file.metadata()?.ino()) else {
            return Self::inode_of(rec, file);
        };
        if let Some(known) = rec.inodes.get(&ino).copied() {
            if rec.names.get(&rel) == Some(&known) {
                return Ok(known);
            }
        }
        let id = rec.next_inode;
        rec.next_inode += 1;
        rec.inodes.insert(ino, id);
        rec.names.insert(rel.clone(), id);
        let bytes: Arc<[u8]> = fs::read(path)?.into();
        self.push(
            rec,
            Event::Create {
                path: rel,
                inode: id,
            },
        );
        self.push(
            rec,
            Event::Write {
                inode: id,
                offset: 0,
                bytes,
            },
        );
        Ok(id)
    }

    fn sync_file(&self, file: &File, path: &Path, all: bool) -> io::Result<()> {
        if self.rel(path).is_none() {
            return if all {
                StdStorage.sync_all(file, path)
            } else {
                StdStorage.sync_data(file, path)
            };
        }
        let mut rec = self.lock();
        let inode = self.adopt_or_inode(&mut rec, file, path)?;
        if all {
            StdStorage.sync_all(file, path)?;
        } else {
            StdStorage.sync_data(file, path)?;
        }
        if self.forget.as_ref().is_some_and(|f| (f.0)(path)) {
            return Ok(());
        }
        self.push(&mut rec, Event::Sync { inode });
        Ok(())
    }
}

/// A change to a file's data not yet made durable.
#[derive(Debug, Clone)]
enum DataOp {
    Truncate,
    Write { offset: u64, bytes: Arc<[u8]> },
    Extend { len: u64 },
}

#[derive(Debug, Clone, Default)]
struct Inode {
    durable: Vec<u8>,
    pending: Vec<DataOp>,
}

/// A name in the model's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File(InodeId),
    Dir,
}

/// A change to the namespace, with the directories whose fsync makes it
/// durable.
#[derive(Debug, Clone)]
struct DirOp {
    event: Event,
    dirs: Vec<PathBuf>,
    durable: bool,
}

/// How a crash image treats data and names not yet durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generator {
    /// Only what was made durable (every unsynced write and name lost).
    Lost,
    /// Everything written (the page cache reached the disk).
    All,
    /// Per file, a prefix of its unsynced writes, the next one torn at a
    /// sector boundary.
    TornPrefix,
    /// Per file, each sector of its unsynced writes kept or lost on its own.
    Sectors,
    /// Per file, its new length with zeros where unsynced data did not land.
    LengthWithoutData,
}

impl Generator {
    /// Every generator, for harnesses that cycle through them.
    pub const ALL: [Generator; 5] = [
        Generator::Lost,
        Generator::All,
        Generator::TornPrefix,
        Generator::Sectors,
        Generator::LengthWithoutData,
    ];
}

/// The state of the disk after a prefix of a [`CrashLog`]: durable data
/// and names, and what is pending. Advance it with [`CrashModel::apply`],
/// write images with [`CrashModel::build_image`].
#[derive(Debug, Clone)]
pub struct CrashModel {
    inodes: HashMap<InodeId, Inode>,
    /// Names whose every change is durable.
    names: BTreeMap<PathBuf, Entry>,
    /// Namespace changes in order, not all durable yet.
    dir_ops: Vec<DirOp>,
    /// The live namespace (to resolve what a rename or remove acts on).
    live: BTreeMap<PathBuf, Entry>,
    /// Events applied so far.
    pub position: usize,
}

/// How an image was chosen (printed with a failure, to replay it).
#[derive(Debug, Clone)]
pub struct ImageChoice {
    /// How the pending data was turned into the image.
    pub generator: Generator,
    /// Of the pending namespace changes, how many the image keeps.
    pub dir_ops_kept: usize,
    /// Namespace changes not yet durable at the crash.
    pub dir_ops_pending: usize,
    /// Files whose image differs from both durable and live data.
    pub files_pending: usize,
}

impl CrashModel {
    /// The model at the start of `log` (before its first event).
    pub fn new(log: &CrashLog) -> CrashModel {
        let mut inodes = HashMap::new();
        let mut names = BTreeMap::new();
        for ((rel, bytes), id) in log.base.iter().zip(&log.base_inodes) {
            match (bytes, id) {
                (Some(b), Some(id)) => {
                    inodes.insert(
                        *id,
                        Inode {
                            durable: b.to_vec(),
                            pending: Vec::new(),
                        },
                    );
                    names.insert(rel.clone(), Entry::File(*id));
                }
                _ => {
                    names.insert(rel.clone(), Entry::Dir);
                }
            }
        }
        CrashModel {
            inodes,
            live: names.clone(),
            names,
            dir_ops: Vec::new(),
            position: 0,
        }
    }

    /// Apply the next event of the log.
    pub fn apply(&mut self, e: &Event) {
        self.position += 1;
        match e {
            Event::Truncate { inode } => self.data(*inode, DataOp::Truncate),
            Event::Write {
                inode,
                offset,
                bytes,
            } => self.data(
                *inode,
                DataOp::Write {
                    offset: *offset,
                    bytes: bytes.clone(),
                },
            ),
            Event::Extend { inode, len } => self.data(*inode, DataOp::Extend { len: *len }),
            Event::Sync { inode } => {
                let node = self.inodes.entry(*inode).or_default();
                let live = apply_all(&node.durable, &node.pending);
                node.durable = live;
                node.pending.clear();
            }
            Event::SyncDir { path } => {
                for op in &mut self.dir_ops {
                    if op.dirs.iter().any(|d| d == path) {
                        op.durable = true;
                    }
                }
                self.fold_durable();
            }
            Event::Create { path, inode } => {
                self.inodes.entry(*inode).or_default();
                self.namespace(e, vec![parent(path)]);
            }
            Event::Mkdir { path } | Event::Remove { path } | Event::RemoveTree { path } => {
                self.namespace(e, vec![parent(path)])
            }
            Event::Rename { from, to } => {
                let mut dirs = vec![parent(from)];
                if parent(to) != parent(from) {
                    dirs.push(parent(to));
                }
                self.namespace(e, dirs)
            }
        }
    }

    fn data(&mut self, inode: InodeId, op: DataOp) {
        self.inodes.entry(inode).or_default().pending.push(op);
    }

    fn namespace(&mut self, e: &Event, dirs: Vec<PathBuf>) {
        apply_name(&mut self.live, e);
        self.dir_ops.push(DirOp {
            event: e.clone(),
            dirs,
            durable: false,
        });
    }

    /// Fold the leading durable namespace changes into `names`.
    fn fold_durable(&mut self) {
        let n = self.dir_ops.iter().take_while(|o| o.durable).count();
        for op in self.dir_ops.drain(..n) {
            apply_name(&mut self.names, &op.event);
        }
    }

    /// Whether anything is not durable yet (an image may differ from live).
    pub fn pending(&self) -> bool {
        !self.dir_ops.is_empty() || self.inodes.values().any(|i| !i.pending.is_empty())
    }

    /// Write a crash image into the empty directory `to`, chosen by
    /// `generator` and `rng`.
    pub fn build_image(
        &self,
        to: &Path,
        generator: Generator,
        rng: &mut StdRng,
    ) -> io::Result<ImageChoice> {
        let pending: Vec<&DirOp> = self.dir_ops.iter().filter(|o| !o.durable).collect();
        let kept = match generator {
            Generator::Lost => 0,
            Generator::All => pending.len(),
            _ => rng.gen_range(0..=pending.len()),
        };
        let mut names = self.names.clone();
        let mut undurable_seen = 0;
        for op in &self.dir_ops {
            if !op.durable {
                undurable_seen += 1;
                if undurable_seen > kept {
                    continue;
                }
            }
            apply_name(&mut names, &op.event);
        }
        let mut files_pending = 0;
        for (rel, entry) in &names {
            let path = to.join(rel);
            match entry {
                Entry::Dir => fs::create_dir_all(&path)?,
                Entry::File(id) => {
                    let Some(dir) = path.parent() else { continue };
                    if !dir.is_dir() {
                        // Its directory's own entry did not survive.
                        continue;
                    }
                    let node = self.inodes.get(id).cloned().unwrap_or_default();
                    if !node.pending.is_empty() {
                        files_pending += 1;
                    }
                    fs::write(&path, image_bytes(&node, generator, rng))?;
                }
            }
        }
        Ok(ImageChoice {
            generator,
            dir_ops_kept: kept,
            dir_ops_pending: pending.len(),
            files_pending,
        })
    }
}

fn parent(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Apply a namespace event to a name map.
fn apply_name(names: &mut BTreeMap<PathBuf, Entry>, e: &Event) {
    match e {
        Event::Create { path, inode } => {
            names.insert(path.clone(), Entry::File(*inode));
        }
        Event::Mkdir { path } => {
            names.insert(path.clone(), Entry::Dir);
        }
        Event::Remove { path } => {
            names.remove(path);
        }
        Event::RemoveTree { path } => {
            names.retain(|p, _| !p.starts_with(path));
        }
        Event::Rename { from, to } => {
            let Some(entry) = names.get(from).copied() else {
                return;
            };
            if entry == Entry::Dir {
                let moved: Vec<(PathBuf, Entry)> = names
                    .range(from.clone()..)
                    .take_while(|(p, _)| p.starts_with(from))
                    .map(|(p, e)| (p.clone(), *e))
                    .collect();
                names.retain(|p, _| !p.starts_with(to));
                for (p, e) in moved {
                    names.remove(&p);
                    let rest = p.strip_prefix(from).unwrap_or(Path::new(""));
                    names.insert(to.join(rest), e);
                }
            } else {
                names.remove(from);
                names.insert(to.clone(), entry);
            }
        }
        _ => {}
    }
}

/// Every pending change applied to `durable`: the live content.
fn apply_all(durable: &[u8], ops: &[DataOp]) -> Vec<u8> {
    let mut b = durable.to_vec();
    for op in ops {
        apply_data(&mut b, op, None);
    }
    b
}

/// Apply one data change; `keep` says which sectors of a write land (all
/// when `None`); a sector that does not land keeps the old bytes, or zeros
/// past the old end.
fn apply_data(b: &mut Vec<u8>, op: &DataOp, keep: Option<&dyn Fn(u64) -> bool>) {
    match op {
        DataOp::Truncate => b.clear(),
        DataOp::Extend { len } => {
            if (b.len() as u64) < *len {
                b.resize(*len as usize, 0);
            }
        }
        DataOp::Write { offset, bytes } => {
            let end = *offset as usize + bytes.len();
            if b.len() < end {
                b.resize(end, 0);
            }
            let mut at = *offset;
            while at < end as u64 {
                let sector = at / SECTOR_BYTES;
                let next = ((sector + 1) * SECTOR_BYTES).min(end as u64);
                if keep.is_none_or(|k| k(sector)) {
                    let src = (at - offset) as usize..(next - offset) as usize;
                    b[at as usize..next as usize].copy_from_slice(&bytes[src]);
                }
                at = next;
            }
        }
    }
}

/// The bytes one file holds in an image.
fn image_bytes(node: &Inode, generator: Generator, rng: &mut StdRng) -> Vec<u8> {
    if node.pending.is_empty() {
        return node.durable.clone();
    }
    match generator {
        Generator::Lost => node.durable.clone(),
        Generator::All => apply_all(&node.durable, &node.pending),
        Generator::TornPrefix => {
            let k = rng.gen_range(0..=node.pending.len());
            let mut b = node.durable.clone();
            for op in &node.pending[..k] {
                apply_data(&mut b, op, None);
            }
            if let Some(op @ DataOp::Write { offset, bytes }) = node.pending.get(k) {
                let first = offset / SECTOR_BYTES;
                let last = (offset + bytes.len() as u64).div_ceil(SECTOR_BYTES);
                let cut = rng.gen_range(first..=last);
                if cut > first {
                    // A torn write does not grow the file past what landed.
                    let before = b.len();
                    apply_data(&mut b, op, Some(&|s| s < cut));
                    let landed = (cut * SECTOR_BYTES).min(offset + bytes.len() as u64);
                    b.truncate(before.max(landed as usize));
                }
            }
            b
        }
        Generator::Sectors | Generator::LengthWithoutData => {
            let p: f64 = if generator == Generator::Sectors {
                rng.gen_range(0.0..1.0)
            } else {
                0.0
            };
            let mut b = node.durable.clone();
            for op in &node.pending {
                let coin: Vec<bool> = match op {
                    DataOp::Write { offset, bytes } => {
                        let first = offset / SECTOR_BYTES;
                        let last = (offset + bytes.len() as u64).div_ceil(SECTOR_BYTES);
                        (first..last).map(|_| rng.gen_bool(p)).collect()
                    }
                    _ => Vec::new(),
                };
                let first = match op {
                    DataOp::Write { offset, .. } => offset / SECTOR_BYTES,
                    _ => 0,
                };
                apply_data(&mut b, op, Some(&|s| coin[(s - first) as usize]));
            }
            b
        }
    }
}

/// A seeded random source for image choices.
pub fn image_rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{durable_replace, OpenFor};

    /// Every image of `st`'s log at its end, one per generator, as the
    /// bytes of `name` (`None` when the name did not survive).
    fn images_of(st: &CrashStorage, name: &str, tries: u64) -> Vec<Option<Vec<u8>>> {
        let log = st.log();
        let mut model = CrashModel::new(&log);
        for e in &log.events {
            model.apply(e);
        }
        let mut out = Vec::new();
        for seed in 0..tries {
            for g in Generator::ALL {
                let d = tempfile::tempdir().unwrap();
                model
                    .build_image(d.path(), g, &mut image_rng(seed))
                    .unwrap();
                out.push(fs::read(d.path().join(name)).ok());
            }
        }
        out
    }

    #[test]
    fn a_rename_before_the_file_is_synced_can_leave_the_name_without_the_data() {
        let d = tempfile::tempdir().unwrap();
        let st = CrashStorage::new(d.path()).unwrap();
        let tmp = d.path().join("f.tmp");
        let f = st.open(&tmp, OpenFor::CreateNew).unwrap();
        st.write_at(&f, &tmp, 0, b"new").unwrap();
        st.rename(&tmp, &d.path().join("f")).unwrap();
        st.sync_dir(d.path()).unwrap();
        let images = images_of(&st, "f", 4);
        assert!(images.contains(&Some(Vec::new())), "{images:?}");
        assert!(images.contains(&Some(b"new".to_vec())), "{images:?}");
    }

    #[test]
    fn a_file_another_process_wrote_is_adopted_when_synced_then_renamed_durably() {
        let d = tempfile::tempdir().unwrap();
        let st = CrashStorage::new(d.path()).unwrap();
        // As a restore_command's `cp` leaves it, unknown to the record.
        fs::write(d.path().join("RECOVERYXLOG"), b"restored").unwrap();
        crate::storage::durable_rename(&st, &d.path().join("RECOVERYXLOG"), &d.path().join("seg"))
            .unwrap();
        let images = images_of(&st, "seg", 4);
        assert!(
            images
                .iter()
                .all(|i| i.as_deref() == Some(&b"restored"[..])),
            "{images:?}"
        );
    }

    #[test]
    fn durable_replace_leaves_the_old_or_the_new_file_never_a_mix() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("c"), b"old contents").unwrap();
        let st = CrashStorage::new(d.path()).unwrap();
        durable_replace(&st, &d.path().join("c"), b"new contents").unwrap();
        let log = st.log();
        let mut model = CrashModel::new(&log);
        let mut seen = Vec::new();
        for e in &log.events {
            model.apply(e);
            for g in Generator::ALL {
                let img = tempfile::tempdir().unwrap();
                model.build_image(img.path(), g, &mut image_rng(7)).unwrap();
                let b = fs::read(img.path().join("c")).unwrap();
                assert!(b == b"old contents" || b == b"new contents", "{b:?}");
                seen.push(b);
            }
        }
        assert!(seen.contains(&b"old contents".to_vec()));
        assert!(seen.contains(&b"new contents".to_vec()));
    }

    #[test]
    fn an_unsynced_append_may_be_torn_at_a_sector_or_read_as_zeros() {
        let d = tempfile::tempdir().unwrap();
        let st = CrashStorage::new(d.path()).unwrap();
        let p = d.path().join("w");
        let f = st.open(&p, OpenFor::CreateNew).unwrap();
        st.sync_dir(d.path()).unwrap();
        st.write_at(&f, &p, 0, &[7u8; 2048]).unwrap();
        let images: Vec<Vec<u8>> = images_of(&st, "w", 16).into_iter().flatten().collect();
        // Lost entirely, written entirely, torn after a whole sector, or
        // the new length with (some) zeros.
        assert!(images.contains(&Vec::new()));
        assert!(images.contains(&vec![7u8; 2048]));
        assert!(images
            .iter()
            .any(|b| !b.is_empty() && b.len() < 2048 && b.len() % 512 == 0));
        assert!(images.iter().any(|b| b.len() == 2048 && b.contains(&0)));
        for b in &images {
            assert!(b.iter().all(|&x| x == 0 || x == 7), "garbage in an image");
        }
    }

    #[test]
    fn a_synced_directory_keeps_its_new_name_and_a_synced_file_its_data() {
        let d = tempfile::tempdir().unwrap();
        let st = CrashStorage::new(d.path()).unwrap();
        crate::storage::durable_create(&st, &d.path().join("s"), b"slot").unwrap();
        for img in images_of(&st, "s", 4) {
            assert_eq!(img.as_deref(), Some(&b"slot"[..]));
        }
    }
}
