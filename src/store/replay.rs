//! Applying replayed WAL to the store (crash recovery, a standby's redo):
//! every operation of a record, visible at once, except those a snapshot
//! already holds.
//!
//! The rule that makes replay over a fuzzy snapshot exact: a key's newest
//! version carries the LSN of the record that wrote it (a snapshot stores
//! it with the key). A record ending at `end` is skipped for every key
//! whose LSN is at or past `end` *before the record is applied*: the
//! snapshot was taken after that record changed the key, so it already
//! holds its effect and every earlier one. For every other key, the state
//! is exactly what the primary had just before the record (argued in
//! docs/wal-format.md, "Replay over a fuzzy snapshot"), so relative
//! operations (LPUSH, HSET, SREM) are applied exactly once.

use std::collections::btree_map;
use std::collections::HashSet;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};

use super::apply;
use super::map::{Entry, Keyspace, Level, Store, Version};
use super::record::{self, KvDecodeError, Op, RM_KV};
use super::value::{self, Str, INLINE_LEN};
use crate::wal::{ReadError, Record, RecordBatch, RecordRef, WalReader};
use crate::Lsn;

/// A record whose CRC held but whose payload the store cannot apply: a bug
/// or a version mismatch, never skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("WAL record at {lsn} does not decode: {source}")]
pub struct ApplyError {
    /// Start of the record.
    pub lsn: Lsn,
    /// What is wrong with its payload.
    #[source]
    pub source: KvDecodeError,
}

/// Records redo reads and applies per batch where readers wait on each
/// batch ([`BatchSize::SHARED`]): one hold of the store's lock and one
/// hand-over between the reading and the applying thread each.
pub const REDO_BATCH_RECORDS: usize = 256;
/// ...and at most this many payload bytes per batch (large records).
pub const REDO_BATCH_BYTES: usize = 1 << 20;
/// Records per batch for a streaming standby that keeps up
/// ([`BatchSize::STREAM`]): a hot standby's reader waits for at most one
/// batch's hold of the write lock. Under 64 writing clients the requests
/// are mostly longer than this: 256-record batches held the lock p50
/// 0.09 ms, p99 0.25–0.6 ms; 64-record ones p50 0.05 ms, p99 0.1–0.12 ms,
/// at the same cost per record (docs/benchmarks/visibility.md).
pub const STREAM_BATCH_RECORDS: usize = 64;
/// ...and payload bytes.
pub const STREAM_BATCH_BYTES: usize = 64 << 10;
/// Batches the reading thread may be ahead of the applying one: enough to
/// ride over a scheduling hiccup of either, little memory (at most this
/// many times the batch's bytes plus two batches).
const READ_AHEAD_BATCHES: usize = 4;

/// How much redo reads, plans and applies per batch: one hold of the
/// store's write lock each, so the larger the batch the longer a reader
/// waits for the lock, and the more of the B-tree consecutive operations
/// (sorted by key) share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSize {
    /// At most this many records...
    pub records: usize,
    /// ...and (after the record that reaches it) this many payload bytes.
    pub bytes: usize,
}

impl BatchSize {
    /// Where clients or the checkpointer read while redo runs (a hot
    /// standby's catch-up, archive replay, promotion): short lock holds.
    pub const SHARED: BatchSize = BatchSize {
        records: REDO_BATCH_RECORDS,
        bytes: REDO_BATCH_BYTES,
    };
    /// A streaming standby keeping up (a request of a few received
    /// batches, applied on the walreceiver, the startup or the redo
    /// thread): the records a reader may wait for are the ones just
    /// received, so the holds are shorter still.
    pub const STREAM: BatchSize = BatchSize {
        records: STREAM_BATCH_RECORDS,
        bytes: STREAM_BATCH_BYTES,
    };
    /// Crash recovery, where nothing reads the store until redo is done:
    /// larger batches, so a batch of random keys shares more of the
    /// tree's paths (docs/architecture.md, "Redo").
    pub const ALONE: BatchSize = BatchSize {
        records: 4096,
        bytes: 8 << 20,
    };
}

/// Why a redo run ([`redo_read_ahead`], [`redo_inline`]) stopped. The
/// reader is left after the last applied record either way.
#[derive(Debug, Default)]
pub struct RedoStop {
    /// The record that could not be read (the end of available or valid
    /// WAL, or a read error); `None` when stopped by the flag or by `apply`.
    pub read: Option<ReadError>,
    /// The record that could not be applied (not applied, nor anything
    /// after it).
    pub apply: Option<ApplyError>,
}

/// A batch of records and its [`Plan`], prepared where the records were
/// read: on the reading thread when redo reads ahead. Cleared and
/// refilled, it keeps its buffers.
#[derive(Debug, Default)]
struct RedoBatch {
    records: RecordBatch,
    plan: Plan,
}

impl RedoBatch {
    /// Read up to `size` records from `reader` into the emptied batch and
    /// plan them; returns why reading stopped early, if it did.
    fn read(&mut self, reader: &mut WalReader, size: BatchSize) -> Option<ReadError> {
        self.records.clear();
        let err = reader.read_batch(&mut self.records, size.records, size.bytes);
        let recs: Vec<RecordRef<'_>> = self.records.iter().collect();
        self.plan.prepare(&recs);
        err
    }
}

/// Redo from `reader` until a record cannot be read or applied or `stop`
/// is set, reading ahead: a second thread reads and validates batches of
/// records (the WAL's framing, CRC and copy) and plans each (decodes its
/// operations and sorts them by key), up to a few batches ahead, while
/// this one applies them, so both cores work on redo. `applied` is called
/// after each batch is applied, with the batch and how many key
/// operations its records held (the place to publish the replay
/// position). Batches go back to the reading thread for reuse: no
/// allocation per record once warm.
pub fn redo_read_ahead(
    store: &Store,
    reader: &mut WalReader,
    stop: &AtomicBool,
    size: BatchSize,
    mut applied: impl FnMut(&RecordBatch, u64),
) -> RedoStop {
    let (full_tx, full_rx) = crossbeam_channel::bounded::<RedoBatch>(READ_AHEAD_BATCHES);
    let (free_tx, free_rx) = crossbeam_channel::bounded::<RedoBatch>(READ_AHEAD_BATCHES + 2);
    let (read, apply) = std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("redo-read".into())
            .spawn_scoped(scope, || {
                redo_read_ahead_reader(reader, size, full_tx, free_rx, stop)
            });
        let thread = match thread {
            Ok(t) => t,
            // No second thread to be had: read and apply on this one.
            Err(_) => return (None, None),
        };
        let mut apply = None;
        for mut batch in full_rx.iter() {
            if let Err(e) = apply_then_report(store, &mut batch, &mut applied) {
                apply = Some(e);
                break;
            }
            // Full when the reader allocated more: then this one goes.
            let _ = free_tx.try_send(batch);
        }
        // The reading thread's next send fails: it stops.
        drop(full_rx);
        let read = thread
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (Some(read), apply)
    });
    match (read, apply) {
        (None, _) => redo_inline(store, reader, stop, size, applied),
        (Some(read), None) => RedoStop { read, apply: None },
        (Some(_), Some(e)) => {
            reader.seek(e.0.lsn, Some(e.1));
            RedoStop {
                read: None,
                apply: Some(e.0),
            }
        }
    }
}

