//! Physical replication slots: named positions that hold WAL back from
//! removal for a standby that is not connected. Persistent slots live in
//! `DATADIR/slots/<name>/state` (magic, version, CRC, body), written with
//! PostgreSQL's crash-safe steps; temporary slots live only in memory and
//! vanish with the connection that created them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use walrep_states::{Lsn, WalSegSize};

use super::sqlstate::{self as code, PgError};
use crate::storage::{durable_create_dir, durable_replace, sync_dir, Storage, StorageError};

/// "walrep slot" file magic.
const MAGIC: u32 = 0x57A1_5107;
const VERSION: u32 = 1;
/// PostgreSQL's NAMEDATALEN - 1.
pub const MAX_SLOT_NAME_LEN: usize = 63;

/// Slot errors, each with PostgreSQL's message and SQLSTATE ([`SlotError::to_pg`]).
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// CREATE_REPLICATION_SLOT of a name already taken (42710).
    #[error("replication slot \"{0}\" already exists")]
    AlreadyExists(String),
    /// No slot of that name (42704).
    #[error("replication slot \"{0}\" does not exist")]
    DoesNotExist(String),
    /// Another walsender holds the slot (55006); DROP ... WAIT waits instead.
    #[error("replication slot \"{name}\" is active for PID {pid}")]
    Active {
        /// The slot.
        name: String,
        /// The walsender holding it ([`SlotInfo::active_pid`]).
        pid: u64,
    },
    /// An empty name (42602).
    #[error("replication slot name \"{0}\" is too short")]
    NameTooShort(String),
    /// A name over [`MAX_SLOT_NAME_LEN`] bytes (42622).
    #[error("replication slot name \"{0}\" is too long")]
    NameTooLong(String),
    /// A name with a character outside `[a-z0-9_]` (42602): names become
    /// directory names.
    #[error("replication slot name \"{0}\" contains invalid character")]
    NameInvalid(String),
    /// `max_replication_slots` slots exist already (53400).
    #[error("all replication slots are in use")]
    TooMany,
    /// The slot fell behind `max_slot_wal_keep_size` and lost its WAL
    /// (55000); only dropping it helps.
    #[error("can no longer get changes from replication slot \"{0}\"")]
    Invalidated(String),
    /// Listing or reading the slot files when the node opens them failed.
    #[error("could not write or read replication slot file \"{path}\": {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing, fsyncing or renaming a slot file through the node's
    /// storage failed; the manager is poisoned from then on.
    #[error("could not write replication slot: {0}")]
    Storage(#[from] StorageError),
    /// An earlier write or fsync failed: nothing retries an fsync, so
    /// slots refuse every change until the node restarts and reads them
    /// back from disk.
    #[error("replication slots are read-only after a failed write or fsync; restart the node")]
    Poisoned,
    /// A slot file with a bad magic, version, length or CRC.
    #[error("replication slot file \"{path}\" is corrupt: {reason}")]
    Corrupt {
        /// The `state` file.
        path: PathBuf,
        /// What check failed.
        reason: String,
    },
}

impl SlotError {
    /// The ErrorResponse PostgreSQL sends for this error.
    pub fn to_pg(&self) -> PgError {
        let msg = self.to_string();
        match self {
            SlotError::AlreadyExists(_) => PgError::error(code::DUPLICATE_OBJECT, msg),
            SlotError::DoesNotExist(_) => PgError::error(code::UNDEFINED_OBJECT, msg),
            SlotError::Active { .. } => PgError::error(code::OBJECT_IN_USE, msg),
            SlotError::NameTooShort(_) => PgError::error(code::INVALID_NAME, msg),
            SlotError::NameTooLong(_) => PgError::error(code::NAME_TOO_LONG, msg),
            SlotError::NameInvalid(_) => PgError::error(code::INVALID_NAME, msg).with_hint(
                "Replication slot names may only contain lower case letters, numbers, and the underscore character.",
            ),
            SlotError::TooMany => PgError::error(code::CONFIGURATION_LIMIT_EXCEEDED, msg)
                .with_hint("Free one or increase max_replication_slots."),
            SlotError::Invalidated(_) => PgError::error(code::OBJECT_NOT_IN_PREREQUISITE_STATE, msg)
                .with_detail("This slot has been invalidated because it exceeded the maximum reserved size."),
            SlotError::Io { .. } | SlotError::Storage(_) | SlotError::Poisoned => {
                PgError::error(code::IO_ERROR, msg)
            }
            SlotError::Corrupt { .. } => PgError::error(code::INTERNAL_ERROR, msg),
        }
    }
}

