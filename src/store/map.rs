//! The ordered in-memory map the WAL is applied to, with commit visibility.
//!
//! (Reading and writing it: [`super::txn`]; replaying WAL into it:
//! [`super::replay`].)
//!
//! A write is applied to the map at once (so the next writer of the same key
//! sees it, in WAL order), but readers see it only when it is *released* at
//! the durability level its writer asked for: locally flushed for `local`,
//! confirmed by the synchronous standbys for `remote_write`/`on`/`remote_apply`.
//! So no client can read a value that a crash or a failover could still take
//! away, and a write whose waiting client disconnected is not exposed before
//! its level is met. Each key keeps the versions it needs for that: the
//! newest released one and any newer pending ones, oldest first.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::value::{Slot, Str};
use crate::config::SynchronousCommit;
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
    /// Every level, weakest first (`level as usize` indexes it).
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

    pub(super) fn index(self) -> usize {
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
    /// How far WAL is released at `level`: versions written at or below
    /// this LSN are visible to readers at that level.
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

    pub(super) fn visible(&self, v: &Version) -> bool {
        v.lsn() <= self.released[v.level().index()].load(Ordering::Acquire)
    }
}

/// The LSN of a version a writer applied before its record is in the WAL:
/// never visible (no level is released that far); the writer replaces it
/// with its record's end, or removes it, before it lets go of the lock.
pub(super) const PROVISIONAL: u64 = u64::MAX;

/// Bits of [`Version`]'s packed word that hold the LSN; the level is in
/// the byte above them. 2^56 bytes is 64 PiB of WAL, far more than a
/// node writes; an LSN beyond it is kept as the largest real one.
const LSN_BITS: u32 = 56;
const LSN_MASK: u64 = (1 << LSN_BITS) - 1;
/// [`PROVISIONAL`] as stored in the packed word.
const PROVISIONAL_PACKED: u64 = LSN_MASK;

/// One state of a key (or its deletion) as written by the record ending at
/// an LSN, with the level it waits for. 40 bytes: the LSN and the level
/// share one word (the LSN in the low 56 bits, the level in the top
/// byte), and a short string value is inline in the slot. The B-tree's
/// leaves hold one per key, so every byte here is a byte per key.
#[derive(Debug, Clone)]
pub(super) struct Version {
    /// LSN (low 56 bits) and level (top byte); read through
    /// [`Version::lsn`] and [`Version::level`].
    packed: u64,
    /// `None` = deleted.
    pub slot: Option<Slot>,
}

const _: () = assert!(std::mem::size_of::<Version>() == 40);
const _: () = assert!(std::mem::size_of::<Entry>() == 40);

impl Version {
    /// A version written at (`lsn`, `level`); `lsn` may be [`PROVISIONAL`].
    pub fn new(lsn: u64, level: Level, slot: Option<Slot>) -> Version {
        Version {
            packed: pack(lsn, level),
            slot,
        }
    }

    /// End LSN of the record that wrote it (for a snapshot's key: the end
    /// of the last record that changed it before the snapshot), or
    /// [`PROVISIONAL`].
    #[inline]
    pub fn lsn(&self) -> u64 {
        match self.packed & LSN_MASK {
            PROVISIONAL_PACKED => PROVISIONAL,
            lsn => lsn,
        }
    }

    /// The level it waits for.
    #[inline]
    pub fn level(&self) -> Level {
        // Only `pack` writes the top byte, always from a `Level`.
        Level::ALL[usize::from((self.packed >> LSN_BITS) as u8).min(Level::ALL.len() - 1)]
    }

    /// Mark it written by the record ending at `lsn`, waiting for `level`
    /// (a provisional version at its commit).
    pub fn set_written(&mut self, lsn: u64, level: Level) {
        self.packed = pack(lsn, level);
    }
}

/// The packed word of (`lsn`, `level`).
#[inline]
fn pack(lsn: u64, level: Level) -> u64 {
    let lsn = if lsn == PROVISIONAL {
        PROVISIONAL_PACKED
    } else {
        lsn.min(PROVISIONAL_PACKED - 1)
    };
    lsn | (u64::from(level as u8) << LSN_BITS)
}

/// A key's versions, oldest first. Almost always exactly one released
/// version: held inline, with no allocation of its own; a key with a
/// pending version beside its released one (a write waiting for its level)
/// keeps them in a vector until the older one is pruned.
#[derive(Debug, Clone)]
pub(super) enum Entry {
    /// The common case: one version.
    One(Version),
    /// Two or more versions, oldest first (never fewer than two).
    Many(Vec<Version>),
}

impl Entry {
    /// An entry of one version.
    pub fn new(v: Version) -> Entry {
        Entry::One(v)
    }

    /// The versions, oldest first.
    pub fn versions(&self) -> &[Version] {
        match self {
            Entry::One(v) => std::slice::from_ref(v),
            Entry::Many(vs) => vs,
        }
    }

    pub fn newest(&self) -> &Version {
        match self {
            Entry::One(v) => v,
            Entry::Many(vs) => vs.last().expect("two or more versions"),
        }
    }

    pub fn newest_mut(&mut self) -> &mut Version {
        match self {
            Entry::One(v) => v,
            Entry::Many(vs) => vs.last_mut().expect("two or more versions"),
        }
    }

