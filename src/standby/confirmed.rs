//! The last flush position the upstream confirmed, kept on disk so that a
//! restarted standby does not replay WAL its upstream may never have had.
//!
//! A walrep upstream streams WAL while it is still flushing it (with its
//! flush position as `walEnd`); the walreceiver keeps what arrives past that
//! position as held WAL, which redo does not replay outside promotion. The
//! hold lived only in memory: a standby restarted while holding such a tail
//! would replay it from `wal/` at start-up, and serve writes a primary that
//! crashed at the same time never made durable. The file `upstream_flush`
//! in the data directory records the last confirmed position; at start-up
//! every byte in `wal/` past it on its timeline is held again, until a
//! stream confirms it (or a restarted upstream with less WAL has it
//! truncated) or the standby is promoted.
//!
//! The file is created durably before the first session asks for unflushed
//! WAL and then overwritten in place without an fsync: each value is a
//! position the upstream had confirmed, so any value a crash leaves (an
//! older one) is a lower bound and holds more, never less. A value that
//! does not check out (torn, a CRC mismatch) falls back to holding
//! everything past the start of the segment the stream started in.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::storage::{self, OpenFor, Storage, StorageError};
use crate::wal::segdir::{SegmentDir, WalFileKind};
use crate::{Lsn, SegNo, TimelineId};

/// WAL in `wal/` past the last flush position the upstream told (a walrep
/// upstream streams WAL while it flushes it): not exposed, not replayed
/// from files outside promotion, zeroed if a restarted upstream lacks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldWal {
    /// The timeline of the files.
    pub tli: TimelineId,
    /// The upstream's last told flush position.
    pub from: Lsn,
    /// The end of the WAL held.
    pub to: Lsn,
}

/// The file's name in the data directory.
pub(crate) const FILE_NAME: &str = "upstream_flush";

const MAGIC: &[u8; 4] = b"WRUF";
const LEN: usize = 20;

