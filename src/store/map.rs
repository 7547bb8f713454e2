//! The ordered in-memory map the WAL is applied to, with commit visibility.
//!
//! A write is applied to the map at once (so the next writer of the same key
//! sees it, in WAL order), but readers see it only when it is *released* at
//! the durability level its writer asked for: locally flushed for `local`,
//! confirmed by the synchronous standbys for `remote_write`/`on`/`remote_apply`.
//! So no client can read a value that a crash or a failover could still take
//! away, and a write whose waiting client disconnected is not exposed before
//! its level is met. Each key keeps the versions it needs for that: the
//! newest released one and any newer pending ones, oldest first.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::config::SynchronousCommit;
use crate::store::record::KvOp;
use crate::Lsn;

/// The durability a version waits for before readers may see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// Visible at once (synchronous_commit = off, and WAL replayed in recovery).
    Immediate = 0,
    /// Visible once the WAL is flushed locally.
    LocalFlush = 1,
    /// Visible once the synchronous standbys have written it.
    RemoteWrite = 2,
    /// Visible once the synchronous standbys have flushed it.
    RemoteFlush = 3,
    /// Visible once the synchronous standbys have applied it.
    RemoteApply = 4,
}

impl Level {
    pub const ALL: [Level; 5] = [
        Level::Immediate,
        Level::LocalFlush,
        Level::RemoteWrite,
        Level::RemoteFlush,
        Level::RemoteApply,
    ];

