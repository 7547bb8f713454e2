//! Applying a replayed WAL record to the store: what crash recovery and a
//! standby's redo loop do with each valid record they read.

use super::record::{self, KvDecodeError, RM_KV};
use super::Store;
use crate::wal::Record;
use crate::Lsn;

/// A record whose CRC held but whose payload the store cannot apply: a bug
/// or a version mismatch, never skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("WAL record at {lsn} does not decode: {source}")]
pub struct ApplyError {
    /// Start of the record.
    pub lsn: Lsn,
    #[source]
    pub source: KvDecodeError,
}

impl Store {
    /// Apply one replayed record. XLOG records carry nothing the store
    /// needs; key-value records are blind writes, visible at once.
    pub fn apply_record(&self, rec: &Record) -> Result<(), ApplyError> {
        if rec.rmid == RM_KV {
            let kv = record::decode(&rec.payload).map_err(|source| ApplyError {
                lsn: rec.lsn,
                source,
            })?;
            self.apply_replayed(rec.end, &kv.ops);
        }
        Ok(())
    }
}