/// PostgreSQL's ReplicationSlotValidateName.
pub(crate) fn validate_name(name: &str) -> Result<(), SlotError> {
    if name.is_empty() {
        return Err(SlotError::NameTooShort(name.into()));
    }
    if name.len() > MAX_SLOT_NAME_LEN {
        return Err(SlotError::NameTooLong(name.into()));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(SlotError::NameInvalid(name.into()));
    }
    Ok(())
}

/// A slot as seen from outside (`pg_replication_slots`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotInfo {
    /// `slot_name`.
    pub name: String,
    /// Lives only as long as the connection that created it, never on disk.
    pub temporary: bool,
    /// Oldest WAL the slot holds; invalid until WAL is reserved or the
    /// standby reports a flush position.
    pub restart_lsn: Lsn,
    /// Walsender (connection) using the slot.
    pub active_pid: Option<u64>,
    /// Past `max_slot_wal_keep_size`: `wal_status = lost`.
    pub invalidated: bool,
    /// Hot standby feedback xmin (recorded, not used by a key-value store).
    pub xmin: u32,
    /// Hot standby feedback catalog xmin (recorded, as `xmin`).
    pub catalog_xmin: u32,
}

/// In-memory slot plus whether its state on disk is stale.
struct Slot {
    info: SlotInfo,
    dirty: bool,
}

/// `max_slot_wal_keep_size = -1` in [`SlotManager`]'s atomic.
const UNLIMITED: u64 = u64::MAX;

/// All slots of one node.
pub struct SlotManager {
    /// `DATADIR/slots`.
    dir: PathBuf,
    /// Every slot file is written through it (the node's storage).
    storage: Arc<dyn Storage>,
    /// PostgreSQL's max_replication_slots.
    max_slots: usize,
    /// `max_slot_wal_keep_size` in bytes; [`UNLIMITED`] = -1. Changed by a
    /// reload of the configuration.
    max_keep_bytes: AtomicU64,
    slots: Mutex<BTreeMap<String, Slot>>,
    /// Notified when a slot is released (DROP_REPLICATION_SLOT ... WAIT).
    released: Condvar,
    /// Set by a failed write or fsync: nothing is written (or retried)
    /// after that, as PostgreSQL PANICs rather than retry an fsync.
    poisoned: AtomicBool,
}