    /// The level a `synchronous_commit` setting waits for, given whether
    /// synchronous standbys are configured (without them the remote levels
    /// mean a local flush, as in PostgreSQL).
    pub fn for_commit(sc: SynchronousCommit, sync_standbys_defined: bool) -> Level {
        match (sc, sync_standbys_defined) {
            (SynchronousCommit::Off, _) => Level::Immediate,
            (SynchronousCommit::Local, _) | (_, false) => Level::LocalFlush,
            (SynchronousCommit::RemoteWrite, true) => Level::RemoteWrite,
            (SynchronousCommit::On, true) => Level::RemoteFlush,
            (SynchronousCommit::RemoteApply, true) => Level::RemoteApply,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The released position of each level: a version whose LSN is at or below
/// its level's position is visible. Positions only move forward.
#[derive(Debug)]
pub struct Visibility {
    released: [AtomicU64; 5],
}

impl Default for Visibility {
    fn default() -> Self {
        Visibility {
            released: [
                AtomicU64::new(u64::MAX),
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
            ],
        }
    }
}

impl Visibility {
    pub fn released(&self, level: Level) -> Lsn {
        Lsn(self.released[level.index()].load(Ordering::Acquire))
    }

    /// Move `level`'s position forward to `lsn` (never backward).
    pub fn advance(&self, level: Level, lsn: Lsn) {
        self.released[level.index()].fetch_max(lsn.0, Ordering::AcqRel);
    }

    /// Everything up to `lsn` is released at every level (used when the
    /// node has no synchronous standbys to wait for, or degrades to local).
    pub fn advance_all(&self, lsn: Lsn) {
        for l in &Level::ALL[1..] {
            self.advance(*l, lsn);
        }
    }

    fn visible(&self, v: &Version) -> bool {
        v.lsn <= self.released[v.level as usize].load(Ordering::Acquire)
    }
}

/// One value of a key (or its deletion) as written at `lsn`.
#[derive(Debug, Clone)]
struct Version {
    /// End LSN of the record that wrote it; 0 for values loaded from a snapshot.
    lsn: u64,
    level: u8,
    /// `None` = deleted.
    value: Option<Arc<[u8]>>,
}

/// A key's versions, oldest first. Almost always exactly one.
#[derive(Debug, Clone)]
struct Entry {
    versions: Vec<Version>,
}

impl Entry {
    fn newest(&self) -> &Version {
        self.versions.last().expect("entries are never empty")
    }

    /// Drop versions older than the newest visible one; true if the entry
    /// is now only a visible deletion (the key can go).
    fn prune(&mut self, vis: &Visibility) -> bool {
        match self.versions.iter().rposition(|v| vis.visible(v)) {
            Some(0) | None => {}
            Some(i) => {
                self.versions.drain(..i);
            }
        }
        self.versions.len() == 1
            && self.versions[0].value.is_none()
            && vis.visible(&self.versions[0])
    }
}

/// The store's map. Shared between sessions (readers, writers), the redo
/// loop and the checkpointer.
#[derive(Debug, Default)]
pub struct Store {
    map: RwLock<BTreeMap<Vec<u8>, Entry>>,
    vis: Arc<Visibility>,
    /// Keys whose newest version is a value (pending ones included): DBSIZE.
    live_keys: AtomicU64,
}

/// Exclusive access for a writer: hold it across "read current values,
/// insert the WAL record, apply" so WAL order equals apply order.
pub struct WriteTxn<'a> {
    map: RwLockWriteGuard<'a, BTreeMap<Vec<u8>, Entry>>,
    store: &'a Store,
}

/// One key of a checkpoint scan: its newest value and the LSN that wrote it.
pub struct ScannedKey {
    pub key: Vec<u8>,
    pub value: Arc<[u8]>,
    pub lsn: Lsn,
}

impl Store {
    pub fn new() -> Store {
        Store::default()
    }

    pub fn visibility(&self) -> &Arc<Visibility> {
        &self.vis
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<Vec<u8>, Entry>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (apply mutates one entry at a time), so a poisoned lock is usable.
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest visible value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<Arc<[u8]>> {
        let map = self.read();
        let entry = map.get(key)?;
        entry
            .versions
            .iter()
            .rev()
            .find(|v| self.vis.visible(v))
            .and_then(|v| v.value.clone())
    }

    /// Number of keys (counting writes still waiting for their level).
    pub fn len(&self) -> u64 {
        self.live_keys.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn write(&self) -> WriteTxn<'_> {
        WriteTxn {
            map: self.map.write().unwrap_or_else(|e| e.into_inner()),
            store: self,
        }
    }

    /// Apply replayed WAL (recovery, standby): visible at once.
    pub fn apply_replayed(&self, lsn: Lsn, ops: &[KvOp]) {
        let mut txn = self.write();
        for op in ops {
            match op {
                KvOp::Set { key, value } => txn.apply(lsn, Level::Immediate, key, Some(value)),
                KvOp::Del { key } => txn.apply(lsn, Level::Immediate, key, None),
            };
        }
    }

    /// After a write's level was met: drop the versions it superseded.
    pub fn compact(&self, keys: &[&[u8]]) {
        let mut txn = self.write();
        for k in keys {
            if let Some(e) = txn.map.get_mut(*k) {
                if e.prune(&self.vis) {
                    txn.map.remove(*k);
                }
            }
        }
    }

    /// Up to `limit` keys after `after` (all keys from the start if `None`),
    /// newest version each, deletions skipped: one step of a checkpoint's
    /// fuzzy scan. The lock is held only for the step.
    pub fn scan(&self, after: Option<&[u8]>, limit: usize) -> (Vec<ScannedKey>, Option<Vec<u8>>) {
        let map = self.read();
        let lower = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let mut out = Vec::with_capacity(limit.min(map.len()));
        let mut last = None;
        for (k, e) in map.range::<[u8], _>((lower, Bound::Unbounded)).take(limit) {
            last = Some(k.clone());
            let v = e.newest();
            if let Some(value) = &v.value {
                out.push(ScannedKey {
                    key: k.clone(),
                    value: value.clone(),
                    lsn: Lsn(v.lsn),
                });
            }
        }
        (out, last)
    }

    /// Walk the keys that have a visible value, in key order from `from`,
    /// calling `visit` with each key and that value until it returns
    /// `Break` or `limit` entries were examined (entries without a visible
    /// value count too, so the work per call is bounded). Returns the last
    /// examined key when the limit cut the walk short and more entries
    /// follow; `None` when the walk is over. The read lock is held for this
    /// call only: one step of a client's KEYS or SCAN.
    pub fn walk_visible(
        &self,
        from: Bound<&[u8]>,
        limit: usize,
        mut visit: impl FnMut(&[u8], &[u8]) -> std::ops::ControlFlow<()>,
    ) -> Option<Vec<u8>> {
        let map = self.read();
        let mut range = map.range::<[u8], _>((from, Bound::Unbounded));
        let mut last = None;
        // At least one entry, so every step makes progress.
        for (k, e) in range.by_ref().take(limit.max(1)) {
            last = Some(k);
            let value = e.versions.iter().rev().find(|v| self.vis.visible(v));
            if let Some(value) = value.and_then(|v| v.value.as_deref()) {
                if visit(k, value).is_break() {
                    return None;
                }
            }
        }
        // Peek at what follows so a walk that just reached the end says so.
        range.next()?;
        last.cloned()
    }

    /// Load a snapshot entry at start-up (before any WAL is replayed).
    pub fn load_base(&self, key: Vec<u8>, value: Vec<u8>) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let fresh = map
            .insert(
                key,
                Entry {
                    versions: vec![Version {
                        lsn: 0,
                        level: Level::Immediate as u8,
                        value: Some(value.into()),
                    }],
                },
            )
            .is_none();
        if fresh {
            self.live_keys.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every key with its visible value, in key order (tests, comparisons).
    pub fn dump_visible(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let map = self.read();
        map.iter()
            .filter_map(|(k, e)| {
                e.versions
                    .iter()
                    .rev()
                    .find(|v| self.vis.visible(v))
                    .and_then(|v| v.value.as_ref())
                    .map(|v| (k.clone(), v.to_vec()))
            })
            .collect()
    }
}

impl WriteTxn<'_> {
    /// The newest value of `key`, pending writes included: what the next
    /// write of this key builds on (INCR).
    pub fn latest(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).and_then(|e| e.newest().value.as_deref())
    }

    /// Record a new version of `key` written by the record ending at `lsn`.
    /// Returns true when the key keeps older versions that a later
    /// [`Store::compact`] should drop.
    pub fn apply(&mut self, lsn: Lsn, level: Level, key: &[u8], value: Option<&[u8]>) -> bool {
        let vis = &self.store.vis;
        let version = Version {
            lsn: lsn.0,
            level: level as u8,
            value: value.map(Arc::from),
        };
        let live_after = version.value.is_some();
        let (live_before, needs_compaction) = match self.map.get_mut(key) {
            Some(e) => {
                let before = e.newest().value.is_some();
                e.prune(vis);
                e.versions.push(version);
                let gone = e.prune(vis);
                let more = !gone && (e.versions.len() > 1 || !live_after);
                if gone {
                    self.map.remove(key);
                }
                (before, more)
            }
            None => {
                let invisible_delete = !live_after;
                if invisible_delete && vis.visible(&version) {
                    // Deleting a key that does not exist: nothing to keep.
                    return false;
                }
                self.map.insert(
                    key.to_vec(),
                    Entry {
                        versions: vec![version],
                    },
                );
                (false, invisible_delete)
            }
        };
        match (live_before, live_after) {
            (false, true) => {
                self.store.live_keys.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.store.live_keys.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        needs_compaction
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_writes_are_invisible_until_released() {
        let s = Store::new();
        {
            let mut t = s.write();
            t.apply(Lsn(100), Level::LocalFlush, b"k", Some(b"v1"));
            assert_eq!(t.latest(b"k"), Some(&b"v1"[..]));
        }
        assert_eq!(s.get(b"k"), None, "unflushed write visible");
        assert_eq!(s.len(), 1);
        s.visibility().advance(Level::LocalFlush, Lsn(100));
        assert_eq!(s.get(b"k").as_deref(), Some(&b"v1"[..]));
    }

    #[test]
    fn readers_keep_seeing_the_released_value_while_a_newer_one_waits() {
        let s = Store::new();
        s.write()
            .apply(Lsn(10), Level::LocalFlush, b"k", Some(b"old"));
        s.visibility().advance(Level::LocalFlush, Lsn(10));
        let more = s
            .write()
            .apply(Lsn(20), Level::RemoteFlush, b"k", Some(b"new"));
        assert!(more);
        s.visibility().advance(Level::LocalFlush, Lsn(20));
        assert_eq!(
            s.get(b"k").as_deref(),
            Some(&b"old"[..]),
            "remote write exposed before the standby confirmed"
        );
        s.visibility().advance(Level::RemoteFlush, Lsn(20));
        assert_eq!(s.get(b"k").as_deref(), Some(&b"new"[..]));
        s.compact(&[b"k"]);
        assert_eq!(s.read().get(&b"k"[..]).unwrap().versions.len(), 1);
    }

    #[test]
    fn deletes_become_visible_then_disappear() {
        let s = Store::new();
        s.apply_replayed(
            Lsn(5),
            &[KvOp::Set {
                key: b"a".to_vec(),
                value: b"1".to_vec(),
            }],
        );
        assert_eq!(s.len(), 1);
        s.write().apply(Lsn(10), Level::LocalFlush, b"a", None);
        assert_eq!(s.len(), 0);
        assert_eq!(s.get(b"a").as_deref(), Some(&b"1"[..]));
        s.visibility().advance(Level::LocalFlush, Lsn(10));
        assert_eq!(s.get(b"a"), None);
        s.compact(&[b"a"]);
        assert!(s.read().is_empty());
        // Deleting a missing key at once leaves nothing behind.
        s.apply_replayed(
            Lsn(11),
            &[KvOp::Del {
                key: b"zz".to_vec(),
            }],
        );
        assert!(s.read().is_empty());
    }

    #[test]
    fn immediate_level_is_visible_at_once() {
        let s = Store::new();
        s.write().apply(Lsn(7), Level::Immediate, b"k", Some(b"v"));
        assert_eq!(s.get(b"k").as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn scan_walks_all_keys_in_steps() {
        let s = Store::new();
        for i in 0..25u32 {
            s.load_base(format!("k{i:03}").into_bytes(), i.to_le_bytes().to_vec());
        }
        s.write().apply(Lsn(9), Level::Immediate, b"k005", None);
        let mut after = None;
        let mut seen = 0;
        loop {
            let (keys, last) = s.scan(after.as_deref(), 7);
            seen += keys.len();
            match last {
                Some(l) => after = Some(l),
                None => break,
            }
        }
        assert_eq!(seen, 24);
        assert_eq!(s.len(), 24);
    }

    #[test]
    fn walk_visible_skips_invisible_versions_and_resumes() {
        use std::ops::ControlFlow;
        let s = Store::new();
        for k in ["a", "b", "c", "d"] {
            s.load_base(k.as_bytes().to_vec(), b"v".to_vec());
        }
        // A pending new key and a pending delete: readers see neither change.
        s.write()
            .apply(Lsn(10), Level::LocalFlush, b"bb", Some(b"new"));
        s.write().apply(Lsn(11), Level::LocalFlush, b"c", None);
        let mut seen = Vec::new();
        let resume = s.walk_visible(Bound::Unbounded, 3, |k, _| {
            seen.push(k.to_vec());
            ControlFlow::Continue(())
        });
        assert_eq!(seen, [b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(resume.as_deref(), Some(&b"bb"[..]));
        let resume = s.walk_visible(Bound::Excluded(b"bb"), 3, |k, _| {
            seen.push(k.to_vec());
            ControlFlow::Continue(())
        });
        assert_eq!(resume, None, "the walk reached the end");
        // The pending delete of "c" is not visible yet: readers still see it.
        assert_eq!(seen[2..], [b"c".to_vec(), b"d".to_vec()]);
        // Exactly `limit` entries left: the walk ends without an empty step.
        assert_eq!(
            s.walk_visible(Bound::Excluded(b"b"), 3, |_, _| ControlFlow::Continue(())),
            None
        );
        // A visitor that stops ends the walk.
        assert_eq!(
            s.walk_visible(Bound::Unbounded, 9, |_, _| ControlFlow::Break(())),
            None
        );
    }

    #[test]
    fn levels_follow_postgres_without_sync_standbys() {
        use SynchronousCommit::*;
        assert_eq!(Level::for_commit(On, false), Level::LocalFlush);
        assert_eq!(Level::for_commit(RemoteApply, true), Level::RemoteApply);
        assert_eq!(Level::for_commit(Off, true), Level::Immediate);
        assert_eq!(Level::for_commit(Local, true), Level::LocalFlush);
    }
}
