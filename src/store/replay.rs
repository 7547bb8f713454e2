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
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Records redo reads and applies per batch: one hold of the store's lock
/// and one hand-over between the reading and the applying thread each.
pub const REDO_BATCH_RECORDS: usize = 256;
/// ...and at most this many payload bytes per batch (large records).
pub const REDO_BATCH_BYTES: usize = 1 << 20;
/// Batches the reading thread may be ahead of the applying one: enough to
/// ride over a scheduling hiccup of either, little memory (at most this
/// many times [`REDO_BATCH_BYTES`] plus two batches).
const READ_AHEAD_BATCHES: usize = 4;

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

/// Redo from `reader` until a record cannot be read or applied or `stop`
/// is set, reading ahead: a second thread reads and validates batches of
/// records (the WAL's framing, CRC and copy, about a quarter of redo's
/// work) up to a few batches ahead, while this one decodes and applies
/// them, so both cores work on redo. `applied` is called after each batch
/// is applied, with the batch and how many key operations its records held
/// (the place to publish the replay position).
/// Batches go back to the reading thread for reuse: no allocation per
/// record or per batch once warm.
pub fn redo_read_ahead(
    store: &Store,
    reader: &mut WalReader,
    stop: &AtomicBool,
    mut applied: impl FnMut(&RecordBatch, u64),
) -> RedoStop {
    let (full_tx, full_rx) = crossbeam_channel::bounded::<RecordBatch>(READ_AHEAD_BATCHES);
    let (free_tx, free_rx) = crossbeam_channel::bounded::<RecordBatch>(READ_AHEAD_BATCHES + 2);
    let (read, apply) = std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("redo-read".into())
            .spawn_scoped(scope, || {
                redo_read_ahead_reader(reader, full_tx, free_rx, stop)
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
        (None, _) => redo_inline(store, reader, stop, applied),
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

/// The reading thread of [`redo_read_ahead`]: batches of records until
/// one cannot be read (returned), `stop` is set or the applier hangs up.
fn redo_read_ahead_reader(
    reader: &mut WalReader,
    full: crossbeam_channel::Sender<RecordBatch>,
    free: crossbeam_channel::Receiver<RecordBatch>,
    stop: &AtomicBool,
) -> Option<ReadError> {
    while !stop.load(Ordering::Relaxed) {
        let mut batch = free.try_recv().unwrap_or_default();
        batch.clear();
        let err = reader.read_batch(&mut batch, REDO_BATCH_RECORDS, REDO_BATCH_BYTES);
        if !batch.is_empty() && full.send(batch).is_err() {
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
    mut applied: impl FnMut(&RecordBatch, u64),
) -> RedoStop {
    let mut batch = RecordBatch::new();
    while !stop.load(Ordering::Relaxed) {
        batch.clear();
        let read = reader.read_batch(&mut batch, REDO_BATCH_RECORDS, REDO_BATCH_BYTES);
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

/// Apply `batch` and report what was applied: all of it, or the records
/// before one that does not decode (then the batch is cut there, and the
/// error returned with that record's prev-link, to read it again).
fn apply_then_report(
    store: &Store,
    batch: &mut RecordBatch,
    applied: &mut impl FnMut(&RecordBatch, u64),
) -> Result<(), (ApplyError, Lsn)> {
    let (ops, result) = store.apply_counted(batch.iter());
    let failed = result.as_ref().err().and_then(|e| {
        let i = batch.iter().position(|r| r.lsn == e.lsn)?;
        Some((i, batch.get(i)?.prev))
    });
    if let Some((i, _)) = failed {
        batch.truncate(i);
    }
    if !batch.is_empty() {
        applied(batch, ops);
    }
    match (result, failed) {
        (Err(e), Some((_, prev))) => Err((e, prev)),
        (Err(e), None) => Err((e, Lsn::INVALID)),
        (Ok(()), _) => Ok(()),
    }
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
    /// decoded first, into one vector of operations borrowing the payloads
    /// (no allocation per record, no lock held while decoding), then all
    /// are applied under one hold of the write lock. A record that does
    /// not decode stops the batch there: the records before it are
    /// applied, it and those after are not.
    pub fn apply_batch(&self, batch: &RecordBatch) -> Result<(), ApplyError> {
        self.apply_refs(batch.iter())
    }

    fn apply_refs<'a>(
        &self,
        recs: impl ExactSizeIterator<Item = RecordRef<'a>>,
    ) -> Result<(), ApplyError> {
        self.apply_counted(recs).1
    }

    /// As [`apply_batch`](Self::apply_batch), and how many key operations
    /// were applied (a record of a pipelined run holds many).
    fn apply_counted<'a>(
        &self,
        recs: impl ExactSizeIterator<Item = RecordRef<'a>>,
    ) -> (u64, Result<(), ApplyError>) {
        let mut ops = Vec::with_capacity(recs.len());
        let mut bounds = Vec::with_capacity(recs.len());
        let mut failed = None;
        for rec in recs.filter(|r| r.rmid == RM_KV) {
            let start = ops.len();
            if let Err(source) = record::decode_into(rec.payload, &mut ops) {
                ops.truncate(start);
                failed = Some(ApplyError {
                    lsn: rec.lsn,
                    source,
                });
                break;
            }
            bounds.push((rec.end, start..ops.len()));
        }
        if !bounds.is_empty() {
            let mut ks = self.write_lock();
            let mut skip = Vec::new();
            let mut plan = Vec::with_capacity(ops.len());
            for (end, range) in bounds {
                let rec = &ops[range];
                if rec.iter().any(|op| op.key().is_none()) {
                    // FLUSHALL (rare) touches every key: what came before
                    // it is applied first, it in WAL order, then the rest.
                    self.apply_sorted(&mut ks, &mut plan);
                    self.apply_locked(&mut ks, end, rec, &mut skip);
                    continue;
                }
                plan.extend(
                    rec.iter()
                        .filter_map(|op| Some(Planned::new(op.key()?, end.0, op))),
                );
            }
            self.apply_sorted(&mut ks, &mut plan);
        }
        (ops.len() as u64, failed.map_or(Ok(()), Err))
    }

    /// Apply `plan` (operations of a batch on single keys, in WAL order)
    /// sorted by key, and empty it. The sort is stable, so the operations
    /// on one key keep their WAL order and leave that key as WAL order
    /// does; keys do not interact (every operation here changes its one
    /// key); and no reader sees the store between two operations of a
    /// batch (they are applied under one hold of the write lock, and the
    /// replay position moves after it is let go). So the store after the
    /// batch is the store WAL order leaves, while consecutive operations
    /// descend the B-tree along the same path (its upper levels, and the
    /// leaf itself for neighbouring keys, stay in the cache) and a key's
    /// operations in one batch cost one lookup.
    fn apply_sorted(&self, ks: &mut Keyspace, plan: &mut Vec<Planned<'_, '_>>) {
        plan.sort_by(|a, b| a.order.cmp(&b.order).then_with(|| a.key.cmp(b.key)));
        for run in plan.chunk_by(|a, b| a.order == b.order && a.key == b.key) {
            self.apply_run(ks, run);
        }
        plan.clear();
    }

    /// Every operation of a batch on one key (`run`, in WAL order, not
    /// empty), with one lookup of the key: the page-LSN skip rule per
    /// record, the changes, and then the live count and the expiry index
    /// moved once, from the key's state before the run to its state after.
    fn apply_run(&self, ks: &mut Keyspace, run: &[Planned<'_, '_>]) {
        let Some(key) = run.first().map(|p| p.key) else {
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
        run: &[Planned<'_, '_>],
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
            let slot = value::apply(current_for(p.op, &e.newest().slot), p.op);
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
            let next = value::apply(current, op);
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

/// One operation of a batch planned for [`Store::apply_sorted`]: its key,
/// the end of its record, the operation.
struct Planned<'o, 'p> {
    /// The key's first 16 bytes (zero-padded) as two big-endian words:
    /// most keys differ there, so the sort compares two integers instead
    /// of calling `memcmp` (the bytes decide only a tie; zero padding and
    /// then the bytes keep byte order, the map's).
    order: [u64; 2],
    key: &'o [u8],
    end: u64,
    op: &'o Op<'p>,
}

impl<'o, 'p> Planned<'o, 'p> {
    fn new(key: &'o [u8], end: u64, op: &'o Op<'p>) -> Self {
        let mut head = [0u8; 16];
        let n = key.len().min(16);
        head[..n].copy_from_slice(&key[..n]);
        let (hi, lo) = head.split_at(8);
        let word = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or_default());
        Planned {
            order: [word(hi), word(lo)],
            key,
            end,
            op,
        }
    }
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
fn first_live<'r, 'o, 'p>(
    run: &'r [Planned<'o, 'p>],
) -> Option<(Entry, &'r [Planned<'o, 'p>], Option<(u64, bool)>)> {
    run.iter().enumerate().find_map(|(i, p)| {
        let slot = value::apply(None, p.op)?;
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
        /// operations in WAL order); that ends where applying its records
        /// one at a time, each operation in WAL order, does: from an empty
        /// store and over a fuzzy snapshot (the skip rule per record and
        /// key), with keys repeated within and across records, deletions,
        /// expiries, hashes, lists, sets and FLUSHALL, in any batch size.
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
                let (wal_order, sorted) = (Store::new(), Store::new());
                for k in snap {
                    wal_order.load_base(k.key.clone(), k.lsn, k.slot.clone());
                    sorted.load_base(k.key.clone(), k.lsn, k.slot.clone());
                }
                for (end, ops) in log.iter().filter(|(end, _)| *end > from) {
                    wal_order.apply_replayed(*end, ops);
                }
                let after: Vec<Record> = recs.iter().filter(|r| r.end > from).cloned().collect();
                for b in after.chunks(batch) {
                    sorted.apply_records(b).unwrap();
                }
                prop_assert_eq!(seen(&sorted), seen(&wal_order));
            }
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
                true => redo_read_ahead(&store, &mut reader, &never, report),
                false => redo_inline(&store, &mut reader, &never, report),
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
            let again = redo_inline(&store, &mut reader, &never, |_, _| {
                panic!("applied past it")
            });
            assert_eq!(again.apply.map(|e| e.lsn), Some(bad));
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
        let ran = redo_read_ahead(&store, &mut reader, &never, |b, _| records += b.len());
        assert!(ran.apply.is_none());
        assert!(matches!(
            ran.read.map(|e| e.kind),
            Some(crate::wal::ReadErrorKind::LimitReached { .. })
        ));
        assert_eq!((records, reader.next_lsn()), (5000, bad));
        let stop = AtomicBool::new(true);
        let mut reader = WalReader::new(cfg, start);
        let ran = redo_read_ahead(&Store::new(), &mut reader, &stop, |_, _| panic!("applied"));
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