    /// The newest version readers may see.
    pub fn visible(&self, vis: &Visibility) -> Option<&Version> {
        self.versions().iter().rev().find(|v| vis.visible(v))
    }

    /// Add `v` as the newest version.
    pub fn push(&mut self, v: Version) {
        match self {
            Entry::Many(vs) => vs.push(v),
            Entry::One(_) => {
                let Entry::One(old) = std::mem::replace(self, Entry::Many(Vec::with_capacity(2)))
                else {
                    unreachable!("matched One")
                };
                if let Entry::Many(vs) = self {
                    vs.extend([old, v]);
                }
            }
        }
    }

    /// Make `version` the newest: it replaces the newest one written at the
    /// same LSN and level (a record that changes a key twice), else it is
    /// added after older versions nobody can read any more are dropped.
    /// Returns the replaced newest state's (live, expiry) and whether the
    /// entry is now only a visible deletion (the key can go).
    pub fn install(&mut self, vis: &Visibility, version: Version) -> ((bool, u64), bool) {
        let old = self.newest();
        let before = (old.slot.is_some(), expiry(&old.slot));
        if vis.visible(&version) {
            // Readers see it at once (replay, `synchronous_commit = off`):
            // every older version is superseded, which is what pushing it
            // and pruning would leave, without the vector that pushing
            // onto one version allocates (and pruning frees again).
            let gone = version.slot.is_none();
            *self = Entry::One(version);
            return (before, gone);
        }
        if old.packed == version.packed {
            *self.newest_mut() = version;
        } else {
            self.prune(vis);
            self.push(version);
        }
        (before, self.prune(vis))
    }

    /// Remove the newest version; `None` when it was the only one (the
    /// caller removes the entry).
    pub fn pop(&mut self) -> Option<Version> {
        let Entry::Many(vs) = self else {
            return None;
        };
        let v = vs.pop().expect("two or more versions");
        self.shrink();
        Some(v)
    }

    /// Back to the inline form once one version is left.
    fn shrink(&mut self) {
        if let Entry::Many(vs) = self {
            if vs.len() == 1 {
                *self = Entry::One(vs.pop().expect("one version"));
            }
        }
    }

    /// Drop versions older than the newest visible one; true if the entry
    /// is now only a visible deletion (the key can go).
    pub fn prune(&mut self, vis: &Visibility) -> bool {
        if let Entry::Many(vs) = self {
            if let Some(i) = vs.iter().rposition(|v| vis.visible(v)).filter(|&i| i > 0) {
                vs.drain(..i);
                self.shrink();
            }
        }
        match self {
            Entry::One(v) => v.slot.is_none() && vis.visible(v),
            Entry::Many(_) => false,
        }
    }
}

/// What the store's lock protects: the keys, and an index of the keys
/// whose newest version expires (for the primary's expiry cycle).
#[derive(Debug, Default)]
pub(super) struct Keyspace {
    pub map: BTreeMap<Str, Entry>,
    /// `(expire_ms, key)` of every key whose newest version has an expiry.
    pub expires: BTreeSet<(u64, Str)>,
}

/// The store's map. Shared between sessions (readers, writers), the redo
/// loop and the checkpointer.
#[derive(Debug, Default)]
pub struct Store {
    pub(super) ks: RwLock<Keyspace>,
    pub(super) vis: Arc<Visibility>,
    /// Keys whose newest version is a value (pending ones included): DBSIZE.
    pub(super) live_keys: AtomicU64,
    /// Keys whose newest version expires: INFO keyspace's `expires`.
    pub(super) expiring_keys: AtomicU64,
    /// Keys the primary deleted because their time passed (INFO stats).
    expired_total: AtomicU64,
}

/// One key of a checkpoint scan: its newest state and the LSN that wrote it.
pub(crate) struct ScannedKey {
    /// The key (a short one inline: no allocation to copy it out).
    pub key: Str,
    /// Its newest state.
    pub slot: Slot,
    /// The LSN of the record that wrote that state.
    pub lsn: Lsn,
}

impl Store {
    /// An empty store, nothing released yet at any level.
    pub fn new() -> Store {
        Store::default()
    }

    /// The release positions per level, shared with whoever advances
    /// them (the WAL writer's flush, synchronous replication's acks).
    pub fn visibility(&self) -> &Arc<Visibility> {
        &self.vis
    }