impl SlotManager {
    /// Load the slots of `data_dir` (creating `slots/`), removing leftovers
    /// of interrupted creations and drops (`*.tmp`); slot files are written
    /// through `storage`.
    pub fn open(
        storage: Arc<dyn Storage>,
        data_dir: &Path,
        max_slots: usize,
        max_keep_bytes: Option<u64>,
    ) -> Result<Arc<SlotManager>, SlotError> {
        let dir = data_dir.join("slots");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SlotError::Io { path, source }
        };
        durable_create_dir(&*storage, &dir)?;
        let mut slots = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let path = entry.map_err(io(&dir))?.path();
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            if name.ends_with(".tmp") {
                storage
                    .remove_dir_all(&path)
                    .map_err(StorageError::at("remove directory", &path))?;
                continue;
            }
            let info = read_state(&path.join("state"))?;
            slots.insert(info.name.clone(), Slot { info, dirty: false });
        }
        sync_dir(&*storage, &dir)?;
        Ok(Arc::new(SlotManager {
            dir,
            storage,
            max_slots,
            max_keep_bytes: AtomicU64::new(max_keep_bytes.unwrap_or(UNLIMITED)),
            slots: Mutex::new(slots),
            released: Condvar::new(),
            poisoned: AtomicBool::new(false),
        }))
    }

    /// A reloaded `max_slot_wal_keep_size` (`None` = unlimited): the next
    /// checkpoint or restartpoint applies it.
    pub fn set_max_keep_bytes(&self, max_keep_bytes: Option<u64>) {
        self.max_keep_bytes
            .store(max_keep_bytes.unwrap_or(UNLIMITED), Ordering::SeqCst);
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// CREATE_REPLICATION_SLOT: `owner` is the creating connection (a
    /// temporary slot stays active for it until it disconnects).
    pub fn create(
        &self,
        name: &str,
        temporary: bool,
        owner: u64,
        restart_lsn: Lsn,
    ) -> Result<SlotInfo, SlotError> {
        validate_name(name)?;
        let mut slots = self.lock();
        if slots.contains_key(name) {
            return Err(SlotError::AlreadyExists(name.into()));
        }
        if slots.len() >= self.max_slots {
            return Err(SlotError::TooMany);
        }
        let info = SlotInfo {
            name: name.to_string(),
            temporary,
            restart_lsn,
            active_pid: temporary.then_some(owner),
            invalidated: false,
            xmin: 0,
            catalog_xmin: 0,
        };
        if !temporary {
            self.create_on_disk(&info)?;
        }
        slots.insert(
            name.to_string(),
            Slot {
                info: info.clone(),
                dirty: false,
            },
        );
        Ok(info)
    }

    /// Run a write to `slots/`; a failure poisons the manager.
    fn write(&self, f: impl FnOnce() -> Result<(), SlotError>) -> Result<(), SlotError> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(SlotError::Poisoned);
        }
        let r = f();
        if let Err(e) = &r {
            tracing::error!("replication slot write failed, slots are now read-only: {e}");
            self.poisoned.store(true, Ordering::SeqCst);
        }
        r
    }

    /// Create `slots/<name>.tmp/state`, then rename the directory into place.
    fn create_on_disk(&self, info: &SlotInfo) -> Result<(), SlotError> {
        self.write(|| self.create_files(info))
    }

    fn create_files(&self, info: &SlotInfo) -> Result<(), SlotError> {
        let st = &*self.storage;
        let tmp = self.dir.join(format!("{}.tmp", info.name));
        let fin = self.dir.join(&info.name);
        if tmp.exists() {
            st.remove_dir_all(&tmp)
                .map_err(StorageError::at("remove directory", &tmp))?;
        }
        st.create_dir(&tmp)
            .map_err(StorageError::at("create directory", &tmp))?;
        durable_replace(st, &tmp.join("state"), &encode_state(info))?;
        st.rename(&tmp, &fin)
            .map_err(StorageError::at("rename", &tmp))?;
        sync_dir(st, &self.dir)?;
        Ok(())
    }

    /// DROP_REPLICATION_SLOT by connection `requester`. A slot active for
    /// another connection is an error unless `wait` is given, which waits
    /// (at most that long) for it to be released.
    pub fn drop_slot(
        &self,
        name: &str,
        requester: u64,
        wait: Option<Duration>,
    ) -> Result<(), SlotError> {
        let deadline = wait.map(|w| Instant::now() + w);
        let mut slots = self.lock();
        loop {
            let slot = slots
                .get(name)
                .ok_or_else(|| SlotError::DoesNotExist(name.into()))?;
            let pid = match slot.info.active_pid {
                Some(pid) if pid != requester => pid,
                _ => break,
            };
            let now = Instant::now();
            match deadline {
                Some(d) if now < d => {
                    slots = self
                        .released
                        .wait_timeout(slots, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                _ => {
                    return Err(SlotError::Active {
                        name: name.into(),
                        pid,
                    })
                }
            }
        }
        let slot = slots.remove(name).expect("checked above");
        if !slot.info.temporary {
            self.remove_on_disk(name)?;
        }
        Ok(())
    }

    fn remove_on_disk(&self, name: &str) -> Result<(), SlotError> {
        self.write(|| self.remove_files(name))
    }

    fn remove_files(&self, name: &str) -> Result<(), SlotError> {
        let st = &*self.storage;
        let dir = self.dir.join(name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        st.rename(&dir, &tmp)
            .map_err(StorageError::at("rename", &dir))?;
        sync_dir(st, &self.dir)?;
        st.remove_dir_all(&tmp)
            .map_err(StorageError::at("remove directory", &tmp))?;
        Ok(())
    }

    /// The slot called `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<SlotInfo> {
        self.lock().get(name).map(|s| s.info.clone())
    }

    /// Every slot, ordered by name (`pg_replication_slots`).
    pub fn list(&self) -> Vec<SlotInfo> {
        self.lock().values().map(|s| s.info.clone()).collect()
    }

    /// Make `owner` the active user of the slot (START_REPLICATION SLOT).
    /// An invalidated slot says so.
    pub fn acquire(self: &Arc<Self>, name: &str, owner: u64) -> Result<SlotGuard, SlotError> {
        let mut slots = self.lock();
        let slot = slots
            .get_mut(name)
            .ok_or_else(|| SlotError::DoesNotExist(name.into()))?;
        match slot.info.active_pid {
            Some(pid) if pid != owner => {
                return Err(SlotError::Active {
                    name: name.into(),
                    pid,
                })
            }
            _ => {}
        }
        if slot.info.invalidated {
            return Err(SlotError::Invalidated(name.into()));
        }
        slot.info.active_pid = Some(owner);
        Ok(SlotGuard {
            manager: Arc::clone(self),
            name: name.to_string(),
            temporary: slot.info.temporary,
        })
    }

    /// End `owner`'s use of a persistent slot (saving its position).
    fn release(&self, name: &str) {
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(name) {
            if !slot.info.temporary {
                slot.info.active_pid = None;
            }
            // A failure poisons the manager (logged there); the slot's
            // position in memory stays right.
            if slot.dirty && self.save(name, &slot.info).is_ok() {
                slot.dirty = false;
            }
        }
        self.released.notify_all();
    }

    /// Drop every temporary slot `owner` created (its connection ended).
    pub(crate) fn drop_temporary_of(&self, owner: u64) {
        let mut slots = self.lock();
        slots.retain(|_, s| !(s.info.temporary && s.info.active_pid == Some(owner)));
        self.released.notify_all();
    }

    /// The standby flushed up to `flush`: the slot holds WAL from there on.
    pub fn confirm_flush(&self, name: &str, flush: Lsn) {
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(name) {
            if flush.is_valid() && flush > slot.info.restart_lsn && !slot.info.invalidated {
                slot.info.restart_lsn = flush;
                slot.dirty = !slot.info.temporary;
            }
        }
    }

    /// Hot standby feedback for the slot.
    pub(crate) fn set_xmin(&self, name: &str, xmin: u32, catalog_xmin: u32) {
        if let Some(slot) = self.lock().get_mut(name) {
            slot.info.xmin = xmin;
            slot.info.catalog_xmin = catalog_xmin;
            slot.dirty = !slot.info.temporary;
        }
    }

    /// Write every changed persistent slot (called by the checkpointer).
    pub fn checkpoint(&self) -> Result<(), SlotError> {
        let mut slots = self.lock();
        for (name, slot) in slots.iter_mut().filter(|(_, s)| s.dirty) {
            self.save(name, &slot.info)?;
            slot.dirty = false;
        }
        Ok(())
    }

    /// Replace `slots/<name>/state` durably.
    fn save(&self, name: &str, info: &SlotInfo) -> Result<(), SlotError> {
        let path = self.dir.join(name).join("state");
        self.write(|| Ok(durable_replace(&*self.storage, &path, &encode_state(info))?))
    }

    /// The oldest WAL any valid slot holds (WAL before it may be removed).
    pub fn min_restart_lsn(&self) -> Option<Lsn> {
        self.lock()
            .values()
            .filter(|s| !s.info.invalidated && s.info.restart_lsn.is_valid())
            .map(|s| s.info.restart_lsn)
            .min()
    }

    /// Invalidate the slots whose restart_lsn is further behind `current`
    /// than `max_slot_wal_keep_size` allows (counted in whole segments, as
    /// PostgreSQL's KeepLogSeg). Returns the names invalidated now; their
    /// state is saved at once so the loss survives a restart.
    pub fn invalidate_obsolete(
        &self,
        current: Lsn,
        seg_size: WalSegSize,
    ) -> Result<Vec<String>, SlotError> {
        let max = self.max_keep_bytes.load(Ordering::SeqCst);
        if max == UNLIMITED {
            return Ok(Vec::new());
        }
        let keep_segs = max / seg_size.bytes();
        let cutoff = current.segno(seg_size).0.saturating_sub(keep_segs);
        let mut slots = self.lock();
        let mut lost = Vec::new();
        for (name, slot) in slots.iter_mut() {
            let l = slot.info.restart_lsn;
            if slot.info.invalidated || !l.is_valid() || l.segno(seg_size).0 >= cutoff {
                continue;
            }
            tracing::warn!(slot = %name, restart_lsn = %l,
                "invalidating slot \"{name}\" because its restart_lsn {l} exceeds max_slot_wal_keep_size");
            slot.info.invalidated = true;
            slot.info.restart_lsn = Lsn::INVALID;
            slot.dirty = !slot.info.temporary;
            lost.push(name.clone());
        }
        drop(slots);
        self.checkpoint()?;
        Ok(lost)
    }

    pub(crate) fn is_invalidated(&self, name: &str) -> bool {
        self.lock().get(name).is_some_and(|s| s.info.invalidated)
    }
}

/// A slot in use by one walsender; released (or, if temporary, kept for
/// the connection) on drop.
pub struct SlotGuard {
    manager: Arc<SlotManager>,
    name: String,
    temporary: bool,
}

impl SlotGuard {
    /// The slot held.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// A temporary slot stays held by its connection after the guard is
    /// dropped, and goes away with that connection.
    pub fn is_temporary(&self) -> bool {
        self.temporary
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.manager.release(&self.name);
    }
}

/// `magic, version, crc, length` (little-endian u32 each) then the body;
/// the CRC covers the body.
fn encode_state(info: &SlotInfo) -> Vec<u8> {
    let mut body = Vec::with_capacity(96);
    body.push(info.name.len() as u8);
    body.extend_from_slice(info.name.as_bytes());
    body.extend_from_slice(&info.restart_lsn.0.to_le_bytes());
    body.push(info.invalidated as u8);
    body.extend_from_slice(&info.xmin.to_le_bytes());
    body.extend_from_slice(&info.catalog_xmin.to_le_bytes());
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn read_state(path: &Path) -> Result<SlotInfo, SlotError> {
    let bytes = fs::read(path).map_err(|source| SlotError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_state(&bytes).map_err(|reason| SlotError::Corrupt {
        path: path.to_path_buf(),
        reason,
    })
}

fn decode_state(bytes: &[u8]) -> Result<SlotInfo, String> {
    let word = |i: usize| -> Result<u32, String> {
        let b = bytes.get(i..i + 4).ok_or("file is too short")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if word(0)? != MAGIC {
        return Err(format!("wrong magic number {:#x}", word(0)?));
    }
    if word(4)? != VERSION {
        return Err(format!("unsupported version {}", word(4)?));
    }
    let body = bytes.get(16..).ok_or("file is too short")?;
    if body.len() != word(12)? as usize {
        return Err(format!(
            "wrong length {} (expected {})",
            body.len(),
            word(12)?
        ));
    }
    if crc32fast::hash(body) != word(8)? {
        return Err("checksum mismatch".into());
    }
    let n = *body.first().ok_or("empty body")? as usize;
    let name = std::str::from_utf8(body.get(1..1 + n).ok_or("name is cut")?)
        .map_err(|_| "name is not UTF-8")?
        .to_string();
    validate_name(&name).map_err(|e| e.to_string())?;
    let rest = body.get(1 + n..).ok_or("body is cut")?;
    if rest.len() != 17 {
        return Err("body has the wrong size".into());
    }
    let u32_at = |i: usize| u32::from_le_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
    let mut lsn = [0u8; 8];
    lsn.copy_from_slice(&rest[..8]);
    Ok(SlotInfo {
        name,
        temporary: false,
        restart_lsn: Lsn(u64::from_le_bytes(lsn)),
        active_pid: None,
        invalidated: rest[8] != 0,
        xmin: u32_at(9),
        catalog_xmin: u32_at(13),
    })
}

#[cfg(test)]
mod tests;
