//! Reading and writing the store: what a command sees and how its writes
//! get in.
//!
//! - A [`ReadView`] holds the read lock for one command (or a read-only
//!   MULTI/EXEC, so it is atomic) and shows each key's newest *released*
//!   state whose expiry time has not passed.
//! - A [`Stepping`] reader shows the same but takes the lock per call and
//!   per step of a walk, so KEYS and SCAN over a large keyspace never stall
//!   writers for long.
//! - A [`WriteTxn`] holds the write lock across "read, log, apply": it
//!   shows the *newest* state (pending writes included: the next write of
//!   a key builds on the last one, in WAL order), applies each operation at
//!   once as a provisional version nobody else can see (so the next command
//!   of a MULTI/EXEC sees it), and collects the operations for one WAL
//!   record. [`WriteTxn::commit`] gives the versions the record's LSN and
//!   the writer's level; dropping the transaction without committing (the
//!   WAL refused the record) removes them.

use std::borrow::Cow;
use std::ops::{Bound, ControlFlow};
use std::sync::RwLockReadGuard;
use std::sync::RwLockWriteGuard;

use super::apply;
use super::map::{walk, Entry, Keyspace, Level, Store, Version, PROVISIONAL};
use super::record::Op;
use super::value::Slot;
use crate::Lsn;

/// What every command reads through.
pub trait Reader {
    /// The state of `key` this reader sees; `None` when absent or expired.
    fn slot(&mut self, key: &[u8]) -> Option<Slot>;

    /// A bounded walk in key order from `from` (see
    /// [`Store::walk_visible`]): the last key examined when more follow.
    fn walk(
        &mut self,
        from: Bound<&[u8]>,
        limit: usize,
        visit: &mut dyn FnMut(&[u8], &Slot) -> ControlFlow<()>,
    ) -> Option<Vec<u8>>;

    /// Whether a walk is cheap to stop between steps (it releases the lock
    /// between them): KEYS then walks in steps.
    fn steps(&self) -> bool {
        false
    }
}

/// Released, unexpired states under one read lock.
pub struct ReadView<'s> {
    ks: RwLockReadGuard<'s, Keyspace>,
    store: &'s Store,
    now_ms: u64,
    /// Keys met whose expiry had passed (at most [`MAX_EXPIRED_SEEN`]): the
    /// primary deletes them after the command (expiry on access).
    expired: Vec<Vec<u8>>,
}

/// Expired keys one read remembers for deletion on access; the expiry
/// cycle finds the others.
pub const MAX_EXPIRED_SEEN: usize = 16;

/// Released, unexpired states, the lock taken per call.
pub struct Stepping<'s> {
    /// The store read.
    pub store: &'s Store,
    /// "Now" for expiry, Unix time in milliseconds: a key whose expiry
    /// is at or before it reads as absent.
    pub now_ms: u64,
}

/// A watched key's identity at WATCH time (see `WATCH` in
/// docs/redis-commands.md): the LSN of its newest version (0: absent)
/// and whether its expiry had passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// LSN of the key's newest version; 0 when the key is absent.
    pub lsn: u64,
    /// Whether that version's expiry had passed.
    pub expired: bool,
}

impl Store {
    /// A reader of released states for one command at `now_ms`.
    pub fn read_view(&self, now_ms: u64) -> ReadView<'_> {
        ReadView {
            ks: self.read_lock(),
            store: self,
            now_ms,
            expired: Vec::new(),
        }
    }

    /// The write lock, for a writer whose commands read at `now_ms`.
    pub fn write_at<'a>(&self, now_ms: u64) -> WriteTxn<'_, 'a> {
        WriteTxn {
            ks: self.write_lock(),
            store: self,
            ops: Vec::new(),
            touched: Vec::new(),
            now_ms,
            read_pending: None,
        }
    }

    /// The write lock (the checkpointer holds it to read a redo point).
    pub fn write<'a>(&self) -> WriteTxn<'_, 'a> {
        self.write_at(super::control::now_ms())
    }

    /// What WATCH remembers of `key`.
    pub fn stamp(&self, key: &[u8], now_ms: u64) -> Stamp {
        let ks = self.read_lock();
        stamp_of(ks.map.get(key), now_ms)
    }
}

