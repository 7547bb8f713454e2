//! The records of resource manager 0 (`RM_XLOG`), which the WAL itself
//! defines: checkpoint, segment switch, end of recovery, end of backup and
//! no-op. Info codes are PostgreSQL's (`XLOG_CHECKPOINT_SHUTDOWN` = 0x00 ...).
//!
//! Payloads are fixed-size little-endian structs; decoding checks the exact
//! length so that no byte of a payload is left unexplained.

use thiserror::Error;

use crate::{Lsn, TimelineId};

/// `info` of a shutdown checkpoint (PostgreSQL's XLOG_CHECKPOINT_SHUTDOWN).
pub const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;
/// `info` of an online checkpoint.
pub const XLOG_CHECKPOINT_ONLINE: u8 = 0x10;
/// `info` of a no-op record.
pub const XLOG_NOOP: u8 = 0x20;
/// `info` of a segment switch: the rest of the segment is unused.
pub const XLOG_SWITCH: u8 = 0x40;
/// `info` of the end of a base backup.
pub const XLOG_BACKUP_END: u8 = 0x50;
/// `info` of the first record of a new timeline after promotion.
pub const XLOG_END_OF_RECOVERY: u8 = 0x90;

/// A checkpoint: recovery may start replaying at `redo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Where replay must start for the snapshot this checkpoint completes.
    pub redo: Lsn,
    /// Timeline the checkpoint was written on.
    pub tli: TimelineId,
    /// The timeline before `tli` (equal to it unless the checkpoint is the
    /// first on a new timeline); lets recovery cross a timeline switch.
    pub prev_tli: TimelineId,
    /// Written at a clean shutdown: nothing after it but the end of WAL.
    pub shutdown: bool,
    /// Wall-clock time of the checkpoint, microseconds since the Unix epoch.
    pub time_unix_us: u64,
    /// Which snapshot in `base/` this checkpoint completed (store-defined).
    pub checkpoint_id: u64,
}

/// The end of recovery: the first record on a promoted node's new timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndOfRecovery {
    /// The timeline this record starts.
    pub new_tli: TimelineId,
    /// The timeline it branched off.
    pub prev_tli: TimelineId,
    /// Microseconds since the Unix epoch.
    pub time_unix_us: u64,
}

/// A decoded `RM_XLOG` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XlogRecord {
    /// A checkpoint completed (PostgreSQL's `XLOG_CHECKPOINT_ONLINE`; a
    /// shutdown checkpoint is the same record with
    /// [`Checkpoint::shutdown`] set).
    Checkpoint(Checkpoint),
    /// The rest of the segment is unused; the next record starts after the
    /// next segment's header.
    Switch,
    /// Promotion: the first record of a new timeline
    /// (`XLOG_END_OF_RECOVERY`).
    EndOfRecovery(EndOfRecovery),
    /// A base backup that started at `start` is consistent from here on.
    BackupEnd {
        /// The LSN the backup started at: its WAL from there to this
        /// record must be replayed before the copy is consistent.
        start: Lsn,
    },
    /// A record that changes nothing (`XLOG_NOOP`).
    Noop,
}

/// An `RM_XLOG` record that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum XlogError {
    /// The record's `info` byte names no XLOG record kind.
    #[error("unknown XLOG record info {info:#04X}")]
    UnknownInfo {
        /// The record header's `info` byte.
        info: u8,
    },
    /// The payload is not the size that kind of record has.
    #[error("XLOG record info {info:#04X} has a payload of {found} bytes, expected {expected}")]
    BadLength {
        /// The record header's `info` byte.
        info: u8,
        /// The size of that kind's payload, in bytes.
        expected: usize,
        /// The payload's size, in bytes.
        found: usize,
    },
}

const CHECKPOINT_LEN: usize = 32;
const END_OF_RECOVERY_LEN: usize = 16;
const BACKUP_END_LEN: usize = 8;

impl XlogRecord {
    /// The record's `info` byte.
    pub fn info(&self) -> u8 {
        match self {
            XlogRecord::Checkpoint(c) if c.shutdown => XLOG_CHECKPOINT_SHUTDOWN,
            XlogRecord::Checkpoint(_) => XLOG_CHECKPOINT_ONLINE,
            XlogRecord::Switch => XLOG_SWITCH,
            XlogRecord::EndOfRecovery(_) => XLOG_END_OF_RECOVERY,
            XlogRecord::BackupEnd { .. } => XLOG_BACKUP_END,
            XlogRecord::Noop => XLOG_NOOP,
        }
    }