    pub(super) fn read_lock(&self) -> RwLockReadGuard<'_, Keyspace> {
        // A panic while holding the lock cannot leave the map half-updated
        // (apply mutates one entry at a time), so a poisoned lock is usable.
        self.ks.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn write_lock(&self) -> RwLockWriteGuard<'_, Keyspace> {
        self.ks.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of keys (counting writes still waiting for their level, and
    /// keys whose expiry passed but that are not deleted yet, as Redis's
    /// DBSIZE does).
    pub fn len(&self) -> u64 {
        self.live_keys.load(Ordering::Relaxed)
    }

    /// Whether [`Store::len`] is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of keys with an expiry time.
    pub fn expiring(&self) -> u64 {
        self.expiring_keys.load(Ordering::Relaxed)
    }

    /// Count keys deleted by expiry.
    pub fn count_expired(&self, n: u64) {
        self.expired_total.fetch_add(n, Ordering::Relaxed);
    }

    /// Keys deleted by expiry since start.
    pub fn expired_total(&self) -> u64 {
        self.expired_total.load(Ordering::Relaxed)
    }

    /// Up to `limit` keys whose expiry time is at or before `now_ms`, soonest
    /// first: candidates for the primary's expiry cycle (which checks each
    /// again under the write lock).
    pub fn expired_keys(&self, now_ms: u64, limit: usize) -> Vec<Vec<u8>> {
        let ks = self.read_lock();
        ks.expires
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .take(limit)
            .map(|(_, k)| k.to_vec())
            .collect()
    }

    /// After a write's level was met: drop the versions it superseded.
    pub fn compact(&self, keys: &[&[u8]]) {
        let mut ks = self.write_lock();
        for k in keys {
            if let Some(e) = ks.map.get_mut(*k) {
                if e.prune(&self.vis) {
                    ks.map.remove(*k);
                }
            }
        }
    }

    /// Up to `limit` keys after `after` (all keys from the start if `None`),
    /// newest version each, deletions skipped: one step of a checkpoint's
    /// fuzzy scan. The lock is held only for the step. Also returns the
    /// last key examined, where the next step starts (`None`: the scan is
    /// over).
    #[cfg(test)]
    pub(crate) fn scan(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> (Vec<ScannedKey>, Option<Vec<u8>>) {
        let mut out = Vec::new();
        let (last, _) = self.scan_into(after, limit, &mut out);
        (out, last.map(|l| l.to_vec()))
    }

    /// [`Store::scan`] into `out` (cleared first, its capacity reused),
    /// also returning how long the read lock was held. What is done under
    /// the lock is only copying: a short key is 24 bytes copied, a value
    /// a reference count or 24 bytes, so writers queued behind a step wait
    /// microseconds; encoding and writing happen after it is released.
    pub(crate) fn scan_into(
        &self,
        after: Option<&[u8]>,
        limit: usize,
        out: &mut Vec<ScannedKey>,
    ) -> (Option<Str>, std::time::Duration) {
        out.clear();
        let ks = self.read_lock();
        let held = std::time::Instant::now();
        let lower = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let mut last = None;
        for (k, e) in ks
            .map
            .range::<[u8], _>((lower, Bound::Unbounded))
            .take(limit)
        {
            last = Some(k);
            let v = e.newest();
            if let Some(slot) = &v.slot {
                out.push(ScannedKey {
                    key: k.clone(),
                    slot: slot.clone(),
                    lsn: Lsn(v.lsn()),
                });
            }
        }
        let last = last.cloned();
        let hold = held.elapsed();
        drop(ks);
        (last, hold)
    }

    /// Walk the keys that have a visible, unexpired value at `now_ms`, in
    /// key order from `from`, calling `visit` with each key and its state
    /// until it returns `Break` or `limit` entries were examined (entries
    /// without a visible value count too, so the work per call is bounded).
    /// Returns the last examined key when the limit cut the walk short and
    /// more entries follow; `None` when the walk is over. The read lock is
    /// held for this call only: one step of a client's KEYS or SCAN.
    pub fn walk_visible(
        &self,
        from: Bound<&[u8]>,
        limit: usize,
        now_ms: u64,
        visit: &mut dyn FnMut(&[u8], &Slot) -> std::ops::ControlFlow<()>,
    ) -> Option<Vec<u8>> {
        let ks = self.read_lock();
        walk(&ks, from, limit, visit, |e| {
            e.visible(&self.vis)
                .and_then(|v| v.slot.as_ref())
                .filter(|s| !s.expired(now_ms))
        })
    }

    /// Load a snapshot entry at start-up (before any WAL is replayed):
    /// the key's state and the LSN that wrote it.
    pub fn load_base(&self, key: impl AsRef<[u8]>, lsn: Lsn, slot: Slot) {
        let mut ks = self.write_lock();
        let expire_ms = slot.expire_ms;
        let key = Str::new(key.as_ref());
        let old = ks.map.insert(
            key.clone(),
            Entry::new(Version::new(lsn.0, Level::Immediate, Some(slot))),
        );
        if old.is_none() {
            self.live_keys.fetch_add(1, Ordering::Relaxed);
            if expire_ms != 0 {
                ks.expires.insert((expire_ms, key));
                self.expiring_keys.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Load a whole snapshot at start-up, before any WAL is replayed: each
    /// key's state and the LSN that wrote it, in any order (a later entry
    /// of the same key wins, as with [`Store::load_base`]). Into an empty
    /// store the B-tree is built bottom-up from the sorted keys with every
    /// node full, where inserting them one at a time leaves nodes about
    /// half full (a full node splits in the middle): close to half the
    /// memory per key, and no search per key.
    pub(crate) fn load_base_all(&self, keys: Vec<(Str, Lsn, Slot)>) {
        let mut ks = self.write_lock();
        if !ks.map.is_empty() {
            drop(ks);
            for (key, lsn, slot) in keys {
                self.load_base(key, lsn, slot);
            }
            return;
        }
        // Sorted (stably, so the later of two equal keys wins) and built
        // in place of the vector.
        ks.map = keys
            .into_iter()
            .map(|(key, lsn, slot)| {
                (
                    key,
                    Entry::new(Version::new(lsn.0, Level::Immediate, Some(slot))),
                )
            })
            .collect();
        let Keyspace { map, expires } = &mut *ks;
        for (key, e) in map.iter() {
            let expire_ms = expiry(&e.newest().slot);
            if expire_ms != 0 {
                expires.insert((expire_ms, key.clone()));
            }
        }
        self.live_keys.store(map.len() as u64, Ordering::Relaxed);
        self.expiring_keys
            .store(expires.len() as u64, Ordering::Relaxed);
    }

    /// Every key with its visible state (expired keys included), in key
    /// order (tests, comparisons).
    pub fn dump_visible(&self) -> Vec<(Vec<u8>, Slot)> {
        let ks = self.read_lock();
        ks.map
            .iter()
            .filter_map(|(k, e)| {
                e.visible(&self.vis)
                    .and_then(|v| v.slot.clone())
                    .map(|s| (k.to_vec(), s))
            })
            .collect()
    }
}

/// A bounded walk over `ks` from `from` (see [`Store::walk_visible`]);
/// `pick` chooses the state a key shows (or none).
pub(super) fn walk<'k>(
    ks: &'k Keyspace,
    from: Bound<&[u8]>,
    limit: usize,
    visit: &mut dyn FnMut(&[u8], &Slot) -> std::ops::ControlFlow<()>,
    pick: impl Fn(&'k Entry) -> Option<&'k Slot>,
) -> Option<Vec<u8>> {
    let mut range = ks.map.range::<[u8], _>((from, Bound::Unbounded));
    let mut last = None;
    // At least one entry, so every step makes progress.
    for (k, e) in range.by_ref().take(limit.max(1)) {
        last = Some(k);
        if let Some(slot) = pick(e) {
            if visit(k, slot).is_break() {
                return None;
            }
        }
    }
    // Peek at what follows so a walk that just reached the end says so.
    range.next()?;
    last.map(|k| k.to_vec())
}

impl Keyspace {
    /// Make `slot` the newest state of `key`, written at (`lsn`, `level`):
    /// a new version, or the newest one replaced when it has the same LSN
    /// (a record that changes a key twice). Keeps the live-key count and
    /// the expiry index in step.
    pub fn install(
        &mut self,
        store: &Store,
        key: &[u8],
        lsn: u64,
        level: Level,
        slot: Option<Slot>,
    ) {
        let new_live = slot.is_some();
        let new_exp = slot.as_ref().map_or(0, |s| s.expire_ms);
        let version = Version::new(lsn, level, slot);
        let (old_live, old_exp) = match self.map.get_mut(key) {
            Some(e) => {
                let (before, gone) = e.install(&store.vis, version);
                if gone {
                    self.map.remove(key);
                }
                before
            }
            None => {
                if !new_live {
                    // Deleting a key that does not exist: nothing to keep.
                    return;
                }
                self.map.insert(Str::new(key), Entry::new(version));
                (false, 0)
            }
        };
        store.count_live(old_live, new_live);
        self.reindex(store, key, old_exp, new_exp);
    }

    /// [`Keyspace::install`] for a key whose entry the caller already
    /// found (`e`, looked up once): returns whether the entry is to be
    /// removed from the map, which the caller does.
    pub fn install_found(
        store: &Store,
        expires: &mut BTreeSet<(u64, Str)>,
        key: &[u8],
        e: &mut Entry,
        version: Version,
    ) -> bool {
        let (new_live, new_exp) = (version.slot.is_some(), expiry(&version.slot));
        let ((old_live, old_exp), gone) = e.install(&store.vis, version);
        store.count_live(old_live, new_live);
        reindex(store, expires, key, old_exp, new_exp);
        gone
    }

    /// Move `key` in the expiry index from `old` to `new` (0 = none).
    pub fn reindex(&mut self, store: &Store, key: &[u8], old: u64, new: u64) {
        reindex(store, &mut self.expires, key, old, new);
    }

    /// [`Keyspace::reindex`] for a caller holding an entry of the map
    /// (borrowing `expires` alone).
    pub fn reindex_in(
        store: &Store,
        expires: &mut BTreeSet<(u64, Str)>,
        key: &[u8],
        old: u64,
        new: u64,
    ) {
        reindex(store, expires, key, old, new);
    }
}

/// [`Keyspace::reindex`] on the expiry index alone (so a caller holding
/// an entry of the map can use it).
fn reindex(store: &Store, expires: &mut BTreeSet<(u64, Str)>, key: &[u8], old: u64, new: u64) {
    if old == new {
        return;
    }
    if old != 0 && expires.remove(&(old, Str::new(key))) {
        store.expiring_keys.fetch_sub(1, Ordering::Relaxed);
    }
    if new != 0 && expires.insert((new, Str::new(key))) {
        store.expiring_keys.fetch_add(1, Ordering::Relaxed);
    }
}

fn expiry(slot: &Option<Slot>) -> u64 {
    slot.as_ref().map_or(0, |s| s.expire_ms)
}

impl Store {
    pub(super) fn count_live(&self, before: bool, after: bool) {
        match (before, after) {
            (false, true) => {
                self.live_keys.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.live_keys.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}
#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::ops::ControlFlow;

    use super::*;
    use crate::store::record::Op;
    use crate::store::value::Value;

    fn set<'a>(k: &'a [u8], v: &'a [u8]) -> Op<'a> {
        Op::Set {
            key: Cow::Borrowed(k),
            value: Cow::Borrowed(v),
        }
    }

    fn del(k: &[u8]) -> Op<'_> {
        Op::Del {
            key: Cow::Borrowed(k),
        }
    }

    /// One write at (`end`, `level`), as a session does it.
    fn write(s: &Store, end: u64, level: Level, op: Op<'_>) -> Vec<Vec<u8>> {
        let mut t = s.write_at(0);
        t.apply(op);
        t.commit(Lsn(end), level)
    }

    fn get(s: &Store, k: &[u8]) -> Option<Vec<u8>> {
        use crate::store::txn::Reader;
        match s.read_view(0).slot(k)?.value {
            Value::Str(v) => Some(v.to_vec()),
            other => panic!("not a string: {other:?}"),
        }
    }

    #[test]
    fn pending_writes_are_invisible_until_released() {
        let s = Store::new();
        {
            let mut t = s.write_at(0);
            t.apply(set(b"k", b"v1"));
            assert!(t.get(b"k").is_some(), "a writer sees its own write");
            t.commit(Lsn(100), Level::LocalFlush);
        }
        assert_eq!(get(&s, b"k"), None, "unflushed write visible");
        assert_eq!(s.len(), 1);
        s.visibility().advance(Level::LocalFlush, Lsn(100));
        assert_eq!(get(&s, b"k").as_deref(), Some(&b"v1"[..]));
    }

    #[test]
    fn readers_keep_seeing_the_released_value_while_a_newer_one_waits() {
        let s = Store::new();
        write(&s, 10, Level::LocalFlush, set(b"k", b"old"));
        s.visibility().advance(Level::LocalFlush, Lsn(10));
        let more = write(&s, 20, Level::RemoteFlush, set(b"k", b"new"));
        assert_eq!(more, vec![b"k".to_vec()]);
        s.visibility().advance(Level::LocalFlush, Lsn(20));
        assert_eq!(
            get(&s, b"k").as_deref(),
            Some(&b"old"[..]),
            "remote write exposed before the standby confirmed"
        );
        s.visibility().advance(Level::RemoteFlush, Lsn(20));
        assert_eq!(get(&s, b"k").as_deref(), Some(&b"new"[..]));
        s.compact(&[b"k"]);
        assert_eq!(
            s.read_lock().map.get(&b"k"[..]).unwrap().versions().len(),
            1
        );
    }

    #[test]
    fn deletes_become_visible_then_disappear() {
        let s = Store::new();
        s.apply_replayed(Lsn(5), &[set(b"a", b"1")]);
        assert_eq!(s.len(), 1);
        write(&s, 10, Level::LocalFlush, del(b"a"));
        assert_eq!(s.len(), 0);
        assert_eq!(get(&s, b"a").as_deref(), Some(&b"1"[..]));
        s.visibility().advance(Level::LocalFlush, Lsn(10));
        assert_eq!(get(&s, b"a"), None);
        s.compact(&[b"a"]);
        assert!(s.read_lock().map.is_empty());
        // Deleting a missing key at once leaves nothing behind.
        s.apply_replayed(Lsn(11), &[del(b"zz")]);
        assert!(s.read_lock().map.is_empty());
    }

    #[test]
    fn immediate_level_is_visible_at_once() {
        let s = Store::new();
        write(&s, 7, Level::Immediate, set(b"k", b"v"));
        assert_eq!(get(&s, b"k").as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn an_uncommitted_transaction_leaves_nothing() {
        let s = Store::new();
        write(&s, 5, Level::Immediate, set(b"a", b"1"));
        {
            let mut t = s.write_at(0);
            t.apply(set(b"a", b"2"));
            t.apply(set(b"b", b"x"));
            t.apply(Op::Expire {
                key: Cow::Borrowed(b"b"),
                at_ms: 99,
            });
            t.apply(del(b"a"));
            assert_eq!(s.len(), 1, "counts follow provisional writes");
            // Dropped: the WAL refused the record.
        }
        assert_eq!(s.len(), 1);
        assert_eq!(s.expiring(), 0);
        assert_eq!(get(&s, b"a").as_deref(), Some(&b"1"[..]));
        assert_eq!(s.read_lock().map.len(), 1);
    }

    #[test]
    fn a_transaction_that_changes_a_key_twice_counts_it_once() {
        let s = Store::new();
        let mut t = s.write_at(0);
        t.apply(set(b"x", b"1"));
        t.apply(set(b"x", b"2"));
        t.apply(Op::Push {
            key: Cow::Borrowed(b"l"),
            front: true,
            elems: vec![Cow::Borrowed(b"a")],
        });
        t.apply(Op::Pop {
            key: Cow::Borrowed(b"l"),
            front: true,
            count: 1,
        });
        t.apply(Op::Expire {
            key: Cow::Borrowed(b"x"),
            at_ms: 5,
        });
        assert_eq!((s.len(), s.expiring()), (1, 1));
        t.commit(Lsn(9), Level::LocalFlush);
        assert_eq!((s.len(), s.expiring()), (1, 1));
        s.visibility().advance(Level::LocalFlush, Lsn(9));
        s.compact(&[b"x", b"l"]);
        assert_eq!(s.read_lock().map.len(), 1, "the emptied list is gone");
        let mut t = s.write_at(0);
        t.apply(Op::Flush);
        t.apply(set(b"y", b"1"));
        t.commit(Lsn(10), Level::Immediate);
        assert_eq!((s.len(), s.expiring()), (1, 0));
        assert_eq!(get(&s, b"y").as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn scan_walks_all_keys_in_steps() {
        let s = Store::new();
        for i in 0..25u32 {
            s.load_base(
                format!("k{i:03}").into_bytes(),
                Lsn(1),
                Slot::new(Value::string(&i.to_le_bytes())),
            );
        }
        write(&s, 9, Level::Immediate, del(b"k005"));
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
    fn walk_visible_skips_invisible_and_expired_versions_and_resumes() {
        let s = Store::new();
        for k in ["a", "b", "c", "d"] {
            s.load_base(k.as_bytes(), Lsn(1), Slot::new(Value::string(b"v")));
        }
        s.load_base(
            b"ab",
            Lsn(1),
            Slot {
                value: Value::string(b"v"),
                expire_ms: 50,
            },
        );
        // A pending new key and a pending delete: readers see neither change.
        write(&s, 10, Level::LocalFlush, set(b"bb", b"new"));
        write(&s, 11, Level::LocalFlush, del(b"c"));
        let mut seen = Vec::new();
        let mut visit = |k: &[u8], _: &Slot| {
            seen.push(k.to_vec());
            ControlFlow::Continue(())
        };
        let resume = s.walk_visible(Bound::Unbounded, 4, 60, &mut visit);
        assert_eq!(resume.as_deref(), Some(&b"bb"[..]));
        let resume = s.walk_visible(Bound::Excluded(b"bb"), 3, 60, &mut visit);
        assert_eq!(resume, None, "the walk reached the end");
        // The expired "ab" is hidden; the pending delete of "c" is not
        // visible yet, so readers still see it.
        assert_eq!(seen, [&b"a"[..], b"b", b"c", b"d"]);
        // Before its expiry time "ab" shows.
        let mut n = 0;
        s.walk_visible(Bound::Unbounded, 100, 49, &mut |_, _| {
            n += 1;
            ControlFlow::Continue(())
        });
        assert_eq!(n, 5);
        // A visitor that stops ends the walk.
        assert_eq!(
            s.walk_visible(Bound::Unbounded, 9, 0, &mut |_, _| ControlFlow::Break(())),
            None
        );
    }

    #[test]
    fn the_expiry_index_follows_the_newest_version() {
        let s = Store::new();
        let put = |k: &'static [u8], at: u64| Op::Put {
            key: Cow::Borrowed(k),
            value: Value::string(b"v"),
            expire_ms: at,
        };
        write(&s, 1, Level::Immediate, put(b"a", 100));
        write(&s, 2, Level::Immediate, put(b"b", 50));
        write(&s, 3, Level::Immediate, put(b"c", 0));
        assert_eq!(s.expiring(), 2);
        assert_eq!(s.expired_keys(100, 10), [b"b".to_vec(), b"a".to_vec()]);
        assert_eq!(s.expired_keys(60, 10), [b"b".to_vec()]);
        write(&s, 4, Level::Immediate, set(b"b", b"again"));
        assert_eq!(s.expiring(), 1, "SET clears the expiry");
        write(&s, 5, Level::Immediate, del(b"a"));
        assert_eq!(s.expiring(), 0);
        assert!(s.expired_keys(u64::MAX, 10).is_empty());
    }

    #[test]
    fn a_write_of_an_expired_key_deletes_it_first() {
        let s = Store::new();
        write(
            &s,
            1,
            Level::Immediate,
            Op::Push {
                key: Cow::Borrowed(b"l"),
                front: true,
                elems: vec![Cow::Borrowed(b"old")],
            },
        );
        write(
            &s,
            2,
            Level::Immediate,
            Op::Expire {
                key: Cow::Borrowed(b"l"),
                at_ms: 10,
            },
        );
        let mut t = s.write_at(10);
        assert_eq!(t.get(b"l"), None, "expired at 10");
        t.apply(Op::Push {
            key: Cow::Borrowed(b"l"),
            front: true,
            elems: vec![Cow::Borrowed(b"new")],
        });
        let ops: Vec<String> = t.ops().iter().map(|o| o.to_string()).collect();
        assert_eq!(ops, ["DEL l", "LPUSH l (1 items)"]);
        t.commit(Lsn(3), Level::Immediate);
        let dump = s.dump_visible();
        let Value::List(l) = &dump[0].1.value else {
            panic!("{dump:?}")
        };
        assert_eq!(l.len(), 1);
        assert_eq!(dump[0].1.expire_ms, 0);
    }

    #[test]
    fn a_key_costs_a_map_slot_and_nothing_else_when_short() {
        // The per-key budget docs/architecture.md's table is built on: a
        // 24-byte key and a 40-byte entry in the B-tree's node, a short
        // string value inline in the entry.
        assert_eq!(std::mem::size_of::<Str>(), 24);
        assert_eq!(std::mem::size_of::<Value>(), 24);
        assert_eq!(std::mem::size_of::<Option<Slot>>(), 32);
        assert_eq!(std::mem::size_of::<Version>(), 40);
        assert_eq!(std::mem::size_of::<Entry>(), 40);
        let s = Str::new(&[7; 22]);
        assert_eq!((s.heap_len(), &*s), (0, &[7; 22][..]));
        assert_eq!(Str::new(&[7; 23]).heap_len(), 16 + 23);
        assert!(Str::new(b"ab") < Str::new(b"abc") && Str::new(b"b") > Str::new(&[b'a'; 30]));
    }

    #[test]
    fn a_bulk_load_holds_what_loading_key_by_key_holds() {
        let slot = |v: u8, at: u64| Slot {
            value: Value::string(&[v; 30]),
            expire_ms: at,
        };
        // Unsorted, a key twice (the later wins), some with an expiry.
        let mut keys: Vec<(Str, Lsn, Slot)> = (0..500u32)
            .map(|i| {
                let k = format!("k{:05}", (i * 7919) % 500);
                (
                    Str::new(k.as_bytes()),
                    Lsn(u64::from(i)),
                    slot(i as u8, u64::from(i % 3) * 10),
                )
            })
            .collect();
        keys.push((Str::new(b"k00007"), Lsn(900), slot(9, 0)));
        let one_by_one = Store::new();
        for (k, lsn, sl) in keys.clone() {
            one_by_one.load_base(k, lsn, sl);
        }
        let bulk = Store::new();
        bulk.load_base_all(keys.clone());
        assert_eq!(bulk.dump_visible(), one_by_one.dump_visible());
        // The expiry index follows each key's final state.
        let expiring: Vec<Vec<u8>> = {
            let mut v: Vec<(u64, Vec<u8>)> = bulk
                .dump_visible()
                .into_iter()
                .filter(|(_, s)| s.expire_ms != 0)
                .map(|(k, s)| (s.expire_ms, k))
                .collect();
            v.sort();
            v.into_iter().map(|(_, k)| k).collect()
        };
        assert_eq!((bulk.len(), bulk.expiring()), (500, expiring.len() as u64));
        assert_eq!(bulk.expired_keys(u64::MAX, 1000), expiring);
        let lsn_of = |s: &Store| {
            s.read_lock()
                .map
                .get(&b"k00007"[..])
                .unwrap()
                .newest()
                .lsn()
        };
        assert_eq!(lsn_of(&bulk), 900);
        // Into a store that is not empty: key by key.
        let more = vec![
            (Str::new(b"k00001"), Lsn(1000), slot(1, 0)),
            (Str::new(b"new"), Lsn(1001), slot(2, 5)),
        ];
        bulk.load_base_all(more.clone());
        for (k, lsn, sl) in more {
            one_by_one.load_base(k, lsn, sl);
        }
        assert_eq!(bulk.dump_visible(), one_by_one.dump_visible());
        assert_eq!(bulk.len(), 501);
    }

    #[test]
    fn a_version_packs_its_lsn_and_level_into_one_word() {
        for level in Level::ALL {
            for lsn in [0, 1, 0x1234_5678_9abc, LSN_MASK - 1] {
                let v = Version::new(lsn, level, None);
                assert_eq!((v.lsn(), v.level()), (lsn, level));
            }
            let mut v = Version::new(PROVISIONAL, level, None);
            assert_eq!((v.lsn(), v.level()), (PROVISIONAL, level));
            v.set_written(77, Level::RemoteApply);
            assert_eq!((v.lsn(), v.level()), (77, Level::RemoteApply));
        }
        // Beyond 2^56 - 2 (64 PiB of WAL) an LSN is kept as the largest
        // real one: never the provisional marker, never another level.
        let v = Version::new(u64::MAX - 1, Level::RemoteWrite, None);
        assert_eq!((v.lsn(), v.level()), (LSN_MASK - 1, Level::RemoteWrite));
        // A provisional version (written at a waiting level) is never
        // visible, however far the levels are released.
        let vis = Visibility::default();
        vis.advance_all(Lsn(u64::MAX - 1));
        for level in &Level::ALL[1..] {
            assert!(!vis.visible(&Version::new(PROVISIONAL, *level, None)));
            assert!(vis.visible(&Version::new(LSN_MASK - 1, *level, None)));
        }
    }

    #[test]
    fn a_pending_version_leaves_the_inline_form_and_returns_to_it() {
        let s = Store::new();
        write(&s, 10, Level::Immediate, set(b"k", b"old"));
        assert!(matches!(
            s.read_lock().map.get(&b"k"[..]),
            Some(Entry::One(_))
        ));
        write(&s, 20, Level::LocalFlush, set(b"k", b"new"));
        assert!(matches!(s.read_lock().map.get(&b"k"[..]), Some(Entry::Many(v)) if v.len() == 2));
        s.visibility().advance(Level::LocalFlush, Lsn(20));
        s.compact(&[b"k"]);
        assert!(matches!(
            s.read_lock().map.get(&b"k"[..]),
            Some(Entry::One(_))
        ));
        assert_eq!(get(&s, b"k").as_deref(), Some(&b"new"[..]));
    }

    /// The visibility rules on a plain model: every version a key ever
    /// had, oldest first, nothing pruned.
    /// One version of the model: LSN, level, state.
    type ModelVersion = (u64, Level, Option<Slot>);

    #[derive(Default)]
    struct Model {
        keys: BTreeMap<Vec<u8>, Vec<ModelVersion>>,
        released: [u64; 5],
    }

    impl Model {
        fn visible(&self, lsn: u64, level: Level) -> bool {
            level == Level::Immediate || lsn <= self.released[level.index()]
        }

        fn newest(&self, k: &[u8]) -> Option<&Slot> {
            self.keys.get(k)?.last()?.2.as_ref()
        }

        fn read(&self, k: &[u8], now_ms: u64) -> Option<&Slot> {
            let vs = self.keys.get(k)?;
            let (_, _, slot) = vs.iter().rev().find(|(l, lv, _)| self.visible(*l, *lv))?;
            slot.as_ref().filter(|s| !s.expired(now_ms))
        }

        fn write(&mut self, k: &[u8], lsn: u64, level: Level, op: &Op<'_>) {
            let next = crate::store::apply::apply(self.newest(k).cloned(), op);
            if next.is_none() && !self.keys.contains_key(k) {
                // A deletion of a key never written: nothing to keep.
                return;
            }
            self.keys
                .entry(k.to_vec())
                .or_default()
                .push((lsn, level, next));
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Write {
            key: u8,
            level: Level,
            op: u8,
            val: u8,
        },
        Rollback {
            key: u8,
        },
        Release {
            level: Level,
            upto: u8,
        },
        Compact,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        let level = prop_oneof![
            Just(Level::Immediate),
            Just(Level::LocalFlush),
            Just(Level::RemoteWrite),
            Just(Level::RemoteFlush),
        ];
        prop_oneof![
            4 => (0u8..4, level.clone(), 0u8..4, any::<u8>())
                .prop_map(|(key, level, op, val)| Step::Write { key, level, op, val }),
            1 => (0u8..4).prop_map(|key| Step::Rollback { key }),
            2 => (level, any::<u8>()).prop_map(|(level, upto)| Step::Release { level, upto }),
            1 => Just(Step::Compact),
        ]
    }

    /// A set (short or long value), a delete or an expiry.
    fn model_op(key: &[u8], op: u8, val: u8) -> Op<'static> {
        let key = Cow::Owned(key.to_vec());
        match op {
            0 => Op::Set {
                key,
                value: Cow::Owned(vec![val; 1 + usize::from(val) % 40]),
            },
            1 => Op::Del { key },
            2 => Op::Expire {
                key,
                at_ms: u64::from(val % 4),
            },
            _ => Op::Put {
                key,
                value: Value::string(&[val]),
                expire_ms: u64::from(val % 3),
            },
        }
    }

    fn check(
        s: &Store,
        m: &Model,
        now_ms: u64,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        use crate::store::txn::Reader;
        use proptest::prelude::*;
        for k in 0..4u8 {
            let key = [b'k', k];
            prop_assert_eq!(
                s.read_view(now_ms).slot(&key),
                m.read(&key, now_ms).cloned(),
                "read of {:?}",
                key
            );
            let ks = s.read_lock();
            let newest = ks.map.get(&key[..]).and_then(|e| e.newest().slot.clone());
            prop_assert_eq!(newest.as_ref(), m.newest(&key));
            if let Some(Entry::Many(vs)) = ks.map.get(&key[..]) {
                prop_assert!(vs.len() >= 2, "a Many entry of {} versions", vs.len());
            }
        }
        let live = m
            .keys
            .values()
            .filter(|vs| vs.last().is_some_and(|v| v.2.is_some()));
        prop_assert_eq!(s.len(), live.clone().count() as u64);
        let expiring = live.filter(|vs| {
            vs.last()
                .and_then(|v| v.2.as_ref())
                .is_some_and(|s| s.expire_ms != 0)
        });
        prop_assert_eq!(s.expiring(), expiring.count() as u64);
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]

        /// The compact layout (one inline version, a vector only while a
        /// write waits for its level) against the model: the same reads at
        /// every step, and compaction back to one version once released.
        #[test]
        fn the_compact_layout_reads_as_the_model(
            steps in proptest::collection::vec(step(), 1..60),
            now_ms in 0u64..4,
        ) {
            let s = Store::new();
            let mut m = Model::default();
            let mut lsn = 0;
            for st in steps {
                match st {
                    Step::Write { key, level, op, val } => {
                        lsn += 8;
                        let k = [b'k', key];
                        let op = model_op(&k, op, val);
                        m.write(&k, lsn, level, &op);
                        let mut t = s.write_at(0);
                        t.apply(op);
                        t.commit(Lsn(lsn), level);
                    }
                    Step::Rollback { key } => {
                        let k = [b'k', key];
                        let mut t = s.write_at(0);
                        t.apply(set(&k, b"never"));
                    }
                    Step::Release { level, upto } => {
                        let at = lsn.saturating_sub(u64::from(upto % 4) * 8);
                        m.released[level.index()] = m.released[level.index()].max(at);
                        s.visibility().advance(level, Lsn(at));
                    }
                    Step::Compact => {
                        let keys: Vec<[u8; 2]> = (0..4).map(|k| [b'k', k]).collect();
                        let refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
                        s.compact(&refs);
                        // Only the newest visible version and newer ones stay.
                        for k in &keys {
                            let kept = s.read_lock().map.get(&k[..]).map_or(0, |e| e.versions().len());
                            let vs = m.keys.get(&k[..]).map_or(&[][..], |v| v.as_slice());
                            let from = vs.iter().rposition(|(l, lv, _)| m.visible(*l, *lv)).unwrap_or(0);
                            proptest::prop_assert!(kept <= vs.len() - from.min(vs.len()), "{kept} versions kept");
                        }
                    }
                }
                check(&s, &m, now_ms)?;
            }
        }
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