fn stamp_of(e: Option<&Entry>, now_ms: u64) -> Stamp {
    match e.map(Entry::newest) {
        Some(v) => Stamp {
            lsn: v.lsn(),
            expired: v.slot.as_ref().is_none_or(|s| s.expired(now_ms)),
        },
        None => Stamp {
            lsn: 0,
            expired: true,
        },
    }
}

impl ReadView<'_> {
    /// The keys met whose expiry had passed; the lock is released.
    pub fn into_expired(self) -> Vec<Vec<u8>> {
        self.expired
    }

    /// What WATCH remembered, compared at a read-only EXEC under this lock.
    pub fn stamp(&self, key: &[u8]) -> Stamp {
        stamp_of(self.ks.map.get(key), self.now_ms)
    }
}

impl Reader for ReadView<'_> {
    fn slot(&mut self, key: &[u8]) -> Option<Slot> {
        let v = self.ks.map.get(key)?.visible(&self.store.vis)?;
        let slot = v.slot.as_ref()?;
        if slot.expired(self.now_ms) {
            if self.expired.len() < MAX_EXPIRED_SEEN {
                self.expired.push(key.to_vec());
            }
            return None;
        }
        Some(slot.clone())
    }

    fn walk(
        &mut self,
        from: Bound<&[u8]>,
        limit: usize,
        visit: &mut dyn FnMut(&[u8], &Slot) -> ControlFlow<()>,
    ) -> Option<Vec<u8>> {
        let (vis, now) = (&self.store.vis, self.now_ms);
        walk(&self.ks, from, limit, visit, |e| {
            e.visible(vis)
                .and_then(|v| v.slot.as_ref())
                .filter(|s| !s.expired(now))
        })
    }
}

impl Reader for Stepping<'_> {
    fn slot(&mut self, key: &[u8]) -> Option<Slot> {
        self.store.read_view(self.now_ms).slot(key)
    }

    fn walk(
        &mut self,
        from: Bound<&[u8]>,
        limit: usize,
        visit: &mut dyn FnMut(&[u8], &Slot) -> ControlFlow<()>,
    ) -> Option<Vec<u8>> {
        self.store.walk_visible(from, limit, self.now_ms, visit)
    }

    fn steps(&self) -> bool {
        true
    }
}

/// Exclusive access for a writer (see the module's documentation).
pub struct WriteTxn<'s, 'a> {
    ks: RwLockWriteGuard<'s, Keyspace>,
    store: &'s Store,
    ops: Vec<Op<'a>>,
    /// Keys with a provisional version (a key may repeat).
    touched: Vec<Vec<u8>>,
    now_ms: u64,
    /// The newest pending version read (LSN and level): a transaction's
    /// reply waits for it, so it never reports a state that could still
    /// be lost.
    read_pending: Option<(Lsn, Level)>,
}

impl<'s, 'a> WriteTxn<'s, 'a> {
    /// The transaction's "now" for expiry, Unix time in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The newest state of `key` (pending and provisional writes
    /// included). A state whose expiry time has passed is deleted first (a
    /// `Del` in this record, so replay deletes it too) and reads as absent.
    pub fn get(&mut self, key: &[u8]) -> Option<Slot> {
        let v = self.ks.map.get(key)?.newest();
        let slot = v.slot.as_ref()?;
        if slot.expired(self.now_ms) {
            self.apply(Op::Del {
                key: Cow::Owned(key.to_vec()),
            });
            return None;
        }
        if v.lsn() != PROVISIONAL && !self.store.vis.visible(v) {
            let seen = (Lsn(v.lsn()), v.level());
            self.read_pending = Some(match self.read_pending {
                Some((l, lv)) => (l.max(seen.0), lv.max(seen.1)),
                None => seen,
            });
        }
        Some(slot.clone())
    }

