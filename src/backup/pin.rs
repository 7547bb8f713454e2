//! Pins held by running base backups: the checkpoint snapshot they copy and
//! the WAL from its redo point. The checkpointer keeps every pinned
//! snapshot directory and every segment at or after the oldest pinned redo
//! point, so a concurrent checkpoint or WAL removal never deletes what a
//! backup is still reading (PostgreSQL holds WAL for a running backup the
//! same way, through its backup start point).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::Lsn;

/// What one pin holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pinned {
    /// The snapshot directory `base/<id>/` being copied.
    snapshot_id: u64,
    /// WAL from here on is being copied.
    redo: Lsn,
}

/// The pins of one node (shared with the checkpointer).
#[derive(Debug, Default)]
pub struct BackupPins {
    inner: Mutex<PinsInner>,
}

#[derive(Debug, Default)]
struct PinsInner {
    /// Next pin number (pins are removed by number when dropped).
    next: u64,
    /// Held pins by number.
    pins: BTreeMap<u64, Pinned>,
}

impl BackupPins {
    pub fn new() -> Arc<BackupPins> {
        Arc::new(BackupPins::default())
    }

    fn lock(&self) -> MutexGuard<'_, PinsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pin snapshot `snapshot_id` and the WAL from `redo` until the
    /// returned guard is dropped. The caller must hold the node's
    /// checkpoint lock, so no checkpoint is between reading the control
    /// file and pinning what it names.
    pub fn pin(self: &Arc<Self>, snapshot_id: u64, redo: Lsn) -> BackupPin {
        let mut g = self.lock();
        let id = g.next;
        g.next += 1;
        g.pins.insert(id, Pinned { snapshot_id, redo });
        BackupPin {
            pins: Arc::clone(self),
            id,
        }
    }

    /// Snapshot ids no checkpoint may remove.
    pub fn pinned_snapshots(&self) -> Vec<u64> {
        self.lock().pins.values().map(|p| p.snapshot_id).collect()
    }

    /// The oldest WAL position a backup still copies.
    pub fn oldest_redo(&self) -> Option<Lsn> {
        self.lock().pins.values().map(|p| p.redo).min()
    }

    /// Number of backups holding pins (for INFO and tests).
    pub fn count(&self) -> usize {
        self.lock().pins.len()
    }
}

/// A held pin; dropping it releases the snapshot and the WAL.
#[derive(Debug)]
pub struct BackupPin {
    pins: Arc<BackupPins>,
    /// This pin's number in `pins`.
    id: u64,
}

impl Drop for BackupPin {
    fn drop(&mut self) {
        self.pins.lock().pins.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_hold_until_dropped() {
        let pins = BackupPins::new();
        assert_eq!(pins.oldest_redo(), None);
        let a = pins.pin(3, Lsn(0x300));
        let b = pins.pin(5, Lsn(0x100));
        assert_eq!(pins.pinned_snapshots(), vec![3, 5]);
        assert_eq!(pins.oldest_redo(), Some(Lsn(0x100)));
        drop(b);
        assert_eq!(pins.oldest_redo(), Some(Lsn(0x300)));
        assert_eq!(pins.count(), 1);
        drop(a);
        assert!(pins.pinned_snapshots().is_empty());
    }
}
