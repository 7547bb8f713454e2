//! Pins held by running base backups: the checkpoint snapshot they copy and
//! the WAL from its redo point. The checkpointer keeps every pinned
//! snapshot directory and every segment at or after the oldest pinned redo
//! point, so a concurrent checkpoint or WAL removal never deletes what a
//! backup is still reading (PostgreSQL holds WAL for a running backup the
//! same way, through its backup start point).
//!
//! A parallel backup (`PARALLEL n`) also opens a session here ([`SessionGuard`]): the
//! snapshot's chunks split in parts that other connections claim with
//! `JOIN`; each claim takes its own pin under the same lock, so a part
//! is never copied from a snapshot a checkpoint could remove.

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
    /// Open parallel backups by their token.
    sessions: BTreeMap<String, Session>,
}

/// A parallel backup other connections may join.
#[derive(Debug, Clone)]
struct Session {
    pinned: Pinned,
    /// Timeline of the redo point.
    tli: u32,
    /// Chunk numbers of each part; `None` once claimed. Part 0 is the
    /// leader's own and is never offered.
    parts: Vec<Option<Vec<u32>>>,
}

/// What a joining connection copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedPart {
    /// The snapshot `base/<id>/` the chunks are in.
    pub snapshot_id: u64,
    /// The backup's redo point (its start).
    pub redo: Lsn,
    /// Its timeline.
    pub tli: u32,
    /// The chunk numbers of the part.
    pub chunks: Vec<u32>,
}

/// Why a part could not be claimed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("no parallel base backup \"{0}\" is in progress")]
    NoSuchBackup(String),
    #[error("the parallel base backup has no part {part} (parts 1 to {last})")]
    NoSuchPart { part: usize, last: usize },
    #[error("part {0} of the parallel base backup was already claimed")]
    AlreadyClaimed(usize),
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

    /// Open a parallel backup `token` over the snapshot and redo point of
    /// `leader` (which must outlive the returned guard); `parts[0]` is the
    /// leader's own part. Closed when the guard is dropped.
    pub fn open_session(
        self: &Arc<Self>,
        leader: &BackupPin,
        token: &str,
        tli: u32,
        parts: Vec<Vec<u32>>,
    ) -> SessionGuard {
        let mut g = self.lock();
        let pinned = g.pins[&leader.id];
        let parts = parts
            .into_iter()
            .enumerate()
            .map(|(i, p)| (i > 0).then_some(p))
            .collect();
        g.sessions
            .insert(token.to_string(), Session { pinned, tli, parts });
        SessionGuard {
            pins: Arc::clone(self),
            token: token.to_string(),
        }
    }

    /// Claim part `part` of backup `token`: its chunks, with a pin of its
    /// own taken under the lock that proves the session (and so the
    /// leader's pin) still exists.
    pub fn claim(
        self: &Arc<Self>,
        token: &str,
        part: usize,
    ) -> Result<(BackupPin, ClaimedPart), ClaimError> {
        let mut g = self.lock();
        let session = g
            .sessions
            .get_mut(token)
            .ok_or_else(|| ClaimError::NoSuchBackup(token.to_string()))?;
        let last = session.parts.len().saturating_sub(1);
        if part == 0 || part > last {
            return Err(ClaimError::NoSuchPart { part, last });
        }
        let chunks = session.parts[part]
            .take()
            .ok_or(ClaimError::AlreadyClaimed(part))?;
        let pinned = session.pinned;
        let claimed = ClaimedPart {
            snapshot_id: pinned.snapshot_id,
            redo: pinned.redo,
            tli: session.tli,
            chunks,
        };
        let id = g.next;
        g.next += 1;
        g.pins.insert(id, pinned);
        let pin = BackupPin {
            pins: Arc::clone(self),
            id,
        };
        Ok((pin, claimed))
    }

    /// Parts of backup `token` not claimed yet (0 once it is closed).
    pub fn unclaimed(&self, token: &str) -> usize {
        self.lock().sessions.get(token).map_or(0, |s| {
            s.parts.iter().skip(1).filter(|p| p.is_some()).count()
        })
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

/// An open parallel backup; dropping it closes the session (parts not
/// claimed by then can no longer be).
#[derive(Debug)]
pub struct SessionGuard {
    pins: Arc<BackupPins>,
    token: String,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.pins.lock().sessions.remove(&self.token);
    }
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

    #[test]
    fn parts_are_claimed_once_with_their_own_pin() {
        let pins = BackupPins::new();
        let leader = pins.pin(7, Lsn(0x700));
        let session = pins.open_session(&leader, "t", 1, vec![vec![0], vec![1, 3], vec![2]]);
        assert_eq!(pins.unclaimed("t"), 2);
        assert_eq!(
            pins.claim("t", 0).unwrap_err(),
            ClaimError::NoSuchPart { part: 0, last: 2 }
        );
        assert!(matches!(
            pins.claim("t", 3),
            Err(ClaimError::NoSuchPart { .. })
        ));
        assert!(matches!(
            pins.claim("u", 1),
            Err(ClaimError::NoSuchBackup(_))
        ));
        let (pin, part) = pins.claim("t", 1).unwrap();
        assert_eq!(part.chunks, vec![1, 3]);
        assert_eq!((part.snapshot_id, part.redo), (7, Lsn(0x700)));
        assert_eq!(
            pins.claim("t", 1).unwrap_err(),
            ClaimError::AlreadyClaimed(1)
        );
        assert_eq!(pins.unclaimed("t"), 1);
        // The claim's pin outlives the leader's and the session.
        drop(session);
        drop(leader);
        assert_eq!(pins.pinned_snapshots(), vec![7]);
        assert!(matches!(
            pins.claim("t", 2),
            Err(ClaimError::NoSuchBackup(_))
        ));
        drop(pin);
        assert_eq!(pins.count(), 0);
    }
}
