//! The state of one round over the archive and local `wal/`: where a file
//! is looked for, what the round may use, what it waits for, and why it
//! ended. The machine's shared state holds a [`Round`]; the round's steps
//! are in [`super::round`].

use std::fmt;

use serde::{Deserialize, Serialize};

use super::action::WalSource;
use crate::lsn::{Lsn, SegNo, TimelineId};

/// A rescan probes at most this many history files in a row: a bound on the
/// restore_command calls one round makes for timelines.
pub const MAX_TIMELINE_PROBES: u32 = 32;

/// Where a file is looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Location {
    /// restore_command.
    Archive,
    /// `wal/`.
    Local,
}

/// What a round may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RoundMode {
    /// Crash recovery: `wal/` only, no rescan.
    LocalOnly,
    /// Standby: rescan, archive then `wal/`; a restore_command failure skips
    /// the archive for the rest of the round and is counted.
    Standby,
    /// Promotion: archive then `wal/`, no rescan; a failure ends the
    /// archive's part (reported), never waits.
    Promotion,
}

/// What the round waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Step {
    /// Looking for `tli`'s history file.
    Scan {
        /// The timeline whose history file is asked for.
        tli: TimelineId,
        /// Asked of the archive or `wal/`.
        at: Location,
        /// History files probed so far.
        probes: u32,
    },
    /// Looking for segment `Round::segno` of `tli`.
    Fetch {
        /// The candidate timeline.
        tli: TimelineId,
        /// Asked of the archive or `wal/`.
        at: Location,
    },
    /// Replaying what was found, up to `limit`.
    Replay {
        /// Where the WAL came from.
        source: WalSource,
        /// The timeline of the file.
        tli: TimelineId,
        /// Replay up to here.
        limit: Lsn,
    },
}

/// The state of one round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Round {
    /// What the round may use.
    pub mode: RoundMode,
    /// The segment being looked for.
    pub segno: SegNo,
    /// What the round waits for.
    pub step: Step,
    /// restore_command is not configured, or failed in this round.
    pub skip_archive: bool,
    /// The segment before `segno` was replayed to its end from a copy
    /// restored from the archive, which holds complete segments only: the
    /// record replay stopped at continues in `segno`, so the first byte
    /// missing is `segno`'s first. (A local copy may be a partial file
    /// that ends early; then the missing bytes may start inside it.)
    pub previous_complete: bool,
}

/// Whether the round still runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundOutcome {
    /// A request is outstanding.
    Waiting,
    /// No source in the round has the WAL at the replay position.
    Exhausted(Exhaustion),
}

/// Why a round ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exhaustion {
    /// No candidate has the segment.
    NotFound {
        /// The segment.
        segno: SegNo,
        /// Everything before `segno` is here (`Round::previous_complete`):
        /// the stream may start at `segno`.
        previous_complete: bool,
    },
    /// A record is invalid at the replay position.
    Invalid {
        /// Where the invalid record is.
        at: Lsn,
    },
    /// A file ended before the timeline it belongs to did.
    EndedEarly {
        /// Where the file ended.
        at: Lsn,
    },
    /// The last segment of the LSN space was replayed to its end (as far
    /// as its WAL is complete): no segment follows it.
    EndOfLsnSpace {
        /// Where replay stopped.
        at: Lsn,
    },
}

impl fmt::Display for Exhaustion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exhaustion::NotFound { segno, .. } => {
                write!(f, "segment {} is in neither archive nor wal/", segno.0)
            }
            Exhaustion::Invalid { at } => write!(f, "invalid record at {at}"),
            Exhaustion::EndedEarly { at } => write!(f, "file ended early at {at}"),
            Exhaustion::EndOfLsnSpace { at } => write!(
                f,
                "replay stopped at {at} in the last segment of the LSN space: no segment follows it"
            ),
        }
    }
}