    /// The primary's expiry of `key`: if its newest state is released and
    /// its time has passed, delete it (a `Del` in this record). A state
    /// still waiting for its level is left for a later pass: deleting it
    /// now would expose the effect of a write not yet released. True if
    /// it was deleted.
    pub fn expire_if_due(&mut self, key: &[u8]) -> bool {
        let due = self.ks.map.get(key).is_some_and(|e| {
            let v = e.newest();
            self.store.vis.visible(v) && v.slot.as_ref().is_some_and(|s| s.expired(self.now_ms))
        });
        if due {
            self.apply(Op::Del {
                key: Cow::Owned(key.to_vec()),
            });
        }
        due
    }

    /// What WATCH remembered, compared at EXEC under this lock.
    pub fn stamp(&self, key: &[u8]) -> Stamp {
        stamp_of(self.ks.map.get(key), self.now_ms)
    }

    /// Apply `op` now, provisionally, and keep it for the record. An
    /// operation that empties a collection (so the key is gone) is
    /// followed by an explicit `Del` in the record: a key is only ever
    /// absent after an absolute operation, which is what makes replay over
    /// a fuzzy snapshot exact (docs/wal-format.md).
    pub fn apply(&mut self, op: Op<'a>) {
        let Some(key) = op.key() else {
            self.flush_all();
            self.ops.push(op);
            return;
        };
        let emptied = self.apply_to(key, &op) && !matches!(op, Op::Del { .. });
        let del = emptied.then(|| Op::Del {
            key: Cow::Owned(key.to_vec()),
        });
        self.ops.push(op);
        self.ops.extend(del);
    }

    /// Apply `op` to `key`; true if it removed the key (it was there).
    fn apply_to(&mut self, key: &[u8], op: &Op<'_>) -> bool {
        let (store, ks) = (self.store, &mut *self.ks);
        // One lookup of the key for the whole change.
        let Some(e) = ks.map.get_mut(key) else {
            // Absent: a new key (or nothing, for a change to a missing one).
            let next = apply::apply(current_for(op, None), op);
            ks.install(store, key, PROVISIONAL, Level::LocalFlush, next);
            self.touched.push(key.to_vec());
            return false;
        };
        if e.newest().lsn() == PROVISIONAL {
            // A second change in this transaction: change the state in
            // its provisional version, in place (a collection is not
            // copied).
            let v = e.newest_mut();
            let current = v.slot.take();
            let before = (current.is_some(), expiry_of(&current));
            v.slot = apply::apply(current, op);
            let after = (v.slot.is_some(), expiry_of(&v.slot));
            store.count_live(before.0, after.0);
            ks.reindex(store, key, before.1, after.1);
            return before.0 && !after.0;
        }
        // A new provisional version on top of the committed ones.
        let newest = e.newest().slot.as_ref();
        let existed = newest.is_some();
        let next = apply::apply(current_for(op, newest), op);
        let removed = existed && next.is_none();
        if Keyspace::install_found(store, &mut ks.expires, key, e, provisional(next)) {
            ks.map.remove(key);
        }
        self.touched.push(key.to_vec());
        removed
    }

    /// FLUSHALL: a provisional deletion of every key.
    fn flush_all(&mut self) {
        let keys: Vec<Vec<u8>> = self
            .ks
            .map
            .iter()
            .filter(|(_, e)| e.newest().slot.is_some())
            .map(|(k, _)| k.to_vec())
            .collect();
        for k in keys {
            self.ks
                .install(self.store, &k, PROVISIONAL, Level::LocalFlush, None);
            self.touched.push(k);
        }
    }

    /// The operations so far (the record's payload).
    pub fn ops(&self) -> &[Op<'a>] {
        &self.ops
    }

