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

use std::collections::HashSet;

use super::map::{Level, Store};
use super::record::Op;
use super::value;
use crate::wal::Record;
use crate::Lsn;

/// Why a WAL record could not be applied.
#[derive(Debug, thiserror::Error)]
#[error("WAL record at {lsn} does not decode: {reason}")]
pub struct ReplayError {
    pub lsn: Lsn,
    pub reason: String,
}

impl Store {
    /// Apply one replayed WAL record: key-value records change the store;
    /// XLOG records carry nothing it needs.
    pub fn apply_record(&self, rec: &Record) -> Result<(), ReplayError> {
        if rec.rmid != super::record::RM_KV {
            return Ok(());
        }
        let kv = super::record::decode(&rec.payload).map_err(|e| ReplayError {
            lsn: rec.lsn,
            reason: e.to_string(),
        })?;
        self.apply_replayed(rec.end, &kv.ops);
        Ok(())
    }

    /// Apply the operations of the record ending at `end`, visible at once.
    pub fn apply_replayed(&self, end: Lsn, ops: &[Op<'_>]) {
        let mut ks = self.write_lock();
        // Decided before anything is applied: afterwards a key this record
        // changed has the record's own LSN.
        let skip: Vec<bool> = ops
            .iter()
            .map(|op| {
                op.key()
                    .and_then(|k| ks.map.get(k))
                    .is_some_and(|e| e.newest().lsn >= end.0)
            })
            .collect();
        let mut applied: HashSet<&[u8]> = HashSet::new();
        for (op, skip) in ops.iter().zip(skip) {
            if skip {
                continue;
            }
            let Some(key) = op.key() else {
                self.flush_replayed(&mut ks, end, &applied);
                continue;
            };
            let current = ks.map.get(key).and_then(|e| e.newest().slot.clone());
            let next = value::apply(current, op);
            ks.install(self, key, end.0, Level::Immediate as u8, next);
            applied.insert(key);
        }
    }

    /// FLUSHALL replayed: every key goes but those a snapshot took after
    /// this record (LSN past `end`, or at `end` without this record having
    /// touched them before the flush).
    fn flush_replayed(&self, ks: &mut super::map::Keyspace, end: Lsn, applied: &HashSet<&[u8]>) {
        let doomed: Vec<Vec<u8>> = ks
            .map
            .iter()
            .filter(|(k, e)| {
                let lsn = e.newest().lsn;
                lsn < end.0 || (lsn == end.0 && applied.contains(k.as_slice()))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            ks.install(self, &k, end.0, Level::Immediate as u8, None);
        }
    }
}