/// The reading thread of [`redo_read_ahead`]: batches of records, read
/// and planned, until one cannot be read (returned), `stop` is set or the
/// applier hangs up.
fn redo_read_ahead_reader(
    reader: &mut WalReader,
    size: BatchSize,
    full: crossbeam_channel::Sender<RedoBatch>,
    free: crossbeam_channel::Receiver<RedoBatch>,
    stop: &AtomicBool,
) -> Option<ReadError> {
    while !stop.load(Ordering::Relaxed) {
        let mut batch = free.try_recv().unwrap_or_default();
        let err = batch.read(reader, size);
        if !batch.records.is_empty() && full.send(batch).is_err() {
            return None;
        }
        if err.is_some() {
            return err;
        }
    }
    None
}

/// Redo as [`redo_read_ahead`] does, on this thread alone: for short runs
/// (a standby keeping up), where starting a thread costs more than it saves.
pub fn redo_inline(
    store: &Store,
    reader: &mut WalReader,
    stop: &AtomicBool,
    size: BatchSize,
    mut applied: impl FnMut(&RecordBatch, u64),
) -> RedoStop {
    let mut batch = RedoBatch::default();
    while !stop.load(Ordering::Relaxed) {
        let read = batch.read(reader, size);
        if let Err((e, prev)) = apply_then_report(store, &mut batch, &mut applied) {
            reader.seek(e.lsn, Some(prev));
            return RedoStop {
                read: None,
                apply: Some(e),
            };
        }
        if read.is_some() {
            return RedoStop { read, apply: None };
        }
    }
    RedoStop::default()
}

/// Apply a planned `batch` and report what was applied: all of it, or the
/// records before one that does not decode (then the batch is cut there,
/// and the error returned with that record's prev-link, to read it again).
fn apply_then_report(
    store: &Store,
    batch: &mut RedoBatch,
    applied: &mut impl FnMut(&RecordBatch, u64),
) -> Result<(), (ApplyError, Lsn)> {
    {
        let recs: Vec<RecordRef<'_>> = batch.records.iter().collect();
        store.apply_planned(&recs, &batch.plan, Lookup::Auto);
    }
    let failed = batch.plan.failed.take().map(|(i, e)| {
        let prev = batch.records.get(i).map_or(Lsn::INVALID, |r| r.prev);
        batch.records.truncate(i);
        (e, prev)
    });
    if !batch.records.is_empty() {
        applied(&batch.records, batch.plan.ops);
    }
    failed.map_or(Ok(()), Err)
}

impl Store {
    /// Apply one replayed WAL record (crash recovery, a standby's redo):
    /// key-value records change the store, visible at once; XLOG records
    /// carry nothing it needs.
    pub fn apply_record(&self, rec: &Record) -> Result<(), ApplyError> {
        self.apply_refs(std::iter::once(rec.as_ref()))
    }

    /// Apply a batch of replayed WAL records, in order (see
    /// [`apply_batch`](Self::apply_batch)).
    pub fn apply_records(&self, recs: &[Record]) -> Result<(), ApplyError> {
        self.apply_refs(recs.iter().map(Record::as_ref))
    }

    /// Apply a batch of replayed WAL records, in order: every payload is
    /// decoded and the batch planned first (no lock held), then all is
    /// applied under one hold of the write lock. A record that does not
    /// decode stops the batch there: the records before it are applied,
    /// it and those after are not.
    pub fn apply_batch(&self, batch: &RecordBatch) -> Result<(), ApplyError> {
        self.apply_refs(batch.iter())
    }