    /// The newest pending state a read of this transaction saw.
    pub fn read_pending(&self) -> Option<(Lsn, Level)> {
        self.read_pending
    }

    /// The record ending at `end` holds this transaction's operations:
    /// its versions take that LSN and `level`. Returns the keys that keep
    /// older versions a later [`Store::compact`] should drop.
    pub fn commit(mut self, end: Lsn, level: Level) -> Vec<Vec<u8>> {
        let touched = std::mem::take(&mut self.touched);
        let vis = &*self.store.vis;
        let mut compact = Vec::new();
        for key in touched {
            let Some(e) = self.ks.map.get_mut(key.as_slice()) else {
                continue;
            };
            let v = e.newest_mut();
            if v.lsn() != PROVISIONAL {
                continue; // a key touched twice
            }
            v.set_written(end.0, level);
            if e.prune(vis) {
                self.ks.map.remove(key.as_slice());
            } else if e.versions().len() > 1 || e.newest().slot.is_none() {
                compact.push(key);
            }
        }
        self.ops.clear();
        compact
    }

    /// Remove the provisional versions (the record was not logged).
    fn rollback(&mut self) {
        for key in std::mem::take(&mut self.touched) {
            let Some(e) = self.ks.map.get_mut(key.as_slice()) else {
                continue;
            };
            if e.newest().lsn() != PROVISIONAL {
                continue;
            }
            let (undone, live, exp) = match e.pop() {
                Some(undone) => {
                    let v = e.newest();
                    let exp = v.slot.as_ref().map_or(0, |s| s.expire_ms);
                    (undone, v.slot.is_some(), exp)
                }
                None => {
                    let Some(Entry::One(undone)) = self.ks.map.remove(key.as_slice()) else {
                        unreachable!("an entry without a second version holds one")
                    };
                    (undone, false, 0)
                }
            };
            let undone_exp = undone.slot.as_ref().map_or(0, |s| s.expire_ms);
            self.store.count_live(undone.slot.is_some(), live);
            self.ks.reindex(self.store, &key, undone_exp, exp);
        }
        self.ops.clear();
    }

    /// The keys this transaction's reads see: the newest, unexpired state.
    fn newest_walk(
        &mut self,
        from: Bound<&[u8]>,
        limit: usize,
        visit: &mut dyn FnMut(&[u8], &Slot) -> ControlFlow<()>,
    ) -> Option<Vec<u8>> {
        let now = self.now_ms;
        walk(&self.ks, from, limit, visit, |e| {
            e.newest().slot.as_ref().filter(|s| !s.expired(now))
        })
    }
}

impl Drop for WriteTxn<'_, '_> {
    fn drop(&mut self) {
        if !self.touched.is_empty() {
            self.rollback();
        }
    }
}

impl Reader for WriteTxn<'_, '_> {
    fn slot(&mut self, key: &[u8]) -> Option<Slot> {
        self.get(key)
    }

    fn walk(
        &mut self,
        from: Bound<&[u8]>,
        limit: usize,
        visit: &mut dyn FnMut(&[u8], &Slot) -> ControlFlow<()>,
    ) -> Option<Vec<u8>> {
        self.newest_walk(from, limit, visit)
    }
}

/// The state `op` builds on: a replacement does not need the current one
/// (no clone).
fn current_for(op: &Op<'_>, newest: Option<&Slot>) -> Option<Slot> {
    match op {
        Op::Set { .. } | Op::Put { .. } | Op::Del { .. } => None,
        _ => newest.cloned(),
    }
}

/// A provisional version of `slot` (see [`WriteTxn::commit`]).
fn provisional(slot: Option<Slot>) -> Version {
    Version::new(PROVISIONAL, Level::LocalFlush, slot)
}

fn expiry_of(slot: &Option<Slot>) -> u64 {
    slot.as_ref().map_or(0, |s| s.expire_ms)
}