fn encode(tli: TimelineId, lsn: Lsn) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[..4].copy_from_slice(MAGIC);
    b[4..8].copy_from_slice(&tli.0.to_le_bytes());
    b[8..16].copy_from_slice(&lsn.0.to_le_bytes());
    let crc = crc32fast::hash(&b[..16]);
    b[16..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<(TimelineId, Lsn)> {
    let b = b.get(..LEN)?;
    let crc = u32::from_le_bytes(b[16..20].try_into().ok()?);
    if &b[..4] != MAGIC || crc32fast::hash(&b[..16]) != crc {
        return None;
    }
    let tli = u32::from_le_bytes(b[4..8].try_into().ok()?);
    let lsn = u64::from_le_bytes(b[8..16].try_into().ok()?);
    Some((TimelineId(tli), Lsn(lsn)))
}

/// Where the file is: beside `wal/`.
fn path_of(segdir: &SegmentDir) -> PathBuf {
    segdir
        .path()
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(FILE_NAME)
}

/// What the file says, if it is there and checks out; `Err` when it is
/// there but unreadable or damaged (the caller holds more).
fn read(path: &Path) -> Result<Option<(TimelineId, Lsn)>, ()> {
    match std::fs::read(path) {
        Ok(b) => decode(&b).map(Some).ok_or(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(_) => Err(()),
    }
}

/// The walreceiver's handle on the file: records each newly confirmed
/// position with one in-place write.
pub(crate) struct ConfirmedFlush {
    storage: Arc<dyn Storage>,
    path: PathBuf,
    file: File,
    last: (TimelineId, Lsn),
}

impl ConfirmedFlush {
    /// Open the file, creating it durably (holding `start` of `tli`, where
    /// the session streams from) when there is none.
    pub(crate) fn open(
        segdir: &SegmentDir,
        tli: TimelineId,
        start: Lsn,
    ) -> Result<ConfirmedFlush, StorageError> {
        let storage = Arc::clone(segdir.storage());
        let path = path_of(segdir);
        let last = match read(&path) {
            Ok(Some(v)) => v,
            // Absent: nothing was ever received unconfirmed into this
            // directory (it is created before the first such session).
            Ok(None) => {
                storage::durable_create(&*storage, &path, &encode(tli, start))?;
                (tli, start)
            }
            // Damaged: rewrite it durably with what is certainly true.
            Err(()) => {
                storage::durable_replace(&*storage, &path, &encode(tli, start))?;
                (tli, start)
            }
        };
        let file = storage
            .open(&path, OpenFor::Existing)
            .map_err(StorageError::at("open", &path))?;
        Ok(ConfirmedFlush {
            storage,
            path,
            file,
            last,
        })
    }

    /// The upstream confirmed WAL of `tli` flushed up to `lsn` (and this
    /// node flushed it too). No fsync: a lost write leaves an older value.
    pub(crate) fn record(&mut self, tli: TimelineId, lsn: Lsn) -> Result<(), StorageError> {
        if self.last == (tli, lsn) {
            return Ok(());
        }
        self.storage
            .write_at(&self.file, &self.path, 0, &encode(tli, lsn))
            .map_err(StorageError::at("write", &self.path))?;
        self.last = (tli, lsn);
        Ok(())
    }
}

/// At promotion, once the end-of-recovery record and the control file
/// naming the new timeline are durable: remove the file. It bounds what a
/// *standby* replays of its upstream's WAL; a primary holds nothing back
/// and never reads it, and left behind it would outlive its meaning (a base
/// backup of the promoted node, or the node rejoined as a standby of
/// another, would hold WAL by a position of a stream long gone). No fsync:
/// a crash that brings it back also finds the node a primary (or, had the
/// promotion not been durable, still the standby the file belongs to).
pub(crate) fn forget(storage: &dyn Storage, datadir: &Path) {
    let path = datadir.join(FILE_NAME);
    match storage.remove_file(&path) {
        Ok(()) => tracing::info!("removed {FILE_NAME}: a primary holds no WAL back"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, "could not remove {}", path.display()),
    }
}

/// At start-up: the WAL in `wal/` past the recorded position on its
/// timeline, which must be held again (see the module docs). `None` when
/// there is no file (no session ever received WAL unconfirmed here) or
/// nothing was written past the position.
pub(crate) fn held_at_start(segdir: &SegmentDir) -> Option<HeldWal> {
    let path = path_of(segdir);
    let (tli, from) = match read(&path) {
        Ok(Some(v)) => v,
        Ok(None) => return None,
        Err(()) => {
            tracing::warn!(
                "{} is damaged: WAL received after the last segment start it could name is held until the upstream confirms it",
                path.display()
            );
            let tli = newest_timeline(segdir)?;
            (tli, Lsn::INVALID)
        }
    };
    let to = end_of_written(segdir, tli, from)?;
    (to > from).then_some(HeldWal { tli, from, to })
}

/// The newest timeline with a segment file in `wal/`.
fn newest_timeline(segdir: &SegmentDir) -> Option<TimelineId> {
    let files = segdir.list().ok()?;
    files
        .iter()
        .filter(|f| f.kind == WalFileKind::Segment)
        .map(|f| f.tli)
        .max()
}

/// The end of the last non-zero byte of `tli`'s segment files at or after
/// `from` (bytes a recycled file still holds count too: holding them
/// costs nothing, they are rewritten or zeroed before they are read).
fn end_of_written(segdir: &SegmentDir, tli: TimelineId, from: Lsn) -> Option<Lsn> {
    let seg = segdir.seg_size();
    let first = from.segno(seg);
    let mut segnos: Vec<SegNo> = segdir
        .list()
        .ok()?
        .into_iter()
        .filter(|f| f.kind == WalFileKind::Segment && f.tli == tli)
        .filter_map(|f| f.segno.filter(|s| *s >= first))
        .collect();
    segnos.sort();
    let mut end = None;
    for segno in segnos {
        let Ok(bytes) = std::fs::read(segdir.segment_path(tli, segno)) else {
            continue;
        };
        let start = segno.start_lsn(seg);
        let skip = from.0.saturating_sub(start.0).min(bytes.len() as u64) as usize;
        if let Some(last) = bytes[skip..].iter().rposition(|b| *b != 0) {
            end = Some(Lsn(start.0 + (skip + last + 1) as u64));
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_round_trips_and_any_damage_is_refused() {
        let b = encode(TimelineId(3), Lsn(0x1234_5678));
        assert_eq!(decode(&b), Some((TimelineId(3), Lsn(0x1234_5678))));
        for i in 0..LEN {
            let mut d = b;
            d[i] ^= 0x40;
            assert_eq!(decode(&d), None, "byte {i} flipped");
        }
        assert_eq!(decode(&b[..LEN - 1]), None);
        assert_eq!(decode(&[0u8; LEN]), None);
    }
}
