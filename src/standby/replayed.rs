//! How far replay got: redo's one published datum (see `progress` for
//! who owns what a standby shows), in a file of its own so that the
//! walreceiver, which reads it, and the progress it is part of do not
//! import each other.

use crate::{Lsn, TimelineId};

/// How far replay got. Owned by redo (see `redo::RedoLink`): updated after every
/// record applied, published (subscribers woken) at every progress report
/// and at the end of every replay request, so a subscriber is woken about
/// as often as the machine hears of progress, not once per record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// End of the last record replayed (= start of the next one): the
    /// store holds everything before it.
    pub end: Lsn,
    /// Start of the last record replayed: the prev-link of the first record
    /// a promoted node writes.
    pub last_record: Lsn,
    /// Timeline of the last record replayed.
    pub tli: TimelineId,
    /// Records replayed since start.
    pub records: u64,
    /// Commit time of the last key-value record replayed (µs since the
    /// epoch): replay lag in time. 0 before the first.
    pub last_commit_us: u64,
}

impl Default for Replayed {
    /// Nothing replayed (timeline 0: none yet).
    fn default() -> Self {
        Replayed {
            end: Lsn::INVALID,
            last_record: Lsn::INVALID,
            tli: TimelineId(0),
            records: 0,
            last_commit_us: 0,
        }
    }
}