    /// The payload bytes.
    pub fn encode_payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CHECKPOINT_LEN);
        match self {
            XlogRecord::Checkpoint(c) => {
                out.extend_from_slice(&c.redo.0.to_le_bytes());
                out.extend_from_slice(&c.time_unix_us.to_le_bytes());
                out.extend_from_slice(&c.checkpoint_id.to_le_bytes());
                out.extend_from_slice(&c.tli.0.to_le_bytes());
                out.extend_from_slice(&c.prev_tli.0.to_le_bytes());
            }
            XlogRecord::EndOfRecovery(e) => {
                out.extend_from_slice(&e.time_unix_us.to_le_bytes());
                out.extend_from_slice(&e.new_tli.0.to_le_bytes());
                out.extend_from_slice(&e.prev_tli.0.to_le_bytes());
            }
            XlogRecord::BackupEnd { start } => out.extend_from_slice(&start.0.to_le_bytes()),
            XlogRecord::Switch | XlogRecord::Noop => {}
        }
        out
    }

    /// Decode an `RM_XLOG` record from its info byte and payload.
    pub fn decode(info: u8, p: &[u8]) -> Result<XlogRecord, XlogError> {
        let want = |expected: usize| {
            if p.len() == expected {
                Ok(())
            } else {
                Err(XlogError::BadLength {
                    info,
                    expected,
                    found: p.len(),
                })
            }
        };
        let u64_at = |o: usize| u64::from_le_bytes(p[o..o + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |o: usize| u32::from_le_bytes(p[o..o + 4].try_into().unwrap_or([0; 4]));
        match info {
            XLOG_CHECKPOINT_SHUTDOWN | XLOG_CHECKPOINT_ONLINE => {
                want(CHECKPOINT_LEN)?;
                Ok(XlogRecord::Checkpoint(Checkpoint {
                    redo: Lsn(u64_at(0)),
                    time_unix_us: u64_at(8),
                    checkpoint_id: u64_at(16),
                    tli: TimelineId(u32_at(24)),
                    prev_tli: TimelineId(u32_at(28)),
                    shutdown: info == XLOG_CHECKPOINT_SHUTDOWN,
                }))
            }
            XLOG_END_OF_RECOVERY => {
                want(END_OF_RECOVERY_LEN)?;
                Ok(XlogRecord::EndOfRecovery(EndOfRecovery {
                    time_unix_us: u64_at(0),
                    new_tli: TimelineId(u32_at(8)),
                    prev_tli: TimelineId(u32_at(12)),
                }))
            }
            XLOG_BACKUP_END => {
                want(BACKUP_END_LEN)?;
                Ok(XlogRecord::BackupEnd {
                    start: Lsn(u64_at(0)),
                })
            }
            XLOG_SWITCH => want(0).map(|_| XlogRecord::Switch),
            XLOG_NOOP => want(0).map(|_| XlogRecord::Noop),
            _ => Err(XlogError::UnknownInfo { info }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        let records = [
            XlogRecord::Checkpoint(Checkpoint {
                redo: Lsn(0x1234_5678_9ABC),
                tli: TimelineId(4),
                prev_tli: TimelineId(3),
                shutdown: true,
                time_unix_us: 1_700_000_000_000_000,
                checkpoint_id: 42,
            }),
            XlogRecord::Checkpoint(Checkpoint {
                redo: Lsn(8),
                tli: TimelineId(1),
                prev_tli: TimelineId(1),
                shutdown: false,
                time_unix_us: 5,
                checkpoint_id: 0,
            }),
            XlogRecord::Switch,
            XlogRecord::EndOfRecovery(EndOfRecovery {
                new_tli: TimelineId(2),
                prev_tli: TimelineId(1),
                time_unix_us: 99,
            }),
            XlogRecord::BackupEnd {
                start: Lsn(0x300_0028),
            },
            XlogRecord::Noop,
        ];
        for r in records {
            assert_eq!(XlogRecord::decode(r.info(), &r.encode_payload()), Ok(r));
        }
    }

    #[test]
    fn bad_payloads_are_errors() {
        assert_eq!(
            XlogRecord::decode(XLOG_SWITCH, &[0]),
            Err(XlogError::BadLength {
                info: XLOG_SWITCH,
                expected: 0,
                found: 1
            })
        );
        assert!(XlogRecord::decode(XLOG_CHECKPOINT_ONLINE, &[0; 31]).is_err());
        assert_eq!(
            XlogRecord::decode(0x77, &[]),
            Err(XlogError::UnknownInfo { info: 0x77 })
        );
    }
}
