//! The control file of a running node, with one owner: every thread reads
//! it through [`ControlFileOwner`] and every change is written durably
//! before anyone sees it (PostgreSQL's `ControlFile` under
//! `ControlFileLock`, with `UpdateControlFile` after each change).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::control::{ControlError, ControlFile};
use crate::storage::Storage;

/// The control file as last written, and the only way to change it.
#[derive(Debug)]
pub struct ControlFileOwner {
    datadir: PathBuf,
    /// Every write goes through the node's storage (and so can fail
    /// under fault injection, poisoning the node).
    storage: Arc<dyn Storage>,
    /// Held across an update's write, so updates are serialised and a
    /// reader never sees a change that is not durable yet.
    file: Mutex<ControlFile>,
}

impl ControlFileOwner {
    /// Own `control`, which was read from (or just written to) `datadir`;
    /// later writes go through `storage`.
    pub fn new(
        storage: Arc<dyn Storage>,
        datadir: impl Into<PathBuf>,
        control: ControlFile,
    ) -> ControlFileOwner {
        ControlFileOwner {
            datadir: datadir.into(),
            storage,
            file: Mutex::new(control),
        }
    }

    /// Read and verify `DATADIR/control` and own it.
    pub fn open(
        storage: Arc<dyn Storage>,
        datadir: &Path,
    ) -> Result<ControlFileOwner, ControlError> {
        let control = ControlFile::read(datadir)?;
        Ok(ControlFileOwner::new(storage, datadir, control))
    }

    fn lock(&self) -> MutexGuard<'_, ControlFile> {
        // An update replaces the value only after its write succeeded, so
        // a panic elsewhere cannot leave it half-changed.
        self.file.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the control file as last written.
    pub fn get(&self) -> ControlFile {
        self.lock().clone()
    }

    /// Look at the control file without copying it.
    pub fn read<R>(&self, f: impl FnOnce(&ControlFile) -> R) -> R {
        f(&self.lock())
    }

    /// Change the control file and replace it on disk atomically and
    /// durably. If the write fails, nothing changes (on disk or here).
    /// A change of timeline takes the new timeline's history id from its
    /// history file, which is durable before any control file names it.
    pub fn update(&self, f: impl FnOnce(&mut ControlFile)) -> Result<(), ControlError> {
        self.update_with(f, ControlFile::write)
    }

    /// [`ControlFileOwner::update`] with the file overwritten in place and
    /// fdatasynced ([`ControlFile::write_in_place`]): no rename, no
    /// directory fsync. Promotion uses it: its change must be durable
    /// before the first write is acknowledged, and a directory fsync there
    /// waits for the whole file system's journal.
    pub fn update_in_place(&self, f: impl FnOnce(&mut ControlFile)) -> Result<(), ControlError> {
        self.update_with(f, ControlFile::write_in_place)
    }

    fn update_with(
        &self,
        f: impl FnOnce(&mut ControlFile),
        write: impl FnOnce(&mut ControlFile, &dyn Storage, &Path) -> Result<(), ControlError>,
    ) -> Result<(), ControlError> {
        let mut current = self.lock();
        let mut next = current.clone();
        f(&mut next);
        if next.timeline != current.timeline {
            next.history_id = history_id_of(&self.datadir, next.timeline).unwrap_or(0);
        }
        write(&mut next, &*self.storage, &self.datadir)?;
        *current = next;
        Ok(())
    }
}

/// The history id `DATADIR/wal/<tli>.history` names for `tli`, if the
/// file is there and names one.
pub fn history_id_of(datadir: &Path, tli: crate::TimelineId) -> Option<u64> {
    let wal = datadir.join(crate::datadir::WAL_DIR);
    let text = crate::wal::timeline::read_history_text(&wal, tli).ok()??;
    crate::wal::timeline::history_ids(&text).get(&tli).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ClusterState;
    use crate::WalSegSize;

    #[test]
    fn an_update_is_durable_before_it_is_seen_and_a_failed_one_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let seg = WalSegSize::new(1 << 20).unwrap();
        let mut c = ControlFile::new_system(42, seg, 4);
        let st: Arc<dyn Storage> = Arc::new(crate::storage::StdStorage);
        c.write(&*st, d.path()).unwrap();
        let owner = ControlFileOwner::open(st.clone(), d.path()).unwrap();
        owner
            .update(|c| c.state = ClusterState::InArchiveRecovery)
            .unwrap();
        assert_eq!(owner.get().state, ClusterState::InArchiveRecovery);
        assert_eq!(
            ControlFile::read(d.path()).unwrap().state,
            ClusterState::InArchiveRecovery
        );
        let gone = ControlFileOwner::new(st, d.path().join("missing"), owner.get());
        assert!(gone
            .update(|c| c.state = ClusterState::InProduction)
            .is_err());
        assert_eq!(gone.read(|c| c.state), ClusterState::InArchiveRecovery);
    }
}