    fn apply_refs<'a>(&self, recs: impl Iterator<Item = RecordRef<'a>>) -> Result<(), ApplyError> {
        self.apply_refs_by(recs, Lookup::Auto)
    }

    /// [`apply_refs`](Self::apply_refs), finding keys as `lookup` says.
    fn apply_refs_by<'a>(
        &self,
        recs: impl Iterator<Item = RecordRef<'a>>,
        lookup: Lookup,
    ) -> Result<(), ApplyError> {
        let recs: Vec<RecordRef<'a>> = recs.collect();
        let mut plan = Plan::default();
        plan.prepare(&recs);
        self.apply_planned(&recs, &plan, lookup);
        plan.failed.map_or(Ok(()), |(_, e)| Err(e))
    }

    /// Apply the records `plan` was prepared from (`recs`), up to the one
    /// that did not decode, under one hold of the write lock.
    fn apply_planned(&self, recs: &[RecordRef<'_>], plan: &Plan, lookup: Lookup) {
        if plan.steps.is_empty() {
            return;
        }
        let mut ks = self.write_lock();
        let (mut run, mut skip) = (Vec::new(), Vec::new());
        for step in &plan.steps {
            match step {
                Step::Sorted(range) => {
                    let items = &plan.items[range.clone()];
                    let walk = match lookup {
                        Lookup::Auto => items.len().saturating_mul(WALK_GAP) >= ks.map.len(),
                        Lookup::Descend => false,
                        Lookup::Walk => true,
                    };
                    match walk {
                        true => self.apply_walking(&mut ks, recs, items, &mut run),
                        false => self.apply_sorted(&mut ks, recs, items, &mut run),
                    }
                }
                Step::InOrder(i) => {
                    // FLUSHALL (rare) touches every key: what came before
                    // it is applied first, it in WAL order, then the rest.
                    let rec = recs[*i];
                    let mut ops = Vec::new();
                    record::decode_into(rec.payload, &mut ops)
                        .expect("a record decoded when the batch was planned");
                    self.apply_locked(&mut ks, rec.end, &ops, &mut skip);
                }
            }
        }
    }

    /// Apply `items` (operations of a batch on single keys, planned by
    /// [`Plan::prepare`]: sorted by key, stably) one key's run at a time,
    /// each with one descent of the B-tree. The sort is stable, so the
    /// operations on one key keep their WAL order and leave that key as
    /// WAL order does; keys do not interact (every operation here changes
    /// its one key); and no reader sees the store between two operations
    /// of a batch (they are applied under one hold of the write lock, and
    /// the replay position moves after it is let go). So the store after
    /// the batch is the store WAL order leaves, in whatever order its keys
    /// are applied, while consecutive descents share the same path (its
    /// upper levels, and the leaf itself for neighbouring keys, stay in
    /// the cache) and a key's operations in one batch cost one lookup.
    /// `run` is scratch space the caller keeps for the batch.
    fn apply_sorted<'p>(
        &self,
        ks: &mut Keyspace,
        recs: &[RecordRef<'p>],
        items: &[Item],
        run: &mut Vec<Planned<'p>>,
    ) {
        let mut i = 0;
        while i < items.len() {
            let j = run_end(recs, items, i);
            decode_run(recs, &items[i..j], run);
            self.apply_run(ks, run);
            i = j;
        }
    }

    /// [`apply_sorted`](Self::apply_sorted) for a batch whose keys are
    /// dense in the map (a large batch: crash recovery's): one cursor
    /// walks the map in key order from one key of the batch to the next,
    /// a few entries (and a leaf or two) each, and changes the keys it
    /// finds in place, instead of descending the tree from its root for
    /// each (most of the instructions, and of the cache misses, of a key
    /// change). A key the walk passes without finding, or finds too far
    /// ahead, is applied afterwards the usual way (a new key needs an
    /// insertion, which the cursor cannot do); as are the removals of keys
    /// a run deleted.
    fn apply_walking<'p>(
        &self,
        ks: &mut Keyspace,
        recs: &[RecordRef<'p>],
        items: &[Item],
        run: &mut Vec<Planned<'p>>,
    ) {
        let Some(first) = items.first() else {
            return;
        };
        let (mut later, mut doomed) = (Vec::new(), Vec::new());
        {
            let Keyspace { map, expires } = &mut *ks;
            let from = key_of(recs, first);
            let mut cursor = map.range_mut::<[u8], _>((Bound::Included(from), Bound::Unbounded));
            let mut at = cursor.next();
            let mut i = 0;
            while i < items.len() {
                let key = key_of(recs, &items[i]);
                let j = run_end(recs, items, i);
                // Compared as `Str`s when inline: two words, no `memcmp`.
                let target = (key.len() <= INLINE_LEN).then(|| Str::new(key));
                let below = |k: &Str| match &target {
                    Some(t) => k < t,
                    None => k.as_bytes() < key,
                };
                let mut steps = 0;
                while at.as_ref().is_some_and(|entry| below(entry.0)) {
                    if steps == WALK_STEPS_MAX {
                        // Far ahead: descend to it instead.
                        cursor = map.range_mut::<[u8], _>((Bound::Included(key), Bound::Unbounded));
                        at = cursor.next();
                        break;
                    }
                    at = cursor.next();
                    steps += 1;
                }
                match &mut at {
                    Some((k, e)) if k.as_bytes() == key => {
                        decode_run(recs, &items[i..j], run);
                        let (before, after, gone) = self.run_found(e, run, None);
                        self.count_live(before.0, after.0);
                        Keyspace::reindex_in(self, expires, key, before.1, after.1);
                        if gone {
                            doomed.push(key);
                        }
                    }
                    _ => later.push(i..j),
                }
                i = j;
            }
        }
        for r in later {
            decode_run(recs, &items[r], run);
            self.apply_run(ks, run);
        }
        for key in doomed {
            ks.map.remove(key);
        }
    }

    /// Every operation of a batch on one key (`run`, in WAL order, not
    /// empty), with one lookup of the key: the page-LSN skip rule per
    /// record, the changes, and then the live count and the expiry index
    /// moved once, from the key's state before the run to its state after.
    fn apply_run(&self, ks: &mut Keyspace, run: &[Planned<'_>]) {
        let Some(key) = run.first().and_then(|p| p.op.key()) else {
            return;
        };
        let Keyspace { map, expires } = ks;
        let (before, after) = if key.len() <= INLINE_LEN {
            match map.entry(Str::new(key)) {
                btree_map::Entry::Occupied(mut o) => {
                    let (before, after, gone) = self.run_found(o.get_mut(), run, None);
                    if gone {
                        o.remove();
                    }
                    (before, after)
                }
                btree_map::Entry::Vacant(v) => {
                    let Some((first, rest, decided)) = first_live(run) else {
                        return;
                    };
                    let (_, after, gone) = self.run_found(v.insert(first), rest, decided);
                    if gone {
                        map.remove(key);
                    }
                    ((false, 0), after)
                }
            }
        } else if let Some(e) = map.get_mut(key) {
            // A long key is looked up by its bytes: `Str::new` would
            // allocate for it, which only a new key needs.
            let (before, after, gone) = self.run_found(e, run, None);
            if gone {
                map.remove(key);
            }
            (before, after)
        } else {
            let Some((first, rest, decided)) = first_live(run) else {
                return;
            };
            let e = map.entry(Str::new(key)).or_insert(first);
            let (_, after, gone) = self.run_found(e, rest, decided);
            if gone {
                map.remove(key);
            }
            ((false, 0), after)
        };
        self.count_live(before.0, after.0);
        Keyspace::reindex_in(self, expires, key, before.1, after.1);
    }

    /// Apply `run` to the key's entry `e`: each record's operations are
    /// skipped when the key's LSN before that record is at or past its
    /// end (`decided`: the record already decided for, and how). Returns
    /// the key's (live, expiry) before and after, and whether the entry
    /// is left a visible deletion (the caller removes it).
    fn run_found(
        &self,
        e: &mut Entry,
        run: &[Planned<'_>],
        mut decided: Option<(u64, bool)>,
    ) -> ((bool, u64), (bool, u64), bool) {
        let state = |e: &Entry| {
            let slot = &e.newest().slot;
            (slot.is_some(), slot.as_ref().map_or(0, |s| s.expire_ms))
        };
        let before = state(e);
        let mut gone = false;
        for p in run {
            let skip = match decided {
                Some((end, skip)) if end == p.end => skip,
                _ => {
                    // The snapshot holds this record's effect.
                    let skip = e.newest().lsn() >= p.end;
                    decided = Some((p.end, skip));
                    skip
                }
            };
            if skip {
                continue;
            }
            let slot = apply::apply(current_for(&p.op, &e.newest().slot), &p.op);
            gone = e.install(&self.vis, replayed(p.end, slot)).1;
        }
        (before, state(e), gone)
    }

    /// Apply the operations of the record ending at `end`, visible at once.
    pub fn apply_replayed(&self, end: Lsn, ops: &[Op<'_>]) {
        let mut ks = self.write_lock();
        self.apply_locked(&mut ks, end, ops, &mut Vec::new());
    }

    /// One record's operations under the write lock; `skip` is scratch
    /// space the caller keeps across a batch.
    fn apply_locked(&self, ks: &mut Keyspace, end: Lsn, ops: &[Op<'_>], skip: &mut Vec<bool>) {
        // Decided before anything is applied: afterwards a key this record
        // changed has the record's own LSN.
        skip.clear();
        skip.extend(ops.iter().map(|op| {
            op.key()
                .and_then(|k| ks.map.get(k))
                .is_some_and(|e| e.newest().lsn() >= end.0)
        }));
        for (i, op) in ops.iter().enumerate() {
            if skip[i] {
                continue;
            }
            let Some(key) = op.key() else {
                // FLUSHALL (rare): the keys this record applied before it.
                let applied: HashSet<&[u8]> = ops[..i]
                    .iter()
                    .zip(skip.iter())
                    .filter(|(_, s)| !**s)
                    .filter_map(|(o, _)| o.key())
                    .collect();
                self.flush_replayed(ks, end, &applied);
                continue;
            };
            // A replacement does not need the current state (no clone).
            let current = match op {
                Op::Set { .. } | Op::Put { .. } | Op::Del { .. } => None,
                _ => ks.map.get(key).and_then(|e| e.newest().slot.clone()),
            };
            let next = apply::apply(current, op);
            ks.install(self, key, end.0, Level::Immediate, next);
        }
    }

    /// FLUSHALL replayed: every key goes but those a snapshot took after
    /// this record (LSN past `end`, or at `end` without this record having
    /// touched them before the flush).
    fn flush_replayed(&self, ks: &mut Keyspace, end: Lsn, applied: &HashSet<&[u8]>) {
        let doomed: Vec<Vec<u8>> = ks
            .map
            .iter()
            .filter(|(k, e)| {
                let lsn = e.newest().lsn();
                lsn < end.0 || (lsn == end.0 && applied.contains(k.as_bytes()))
            })
            .map(|(k, _)| k.to_vec())
            .collect();
        for k in doomed {
            ks.install(self, &k, end.0, Level::Immediate, None);
        }
    }
}

/// What applying a batch needs beyond its records, prepared without the
/// store's lock (on the reading thread when redo reads ahead, which has
/// little else to do with records of many operations): every operation
/// on a single key as an [`Item`], sorted by key between FLUSHALLs; the
/// records applied in WAL order (those holding a FLUSHALL); and the first
/// record that does not decode. Items point into the payloads rather than
/// borrow them, so a plan travels with its batch between threads and
/// keeps its buffers when refilled.
#[derive(Debug, Default)]
struct Plan {
    /// The operations on single keys, sorted by key within each
    /// [`Step::Sorted`] range, WAL order kept for one key.
    items: Vec<Item>,
    /// The radix sort's second buffer.
    scratch: Vec<Item>,
    /// What to apply, in order.
    steps: Vec<Step>,
    /// Key operations in the records planned (those before `failed`).
    ops: u64,
    /// The index of the first record that does not decode, and why: it
    /// and the records after it are not planned.
    failed: Option<(usize, ApplyError)>,
}

/// One step of a [`Plan`].
#[derive(Debug, Clone)]
enum Step {
    /// These items, one key's run at a time.
    Sorted(std::ops::Range<usize>),
    /// The record at this index of the batch, one operation at a time in
    /// WAL order: it holds a FLUSHALL, which touches every key.
    InOrder(usize),
}

/// One operation on a single key, as a [`Plan`] keeps it: 24 bytes, so
/// the sort moves little.
#[derive(Debug, Clone, Copy, Default)]
struct Item {
    /// The key's first 16 bytes (zero-padded) as two big-endian words:
    /// most keys differ there, so sorting looks at these words alone (the
    /// bytes decide only a tie; zero padding and then the bytes keep byte
    /// order, the map's).
    order: [u64; 2],
    /// Its record's index in the batch.
    rec: u32,
    /// Where the operation starts in its record's payload.
    at: u32,
}

impl Item {
    fn new(key: &[u8], rec: u32, at: u32) -> Item {
        let mut head = [0u8; 16];
        let n = key.len().min(16);
        head[..n].copy_from_slice(&key[..n]);
        let (hi, lo) = head.split_at(8);
        let word = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or_default());
        Item {
            order: [word(hi), word(lo)],
            rec,
            at,
        }
    }
}

/// Below this many items a plain stable sort is cheaper than counting.
const RADIX_MIN_ITEMS: usize = 64;

impl Plan {
    /// Plan `recs` (a batch, in WAL order): decode every key-value
    /// record's operations, list those on single keys and sort them by
    /// key, up to the first record that does not decode.
    fn prepare(&mut self, recs: &[RecordRef<'_>]) {
        self.items.clear();
        self.steps.clear();
        self.ops = 0;
        self.failed = None;
        let mut from = 0;
        for (i, rec) in recs.iter().enumerate() {
            if rec.rmid != RM_KV {
                continue;
            }
            let index = u32::try_from(i).expect("fewer than 2^32 records in a batch");
            let (start, mut ops, mut flush) = (self.items.len(), 0u64, false);
            let items = &mut self.items;
            let decoded = record::decode_each(rec.payload, |at, op| {
                ops += 1;
                match op.key() {
                    Some(key) => items.push(Item::new(key, index, at)),
                    None => flush = true,
                }
            });
            if let Err(source) = decoded {
                self.items.truncate(start);
                self.failed = Some((
                    i,
                    ApplyError {
                        lsn: rec.lsn,
                        source,
                    },
                ));
                break;
            }
            self.ops += ops;
            if flush {
                self.items.truncate(start);
                self.close(from, recs);
                self.steps.push(Step::InOrder(i));
                from = self.items.len();
            }
        }
        self.close(from, recs);
    }

    /// Sort the items from `from` on and make them a step.
    fn close(&mut self, from: usize, recs: &[RecordRef<'_>]) {
        let to = self.items.len();
        if from < to {
            sort_items(&mut self.items[from..to], &mut self.scratch, recs);
            self.steps.push(Step::Sorted(from..to));
        }
    }
}

/// Sort `items` by key, stably (one key's operations stay in WAL order):
/// a radix sort on their keys' first 16 bytes, then the rare runs of
/// equal heads whose keys differ by their whole keys.
fn sort_items(items: &mut [Item], scratch: &mut Vec<Item>, recs: &[RecordRef<'_>]) {
    radix_sort(items, scratch);
    let key = |it: &Item| key_of(recs, it);
    for same in items.chunk_by_mut(|a, b| a.order == b.order) {
        if let Some((first, rest)) = same.split_first() {
            let k = key(first);
            if rest.iter().any(|it| key(it) != k) {
                same.sort_by(|a, b| key(a).cmp(key(b)));
            }
        }
    }
}

/// Stable least-significant-digit radix sort of `items` by `order`, one
/// pass per byte that is not the same in every item: keys that share a
/// prefix (most do: `user:`, `key:0000...`) cost no pass for it, and a
/// pass is a count and a copy, so the sort costs tens of instructions per
/// item where comparing sorts cost hundreds.
fn radix_sort(items: &mut [Item], scratch: &mut Vec<Item>) {
    if items.len() < RADIX_MIN_ITEMS {
        items.sort_by_key(|it| it.order);
        return;
    }
    let (mut all, mut any) = ([u64::MAX; 2], [0u64; 2]);
    for it in items.iter() {
        for w in 0..2 {
            all[w] &= it.order[w];
            any[w] |= it.order[w];
        }
    }
    scratch.clear();
    scratch.resize(items.len(), Item::default());
    let mut in_scratch = false;
    for w in [1, 0] {
        let differ = all[w] ^ any[w];
        for shift in (0..64).step_by(8) {
            if (differ >> shift) & 0xff == 0 {
                continue;
            }
            if in_scratch {
                radix_pass(scratch, items, w, shift);
            } else {
                radix_pass(items, scratch, w, shift);
            }
            in_scratch = !in_scratch;
        }
    }
    if in_scratch {
        items.copy_from_slice(scratch);
    }
}

/// One pass of [`radix_sort`]: `from` into `to` by the byte of word `w`
/// at `shift`, stably.
fn radix_pass(from: &[Item], to: &mut [Item], w: usize, shift: u32) {
    let digit = |it: &Item| ((it.order[w] >> shift) & 0xff) as usize;
    let mut at = [0usize; 256];
    for it in from {
        at[digit(it)] += 1;
    }
    let mut sum = 0;
    for slot in at.iter_mut() {
        let n = *slot;
        *slot = sum;
        sum += n;
    }
    for it in from {
        let d = digit(it);
        to[at[d]] = *it;
        at[d] += 1;
    }
}

/// How a batch's sorted operations find their keys in the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// Walk when the batch is dense in the map, else descend.
    Auto,
    /// One descent from the root per key ([`Store::apply_sorted`]).
    #[cfg_attr(not(test), allow(dead_code))] // Tests pin the lookup.
    Descend,
    /// One cursor walking from key to key ([`Store::apply_walking`]).
    #[cfg_attr(not(test), allow(dead_code))]
    Walk,
}

/// A sorted batch is applied by walking the map ([`Lookup::Auto`]) when
/// it holds at least one operation per this many keys of the map: then
/// consecutive keys are an entry or two apart, and stepping over them
/// costs less than a descent from the root (~7 nodes of ~8 keys each for
/// a million keys). Measured: 131 k random keys over 100 k, walking took
/// the applying thread from ~2,300 to ~1,260 instructions per change; but
/// over 1 M keys (~7 entries apart) it was ~10 % slower than descending
/// (1.68 against 1.86 M changes per CPU-second of the applying thread):
/// a walk reads every key it steps over, leaf after leaf.
const WALK_GAP: usize = 2;
/// A walk steps over at most this many entries to reach the next key of
/// the batch; further (the batch's keys bunched in places), it descends.
const WALK_STEPS_MAX: usize = 32;

/// The key of `it`'s operation, from its record's payload.
fn key_of<'p>(recs: &[RecordRef<'p>], it: &Item) -> &'p [u8] {
    recs.get(it.rec as usize)
        .and_then(|r| record::key_at(r.payload, it.at as usize))
        .unwrap_or_default()
}

/// The end of the run of operations on one key that starts at
/// `items[i]` (sorted, so they are consecutive): the index after it.
fn run_end(recs: &[RecordRef<'_>], items: &[Item], i: usize) -> usize {
    let Some(head) = items.get(i) else {
        return i;
    };
    let mut j = i + 1;
    // Another key: its head differs, or (rarely) its bytes do.
    while let Some(it) = items.get(j).filter(|it| it.order == head.order) {
        if key_of(recs, it) != key_of(recs, head) {
            break;
        }
        j += 1;
    }
    j
}

/// Decode the operations of `items` (one key's run) into `run`, emptied
/// first.
fn decode_run<'p>(recs: &[RecordRef<'p>], items: &[Item], run: &mut Vec<Planned<'p>>) {
    run.clear();
    for it in items {
        let rec = &recs[it.rec as usize];
        let op = record::decode_op_at(rec.payload, it.at as usize)
            .expect("an operation decoded when the batch was planned");
        run.push(Planned { end: rec.end.0, op });
    }
}

/// One operation of a key's run in [`Store::apply_sorted`]: the end of
/// its record and the operation, decoded from the payload.
struct Planned<'p> {
    end: u64,
    op: Op<'p>,
}

/// A version replay installs: written by the record ending at `end`,
/// visible at once.
fn replayed(end: u64, slot: Option<value::Slot>) -> Version {
    Version::new(end, Level::Immediate, slot)
}

/// For a key that is not in the map: its first version from `run` (the
/// operations before it leave the key absent: deleting what does not
/// exist keeps nothing), the operations after it, and the skip decision
/// of its record (never skipped: the key was absent before it). `None`
/// when no operation leaves a value.
#[allow(clippy::type_complexity)]
fn first_live<'r, 'p>(
    run: &'r [Planned<'p>],
) -> Option<(Entry, &'r [Planned<'p>], Option<(u64, bool)>)> {
    run.iter().enumerate().find_map(|(i, p)| {
        let slot = apply::apply(None, &p.op)?;
        Some((
            Entry::new(replayed(p.end, Some(slot))),
            &run[i + 1..],
            Some((p.end, false)),
        ))
    })
}

/// The state `op` is applied to: none for a replacement (no clone).
fn current_for(op: &Op<'_>, newest: &Option<value::Slot>) -> Option<value::Slot> {
    match op {
        Op::Set { .. } | Op::Put { .. } | Op::Del { .. } => None,
        _ => newest.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use proptest::prelude::*;

    use super::*;
    use crate::store::map::ScannedKey;
    use crate::store::value::{Slot, Value};

    /// Keys from a small set, so operations meet each other.
    fn key() -> impl Strategy<Value = Cow<'static, [u8]>> {
        prop_oneof![Just(&b"a"[..]), Just(&b"b"[..]), Just(&b"c"[..])].prop_map(Cow::Borrowed)
    }

    fn item() -> impl Strategy<Value = Cow<'static, [u8]>> {
        prop_oneof![Just(&b"x"[..]), Just(&b"y"[..]), Just(&b"z"[..])].prop_map(Cow::Borrowed)
    }

    fn items() -> impl Strategy<Value = Vec<Cow<'static, [u8]>>> {
        proptest::collection::vec(item(), 1..3)
    }

    /// Any operation on those keys, valid or not for the key's type: the
    /// rule must hold whatever the primary logged.
    fn op() -> impl Strategy<Value = Op<'static>> {
        op_on(|| key().boxed())
    }

    /// More keys, one of them too long to be stored inline (looked up by
    /// its bytes, allocated only when new).
    fn wide_key() -> BoxedStrategy<Cow<'static, [u8]>> {
        prop_oneof![
            Just(&b"a"[..]),
            Just(&b"b"[..]),
            Just(&b"c"[..]),
            Just(&b"d"[..]),
            Just(&b"a key longer than twenty-two bytes"[..]),
        ]
        .prop_map(Cow::Borrowed)
        .boxed()
    }

    /// Any operation on the keys `key` draws from.
    fn op_on(key: fn() -> BoxedStrategy<Cow<'static, [u8]>>) -> impl Strategy<Value = Op<'static>> {
        prop_oneof![
            key().prop_map(|key| Op::Del { key }),
            (key(), item()).prop_map(|(key, value)| Op::Set { key, value }),
            (key(), any::<u8>()).prop_map(|(key, e)| Op::Put {
                key,
                value: Value::string(b"p"),
                expire_ms: u64::from(e),
            }),
            (key(), 0u64..3).prop_map(|(key, at_ms)| Op::Expire { key, at_ms }),
            (key(), proptest::collection::vec((item(), item()), 1..3))
                .prop_map(|(key, pairs)| Op::HSet { key, pairs }),
            (key(), items()).prop_map(|(key, fields)| Op::HDel { key, fields }),
            (key(), any::<bool>(), items()).prop_map(|(key, front, elems)| Op::Push {
                key,
                front,
                elems
            }),
            (key(), any::<bool>(), 0u64..3).prop_map(|(key, front, count)| Op::Pop {
                key,
                front,
                count
            }),
            (key(), 0u64..3, item()).prop_map(|(key, index, elem)| Op::LSet { key, index, elem }),
            (key(), -2i64..3, item()).prop_map(|(key, count, elem)| Op::LRem { key, count, elem }),
            (key(), 0u64..3, 0u64..4).prop_map(|(key, start, end)| Op::LTrim { key, start, end }),
            (key(), items()).prop_map(|(key, members)| Op::SAdd { key, members }),
            (key(), items()).prop_map(|(key, members)| Op::SRem { key, members }),
            Just(Op::Flush),
        ]
    }

    /// The WAL a test primary wrote: each record's end and operations.
    type Log = Vec<(Lsn, Vec<Op<'static>>)>;

    /// Run `records` on a primary, one record each, taking a fuzzy
    /// snapshot that starts after `redo_at` records and lets
    /// `between[i]` more records in after its i-th key. Returns the
    /// primary, the log (end LSN, operations), the redo point and the
    /// snapshot.
    fn run_primary(
        records: &[Vec<Op<'static>>],
        redo_at: usize,
        between: &[usize],
    ) -> (Store, Log, Lsn, Vec<ScannedKey>) {
        let primary = Store::new();
        let mut log = Vec::new();
        let mut next = records.iter().enumerate();
        let mut write = |n: usize, log: &mut Log| {
            for (i, rec) in next.by_ref().take(n) {
                let mut t = primary.write_at(0);
                for op in rec {
                    t.apply(op.clone());
                }
                let ops = t.ops().to_vec();
                let end = Lsn(8 * (i as u64 + 1));
                t.commit(end, Level::Immediate);
                log.push((end, ops));
            }
        };
        write(redo_at, &mut log);
        let redo = log.last().map_or(Lsn(0), |(end, _)| *end);
        let mut snapshot = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        let mut step = 0;
        loop {
            let (keys, last) = primary.scan(after.as_deref(), 1);
            snapshot.extend(keys);
            write(between.get(step).copied().unwrap_or(0), &mut log);
            step += 1;
            match last {
                Some(l) => after = Some(l),
                None => break,
            }
        }
        write(usize::MAX, &mut log);
        (primary, log, redo, snapshot)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The property checkpoints rely on: a snapshot scanned while
        /// writes go on, plus the WAL replayed from its redo point, is the
        /// primary's store; and so is replaying all of the WAL.
        #[test]
        fn a_fuzzy_snapshot_plus_replay_is_the_primary(
            records in proptest::collection::vec(proptest::collection::vec(op(), 1..4), 1..30),
            redo_at in 0usize..30,
            between in proptest::collection::vec(0usize..4, 0..6),
        ) {
            let (primary, log, redo, snapshot) = run_primary(&records, redo_at, &between);
            let recovered = Store::new();
            for k in &snapshot {
                recovered.load_base(k.key.clone(), k.lsn, k.slot.clone());
            }
            for (end, ops) in log.iter().filter(|(end, _)| *end > redo) {
                recovered.apply_replayed(*end, ops);
            }
            prop_assert_eq!(recovered.dump_visible(), primary.dump_visible());
            prop_assert_eq!(recovered.len(), primary.len());
            prop_assert_eq!(recovered.expiring(), primary.expiring());
            let fresh = Store::new();
            for (end, ops) in &log {
                fresh.apply_replayed(*end, ops);
            }
            prop_assert_eq!(fresh.dump_visible(), primary.dump_visible());
            // The same WAL as records, applied in batches, ends alike.
            let batched = Store::new();
            let recs: Vec<Record> = log.iter().map(|(end, ops)| Record {
                lsn: Lsn(end.0 - 8),
                end: *end,
                prev: Lsn::INVALID,
                rmid: RM_KV,
                info: 0,
                payload: record::encode(0, ops),
            }).collect();
            for batch in recs.chunks(3) {
                batched.apply_records(batch).unwrap();
            }
            prop_assert_eq!(batched.dump_visible(), primary.dump_visible());
            prop_assert_eq!(batched.len(), primary.len());
            // And in batches over the snapshot (the skip rule of records
            // of one operation, looked up once).
            let over = Store::new();
            for k in &snapshot {
                over.load_base(k.key.clone(), k.lsn, k.slot.clone());
            }
            let after: Vec<Record> = recs.iter().filter(|r| r.end > redo).cloned().collect();
            for batch in after.chunks(2) {
                over.apply_records(batch).unwrap();
            }
            prop_assert_eq!(over.dump_visible(), primary.dump_visible());
            prop_assert_eq!(over.expiring(), primary.expiring());
            // Replaying a record twice changes nothing.
            for (end, ops) in &log {
                fresh.apply_replayed(*end, ops);
            }
            prop_assert_eq!(fresh.dump_visible(), primary.dump_visible());
        }
    }

    /// `log` as the WAL records redo reads.
    fn as_records(log: &Log) -> Vec<Record> {
        log.iter()
            .map(|(end, ops)| Record {
                lsn: Lsn(end.0 - 8),
                end: *end,
                prev: Lsn::INVALID,
                rmid: RM_KV,
                info: 0,
                payload: record::encode(0, ops),
            })
            .collect()
    }

    /// A store's keys and values, key count, expiry count and expiry index.
    type Seen = (Vec<(Vec<u8>, Slot)>, u64, u64, Vec<Vec<u8>>);

    fn seen(s: &Store) -> Seen {
        (
            s.dump_visible(),
            s.len(),
            s.expiring(),
            s.expired_keys(u64::MAX, usize::MAX),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// A batch is applied sorted by key (one lookup per key, same-key
        /// operations in WAL order, keys found by descents or by a walk);
        /// that ends where applying its records one at a time, each
        /// operation in WAL order, does: from an empty store and over a
        /// fuzzy snapshot (the skip rule per record and key), with keys
        /// repeated within and across records, deletions, expiries,
        /// hashes, lists, sets and FLUSHALL, in any batch size.
        #[test]
        fn a_batch_applied_in_key_order_ends_as_wal_order_does(
            records in proptest::collection::vec(
                proptest::collection::vec(op_on(wide_key), 1..5), 1..40),
            redo_at in 0usize..40,
            between in proptest::collection::vec(0usize..4, 0..8),
            batch in 1usize..48,
        ) {
            let (_, log, redo, snapshot) = run_primary(&records, redo_at, &between);
            let recs = as_records(&log);
            for (from, snap) in [(Lsn(0), &[][..]), (redo, &snapshot[..])] {
                let wal_order = Store::new();
                for k in snap {
                    wal_order.load_base(k.key.clone(), k.lsn, k.slot.clone());
                }
                for (end, ops) in log.iter().filter(|(end, _)| *end > from) {
                    wal_order.apply_replayed(*end, ops);
                }
                let after: Vec<Record> = recs.iter().filter(|r| r.end > from).cloned().collect();
                // Each key found by a descent, by a walk, or as chosen.
                for lookup in [Lookup::Auto, Lookup::Descend, Lookup::Walk] {
                    let sorted = Store::new();
                    for k in snap {
                        sorted.load_base(k.key.clone(), k.lsn, k.slot.clone());
                    }
                    for b in after.chunks(batch) {
                        sorted.apply_refs_by(b.iter().map(Record::as_ref), lookup).unwrap();
                    }
                    prop_assert_eq!(seen(&sorted), seen(&wal_order), "{:?}", lookup);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A walk over a map much larger than its batch (keys far apart,
        /// so it also descends past its step limit), finding some keys,
        /// passing absent ones (inserted afterwards) and deleting others,
        /// ends where WAL order does.
        #[test]
        fn a_walk_over_a_large_map_ends_as_wal_order_does(
            writes in proptest::collection::vec((0u32..1200, 0u8..4), 1..300),
            per_record in 1usize..40,
        ) {
            let key = |k: u32| format!("key:{k:012}").into_bytes();
            let ops: Vec<Op<'static>> = writes.iter().map(|&(k, what)| {
                let key = Cow::Owned(key(k));
                match what {
                    0 => Op::Del { key },
                    1 => Op::Expire { key, at_ms: 7 },
                    2 => Op::SAdd { key, members: vec![Cow::Borrowed(b"m")] },
                    _ => Op::Set { key, value: Cow::Borrowed(b"v") },
                }
            }).collect();
            let log: Log = ops.chunks(per_record).enumerate()
                .map(|(i, o)| (Lsn(8 * (i as u64 + 2)), o.to_vec()))
                .collect();
            let recs = as_records(&log);
            let base = |s: &Store| for k in (0..1000).step_by(2) {
                s.load_base(key(k), Lsn(8), Slot::new(Value::string(b"old")));
            };
            let wal_order = Store::new();
            base(&wal_order);
            for (end, ops) in &log {
                wal_order.apply_replayed(*end, ops);
            }
            for lookup in [Lookup::Walk, Lookup::Descend] {
                let batched = Store::new();
                base(&batched);
                batched.apply_refs_by(recs.iter().map(Record::as_ref), lookup).unwrap();
                prop_assert_eq!(seen(&batched), seen(&wal_order), "{:?}", lookup);
            }
        }
    }

    /// Keys that make the plan's sort work: short ones over a tiny
    /// alphabet with zero bytes (equal zero-padded heads, different keys),
    /// and long ones sharing their first 16 bytes and more.
    fn sort_key() -> impl Strategy<Value = Vec<u8>> {
        let long = |tail: Vec<u8>| [&b"user:0000000000000"[..], &tail].concat();
        prop_oneof![
            proptest::collection::vec(prop_oneof![Just(0u8), Just(b'a'), Just(b'b')], 0..20),
            proptest::collection::vec(prop_oneof![Just(0u8), Just(b'z')], 0..6).prop_map(long),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A plan lists a batch's operations sorted by their keys' bytes,
        /// one key's operations in WAL order, whether few (a comparison
        /// sort) or many (the radix sort and its tie-break on whole keys);
        /// a FLUSHALL splits the batch into separately sorted steps.
        #[test]
        fn a_plan_sorts_by_key_bytes_and_keeps_wal_order_per_key(
            records in proptest::collection::vec(
                proptest::collection::vec(
                    prop_oneof![20 => sort_key().prop_map(Some), 1 => Just(None)], 1..8),
                1..80),
        ) {
            let ops: Vec<Vec<Op<'static>>> = records.iter().map(|rec| {
                rec.iter().map(|k| match k {
                    Some(k) => Op::Del { key: Cow::Owned(k.clone()) },
                    None => Op::Flush,
                }).collect()
            }).collect();
            let recs = as_records(&ops.iter().enumerate()
                .map(|(i, o)| (Lsn(8 * (i as u64 + 1)), o.clone()))
                .collect::<Vec<_>>());
            let refs: Vec<RecordRef<'_>> = recs.iter().map(Record::as_ref).collect();
            let mut plan = Plan::default();
            plan.prepare(&refs);
            prop_assert!(plan.failed.is_none());
            prop_assert_eq!(plan.ops, records.iter().map(|r| r.len() as u64).sum::<u64>());
            // Expected: each segment between records with a FLUSHALL,
            // (key, record, position) stably sorted by key.
            let mut expected = Vec::new();
            let mut segment: Vec<(Vec<u8>, usize, usize)> = Vec::new();
            for (i, rec) in records.iter().enumerate() {
                if rec.iter().any(Option::is_none) {
                    segment.sort_by(|a, b| a.0.cmp(&b.0));
                    expected.push((std::mem::take(&mut segment), None));
                    expected.push((Vec::new(), Some(i)));
                    continue;
                }
                segment.extend(rec.iter().enumerate().map(|(j, k)| (k.clone().unwrap_or_default(), i, j)));
            }
            segment.sort_by(|a, b| a.0.cmp(&b.0));
            expected.push((segment, None));
            let mut want = Vec::new();
            for (seg, flush) in expected {
                match flush {
                    Some(i) => want.push(format!("in order {i}")),
                    None if seg.is_empty() => {}
                    None => want.push(format!("{seg:?}")),
                }
            }
            let mut got = Vec::new();
            for step in &plan.steps {
                match step {
                    Step::InOrder(i) => got.push(format!("in order {i}")),
                    Step::Sorted(range) => {
                        let listed: Vec<(Vec<u8>, usize, usize)> = plan.items[range.clone()].iter().map(|it| {
                            let rec = refs[it.rec as usize];
                            let key = record::key_at(rec.payload, it.at as usize).unwrap_or_default().to_vec();
                            // The operation's position in its record.
                            let mut pos = 0;
                            record::decode_each(rec.payload, |at, _| if at < it.at { pos += 1 }).unwrap();
                            (key, it.rec as usize, pos)
                        }).collect();
                        got.push(format!("{listed:?}"));
                    }
                }
            }
            prop_assert_eq!(got, want);
        }
    }

    /// List operations by index on one key, read by the snapshot after a
    /// dummy key: the case where replay starts from an absent key that the
    /// primary still had at the redo point.
    fn list_op() -> impl Strategy<Value = Op<'static>> {
        let a = || Just(Cow::Borrowed(&b"a"[..]));
        let item = || prop_oneof![Just(&b"x"[..]), Just(&b"y"[..])].prop_map(Cow::Borrowed);
        prop_oneof![
            (a(), any::<bool>(), proptest::collection::vec(item(), 1..3))
                .prop_map(|(key, front, elems)| Op::Push { key, front, elems }),
            (a(), any::<bool>(), 1u64..3).prop_map(|(key, front, count)| Op::Pop {
                key,
                front,
                count
            }),
            (a(), 0u64..3, item()).prop_map(|(key, index, elem)| Op::LSet { key, index, elem }),
            (a(), -1i64..2, item()).prop_map(|(key, count, elem)| Op::LRem { key, count, elem }),
            (a(), 0u64..2, 1u64..3).prop_map(|(key, start, end)| Op::LTrim { key, start, end }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn replay_from_an_absent_key_ends_where_the_primary_did(
            ops in proptest::collection::vec(list_op(), 1..12),
            redo_at in 1usize..6,
        ) {
            let mut records = vec![vec![Op::Set {
                key: Cow::Borrowed(b"0"),
                value: Cow::Borrowed(b"v"),
            }]];
            records.extend(ops.into_iter().map(|op| vec![op]));
            let (primary, log, redo, snapshot) = run_primary(&records, redo_at, &[records.len()]);
            let recovered = Store::new();
            for k in snapshot {
                recovered.load_base(k.key, k.lsn, k.slot);
            }
            for (end, ops) in log.iter().filter(|(end, _)| *end > redo) {
                recovered.apply_replayed(*end, ops);
            }
            prop_assert_eq!(recovered.dump_visible(), primary.dump_visible());
        }
    }

    #[test]
    fn a_batch_stops_at_a_record_that_does_not_decode() {
        let rec = |end: u64, payload: Vec<u8>| Record {
            lsn: Lsn(end - 8),
            end: Lsn(end),
            prev: Lsn::INVALID,
            rmid: RM_KV,
            info: 0,
            payload,
        };
        let set = |k: &'static [u8]| {
            record::encode(
                0,
                &[Op::Set {
                    key: Cow::Borrowed(k),
                    value: Cow::Borrowed(b"v"),
                }],
            )
        };
        let s = Store::new();
        let recs = [
            rec(8, set(b"a")),
            rec(16, vec![1, 2, 3]),
            rec(24, set(b"c")),
        ];
        let err = s.apply_records(&recs).unwrap_err();
        assert_eq!(err.lsn, Lsn(8));
        let keys: Vec<Vec<u8>> = s.dump_visible().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [b"a".to_vec()],
            "the record before applied, none after"
        );
    }

    /// A real WAL of `n` SETs (1 MB segments, so it spans several), one
    /// key-value record that does not decode, then one more SET. Returns
    /// the reader's configuration, the start of the WAL and of the bad
    /// record.
    fn wal_with_a_bad_record(
        dir: &std::path::Path,
        n: u64,
    ) -> (crate::wal::ReaderConfig, Lsn, Lsn) {
        use crate::wal::{initial_lsn, Wal, WalConfig};
        use crate::{TimelineHistory, TimelineId, WalSegSize};
        let seg = WalSegSize::new(1 << 20).unwrap();
        let start = initial_lsn(seg);
        let wal = Wal::start(WalConfig::new(
            dir,
            7,
            TimelineId(1),
            seg,
            start,
            Lsn::INVALID,
        ))
        .unwrap();
        let set = |i: u64| {
            let key = format!("key:{:012}", i % 1000);
            record::encode(
                i,
                &[Op::Set {
                    key: Cow::Owned(key.into_bytes()),
                    value: Cow::Borrowed(b"vvvvvvvvvvvvvvvv"),
                }],
            )
        };
        for i in 0..n {
            wal.insert(RM_KV, 0, &set(i)).unwrap();
        }
        let bad = wal.insert_record(RM_KV, 0, &[1, 2, 3]).unwrap().start;
        wal.insert(RM_KV, 0, &set(n)).unwrap();
        wal.shutdown().unwrap();
        let cfg = crate::wal::ReaderConfig {
            dir: dir.to_path_buf(),
            system_id: 7,
            seg_size: seg,
            history: TimelineHistory::root(TimelineId(1)),
        };
        (cfg, start, bad)
    }

    /// Both redo runs apply every record before one that does not decode,
    /// report each applied record once, in order, and leave the reader at
    /// that record (so it is read, and refused, again; never skipped).
    #[test]
    fn redo_stops_at_a_record_that_does_not_apply_and_stays_there() {
        let dir = tempfile::tempdir().unwrap();
        let n = 30_000;
        let (cfg, start, bad) = wal_with_a_bad_record(dir.path(), n);
        for read_ahead in [false, true] {
            let store = Store::new();
            let mut reader = WalReader::new(cfg.clone(), start);
            let never = AtomicBool::new(false);
            let mut seen = Vec::new();
            let report = |b: &RecordBatch, _| seen.extend(b.iter().map(|r| r.lsn));
            let ran = match read_ahead {
                true => redo_read_ahead(&store, &mut reader, &never, BatchSize::SHARED, report),
                false => redo_inline(&store, &mut reader, &never, BatchSize::SHARED, report),
            };
            assert_eq!(
                ran.apply.map(|e| e.lsn),
                Some(bad),
                "read ahead: {read_ahead}"
            );
            assert!(ran.read.is_none());
            assert_eq!(seen.len() as u64, n);
            assert!(seen.windows(2).all(|w| w[0] < w[1]));
            assert!(seen.last().is_some_and(|l| *l < bad));
            assert_eq!(reader.next_lsn(), bad);
            assert_eq!(store.len(), 1000);
            // Again: the same record refused, nothing more applied.
            let again = redo_inline(&store, &mut reader, &never, BatchSize::SHARED, |_, _| {
                panic!("applied past it")
            });
            assert_eq!(again.apply.map(|e| e.lsn), Some(bad));
        }
    }

    /// A batch never holds more records than its size allows: a hot
    /// standby's reader waits for one batch's hold of the write lock at
    /// most. Every record is applied, in batches of the size (the last
    /// one shorter).
    #[test]
    fn redo_inline_applies_in_batches_of_at_most_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let n = 1000;
        let (cfg, start, bad) = wal_with_a_bad_record(dir.path(), n);
        for size in [BatchSize::STREAM, BatchSize::SHARED] {
            let store = Store::new();
            let mut reader = WalReader::new(cfg.clone(), start);
            reader.set_limit(Some(bad));
            let never = AtomicBool::new(false);
            let mut lens = Vec::new();
            let ran = redo_inline(&store, &mut reader, &never, size, |b, _| lens.push(b.len()));
            assert!(ran.apply.is_none());
            assert_eq!(lens.iter().sum::<usize>() as u64, n, "{size:?}");
            assert!(
                lens.iter().all(|l| *l <= size.records),
                "{size:?}: {lens:?}"
            );
            let full = lens.len() - 1;
            assert!(
                lens[..full].iter().all(|l| *l == size.records),
                "{size:?}: {lens:?}"
            );
            assert_eq!(reader.next_lsn(), bad);
        }
    }

    /// Read ahead over a WAL that ends cleanly: everything applied, the
    /// reader at the end, the end-of-WAL error returned; a stop flag set
    /// beforehand applies nothing.
    #[test]
    fn redo_read_ahead_runs_to_the_end_of_wal_or_stops_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, start, bad) = wal_with_a_bad_record(dir.path(), 5000);
        let store = Store::new();
        let mut reader = WalReader::new(cfg.clone(), start);
        // The limit stands in for the end of WAL: the bad record is past it.
        reader.set_limit(Some(bad));
        let never = AtomicBool::new(false);
        let mut records = 0;
        let ran = redo_read_ahead(&store, &mut reader, &never, BatchSize::ALONE, |b, _| {
            records += b.len()
        });
        assert!(ran.apply.is_none());
        assert!(matches!(
            ran.read.map(|e| e.kind),
            Some(crate::wal::ReadErrorKind::LimitReached { .. })
        ));
        assert_eq!((records, reader.next_lsn()), (5000, bad));
        let stop = AtomicBool::new(true);
        let mut reader = WalReader::new(cfg, start);
        let ran = redo_read_ahead(
            &Store::new(),
            &mut reader,
            &stop,
            BatchSize::ALONE,
            |_, _| panic!("applied"),
        );
        assert!(ran.read.is_none() && ran.apply.is_none());
        assert_eq!(reader.next_lsn(), start);
    }

    #[test]
    fn the_counter_example_needs_the_explicit_delete() {
        // The primary's list [x] gains y at index 1 while a fuzzy
        // snapshot misses the key: replay starts from nothing, where the
        // same operations leave [y] behind unless emptying the list is
        // logged as a deletion.
        let l = |k: &'static [u8]| Cow::Borrowed(k);
        let records = vec![
            // The snapshot reads "0", then the rest runs, then it looks
            // past "0" and finds no "a".
            vec![Op::Set {
                key: l(b"0"),
                value: l(b"v"),
            }],
            vec![Op::Push {
                key: l(b"a"),
                front: false,
                elems: vec![l(b"x")],
            }],
            vec![Op::Push {
                key: l(b"a"),
                front: false,
                elems: vec![l(b"a")],
            }],
            vec![Op::LSet {
                key: l(b"a"),
                index: 1,
                elem: l(b"b"),
            }],
            vec![Op::LRem {
                key: l(b"a"),
                count: 0,
                elem: l(b"x"),
            }],
            vec![Op::LRem {
                key: l(b"a"),
                count: 0,
                elem: l(b"b"),
            }],
        ];
        let (primary, log, redo, snapshot) = run_primary(&records, 2, &[4]);
        assert_eq!(snapshot.len(), 1);
        assert_eq!(primary.dump_visible().len(), 1, "only \"0\" is left");
        assert_eq!(log[5].1.len(), 2, "LREM that empties is followed by DEL");
        let recovered = Store::new();
        for k in snapshot {
            recovered.load_base(k.key, k.lsn, k.slot);
        }
        for (end, ops) in log.iter().filter(|(end, _)| *end > redo) {
            recovered.apply_replayed(*end, ops);
        }
        assert_eq!(recovered.dump_visible(), primary.dump_visible());
    }
}
